package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/crypto/bcrypt"

	"github.com/pullgate/pullgate/certs"
	"github.com/pullgate/pullgate/gate"
	"github.com/pullgate/pullgate/gate/scannertest"
	"github.com/pullgate/pullgate/identity"
)

// gatedPullgate is pullgate run in-process as `pullgate serve` runs it, from PULLGATE_* variables: a gate
// policy, the fake Harbor scanner (which pulls what it scans back through pullgate, at
// https://pullgate.test), go-containerregistry's registry as the docker.io upstream, and a robots file with a
// robot that pulls (ci) and an admin robot (ops).
type gatedPullgate struct {
	url, dataDir, caFile string
	scanner              *scannertest.Scanner
	upstream             *httptest.Server
	ci, ops              [2]string // login, secret
}

func startGated(t *testing.T, policy string, findings func(repository, digest string) []gate.Finding) *gatedPullgate {
	t.Helper()
	return startGatedWith(t, policy, findings, nil)
}

// startGatedWith is startGated with the upstream registry behind front (nil: none), which sees every request
// to it.
func startGatedWith(t *testing.T, policy string, findings func(repository, digest string) []gate.Finding, front func(http.Handler) http.Handler) *gatedPullgate {
	t.Helper()
	dir := t.TempDir()
	g := &gatedPullgate{dataDir: filepath.Join(dir, "data")}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pemOf := func(c *x509.Certificate) []byte {
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}

	var upstream http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if front != nil {
		upstream = front(upstream)
	}
	g.upstream = httptest.NewTLSServer(upstream)
	t.Cleanup(g.upstream.Close)

	// pullgate's local CA, made before it starts (it keeps a CA it finds), so that the scanner trusts it.
	local, err := certs.EnsureLocal(filepath.Join(g.dataDir, "tls"), []string{"pullgate.test"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	g.caFile = local.CAFile
	caPEM, err := os.ReadFile(local.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	var addr atomic.Pointer[string]
	g.scanner = scannertest.New(scannertest.Options{
		Findings: findings,
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool},
			// pullgate.test is pullgate, wherever it listens.
			DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
				if a == "pullgate.test:443" {
					a = *addr.Load()
				}
				return (&net.Dialer{}).DialContext(ctx, network, a)
			},
		},
	})
	t.Cleanup(g.scanner.Close)

	var robots identity.File
	for _, r := range []struct {
		name  string
		pull  []string
		admin bool
		cred  *[2]string
	}{{"ci", []string{"docker.io/**"}, false, &g.ci}, {"ops", nil, true, &g.ops}} {
		clear, secret, err := identity.NewSecret(time.Now(), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		robots.Robots = append(robots.Robots, identity.Robot{Name: r.name, Pull: r.pull, Admin: r.admin, Created: time.Now(), Secrets: []identity.Secret{secret}})
		*r.cred = [2]string{"robot$" + r.name, clear}
	}
	robotsFile := filepath.Join(dir, "robots.yaml")
	if err := robots.Write(robotsFile); err != nil {
		t.Fatal(err)
	}

	a := serveInProcess(t, map[string]string{
		"PULLGATE_ADDR": "127.0.0.1:0", "PULLGATE_METRICS_ADDR": "127.0.0.1:0", "PULLGATE_DATA_DIR": g.dataDir,
		"PULLGATE_TLS_HOSTS":            "pullgate.test",
		"PULLGATE_UPSTREAMS":            "docker.io=" + g.upstream.URL,
		"PULLGATE_UPSTREAM_CA_FILE":     write("upstream.crt", pemOf(g.upstream.Certificate())),
		"PULLGATE_ROBOTS_FILE":          robotsFile,
		"PULLGATE_GATE_POLICY":          write("policy.yaml", []byte(policy)),
		"PULLGATE_SCANNER_URL":          g.scanner.URL(),
		"PULLGATE_SCANNER_CA_FILE":      write("scanner.crt", pemOf(g.scanner.Certificate())),
		"PULLGATE_SCANNER_REGISTRY_URL": "https://pullgate.test",
	})
	addr.Store(&a)
	g.url = "https://" + a
	return g
}

// env is the environment of a client command: where pullgate is, and the robot's credentials (none for a
// zero robot).
func (g *gatedPullgate) env(robot [2]string) map[string]string {
	e := map[string]string{"PULLGATE_SERVER": g.url, "PULLGATE_CA_FILE": g.caFile}
	if robot[0] != "" {
		e["PULLGATE_USERNAME"], e["PULLGATE_PASSWORD"] = robot[0], robot[1]
	}
	return e
}

// push writes an image or index to the upstream at repository:tag.
func (g *gatedPullgate) push(t *testing.T, repoTag string, x remote.Taggable) {
	t.Helper()
	ref, err := name.ParseReference(strings.TrimPrefix(g.upstream.URL, "https://") + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	opt := remote.WithTransport(g.upstream.Client().Transport)
	switch x := x.(type) {
	case v1.Image:
		err = remote.Write(ref, x, opt)
	case v1.ImageIndex:
		err = remote.WriteIndex(ref, x, opt)
	}
	if err != nil {
		t.Fatalf("pushing %s: %v", repoTag, err)
	}
}

func randomImage(t *testing.T) (v1.Image, string) {
	t.Helper()
	img, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return img, d.String()
}

// TestScanAndVerdicts runs `pullgate scan` against a pullgate with a gate, then `pullgate verdicts` on what the
// scans left, and checks what they print and their exit status.
func TestScanAndVerdicts(t *testing.T) {
	clean, dClean := randomImage(t)
	vuln, dVuln := randomImage(t)
	amd, dAmd := randomImage(t)
	arm, dArm := randomImage(t)
	attestation, _ := randomImage(t)
	slow, dSlow := randomImage(t)
	late, _ := randomImage(t)
	vulnerable := map[string]bool{dVuln: true, dArm: true}
	g := startGated(t, "severity: High\nwait: 100ms\n", func(_, digest string) []gate.Finding {
		if !vulnerable[digest] {
			return nil
		}
		return []gate.Finding{{ID: "CVE-2026-0001", Severity: gate.SeverityCritical, Package: "openssl", Version: "3.0.1", FixVersion: "3.0.2"}}
	})
	g.push(t, "library/nginx:1", clean)
	g.push(t, "library/app:vuln", vuln)
	g.push(t, "library/multi:1", mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
		mutate.IndexAddendum{Add: attestation, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "unknown", Architecture: "unknown"}}},
	))
	g.push(t, "library/slow:1", slow)
	g.push(t, "library/late:1", late)

	scanTests := []struct {
		name    string
		args    []string
		env     map[string]string // nil: the ci robot's
		stdin   string
		latency time.Duration // of the scans this case starts
		code    int
		// lines are the prefixes of the output lines, one each; has are in the output, errHas in stderr.
		lines, has, errHas []string
	}{
		{
			name:  "a clean image passes",
			args:  []string{"nginx:1"},
			lines: []string{"docker.io/library/nginx:1 - " + dClean + " pass\n"},
		},
		{
			name:  "a vulnerable image is blocked, with pullgate's reason",
			args:  []string{"app:vuln"},
			code:  1,
			lines: []string{"docker.io/library/app:vuln - - blocked: blocked by pullgate policy (rule default: High or higher"},
			has:   []string{dVuln, "CVE-2026-0001 (Critical, openssl 3.0.1, fixed in 3.0.2)"},
		},
		{
			name: "an index: one line per platform, attestations left out",
			args: []string{"docker.io/library/multi:1"},
			code: 1,
			lines: []string{
				"docker.io/library/multi:1 linux/amd64 " + dAmd + " pass\n",
				"docker.io/library/multi:1 linux/arm64 " + dArm + " blocked: blocked by pullgate policy",
			},
		},
		{
			name:  "an index, one platform",
			args:  []string{"--platform", "linux/amd64", "multi:1"},
			lines: []string{"docker.io/library/multi:1 linux/amd64 " + dAmd + " pass\n"},
		},
		{
			name:  "an index without the platform asked for",
			args:  []string{"--platform", "linux/s390x", "multi:1"},
			code:  1,
			lines: []string{"docker.io/library/multi:1 - "},
			has:   []string{"error: the index", "has no manifest for the platforms asked for (it has: linux/amd64, linux/arm64, unknown/unknown)"},
		},
		{
			name:  "standard input, in input order, each image once",
			stdin: "# from pullgate images\ndocker.io/library/app:vuln\n\nnginx:1\ndocker.io/library/nginx:1\n",
			code:  1,
			lines: []string{"docker.io/library/app:vuln - - blocked: ", "docker.io/library/nginx:1 - " + dClean + " pass\n"},
		},
		{
			name: "json",
			args: []string{"--json", "nginx:1", "app@" + dVuln},
			code: 1,
			lines: []string{
				`{"image":"docker.io/library/nginx:1","digest":"` + dClean + `","verdict":"pass"}` + "\n",
				`{"image":"docker.io/library/app@` + dVuln + `","digest":"` + dVuln + `","verdict":"blocked","message":"blocked by pullgate policy`,
			},
		},
		{
			name:    "pending, then pass",
			args:    []string{"--timeout", "30s", "slow:1"},
			latency: time.Second,
			lines:   []string{"docker.io/library/slow:1 - " + dSlow + " pass\n"},
			errHas:  []string{"docker.io/library/slow:1 -: pending: ", "its vulnerability scan is still running", "asking again for up to"},
		},
		{
			name:    "still pending at the timeout",
			args:    []string{"--timeout", "300ms", "late:1"},
			latency: 5 * time.Second,
			code:    1,
			lines:   []string{"docker.io/library/late:1 - - pending: "},
			has:     []string{"its vulnerability scan is still running"},
		},
		{
			name:  "an image the upstream does not have",
			args:  []string{"nginx:404"},
			code:  1,
			lines: []string{"docker.io/library/nginx:404 - - error: "},
			has:   []string{"MANIFEST_UNKNOWN"},
		},
		{
			name:  "without credentials",
			args:  []string{"nginx:1"},
			env:   g.env([2]string{}),
			code:  1,
			lines: []string{"docker.io/library/nginx:1 - - error: authentication required (set PULLGATE_USERNAME and PULLGATE_PASSWORD"},
		},
		{
			name:  "PULLGATE_SERVER, and the CA in pullgate's data directory",
			args:  []string{"nginx:1"},
			env:   map[string]string{"PULLGATE_SERVER": g.url, "PULLGATE_DATA_DIR": g.dataDir, "PULLGATE_USERNAME": g.ci[0], "PULLGATE_PASSWORD": g.ci[1]},
			lines: []string{"docker.io/library/nginx:1 - " + dClean + " pass\n"},
		},
	}
	for _, tt := range scanTests {
		t.Run("scan/"+tt.name, func(t *testing.T) {
			g.scanner.SetLatency(tt.latency)
			defer g.scanner.SetLatency(0)
			env := tt.env
			if env == nil {
				env = g.env(g.ci)
			}
			var out, errOut bytes.Buffer
			code := runScan(tt.args, env, strings.NewReader(tt.stdin), &out, &errOut, scanOptions{MaxWait: 50 * time.Millisecond})
			if code != tt.code {
				t.Errorf("exit status %d, want %d", code, tt.code)
			}
			lines := strings.SplitAfter(out.String(), "\n")
			lines = lines[:len(lines)-1]
			if len(lines) != len(tt.lines) {
				t.Errorf("%d lines, want %d", len(lines), len(tt.lines))
			}
			for i := range min(len(lines), len(tt.lines)) {
				if !strings.HasPrefix(lines[i], tt.lines[i]) {
					t.Errorf("line %d does not start with %q", i+1, tt.lines[i])
				}
			}
			for _, s := range tt.has {
				if !strings.Contains(out.String(), s) {
					t.Errorf("the output lacks %q", s)
				}
			}
			for _, s := range tt.errHas {
				if !strings.Contains(errOut.String(), s) {
					t.Errorf("stderr lacks %q", s)
				}
			}
			if t.Failed() {
				t.Logf("stdout:\n%s\nstderr:\n%s", out.String(), errOut.String())
			}
		})
	}

	short := func(d string) string { return d[:len("sha256:")+12] }
	verdictTests := []struct {
		name        string
		args        []string
		env         map[string]string
		code        int
		has, hasNot []string // in stdout
		errHas      []string
	}{
		{
			name: "every verdict, as an admin",
			env:  g.env(g.ops),
			has: []string{"DIGEST", "REPOSITORY", "MESSAGE", short(dClean), short(dVuln), short(dAmd), short(dArm), short(dSlow),
				"docker.io/library/app", "1 Critical", "CVE-2026-0001", "Fake 1.0.0"},
		},
		{
			name:   "one repository, by its short name",
			args:   []string{"nginx"},
			env:    g.env(g.ops),
			has:    []string{short(dClean) + " docker.io/library/nginx 1 pass no findings Fake 1.0.0 20"},
			hasNot: []string{short(dVuln), short(dAmd)},
		},
		{
			name:   "a pattern",
			args:   []string{"docker.io/library/mul*"},
			env:    g.env(g.ops),
			has:    []string{short(dAmd), short(dArm)},
			hasNot: []string{short(dClean), short(dVuln)},
		},
		{
			name:   "a digest",
			args:   []string{"app@" + dVuln},
			env:    g.env(g.ops),
			has:    []string{short(dVuln) + " docker.io/library/app vuln blocked 1 Critical Fake 1.0.0 20", "fixed in 3.0.2"},
			hasNot: []string{short(dClean)},
		},
		{
			name:   "a tag narrows nothing, and says so",
			args:   []string{"multi:1"},
			env:    g.env(g.ops),
			has:    []string{short(dAmd), short(dArm)},
			hasNot: []string{short(dClean)},
			errHas: []string{"not by tag: listing every verdict of docker.io/library/multi"},
		},
		{
			name:   "json",
			args:   []string{"--json", "app"},
			env:    g.env(g.ops),
			has:    []string{`"digest":"` + dVuln + `","upstream":"docker.io","repository":"library/app","tag":"vuln","verdict":"blocked"`},
			hasNot: []string{dClean},
		},
		{
			name:   "without credentials",
			env:    g.env([2]string{}),
			code:   1,
			errHas: []string{"pullgate answered 401", "set PULLGATE_USERNAME and PULLGATE_PASSWORD to an admin robot's credentials"},
		},
		{
			name:   "a robot that is not an admin",
			env:    g.env(g.ci),
			code:   1,
			errHas: []string{"pullgate answered 403", "robot$ci is not an admin robot"},
		},
	}
	for _, tt := range verdictTests {
		t.Run("verdicts/"+tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			if code := runVerdicts(tt.args, tt.env, &out, &errOut); code != tt.code {
				t.Errorf("exit status %d, want %d", code, tt.code)
			}
			// The table's columns, each separated by one space.
			var table strings.Builder
			for _, l := range strings.Split(out.String(), "\n") {
				table.WriteString(strings.Join(strings.Fields(l), " ") + "\n")
			}
			for _, s := range tt.has {
				if !strings.Contains(table.String(), s) {
					t.Errorf("the output lacks %q", s)
				}
			}
			for _, s := range tt.hasNot {
				if strings.Contains(out.String(), s) {
					t.Errorf("the output has %q", s)
				}
			}
			for _, s := range tt.errHas {
				if !strings.Contains(errOut.String(), s) {
					t.Errorf("stderr lacks %q", s)
				}
			}
			if t.Failed() {
				t.Logf("stdout:\n%s\nstderr:\n%s", out.String(), errOut.String())
			}
		})
	}
}

// TestScanUsage holds that usage mistakes are exit status 2 and that nothing is asked then (the server named
// does not listen).
func TestScanUsage(t *testing.T) {
	env := map[string]string{"PULLGATE_SERVER": "https://127.0.0.1:1"}
	tests := []struct {
		name   string
		args   []string
		env    map[string]string
		stdin  string
		errHas string
	}{
		{"not a reference", []string{"nginx:1", "Nginx"}, env, "", `nothing was asked, as these are not image references`},
		{"not a reference on standard input", nil, env, "nginx\nnginx:bad:tag\n", `nothing was asked`},
		{"nothing to scan", nil, env, "# nothing\n\n", "no image to scan"},
		{"plain http", []string{"--server", "http://127.0.0.1:1", "nginx"}, env, "", "pullgate speaks only TLS"},
		{"a server with a path", []string{"--server", "https://h/x", "nginx"}, env, "", "https://host[:port]"},
		{"a bad platform", []string{"--platform", "linux", "nginx"}, env, "", "--platform"},
		{"no timeout", []string{"--timeout", "0s", "nginx"}, env, "", "--timeout must be positive"},
		{"a user without a password", []string{"nginx"}, map[string]string{"PULLGATE_USERNAME": "robot$ci"}, "", "set both or neither"},
		{"a CA file without a certificate", []string{"--ca-file", os.DevNull, "nginx"}, env, "", "holds no PEM certificate"},
		{"an unknown flag", []string{"--nope", "nginx"}, env, "", "flag provided but not defined"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			if code := runScan(tt.args, tt.env, strings.NewReader(tt.stdin), &out, &errOut, scanOptions{}); code != 2 {
				t.Errorf("exit status %d, want 2", code)
			}
			if out.Len() != 0 || !strings.Contains(errOut.String(), tt.errHas) {
				t.Errorf("stdout %q, stderr %q: want nothing, and %q", out.String(), errOut.String(), tt.errHas)
			}
		})
	}
}

// TestVerdictsFilter holds how IMAGE becomes the admin API's query, and the usage mistakes (exit status 2).
func TestVerdictsFilter(t *testing.T) {
	d := "sha256:" + strings.Repeat("ab", 32)
	tests := []struct {
		image string
		want  string // the query, encoded; "" for a usage mistake
	}{
		{"nginx", "repository=docker.io%2Flibrary%2Fnginx"},
		{"index.docker.io/nginx", "repository=docker.io%2Flibrary%2Fnginx"},
		{"ghcr.io/o/app:1", "repository=ghcr.io%2Fo%2Fapp"},
		{"ghcr.io/o/app@" + d, "digest=" + url.QueryEscape(d) + "&repository=ghcr.io%2Fo%2Fapp"},
		{d, "digest=" + url.QueryEscape(d)},
		{"pullgate.example.com/quay.io/o/app", "repository=quay.io%2Fo%2Fapp"},
		{"docker.io/library/*", "repository=docker.io%2Flibrary%2F%2A"},
		{"nginx*", "repository=docker.io%2Flibrary%2Fnginx%2A"},
		{"docker.io/**", "repository=docker.io%2F%2A%2A"},
		{"ghcr.io/o/**", "repository=ghcr.io%2Fo%2F%2A%2A"},
		{"pullgate.example.com/ghcr.io/o/*", "repository=ghcr.io%2Fo%2F%2A"},
		{"docker.io/library/*:1", ""},
		{"Nginx", ""},
	}
	for _, tt := range tests {
		t.Run(tt.image, func(t *testing.T) {
			var out, errOut bytes.Buffer
			env := map[string]string{"PULLGATE_SERVER": "https://pullgate.example.com"}
			set := newTestClient(t, env)
			q, _, err := set.verdictFilter(tt.image)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("query %q, want an error", q.Encode())
				}
				if code := runVerdicts([]string{tt.image}, env, &out, &errOut); code != 2 {
					t.Fatalf("exit status %d, want 2 (stderr %q)", code, errOut.String())
				}
				return
			}
			if err != nil || q.Encode() != tt.want {
				t.Fatalf("query %q (%v), want %q", q.Encode(), err, tt.want)
			}
		})
	}
	var errOut bytes.Buffer
	if code := runVerdicts([]string{"a", "b"}, nil, io.Discard, &errOut); code != 2 || !strings.Contains(errOut.String(), "one IMAGE at most") {
		t.Fatalf("two IMAGEs: exit status %d, stderr %q", code, errOut.String())
	}
}

func newTestClient(t *testing.T, env map[string]string) *pullgateClient {
	t.Helper()
	server, caFile := "", ""
	c, err := (&clientFlags{server: &server, caFile: &caFile}).client(env)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
