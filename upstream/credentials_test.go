package upstream

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var fronts = []struct {
	name   string
	bearer bool
}{{"basic", false}, {"bearer", true}}

// onKind answers with h the requests of one kind (see pathKind) and lets the others through.
func onKind(kind string, h func(w http.ResponseWriter, r *http.Request) bool) func(w http.ResponseWriter, r *http.Request) bool {
	return func(w http.ResponseWriter, r *http.Request) bool {
		return pathKind(r.URL.Path) == kind && h(w, r)
	}
}

// secretForms returns the forms in which cred's password must never appear: as it is, URL-escaped,
// in a Basic header, and its first 8 bytes (what a message trimmed in the middle of it would keep).
func secretForms(cred Credentials) []string {
	if cred.Password == "" {
		return nil
	}
	userPass := []byte(cred.Username + ":" + cred.Password)
	return []string{
		cred.Password, url.QueryEscape(cred.Password), cred.Password[:min(8, len(cred.Password))],
		base64.StdEncoding.EncodeToString(userPass), base64.RawStdEncoding.EncodeToString(userPass),
	}
}

// checkNoCredentials fails when text holds any form of a password of creds.
func checkNoCredentials(t *testing.T, what, text string, creds ...Credentials) {
	t.Helper()
	for _, cred := range creds {
		for _, s := range secretForms(cred) {
			if strings.Contains(text, s) {
				t.Errorf("%s holds %q's password (as %q): %s", what, cred.Username, s, text)
			}
		}
	}
}

// TestCheckPull: CheckPull answers nil when the upstream lets the credentials pull the repository,
// ErrRefused when the registry or its token service says no, and the usual error (never ErrRefused)
// when it could not ask. It asks with the client's credentials only, never with the keychain's.
func TestCheckPull(t *testing.T) {
	type outcome int
	const (
		accepted outcome = iota
		refused
		couldNotAsk
	)
	alice := Credentials{"alice", alicePass}
	bob := Credentials{"bob", bobPass}
	tests := []struct {
		name       string
		bearerOnly bool
		repo       string
		cred       Credentials
		opts       Options                                           // Offline, FailureThreshold
		fault      func(w http.ResponseWriter, r *http.Request) bool // answers in front of the upstream's authentication
		down       bool                                              // the upstream's address answers nothing
		before     int                                               // CheckPulls that run first, with the fault
		want       outcome
		wantStatus int   // the *StatusError's status, 0 when none
		wantBearer int   // the status with the bearer front, when it differs
		wantErr    error // what the error wraps besides
		noContact  bool  // the checked call sends nothing upstream
	}{
		{name: "may pull", repo: "test/app", cred: alice, want: accepted},
		{name: "may pull another repository", repo: "test/other", cred: bob, want: accepted},
		{name: "wrong password", repo: "test/app", cred: Credentials{"alice", "wrong-Pw-0c4d8e21"}, want: refused, wantStatus: 401},
		{name: "unknown user", repo: "test/app", cred: Credentials{"mallory", "mallory-Pw-99e1a7"}, want: refused, wantStatus: 401},
		{name: "empty credentials are not the keychain's", repo: "test/app", cred: Credentials{}, want: refused, wantStatus: 401},
		{name: "user without access to the repository", repo: "test/app", cred: bob, want: refused,
			wantStatus: 403, wantBearer: 401}, // Docker Hub's partial grant: a token without access
		{name: "repository does not exist", repo: "test/missing", cred: alice, want: refused, wantStatus: 404},
		{name: "token service forbids", bearerOnly: true, repo: "test/app", cred: alice,
			fault: onKind("token", status(403, map[string]string{"Content-Type": "application/json"}, `{"details":"access denied"}`)),
			want:  refused, wantStatus: 403},
		{name: "registry 503", repo: "test/app", cred: alice, fault: onKind("tags", status(503, nil, "")),
			want: couldNotAsk, wantStatus: 503},
		{name: "registry 500 on ping", repo: "test/app", cred: alice, fault: onKind("ping", status(500, nil, "")),
			want: couldNotAsk, wantStatus: 500},
		{name: "registry 429", repo: "test/app", cred: alice, fault: onKind("tags", status(429, map[string]string{"Retry-After": "30"}, "")),
			want: couldNotAsk, wantStatus: 429},
		{name: "token service 503", bearerOnly: true, repo: "test/app", cred: alice, fault: onKind("token", status(503, nil, "")),
			want: couldNotAsk, wantStatus: 503},
		{name: "token service at a wrong address (404)", bearerOnly: true, repo: "test/app", cred: alice,
			fault: onKind("token", status(404, nil, "")), want: couldNotAsk, wantStatus: 404},
		{name: "token service answers no token", bearerOnly: true, repo: "test/app", cred: alice,
			fault: onKind("token", status(200, map[string]string{"Content-Type": "application/json"}, `{}`)),
			want:  couldNotAsk, wantErr: ErrUnavailable},
		{name: "connection dropped", repo: "test/app", cred: alice, fault: closeConn, want: couldNotAsk, wantErr: ErrUnavailable},
		{name: "upstream down", repo: "test/app", cred: alice, down: true, want: couldNotAsk, wantErr: ErrUnavailable},
		{name: "open circuit", repo: "test/app", cred: alice, opts: Options{FailureThreshold: 1}, fault: closeConn, before: 1,
			want: couldNotAsk, wantErr: ErrUnavailable, noContact: true},
		{name: "offline", repo: "test/app", cred: alice, opts: Options{Offline: true}, want: couldNotAsk, wantErr: ErrOffline, noContact: true},
		{name: "username with a NUL byte", repo: "test/app", cred: Credentials{"alice\x00", alicePass},
			want: couldNotAsk, wantErr: ErrInvalidRequest, noContact: true},
		{name: "invalid repository", repo: "Test/App", cred: alice, want: couldNotAsk, wantErr: ErrInvalidRequest, noContact: true},
	}
	for _, front := range fronts {
		t.Run(front.name, func(t *testing.T) {
			m := newMultiUpstream(t, front.bearer)
			for _, tt := range tests {
				if tt.bearerOnly && !front.bearer {
					continue
				}
				t.Run(tt.name, func(t *testing.T) {
					opts := tt.opts
					opts.Keychain = staticKeychain{ownUser, ownPass} // may pull everything: it must not be used
					if tt.down {
						closed := startTLS(t, http.NotFoundHandler())
						closed.Close()
						opts.URL = closed.URL
					}
					c := newTestClient(t, m.srv, opts)
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					if tt.fault != nil {
						m.faults.set(tt.fault)
						defer m.faults.clear()
					}
					for range tt.before {
						if err := c.CheckPull(ctx, tt.repo, tt.cred); err == nil {
							t.Fatal("the check before the checked one succeeded")
						}
					}
					mark, hits := len(m.log.all()), m.hits.get("")
					err := c.CheckPull(ctx, tt.repo, tt.cred)

					wantStatus := tt.wantStatus
					if front.bearer && tt.wantBearer != 0 {
						wantStatus = tt.wantBearer
					}
					switch tt.want {
					case accepted:
						if err != nil {
							t.Fatalf("err = %v, want nil", err)
						}
					case refused:
						if !errors.Is(err, ErrRefused) {
							t.Fatalf("err = %v, want ErrRefused", err)
						}
					case couldNotAsk:
						if err == nil || errors.Is(err, ErrRefused) {
							t.Fatalf("err = %v, want an error that is not ErrRefused", err)
						}
					}
					gotStatus := 0 // none
					if se := (*StatusError)(nil); errors.As(err, &se) {
						gotStatus = se.Status
					}
					if gotStatus != wantStatus {
						t.Errorf("err = %v: StatusError %d, want %d (0: none)", err, gotStatus, wantStatus)
					}
					if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
						t.Errorf("err = %v, want it to wrap %v", err, tt.wantErr)
					}
					if err != nil {
						checkNoCredentials(t, "error", fmt.Sprintf("%v %+v %#v", err, err, err), tt.cred, Credentials{ownUser, ownPass})
					}
					if n := m.hits.get("") - hits; tt.noContact && n != 0 {
						t.Errorf("the upstream got %d requests, want none", n)
					}

					// What was asked, and as whom: GET tags/list?n=1 and the token for its scope, with
					// the client's credentials and never the keychain's.
					tagsAsked := 0
					for _, r := range m.log.all()[mark:] {
						switch pathKind(r.path) {
						case "ping":
							continue
						case "tags":
							tagsAsked++
							if r.method != http.MethodGet || r.path != "/v2/"+tt.repo+"/tags/list" || r.query != "n=1" {
								t.Errorf("upstream got %s %s?%s, want GET /v2/%s/tags/list?n=1", r.method, r.path, r.query, tt.repo)
							}
						case "token":
							q, _ := url.ParseQuery(r.query)
							if scope := q.Get("scope"); scope != "repository:"+tt.repo+":pull" {
								t.Errorf("token request for scope %q, want repository:%s:pull", scope, tt.repo)
							}
						}
						if who := m.who(r.auth); who != tt.cred.Username {
							t.Errorf("%s %s was sent as %q, want %q", r.method, r.path, who, tt.cred.Username)
						}
					}
					if tt.want == accepted && tagsAsked == 0 {
						t.Error("the upstream was not asked for the tag list")
					}
				})
			}
		})
	}
}

// TestCheckPullBodyBounded: CheckPull reads a little of an endless tag list and drops it.
func TestCheckPullBodyBounded(t *testing.T) {
	m := newMultiUpstream(t, false)
	var written atomic.Int64
	done := make(chan struct{})
	m.faults.set(onKind("tags", func(w http.ResponseWriter, r *http.Request) bool {
		defer close(done)
		w.Header().Set("Content-Type", "application/json")
		chunk := bytes.Repeat([]byte(" "), 32<<10)
		for r.Context().Err() == nil {
			n, err := w.Write(chunk)
			written.Add(int64(n))
			if err != nil {
				break
			}
		}
		return true
	}))
	c := newTestClient(t, m.srv, Options{Timeout: 5 * time.Second})
	if err := c.CheckPull(context.Background(), "test/app", Credentials{"alice", alicePass}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the upstream is still sending the tag list")
	}
	// What the Client reads (maxDrain) plus what the kernel's socket buffers hold; an unbounded read
	// until the 5s Timeout takes far more.
	if n := written.Load(); n > 64<<20 {
		t.Errorf("the upstream sent %d bytes before the Client hung up", n)
	}
}

// TestCredentialsTokenIsolation: tokens and Basic credentials of one client are never sent for another
// client nor for pullgate's own requests, and pullgate's never for a client; each identity's tokens
// are cached for it.
func TestCredentialsTokenIsolation(t *testing.T) {
	alice := &Credentials{"alice", alicePass}
	bob := &Credentials{"bob", bobPass}
	steps := []struct {
		name    string
		cred    *Credentials // nil: pullgate's own
		repo    string
		kind    string // "manifests" (default) or "blobs"
		wantOK  bool
		wantWho string         // whom every request of the step speaks for (pings excepted)
		tokens  map[string]int // bearer: token requests in the step, by user
	}{
		{name: "alice pulls", cred: alice, repo: "test/app", wantOK: true, wantWho: "alice", tokens: map[string]int{"alice": 1}},
		{name: "bob, without access, is refused and never gets alice's token", cred: bob, repo: "test/app",
			wantWho: "bob", tokens: map[string]int{"bob": 1}},
		{name: "pullgate's own request gets its own token", repo: "test/app", wantOK: true, wantWho: ownUser,
			tokens: map[string]int{ownUser: 1}},
		{name: "alice again: her cached token", cred: alice, repo: "test/app", wantOK: true, wantWho: "alice"},
		{name: "alice's blob: her cached token", cred: alice, repo: "test/app", kind: "blobs", wantOK: true, wantWho: "alice"},
		{name: "pullgate again: its cached token", repo: "test/app", wantOK: true, wantWho: ownUser},
		{name: "bob pulls his repository", cred: bob, repo: "test/other", wantOK: true, wantWho: "bob", tokens: map[string]int{"bob": 1}},
		{name: "alice's name with a wrong password gets nothing of alice's", cred: &Credentials{"alice", "wrong-Pw-0c4d8e21"},
			repo: "test/app", wantWho: "alice", tokens: map[string]int{"alice": 1}},
		{name: "empty credentials are nobody's", cred: &Credentials{}, repo: "test/app", wantWho: "", tokens: map[string]int{"": 1}},
		{name: "pullgate's own request for bob's repository", repo: "test/other", wantOK: true, wantWho: ownUser,
			tokens: map[string]int{ownUser: 1}},
		{name: "bob's repository as bob: his cached token", cred: bob, repo: "test/other", wantOK: true, wantWho: "bob"},
	}
	for _, front := range fronts {
		t.Run(front.name, func(t *testing.T) {
			m := newMultiUpstream(t, front.bearer)
			c := newTestClient(t, m.srv, Options{Keychain: staticKeychain{ownUser, ownPass}})
			img := map[string]testImage{"test/app": m.img, "test/other": m.other}
			for _, s := range steps {
				mark := len(m.log.all())
				tokensBefore := map[string]int{}
				if m.ts != nil {
					for _, u := range []string{"alice", "bob", ownUser, ""} {
						tokensBefore[u] = m.ts.tokenRequestsBy(u)
					}
				}
				r := manifestReq(img[s.repo])
				if s.kind == "blobs" {
					r = Request{Repo: s.repo, Kind: "blobs", Ref: img[s.repo].layer.String()}
				}
				r.Credentials = s.cred
				_, _, err := fetchBody(t, c, r)
				if s.wantOK && err != nil {
					t.Fatalf("%s: %v", s.name, err)
				}
				if !s.wantOK {
					var se *StatusError
					if !errors.As(err, &se) || (se.Status != http.StatusUnauthorized && se.Status != http.StatusForbidden) {
						t.Errorf("%s: err = %v, want a 401 or 403", s.name, err)
					}
				}
				for _, req := range m.log.all()[mark:] {
					if pathKind(req.path) == "ping" {
						continue
					}
					if who := m.who(req.auth); who != s.wantWho {
						t.Errorf("%s: %s %s was sent as %q, want %q", s.name, req.method, req.path, who, s.wantWho)
					}
				}
				if m.ts != nil {
					for u, before := range tokensBefore {
						if got := m.ts.tokenRequestsBy(u) - before; got != s.tokens[u] {
							t.Errorf("%s: token requests by %q = %d, want %d", s.name, u, got, s.tokens[u])
						}
					}
				}
			}
		})
	}
}

// TestTokenFetchSharedPerCredentials: concurrent requests share a token request only with requests
// made with the same credentials: while alice's token request is held, bob's and pullgate's requests
// ask for their own instead of waiting for hers, and a second request of alice's waits for hers.
func TestTokenFetchSharedPerCredentials(t *testing.T) {
	m := newMultiUpstream(t, true)
	arrived := make(chan string, 8)
	release := make(chan struct{})
	var releaseOnce sync.Once
	releaseAll := func() { releaseOnce.Do(func() { close(release) }) }
	defer releaseAll()
	m.ts.setGate(func(user string) {
		arrived <- user
		<-release
	})
	c := newTestClient(t, m.srv, Options{Keychain: staticKeychain{ownUser, ownPass}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	type result struct {
		who string
		err error
	}
	results := make(chan result, 4)
	fetch := func(who string, cred *Credentials) {
		go func() {
			r := manifestReq(m.img)
			r.Credentials = cred
			resp, err := c.Fetch(ctx, r)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			results <- result{who, err}
		}()
	}
	waitArrival := func(want string) {
		t.Helper()
		select {
		case got := <-arrived:
			if got != want {
				t.Errorf("token request by %q arrived, want %q", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("no token request by %q: it waits for another identity's", want)
		}
	}
	fetch("alice", &Credentials{"alice", alicePass})
	waitArrival("alice")
	fetch("alice again", &Credentials{"alice", alicePass})
	fetch("bob", &Credentials{"bob", bobPass})
	waitArrival("bob")
	fetch("pullgate", nil)
	waitArrival(ownUser)
	releaseAll()

	for range 4 {
		r := <-results
		var se *StatusError
		switch {
		case r.who == "bob":
			if !errors.As(r.err, &se) || se.Status != http.StatusUnauthorized {
				t.Errorf("bob: err = %v, want a 401 (he may not pull test/app)", r.err)
			}
		case r.err != nil:
			t.Errorf("%s: %v", r.who, r.err)
		}
	}
	for _, u := range []string{"alice", "bob", ownUser} {
		if n := m.ts.tokenRequestsBy(u); n != 1 {
			t.Errorf("token requests by %q = %d, want 1", u, n)
		}
	}
	sentAs := map[string]int{}
	for _, r := range m.log.all() {
		if pathKind(r.path) == "manifests" {
			sentAs[m.who(r.auth)]++
		}
	}
	if want := map[string]int{"alice": 2, "bob": 1, ownUser: 1}; fmt.Sprint(sentAs) != fmt.Sprint(want) {
		t.Errorf("manifest requests by identity = %v, want %v", sentAs, want)
	}
}

// TestCredentialTokensBounded: the tokens of clients' credentials are cached in the same bounded cache
// as pullgate's own, the one that expires soonest dropped first.
func TestCredentialTokensBounded(t *testing.T) {
	m := newMultiUpstream(t, true)
	clk := newClock()
	c := newTestClient(t, m.srv, Options{Keychain: staticKeychain{ownUser, ownPass}, MaxTokens: 2, Now: clk.Now})
	alice := &Credentials{"alice", alicePass}
	bob := &Credentials{"bob", bobPass}
	steps := []struct {
		name       string
		cred       *Credentials
		img        testImage
		wantTokens int // token requests so far
	}{
		{"pullgate", nil, m.img, 1},
		{"alice", alice, m.img, 2},
		{"alice cached", alice, m.img, 2},
		{"bob evicts pullgate's, the soonest to expire", bob, m.other, 3},
		{"alice still cached", alice, m.img, 3},
		{"pullgate asks again, evicts alice's", nil, m.img, 4},
		{"alice asks again", alice, m.img, 5},
	}
	for _, s := range steps {
		r := manifestReq(s.img)
		r.Credentials = s.cred
		if _, _, err := fetchBody(t, c, r); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if n := m.ts.tokenRequests(); n != s.wantTokens {
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

// TestCredentials429NotRemembered: a 429 answered to a client's credentials counts that client's quota:
// it stops neither pullgate's own requests nor that client's next one. A 429 answered to pullgate's
// own credentials holds for every request.
func TestCredentials429NotRemembered(t *testing.T) {
	m := newMultiUpstream(t, false)
	clk := newClock()
	c := newTestClient(t, m.srv, Options{Keychain: staticKeychain{ownUser, ownPass}, Now: clk.Now})
	limit := func(user string) func(w http.ResponseWriter, r *http.Request) bool {
		return func(w http.ResponseWriter, r *http.Request) bool {
			if u, _, _ := r.BasicAuth(); pathKind(r.URL.Path) != "manifests" || (user != "" && u != user) {
				return false
			}
			w.Header().Set("Retry-After", "120")
			ociError(w, http.StatusTooManyRequests, "TOOMANYREQUESTS", "pull rate limit")
			return true
		}
	}
	alice := &Credentials{"alice", alicePass}
	steps := []struct {
		name        string
		limited     string // whose manifest requests get a 429: a user, "all", or "" for nobody's
		cred        *Credentials
		img         testImage
		want429     bool
		wantContact bool
	}{
		{name: "alice's quota is spent", limited: "alice", cred: alice, img: m.img, want429: true, wantContact: true},
		{name: "pullgate's request goes upstream", limited: "alice", img: m.img, wantContact: true},
		{name: "bob's request goes upstream", limited: "alice", cred: &Credentials{"bob", bobPass}, img: m.other, wantContact: true},
		{name: "alice's next request goes upstream", limited: "alice", cred: alice, img: m.img, want429: true, wantContact: true},
		{name: "pullgate's quota is spent", limited: "all", img: m.img, want429: true, wantContact: true},
		{name: "then alice waits too", cred: alice, img: m.img, want429: true},
	}
	for _, s := range steps {
		switch s.limited {
		case "":
			m.faults.clear()
		case "all":
			m.faults.set(limit(""))
		default:
			m.faults.set(limit(s.limited))
		}
		before := m.hits.get("manifests")
		r := manifestReq(s.img)
		r.Credentials = s.cred
		_, _, err := fetchBody(t, c, r)
		var se *StatusError
		if got429 := errors.As(err, &se) && se.Status == http.StatusTooManyRequests; got429 != s.want429 || (!s.want429 && err != nil) {
			t.Errorf("%s: err = %v, want a 429: %v", s.name, err, s.want429)
		}
		if contacted := m.hits.get("manifests") > before; contacted != s.wantContact {
			t.Errorf("%s: upstream contacted: %v, want %v", s.name, contacted, s.wantContact)
		}
		clk.Advance(time.Second)
	}
	m.faults.clear()
}

// TestCredentialsNeverInErrors: no form of a client's password reaches an error or an Event, even when
// the upstream or its token service echoes it back, in a message cut at its length cap included.
func TestCredentialsNeverInErrors(t *testing.T) {
	// Characters that JSON and URLs escape, so an echo in any of those forms must be caught too.
	cred := Credentials{"carol", `Pw<"é&/+-carol-83e1c9a4b7`}
	userPass := base64.StdEncoding.EncodeToString([]byte(cred.Username + ":" + cred.Password))
	jsonBody := func(code int, v any) func(w http.ResponseWriter, r *http.Request) bool {
		return func(w http.ResponseWriter, r *http.Request) bool {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			json.NewEncoder(w).Encode(v)
			return true
		}
	}
	tests := []struct {
		name   string
		bearer bool
		fault  func(w http.ResponseWriter, r *http.Request) bool
	}{
		{name: "token service refuses", bearer: true},
		{name: "registry refuses", bearer: false},
		{name: "token service echoes the password", bearer: true, fault: onKind("token", jsonBody(401, map[string]string{
			"details": fmt.Sprintf("incorrect password %q (%s) for %s, Authorization: Basic %s", cred.Password,
				url.QueryEscape(cred.Password), cred.Username, userPass)}))},
		{name: "registry echoes the password in the code", fault: onKind("tags", jsonBody(403, map[string]any{
			"errors": []map[string]string{{"code": cred.Password, "message": "denied"}}}))},
		{name: "registry echoes the Authorization header", fault: func(w http.ResponseWriter, r *http.Request) bool {
			if pathKind(r.URL.Path) != "tags" && pathKind(r.URL.Path) != "manifests" {
				return false
			}
			ociError(w, http.StatusForbidden, "DENIED", "denied for "+r.Header.Get("Authorization"))
			return true
		}},
		{name: "registry echoes the password where the message is cut", fault: func(w http.ResponseWriter, r *http.Request) bool {
			if pathKind(r.URL.Path) != "tags" && pathKind(r.URL.Path) != "manifests" {
				return false
			}
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(http.StatusForbidden)
			io.WriteString(w, strings.Repeat("x", maxMessage-10)+" "+cred.Password+" rest")
			return true
		}},
		{name: "connection dropped", fault: closeConn},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMultiUpstream(t, tt.bearer)
			if tt.fault != nil {
				m.faults.set(tt.fault)
			}
			var mu sync.Mutex
			var events []string
			c := newTestClient(t, m.srv, Options{Observe: func(e Event) {
				mu.Lock()
				events = append(events, fmt.Sprintf("%+v %v", e, e.Err))
				mu.Unlock()
			}})
			var errs []error
			errs = append(errs, c.CheckPull(context.Background(), "test/app", cred))
			r := manifestReq(m.img)
			r.Credentials = &cred
			_, err := c.Fetch(context.Background(), r)
			errs = append(errs, err)
			for _, err := range errs {
				if err == nil {
					t.Fatal("a request with carol's credentials succeeded")
				}
				checkNoCredentials(t, "error", fmt.Sprintf("%v | %+v | %#v", err, err, err), cred)
				var se *StatusError
				if errors.As(err, &se) {
					checkNoCredentials(t, "StatusError", fmt.Sprintf("%#v", *se), cred)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if len(events) == 0 {
				t.Fatal("no events")
			}
			for _, e := range events {
				checkNoCredentials(t, "event", e, cred)
			}
		})
	}
}

// TestCredentialsFormatting: no way of printing Credentials, or a Request holding them, shows the
// password; all show the username.
func TestCredentialsFormatting(t *testing.T) {
	cred := Credentials{Username: "alice", Password: "pw-Marker-1b9e"}
	req := Request{Repo: "test/app", Kind: "manifests", Ref: "v1", Credentials: &cred}
	jsonOf := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	slogOf := func(json bool, v any) string {
		var b bytes.Buffer
		var h slog.Handler = slog.NewTextHandler(&b, nil)
		if json {
			h = slog.NewJSONHandler(&b, nil)
		}
		slog.New(h).Info("pull", "cred", v)
		return b.String()
	}
	outputs := map[string]string{"String": cred.String(), "GoString": cred.GoString()}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%10.3s"} {
		outputs[verb] = fmt.Sprintf(verb, cred)
		outputs[verb+" pointer"] = fmt.Sprintf(verb, &cred)
	}
	for _, verb := range []string{"%v", "%+v", "%#v"} {
		outputs[verb+" Request"] = fmt.Sprintf(verb, req)
	}
	outputs["Errorf"] = fmt.Errorf("pull as %v", cred).Error()
	outputs["json"] = jsonOf(cred)
	outputs["json Request"] = jsonOf(req)
	outputs["slog text"] = slogOf(false, cred)
	outputs["slog json"] = slogOf(true, cred)
	outputs["slog text Request"] = slogOf(false, req)
	outputs["slog json Request"] = slogOf(true, req)
	for name, out := range outputs {
		t.Run(name, func(t *testing.T) {
			for _, secret := range []string{cred.Password, hex.EncodeToString([]byte(cred.Password)),
				strings.ToUpper(hex.EncodeToString([]byte(cred.Password))), base64.StdEncoding.EncodeToString([]byte(cred.Password))} {
				if strings.Contains(out, secret) {
					t.Errorf("%q shows the password", out)
				}
			}
			if !strings.Contains(out, cred.Username) {
				t.Errorf("%q does not show the username", out)
			}
		})
	}
	if got := outputs["slog text"]; !strings.Contains(got, "cred.username=alice cred.password=[REDACTED]") {
		t.Errorf("slog's text handler wrote %q, want the username and the password as attributes", got)
	}
	if got := fmt.Sprintf("%+v", Request{Repo: "a/b"}); !strings.Contains(got, "Credentials:<nil>") {
		t.Errorf("a Request without Credentials prints %q", got)
	}
}
