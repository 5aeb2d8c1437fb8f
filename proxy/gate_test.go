package proxy

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/pullgate/pullgate/gate"
	"github.com/pullgate/pullgate/gate/scannertest"
	"github.com/pullgate/pullgate/identity"
)

// roundTripperFunc lets the fake scanner reach the pullgate of a test, whose server starts after the gate.
type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// ownURL hands the scanner the URL of the test's pullgate, known only once its server started: the one
// thing a real deployment configures (PULLGATE_SCANNER_REGISTRY_URL).
type ownURL struct {
	gate.Scanner
	url func() string
}

func (s ownURL) Scan(ctx context.Context, r gate.ScanRequest) (gate.Report, error) {
	r.RegistryURL = s.url()
	return s.Scanner.Scan(ctx, r)
}

// gateEnv is pullgate with a gate in front of a fake Harbor scanner that pulls what it scans from pullgate,
// with the scanner token pullgate minted for it. Clients are anonymous (pullgate is open), as in the
// simplest deployment; the scanner's token is the only identity.
type gateEnv struct {
	*env
	scanner *scannertest.Scanner
	gate    *gate.Gate
	policy  string
}

func newGateEnv(t *testing.T, policy string, scanOpts scannertest.Options) *gateEnv {
	t.Helper()
	ge := &gateEnv{policy: filepath.Join(t.TempDir(), "policy.yaml")}
	if err := os.WriteFile(ge.policy, []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	ge.env = newEnv(t, func(o *Options) {
		scanOpts.Transport = roundTripperFunc(func(r *http.Request) (*http.Response, error) {
			return ge.srv.Client().Transport.RoundTrip(r)
		})
		ge.scanner = scannertest.New(scanOpts)
		t.Cleanup(ge.scanner.Close)
		harbor, err := gate.NewHarbor(gate.HarborOptions{URL: ge.scanner.URL(), Client: ge.scanner.Client(), PollInterval: 10 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		signer, err := identity.NewSigner(identity.SignerOptions{Dir: filepath.Join(t.TempDir(), "keys"), Now: o.Now})
		if err != nil {
			t.Fatal(err)
		}
		ids, err := identity.New(identity.Options{Open: true, Signer: signer, Now: o.Now})
		if err != nil {
			t.Fatal(err)
		}
		ge.gate, err = gate.New(gate.Options{PolicyFile: ge.policy, Scanner: ownURL{harbor, func() string { return ge.srv.URL }},
			Store: &memVerdicts{m: map[string][]byte{}}, Tokens: ids, RegistryURL: "https://placeholder.invalid", ScanTimeout: time.Minute, Now: o.Now})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(ge.gate.Close)
		o.Gate, o.Verdicts, o.Authenticator, o.Authorizer = ge.gate, ge.gate, ids, ids
	})
	return ge
}

type memVerdicts struct {
	mu sync.Mutex
	m  map[string][]byte
}

func (s *memVerdicts) Verdict(d string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b, ok := s.m[d]; ok {
		return b, nil
	}
	return nil, gate.ErrNotFound
}

func (s *memVerdicts) SetVerdict(d string, b []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[d] = b
	return nil
}

func critical(id, fix string) func(string, string) []gate.Finding {
	return func(string, string) []gate.Finding {
		return []gate.Finding{{ID: id, Severity: gate.SeverityCritical, Package: "openssl", Version: "3.0.1", FixVersion: fix}}
	}
}

func TestGateFirstPullIsGated(t *testing.T) {
	ge := newGateEnv(t, "severity: High\nwait: 30s\n", scannertest.Options{Polls: 2, RefreshAfter: "0", Findings: critical("CVE-2024-0001", "3.0.2")})
	img := randomImage(t, 2)
	ge.up.push(t, "library/app:1", img)
	d := mustDigest(t, img)
	for _, method := range []string{http.MethodHead, http.MethodGet} {
		t.Run(method, func(t *testing.T) {
			resp := ge.do(method, "/v2/local/library/app/manifests/1")
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusPreconditionFailed {
				t.Fatalf("%s of a vulnerable image's first pull: %d, want 412", method, resp.StatusCode)
			}
		})
	}
	resp, body := ge.get("/v2/local/library/app/manifests/" + d.String())
	e := ociError(t, body)
	if resp.StatusCode != http.StatusPreconditionFailed || e.Code != codeDenied {
		t.Fatalf("by digest: %d %s", resp.StatusCode, e.Code)
	}
	for _, want := range []string{d.String(), "local/library/app", "rule default", "1 Critical", "CVE-2024-0001", "fixed in 3.0.2"} {
		if !strings.Contains(e.Message, want) {
			t.Errorf("message %q lacks %q", e.Message, want)
		}
	}
	if n := ge.scanner.ScansOf(d.String()); n != 1 {
		t.Fatalf("%d scans of %s", n, d)
	}
	if p := ge.scanner.Pulls(); len(p) != 1 || p[0].Err != nil || p[0].Repository != "local/library/app" {
		t.Fatalf("the scanner's pull from pullgate: %+v", p)
	}
	var verdicts []string
	for _, l := range ge.logs.lines() {
		if l["msg"] == "pull" && l["gate"] != nil {
			verdicts = append(verdicts, fmt.Sprint(l["method"], " ", l["status"], " ", l["gate"]))
		}
	}
	if got := strings.Join(verdicts, ", "); !strings.Contains(got, "GET 200 bypass") || !strings.Contains(got, "GET 412 blocked") {
		t.Fatalf("pull log gate fields: %s", got)
	}

	ge.scanner.SetFindings(nil)
	clean := randomImage(t, 1)
	ge.up.push(t, "library/app:2", clean)
	if resp, body := ge.get("/v2/local/library/app/manifests/2"); resp.StatusCode != http.StatusOK {
		t.Fatalf("a clean image's first pull: %d %s", resp.StatusCode, body)
	}
}

func TestGateConcurrentFirstPullsScanOnce(t *testing.T) {
	ge := newGateEnv(t, "severity: High\nwait: 30s\n", scannertest.Options{Latency: 100 * time.Millisecond})
	img := randomImage(t, 1)
	ge.up.push(t, "library/app:1", img)
	var wg sync.WaitGroup
	status := make([]int, 20)
	for i := range status {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp := ge.do(http.MethodGet, "/v2/local/library/app/manifests/1")
			resp.Body.Close()
			status[i] = resp.StatusCode
		}()
	}
	wg.Wait()
	for i, s := range status {
		if s != http.StatusOK {
			t.Fatalf("client %d: %d", i, s)
		}
	}
	if n := ge.scanner.Scans(); n != 1 {
		t.Fatalf("20 concurrent first pulls caused %d scans, want 1", n)
	}
}

func TestGatePendingAndScannerDown(t *testing.T) {
	tests := []struct {
		name   string
		policy string
		opts   scannertest.Options
		down   bool
		want   int
		says   string
	}{
		{name: "scan outlasts the wait", policy: "wait: 50ms\n", opts: scannertest.Options{Latency: 5 * time.Second}, want: http.StatusServiceUnavailable, says: "still running"},
		{name: "scan outlasts the wait, unscanned allowed", policy: "wait: 50ms\nunscanned: allow\n", opts: scannertest.Options{Latency: 5 * time.Second}, want: http.StatusOK},
		{name: "scanner down, closed", policy: "wait: 30s\n", down: true, want: http.StatusPreconditionFailed, says: "could not be scanned"},
		{name: "scanner down, open", policy: "wait: 30s\nscan_failed: allow\n", down: true, want: http.StatusOK},
		{name: "scanner fails, closed", policy: "wait: 30s\n", opts: scannertest.Options{Fail: scannertest.FailReport}, want: http.StatusPreconditionFailed, says: "could not be scanned"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ge := newGateEnv(t, tt.policy, tt.opts)
			if tt.down {
				ge.scanner.Close()
			}
			ge.up.push(t, "library/app:1", randomImage(t, 1))
			resp, body := ge.get("/v2/local/library/app/manifests/1")
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.want, body)
			}
			if tt.says != "" && !strings.Contains(ociError(t, body).Message, tt.says) {
				t.Fatalf("message %s does not say %q", body, tt.says)
			}
			if tt.want == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") == "" {
				t.Fatal("pending without Retry-After")
			}
		})
	}
}

func TestGateIndexPassesPlatformsAreGated(t *testing.T) {
	ge := newGateEnv(t, "severity: High\nwait: 30s\n", scannertest.Options{Findings: critical("CVE-1", "")})
	img := randomImage(t, 1)
	idx := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: img})
	ge.up.push(t, "library/multi:1", idx)
	if resp, body := ge.get("/v2/local/library/multi/manifests/1"); resp.StatusCode != http.StatusOK {
		t.Fatalf("the index: %d %s", resp.StatusCode, body)
	}
	if resp, _ := ge.get("/v2/local/library/multi/manifests/" + mustDigest(t, img).String()); resp.StatusCode != http.StatusPreconditionFailed {
		t.Fatalf("its vulnerable platform manifest: %d", resp.StatusCode)
	}
}

func TestGateScannerTokenIsForOneArtifact(t *testing.T) {
	ge := newGateEnv(t, "severity: High\nwait: 30s\n", scannertest.Options{Findings: critical("CVE-1", "")})
	a, b := randomImage(t, 1), randomImage(t, 1)
	ge.up.push(t, "library/app:a", a)
	ge.up.push(t, "library/app:b", b)
	ge.up.push(t, "library/other:a", a)
	for _, tag := range []string{"a", "b"} {
		if resp, _ := ge.get("/v2/local/library/app/manifests/" + tag); resp.StatusCode != http.StatusPreconditionFailed {
			t.Fatalf("%s: %d", tag, resp.StatusCode)
		}
	}
	if resp, _ := ge.get("/v2/local/library/other/manifests/a"); resp.StatusCode != http.StatusPreconditionFailed {
		t.Fatalf("other:a %d", resp.StatusCode)
	}
	// The scanner's last token is for library/app@b (the scans of a ran first): take it, as a thief would.
	last := ge.scanner.Last()
	auth := last.Authorization
	db, da := mustDigest(t, b), mustDigest(t, a)
	if last.Digest != db.String() || !strings.HasPrefix(auth, "Bearer ") {
		t.Fatalf("last scan %+v", last)
	}
	cfgB, err := b.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	cfgA, _ := a.ConfigName()
	tests := []struct {
		name string
		path string
		want int
	}{
		{"its manifest, bypassing the gate", "/v2/local/library/app/manifests/" + db.String(), http.StatusOK},
		{"its config", "/v2/local/library/app/blobs/" + cfgB.String(), http.StatusOK},
		{"another digest of the repository", "/v2/local/library/app/manifests/" + da.String(), http.StatusForbidden},
		{"a blob of another manifest", "/v2/local/library/app/blobs/" + cfgA.String(), http.StatusForbidden},
		{"its digest by tag", "/v2/local/library/app/manifests/b", http.StatusForbidden},
		{"another repository", "/v2/local/library/other/manifests/" + da.String(), http.StatusForbidden},
		{"tags", "/v2/local/library/app/tags/list", http.StatusForbidden},
		{"referrers", "/v2/local/library/app/referrers/" + db.String(), http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := ge.get(tt.path, "Authorization", auth)
			if resp.StatusCode != tt.want {
				t.Fatalf("%s with the scanner's token: %d, want %d: %s", tt.path, resp.StatusCode, tt.want, body)
			}
		})
	}
	t.Run("after expiry", func(t *testing.T) {
		ge.clock.advance(3 * time.Minute) // the token lives ScanTimeout + 1m
		resp, _ := ge.get("/v2/local/library/app/manifests/"+db.String(), "Authorization", auth)
		if resp.StatusCode != http.StatusPreconditionFailed {
			t.Fatalf("an expired scanner token is anonymous, and anonymous is gated: %d", resp.StatusCode)
		}
	})
}

func TestGateManifestThroughTheBlobsRoute(t *testing.T) {
	ge := newGateEnv(t, "severity: High\nwait: 30s\n", scannertest.Options{Findings: critical("CVE-1", "")})
	img := randomImage(t, 1)
	ge.up.push(t, "library/app:1", img)
	d := mustDigest(t, img)
	if resp, _ := ge.get("/v2/local/library/app/manifests/" + d.String()); resp.StatusCode != http.StatusPreconditionFailed {
		t.Fatalf("by digest: %d", resp.StatusCode)
	}
	// containerd asks the blobs route for a digest whose manifests answer failed: the gate holds there too.
	for _, method := range []string{http.MethodHead, http.MethodGet} {
		resp := ge.do(method, "/v2/local/library/app/blobs/"+d.String())
		resp.Body.Close()
		if resp.StatusCode != http.StatusPreconditionFailed {
			t.Fatalf("%s of the blocked manifest as a blob: %d, want 412", method, resp.StatusCode)
		}
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if resp, _ := ge.get("/v2/local/library/app/blobs/" + mustDigest(t, layers[0]).String()); resp.StatusCode != http.StatusOK {
		t.Fatalf("a layer of the blocked image (blobs are not gated): %d", resp.StatusCode)
	}
}
