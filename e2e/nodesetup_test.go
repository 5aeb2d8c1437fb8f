package e2e

import (
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pullgate/pullgate/gate"
)

// The node setup tests run `pullgate hosts-toml` and `pullgate registries-conf` as a node's DaemonSet does and
// pull with the real clients the files are for: containerd's CRI plugin, as the kubelet drives it, and skopeo
// (containers/image, the library of CRI-O and podman).

// runHostsTOML runs the built `pullgate hosts-toml` for registry into a certs.d directory of t's own and returns
// the directory as containerd reads it: the files are written through a second name of the directory (a
// symbolic link standing for a DaemonSet's hostPath mount), with --node-dir naming the directory containerd
// reads, so that the paths inside the files must be the node's.
func runHostsTOML(t *testing.T, bin, server, caFile string, registries []string, flags ...string) string {
	t.Helper()
	dir := t.TempDir()
	mount, nodeDir := filepath.Join(dir, "mount"), filepath.Join(dir, "node")
	if err := os.Mkdir(nodeDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(nodeDir, mount); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"hosts-toml", "--server", server, "--ca", caFile, "--dir", mount, "--node-dir", nodeDir}, flags...)
	out, err := Run(t.Context(), time.Minute, nil, bin, append(args, registries...)...)
	if err != nil {
		t.Fatal(err)
	}
	for _, reg := range registries {
		if !strings.Contains(out, "wrote "+filepath.Join(mount, reg, "hosts.toml")) {
			t.Fatalf("pullgate hosts-toml did not write %s/hosts.toml:\n%s", reg, out)
		}
	}
	return nodeDir
}

// TestNodeSetupContainerd pulls through containerd's CRI plugin in mirror mode with the hosts.toml that
// `pullgate hosts-toml` wrote, as the kubelet does for a pod whose pull secret is a robot's, keyed by the
// image's own registry. The upstream is reachable from containerd and trusts the same CA, so that a fallback
// would work if containerd tried one: when pullgate refuses (no credentials, or a robot that may not pull the
// repository), the pull must fail without containerd sending the upstream a single request.
func TestNodeSetupContainerd(t *testing.T) {
	containerd := requireTool(t, "containerd")
	requireRoot(t)
	e := sharedEnv(t)
	pg := startAuthPullgate(t, e, authOptions{robots: []RobotOptions{
		{Name: "puller", Allow: []string{"local/e2e/layers10", "local/e2e/multi"}},
		{Name: "other", Allow: []string{"local/e2e/single"}},
	}})
	ctx := ctxFor(t, 2*time.Minute)
	hostsDir := runHostsTOML(t, pg.Opts.Bin, pg.URL, e.caFile(), []string{e.upHost()})
	images := startCRIContainerd(ctx, t, containerd, hostsDir)
	puller, secret := pg.user("puller")
	other, otherSecret := pg.user("other")
	keyring := func(user, password string) *Keyring {
		if user == "" {
			return nil
		}
		k, err := ParseDockerConfigJSON(pullSecret(ctx, t, e.upHost(), user, password))
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	tests := []struct {
		name           string
		im             Image
		user, password string
		want           string // what the error must say; empty for success
	}{
		{"robot", e.fix.Layers10, puller, secret, ""},
		{"robot, index", e.fix.Multi, puller, secret, ""},
		{"no pull secret", e.fix.Layers10, "", "", "401 Unauthorized"},
		{"robot not allowed", e.fix.Layers10, other, otherSecret, "403 Forbidden"},
		{"wrong password", e.fix.Multi, puller, otherSecret, "401 Unauthorized"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ref := tt.im.Ref(e.upHost())
			served := servedTo(pg.Pullgate, tt.im.Repo, "robot$puller", "robot")
			e.proxy.Reset()
			id, err := kubeletPull(ctx, images, ref, keyring(tt.user, tt.password))
			direct := e.proxy.Count("UA containerd")
			if direct != 0 {
				t.Errorf("containerd sent %d requests to the upstream itself: %v", direct, e.proxy.Counts())
			}
			if tt.want != "" {
				if err == nil {
					removeCRIImage(ctx, t, images, ref)
					t.Fatalf("CRI pull of %s succeeded", ref)
				}
				if !strings.Contains(err.Error(), tt.want) {
					t.Errorf("CRI pull of %s failed without %q: %v", ref, tt.want, redactErr(err, pg.secrets()...))
				}
				notInContainerd(ctx, t, images, ref)
				return
			}
			if err != nil {
				t.Fatal(redactErr(err, pg.secrets()...))
			}
			checkCRIImage(ctx, t, images, ref, id, tt.im)
			removeCRIImage(ctx, t, images, ref)
			if servedTo(pg.Pullgate, tt.im.Repo, "robot$puller", "robot") == served {
				t.Errorf("the pull log has no new successful request for %s by robot$puller", tt.im.Repo)
			}
		})
	}
}

// TestNodeSetupContainerdGate is TestGateCRIReachableServer with the files of `pullgate hosts-toml`: the
// upstream is reachable from containerd, yet a manifest the gate blocks is not pulled, and containerd sends the
// upstream nothing; a clean image comes through.
func TestNodeSetupContainerdGate(t *testing.T) {
	containerd := requireTool(t, "containerd")
	requireRoot(t)
	e := sharedEnv(t)
	ctx := ctxFor(t, 2*time.Minute)
	vuln, clean := pushGateImage(ctx, t, e, "nodesetup/vuln"), pushGateImage(ctx, t, e, "nodesetup/clean")
	g := startGatedPullgate(t, e, gateSetup{policy: "severity: Critical\n",
		findings: map[string][]gate.Finding{vuln.Digest.String(): {finding("CVE-2026-55557", gate.SeverityCritical)}}})
	hostsDir := runHostsTOML(t, g.Opts.Bin, g.URL, e.caFile(), []string{e.upHost()})
	images := startCRIContainerd(ctx, t, containerd, hostsDir)
	for _, ref := range []string{vuln.Ref(e.upHost()), vuln.DigestRef(e.upHost())} {
		e.proxy.Reset()
		_, err := kubeletPull(ctx, images, ref, nil)
		if err == nil {
			t.Errorf("PullImage of the blocked %s succeeded", ref)
		}
		t.Logf("containerd's error: %v", err)
		notInContainerd(ctx, t, images, ref)
		if n := e.proxy.Count("UA containerd"); n != 0 {
			t.Errorf("containerd sent %d requests for %s to the upstream itself: %v", n, ref, e.proxy.Counts())
		}
	}
	if v := gateVerdicts(g, vuln.Digest); v["GET 200 pass"]+v["HEAD 200 pass"] != 0 {
		t.Errorf("pullgate served the blocked manifest: %v", v)
	}
	id, err := kubeletPull(ctx, images, clean.Ref(e.upHost()), nil)
	if err != nil {
		t.Fatal(err)
	}
	checkCRIImage(ctx, t, images, clean.Ref(e.upHost()), id, clean)
	removeCRIImage(ctx, t, images, clean.Ref(e.upHost()))
}

// TestNodeSetupContainerdClientCert pulls through containerd's CRI plugin with no pull secret, the node
// identified by the client certificate `pullgate hosts-toml --client-cert --client-key` copied next to the
// hosts.toml files: in mirror mode (the upstream's registry listed) and in prefix mode (pullgate's own host
// listed, for its CA and the certificate). A repository the node may not pull fails without a request to the
// upstream.
func TestNodeSetupContainerdClientCert(t *testing.T) {
	containerd := requireTool(t, "containerd")
	requireRoot(t)
	e := sharedEnv(t)
	clientCA, err := NewCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := clientCA.IssueClient(t.TempDir(), "node-1")
	if err != nil {
		t.Fatal(err)
	}
	pg := startAuthPullgate(t, e, authOptions{
		robots:   []RobotOptions{{Name: "node", Allow: []string{"local/e2e/layers10"}}},
		clients:  []ClientMapping{{Subject: "node-1", Robot: "node"}},
		clientCA: clientCA.CertFile,
	})
	ctx := ctxFor(t, 2*time.Minute)
	hostsDir := runHostsTOML(t, pg.Opts.Bin, pg.URL, e.caFile(), []string{e.upHost(), pg.Addr},
		"--client-cert", cert, "--client-key", key)
	for _, reg := range []string{e.upHost(), pg.Addr} {
		st, err := os.Stat(filepath.Join(hostsDir, reg, "pullgate-client-key.pem"))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("the node's copy of the client key for %s: %v, %v; want mode 0600", reg, st, err)
		}
	}
	images := startCRIContainerd(ctx, t, containerd, hostsDir)
	tests := []struct {
		name string
		ref  string
		im   Image
		want string // what the error must say; empty for success
	}{
		{"mirror", e.fix.Layers10.Ref(e.upHost()), e.fix.Layers10, ""},
		{"prefix", e.fix.Layers10.Ref(pg.Addr + "/local"), e.fix.Layers10, ""},
		{"mirror, not allowed", e.fix.Multi.Ref(e.upHost()), e.fix.Multi, "403 Forbidden"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := servedTo(pg.Pullgate, tt.im.Repo, "cert:node-1", "mtls")
			e.proxy.Reset()
			id, err := kubeletPull(ctx, images, tt.ref, nil)
			if n := e.proxy.Count("UA containerd"); n != 0 {
				t.Errorf("containerd sent %d requests to the upstream itself: %v", n, e.proxy.Counts())
			}
			if tt.want != "" {
				if err == nil {
					removeCRIImage(ctx, t, images, tt.ref)
					t.Fatalf("CRI pull of %s succeeded", tt.ref)
				}
				if !strings.Contains(err.Error(), tt.want) {
					t.Errorf("CRI pull of %s failed without %q: %v", tt.ref, tt.want, err)
				}
				notInContainerd(ctx, t, images, tt.ref)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			checkCRIImage(ctx, t, images, tt.ref, id, tt.im)
			removeCRIImage(ctx, t, images, tt.ref)
			if servedTo(pg.Pullgate, tt.im.Repo, "cert:node-1", "mtls") == before {
				t.Errorf("the pull log has no new successful request for %s by cert:node-1 (auth mtls)", tt.im.Repo)
			}
		})
	}
}

// TestNodeSetupContainerdRequests records what containerd 1.6 sends to pullgate with the hosts.toml of
// `pullgate hosts-toml`: every request goes to pullgate's /v2/<repository>/... and names the registry in ?ns=,
// which is how pullgate knows the upstream when the path does not say it.
func TestNodeSetupContainerdRequests(t *testing.T) {
	containerd := requireTool(t, "containerd")
	requireRoot(t)
	e := sharedEnv(t)
	if e.pg == nil {
		t.Skip("direct mode: no pullgate")
	}
	ctx := ctxFor(t, 2*time.Minute)
	front, seen := startRecordingFront(t, e, e.pg.URL)
	hostsDir := runHostsTOML(t, e.pg.Opts.Bin, front, e.caFile(), []string{e.upHost()})
	images := startCRIContainerd(ctx, t, containerd, hostsDir)
	e.proxy.Reset()
	ref := e.fix.Layers10.Ref(e.upHost())
	id, err := kubeletPull(ctx, images, ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkCRIImage(ctx, t, images, ref, id, e.fix.Layers10)
	removeCRIImage(ctx, t, images, ref)
	reqs := seen()
	if len(reqs) == 0 {
		t.Fatal("containerd sent pullgate nothing")
	}
	wantQuery := url.Values{"ns": {e.upHost()}}.Encode()
	for _, r := range reqs {
		if !strings.HasPrefix(r.Path, "/v2/"+e.fix.Layers10.Repo+"/") || r.RawQuery != wantQuery {
			t.Errorf("containerd asked pullgate for %s?%s; want /v2/%s/...?%s", r.Path, r.RawQuery, e.fix.Layers10.Repo, wantQuery)
		}
	}
	if n := e.proxy.Count("UA containerd"); n != 0 {
		t.Errorf("containerd sent %d requests to the upstream itself", n)
	}
}

// startRecordingFront starts a TLS reverse proxy to target (with e's serving certificate) that records each
// request's URL, and returns its URL and a function that returns the URLs recorded so far.
func startRecordingFront(t *testing.T, e *env, target string) (string, func() []*url.URL) {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(e.certFile, e.keyFile)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.Transport = e.transport()
	var mu sync.Mutex
	var seen []*url.URL
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			seen = append(seen, &url.URL{Path: r.URL.Path, RawQuery: r.URL.RawQuery})
			mu.Unlock()
			rp.ServeHTTP(w, r)
		}),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}},
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() { _ = srv.ServeTLS(l, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })
	return "https://" + l.Addr().String(), func() []*url.URL {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
}

// TestNodeSetupSkopeo pulls with skopeo through the registries.conf drop-in and the certs.d CA that
// `pullgate registries-conf` wrote. The registry's name resolves nowhere (only pullgate knows it, as an
// upstream's name), so the image can only come through pullgate's path prefix: pullgate's pull log must show
// skopeo's requests.
func TestNodeSetupSkopeo(t *testing.T) {
	skopeo := requireTool(t, "skopeo")
	e := sharedEnv(t)
	if e.pg == nil {
		t.Skip("direct mode: no pullgate")
	}
	ctx := ctxFor(t, 2*time.Minute)
	const registry = "registry.e2e.test"
	dir := t.TempDir()
	pg, err := StartPullgate(ctx, PullgateOptions{Bin: e.pg.Opts.Bin, Name: "pullgate-nodesetup", DataDir: filepath.Join(dir, "data"),
		LogDir: dir, CertFile: e.certFile, KeyFile: e.keyFile, CA: e.ca,
		Upstreams: registry + "=" + e.proxy.URL, Default: registry, UpstreamCAFile: e.ca.CertFile})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pg.Stop(10 * time.Second); err != nil {
			t.Log(err)
		}
		if t.Failed() {
			t.Logf("---- %s (tail)\n%s", pg.Spec.Name, pg.Tail(40))
		}
	})
	conf, certsDir := filepath.Join(dir, "registries.conf.d", "50-pullgate.conf"), filepath.Join(dir, "certs.d")
	if _, err := Run(ctx, time.Minute, nil, pg.Opts.Bin, "registries-conf", "--server", pg.URL, "--ca", e.caFile(),
		"--file", conf, "--certs-dir", certsDir, registry); err != nil {
		t.Fatal(err)
	}
	for _, im := range []Image{e.fix.Layers10, e.fix.Multi} {
		t.Run(im.Repo, func(t *testing.T) {
			ref := "docker://" + im.Ref(registry)
			raw := filepath.Join(t.TempDir(), "raw")
			// skopeo 1.9 ignores CONTAINERS_REGISTRIES_CONF and has no flag for the drop-in directory: the
			// drop-in, a complete version 2 file, is read as the main file.
			err := RunToFile(ctx, time.Minute, raw, skopeo, "--registries-conf", conf, "--insecure-policy",
				"inspect", "--raw", "--retry-times", "0", "--cert-dir", filepath.Join(certsDir, pg.Addr), ref)
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := fileDigest(raw); got != im.Digest.String() {
				t.Errorf("skopeo inspect --raw %s: manifest hashes to %s, want %s", ref, got, im.Digest)
			}
			n := countLines(pg, func(l PullLine) bool {
				return l.Upstream == registry && l.Repository == im.Repo && l.Status == http.StatusOK &&
					strings.HasPrefix(l.Path, "/v2/"+registry+"/"+im.Repo+"/manifests/") && strings.HasPrefix(l.UserAgent, "skopeo")
			})
			if n == 0 {
				t.Errorf("pullgate's pull log has no manifest request by skopeo for %s/%s through the path prefix:\n%s",
					registry, im.Repo, strings.Join(pg.PullLog(), "\n"))
			}
		})
	}
}
