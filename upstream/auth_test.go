package upstream

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
)

// checkNoSecret fails when err's message holds the password in any usual form.
func checkNoSecret(t *testing.T, err error, user, pass string) {
	t.Helper()
	if err == nil || pass == "" {
		return
	}
	msg := err.Error()
	for _, s := range []string{pass, base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))} {
		if strings.Contains(msg, s) {
			t.Errorf("error %q holds a secret", msg)
		}
	}
}

func TestBasicAuth(t *testing.T) {
	pass := &atomic.Value{}
	pass.Store("s3cret-pw")
	u := newUpstream(t, basicAuthWrap("alice", pass))
	tests := []struct {
		name       string
		keychain   authn.Keychain
		wantStatus int // StatusError status; 0 means success
	}{
		{name: "correct", keychain: staticKeychain{"alice", "s3cret-pw"}},
		{name: "wrong password", keychain: staticKeychain{"alice", "wrong-pw-123"}, wantStatus: 401},
		{name: "no credentials", wantStatus: 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestClient(t, u.srv, Options{Keychain: tt.keychain})
			before := u.hits.get("manifests")
			_, _, err := fetchBody(t, c, manifestReq(u.img))
			checkAuthResult(t, err, tt.wantStatus)
			if k, ok := tt.keychain.(staticKeychain); ok {
				checkNoSecret(t, err, k.user, k.pass)
			}
			if n := u.hits.get("manifests") - before; n != 1 {
				t.Errorf("manifest requests = %d, want 1 (no retry)", n)
			}
		})
	}
}

func checkAuthResult(t *testing.T, err error, wantStatus int) {
	t.Helper()
	if wantStatus == 0 {
		if err != nil {
			t.Fatal(err)
		}
		return
	}
	var se *StatusError
	if !errors.As(err, &se) || se.Status != wantStatus || se.Upstream != "test" {
		t.Fatalf("err = %v, want a StatusError %d from upstream test", err, wantStatus)
	}
}

func TestBearerAuth(t *testing.T) {
	tests := []struct {
		name        string
		anonymousOK bool
		keychain    authn.Keychain
		wantStatus  int
		wantTokens  int
		wantMsg     string
	}{
		{name: "correct", keychain: staticKeychain{"bob", "hunter2-pw"}, wantTokens: 1},
		{name: "wrong password", keychain: staticKeychain{"bob", "wrong-pw-456"}, wantStatus: 401, wantTokens: 1,
			wantMsg: "token request refused: incorrect username or password"},
		{name: "no credentials, private", wantStatus: 401, wantTokens: 1},
		{name: "no credentials, public", anonymousOK: true, wantTokens: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := &tokenService{user: "bob", pass: "hunter2-pw", anonymousOK: tt.anonymousOK, expiresIn: 300}
			u := newBearerUpstream(t, ts)
			c := newTestClient(t, u.srv, Options{Keychain: tt.keychain})
			_, _, err := fetchBody(t, c, manifestReq(u.img))
			checkAuthResult(t, err, tt.wantStatus)
			if tt.wantMsg != "" && !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("err = %q, want it to say %q", err, tt.wantMsg)
			}
			if k, ok := tt.keychain.(staticKeychain); ok {
				checkNoSecret(t, err, k.user, k.pass)
			}
			if n := ts.tokenRequests(); n != tt.wantTokens {
				t.Errorf("token requests = %d, want %d", n, tt.wantTokens)
			}
			wantManifests := 1
			if tt.wantStatus != 0 {
				wantManifests = 0 // the token was refused: the registry is not asked
			}
			if n := u.hits.get("manifests"); n != wantManifests {
				t.Errorf("manifest requests = %d, want %d", n, wantManifests)
			}
		})
	}
}

func TestTokenCachedAndShared(t *testing.T) {
	ts := &tokenService{user: "bob", pass: "pw", expiresIn: 300}
	u := newBearerUpstream(t, ts)
	c := newTestClient(t, u.srv, Options{Keychain: staticKeychain{"bob", "pw"}})

	// 20 concurrent fetches on a fresh client: one ping, one token request.
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Go(func() {
			resp, err := c.Fetch(context.Background(), manifestReq(u.img))
			if err == nil {
				resp.Body.Close()
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	// Then sequential fetches of the same scope, blobs included.
	for range 5 {
		if _, _, err := fetchBody(t, c, Request{Repo: u.img.repo, Kind: "blobs", Ref: u.img.layer.String()}); err != nil {
			t.Fatal(err)
		}
	}
	if n := ts.tokenRequests(); n != 1 {
		t.Errorf("token requests = %d, want 1", n)
	}
	if n := u.hits.get("ping"); n != 1 {
		t.Errorf("pings = %d, want 1", n)
	}
	// Another repository is another scope.
	other := pushImage(t, u.push, "test/other", "v1")
	if _, _, err := fetchBody(t, c, manifestReq(other)); err != nil {
		t.Fatal(err)
	}
	if n := ts.tokenRequests(); n != 2 {
		t.Errorf("token requests after another repository = %d, want 2", n)
	}
}

func TestTokenExpiry(t *testing.T) {
	ts := &tokenService{anonymousOK: true, expiresIn: 300} // refreshed 30s before expiry
	u := newBearerUpstream(t, ts)
	clk := newClock()
	c := newTestClient(t, u.srv, Options{Now: clk.Now})
	steps := []struct {
		advance    time.Duration
		wantTokens int
	}{
		{0, 1},
		{269 * time.Second, 1},
		{2 * time.Second, 2}, // 271s: within the margin
		{200 * time.Second, 2},
	}
	for i, s := range steps {
		clk.Advance(s.advance)
		if _, _, err := fetchBody(t, c, manifestReq(u.img)); err != nil {
			t.Fatal(err)
		}
		if n := ts.tokenRequests(); n != s.wantTokens {
			t.Errorf("step %d: token requests = %d, want %d", i, n, s.wantTokens)
		}
	}
}

func TestTokenRefreshedOnceOn401(t *testing.T) {
	ts := &tokenService{anonymousOK: true, expiresIn: 300}
	u := newBearerUpstream(t, ts)
	c := newTestClient(t, u.srv, Options{})
	if _, _, err := fetchBody(t, c, manifestReq(u.img)); err != nil {
		t.Fatal(err)
	}
	ts.revoke()
	if _, _, err := fetchBody(t, c, manifestReq(u.img)); err != nil {
		t.Fatalf("after revocation: %v", err)
	}
	if n, m := ts.tokenRequests(), u.hits.get("manifests"); n != 2 || m != 3 {
		t.Errorf("token requests, manifest requests = %d, %d; want 2, 3", n, m)
	}

	// A registry that rejects every token: one refresh, then the 401, no loop.
	var rejectAll faults
	u2 := newUpstream(t, func(h http.Handler) http.Handler { return rejectAll.wrap(ts.wrap(h)) })
	ts.base = u2.srv.URL
	c2 := newTestClient(t, u2.srv, Options{})
	if _, _, err := fetchBody(t, c2, manifestReq(u2.img)); err != nil {
		t.Fatal(err)
	}
	rejectAll.set(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/token" {
			return false
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="`+ts.base+`/token",service="test"`)
		ociError(w, 401, "UNAUTHORIZED", "nope")
		return true
	})
	before, beforeTok := u2.hits.get("manifests"), ts.tokenRequests()
	_, _, err := fetchBody(t, c2, manifestReq(u2.img))
	checkAuthResult(t, err, 401)
	if n, tok := u2.hits.get("manifests")-before, ts.tokenRequests()-beforeTok; n != 2 || tok != 1 {
		t.Errorf("manifest requests, token requests = %d, %d; want 2, 1", n, tok)
	}
}

func TestChallengeLearnedFrom401(t *testing.T) {
	// /v2/ is open but repositories need a bearer token (some registries do this).
	ts := &tokenService{anonymousOK: true, expiresIn: 300}
	u := newUpstream(t, func(h http.Handler) http.Handler {
		guarded := ts.wrap(h)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/v2/" {
				h.ServeHTTP(w, r)
				return
			}
			guarded.ServeHTTP(w, r)
		})
	})
	ts.base = u.srv.URL
	c := newTestClient(t, u.srv, Options{})
	for range 2 {
		if _, _, err := fetchBody(t, c, manifestReq(u.img)); err != nil {
			t.Fatal(err)
		}
	}
	if n, m := ts.tokenRequests(), u.hits.get("manifests"); n != 1 || m != 3 {
		t.Errorf("token requests, manifest requests = %d, %d; want 1, 3", n, m)
	}
}

func TestRegistryTokenUsedAsIs(t *testing.T) {
	ts := &tokenService{expiresIn: 300}
	u := newBearerUpstream(t, ts)
	// Issue a token out of band, as a registry token in the keychain would be.
	ts.mu.Lock()
	ts.issued = map[string]string{"out-of-band": "repository:test/app:pull"}
	ts.mu.Unlock()
	kc := keychainFunc(func() authn.AuthConfig { return authn.AuthConfig{RegistryToken: "out-of-band"} })
	c := newTestClient(t, u.srv, Options{Keychain: kc})
	if _, _, err := fetchBody(t, c, manifestReq(u.img)); err != nil {
		t.Fatal(err)
	}
	if n := ts.tokenRequests(); n != 0 {
		t.Errorf("token requests = %d, want 0", n)
	}
}

type keychainFunc func() authn.AuthConfig

func (f keychainFunc) Resolve(authn.Resource) (authn.Authenticator, error) {
	return authn.FromConfig(f()), nil
}

func TestParseChallenges(t *testing.T) {
	tests := []struct {
		name   string
		values []string
		want   challenge
	}{
		{"none", nil, challenge{}},
		{"basic", []string{`Basic realm="Registry Realm"`}, challenge{scheme: schemeBasic}},
		{"bearer", []string{`Bearer realm="https://auth.docker.io/token",service="registry.docker.io"`},
			challenge{schemeBearer, "https://auth.docker.io/token", "registry.docker.io"}},
		{"bearer wins, quoted comma and escape", []string{`Basic realm="x"`,
			`bearer service="a,\"b\"", realm=https://h/t, scope="repository:x:pull"`},
			challenge{schemeBearer, "https://h/t", `a,"b"`}},
		{"unknown scheme", []string{`Negotiate abc`}, challenge{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := parseChallenges(tt.values); *got != tt.want {
				t.Errorf("got %+v, want %+v", *got, tt.want)
			}
		})
	}
}

func TestTokenRefreshAt(t *testing.T) {
	now := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name      string
		expiresIn int64
		issuedAt  string
		want      time.Duration // after now
	}{
		{"default 60s, 10% margin", 0, "", 54 * time.Second},
		{"300s, 30s margin", 300, "", 270 * time.Second},
		{"3600s, 30s margin", 3600, "", 3570 * time.Second},
		{"issued 100s ago", 300, now.Add(-100 * time.Second).Format(time.RFC3339), 170 * time.Second},
		{"issued in the future: skew, ignored", 300, now.Add(time.Hour).Format(time.RFC3339), 270 * time.Second},
		{"issued long ago: skew, ignored", 300, now.Add(-time.Hour).Format(time.RFC3339), 270 * time.Second},
		{"bad issued_at", 300, "yesterday", 270 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tokenRefreshAt(now, tt.expiresIn, tt.issuedAt).Sub(now); got != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}
}

func TestIdentityToken(t *testing.T) {
	ts := &tokenService{identity: "refresh-me", expiresIn: 300}
	u := newBearerUpstream(t, ts)
	c := newTestClient(t, u.srv, Options{Keychain: keychainFunc(func() authn.AuthConfig {
		return authn.AuthConfig{IdentityToken: "refresh-me"}
	})})
	if _, _, err := fetchBody(t, c, manifestReq(u.img)); err != nil {
		t.Fatal(err)
	}
	bad := newTestClient(t, u.srv, Options{Keychain: keychainFunc(func() authn.AuthConfig {
		return authn.AuthConfig{IdentityToken: "stale-secret"}
	})})
	_, _, err := fetchBody(t, bad, manifestReq(u.img))
	checkAuthResult(t, err, 401)
	if strings.Contains(err.Error(), "stale-secret") {
		t.Errorf("error %q holds the identity token", err)
	}
}

func TestCallerAuthorizationNotForwarded(t *testing.T) {
	var saw atomic.Value
	u := newUpstream(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/manifests/") {
				saw.Store(r.Header.Get("Authorization") + "|" + r.Header.Get("Cookie"))
			}
			h.ServeHTTP(w, r)
		})
	})
	c := newTestClient(t, u.srv, Options{})
	r := manifestReq(u.img)
	r.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("client:pw")))
	r.Header.Set("Cookie", "session=1")
	if _, _, err := fetchBody(t, c, r); err != nil {
		t.Fatal(err)
	}
	if got := saw.Load().(string); got != "|" {
		t.Errorf("upstream received %q", got)
	}
	if r.Header.Get("Cookie") == "" {
		t.Error("Fetch modified the caller's headers")
	}
}
