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

// testUser is an account of a test upstream with several users.
type testUser struct {
	pass  string
	repos []string // the repositories the user may pull
}

// mayPull reports whether the user may pull repo.
func (u testUser) mayPull(repo string) bool {
	for _, r := range u.repos {
		if r == repo {
			return true
		}
	}
	return false
}

// repoOf returns the repository of a /v2/<repo>/{manifests,blobs,tags,referrers}/... path, "" for
// other paths.
func repoOf(path string) string {
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return ""
	}
	for _, k := range []string{"/manifests/", "/blobs/", "/tags/", "/referrers/"} {
		if i := strings.Index(rest, k); i > 0 {
			return rest[:i]
		}
	}
	return ""
}

// basicUsersWrap is a Basic-auth registry front with several accounts: every request needs one of
// users (401 with a Basic challenge otherwise), and a request for a repository that the account may
// not pull is denied (403 DENIED).
func basicUsersWrap(users map[string]testUser) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			u, p, ok := r.BasicAuth()
			acct, known := users[u]
			if !ok || !known || p != acct.pass {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				ociError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
				return
			}
			if repo := repoOf(r.URL.Path); repo != "" && !acct.mayPull(repo) {
				ociError(w, http.StatusForbidden, "DENIED", "requested access to the resource is denied")
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
	// users, when not nil, are the accounts (user and pass are then unused). As Docker Hub does, a
	// user asking for a repository it may not pull (or one that does not exist and that it may not
	// pull) gets a token without access, which the registry refuses with a 401.
	users map[string]testUser

	mu       sync.Mutex
	gate     func(user string) // see setGate
	issued   map[string]string // token -> scope it grants ("" for none)
	owners   map[string]string // token -> Basic username that obtained it ("" anonymous)
	byUser   map[string]int    // token requests by Basic username ("" anonymous)
	next     int
	requests int
}

func (ts *tokenService) tokenRequests() int {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.requests
}

// tokenRequestsBy returns how many token requests carried user's Basic credentials (right or wrong).
func (ts *tokenService) tokenRequestsBy(user string) int {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.byUser[user]
}

// setGate makes gate be called with the Basic username (or "") of each token request before it is
// served, so a test can hold token requests.
func (ts *tokenService) setGate(gate func(user string)) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.gate = gate
}

// owner returns the user that obtained tok, and whether ts issued it.
func (ts *tokenService) owner(tok string) (string, bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	u, ok := ts.owners[tok]
	return u, ok
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
		if repo := repoOf(r.URL.Path); repo != "" {
			scope = "repository:" + repo + ":pull"
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
	gate := ts.gate
	ts.mu.Unlock()
	if gate != nil {
		u, _, _ := r.BasicAuth()
		gate(u)
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.requests++
	if ts.byUser == nil {
		ts.byUser = map[string]int{}
	}
	basicUser, _, _ := r.BasicAuth()
	ts.byUser[basicUser]++
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
	acct, known := ts.users[u]
	switch {
	case r.Method == http.MethodPost:
	case ts.users != nil && ok && (!known || p != acct.pass):
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, `{"details":"incorrect username or password"}`)
		return
	case ts.users != nil && ok:
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
	if ts.owners == nil {
		ts.owners = map[string]string{}
	}
	ts.next++
	tok := fmt.Sprintf("tok-%d", ts.next)
	ts.owners[tok] = u
	if ts.users != nil && !acct.mayPull(strings.TrimSuffix(strings.TrimPrefix(scope, "repository:"), ":pull")) {
		scope = "" // a token without access
	}
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

// seenRequest is one request a test server received.
type seenRequest struct {
	method, path, query string
	auth                string // Authorization, "" when none
}

// requestLog keeps every request a handler gets, in order.
type requestLog struct {
	mu   sync.Mutex
	reqs []seenRequest
}

func (l *requestLog) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l.mu.Lock()
		l.reqs = append(l.reqs, seenRequest{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("Authorization")})
		l.mu.Unlock()
		h.ServeHTTP(w, r)
	})
}

// all returns a copy of the requests so far.
func (l *requestLog) all() []seenRequest {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]seenRequest(nil), l.reqs...)
}

// The accounts of the multi-user upstreams. The passwords are distinctive, so tests can look for them
// in errors and events.
const (
	alicePass = "alice-Pw-7f3e9c1d"
	bobPass   = "bob-Pw-2b8a4e60"
	ownUser   = "pullgate" // the proxy's own account, in the Client's keychain
	ownPass   = "pullgate-Pw-5d1c0a9f"
)

// testUsers returns the accounts of the multi-user upstreams: alice may pull test/app (which exists)
// and test/missing (which does not), bob only test/other, and pullgate's own account all three.
func testUsers() map[string]testUser {
	return map[string]testUser{
		"alice": {pass: alicePass, repos: []string{"test/app", "test/missing"}},
		"bob":   {pass: bobPass, repos: []string{"test/other"}},
		ownUser: {pass: ownPass, repos: []string{"test/app", "test/other", "test/missing"}},
	}
}

// multiUpstream is a registry behind a front with testUsers (Basic, or a token service), and the
// test's handles on it.
type multiUpstream struct {
	*upstreamServer
	ts     *tokenService // nil for the Basic front
	log    *requestLog   // every request to the server under test, token requests included
	faults *faults       // in front of the authentication
	other  testImage     // test/other:v1
}

// newMultiUpstream starts a registry with test/app:v1 and test/other:v1 behind a Basic front, or a
// bearer front when bearer is set.
func newMultiUpstream(t *testing.T, bearer bool) *multiUpstream {
	t.Helper()
	m := &multiUpstream{log: &requestLog{}, faults: &faults{}}
	front := basicUsersWrap(testUsers())
	if bearer {
		m.ts = &tokenService{users: testUsers(), expiresIn: 300}
		front = m.ts.wrap
	}
	m.upstreamServer = newUpstream(t, func(h http.Handler) http.Handler { return m.log.wrap(m.faults.wrap(front(h))) })
	if bearer {
		m.ts.base = m.srv.URL
	}
	m.other = pushImage(t, m.push, "test/other", "v1")
	return m
}

// who returns whom an Authorization value speaks for: the Basic username, the user that obtained a
// bearer token, "" for none, and "unknown token" for a token the token service did not issue.
func (m *multiUpstream) who(auth string) string {
	if tok, ok := strings.CutPrefix(auth, "Bearer "); ok && m.ts != nil {
		if u, ok := m.ts.owner(tok); ok {
			return u
		}
		return "unknown token"
	}
	if auth == "" {
		return ""
	}
	r := &http.Request{Header: http.Header{"Authorization": {auth}}}
	u, _, _ := r.BasicAuth()
	return u
}
