package proxy

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pullgate/pullgate/identity"
)

// The token service (/token) and what a client can do with a token that is not its own, was not issued for
// what it asks, or was not issued at all. Tokens are obtained through /token and used on /v2/, against the
// leak tests' environment (leak_test.go).

// tokenItems pushes an item tagged v1 to local priv/one, local priv/two and other priv/one, and has pullgate
// cache them all: a token accepted where it must not be would be served them without the upstream being asked.
func tokenItems(t *testing.T, le *leakEnv) map[string]*leakItem {
	t.Helper()
	items := map[string]*leakItem{
		"local/priv/one": le.local.item(t, "priv/one", "v1", 4<<10, false),
		"local/priv/two": le.local.item(t, "priv/two", "v1", 4<<10, false),
		"local/pub/app":  le.local.item(t, "pub/app", "v1", 4<<10, false),
		"other/priv/one": le.other.item(t, "priv/one", "v1", 4<<10, false),
	}
	root := basicAuth("robot$root", le.secrets["root"])
	for name := range items {
		if a := le.send(le.plain, root, http.MethodGet, "/v2/"+name+"/manifests/v1", nil); a.status != http.StatusOK {
			t.Fatalf("warming %s: %d %s", name, a.status, a.body)
		}
	}
	return items
}

// tokenGET asks the token service at path ("/token" or "/token?ns=...") with GET for scopes, with auth.
func (le *leakEnv) tokenGET(auth, path string, scopes ...string) leakAnswer {
	q := url.Values{"service": {tokenService}, "scope": scopes}
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	return le.send(le.plain, auth, http.MethodGet, path+sep+q.Encode(), nil)
}

// tokenPOST posts form to the token service at path.
func (le *leakEnv) tokenPOST(path string, form url.Values) leakAnswer {
	return le.send(le.plain, "", http.MethodPost, path, strings.NewReader(form.Encode()), "Content-Type", "application/x-www-form-urlencoded")
}

func passwordGrant(user, secret string, scopes ...string) url.Values {
	return url.Values{"grant_type": {"password"}, "username": {user}, "password": {secret}, "service": {tokenService},
		"client_id": {"token-test"}, "scope": {strings.Join(scopes, " ")}}
}

func mustToken(t *testing.T, a leakAnswer) tokenAnswer {
	t.Helper()
	ta, err := tokenAnswerOf(a)
	if err != nil {
		t.Fatalf("token service: %v", err)
	}
	return ta
}

// jwtSegment encodes v as a JWS segment.
func jwtSegment(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// jwtDecode returns the header and the claims of a compact JWS, and its signature segment.
func jwtDecode(t *testing.T, tok string) (header, claims map[string]any, sig string) {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a compact JWS: %d segments", len(parts))
	}
	decode := func(s string) map[string]any {
		b, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.UseNumber()
		m := map[string]any{}
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	return decode(parts[0]), decode(parts[1]), parts[2]
}

// tokenAccess returns the repositories a token's access claim grants pull on.
func tokenAccess(t *testing.T, tok string) []string {
	t.Helper()
	_, claims, _ := jwtDecode(t, tok)
	var out []string
	entries, _ := claims["access"].([]any)
	for _, e := range entries {
		m, _ := e.(map[string]any)
		out = append(out, m["name"].(string))
	}
	return out
}

// accessClaim is a token's access claim granting pull on names.
func accessClaim(names ...string) []any {
	var out []any
	for _, n := range names {
		out = append(out, map[string]any{"type": "repository", "name": n, "actions": []any{"pull"}})
	}
	return out
}

// signES256 signs header and claims with key, as a compact JWS.
func signES256(t *testing.T, header, claims map[string]any, key *ecdsa.PrivateKey) string {
	t.Helper()
	input := jwtSegment(t, header) + "." + jwtSegment(t, claims)
	sum := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, key, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// publicJWK is key's public half as a JWK.
func publicJWK(key *ecdsa.PrivateKey) map[string]any {
	x, y := make([]byte, 32), make([]byte, 32)
	key.X.FillBytes(x)
	key.Y.FillBytes(y)
	return map[string]any{"kty": "EC", "crv": "P-256", "x": base64.RawURLEncoding.EncodeToString(x), "y": base64.RawURLEncoding.EncodeToString(y)}
}

// ownKey reads pullgate's signing key from its key directory, for the control that forging works.
func (le *leakEnv) ownKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(le.keyDir, "*.pem"))
	if err != nil || len(files) != 1 {
		t.Fatalf("key files %v: %v", files, err)
	}
	data, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatal("no PEM block in the key file")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k.(*ecdsa.PrivateKey)
}

func attackerKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestTokenMisuse holds that a token is good for what it was issued for only: not on another repository, nor
// on the same name at another upstream, nor after it expired, nor forged (another key under pullgate's key ID,
// another pullgate's key, alg none, claims altered under the original signature, the signer's key carried in a
// jwk header). Each is refused as Authorize decides, without a request for content upstream; controls show
// that the same request with a good token, or a token forged with pullgate's own key, is served.
func TestTokenMisuse(t *testing.T) {
	type login struct{ user, secret string }
	robot := func(name string) func(le *leakEnv) login {
		return func(le *leakEnv) login { return login{"robot$" + name, le.secrets[name]} }
	}
	alice := func(*leakEnv) login { return login{leakAliceUser, leakAlicePassword} }
	// withClaims re-signs the token's claims, edited, with key and header.
	resign := func(key func(t *testing.T, le *leakEnv) *ecdsa.PrivateKey, header func(le *leakEnv, key *ecdsa.PrivateKey) map[string]any,
		edit func(claims map[string]any)) func(t *testing.T, le *leakEnv, tok string) string {
		return func(t *testing.T, le *leakEnv, tok string) string {
			_, claims, _ := jwtDecode(t, tok)
			if edit != nil {
				edit(claims)
			}
			k := key(t, le)
			return signES256(t, header(le, k), claims, k)
		}
	}
	ownKey := func(t *testing.T, le *leakEnv) *ecdsa.PrivateKey { return le.ownKey(t) }
	otherKey := func(t *testing.T, _ *leakEnv) *ecdsa.PrivateKey { return attackerKey(t) }
	ownKID := func(le *leakEnv, _ *ecdsa.PrivateKey) map[string]any {
		return map[string]any{"alg": "ES256", "typ": "JWT", "kid": le.signer.KeyIDs()[0]}
	}
	addPrivTwo := func(claims map[string]any) { claims["access"] = accessClaim("local/priv/one", "local/priv/two") }

	tests := []struct {
		name    string
		login   func(le *leakEnv) login
		scope   string        // of the token, as GET /token asks for it
		advance time.Duration // of the clock, after the token was issued
		tamper  func(t *testing.T, le *leakEnv, tok string) string
		path    string // where it is used
		serves  string // for controls: the item (of tokenItems) it is served
		want    leakRefusal
		ns      string // the ns path names, for the challenge's realm
		name2   string // the repository as path names it, for the challenge
	}{
		{name: "control: the token on its repository", login: robot("b"), scope: "priv/one", path: "/v2/priv/one/manifests/v1", serves: "local/priv/one"},
		{name: "for one repository, on another the robot may pull", login: robot("both"), scope: "priv/one",
			path: "/v2/priv/two/manifests/v1", want: refusedScope, name2: "priv/two"},
		{name: "for one repository, on another the robot may not pull", login: robot("b"), scope: "priv/one",
			path: "/v2/priv/two/manifests/v1", want: refusedDenied},
		{name: "same name at another upstream by path, the robot may pull there", login: robot("both"), scope: "priv/one",
			path: "/v2/other/priv/one/manifests/v1", want: refusedScope, name2: "other/priv/one"},
		{name: "same name at another upstream by ns, the robot may pull there", login: robot("both"), scope: "priv/one",
			path: "/v2/priv/one/manifests/v1?ns=other", want: refusedScope, ns: "other", name2: "priv/one"},
		{name: "same name at another upstream, the robot may not pull there", login: robot("b"), scope: "priv/one",
			path: "/v2/other/priv/one/manifests/v1", want: refusedDenied},
		{name: "passthrough token on a repository its grant lacks", login: alice, scope: "priv/one",
			path: "/v2/priv/two/manifests/v1", want: refusedScope, name2: "priv/two"},
		{name: "control: expired within the leeway", login: robot("b"), scope: "priv/one", advance: time.Hour + 29*time.Second,
			path: "/v2/priv/one/manifests/v1", serves: "local/priv/one"},
		{name: "expired past the leeway", login: robot("b"), scope: "priv/one", advance: time.Hour + 31*time.Second,
			path: "/v2/priv/one/manifests/v1", want: refusedCredentials, name2: "priv/one"},
		{name: "control: forged with pullgate's own key", login: robot("both"), scope: "priv/one",
			tamper: resign(ownKey, ownKID, addPrivTwo), path: "/v2/priv/two/manifests/v1", serves: "local/priv/two"},
		{name: "signed by another key under pullgate's kid", login: robot("both"), scope: "priv/one",
			tamper: resign(otherKey, ownKID, addPrivTwo), path: "/v2/priv/two/manifests/v1", want: refusedCredentials, name2: "priv/two"},
		{name: "signed by another pullgate", login: robot("b"), scope: "priv/one", tamper: func(t *testing.T, le *leakEnv, tok string) string {
			_, claims, _ := jwtDecode(t, tok)
			s, err := identity.NewSigner(identity.SignerOptions{Dir: filepath.Join(t.TempDir(), "keys"), Now: le.clock.Now})
			if err != nil {
				t.Fatal(err)
			}
			forged, err := s.Sign(identity.TokenClaims{Subject: "robot$b", Method: identity.MethodRobot, Robot: "b",
				CredID: claims["pullgate"].(map[string]any)["cid"].(string), Access: []string{"local/priv/one"},
				IssuedAt: le.clock.Now(), Expiry: le.clock.Now().Add(time.Hour)})
			if err != nil {
				t.Fatal(err)
			}
			return forged
		}, path: "/v2/priv/one/manifests/v1", want: refusedCredentials, name2: "priv/one"},
		{name: "alg none", login: robot("both"), scope: "priv/one", tamper: func(t *testing.T, le *leakEnv, tok string) string {
			_, claims, _ := jwtDecode(t, tok)
			addPrivTwo(claims)
			return jwtSegment(t, map[string]any{"alg": "none", "typ": "JWT", "kid": le.signer.KeyIDs()[0]}) + "." + jwtSegment(t, claims) + "."
		}, path: "/v2/priv/two/manifests/v1", want: refusedCredentials, name2: "priv/two"},
		{name: "more access, the signature kept", login: robot("both"), scope: "priv/one", tamper: func(t *testing.T, _ *leakEnv, tok string) string {
			parts := strings.Split(tok, ".")
			_, claims, _ := jwtDecode(t, tok)
			addPrivTwo(claims)
			return parts[0] + "." + jwtSegment(t, claims) + "." + parts[2]
		}, path: "/v2/priv/two/manifests/v1", want: refusedCredentials, name2: "priv/two"},
		{name: "passthrough token with more access, the signature kept", login: alice, scope: "priv/one", tamper: func(t *testing.T, _ *leakEnv, tok string) string {
			parts := strings.Split(tok, ".")
			_, claims, _ := jwtDecode(t, tok)
			addPrivTwo(claims)
			return parts[0] + "." + jwtSegment(t, claims) + "." + parts[2]
		}, path: "/v2/priv/two/manifests/v1", want: refusedCredentials, name2: "priv/two"},
		{name: "expiry extended, the signature kept", login: robot("b"), scope: "priv/one", advance: 2 * time.Hour,
			tamper: func(t *testing.T, _ *leakEnv, tok string) string {
				parts := strings.Split(tok, ".")
				_, claims, _ := jwtDecode(t, tok)
				claims["exp"] = time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
				return parts[0] + "." + jwtSegment(t, claims) + "." + parts[2]
			}, path: "/v2/priv/one/manifests/v1", want: refusedCredentials, name2: "priv/one"},
		{name: "jwk header with the attacker's key, pullgate's kid", login: robot("both"), scope: "priv/one",
			tamper: resign(otherKey, func(le *leakEnv, k *ecdsa.PrivateKey) map[string]any {
				return map[string]any{"alg": "ES256", "typ": "JWT", "kid": le.signer.KeyIDs()[0], "jwk": publicJWK(k)}
			}, addPrivTwo), path: "/v2/priv/two/manifests/v1", want: refusedCredentials, name2: "priv/two"},
		{name: "jwk header with the attacker's key, no kid", login: robot("both"), scope: "priv/one",
			tamper: resign(otherKey, func(_ *leakEnv, k *ecdsa.PrivateKey) map[string]any {
				return map[string]any{"alg": "ES256", "typ": "JWT", "jwk": publicJWK(k)}
			}, addPrivTwo), path: "/v2/priv/two/manifests/v1", want: refusedCredentials, name2: "priv/two"},
		{name: "refresh token as an access token", login: robot("b"), scope: "priv/one", tamper: func(t *testing.T, le *leakEnv, _ string) string {
			l := robot("b")(le)
			form := passwordGrant(l.user, l.secret, "repository:priv/one:pull")
			form.Set("access_type", "offline")
			ta := mustToken(t, le.tokenPOST("/token", form))
			if ta.RefreshToken == "" {
				t.Fatal("no refresh token")
			}
			return ta.RefreshToken
		}, path: "/v2/priv/one/manifests/v1", want: refusedCredentials, name2: "priv/one"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			le := newLeakEnv(t)
			items := tokenItems(t, le)
			l := tt.login(le)
			tok := mustToken(t, le.tokenGET(basicAuth(l.user, l.secret), "/token", "repository:"+tt.scope+":pull")).Token
			le.clock.advance(tt.advance)
			if tt.tamper != nil {
				tok = tt.tamper(t, le, tok)
			}
			beforeLocal, beforeOther := le.local.contentCount(), le.other.contentCount()
			a := le.send(le.plain, "Bearer "+tok, http.MethodGet, tt.path, nil)
			if tt.serves != "" {
				if a.status != http.StatusOK || !bytes.Equal(a.body, items[tt.serves].manifest) {
					t.Fatalf("status %d: %.300s, want 200 with %s's manifest", a.status, a.body, tt.serves)
				}
				return
			}
			wantStatus, wantCode, wantChallenge := http.StatusUnauthorized, codeUnauthorized, le.challenge(leakAddr{ns: tt.ns}, tt.name2, tt.want)
			if tt.want == refusedDenied {
				wantStatus, wantCode, wantChallenge = http.StatusForbidden, codeDenied, ""
			}
			if a.status != wantStatus || ociError(t, a.body).Code != wantCode {
				t.Errorf("status %d: %.300s, want %d %s", a.status, a.body, wantStatus, wantCode)
			}
			if got := a.header.Get("WWW-Authenticate"); got != wantChallenge {
				t.Errorf("WWW-Authenticate %q, want %q", got, wantChallenge)
			}
			if n := le.local.contentCount() - beforeLocal + le.other.contentCount() - beforeOther; n != 0 {
				t.Errorf("%d requests for content reached the upstreams", n)
			}
		})
	}
}

// TestTokenService holds the token service's answers: GET with Basic, the password grant, the refresh grant with
// offline access, a partial grant, an unknown grant type, bad credentials (the same answer whatever is wrong),
// the lifetime and caching headers, and scopes resolved with the realm's ns.
func TestTokenService(t *testing.T) {
	le := newLeakEnv(t)
	items := tokenItems(t, le)
	b := basicAuth("robot$b", le.secrets["b"])
	// works holds that tok pulls v1 of name (as the default addressing writes it) and returns nothing else.
	works := func(t *testing.T, tok, path string, want *leakItem) {
		t.Helper()
		a := le.send(le.plain, "Bearer "+tok, http.MethodGet, path, nil)
		if a.status != http.StatusOK || !bytes.Equal(a.body, want.manifest) {
			t.Errorf("GET %s with the token: %d %.300s", path, a.status, a.body)
		}
	}
	// wellFormed holds what every token answer says besides the token.
	wellFormed := func(t *testing.T, a leakAnswer) tokenAnswer {
		t.Helper()
		ta := mustToken(t, a)
		if ta.AccessToken != ta.Token {
			t.Error("access_token differs from token")
		}
		if ta.ExpiresIn < 60 {
			t.Errorf("expires_in %d, want at least 60", ta.ExpiresIn)
		}
		if _, err := time.Parse(time.RFC3339, ta.IssuedAt); err != nil {
			t.Errorf("issued_at %q: %v", ta.IssuedAt, err)
		}
		if got := a.header.Get("Cache-Control"); got != "no-store" {
			t.Errorf("Cache-Control %q, want no-store", got)
		}
		if got := a.header.Get("Content-Type"); got != "application/json" {
			t.Errorf("Content-Type %q", got)
		}
		return ta
	}

	t.Run("GET with Basic", func(t *testing.T) {
		ta := wellFormed(t, le.tokenGET(b, "/token", "repository:priv/one:pull"))
		if got := tokenAccess(t, ta.Token); !slices.Equal(got, []string{"local/priv/one"}) {
			t.Errorf("access %v", got)
		}
		if ta.RefreshToken != "" {
			t.Error("a refresh token without offline access")
		}
		works(t, ta.Token, "/v2/priv/one/manifests/v1", items["local/priv/one"])
	})
	t.Run("POST password grant", func(t *testing.T) {
		ta := wellFormed(t, le.tokenPOST("/token", passwordGrant("robot$b", le.secrets["b"], "repository:priv/one:pull")))
		works(t, ta.Token, "/v2/priv/one/manifests/v1", items["local/priv/one"])
	})
	t.Run("POST refresh grant with offline access", func(t *testing.T) {
		form := passwordGrant("robot$b", le.secrets["b"], "repository:priv/one:pull")
		form.Set("access_type", "offline")
		first := wellFormed(t, le.tokenPOST("/token", form))
		if first.RefreshToken == "" {
			t.Fatal("no refresh token with access_type=offline")
		}
		refresh := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {first.RefreshToken}, "service": {tokenService},
			"client_id": {"token-test"}, "scope": {"repository:priv/one:pull repository:priv/two:pull"}}
		ta := wellFormed(t, le.tokenPOST("/token", refresh))
		if got := tokenAccess(t, ta.Token); !slices.Equal(got, []string{"local/priv/one"}) {
			t.Errorf("access %v after the refresh grant, want only what the robot may pull", got)
		}
		works(t, ta.Token, "/v2/priv/one/manifests/v1", items["local/priv/one"])
		// An access token is no refresh token.
		refresh.Set("refresh_token", first.Token)
		if a := le.tokenPOST("/token", refresh); a.status != http.StatusUnauthorized || strings.Contains(string(a.body), `"token"`) {
			t.Errorf("an access token as refresh token: %d %.300s", a.status, a.body)
		}
	})
	t.Run("partial grant", func(t *testing.T) {
		ta := wellFormed(t, le.tokenGET(b, "/token", "repository:priv/one:pull", "repository:priv/two:pull", "repository:pub/app:pull",
			"repository:other/priv/one:pull", "repository:local/priv/one:pull", "repository:priv/two:push"))
		if got := tokenAccess(t, ta.Token); !slices.Equal(got, []string{"local/priv/one", "local/pub/app"}) {
			t.Errorf("access %v, want [local/priv/one local/pub/app]", got)
		}
		works(t, ta.Token, "/v2/pub/app/manifests/v1", items["local/pub/app"])
		for _, p := range []string{"/v2/priv/two/manifests/v1", "/v2/other/priv/one/manifests/v1"} {
			if a := le.send(le.plain, "Bearer "+ta.Token, http.MethodGet, p, nil); a.status != http.StatusForbidden {
				t.Errorf("GET %s: %d, want 403", p, a.status)
			}
		}
	})
	t.Run("unknown grant type", func(t *testing.T) {
		form := passwordGrant("robot$b", le.secrets["b"], "repository:priv/one:pull")
		form.Set("grant_type", "client_credentials")
		a := le.tokenPOST("/token", form)
		if a.status/100 != 4 || ociError(t, a.body).Code != codeUnsupported || strings.Contains(string(a.body), `"token"`) {
			t.Errorf("%d %.300s, want a 4xx UNSUPPORTED without a token", a.status, a.body)
		}
	})
	t.Run("bad credentials", func(t *testing.T) {
		bad := []struct{ name, user, secret string }{
			{"unknown robot", "robot$nobody", le.secrets["b"]},
			{"wrong secret", "robot$b", le.secrets["b"] + "x"},
			{"another robot's secret", "robot$b", le.secrets["a"]},
			{"secret rotated out", "robot$rot", le.secrets["rot"]},
			{"robot expired", "robot$old", le.secrets["old"]},
		}
		le.clock.advance(2 * time.Minute) // past robot$rot's grace and robot$old's expiry
		var first string
		for _, how := range []string{"GET", "POST"} {
			for _, c := range bad {
				var a leakAnswer
				if how == "GET" {
					a = le.tokenGET(basicAuth(c.user, c.secret), "/token", "repository:priv/one:pull")
				} else {
					a = le.tokenPOST("/token", passwordGrant(c.user, c.secret, "repository:priv/one:pull"))
				}
				if a.status != http.StatusUnauthorized || ociError(t, a.body).Code != codeUnauthorized {
					t.Errorf("%s, %s: %d %.300s, want 401", how, c.name, a.status, a.body)
				}
				if got := a.header.Get("WWW-Authenticate"); got != `Basic realm="pullgate"` {
					t.Errorf("%s, %s: WWW-Authenticate %q", how, c.name, got)
				}
				if got := a.comparable(""); first == "" {
					first = got
				} else if got != first {
					t.Errorf("%s, %s: the answer differs from the first one:\n%s\n---\n%s", how, c.name, got, first)
				}
			}
		}
	})
	t.Run("ns in the realm", func(t *testing.T) {
		both := basicAuth("robot$both", le.secrets["both"])
		ta := wellFormed(t, le.tokenGET(both, "/token?ns=other", "repository:priv/one:pull"))
		if got := tokenAccess(t, ta.Token); !slices.Equal(got, []string{"other/priv/one"}) {
			t.Fatalf("access %v, want [other/priv/one]", got)
		}
		works(t, ta.Token, "/v2/priv/one/manifests/v1?ns=other", items["other/priv/one"])
		works(t, ta.Token, "/v2/other/priv/one/manifests/v1", items["other/priv/one"])
		a := le.send(le.plain, "Bearer "+ta.Token, http.MethodGet, "/v2/priv/one/manifests/v1", nil)
		if want := le.challenge(leakAddr{}, "priv/one", refusedScope); a.status != http.StatusUnauthorized || a.header.Get("WWW-Authenticate") != want {
			t.Errorf("the other upstream's token at the default upstream: %d %q, want 401 %q", a.status, a.header.Get("WWW-Authenticate"), want)
		}
	})
	t.Run("a token is no credential for the token service", func(t *testing.T) {
		ta := mustToken(t, le.tokenGET(b, "/token", "repository:priv/one:pull"))
		if a := le.tokenGET("Bearer "+ta.Token, "/token", "repository:priv/one:pull"); a.status != http.StatusUnauthorized {
			t.Errorf("GET /token with a bearer token: %d %.300s", a.status, a.body)
		}
	})
}
