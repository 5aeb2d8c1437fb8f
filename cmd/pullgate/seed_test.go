package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/pullgate/pullgate/gate"
)

// blobCounter counts the GETs of each blob at the upstream.
type blobCounter struct {
	mu   sync.Mutex
	gets map[string]int
}

func (c *blobCounter) count(digest string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gets[digest]
}

// startSeedPullgate is startGated with a policy that blocks the digests in vulnerable, and the upstream's blob
// GETs counted.
func startSeedPullgate(t *testing.T, vulnerable map[string]bool) (*gatedPullgate, *blobCounter) {
	t.Helper()
	counter := &blobCounter{gets: map[string]int{}}
	findings := func(_, digest string) []gate.Finding {
		if !vulnerable[digest] {
			return nil
		}
		return []gate.Finding{{ID: "CVE-2026-0002", Severity: gate.SeverityCritical, Package: "zlib", Version: "1.0"}}
	}
	g := startGatedWith(t, "severity: High\nwait: 100ms\n", findings, func(reg http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") {
				counter.mu.Lock()
				counter.gets[path.Base(r.URL.Path)]++
				counter.mu.Unlock()
			}
			reg.ServeHTTP(w, r)
		})
	})
	return g, counter
}

// frontProxy stands between pullgate seed and pullgate: it counts the requests that reach pullgate, the
// blob GETs among them, and the most in flight at once. With hold set, each request is held that long before
// it is passed on, so that concurrent requests overlap; one past limit in flight is not held.
type frontProxy struct {
	srv    *httptest.Server
	caFile string
	hold   time.Duration
	limit  int

	mu                sync.Mutex
	inFlight, maxSeen int
	blobGets          int
}

func startFrontProxy(t *testing.T, g *gatedPullgate) *frontProxy {
	t.Helper()
	target, err := url.Parse(g.url)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(g.caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	rp := &httputil.ReverseProxy{
		Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(target) },
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
		ErrorLog:  log.New(io.Discard, "", 0),
	}
	p := &frontProxy{}
	p.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.inFlight++
		p.maxSeen = max(p.maxSeen, p.inFlight)
		if strings.Contains(r.URL.Path, "/blobs/") {
			p.blobGets++
		}
		hold := p.hold
		if p.limit > 0 && p.inFlight > p.limit {
			hold = 0 // the bound is broken already: no need to make it plainer
		}
		p.mu.Unlock()
		defer func() {
			p.mu.Lock()
			p.inFlight--
			p.mu.Unlock()
		}()
		if hold > 0 {
			timer := time.NewTimer(hold) // makes concurrent requests overlap; nothing is waited for
			select {
			case <-timer.C:
			case <-r.Context().Done():
				timer.Stop()
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.srv.Close)
	p.caFile = filepath.Join(t.TempDir(), "front.crt")
	if err := os.WriteFile(p.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// reset zeroes the counts and sets the hold and limit.
func (p *frontProxy) reset(hold time.Duration, limit int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.maxSeen, p.blobGets, p.hold, p.limit = 0, 0, hold, limit
}

func (p *frontProxy) counts() (blobGets, maxSeen int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.blobGets, p.maxSeen
}

func (p *frontProxy) env(g *gatedPullgate) map[string]string {
	return map[string]string{"PULLGATE_SERVER": p.srv.URL, "PULLGATE_CA_FILE": p.caFile, "PULLGATE_USERNAME": g.ci[0], "PULLGATE_PASSWORD": g.ci[1]}
}

// seedBlob is a blob of a test image.
type seedBlob struct {
	digest string
	size   int64
}

// blobsOf returns the config and layers of img.
func blobsOf(t *testing.T, img v1.Image) []seedBlob {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	out := []seedBlob{{m.Config.Digest.String(), m.Config.Size}}
	for _, l := range m.Layers {
		out = append(out, seedBlob{l.Digest.String(), l.Size})
	}
	return out
}

func sizeOf(blobs ...[]seedBlob) (n int64) {
	for _, bs := range blobs {
		for _, b := range bs {
			n += b.size
		}
	}
	return n
}

func seedRandomImage(t *testing.T, layers int64) v1.Image {
	t.Helper()
	img, err := random.Image(512, layers)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func twoPlatforms(t *testing.T, amd, arm, extra v1.Image) v1.ImageIndex {
	t.Helper()
	adds := []mutate.IndexAddendum{
		{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}}},
	}
	if extra != nil {
		adds = append(adds, mutate.IndexAddendum{Add: extra, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "unknown", Architecture: "unknown"}}})
	}
	return mutate.AppendManifests(empty.Index, adds...)
}

// TestSeed runs `pullgate seed` against a gated pullgate, through a proxy that counts what reaches pullgate,
// and checks what reached the upstream, what it prints and its exit status.
func TestSeed(t *testing.T) {
	nginx := seedRandomImage(t, 2)
	amd, arm, attestation := seedRandomImage(t, 1), seedRandomImage(t, 2), seedRandomImage(t, 1)
	pAmd, pArm := seedRandomImage(t, 1), seedRandomImage(t, 1)
	vuln := seedRandomImage(t, 1)
	app, listA, listB := seedRandomImage(t, 1), seedRandomImage(t, 1), seedRandomImage(t, 1)
	slow := seedRandomImage(t, 1)
	dVuln, err := vuln.Digest()
	if err != nil {
		t.Fatal(err)
	}
	g, upstream := startSeedPullgate(t, map[string]bool{dVuln.String(): true})
	front := startFrontProxy(t, g)
	g.push(t, "library/nginx:1", nginx)
	g.push(t, "library/multi:1", twoPlatforms(t, amd, arm, attestation))
	g.push(t, "library/plat:1", twoPlatforms(t, pAmd, pArm, nil))
	g.push(t, "library/vuln:1", vuln)
	g.push(t, "team/app:2", app)
	g.push(t, "library/list:a", listA)
	g.push(t, "library/list:b", listB)
	g.push(t, "library/slow:1", slow)
	var jobImages []string
	for i := range 5 {
		g.push(t, fmt.Sprintf("library/jobs:%d", i), seedRandomImage(t, 1))
		jobImages = append(jobImages, fmt.Sprintf("jobs:%d", i))
	}

	state := filepath.Join(t.TempDir(), "seed.state")
	listFile := filepath.Join(t.TempDir(), "images.txt")
	if err := os.WriteFile(listFile, []byte("# for the rollout\nlist:a\n\n  docker.io/library/list:b  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	deployment := `apiVersion: apps/v1
kind: Deployment
metadata: {name: app}
spec:
  template:
    spec:
      initContainers: [{name: init, image: "list:a"}]
      containers: [{name: app, image: "team/app:2"}]
`
	bNginx, bAmd, bArm, bAtt := blobsOf(t, nginx), blobsOf(t, amd), blobsOf(t, arm), blobsOf(t, attestation)
	bPAmd, bPArm := blobsOf(t, pAmd), blobsOf(t, pArm)
	all := func(bs ...[]seedBlob) []seedBlob {
		var out []seedBlob
		for _, b := range bs {
			out = append(out, b...)
		}
		return out
	}

	tests := []struct {
		name    string
		args    []string
		stdin   string
		latency time.Duration // of the scans this case starts
		code    int
		// errLines are lines of stderr, each found by its prefix (the durations vary); out is in stdout.
		errLines, out, outNot []string
		// filled are blobs the upstream was asked for once by now; never are blobs it was never asked for.
		filled, never []seedBlob
		// pullgateBlobs is the blob GETs that reached pullgate; -1 for any.
		pullgateBlobs int
	}{
		{
			name: "an image and an index: every blob of every platform, attestations left out; one image fails",
			args: []string{"--state", state, "nginx:1", "docker.io/library/multi:1", "absent:1"},
			code: 1,
			errLines: []string{
				fmt.Sprintf("seeding docker.io/library/nginx:1: 3 blobs, %d bytes\n", sizeOf(bNginx)),
				fmt.Sprintf("seeded docker.io/library/nginx:1: %d bytes in ", sizeOf(bNginx)),
				fmt.Sprintf("seeding docker.io/library/multi:1: 5 blobs, %d bytes\n", sizeOf(bAmd, bArm)),
				fmt.Sprintf("seeded docker.io/library/multi:1: %d bytes in ", sizeOf(bAmd, bArm)),
			},
			out:           []string{fmt.Sprintf("seeded 2 of 3 images: %d bytes read in ", sizeOf(bNginx, bAmd, bArm)), "failed:\n  docker.io/library/absent:1: "},
			outNot:        []string{"skipped"},
			filled:        all(bNginx, bAmd, bArm),
			never:         bAtt,
			pullgateBlobs: 8,
		},
		{
			name:          "again with the state file the failed run kept: no blob is read, and it says so",
			args:          []string{"--state", state, "nginx:1", "docker.io/library/multi:1"},
			errLines:      []string{"seeding docker.io/library/nginx:1: 0 blobs, 0 bytes; 3 blobs already seeded\n", "seeded docker.io/library/nginx:1: 0 bytes in "},
			out:           []string{"seeded 2 of 2 images: 0 bytes read in ", "; skipped 8 blobs already seeded (state file " + state + ")\n"},
			filled:        all(bNginx, bAmd, bArm),
			pullgateBlobs: 0,
		},
		{
			name:          "again: the run that seeded every image removed the state file, so every blob is read, from pullgate's cache",
			args:          []string{"--state", state, "nginx:1", "docker.io/library/multi:1"},
			out:           []string{fmt.Sprintf("seeded 2 of 2 images: %d bytes read in ", sizeOf(bNginx, bAmd, bArm))},
			outNot:        []string{"skipped"},
			filled:        all(bNginx, bAmd, bArm), // once still: the upstream was not asked again
			pullgateBlobs: 8,
		},
		{
			name:          "again without a state file: every blob is read, from pullgate's cache",
			args:          []string{"--state", "", "nginx:1", "multi:1"},
			out:           []string{fmt.Sprintf("seeded 2 of 2 images: %d bytes read in ", sizeOf(bNginx, bAmd, bArm))},
			outNot:        []string{"skipped"},
			filled:        all(bNginx, bAmd, bArm), // once still: the upstream was not asked again
			pullgateBlobs: 8,
		},
		{
			name:          "one platform",
			args:          []string{"--state", "", "--platform", "linux/amd64", "plat:1"},
			errLines:      []string{fmt.Sprintf("seeding docker.io/library/plat:1: 2 blobs, %d bytes\n", sizeOf(bPAmd))},
			filled:        bPAmd,
			never:         bPArm,
			pullgateBlobs: 2,
		},
		{
			name:          "-f file, and a platform the index does not have",
			args:          []string{"--state", "", "-f", listFile, "--platform", "linux/s390x", "plat:1"},
			code:          1,
			errLines:      []string{"seeding docker.io/library/list:a: 2 blobs", "seeding docker.io/library/list:b: 2 blobs", "failed docker.io/library/plat:1: the index sha256:"},
			out:           []string{"seeded 2 of 3 images: ", "failed:\n  docker.io/library/plat:1: the index sha256:", "has no manifest for the platforms asked for (it has: linux/amd64, linux/arm64/v8)\n"},
			filled:        all(blobsOf(t, listA), blobsOf(t, listB)),
			never:         bPArm,
			pullgateBlobs: 4,
		},
		{
			name:          "a Deployment on standard input",
			args:          []string{"--state", ""},
			stdin:         deployment,
			errLines:      []string{"seeding docker.io/library/list:a: 2 blobs", "seeding docker.io/team/app:2: 2 blobs"},
			out:           []string{"seeded 2 of 2 images: "},
			filled:        blobsOf(t, app),
			pullgateBlobs: 4,
		},
		{
			name: "a missing tag and an image the gate blocks fail; the others are seeded",
			args: []string{"--state", "", "nginx:404", "vuln:1", "nginx:1"},
			code: 1,
			errLines: []string{
				"failed docker.io/library/nginx:404: ",
				"failed docker.io/library/vuln:1: blocked by pullgate policy",
				"seeding docker.io/library/nginx:1: 3 blobs",
			},
			out: []string{
				"seeded 1 of 3 images: ",
				"failed:\n  docker.io/library/nginx:404: ",
				"MANIFEST_UNKNOWN",
				"\n  docker.io/library/vuln:1: blocked by pullgate policy (rule default: High or higher",
			},
			pullgateBlobs: 3,
		},
		{
			name:          "a scan still running: asked again until it passes",
			args:          []string{"--state", "", "slow:1"},
			latency:       time.Second,
			errLines:      []string{"seeding docker.io/library/slow:1: 2 blobs", "seeded docker.io/library/slow:1: "},
			filled:        blobsOf(t, slow),
			pullgateBlobs: 2,
		},
		{
			name:          "quiet",
			args:          []string{"--state", "", "--quiet", "nginx:404", "nginx:1"},
			code:          1,
			out:           []string{"failed:\n  docker.io/library/nginx:404: "},
			outNot:        []string{"seeded"},
			pullgateBlobs: 3,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g.scanner.SetLatency(tt.latency)
			defer g.scanner.SetLatency(0)
			front.reset(0, 0)
			var out, errOut bytes.Buffer
			code := runSeed(tt.args, front.env(g), strings.NewReader(tt.stdin), &out, &errOut,
				seedOptions{scanOptions: scanOptions{MaxWait: 50 * time.Millisecond}, Display: displayPlain})
			if code != tt.code {
				t.Errorf("exit status %d, want %d", code, tt.code)
			}
			lines := strings.SplitAfter(errOut.String(), "\n")
			for _, want := range tt.errLines {
				found := false
				for _, l := range lines {
					found = found || strings.HasPrefix(l, want)
				}
				if !found {
					t.Errorf("stderr has no line starting with %q", want)
				}
			}
			for _, s := range tt.out {
				if !strings.Contains(out.String(), s) {
					t.Errorf("stdout lacks %q", s)
				}
			}
			for _, s := range tt.outNot {
				if strings.Contains(out.String(), s) {
					t.Errorf("stdout has %q", s)
				}
			}
			for _, b := range tt.filled {
				if n := upstream.count(b.digest); n != 1 {
					t.Errorf("the upstream was asked for %s %d times, want 1", b.digest, n)
				}
			}
			for _, b := range tt.never {
				if n := upstream.count(b.digest); n != 0 {
					t.Errorf("the upstream was asked for %s %d times, want 0", b.digest, n)
				}
			}
			if gets, _ := front.counts(); tt.pullgateBlobs >= 0 && gets != tt.pullgateBlobs {
				t.Errorf("%d blob GETs reached pullgate, want %d", gets, tt.pullgateBlobs)
			}
			if t.Failed() {
				t.Logf("stdout:\n%s\nstderr:\n%s", out.String(), errOut.String())
			}
		})
	}

	t.Run("--jobs bounds the images asked for at once", func(t *testing.T) {
		for _, jobs := range []int{1, 3} {
			front.reset(30*time.Millisecond, jobs)
			var out, errOut bytes.Buffer
			args := append([]string{"--state", "", "--jobs", fmt.Sprint(jobs)}, jobImages...)
			if code := runSeed(args, front.env(g), strings.NewReader(""), &out, &errOut, seedOptions{scanOptions: scanOptions{MaxWait: 50 * time.Millisecond}, Display: displayPlain}); code != 0 {
				t.Fatalf("exit status %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errOut.String())
			}
			if _, most := front.counts(); most != jobs {
				t.Errorf("--jobs %d: %d requests in flight at most, want %d", jobs, most, jobs)
			}
		}
	})

	t.Run("bars", func(t *testing.T) {
		front.reset(0, 0)
		var out, errOut bytes.Buffer
		code := runSeed([]string{"--state", "", "nginx:1", "nginx:404"}, front.env(g), strings.NewReader(""), &out, &errOut, seedOptions{Display: displayBars})
		if code != 1 || !strings.Contains(out.String(), "seeded 1 of 2 images") || !strings.Contains(errOut.String(), "docker.io/library/nginx:1") ||
			!strings.Contains(errOut.String(), "failed docker.io/library/nginx:404") {
			t.Errorf("exit status %d\nstdout:\n%s\nstderr:\n%q", code, out.String(), errOut.String())
		}
	})

	// What was seeded is served with the upstream gone.
	g.upstream.Close()
	caPEM, err := os.ReadFile(g.caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	for _, tt := range []struct {
		repo   string
		blobs  []seedBlob
		served bool
	}{
		{"nginx", bNginx, true}, {"multi", bAmd, true}, {"multi", bArm, true}, {"plat", bPAmd, true}, {"plat", bPArm, false},
	} {
		for _, b := range tt.blobs {
			req, _ := http.NewRequest(http.MethodGet, g.url+"/v2/docker.io/library/"+tt.repo+"/blobs/"+b.digest, nil)
			req.SetBasicAuth(g.ci[0], g.ci[1])
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			n, _ := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if served := resp.StatusCode == http.StatusOK && n == b.size; served != tt.served {
				t.Errorf("with the upstream gone, %s@%s: %d, %d bytes; want served %v", tt.repo, b.digest, resp.StatusCode, n, tt.served)
			}
		}
	}
}

// TestSeedUsage holds that usage mistakes are exit status 2 and that nothing is asked then (the server named
// does not listen).
func TestSeedUsage(t *testing.T) {
	env := map[string]string{"PULLGATE_SERVER": "https://127.0.0.1:1"}
	notOurs := filepath.Join(t.TempDir(), "notes.txt")
	if err := os.WriteFile(notOurs, []byte("my notes\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	otherServer := filepath.Join(t.TempDir(), "other.state")
	if err := os.WriteFile(otherServer, []byte(stateHeader+"https://elsewhere:5443\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		args   []string
		stdin  string
		errHas string
	}{
		{"not a reference", []string{"--state", "", "nginx:1", "Nginx"}, "", "nothing was asked, as these are not image references"},
		{"not a reference in a list", []string{"--state", "", "-f", "-"}, "nginx\nnginx:bad:tag\n", "nothing was asked"},
		{"YAML that does not parse", []string{"--state", ""}, "kind: [", "standard input: "},
		{"nothing to seed", []string{"--state", ""}, "# nothing\n", "no image to seed"},
		{"a list file that is missing", []string{"--state", "", "-f", filepath.Join(t.TempDir(), "none")}, "", "no such file"},
		{"no jobs", []string{"--state", "", "--jobs", "0", "nginx"}, "", "--jobs must be from 1 to 64"},
		{"too many jobs", []string{"--state", "", "--jobs", "65", "nginx"}, "", "--jobs must be from 1 to 64"},
		{"no timeout", []string{"--state", "", "--timeout", "0s", "nginx"}, "", "--timeout must be positive"},
		{"a bad platform", []string{"--state", "", "--platform", "linux", "nginx"}, "", "--platform"},
		{"plain http", []string{"--state", "", "--server", "http://127.0.0.1:1", "nginx"}, "", "pullgate speaks only TLS"},
		{"a file that is not a state file", []string{"--state", notOurs, "nginx"}, "", "is not a state file of pullgate seed"},
		{"another server's state file", []string{"--state", otherServer, "nginx"}, "", "records the blobs of https://elsewhere:5443, not of https://127.0.0.1:1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			if code := runSeed(tt.args, env, strings.NewReader(tt.stdin), &out, &errOut, seedOptions{}); code != 2 {
				t.Errorf("exit status %d, want 2", code)
			}
			if out.Len() != 0 || !strings.Contains(errOut.String(), tt.errHas) {
				t.Errorf("stdout %q, stderr %q: want nothing, and %q", out.String(), errOut.String(), tt.errHas)
			}
		})
	}
	if b, _ := os.ReadFile(notOurs); string(b) != "my notes\n" {
		t.Errorf("a file that is not a state file was changed: %q", b)
	}
}

// TestSeedDefaultState holds where the state file is without --state: in the user's cache directory, one per
// server.
func TestSeedDefaultState(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("XDG_CACHE_HOME", dir)
	t.Setenv("HOME", dir)
	a, err := defaultStatePath("https://a:5443")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := defaultStatePath("https://b:5443")
	if filepath.Dir(a) != filepath.Join(dir, "pullgate") || a == b || !strings.HasPrefix(filepath.Base(a), "seed-") || !strings.HasSuffix(a, ".state") {
		t.Errorf("state files %s and %s", a, b)
	}
}

// TestSeedState holds the state file's reading: digests recorded are had, lines that are not are ignored and
// said, a record cut short is not had, a file past half the bound is compacted to the newest digests, and a
// new file is private.
func TestSeedState(t *testing.T) {
	const server = "https://pullgate.test:5443"
	d := func(i int) string { return fmt.Sprintf("sha256:%064x", i) }
	header := stateHeader + server + "\n"
	big := func() string {
		var sb strings.Builder
		sb.WriteString(header)
		for i := 0; sb.Len() <= maxStateBytes/2; i++ {
			sb.WriteString(d(i) + "\n")
		}
		return sb.String()
	}()
	bigCount := (len(big) - len(header)) / len(d(0)+"\n")
	tests := []struct {
		name       string
		content    *string // nil: no file
		has, hasNo []string
		noteHas    string
	}{
		{name: "a new file", has: nil, hasNo: []string{d(1)}},
		{name: "digests", content: ptr(header + d(1) + "\n" + d(2) + "\n"), has: []string{d(1), d(2)}, hasNo: []string{d(3)}},
		{name: "corrupt lines", content: ptr(header + "sha256:zz\n" + d(1) + "\n" + strings.Repeat("x", 10000) + "\n\nsha256:" + strings.Repeat("a", 63) + "\n" + d(2) + "\n"),
			has: []string{d(1), d(2)}, noteHas: "ignored 3 line(s)"},
		{name: "a record cut short", content: ptr(header + d(1) + "\n" + d(2)[:20]), has: []string{d(1)}, noteHas: "ignored 1 line(s)"},
		{name: "a file too large is compacted to the newest", content: &big, has: []string{d(bigCount - 1)}, hasNo: []string{d(0)},
			noteHas: "was too large: kept the newest"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "sub", "seed.state")
			if tt.content != nil {
				if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte(*tt.content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			s, note, err := openSeedState(p, server)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(note, tt.noteHas) {
				t.Errorf("note %q, want %q", note, tt.noteHas)
			}
			for _, x := range tt.has {
				if !s.has(x) {
					t.Errorf("%s is not had", x)
				}
			}
			for _, x := range tt.hasNo {
				if s.has(x) {
					t.Errorf("%s is had", x)
				}
			}
			s.record(d(7777777))
			if _, err := s.close(); err != nil {
				t.Fatal(err)
			}
			st, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o600 || st.Size() > maxStateBytes/2 {
				t.Errorf("the state file is %v, %d bytes", st.Mode(), st.Size())
			}
			// What this run recorded, and what it kept, is had by the next.
			again, _, err := openSeedState(p, server)
			if err != nil {
				t.Fatal(err)
			}
			defer again.close()
			for _, x := range append(tt.has, d(7777777)) {
				if !again.has(x) {
					t.Errorf("the next run does not have %s", x)
				}
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// TestSeedHostileServer holds that a blob whose bytes do not match its digest or size is a failure and is not
// recorded in the state file, so that the next run reads it again, and that answers are read with bounds.
func TestSeedHostileServer(t *testing.T) {
	good := []byte("good bytes")
	goodD := digestOf("sha256", good)
	blobs := map[string][]byte{}
	manifestFor := func(layer []byte, declared int64) (string, []byte) {
		d := digestOf("sha256", layer)
		m := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
			`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},`+
			`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d}]}`,
			goodD, len(good), d, declared)
		return d, []byte(m)
	}
	manifests := map[string][]byte{}
	tests := []struct {
		name, tag string
		serve     []byte // the layer's bytes as served
		layer     []byte // as the manifest names it
		declared  int64
		errHas    string
	}{
		{"tampered bytes", "tampered", []byte("evil bytes"), []byte("real byte1"), 10, "does not match its digest"},
		{"more than declared", "long", []byte("real byte2 and more"), []byte("real byte2"), 10, "more than the 10 bytes the manifest says"},
		{"fewer than declared", "short", []byte("real"), []byte("real byte3"), 10, "pullgate served 4 of the 10 bytes"},
		{"a manifest too large", "huge", nil, nil, 0, "larger than 4194304 bytes"},
		{"an endless blob", "endless", nil, []byte("real byte4"), 10, "more than the 10 bytes the manifest says"},
	}
	var endlessSent atomic.Int64
	var layers []string
	var endless string
	for _, tt := range tests {
		if tt.tag == "endless" {
			d, m := manifestFor(tt.layer, tt.declared)
			manifests[tt.tag] = m
			endless = d
			layers = append(layers, d)
			continue
		}
		if tt.layer == nil {
			manifests[tt.tag] = bytes.Repeat([]byte(" "), maxManifestAnswer+1)
			continue
		}
		d, m := manifestFor(tt.layer, tt.declared)
		manifests[tt.tag] = m
		blobs[d] = tt.serve
		layers = append(layers, d)
	}
	blobs[goodD] = good
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, kind, _ := strings.Cut(r.URL.Path, "/evil/")
		switch k, ref, _ := strings.Cut(kind, "/"); k {
		case "manifests":
			if m, ok := manifests[ref]; ok {
				w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
				w.Write(m)
				return
			}
		case "blobs":
			if ref == endless {
				chunk := make([]byte, 64<<10)
				for endlessSent.Load() < 256<<20 {
					n, err := w.Write(chunk)
					endlessSent.Add(int64(n))
					if err != nil {
						return
					}
				}
				return
			}
			if b, ok := blobs[ref]; ok {
				w.Write(b)
				return
			}
		}
		http.NotFound(w, r)
	}))
	defer srv.Close()
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"PULLGATE_SERVER": srv.URL, "PULLGATE_CA_FILE": caFile}
	state := filepath.Join(t.TempDir(), "seed.state")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := runSeed([]string{"--state", state, "x.example/evil:" + tt.tag}, env, strings.NewReader(""), &out, &errOut, seedOptions{Display: displayPlain})
			if code != 1 || !strings.Contains(out.String(), "failed:\n  x.example/evil:"+tt.tag+": ") || !strings.Contains(out.String(), tt.errHas) {
				t.Errorf("exit status %d, want 1 and %q\nstdout:\n%s\nstderr:\n%s", code, tt.errHas, out.String(), errOut.String())
			}
		})
	}
	if n := endlessSent.Load(); n >= 64<<20 {
		t.Errorf("seed read %d bytes of an endless blob declared as 10 bytes", n)
	}
	recorded, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(recorded), goodD) {
		t.Errorf("the good config is not recorded:\n%s", recorded)
	}
	for _, d := range layers {
		if strings.Contains(string(recorded), d) {
			t.Errorf("the bad layer %s is recorded:\n%s", d, recorded)
		}
	}
}
