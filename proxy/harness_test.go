package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pullgate/pullgate/cache"
	"github.com/pullgate/pullgate/metrics"
	"github.com/pullgate/pullgate/upstream"
)

// fault lets a test take over an upstream request. It returns true when it answered.
type fault func(w http.ResponseWriter, r *http.Request) bool

// fakeUpstream is go-containerregistry's registry behind a wrapper that counts requests and injects faults.
// It is a test double, not a model of a registry: it is the real registry code, on real TLS.
type fakeUpstream struct {
	srv *httptest.Server

	mu     sync.Mutex
	counts map[string]int // "GET blobs", "HEAD manifests", ...
	fault  fault
}

func newFakeUpstream(t testing.TB, opts ...registry.Option) *fakeUpstream {
	t.Helper()
	u := &fakeUpstream{counts: map[string]int{}}
	reg := registry.New(append([]registry.Option{registry.Logger(log.New(io.Discard, "", 0))}, opts...)...)
	u.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.counts[r.Method+" "+routeKind(r.URL.Path)]++
		f := u.fault
		u.mu.Unlock()
		if f != nil && f(w, r) {
			return
		}
		reg.ServeHTTP(w, r)
	}))
	u.srv.EnableHTTP2 = true
	u.srv.StartTLS()
	t.Cleanup(u.srv.Close)
	return u
}

// routeKind names the route family of an upstream request path, for counting.
func routeKind(p string) string {
	for _, k := range []string{"manifests", "blobs", "tags", "referrers"} {
		if strings.Contains(p, "/"+k+"/") {
			return k
		}
	}
	return "other"
}

func (u *fakeUpstream) count(key string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.counts[key]
}

func (u *fakeUpstream) resetCounts() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.counts = map[string]int{}
}

func (u *fakeUpstream) setFault(f fault) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.fault = f
}

func (u *fakeUpstream) host() string { return strings.TrimPrefix(u.srv.URL, "https://") }

// push writes an image or index to the upstream, bypassing faults.
func (u *fakeUpstream) push(t testing.TB, repoTag string, w remote.Taggable) {
	t.Helper()
	f := u.fault
	u.setFault(nil)
	defer u.setFault(f)
	ref, err := name.ParseReference(u.host() + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	opt := remote.WithTransport(u.srv.Client().Transport)
	switch x := w.(type) {
	case v1.Image:
		err = remote.Write(ref, x, opt)
	case v1.ImageIndex:
		err = remote.WriteIndex(ref, x, opt)
	default:
		err = remote.Put(ref, x, opt)
	}
	if err != nil {
		t.Fatalf("pushing %s: %v", repoTag, err)
	}
}

// clock is an adjustable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// syncBuffer collects the pull log.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// lines returns the pull log lines decoded.
func (s *syncBuffer) lines() []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(s.b.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// env is pullgate's handler, on real TLS, in front of one fake upstream named "local", with a real cache.
type env struct {
	t     testing.TB
	up    *fakeUpstream
	dir   string
	clock *clock
	opts  Options
	cache *cache.Cache
	reg   *prometheus.Registry
	m     *metrics.Metrics
	h     *Handler
	srv   *httptest.Server
	logs  *syncBuffer
	// cacheOpts are the cache's options besides Dir, Now and Logger.
	cacheOpts cache.Options
}

func newEnv(t testing.TB, tweak ...func(*Options)) *env {
	t.Helper()
	return newEnvWithRegistry(t, nil, tweak...)
}

// newEnvWithRegistry is newEnv with options for the upstream registry.
func newEnvWithRegistry(t testing.TB, regOpts []registry.Option, tweak ...func(*Options)) *env {
	t.Helper()
	e := &env{t: t, up: newFakeUpstream(t, regOpts...), dir: t.TempDir(),
		clock: &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}, logs: &syncBuffer{}}
	client, err := upstream.New(upstream.Options{
		Name: "local", URL: e.up.srv.URL, Transport: e.up.srv.Client().Transport, Now: e.clock.Now,
		Timeout: 5 * time.Second, FailureThreshold: 1000,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.opts = Options{
		Upstreams: []Upstream{{Name: "local", Hosts: []string{e.up.host()}, Fetcher: client}},
		Default:   "local",
		TagTTL:    time.Minute,
		Now:       e.clock.Now,
		Log:       slog.New(slog.NewJSONHandler(e.logs, nil)),
	}
	for _, f := range tweak {
		f(&e.opts)
	}
	e.start()
	t.Cleanup(e.stop)
	return e
}

// start opens the cache and serves the handler.
func (e *env) start() {
	e.t.Helper()
	co := e.cacheOpts
	co.Dir, co.Now, co.Logger = e.dir, e.clock.Now, slog.New(slog.NewJSONHandler(io.Discard, nil))
	c, err := cache.Open(co)
	if err != nil {
		e.t.Fatal(err)
	}
	e.cache = c
	e.reg = prometheus.NewRegistry()
	e.m = metrics.New(e.reg, c.Usage)
	opts := e.opts
	opts.Cache, opts.Metrics = c, e.m
	e.h, err = New(opts)
	if err != nil {
		e.t.Fatal(err)
	}
	e.srv = httptest.NewUnstartedServer(e.h)
	e.srv.EnableHTTP2 = true
	e.srv.StartTLS()
}

func (e *env) stop() {
	if e.srv != nil {
		e.srv.Close()
		e.srv = nil
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.h.Shutdown(ctx); err != nil {
			e.t.Errorf("background work outlived shutdown: %v", err)
		}
	}
	if e.cache != nil {
		if err := e.cache.Close(); err != nil {
			e.t.Errorf("closing cache: %v", err)
		}
		e.cache = nil
	}
}

// restart stops pullgate and starts it again on the same data directory.
func (e *env) restart() {
	e.stop()
	e.start()
}

func (e *env) host() string { return strings.TrimPrefix(e.srv.URL, "https://") }

// do sends a request to pullgate.
func (e *env) do(method, path string, hdr ...string) *http.Response {
	e.t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	return resp
}

// get sends a GET and reads the whole body.
func (e *env) get(path string, hdr ...string) (*http.Response, []byte) {
	e.t.Helper()
	resp := e.do(http.MethodGet, path, hdr...)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("GET %s: reading body: %v", path, err)
	}
	return resp, body
}

// ref names repoTag (or repo@digest) through pullgate with the path prefix "local/".
func (e *env) ref(s string) name.Reference {
	e.t.Helper()
	r, err := name.ParseReference(e.host() + "/local/" + s)
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

func (e *env) remoteOpts() []remote.Option {
	return []remote.Option{remote.WithTransport(e.srv.Client().Transport)}
}

// counter reads one metric value.
func (e *env) counter(c prometheus.Collector) float64 { return testutil.ToFloat64(c) }

// storedFiles lists the content files and temp files in the data directory.
func (e *env) storedFiles() (content, temp []string) {
	e.t.Helper()
	_ = filepath.WalkDir(filepath.Join(e.dir, "blobs"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			content = append(content, p)
		}
		return nil
	})
	entries, _ := os.ReadDir(filepath.Join(e.dir, "tmp"))
	for _, d := range entries {
		temp = append(temp, d.Name())
	}
	return content, temp
}

// waitFor polls cond until it holds or a deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ociError decodes an OCI error body and fails the test when it is not one.
func ociError(t testing.TB, body []byte) errorEntry {
	t.Helper()
	var eb errorBody
	if err := json.Unmarshal(body, &eb); err != nil || len(eb.Errors) == 0 || eb.Errors[0].Code == "" || eb.Errors[0].Message == "" {
		t.Fatalf("not an OCI error body: %q (%v)", body, err)
	}
	return eb.Errors[0]
}

// layerBlob is a random blob of n bytes with its digest.
func layerBlob(t testing.TB, n int) ([]byte, v1.Hash) {
	t.Helper()
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	copy(b, fmt.Sprintf("%s-%d", t.Name(), n))
	sum := sha256.Sum256(b)
	return b, v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

// pushBlob uploads a raw blob to the upstream repository.
func (u *fakeUpstream) pushBlob(t testing.TB, repo string, b []byte, d v1.Hash) {
	t.Helper()
	c := u.srv.Client()
	resp, err := c.Post(u.srv.URL+"/v2/"+repo+"/blobs/uploads/?digest="+d.String(), "application/octet-stream", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("pushing blob: %s", resp.Status)
	}
}

func randomImage(t testing.TB, layers int) v1.Image {
	t.Helper()
	img, err := random.Image(1024, int64(layers))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func mustDigest(t testing.TB, d interface{ Digest() (v1.Hash, error) }) v1.Hash {
	t.Helper()
	h, err := d.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return h
}
