package upstream

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// The fake upstream is go-containerregistry's registry in an httptest TLS server. Test images are pushed
// through a second, plain server in front of the same registry handler, so that the wrappers in front
// of the server under test (auth, faults) see only the Client's requests.

// testImage is an image pushed into a test registry.
type testImage struct {
	repo     string
	tag      string
	manifest v1.Hash
	layer    v1.Hash
	data     []byte // the layer's bytes
}

// pushImage pushes a random image as repo:tag through srv (which must not require auth).
func pushImage(t *testing.T, srv *httptest.Server, repo, tag string) testImage {
	t.Helper()
	img, err := random.Image(1024, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.NewTag(strings.TrimPrefix(srv.URL, "https://") + "/" + repo + ":" + tag)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithTransport(srv.Client().Transport)); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	ld, err := layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layers[0].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return testImage{repo: repo, tag: tag, manifest: d, layer: ld, data: data}
}

// upstreamServer is a registry behind a chain of wrappers, plus a plain server for pushing.
type upstreamServer struct {
	srv  *httptest.Server // what the Client under test talks to
	push *httptest.Server // the same registry, unwrapped
	hits *counter
	img  testImage // test/app:v1
}

// newUpstream starts a registry whose server-under-test handler is wrap(registry), counted.
func newUpstream(t *testing.T, wrap func(http.Handler) http.Handler) *upstreamServer {
	t.Helper()
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	push := startTLS(t, reg)
	h := reg
	if wrap != nil {
		h = wrap(reg)
	}
	u := &upstreamServer{push: push, hits: &counter{}}
	u.srv = startTLS(t, u.hits.wrap(h))
	u.img = pushImage(t, push, "test/app", "v1")
	return u
}

// startTLS starts an httptest TLS server that does not log connection noise.
func startTLS(t *testing.T, h http.Handler) *httptest.Server {
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// transport returns a new transport that trusts the httptest certificate (the same for every
// httptest TLS server).
func transport(srv *httptest.Server) *http.Transport {
	return srv.Client().Transport.(*http.Transport).Clone()
}

// newTestClient makes a Client for srv; opts.URL, Name and Transport are filled when empty.
func newTestClient(t *testing.T, srv *httptest.Server, opts Options) *Client {
	t.Helper()
	if opts.Name == "" {
		opts.Name = "test"
	}
	if opts.URL == "" {
		opts.URL = srv.URL
	}
	if opts.Transport == nil {
		opts.Transport = transport(srv)
	}
	c, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// counter counts requests by kind ("ping", "token", "manifests", "blobs", "tags", "referrers", "other")
// and tracks the most in flight at once.
type counter struct {
	mu       sync.Mutex
	n        map[string]int
	inflight int
	maxIn    int
}

func pathKind(path string) string {
	switch {
	case path == "/v2/" || path == "/v2":
		return "ping"
	case path == "/token":
		return "token"
	case strings.Contains(path, "/manifests/"):
		return "manifests"
	case strings.Contains(path, "/blobs/"):
		return "blobs"
	case strings.HasSuffix(path, "/tags/list"):
		return "tags"
	case strings.Contains(path, "/referrers/"):
		return "referrers"
	}
	return "other"
}

func (c *counter) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		if c.n == nil {
			c.n = map[string]int{}
		}
		c.n[pathKind(r.URL.Path)]++
		c.inflight++
		c.maxIn = max(c.maxIn, c.inflight)
		c.mu.Unlock()
		defer func() {
			c.mu.Lock()
			c.inflight--
			c.mu.Unlock()
		}()
		h.ServeHTTP(w, r)
	})
}

// get returns the count of a kind; "" means all.
func (c *counter) get(kind string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if kind != "" {
		return c.n[kind]
	}
	total := 0
	for _, n := range c.n {
		total += n
	}
	return total
}

func (c *counter) maxInFlight() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.maxIn
}

// faults lets a test take over requests: while a hook is set it is called first, and a hook that
// returns true has answered the request.
type faults struct {
	hook atomic.Pointer[func(w http.ResponseWriter, r *http.Request) bool]
}

func (f *faults) set(hook func(w http.ResponseWriter, r *http.Request) bool) { f.hook.Store(&hook) }
func (f *faults) clear()                                                     { f.hook.Store(nil) }

func (f *faults) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hook := f.hook.Load(); hook != nil && (*hook)(w, r) {
			return
		}
		h.ServeHTTP(w, r)
	})
}

// status answers every request with code, headers and body.
func status(code int, header map[string]string, body string) func(w http.ResponseWriter, r *http.Request) bool {
	return func(w http.ResponseWriter, r *http.Request) bool {
		for k, v := range header {
			w.Header().Set(k, v)
		}
		w.WriteHeader(code)
		io.WriteString(w, body)
		return true
	}
}

// closeConn drops the connection without an answer.
func closeConn(w http.ResponseWriter, r *http.Request) bool {
	conn, _, err := w.(http.Hijacker).Hijack()
	if err != nil {
		panic(err)
	}
	conn.Close()
	return true
}

// hang signals arrived and then answers nothing until release is closed or the request ends.
func hang(arrived chan<- struct{}, release <-chan struct{}) func(w http.ResponseWriter, r *http.Request) bool {
	return func(w http.ResponseWriter, r *http.Request) bool {
		if arrived != nil {
			arrived <- struct{}{}
		}
		select {
		case <-release:
			return false
		case <-r.Context().Done():
			return true
		}
	}
}

func ociError(w http.ResponseWriter, code int, ociCode, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"code": ociCode, "message": msg}}})
}

// basicAuth requires user:pass (pass read on each request, so tests can rotate it).
func basicAuthWrap(user string, pass *atomic.Value) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			u, p, ok := r.BasicAuth()
			if !ok || u != user || p != pass.Load().(string) {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				ociError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
				return
			}
			h.ServeHTTP(w, r)
		})
	}
}

// tokenService is a bearer-token registry front: /token issues tokens (checking basic credentials
// and the scope), and every /v2/ request needs a token for its repository.
type tokenService struct {
	user, pass  string // required credentials; empty user means none configured
	anonymousOK bool   // anonymous token requests get a token
	identity    string // accepted OAuth2 refresh token (identity token); empty means none
	expiresIn   int
	base        string // https://host:port, set after the server starts

	mu       sync.Mutex
	issued   map[string]string // token -> scope
	next     int
	requests int
}

func (ts *tokenService) tokenRequests() int {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.requests
}

// revoke invalidates every token issued so far.
func (ts *tokenService) revoke() {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.issued = nil
}

func (ts *tokenService) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			ts.serveToken(w, r)
			return
		}
		scope := ""
		if rest, ok := strings.CutPrefix(r.URL.Path, "/v2/"); ok && rest != "" {
			for _, k := range []string{"/manifests/", "/blobs/", "/tags/", "/referrers/"} {
				if i := strings.Index(rest, k); i >= 0 {
					scope = "repository:" + rest[:i] + ":pull"
					break
				}
			}
		}
		tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		ts.mu.Lock()
		got, valid := ts.issued[tok]
		ts.mu.Unlock()
		if !valid || (scope != "" && got != scope) {
			challenge := fmt.Sprintf(`Bearer realm="%s/token",service="test"`, ts.base)
			if scope != "" {
				challenge += fmt.Sprintf(`,scope="%s"`, scope)
			}
			w.Header().Set("WWW-Authenticate", challenge)
			ociError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
			return
		}
		h.ServeHTTP(w, r)
	})
}

func (ts *tokenService) serveToken(w http.ResponseWriter, r *http.Request) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.requests++
	q := r.URL.Query()
	scope := q.Get("scope")
	if r.Method == http.MethodPost {
		// OAuth2 refresh-token grant: the identity token replaces the password.
		if err := r.ParseForm(); err != nil || r.PostForm.Get("grant_type") != "refresh_token" ||
			r.PostForm.Get("refresh_token") != ts.identity || ts.identity == "" {
			ociError(w, http.StatusUnauthorized, "UNAUTHORIZED", "bad refresh token")
			return
		}
		q = r.PostForm
		scope = q.Get("scope")
	}
	u, p, ok := r.BasicAuth()
	switch {
	case r.Method == http.MethodPost:
	case ok && (u != ts.user || p != ts.pass):
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, `{"details":"incorrect username or password"}`)
		return
	case !ok && !ts.anonymousOK:
		ociError(w, http.StatusUnauthorized, "UNAUTHORIZED", "access to the requested resource is not authorized")
		return
	}
	if q.Get("service") != "test" || !strings.HasPrefix(scope, "repository:") || !strings.HasSuffix(scope, ":pull") {
		ociError(w, http.StatusBadRequest, "DENIED", "bad service or scope")
		return
	}
	if ts.issued == nil {
		ts.issued = map[string]string{}
	}
	ts.next++
	tok := fmt.Sprintf("tok-%d", ts.next)
	ts.issued[tok] = scope
	w.Header().Set("Content-Type", "application/json")
	if r.Method == http.MethodPost {
		json.NewEncoder(w).Encode(map[string]any{"access_token": tok, "expires_in": ts.expiresIn})
		return
	}
	json.NewEncoder(w).Encode(map[string]any{"token": tok, "expires_in": ts.expiresIn})
}

// newBearerUpstream starts a registry behind ts.
func newBearerUpstream(t *testing.T, ts *tokenService) *upstreamServer {
	t.Helper()
	u := newUpstream(t, ts.wrap)
	ts.base = u.srv.URL
	return u
}

// clock is a settable clock for Options.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// staticKeychain resolves every host to one user:pass.
type staticKeychain struct{ user, pass string }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return &authn.Basic{Username: k.user, Password: k.pass}, nil
}

// fetchBody fetches r and returns status and body.
func fetchBody(t *testing.T, c *Client, r Request) (int, []byte, error) {
	t.Helper()
	resp, err := c.Fetch(context.Background(), r)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body, nil
}

func manifestReq(img testImage) Request {
	return Request{Repo: img.repo, Kind: "manifests", Ref: img.tag, Header: http.Header{
		"Accept": {"application/vnd.docker.distribution.manifest.v2+json", "application/vnd.oci.image.manifest.v1+json"},
	}}
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// countingDialer counts dials.
type countingDialer struct {
	n atomic.Int64
	d net.Dialer
}

func (d *countingDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	d.n.Add(1)
	return d.d.DialContext(ctx, network, addr)
}
