package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
)

// recorder counts the requests a handler gets and keeps the Authorization headers they carried.
type recorder struct {
	mu    sync.Mutex
	auths []string // Authorization of each request, "" when none
	paths []string
}

func (r *recorder) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.auths = append(r.auths, req.Header.Get("Authorization"))
		r.paths = append(r.paths, req.URL.Path)
		r.mu.Unlock()
		h.ServeHTTP(w, req)
	})
}

// count returns how many requests had path, and the Authorization values among them that were not
// empty.
func (r *recorder) count(path string) (n int, auths []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, p := range r.paths {
		if p == path {
			n++
			if r.auths[i] != "" {
				auths = append(auths, r.auths[i])
			}
		}
	}
	return n, auths
}

func (r *recorder) anyAuth() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, a := range r.auths {
		if a != "" {
			out = append(out, a)
		}
	}
	return out
}

// TestRedirectTargetChallengeIgnored: the registry redirects blob GETs to a "CDN" that answers 401
// with a Bearer challenge naming a realm on the CDN. The upstream's credentials must never reach that
// realm, its answer must not become the upstream's challenge, and the 401 is an error for that one
// request.
func TestRedirectTargetChallengeIgnored(t *testing.T) {
	tests := []struct {
		name string
		// front wraps the registry with the upstream's own authentication; nil means anonymous.
		front func(t *testing.T) func(http.Handler) http.Handler
	}{
		{name: "anonymous upstream"},
		{name: "basic upstream", front: func(t *testing.T) func(http.Handler) http.Handler {
			pass := &atomic.Value{}
			pass.Store("s3cret-pw")
			return basicAuthWrap("alice", pass)
		}},
		{name: "bearer upstream", front: func(t *testing.T) func(http.Handler) http.Handler {
			ts := &tokenService{user: "alice", pass: "s3cret-pw", expiresIn: 300}
			return func(h http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					ts.base = "https://" + r.Host // the registry's own host
					ts.wrap(h).ServeHTTP(w, r)
				})
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cdnRec := &recorder{}
			var cdn *httptest.Server
			cdn = startTLS(t, cdnRec.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/token" {
					w.Header().Set("Content-Type", "application/json")
					io.WriteString(w, `{"token":"cdn-token","expires_in":300}`)
					return
				}
				w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="cdn"`, cdn.URL))
				ociError(w, http.StatusUnauthorized, "UNAUTHORIZED", "cdn wants a token")
			})))
			upRec := &recorder{}
			u := newUpstream(t, func(reg http.Handler) http.Handler {
				h := http.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if strings.Contains(r.URL.Path, "/blobs/") {
						http.Redirect(w, r, cdn.URL+r.URL.Path, http.StatusTemporaryRedirect)
						return
					}
					reg.ServeHTTP(w, r)
				}))
				if tt.front != nil {
					h = tt.front(t)(h)
				}
				return upRec.wrap(h)
			})
			other := pushImage(t, u.push, "other/app", "v2")
			c := newTestClient(t, u.srv, Options{Keychain: staticKeychain{"alice", "s3cret-pw"}})

			if _, _, err := fetchBody(t, c, manifestReq(u.img)); err != nil {
				t.Fatalf("manifest before: %v", err)
			}
			_, _, err := fetchBody(t, c, Request{Repo: u.img.repo, Kind: "blobs", Ref: u.img.layer.String()})
			checkAuthResult(t, err, http.StatusUnauthorized)
			checkNoSecret(t, err, "alice", "s3cret-pw")
			for _, r := range []Request{manifestReq(u.img), manifestReq(other)} {
				if _, _, err := fetchBody(t, c, r); err != nil {
					t.Fatalf("manifest %s after the CDN's 401: %v", r.Repo, err)
				}
			}
			if n, auths := cdnRec.count("/token"); n != 0 || len(auths) != 0 {
				t.Errorf("CDN realm got %d token requests (Authorization %q), want none", n, auths)
			}
			if auths := cdnRec.anyAuth(); len(auths) != 0 {
				t.Errorf("CDN received Authorization %q", auths)
			}
			for _, a := range upRec.anyAuth() {
				if strings.Contains(a, "cdn-token") {
					t.Errorf("the upstream received the CDN realm's token: %q", a)
				}
			}
			c.mu.Lock()
			realm := ""
			if c.chal != nil {
				realm = c.chal.realm
			}
			c.mu.Unlock()
			if strings.HasPrefix(realm, cdn.URL) {
				t.Errorf("the upstream's challenge names the CDN's realm %q", realm)
			}
		})
	}
}

// TestPingRedirectChallengeIgnored: /v2/ redirected to another host that asks for Basic credentials
// does not make the Client send the upstream's credentials anywhere.
func TestPingRedirectChallengeIgnored(t *testing.T) {
	otherRec := &recorder{}
	other := startTLS(t, otherRec.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("WWW-Authenticate", `Basic realm="elsewhere"`)
		ociError(w, http.StatusUnauthorized, "UNAUTHORIZED", "elsewhere")
	})))
	upRec := &recorder{}
	u := newUpstream(t, func(reg http.Handler) http.Handler {
		return upRec.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/v2/" {
				http.Redirect(w, r, other.URL+"/v2/", http.StatusFound)
				return
			}
			reg.ServeHTTP(w, r)
		}))
	})
	c := newTestClient(t, u.srv, Options{Keychain: staticKeychain{"alice", "s3cret-pw"}})
	if _, _, err := fetchBody(t, c, manifestReq(u.img)); err != nil {
		t.Fatal(err)
	}
	if auths := upRec.anyAuth(); len(auths) != 0 {
		t.Errorf("the upstream received Authorization %q though it never asked", auths)
	}
	if auths := otherRec.anyAuth(); len(auths) != 0 {
		t.Errorf("the redirect target received Authorization %q", auths)
	}
}

// startTokenServer serves ts on a host of its own (as Docker Hub's auth.docker.io is), recorded.
func startTokenServer(t *testing.T, ts *tokenService) (*httptest.Server, *recorder) {
	t.Helper()
	rec := &recorder{}
	srv := startTLS(t, rec.wrap(http.HandlerFunc(ts.serveToken)))
	ts.base = srv.URL
	return srv, rec
}

// TestRealmOnAnotherHost: a realm on another host that the upstream itself names gets the upstream's
// credentials (Docker Hub: registry-1.docker.io names auth.docker.io), and its tokens serve only the
// Client that asked for them.
func TestRealmOnAnotherHost(t *testing.T) {
	ts := &tokenService{user: "bob", pass: "hunter2-pw", expiresIn: 300}
	u1 := newUpstream(t, ts.wrap)
	u2 := newUpstream(t, ts.wrap)
	_, rec := startTokenServer(t, ts) // after newUpstream: the realm is the token server
	kc := staticKeychain{"bob", "hunter2-pw"}
	c1 := newTestClient(t, u1.srv, Options{Name: "one", Keychain: kc})
	c2 := newTestClient(t, u2.srv, Options{Name: "two", Keychain: kc})
	for _, step := range []struct {
		name       string
		c          *Client
		img        testImage
		wantTokens int
	}{
		{name: "first upstream", c: c1, img: u1.img, wantTokens: 1},
		{name: "first upstream again, cached", c: c1, img: u1.img, wantTokens: 1},
		{name: "second upstream, same realm and scope: its own token", c: c2, img: u2.img, wantTokens: 2},
	} {
		if _, _, err := fetchBody(t, step.c, manifestReq(step.img)); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		n, auths := rec.count("/token")
		if n != step.wantTokens {
			t.Errorf("%s: token requests = %d, want %d", step.name, n, step.wantTokens)
		}
		if len(auths) != n || (n > 0 && auths[0] != basicAuth("bob", "hunter2-pw")) {
			t.Errorf("%s: token requests carried %q, want the upstream's Basic credentials", step.name, auths)
		}
	}
}

// TestTokenRequestRedirect: a token service that redirects to another host gets the credentials,
// the other host does not: Authorization is dropped from a GET, and a POST (the refresh-token grant,
// whose body holds the identity token) is not sent there at all.
func TestTokenRequestRedirect(t *testing.T) {
	tests := []struct {
		name string
		cfg  authn.AuthConfig
		code int
	}{
		{name: "GET with Basic credentials", code: http.StatusFound,
			cfg: authn.AuthConfig{Username: "bob", Password: "hunter2-pw"}},
		{name: "POST with an identity token", code: http.StatusTemporaryRedirect,
			cfg: authn.AuthConfig{IdentityToken: "refresh-secret"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := &tokenService{user: "bob", pass: "hunter2-pw", identity: "refresh-secret", expiresIn: 300}
			u := newUpstream(t, ts.wrap)
			targetRec := &recorder{}
			var bodies atomic.Int64
			target := startTLS(t, targetRec.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if b, _ := io.ReadAll(r.Body); len(b) > 0 {
					bodies.Add(1)
				}
				w.Header().Set("Content-Type", "application/json")
				io.WriteString(w, `{"token":"from-the-target","expires_in":300}`)
			})))
			first := startTLS(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, target.URL+"/token?"+r.URL.RawQuery, tt.code)
			}))
			ts.base = first.URL // the upstream names the first host as its realm
			c := newTestClient(t, u.srv, Options{Keychain: keychainFunc(func() authn.AuthConfig { return tt.cfg })})
			_, _, err := fetchBody(t, c, manifestReq(u.img))
			if err == nil {
				t.Fatal("the upstream accepted a token it never issued")
			}
			if strings.Contains(err.Error(), "refresh-secret") || strings.Contains(err.Error(), "hunter2-pw") {
				t.Errorf("error %q holds a secret", err)
			}
			if auths := targetRec.anyAuth(); len(auths) != 0 {
				t.Errorf("the redirect target received Authorization %q", auths)
			}
			if n := bodies.Load(); n != 0 {
				t.Errorf("the redirect target received %d request bodies", n)
			}
		})
	}
}

// TestTokenNotSentToAnotherRealm: when the upstream moves to another token service, tokens from the
// first one are not sent again (they are cached by realm, not only by scope).
func TestTokenNotSentToAnotherRealm(t *testing.T) {
	tsA := &tokenService{anonymousOK: true, expiresIn: 300}
	tsB := &tokenService{anonymousOK: true, expiresIn: 300, next: 100} // tokens tok-101...
	var cur atomic.Pointer[tokenService]
	cur.Store(tsA)
	rec := &recorder{}
	u := newUpstream(t, func(reg http.Handler) http.Handler {
		return rec.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			cur.Load().wrap(reg).ServeHTTP(w, r)
		}))
	})
	startTokenServer(t, tsA)
	startTokenServer(t, tsB)
	second := pushImage(t, u.push, "test/second", "v1")
	c := newTestClient(t, u.srv, Options{})
	for _, img := range []testImage{u.img, second} {
		if _, _, err := fetchBody(t, c, manifestReq(img)); err != nil {
			t.Fatal(err)
		}
	}
	cur.Store(tsB)
	before := len(rec.anyAuth())
	for _, img := range []testImage{u.img, second} {
		if _, _, err := fetchBody(t, c, manifestReq(img)); err != nil {
			t.Fatalf("after the move: %v", err)
		}
	}
	// The first request after the move carries the first repository's old token (that is how the
	// Client learns of the move); the second repository's old token must not be sent.
	for _, a := range rec.anyAuth()[before:] {
		if a == "Bearer tok-2" {
			t.Errorf("after the move the upstream received %q, a token of the old realm", a)
		}
	}
}

// TestTokenCacheBound: the token cache holds at most MaxTokens valid tokens, dropping the one that
// expires soonest.
func TestTokenCacheBound(t *testing.T) {
	ts := &tokenService{anonymousOK: true, expiresIn: 300}
	u := newBearerUpstream(t, ts)
	imgs := []testImage{u.img}
	for _, repo := range []string{"test/b", "test/c", "test/d"} {
		imgs = append(imgs, pushImage(t, u.push, repo, "v1"))
	}
	clk := newClock()
	c := newTestClient(t, u.srv, Options{MaxTokens: 2, Now: clk.Now})
	steps := []struct {
		name       string
		img        testImage
		wantTokens int // token requests so far
	}{
		{name: "a", img: imgs[0], wantTokens: 1},
		{name: "b", img: imgs[1], wantTokens: 2},
		{name: "c evicts a, the soonest to expire", img: imgs[2], wantTokens: 3},
		{name: "b still cached", img: imgs[1], wantTokens: 3},
		{name: "a asked again", img: imgs[0], wantTokens: 4},
		{name: "d", img: imgs[3], wantTokens: 5},
	}
	for _, s := range steps {
		if _, _, err := fetchBody(t, c, manifestReq(s.img)); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if n := ts.tokenRequests(); n != s.wantTokens {
			t.Errorf("%s: token requests = %d, want %d", s.name, n, s.wantTokens)
		}
		c.mu.Lock()
		n := len(c.tokens)
		c.mu.Unlock()
		if n > 2 {
			t.Errorf("%s: %d tokens cached, want at most 2", s.name, n)
		}
		clk.Advance(time.Second)
	}
}

// TestAuthFileOnReload: every reload attempt is reported to OnReload, a failed one with its error.
func TestAuthFileOnReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), ".dockerconfigjson")
	good := func(user string) string {
		return `{"auths":{"ghcr.io":{"auth":"` + b64(user+":pw") + `"}}}`
	}
	writeFile(t, path, good("one"))
	clk := newClock()
	f, err := NewAuthFile(path, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	var got []error
	f.OnReload = func(err error) { got = append(got, err) }
	steps := []struct {
		name    string
		write   string // new content; "" leaves the file as it is; "-" removes it
		advance bool   // let the check interval pass
		wantN   int    // OnReload calls so far
		wantErr string // what the last call's error says; "" means nil
	}{
		{name: "within the interval: no attempt", wantN: 0},
		{name: "good rotation", write: good("two"), advance: true, wantN: 1},
		{name: "unchanged", advance: true, wantN: 2},
		{name: "bad JSON", write: `{"auths":`, advance: true, wantN: 3, wantErr: "invalid JSON"},
		{name: "still bad", advance: true, wantN: 4, wantErr: "invalid JSON"},
		{name: "missing", write: "-", advance: true, wantN: 5, wantErr: "no such file"},
		{name: "fixed", write: good("three"), advance: true, wantN: 6},
	}
	for _, s := range steps {
		switch s.write {
		case "":
		case "-":
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		default:
			writeFile(t, path, s.write)
		}
		if s.advance {
			clk.Advance(authFileCheckInterval)
		}
		resolveBasic(t, f, "ghcr.io")
		if len(got) != s.wantN {
			t.Fatalf("%s: OnReload called %d times, want %d", s.name, len(got), s.wantN)
		}
		if s.wantN == 0 {
			continue
		}
		last := got[len(got)-1]
		switch {
		case s.wantErr == "" && last != nil:
			t.Errorf("%s: OnReload(%v), want nil", s.name, last)
		case s.wantErr != "" && (last == nil || !strings.Contains(last.Error(), s.wantErr)):
			t.Errorf("%s: OnReload(%v), want an error saying %q", s.name, last, s.wantErr)
		case s.wantErr != "" && !errors.Is(f.Err(), last):
			t.Errorf("%s: Err() = %v, want the reported %v", s.name, f.Err(), last)
		}
	}
	if u, _ := resolveBasic(t, f, "ghcr.io"); u != "three" {
		t.Errorf("user = %q, want three", u)
	}
}

// stall answers code with header and the start of a body, then sends nothing more until the request
// ends or release is closed.
func stall(release <-chan struct{}, code int, header map[string]string, partial string) func(w http.ResponseWriter, r *http.Request) bool {
	return func(w http.ResponseWriter, r *http.Request) bool {
		for k, v := range header {
			w.Header().Set(k, v)
		}
		w.WriteHeader(code)
		io.WriteString(w, partial)
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-release:
		}
		return true
	}
}

// endless answers code with a body that never ends (until the request does).
func endless(code int, contentType string) func(w http.ResponseWriter, r *http.Request) bool {
	return func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Content-Type", contentType)
		w.WriteHeader(code)
		chunk := []byte(strings.Repeat("x", 32<<10))
		for {
			if _, err := w.Write(chunk); err != nil {
				return true
			}
		}
	}
}

// once lets hook answer the first request that match accepts, and passes the others on.
func once(match func(r *http.Request) bool, hook func(w http.ResponseWriter, r *http.Request) bool) func(w http.ResponseWriter, r *http.Request) bool {
	var done atomic.Bool
	return func(w http.ResponseWriter, r *http.Request) bool {
		if !match(r) || done.Swap(true) {
			return false
		}
		return hook(w, r)
	}
}

func isManifest(r *http.Request) bool { return strings.Contains(r.URL.Path, "/manifests/") }

// TestBoundedReads: the answers the Client reads itself (error bodies, token bodies, bodies drained
// before a retry) are capped in size and in time, so a hostile or broken upstream cannot hold a
// Fetch whose caller set no deadline.
func TestBoundedReads(t *testing.T) {
	tests := []struct {
		name       string
		bearer     bool // the upstream asks for tokens (a first Fetch caches one before the fault)
		warm       bool // a first Fetch of the same manifest caches its token before the fault
		fault      func(ts *tokenService, release <-chan struct{}) func(w http.ResponseWriter, r *http.Request) bool
		wantStatus int // StatusError status; 0 means success
		wantErr    error
	}{
		{name: "endless error body", wantStatus: 500,
			fault: func(*tokenService, <-chan struct{}) func(w http.ResponseWriter, r *http.Request) bool {
				return once(isManifest, endless(500, "text/plain"))
			}},
		{name: "stalled error body", wantStatus: 503,
			fault: func(_ *tokenService, release <-chan struct{}) func(w http.ResponseWriter, r *http.Request) bool {
				return once(isManifest, stall(release, 503, map[string]string{"Content-Type": "text/plain"}, "overload"))
			}},
		{name: "stalled 401 body before a retry", bearer: true, warm: true,
			fault: func(ts *tokenService, release <-chan struct{}) func(w http.ResponseWriter, r *http.Request) bool {
				return once(isManifest, stall(release, 401, map[string]string{
					"WWW-Authenticate": fmt.Sprintf(`Bearer realm="%s/token",service="test"`, ts.base),
					"Content-Type":     "application/json",
				}, `{"errors":[`))
			}},
		{name: "stalled token body", bearer: true, wantErr: ErrUnavailable,
			fault: func(_ *tokenService, release <-chan struct{}) func(w http.ResponseWriter, r *http.Request) bool {
				return once(func(r *http.Request) bool { return r.URL.Path == "/token" },
					stall(release, 200, map[string]string{"Content-Type": "application/json"}, `{"token":"tok-`))
			}},
		{name: "oversized token", bearer: true, wantErr: ErrUnavailable,
			fault: func(*tokenService, <-chan struct{}) func(w http.ResponseWriter, r *http.Request) bool {
				return once(func(r *http.Request) bool { return r.URL.Path == "/token" },
					func(w http.ResponseWriter, r *http.Request) bool {
						w.Header().Set("Content-Type", "application/json")
						io.WriteString(w, `{"token":"`+strings.Repeat("t", maxTokenLen+1)+`"}`)
						return true
					})
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := &tokenService{anonymousOK: true, expiresIn: 300}
			f := &faults{}
			u := newUpstream(t, func(reg http.Handler) http.Handler {
				if tt.bearer {
					reg = ts.wrap(reg)
				}
				return f.wrap(reg)
			})
			ts.base = u.srv.URL
			c := newTestClient(t, u.srv, Options{Timeout: time.Second})
			if tt.bearer {
				// A token for another repository is cached, so the faulty token request is the next one.
				other := pushImage(t, u.push, "test/other", "v1")
				if _, _, err := fetchBody(t, c, manifestReq(other)); err != nil {
					t.Fatal(err)
				}
			}
			if tt.warm {
				if _, _, err := fetchBody(t, c, manifestReq(u.img)); err != nil {
					t.Fatal(err)
				}
			}
			release := make(chan struct{})
			t.Cleanup(func() { close(release) }) // before the servers close, which waits for handlers
			f.set(tt.fault(ts, release))
			done := make(chan error, 1)
			go func() {
				_, _, err := fetchBody(t, c, manifestReq(u.img))
				done <- err
			}()
			var err error
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("Fetch still reading the upstream's answer after 30s")
			}
			switch {
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
			default:
				checkAuthResult(t, err, tt.wantStatus)
			}
		})
	}
}

// TestRedirectTargetWordsNotKept: an error from a host the upstream redirected to (perhaps an
// internal service) keeps its status but none of its words, which would reach clients.
func TestRedirectTargetWordsNotKept(t *testing.T) {
	tests := []struct {
		name        string
		contentType string
		body        string
	}{
		{name: "text", contentType: "text/plain", body: "internal-secret-data"},
		{name: "OCI JSON", contentType: "application/json",
			body: `{"errors":[{"code":"INTERNAL_SECRET","message":"internal-secret-data"}]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			internal := startTLS(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tt.contentType)
				w.WriteHeader(http.StatusForbidden)
				io.WriteString(w, tt.body)
			}))
			u := newUpstream(t, func(reg http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if strings.Contains(r.URL.Path, "/blobs/") {
						http.Redirect(w, r, internal.URL+"/admin", http.StatusFound)
						return
					}
					reg.ServeHTTP(w, r)
				})
			})
			c := newTestClient(t, u.srv, Options{})
			_, _, err := fetchBody(t, c, Request{Repo: u.img.repo, Kind: "blobs", Ref: u.img.layer.String()})
			checkAuthResult(t, err, http.StatusForbidden)
			if strings.Contains(err.Error(), "SECRET") || strings.Contains(err.Error(), "secret") {
				t.Errorf("err = %q, repeats the redirect target's words", err)
			}
		})
	}
}

// TestDefaultTransportHeaderCap: the default transport reads at most 1 MiB of response headers.
func TestDefaultTransportHeaderCap(t *testing.T) {
	c, err := New(Options{Name: "test", URL: "https://registry.example"})
	if err != nil {
		t.Fatal(err)
	}
	tr, ok := c.opts.Transport.(*http.Transport)
	if !ok {
		t.Fatalf("default transport is a %T, want an *http.Transport", c.opts.Transport)
	}
	if tr.MaxResponseHeaderBytes != 1<<20 {
		t.Errorf("default transport reads %d bytes of headers, want 1 MiB", tr.MaxResponseHeaderBytes)
	}
	if tr == http.DefaultTransport {
		t.Error("the default transport is http.DefaultTransport itself, not a clone")
	}
}

// TestRedirectOnlyForBlobs holds that only blobs, whose bytes are checked against their digest, may come from
// another host: a manifest, tag list or referrers answer redirected elsewhere (an internal https service) is an
// error, and the other host is never asked.
func TestRedirectOnlyForBlobs(t *testing.T) {
	otherRec := &recorder{}
	other := startTLS(t, otherRec.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"name":"internal","tags":["secret"]}`)
	})))
	u := newUpstream(t, func(reg http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/manifests/") || strings.HasSuffix(r.URL.Path, "/tags/list") || strings.Contains(r.URL.Path, "/referrers/") {
				http.Redirect(w, r, other.URL+"/internal", http.StatusFound)
				return
			}
			reg.ServeHTTP(w, r)
		})
	})
	c := newTestClient(t, u.srv, Options{})
	tests := []struct {
		name string
		req  Request
	}{
		{"manifest", manifestReq(u.img)},
		{"tags", Request{Repo: u.img.repo, Kind: "tags/list"}},
		{"referrers", Request{Repo: u.img.repo, Kind: "referrers", Ref: u.img.manifest.String()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := c.Fetch(context.Background(), tt.req)
			if err == nil {
				resp.Body.Close()
				t.Fatalf("a %s redirected to another host was followed", tt.name)
			}
		})
	}
	if n, _ := otherRec.count("/internal"); n != 0 {
		t.Errorf("the other host was asked %d times", n)
	}
	// Blobs still follow redirects to another host (registries send them to a CDN).
	status, body, err := fetchBody(t, c, Request{Repo: u.img.repo, Kind: "blobs", Ref: u.img.layer.String()})
	if err != nil || status != http.StatusOK || sha256Hex(body) != u.img.layer.Hex {
		t.Fatalf("blob: %d, %v", status, err)
	}
}
