package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullgate/pullgate/gate"
	"github.com/pullgate/pullgate/gate/scannertest"
)

// The gate tests run the pullgate binary with a gate policy in front of the shared upstream, and a fake Harbor
// scanner (gate/scannertest) in the test process that pulls what it scans from that pullgate with the token
// pullgate hands it. Each test pushes fresh images, so that every first pull is a first pull and every scan
// count starts at zero; the scanner's findings are given per manifest digest.

// gateSetup configures startGatedPullgate.
type gateSetup struct {
	// policy is the gate policy file's text.
	policy string
	// findings are what the scanner reports, by manifest digest; a digest not here is clean.
	findings map[string][]gate.Finding
	// latency is how long each scan takes.
	latency time.Duration
}

// gatedPG is a pullgate with a gate policy and the fake scanner it asks.
type gatedPG struct {
	*Pullgate
	scanner *scannertest.Scanner
	// policyFile is PULLGATE_GATE_POLICY: rewrite it with WritePolicy.
	policyFile string
}

// startGatedPullgate starts a fake scanner and a pullgate of t's own with s's policy in front of e's upstream.
// The scanner's certificate is pullgate's PULLGATE_SCANNER_CA_FILE; the scanner trusts e's CA, which signed
// pullgate's certificate. pullgate is open: clients are anonymous, and the scanner's token is the only identity.
func startGatedPullgate(t *testing.T, e *env, s gateSetup) *gatedPG {
	t.Helper()
	if e.pg == nil {
		t.Skip("direct mode: the upstream has no gate")
	}
	ctx := ctxFor(t, time.Minute)
	dir := t.TempDir()
	findings := s.findings // read-only from here on: the scanner reads it from its own goroutines
	sc := scannertest.New(scannertest.Options{
		Transport: e.transport(),
		Latency:   s.latency,
		Findings:  func(_, digest string) []gate.Finding { return findings[digest] },
	})
	t.Cleanup(sc.Close)
	g := &gatedPG{scanner: sc, policyFile: filepath.Join(dir, "policy.yaml")}
	caFile := filepath.Join(dir, "scanner-ca.crt")
	if err := WriteCertFile(caFile, sc.Certificate()); err != nil {
		t.Fatal(err)
	}
	if err := WritePolicy(g.policyFile, s.policy); err != nil {
		t.Fatal(err)
	}
	gopts := GateOptions{PolicyFile: g.policyFile, ScannerURL: sc.URL(), ScannerAPI: "harbor", ScannerCAFile: caFile}
	po := PullgateOptions{Bin: e.pg.Opts.Bin, Name: "pullgate-gate", DataDir: filepath.Join(dir, "data"), LogDir: dir,
		CertFile: e.certFile, KeyFile: e.keyFile, CA: e.ca,
		Upstreams: "local=" + e.proxy.URL, Default: "local", UpstreamCAFile: e.ca.CertFile, Env: gopts.Env()}
	var err error
	if g.Pullgate, err = StartPullgate(ctx, po); err != nil {
		t.Fatalf("pullgate with a gate: %v", err)
	}
	t.Cleanup(func() {
		if err := g.Stop(10 * time.Second); err != nil {
			t.Log(err)
		}
		if t.Failed() {
			t.Logf("---- %s (tail)\n%s", g.Spec.Name, g.Tail(60))
		}
	})
	return g
}

// pushGateImage pushes a fresh two-layer image for this machine's platform (which containerd can unpack) to e's
// upstream as gate/<repo>:v1.
func pushGateImage(ctx context.Context, t *testing.T, e *env, repo string) Image {
	t.Helper()
	img, err := PlatformImage(2, 4<<10, v1.Platform{OS: "linux", Architecture: runtime.GOARCH})
	if err != nil {
		t.Fatal(err)
	}
	im, err := PushImage(e.upstream.Addr, "gate/"+repo, "v1", img, remote.WithContext(ctx), remote.WithTransport(e.transport()))
	if err != nil {
		t.Fatal(err)
	}
	return im
}

// finding is one vulnerability the fake scanner reports, with a package and a fixed version as real reports
// have them.
func finding(id string, s gate.Severity) gate.Finding {
	return gate.Finding{ID: id, Severity: s, Package: "openssl", Version: "3.0.1", FixVersion: "3.0.9"}
}

// headManifest asks for ref's manifest with HEAD, as clients that resolve first do.
func headManifest(ctx context.Context, ref string, rt http.RoundTripper) (*v1.Descriptor, error) {
	r, err := name.ParseReference(ref, name.StrictValidation)
	if err != nil {
		return nil, err
	}
	return remote.Head(r, remote.WithContext(ctx), remote.WithTransport(rt))
}

// wantBlocked fails t unless err is pullgate's refusal: 412 with the OCI code DENIED and a message that holds
// every one of parts.
func wantBlocked(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatal("the pull succeeded; want 412 DENIED")
	}
	status, code := registryError(err)
	if status != http.StatusPreconditionFailed || code != "DENIED" {
		t.Errorf("status %d, code %q; want 412 DENIED: %v", status, code, err)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("the error lacks %q: %v", p, err)
		}
	}
}

// scannedOnce fails t unless the scanner was asked about each digest exactly once and pulled each, through
// pullgate with the token it was given, without an error.
func scannedOnce(t *testing.T, g *gatedPG, digests ...v1.Hash) {
	t.Helper()
	for _, d := range digests {
		if n := g.scanner.ScansOf(d.String()); n != 1 {
			t.Errorf("the scanner scanned %s %d times, want once", d, n)
		}
	}
	if n := g.scanner.Scans(); n != len(digests) {
		t.Errorf("the scanner got %d scan requests, want %d", n, len(digests))
	}
	for _, p := range g.scanner.Pulls() {
		if p.Err != nil {
			t.Errorf("the scanner's pull of %s@%s: %v", p.Repository, p.Digest, p.Err)
		}
	}
}

// gateVerdicts counts pullgate's answers to the manifest requests for digest as "METHOD STATUS gate[ auth]"
// ("GET 412 blocked", "GET 200 bypass scanner").
func gateVerdicts(g *gatedPG, digest v1.Hash) map[string]int {
	n := map[string]int{}
	for _, l := range g.GateLines() {
		if l.Digest != digest.String() {
			continue
		}
		k := fmt.Sprintf("%s %d %s", l.Method, l.Status, l.Gate)
		if l.Auth == "scanner" {
			k += " scanner"
		}
		n[k]++
	}
	return n
}

// TestGateCrane pulls with go-containerregistry (crane's library) through a gated pullgate: the first pull of
// an image with a Critical finding fails with pullgate's 412 and its message (digest, severity, CVE), by tag,
// by digest and with HEAD; a clean image pulls whole; each digest was scanned once, and the scanner's own pull
// of the blocked image went through the gate with its token.
func TestGateCrane(t *testing.T) {
	e := sharedEnv(t)
	ctx := ctxFor(t, 2*time.Minute)
	vuln, clean := pushGateImage(ctx, t, e, "crane/vuln"), pushGateImage(ctx, t, e, "crane/clean")
	cve := finding("CVE-2026-31337", gate.SeverityCritical)
	g := startGatedPullgate(t, e, gateSetup{policy: "severity: Critical\n",
		findings: map[string][]gate.Finding{vuln.Digest.String(): {cve, finding("CVE-2026-0001", gate.SeverityLow)}}})
	tests := []struct {
		name string
		ref  string
		head bool
		want Image // zero: blocked
	}{
		{name: "vulnerable, first pull, by tag", ref: vuln.Ref(g.Addr)},
		{name: "vulnerable, by digest", ref: vuln.DigestRef(g.Addr)},
		{name: "vulnerable, path prefix", ref: vuln.Ref(g.Addr + "/local")},
		{name: "vulnerable, HEAD", ref: vuln.Ref(g.Addr), head: true},
		{name: "clean, first pull, by tag", ref: clean.Ref(g.Addr), want: clean},
		{name: "clean, by digest", ref: clean.DigestRef(g.Addr), want: clean},
		{name: "clean, HEAD", ref: clean.Ref(g.Addr + "/local"), head: true, want: clean},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			blocked := tt.want.Digest == (v1.Hash{})
			if tt.head {
				desc, err := headManifest(ctx, tt.ref, e.transport())
				switch {
				case blocked:
					// A HEAD answer has no body: the status is all a client can see.
					if status, _ := registryError(err); status != http.StatusPreconditionFailed {
						t.Errorf("HEAD %s: %v; want 412", tt.ref, err)
					}
				case err != nil:
					t.Fatalf("HEAD %s: %v", tt.ref, err)
				case desc.Digest != tt.want.Digest:
					t.Errorf("HEAD %s: digest %s, want %s", tt.ref, desc.Digest, tt.want.Digest)
				}
				return
			}
			p, err := pullAll(ctx, tt.ref, e.transport())
			if blocked {
				t.Logf("crane's error: %v", err)
				wantBlocked(t, err, vuln.Digest.String(), "Critical", cve.ID, "fixed in 3.0.9")
				if strings.Contains(err.Error(), "CVE-2026-0001") {
					t.Errorf("the message names a Low finding, which the policy lets through: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.digest != tt.want.Digest || len(p.blobs) != len(tt.want.Blobs) {
				t.Errorf("pulled %s with %d blobs, want %s with %d", p.digest, len(p.blobs), tt.want.Digest, len(tt.want.Blobs))
			}
		})
	}
	scannedOnce(t, g, vuln.Digest, clean.Digest)
	// The scanner pulled the blocked manifest with its token (the gate let it through for that one digest);
	// every client request for it was refused.
	v := gateVerdicts(g, vuln.Digest)
	if v["GET 200 bypass scanner"] != 1 || v["GET 412 blocked"] != 3 || v["HEAD 412 blocked"] != 1 || len(v) != 3 {
		t.Errorf("pullgate's answers for the vulnerable manifest: %v; want the scanner's one GET let through, 3 GETs and 1 HEAD blocked", v)
	}
}

// TestGateSkopeo pulls with skopeo (inspect --raw and copy to a directory) through a gated pullgate: a blocked
// image fails and skopeo prints pullgate's message; a clean one is copied whole.
func TestGateSkopeo(t *testing.T) {
	skopeo := requireTool(t, "skopeo")
	e := sharedEnv(t)
	ctx := ctxFor(t, 2*time.Minute)
	vuln, clean := pushGateImage(ctx, t, e, "skopeo/vuln"), pushGateImage(ctx, t, e, "skopeo/clean")
	cve := finding("CVE-2026-40404", gate.SeverityCritical)
	g := startGatedPullgate(t, e, gateSetup{policy: "severity: High\n", findings: map[string][]gate.Finding{vuln.Digest.String(): {cve}}})
	certDir := t.TempDir()
	if err := os.Symlink(e.caFile(), filepath.Join(certDir, "ca.crt")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, op string // op: inspect or copy
		ref      string
		want     Image // zero: blocked
	}{
		{name: "vulnerable, inspect --raw", op: "inspect", ref: vuln.Ref(g.Addr)},
		{name: "vulnerable, copy", op: "copy", ref: vuln.Ref(g.Addr)},
		{name: "vulnerable, copy by digest", op: "copy", ref: vuln.DigestRef(g.Addr + "/local")},
		{name: "clean, inspect --raw", op: "inspect", ref: clean.Ref(g.Addr), want: clean},
		{name: "clean, copy", op: "copy", ref: clean.Ref(g.Addr + "/local"), want: clean},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			home := t.TempDir()
			out := filepath.Join(home, "out")
			var text string
			var err error
			switch tt.op {
			case "inspect":
				// Only the manifest on stdout: skopeo's messages are in the error.
				err = RunToFile(ctx, time.Minute, out, skopeo, "--insecure-policy", "inspect", "--raw", "--cert-dir", certDir,
					"--retry-times", "0", "docker://"+tt.ref)
				if err != nil {
					text = err.Error()
				}
			case "copy":
				text, err = Run(ctx, time.Minute, []string{"HOME=" + home}, skopeo, "--insecure-policy", "copy", "--src-cert-dir", certDir,
					"--retry-times", "0", "docker://"+tt.ref, "dir:"+out)
			}
			if tt.want.Digest == (v1.Hash{}) {
				t.Logf("skopeo %s says: %s", tt.op, strings.TrimSpace(text))
				if err == nil {
					t.Fatalf("skopeo %s of a blocked image succeeded", tt.op)
				}
				// skopeo prints the OCI code and message ("denied: ..."), not the status.
				for _, p := range []string{"denied: blocked by pullgate policy", vuln.Digest.String(), "Critical", cve.ID} {
					if !strings.Contains(text, p) {
						t.Errorf("skopeo's output lacks %q", p)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.op == "inspect" {
				if got, _ := fileDigest(out); got != tt.want.Digest.String() {
					t.Errorf("skopeo inspect --raw: the manifest hashes to %s, want %s", got, tt.want.Digest)
				}
				return
			}
			checkDirCopy(t, out, tt.want)
		})
	}
	scannedOnce(t, g, vuln.Digest, clean.Digest)
}

// TestGateCRI pulls through containerd's CRI plugin as the kubelet does (PullImage), by pullgate's own name
// and with pullgate as the upstream's hosts.toml mirror (the server entry unreachable): a blocked image fails
// and nothing of it is unpacked; a clean image pulls. It logs containerd's exact error: containerd 1.6
// resolves a reference with HEAD, whose answer has no body, so pullgate's message cannot reach the CRI error;
// the 412 status does.
func TestGateCRI(t *testing.T) {
	containerd := requireTool(t, "containerd")
	requireRoot(t)
	e := sharedEnv(t)
	ctx := ctxFor(t, 2*time.Minute)
	vuln, clean := pushGateImage(ctx, t, e, "cri/vuln"), pushGateImage(ctx, t, e, "cri/clean")
	cve := finding("CVE-2026-55555", gate.SeverityCritical)
	g := startGatedPullgate(t, e, gateSetup{policy: "severity: Critical\n", findings: map[string][]gate.Finding{vuln.Digest.String(): {cve}}})
	hostsDir := t.TempDir()
	writeHostsFile(t, hostsDir, e.upHost(), hostsTOML("https://"+refusedHost, "https://"+g.Addr, e.caFile()))
	writeHostsFile(t, hostsDir, g.Addr, hostsTOML("https://"+g.Addr, "https://"+g.Addr, e.caFile()))
	images := startCRIContainerd(ctx, t, containerd, hostsDir)
	modes := []struct{ name, host string }{
		{"pullgate's name", g.Addr},
		{"upstream's name, pullgate as mirror", e.upHost()},
	}
	for _, m := range modes {
		t.Run(m.name+"/blocked, by tag", func(t *testing.T) {
			ref := vuln.Ref(m.host)
			_, err := kubeletPull(ctx, images, ref, nil)
			t.Logf("containerd's error: %v", err)
			if err == nil {
				t.Fatal("PullImage of a blocked image succeeded")
			}
			// containerd names the host that answered and the status of its HEAD.
			want := "pulling from host " + g.Addr + " failed with status code [manifests " + vuln.Tag + "]: 412 Precondition Failed"
			if !strings.Contains(err.Error(), want) {
				t.Errorf("containerd's error lacks %q", want)
			}
			if strings.Contains(err.Error(), cve.ID) {
				t.Logf("pullgate's message reached the CRI error")
			} else {
				t.Logf("pullgate's message (%s, Critical) is not in the CRI error: containerd resolved with HEAD, whose 412 has no body", cve.ID)
			}
			notInContainerd(ctx, t, images, ref)
			containerdBypassed(t, e, "HEAD manifests", "GET manifests", "GET blobs")
		})
		t.Run(m.name+"/blocked, by digest", func(t *testing.T) {
			// containerd resolves a digest that its manifests HEAD did not give with a HEAD of blobs/<digest>,
			// which pullgate gates as it gates the manifests route (TestGateManifestAsBlob).
			ref := vuln.DigestRef(m.host)
			_, err := kubeletPull(ctx, images, ref, nil)
			t.Logf("containerd's error: %v", err)
			if err == nil {
				t.Fatal("PullImage of a blocked image succeeded")
			}
			notInContainerd(ctx, t, images, ref)
			containerdBypassed(t, e, "HEAD manifests", "GET manifests", "GET blobs")
		})
		t.Run(m.name+"/clean", func(t *testing.T) {
			ref := clean.Ref(m.host)
			id, err := kubeletPull(ctx, images, ref, nil)
			if err != nil {
				t.Fatal(err)
			}
			checkCRIImage(ctx, t, images, ref, id, clean)
			removeCRIImage(ctx, t, images, ref)
		})
	}
	scannedOnce(t, g, vuln.Digest, clean.Digest)
	if v := gateVerdicts(g, vuln.Digest); v["GET 200 pass"]+v["HEAD 200 pass"] != 0 {
		t.Errorf("pullgate served the blocked manifest to a client: %v", v)
	}
}

// notInContainerd fails t when containerd knows ref as an image.
func notInContainerd(ctx context.Context, t *testing.T, images runtimeapi.ImageServiceClient, ref string) {
	t.Helper()
	st, err := images.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
	if err != nil {
		t.Fatalf("ImageStatus %s: %v", ref, err)
	}
	if st.GetImage() != nil {
		t.Errorf("containerd has the blocked image %s as %s", ref, st.GetImage().Id)
	}
}

// TestGateCRIReachableServer shows what the gate cannot do on its own: when the upstream itself is reachable
// as the server of a hosts.toml that names pullgate as its mirror, containerd takes pullgate's 412 as a failed
// mirror and pulls the blocked image from the server. A gate in front of containerd needs a server entry that
// the node cannot reach (or pullgate itself), as TestGateCRI sets up.
func TestGateCRIReachableServer(t *testing.T) {
	containerd := requireTool(t, "containerd")
	requireRoot(t)
	e := sharedEnv(t)
	ctx := ctxFor(t, 2*time.Minute)
	vuln := pushGateImage(ctx, t, e, "cri-server/vuln")
	g := startGatedPullgate(t, e, gateSetup{policy: "severity: Critical\n",
		findings: map[string][]gate.Finding{vuln.Digest.String(): {finding("CVE-2026-55556", gate.SeverityCritical)}}})
	hostsDir := t.TempDir()
	writeHostsFile(t, hostsDir, e.upHost(), hostsTOML("https://"+e.upHost(), "https://"+g.Addr, e.caFile()))
	images := startCRIContainerd(ctx, t, containerd, hostsDir)
	e.proxy.Reset()
	id, err := kubeletPull(ctx, images, vuln.Ref(e.upHost()), nil)
	if err != nil {
		t.Fatalf("containerd did not fall back to the server: %v", err)
	}
	if id != vuln.Blobs[0].String() {
		t.Errorf("PullImage answered %s, want the config %s", id, vuln.Blobs[0])
	}
	v := gateVerdicts(g, vuln.Digest)
	direct := e.proxy.Count("UA containerd HEAD manifests") + e.proxy.Count("UA containerd GET manifests")
	t.Logf("pullgate answered containerd %v; containerd sent %d manifest requests straight to the upstream", v, direct)
	if v["HEAD 412 blocked"] == 0 || v["GET 200 pass"]+v["HEAD 200 pass"] != 0 || direct == 0 {
		t.Errorf("want pullgate to refuse the manifest and containerd to get it from the upstream: pullgate %v, upstream %v", v, e.proxy.Counts())
	}
}

// TestGateManifestAsBlob asks for a blocked manifest through the blobs route (/v2/<name>/blobs/<manifest
// digest>), as containerd does when it resolves a digest whose manifests request failed. The gate's invariant
// is that no manifest is served before the gate passes it.
func TestGateManifestAsBlob(t *testing.T) {
	e := sharedEnv(t)
	ctx := ctxFor(t, time.Minute)
	vuln := pushGateImage(ctx, t, e, "as-blob/vuln")
	g := startGatedPullgate(t, e, gateSetup{policy: "severity: Critical\n",
		findings: map[string][]gate.Finding{vuln.Digest.String(): {finding("CVE-2026-55557", gate.SeverityCritical)}}})
	_, err := pullAll(ctx, vuln.Ref(g.Addr), e.transport())
	wantBlocked(t, err, vuln.Digest.String())
	client := &http.Client{Transport: e.transport(), Timeout: 30 * time.Second}
	for _, method := range []string{http.MethodHead, http.MethodGet} {
		t.Run(method, func(t *testing.T) {
			url := g.URL + "/v2/" + vuln.Repo + "/blobs/" + vuln.Digest.String()
			req, err := http.NewRequestWithContext(ctx, method, url, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode < 300 {
				t.Errorf("%s %s: %s (%d bytes): the blocked manifest is served as a blob", method, url, resp.Status, len(body))
			}
		})
	}
}

// TestGateScannerDown pulls through a gated pullgate whose scanner refuses connections: under the default
// policy (scan_failed: block) the first pull fails with 412 and "could not be scanned"; with scan_failed: allow
// the image is served, unscanned.
func TestGateScannerDown(t *testing.T) {
	e := sharedEnv(t)
	tests := []struct {
		name, policy string
		blocked      bool
	}{
		{name: "default policy", policy: "severity: High\n", blocked: true},
		{name: "scan_failed: allow", policy: "severity: High\nscan_failed: allow\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := ctxFor(t, time.Minute)
			im := pushGateImage(ctx, t, e, "scanner-down/"+strings.NewReplacer(" ", "-", ":", "").Replace(tt.name))
			g := startGatedPullgate(t, e, gateSetup{policy: tt.policy})
			g.scanner.Close()
			p, err := pullAll(ctx, im.Ref(g.Addr), e.transport())
			want := "GET 200 unscanned"
			if tt.blocked {
				t.Logf("crane's error: %v", err)
				wantBlocked(t, err, "could not be scanned", im.Digest.String())
				want = "GET 412 blocked"
			} else if err != nil {
				t.Fatal(err)
			} else if p.digest != im.Digest {
				t.Errorf("pulled %s, want %s", p.digest, im.Digest)
			}
			if v := gateVerdicts(g, im.Digest); v[want] != 1 || len(v) != 1 {
				t.Errorf("pullgate's answers: %v, want one %q", v, want)
			}
			if n := g.scanner.Scans(); n != 0 {
				t.Errorf("the closed scanner got %d scan requests", n)
			}
		})
	}
}

// TestGatePolicyReload rewrites the policy file of a running pullgate: an image with a High finding is blocked
// under severity: High, served within seconds of the threshold's rise to Critical, and blocked again when it
// goes back, all judged from the one stored verdict.
func TestGatePolicyReload(t *testing.T) {
	e := sharedEnv(t)
	ctx := ctxFor(t, time.Minute)
	im := pushGateImage(ctx, t, e, "reload/high")
	cve := finding("CVE-2026-7777", gate.SeverityHigh)
	g := startGatedPullgate(t, e, gateSetup{policy: "severity: High\n", findings: map[string][]gate.Finding{im.Digest.String(): {cve}}})
	ref := im.Ref(g.Addr)
	parsed, err := name.ParseReference(ref, name.StrictValidation)
	if err != nil {
		t.Fatal(err)
	}
	rt := e.transport()
	_, err = pullAll(ctx, ref, rt)
	wantBlocked(t, err, im.Digest.String(), "High", cve.ID)

	steps := []struct {
		policy  string
		blocked bool
	}{
		{policy: "severity: Critical\n"},
		{policy: "severity: High\n", blocked: true},
	}
	for _, s := range steps {
		start := time.Now()
		if err := WritePolicy(g.policyFile, s.policy); err != nil {
			t.Fatal(err)
		}
		// pullgate looks at the file at most every 2s, on a request: a few seconds is the bound.
		err := Poll(ctx, 10*time.Second, "the new policy ("+strings.TrimSpace(s.policy)+")", g.Exited(), func(ctx context.Context) error {
			_, err := remote.Get(parsed, remote.WithContext(ctx), remote.WithTransport(rt))
			status, _ := registryError(err)
			switch {
			case s.blocked && status == http.StatusPreconditionFailed, !s.blocked && err == nil:
				return nil
			case err == nil:
				return errors.New("served")
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s in force after %v", strings.TrimSpace(s.policy), time.Since(start).Round(time.Millisecond))
		p, err := pullAll(ctx, ref, rt)
		if s.blocked {
			wantBlocked(t, err, im.Digest.String(), "High", cve.ID)
		} else if err != nil || p.digest != im.Digest {
			t.Fatalf("pull under %q: %s, %v", s.policy, p.digest, err)
		}
	}
	scannedOnce(t, g, im.Digest)
}

// TestGateConcurrentFirstPulls has 20 clients pull the same new image at once, each with a connection of its
// own: however many wait, the scanner is asked once, and every client gets the same answer.
func TestGateConcurrentFirstPulls(t *testing.T) {
	e := sharedEnv(t)
	ctx := ctxFor(t, time.Minute)
	vuln, clean := pushGateImage(ctx, t, e, "herd/vuln"), pushGateImage(ctx, t, e, "herd/clean")
	cve := finding("CVE-2026-8888", gate.SeverityCritical)
	// The scan takes long enough that every client asks while it runs.
	g := startGatedPullgate(t, e, gateSetup{policy: "severity: Critical\n", latency: time.Second,
		findings: map[string][]gate.Finding{vuln.Digest.String(): {cve}}})
	const clients = 20
	tests := []struct {
		name    string
		im      Image
		blocked bool
	}{
		{name: "clean", im: clean},
		{name: "vulnerable", im: vuln, blocked: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := make(chan struct{})
			errs := make([]error, clients)
			var wg sync.WaitGroup
			for i := range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rt := e.transport()
					defer rt.CloseIdleConnections()
					<-start
					p, err := pullAll(ctx, tt.im.Ref(g.Addr), rt)
					if err == nil && p.digest != tt.im.Digest {
						err = fmt.Errorf("pulled %s, want %s", p.digest, tt.im.Digest)
					}
					errs[i] = err
				}()
			}
			close(start)
			wg.Wait()
			for i, err := range errs {
				if tt.blocked {
					wantBlocked(t, err, tt.im.Digest.String(), cve.ID)
				} else if err != nil {
					t.Errorf("client %d: %v", i, err)
				}
			}
			if n := g.scanner.ScansOf(tt.im.Digest.String()); n != 1 {
				t.Errorf("%d first pulls at once: %d scans, want 1", clients, n)
			}
		})
	}
	scannedOnce(t, g, clean.Digest, vuln.Digest)
}
