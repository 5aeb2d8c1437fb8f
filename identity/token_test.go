package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// testClock is an injected clock that tests move by hand.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newTestClock() *testClock {
	return &testClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

const testLeeway = 30 * time.Second

// tokenEnv is a key directory, a clock and a Signer on them.
type tokenEnv struct {
	dir   string
	clock *testClock
	s     *Signer
}

func newTokenEnv(t testing.TB) *tokenEnv {
	t.Helper()
	e := &tokenEnv{dir: filepath.Join(t.TempDir(), "keys"), clock: newTestClock()}
	e.s = e.signer(t, SignerOptions{})
	return e
}

// signer makes another Signer on e's directory and clock (another process, or one configured otherwise).
func (e *tokenEnv) signer(t testing.TB, o SignerOptions) *Signer {
	t.Helper()
	o.Dir, o.Now = e.dir, e.clock.Now
	s, err := NewSigner(o)
	if err != nil {
		t.Fatalf("NewSigner: %v", err)
	}
	return s
}

// robotClaims are a robot's access-token claims at the clock's time.
func (e *tokenEnv) robotClaims() TokenClaims {
	return TokenClaims{
		Subject: "robot$ci",
		Method:  MethodRobot,
		Robot:   "ci",
		CredID:  "0011223344556677",
		Access:  []string{"docker.io/library/nginx", "ghcr.io/o/r"},
		Expiry:  e.clock.Now().Add(5 * time.Minute),
	}
}

func (e *tokenEnv) sign(t testing.TB, c TokenClaims) string {
	t.Helper()
	raw, err := e.s.Sign(c)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	return raw
}

// privateKey reads the private key kid from e's directory, as an attacker who stole it, or a test forging a
// token that differs from Sign's in one way only, would.
func (e *tokenEnv) privateKey(t testing.TB, kid string) *ecdsa.PrivateKey {
	t.Helper()
	matches, err := filepath.Glob(filepath.Join(e.dir, "*-"+kid+".pem"))
	if err != nil || len(matches) != 1 {
		t.Fatalf("key file of %s: %v %v", kid, matches, err)
	}
	data, err := os.ReadFile(matches[0])
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k.(*ecdsa.PrivateKey)
}

// payload is a valid claim set for e's Signer, as a map that a case can change.
func (e *tokenEnv) payload() map[string]any {
	now := e.clock.Now().Unix()
	return map[string]any{
		"iss": "pullgate", "sub": "robot$ci", "aud": "pullgate",
		"exp": now + 300, "nbf": now, "iat": now, "jti": "forged-1",
		"access":   []map[string]any{{"type": "repository", "name": "docker.io/library/nginx", "actions": []string{"pull"}}},
		"pullgate": map[string]any{"method": "robot", "robot": "ci", "cid": "0011223344556677"},
	}
}

// forge signs claims with key and alg, with the extra protected headers given (and the key itself as "jwk"
// when embedJWK).
func forge(t testing.TB, alg jose.SignatureAlgorithm, key any, headers map[jose.HeaderKey]any, embedJWK bool, claims any) string {
	t.Helper()
	opts := (&jose.SignerOptions{EmbedJWK: embedJWK}).WithType("JWT")
	for k, v := range headers {
		opts.WithHeader(k, v)
	}
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		t.Fatalf("forge: %v", err)
	}
	raw, err := jwt.Signed(sig).Claims(claims).Serialize()
	if err != nil {
		t.Fatalf("forge: %v", err)
	}
	return raw
}

// compact joins a header and claims as JSON, and a signature, into a compact JWS.
func compact(t testing.TB, header, claims any, sig []byte) string {
	t.Helper()
	h, err := json.Marshal(header)
	if err != nil {
		t.Fatal(err)
	}
	c, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	enc := base64.RawURLEncoding.EncodeToString
	return enc(h) + "." + enc(c) + "." + enc(sig)
}

// decodePart decodes part i (0 header, 1 claims) of a compact JWS into a map.
func decodePart(t testing.TB, raw string, i int) map[string]any {
	t.Helper()
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		t.Fatalf("%d parts", len(parts))
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[i])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func newAttackerKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func selfSigned(t testing.TB, k *ecdsa.PrivateKey) []byte {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "pullgate"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestVerifyRefusesMisuse holds that every token pullgate did not sign as it is offered is refused with
// ErrInvalidToken, without the token's text in the error. The control cases, forged the same way with
// pullgate's own key and valid claims, hold that each refusal is for the one reason its case names.
func TestVerifyRefusesMisuse(t *testing.T) {
	type tokenCase struct {
		raw     string
		refresh bool
	}
	tests := []struct {
		name string
		make func(t *testing.T, e *tokenEnv) tokenCase
		ok   bool
	}{
		{"control: forged with our key and kid", func(t *testing.T, e *tokenEnv) tokenCase {
			kid := e.s.KeyIDs()[0]
			return tokenCase{raw: forge(t, jose.ES256, e.privateKey(t, kid), map[jose.HeaderKey]any{"kid": kid}, false, e.payload())}
		}, true},
		{"control: signed by Sign", func(t *testing.T, e *tokenEnv) tokenCase {
			return tokenCase{raw: e.sign(t, e.robotClaims())}
		}, true},
		{"alg none", func(t *testing.T, e *tokenEnv) tokenCase {
			return tokenCase{raw: compact(t, map[string]any{"alg": "none", "kid": e.s.KeyIDs()[0], "typ": "JWT"}, e.payload(), nil)}
		}, false},
		{"alg none with our signature", func(t *testing.T, e *tokenEnv) tokenCase {
			good := strings.Split(e.sign(t, e.robotClaims()), ".")
			sig, _ := base64.RawURLEncoding.DecodeString(good[2])
			return tokenCase{raw: compact(t, map[string]any{"alg": "none", "kid": e.s.KeyIDs()[0], "typ": "JWT"}, e.payload(), sig)}
		}, false},
		{"an algorithm name of the attacker's", func(t *testing.T, e *tokenEnv) tokenCase {
			return tokenCase{raw: compact(t, map[string]any{"alg": "evil-alg-marker", "kid": e.s.KeyIDs()[0]}, e.payload(), []byte("x"))}
		}, false},
		{"HS256 with the public key (DER) as the secret", func(t *testing.T, e *tokenEnv) tokenCase {
			kid := e.s.KeyIDs()[0]
			der, err := x509.MarshalPKIXPublicKey(&e.privateKey(t, kid).PublicKey)
			if err != nil {
				t.Fatal(err)
			}
			return tokenCase{raw: forge(t, jose.HS256, der, map[jose.HeaderKey]any{"kid": kid}, false, e.payload())}
		}, false},
		{"HS256 with the public key (PEM) as the secret", func(t *testing.T, e *tokenEnv) tokenCase {
			kid := e.s.KeyIDs()[0]
			der, err := x509.MarshalPKIXPublicKey(&e.privateKey(t, kid).PublicKey)
			if err != nil {
				t.Fatal(err)
			}
			secret := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
			return tokenCase{raw: forge(t, jose.HS256, secret, map[jose.HeaderKey]any{"kid": kid}, false, e.payload())}
		}, false},
		{"ES256 by another key with our kid", func(t *testing.T, e *tokenEnv) tokenCase {
			return tokenCase{raw: forge(t, jose.ES256, newAttackerKey(t), map[jose.HeaderKey]any{"kid": e.s.KeyIDs()[0]}, false, e.payload())}
		}, false},
		{"jwk header with the attacker's key, our kid", func(t *testing.T, e *tokenEnv) tokenCase {
			return tokenCase{raw: forge(t, jose.ES256, newAttackerKey(t), map[jose.HeaderKey]any{"kid": e.s.KeyIDs()[0]}, true, e.payload())}
		}, false},
		{"jwk header with the attacker's key, no kid", func(t *testing.T, e *tokenEnv) tokenCase {
			return tokenCase{raw: forge(t, jose.ES256, newAttackerKey(t), nil, true, e.payload())}
		}, false},
		{"x5c header with the attacker's certificate, our kid", func(t *testing.T, e *tokenEnv) tokenCase {
			k := newAttackerKey(t)
			x5c := []string{base64.StdEncoding.EncodeToString(selfSigned(t, k))}
			return tokenCase{raw: forge(t, jose.ES256, k, map[jose.HeaderKey]any{"kid": e.s.KeyIDs()[0], "x5c": x5c}, false, e.payload())}
		}, false},
		{"jku and x5u headers, our kid", func(t *testing.T, e *tokenEnv) tokenCase {
			h := map[jose.HeaderKey]any{"kid": e.s.KeyIDs()[0], "jku": "https://attacker.example/jwks", "x5u": "https://attacker.example/c"}
			return tokenCase{raw: forge(t, jose.ES256, newAttackerKey(t), h, false, e.payload())}
		}, false},
		{"altered payload: another subject", func(t *testing.T, e *tokenEnv) tokenCase {
			parts := strings.Split(e.sign(t, e.robotClaims()), ".")
			claims := decodePart(t, strings.Join(parts, "."), 1)
			claims["sub"] = "robot$admin"
			b, _ := json.Marshal(claims)
			parts[1] = base64.RawURLEncoding.EncodeToString(b)
			return tokenCase{raw: strings.Join(parts, ".")}
		}, false},
		{"altered payload: one more repository", func(t *testing.T, e *tokenEnv) tokenCase {
			parts := strings.Split(e.sign(t, e.robotClaims()), ".")
			claims := decodePart(t, strings.Join(parts, "."), 1)
			claims["access"] = append(claims["access"].([]any), map[string]any{"type": "repository", "name": "docker.io/private/db", "actions": []string{"pull"}})
			b, _ := json.Marshal(claims)
			parts[1] = base64.RawURLEncoding.EncodeToString(b)
			return tokenCase{raw: strings.Join(parts, ".")}
		}, false},
		{"another token's signature", func(t *testing.T, e *tokenEnv) tokenCase {
			a := strings.Split(e.sign(t, e.robotClaims()), ".")
			c := e.robotClaims()
			c.Subject = "robot$other"
			b := strings.Split(e.sign(t, c), ".")
			return tokenCase{raw: b[0] + "." + b[1] + "." + a[2]}
		}, false},
		{"expired past the leeway", func(t *testing.T, e *tokenEnv) tokenCase {
			c := e.robotClaims()
			c.IssuedAt = e.clock.Now().Add(-time.Hour)
			c.Expiry = e.clock.Now().Add(-testLeeway - time.Second)
			return tokenCase{raw: e.sign(t, c)}
		}, false},
		{"expired within the leeway", func(t *testing.T, e *tokenEnv) tokenCase {
			c := e.robotClaims()
			c.IssuedAt = e.clock.Now().Add(-time.Hour)
			c.Expiry = e.clock.Now().Add(-testLeeway + time.Second)
			return tokenCase{raw: e.sign(t, c)}
		}, true},
		{"nbf in the future past the leeway", func(t *testing.T, e *tokenEnv) tokenCase {
			kid := e.s.KeyIDs()[0]
			p := e.payload()
			p["nbf"] = e.clock.Now().Add(testLeeway + 2*time.Second).Unix()
			return tokenCase{raw: forge(t, jose.ES256, e.privateKey(t, kid), map[jose.HeaderKey]any{"kid": kid}, false, p)}
		}, false},
		{"nbf in the future within the leeway", func(t *testing.T, e *tokenEnv) tokenCase {
			kid := e.s.KeyIDs()[0]
			p := e.payload()
			p["nbf"] = e.clock.Now().Add(testLeeway - 2*time.Second).Unix()
			return tokenCase{raw: forge(t, jose.ES256, e.privateKey(t, kid), map[jose.HeaderKey]any{"kid": kid}, false, p)}
		}, true},
		{"iat in the future past the leeway", func(t *testing.T, e *tokenEnv) tokenCase {
			kid := e.s.KeyIDs()[0]
			p := e.payload()
			delete(p, "nbf")
			p["iat"] = e.clock.Now().Add(testLeeway + 2*time.Second).Unix()
			return tokenCase{raw: forge(t, jose.ES256, e.privateKey(t, kid), map[jose.HeaderKey]any{"kid": kid}, false, p)}
		}, false},
		{"issued by Sign in the future past the leeway", func(t *testing.T, e *tokenEnv) tokenCase {
			c := e.robotClaims()
			c.IssuedAt = e.clock.Now().Add(testLeeway + 2*time.Second)
			c.Expiry = c.IssuedAt.Add(time.Hour)
			return tokenCase{raw: e.sign(t, c)}
		}, false},
		{"no exp", func(t *testing.T, e *tokenEnv) tokenCase {
			kid := e.s.KeyIDs()[0]
			p := e.payload()
			delete(p, "exp")
			return tokenCase{raw: forge(t, jose.ES256, e.privateKey(t, kid), map[jose.HeaderKey]any{"kid": kid}, false, p)}
		}, false},
		{"wrong iss", func(t *testing.T, e *tokenEnv) tokenCase {
			other := e.signer(t, SignerOptions{Issuer: "someone-else"})
			raw, err := other.Sign(e.robotClaims())
			if err != nil {
				t.Fatal(err)
			}
			return tokenCase{raw: raw}
		}, false},
		{"wrong aud", func(t *testing.T, e *tokenEnv) tokenCase {
			other := e.signer(t, SignerOptions{Audience: "another-registry"})
			raw, err := other.Sign(e.robotClaims())
			if err != nil {
				t.Fatal(err)
			}
			return tokenCase{raw: raw}
		}, false},
		{"aud a list with ours and another", func(t *testing.T, e *tokenEnv) tokenCase {
			kid := e.s.KeyIDs()[0]
			p := e.payload()
			p["aud"] = []string{"pullgate", "another-registry"}
			return tokenCase{raw: forge(t, jose.ES256, e.privateKey(t, kid), map[jose.HeaderKey]any{"kid": kid}, false, p)}
		}, false},
		{"unknown kid", func(t *testing.T, e *tokenEnv) tokenCase {
			kid := e.s.KeyIDs()[0]
			return tokenCase{raw: forge(t, jose.ES256, e.privateKey(t, kid), map[jose.HeaderKey]any{"kid": "evil-kid-marker"}, false, e.payload())}
		}, false},
		{"no kid", func(t *testing.T, e *tokenEnv) tokenCase {
			return tokenCase{raw: forge(t, jose.ES256, e.privateKey(t, e.s.KeyIDs()[0]), nil, false, e.payload())}
		}, false},
		{"signed with a key removed by RotateKey(keep=1)", func(t *testing.T, e *tokenEnv) tokenCase {
			raw := e.sign(t, e.robotClaims())
			if _, err := RotateKey(e.dir, e.clock.Now(), 1); err != nil {
				t.Fatal(err)
			}
			e.clock.Advance(reloadInterval)
			return tokenCase{raw: raw}
		}, false},
		{"signed and verified, then its key removed by RotateKey(keep=1)", func(t *testing.T, e *tokenEnv) tokenCase {
			raw := e.sign(t, e.robotClaims())
			if _, err := e.s.Verify(raw, false); err != nil {
				t.Fatalf("before the rotation: %v", err)
			}
			if _, err := RotateKey(e.dir, e.clock.Now(), 1); err != nil {
				t.Fatal(err)
			}
			e.clock.Advance(reloadInterval)
			return tokenCase{raw: raw}
		}, false},
		{"refresh token as an access token", func(t *testing.T, e *tokenEnv) tokenCase {
			c := e.robotClaims()
			c.Refresh = true
			return tokenCase{raw: e.sign(t, c)}
		}, false},
		{"access token as a refresh token", func(t *testing.T, e *tokenEnv) tokenCase {
			return tokenCase{raw: e.sign(t, e.robotClaims()), refresh: true}
		}, false},
		{"control: refresh token as a refresh token", func(t *testing.T, e *tokenEnv) tokenCase {
			c := e.robotClaims()
			c.Refresh = true
			return tokenCase{raw: e.sign(t, c), refresh: true}
		}, true},
		{"access token, verified, then as a refresh token", func(t *testing.T, e *tokenEnv) tokenCase {
			raw := e.sign(t, e.robotClaims())
			if _, err := e.s.Verify(raw, false); err != nil {
				t.Fatal(err)
			}
			return tokenCase{raw: raw, refresh: true}
		}, false},
		{"refresh token, verified, then as an access token", func(t *testing.T, e *tokenEnv) tokenCase {
			c := e.robotClaims()
			c.Refresh = true
			raw := e.sign(t, c)
			if _, err := e.s.Verify(raw, true); err != nil {
				t.Fatal(err)
			}
			return tokenCase{raw: raw}
		}, false},
		{"refresh audience without the refresh claim, as a refresh token", func(t *testing.T, e *tokenEnv) tokenCase {
			kid := e.s.KeyIDs()[0]
			p := e.payload()
			p["aud"] = "pullgate-refresh"
			return tokenCase{raw: forge(t, jose.ES256, e.privateKey(t, kid), map[jose.HeaderKey]any{"kid": kid}, false, p), refresh: true}
		}, false},
		{"refresh claim with the access audience, as an access token", func(t *testing.T, e *tokenEnv) tokenCase {
			kid := e.s.KeyIDs()[0]
			p := e.payload()
			p["pullgate"].(map[string]any)["refresh"] = true
			return tokenCase{raw: forge(t, jose.ES256, e.privateKey(t, kid), map[jose.HeaderKey]any{"kid": kid}, false, p)}
		}, false},
		{"unknown method", func(t *testing.T, e *tokenEnv) tokenCase {
			kid := e.s.KeyIDs()[0]
			p := e.payload()
			p["pullgate"].(map[string]any)["method"] = "root"
			return tokenCase{raw: forge(t, jose.ES256, e.privateKey(t, kid), map[jose.HeaderKey]any{"kid": kid}, false, p)}
		}, false},
		{"empty", func(t *testing.T, e *tokenEnv) tokenCase { return tokenCase{raw: ""} }, false},
		{"garbage", func(t *testing.T, e *tokenEnv) tokenCase { return tokenCase{raw: "not a token at all"} }, false},
		{"three dots of garbage", func(t *testing.T, e *tokenEnv) tokenCase { return tokenCase{raw: "a.b.c"} }, false},
		{"two parts", func(t *testing.T, e *tokenEnv) tokenCase {
			parts := strings.Split(e.sign(t, e.robotClaims()), ".")
			return tokenCase{raw: parts[0] + "." + parts[1]}
		}, false},
		{"truncated", func(t *testing.T, e *tokenEnv) tokenCase {
			raw := e.sign(t, e.robotClaims())
			return tokenCase{raw: raw[:len(raw)-10]}
		}, false},
		{"signature stripped", func(t *testing.T, e *tokenEnv) tokenCase {
			parts := strings.Split(e.sign(t, e.robotClaims()), ".")
			return tokenCase{raw: parts[0] + "." + parts[1] + "."}
		}, false},
		{"JSON serialization", func(t *testing.T, e *tokenEnv) tokenCase {
			parts := strings.Split(e.sign(t, e.robotClaims()), ".")
			b, _ := json.Marshal(map[string]string{"protected": parts[0], "payload": parts[1], "signature": parts[2]})
			return tokenCase{raw: string(b)}
		}, false},
		{"oversized, otherwise valid", func(t *testing.T, e *tokenEnv) tokenCase {
			kid := e.s.KeyIDs()[0]
			p := e.payload()
			var access []map[string]any
			for i := range 120 {
				access = append(access, map[string]any{"type": "repository", "name": fmt.Sprintf("docker.io/library/image-%03d", i), "actions": []string{"pull"}})
			}
			p["access"] = access
			raw := forge(t, jose.ES256, e.privateKey(t, kid), map[jose.HeaderKey]any{"kid": kid}, false, p)
			if len(raw) <= maxTokenSize {
				t.Fatalf("the token has %d bytes, no more than %d", len(raw), maxTokenSize)
			}
			return tokenCase{raw: raw}
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTokenEnv(t)
			tc := tt.make(t, e)
			c, err := e.s.Verify(tc.raw, tc.refresh)
			if tt.ok {
				if err != nil {
					t.Fatalf("Verify: %v, want the token accepted", err)
				}
				if c.Subject != "robot$ci" || c.Method != MethodRobot {
					t.Fatalf("claims %+v", c)
				}
				return
			}
			if !errors.Is(err, ErrInvalidToken) {
				t.Fatalf("Verify: err %v, want ErrInvalidToken (claims %+v)", err, c)
			}
			if !reflect.DeepEqual(c, TokenClaims{}) {
				t.Errorf("claims %+v returned with the error", c)
			}
			msg := err.Error()
			for _, part := range append(strings.Split(tc.raw, "."), "evil-alg-marker", "evil-kid-marker", "attacker.example") {
				if len(part) >= 8 && strings.Contains(msg, part) {
					t.Errorf("the error %q repeats the token's text %q", msg, part)
				}
			}
			t.Logf("refused: %v", err)
		})
	}
}

// TestSignVerify holds the shape of a token (header, registered, access and private claims) and that Verify
// returns what Sign was given.
func TestSignVerify(t *testing.T) {
	e := newTokenEnv(t)
	now := e.clock.Now()
	tests := []struct {
		name        string
		claims      TokenClaims
		refresh     bool
		wantPrivate map[string]any
		wantAud     string
	}{
		{
			name:        "robot",
			claims:      e.robotClaims(),
			wantPrivate: map[string]any{"method": "robot", "robot": "ci", "cid": "0011223344556677"},
			wantAud:     "pullgate",
		},
		{
			name:        "robot refresh token",
			claims:      TokenClaims{ID: "fixed-id", Subject: "robot$ci", Method: MethodRobot, Robot: "ci", CredID: "0011223344556677", Refresh: true, IssuedAt: now.Add(-time.Minute), Expiry: now.Add(24 * time.Hour)},
			refresh:     true,
			wantPrivate: map[string]any{"method": "robot", "robot": "ci", "cid": "0011223344556677", "refresh": true},
			wantAud:     "pullgate-refresh",
		},
		{
			name:        "anonymous, nothing empty written",
			claims:      TokenClaims{Subject: "anonymous", Method: MethodAnonymous, Access: []string{"docker.io/library/alpine"}, Expiry: now.Add(time.Minute)},
			wantPrivate: map[string]any{"method": "anonymous"},
			wantAud:     "pullgate",
		},
		{
			name:        "passthrough, no access",
			claims:      TokenClaims{Subject: "passthrough:alice@docker.io", Method: MethodPassthrough, Expiry: now.Add(time.Minute)},
			wantPrivate: map[string]any{"method": "passthrough"},
			wantAud:     "pullgate",
		},
		{
			name:        "certificate mapped to a robot",
			claims:      TokenClaims{Subject: "mtls:node-1.cluster.local", Method: MethodMTLS, Robot: "nodes", Access: []string{"quay.io/a/b", "localhost:5000/x"}, Expiry: now.Add(time.Minute)},
			wantPrivate: map[string]any{"method": "mtls", "robot": "nodes"},
			wantAud:     "pullgate",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw, err := e.s.Sign(tt.claims)
			if err != nil {
				t.Fatal(err)
			}
			header := decodePart(t, raw, 0)
			if want := map[string]any{"alg": "ES256", "kid": e.s.KeyIDs()[0], "typ": "JWT"}; !reflect.DeepEqual(header, want) {
				t.Errorf("header %v, want %v", header, want)
			}
			body := decodePart(t, raw, 1)
			issued := tt.claims.IssuedAt
			if issued.IsZero() {
				issued = now
			}
			if body["iss"] != "pullgate" || body["sub"] != tt.claims.Subject || body["aud"] != tt.wantAud {
				t.Errorf("iss %v sub %v aud %v", body["iss"], body["sub"], body["aud"])
			}
			if body["iat"] != float64(issued.Unix()) || body["nbf"] != body["iat"] || body["exp"] != float64(tt.claims.Expiry.Unix()) {
				t.Errorf("iat %v nbf %v exp %v", body["iat"], body["nbf"], body["exp"])
			}
			if jti, _ := body["jti"].(string); jti == "" || tt.claims.ID != "" && jti != tt.claims.ID {
				t.Errorf("jti %v", body["jti"])
			}
			wantAccess := []any{}
			for _, name := range tt.claims.Access {
				wantAccess = append(wantAccess, map[string]any{"type": "repository", "name": name, "actions": []any{"pull"}})
			}
			if !reflect.DeepEqual(body["access"], wantAccess) {
				t.Errorf("access %v, want %v", body["access"], wantAccess)
			}
			if !reflect.DeepEqual(body["pullgate"], tt.wantPrivate) {
				t.Errorf("pullgate claims %v, want %v", body["pullgate"], tt.wantPrivate)
			}
			if len(body) != 9 {
				t.Errorf("claims %v, want exactly iss sub aud exp nbf iat jti access pullgate", body)
			}

			got, err := e.s.Verify(raw, tt.refresh)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			want := tt.claims
			want.ID = body["jti"].(string)
			want.IssuedAt = issued.Truncate(time.Second).UTC()
			want.Expiry = want.Expiry.Truncate(time.Second).UTC()
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Verify: %+v\nwant %+v", got, want)
			}
		})
	}
}

// TestSignIDsDiffer holds that Sign makes a new random jti for every token.
func TestSignIDsDiffer(t *testing.T) {
	e := newTokenEnv(t)
	seen := map[string]bool{}
	for range 20 {
		c, err := e.s.Verify(e.sign(t, e.robotClaims()), false)
		if err != nil {
			t.Fatal(err)
		}
		if len(c.ID) < 16 || seen[c.ID] {
			t.Fatalf("jti %q (seen before: %v)", c.ID, seen[c.ID])
		}
		seen[c.ID] = true
	}
}

// TestSignRefuses holds that Sign makes no token Verify would refuse or that says nothing useful.
func TestSignRefuses(t *testing.T) {
	e := newTokenEnv(t)
	many := make([]string, 150)
	for i := range many {
		many[i] = fmt.Sprintf("docker.io/library/image-%03d", i)
	}
	tests := []struct {
		name   string
		change func(c *TokenClaims)
	}{
		{"no method", func(c *TokenClaims) { c.Method = "" }},
		{"unknown method", func(c *TokenClaims) { c.Method = "root" }},
		{"no expiry", func(c *TokenClaims) { c.Expiry = time.Time{} }},
		{"expiry at the issue time", func(c *TokenClaims) { c.Expiry = e.clock.Now() }},
		{"expiry before the issue time", func(c *TokenClaims) { c.IssuedAt = c.Expiry.Add(time.Hour) }},
		{"an invalid repository name", func(c *TokenClaims) { c.Access = []string{"docker.io/Library/nginx"} }},
		{"longer than a token may be", func(c *TokenClaims) { c.Access = many }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := e.robotClaims()
			tt.change(&c)
			if raw, err := e.s.Sign(c); err == nil {
				t.Fatalf("Sign made a token of %d bytes", len(raw))
			}
		})
	}
}

// rfc7638 computes the RFC 7638 thumbprint of an EC P-256 public key from the RFC's rules, independently of
// go-jose.
func rfc7638(t testing.TB, pub *ecdsa.PublicKey) string {
	t.Helper()
	b, err := pub.Bytes()
	if err != nil || len(b) != 65 {
		t.Fatalf("public key bytes: %v", err)
	}
	enc := base64.RawURLEncoding.EncodeToString
	input := `{"crv":"P-256","kty":"EC","x":"` + enc(b[1:33]) + `","y":"` + enc(b[33:]) + `"}`
	sum := sha256.Sum256([]byte(input))
	return enc(sum[:])
}

// TestKeyDirectory holds how keys are kept: a directory of mode 0700 made when missing, one PEM PKCS #8
// P-256 key per file of mode 0600 named "<UTC time>-<kid>.pem", the kid its RFC 7638 thumbprint, no
// temporary file left behind, and a second Signer using the key the first one made.
func TestKeyDirectory(t *testing.T) {
	e := newTokenEnv(t)
	fi, err := os.Stat(e.dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("key directory mode %v, want 0700", fi.Mode().Perm())
	}
	entries, err := os.ReadDir(e.dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Fatalf("files %v, want one key file", entries)
	}
	kid := e.s.KeyIDs()[0]
	name := entries[0].Name()
	if want := "20260301T120000.000000000Z-" + kid + ".pem"; name != want {
		t.Errorf("key file %s, want %s", name, want)
	}
	fi, err = os.Stat(filepath.Join(e.dir, name))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	data, err := os.ReadFile(filepath.Join(e.dir, name))
	if err != nil {
		t.Fatal(err)
	}
	block, rest := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" || len(rest) != 0 {
		t.Fatalf("key file is not one PEM PRIVATE KEY block")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	priv, ok := k.(*ecdsa.PrivateKey)
	if !ok || priv.Curve != elliptic.P256() {
		t.Fatalf("key %T, want ECDSA P-256", k)
	}
	if want := rfc7638(t, &priv.PublicKey); kid != want {
		t.Errorf("kid %s, want the RFC 7638 thumbprint %s", kid, want)
	}

	again := e.signer(t, SignerOptions{})
	if got := again.KeyIDs(); !slices.Equal(got, []string{kid}) {
		t.Errorf("a second Signer uses %v, want the first one's key %s", got, kid)
	}
	if _, err := again.Verify(e.sign(t, e.robotClaims()), false); err != nil {
		t.Errorf("a second Signer refuses the first one's token: %v", err)
	}
	if entries, _ := os.ReadDir(e.dir); len(entries) != 1 {
		t.Errorf("files %v after a second Signer, want the one key file", entries)
	}
}

// writeKeyFile writes a PEM block into dir under the key-file name of kid made at t.
func writeKeyFile(t testing.TB, dir string, at time.Time, kid, pemType string, der []byte) string {
	t.Helper()
	name := keyFileName(at, kid)
	if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: pemType, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return name
}

func pkcs8(t testing.TB, k any) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestNewSignerKeyFiles holds that NewSigner refuses a key file it cannot use, naming it, and ignores files
// that are not key files.
func TestNewSignerKeyFiles(t *testing.T) {
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p256 := newAttackerKey(t)
	p256kid := rfc7638(t, &p256.PublicKey)
	tests := []struct {
		name    string
		write   func(t *testing.T, dir string) string // returns the file NewSigner must name, or ""
		wantErr bool
	}{
		{"not PEM", func(t *testing.T, dir string) string {
			name := keyFileName(at, p256kid)
			if err := os.WriteFile(filepath.Join(dir, name), []byte("garbage"), 0o600); err != nil {
				t.Fatal(err)
			}
			return name
		}, true},
		{"PEM but not PKCS #8", func(t *testing.T, dir string) string {
			return writeKeyFile(t, dir, at, p256kid, "PRIVATE KEY", []byte("not DER"))
		}, true},
		{"SEC 1 EC key", func(t *testing.T, dir string) string {
			der, err := x509.MarshalECPrivateKey(p256)
			if err != nil {
				t.Fatal(err)
			}
			return writeKeyFile(t, dir, at, p256kid, "EC PRIVATE KEY", der)
		}, true},
		{"PKCS #8 under another PEM type", func(t *testing.T, dir string) string {
			return writeKeyFile(t, dir, at, p256kid, "EC PRIVATE KEY", pkcs8(t, p256))
		}, true},
		{"P-384 key", func(t *testing.T, dir string) string {
			k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			jwk := jose.JSONWebKey{Key: &k.PublicKey}
			sum, _ := jwk.Thumbprint(crypto.SHA256)
			return writeKeyFile(t, dir, at, base64.RawURLEncoding.EncodeToString(sum), "PRIVATE KEY", pkcs8(t, k))
		}, true},
		{"RSA key", func(t *testing.T, dir string) string {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				t.Fatal(err)
			}
			jwk := jose.JSONWebKey{Key: &k.PublicKey}
			sum, _ := jwk.Thumbprint(crypto.SHA256)
			return writeKeyFile(t, dir, at, base64.RawURLEncoding.EncodeToString(sum), "PRIVATE KEY", pkcs8(t, k))
		}, true},
		{"a key under another key's ID", func(t *testing.T, dir string) string {
			return writeKeyFile(t, dir, at, rfc7638(t, &newAttackerKey(t).PublicKey), "PRIVATE KEY", pkcs8(t, p256))
		}, true},
		{"two PEM blocks", func(t *testing.T, dir string) string {
			name := keyFileName(at, p256kid)
			block := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8(t, p256)})
			if err := os.WriteFile(filepath.Join(dir, name), append(block, block...), 0o600); err != nil {
				t.Fatal(err)
			}
			return name
		}, true},
		{"control: a good key", func(t *testing.T, dir string) string {
			writeKeyFile(t, dir, at, p256kid, "PRIVATE KEY", pkcs8(t, p256))
			return ""
		}, false},
		{"other files are ignored", func(t *testing.T, dir string) string {
			for name, body := range map[string]string{
				"README":                                "keys",
				"notes.pem":                             "garbage",
				keyTempPrefix + "123.tmp":               "half a key",
				"20260101T000000Z-short.pem":            "garbage",
				keyFileName(at, p256kid) + ".bak":       "garbage",
				keyFileName(at, "has.dot-"+p256kid[8:]): "garbage",
			} {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			return ""
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			file := tt.write(t, dir)
			s, err := NewSigner(SignerOptions{Dir: dir})
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("NewSigner: %v", err)
				}
				if len(s.KeyIDs()) != 1 {
					t.Errorf("keys %v, want one", s.KeyIDs())
				}
				return
			}
			if err == nil {
				t.Fatalf("NewSigner accepted the key file")
			}
			if !strings.Contains(err.Error(), file) {
				t.Errorf("error %q does not name %s", err, file)
			}
		})
	}
	t.Run("no directory given", func(t *testing.T) {
		if _, err := NewSigner(SignerOptions{}); err == nil {
			t.Fatal("NewSigner without a directory succeeded")
		}
	})
}

// TestRotateKey holds that after RotateKey(keep=2) tokens of the old key still verify and new tokens use the
// new key; that RotateKey keeps the keep newest keys; and that the key it writes is the newest even when the
// clock went back.
func TestRotateKey(t *testing.T) {
	t.Run("keep 2", func(t *testing.T) {
		e := newTokenEnv(t)
		old := e.s.KeyIDs()[0]
		oldToken := e.sign(t, e.robotClaims())
		kid, err := RotateKey(e.dir, e.clock.Now(), 2)
		if err != nil {
			t.Fatal(err)
		}
		e.clock.Advance(reloadInterval)
		newToken := e.sign(t, e.robotClaims())
		if got := decodePart(t, newToken, 0)["kid"]; got != kid || kid == old {
			t.Errorf("new token's kid %v, want the new key %s (old %s)", got, kid, old)
		}
		if got := e.s.KeyIDs(); !slices.Equal(got, []string{kid, old}) {
			t.Errorf("KeyIDs %v, want [%s %s]", got, kid, old)
		}
		for name, raw := range map[string]string{"old": oldToken, "new": newToken} {
			if _, err := e.s.Verify(raw, false); err != nil {
				t.Errorf("%s token: %v", name, err)
			}
		}
	})
	t.Run("keeps the keep newest", func(t *testing.T) {
		e := newTokenEnv(t)
		kids := []string{e.s.KeyIDs()[0]}
		for i := range 4 {
			kid, err := RotateKey(e.dir, e.clock.Now().Add(time.Duration(i+1)*time.Hour), 3)
			if err != nil {
				t.Fatal(err)
			}
			kids = append([]string{kid}, kids...)
		}
		names, err := listKeyFiles(e.dir)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, n := range names {
			_, kid, _ := parseKeyFileName(n)
			got = append(got, kid)
		}
		if !slices.Equal(got, kids[:3]) {
			t.Errorf("keys left %v, want the three newest %v", got, kids[:3])
		}
	})
	t.Run("the clock went back", func(t *testing.T) {
		e := newTokenEnv(t)
		var kid string
		for _, back := range []time.Duration{0, time.Hour} {
			var err error
			if kid, err = RotateKey(e.dir, e.clock.Now().Add(-back), 5); err != nil {
				t.Fatal(err)
			}
		}
		e.clock.Advance(reloadInterval)
		e.sign(t, e.robotClaims())
		if got := e.s.KeyIDs(); len(got) != 3 || got[0] != kid {
			t.Errorf("KeyIDs %v, want the last key written, %s, first of three", got, kid)
		}
	})
	t.Run("keep 0", func(t *testing.T) {
		e := newTokenEnv(t)
		if _, err := RotateKey(e.dir, e.clock.Now(), 0); err == nil {
			t.Fatal("RotateKey(keep=0) succeeded")
		}
		if names, _ := listKeyFiles(e.dir); len(names) != 1 {
			t.Errorf("key files %v, want the one there was", names)
		}
	})
	t.Run("a corrupt key file", func(t *testing.T) {
		e := newTokenEnv(t)
		bad := writeKeyFile(t, e.dir, e.clock.Now().Add(-time.Hour), rfc7638(t, &newAttackerKey(t).PublicKey), "PRIVATE KEY", []byte("x"))
		_, err := RotateKey(e.dir, e.clock.Now(), 1)
		if err == nil || !strings.Contains(err.Error(), bad) {
			t.Fatalf("RotateKey: %v, want an error naming %s", err, bad)
		}
		if names, _ := listKeyFiles(e.dir); len(names) != 2 {
			t.Errorf("key files %v, want the two there were", names)
		}
	})
}

// TestRotationSeenWhole holds that a reader of the key directory during rotations (a server reloading while
// the CLI rotates) never sees a half-written key file nor fails on one removed since it listed the directory.
func TestRotationSeenWhole(t *testing.T) {
	e := newTokenEnv(t)
	done := make(chan struct{})
	readerErr := make(chan error, 1)
	reads := 0
	go func() {
		defer close(readerErr)
		for {
			select {
			case <-done:
				return
			default:
			}
			if _, err := dirStamp(e.dir); err != nil {
				readerErr <- err
				return
			}
			if _, err := loadKeys(e.dir); err != nil {
				readerErr <- err
				return
			}
			reads++
		}
	}()
	for range 100 {
		if _, err := RotateKey(e.dir, e.clock.Now(), 2); err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	if err := <-readerErr; err != nil {
		t.Fatalf("reader: %v", err)
	}
	t.Logf("%d reads during 100 rotations", reads)
	if names, _ := listKeyFiles(e.dir); len(names) != 2 {
		t.Errorf("key files %v, want 2", names)
	}
	entries, err := os.ReadDir(e.dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Errorf("files %v, want the two keys and no temporary file", entries)
	}
}

// TestSignerSeesRotation holds that a running Signer sees a rotation done by another process when it looks at
// the directory again, not before two seconds since its last look, on Sign and on Verify alike.
func TestSignerSeesRotation(t *testing.T) {
	t.Run("on Sign", func(t *testing.T) {
		e := newTokenEnv(t)
		old := e.s.KeyIDs()[0]
		kid, err := RotateKey(e.dir, e.clock.Now(), 2)
		if err != nil {
			t.Fatal(err)
		}
		e.clock.Advance(reloadInterval - time.Millisecond)
		if got := decodePart(t, e.sign(t, e.robotClaims()), 0)["kid"]; got != old {
			t.Errorf("before two seconds: kid %v, want the old key %s", got, old)
		}
		e.clock.Advance(time.Millisecond)
		if got := decodePart(t, e.sign(t, e.robotClaims()), 0)["kid"]; got != kid {
			t.Errorf("after two seconds: kid %v, want the new key %s", got, kid)
		}
	})
	t.Run("on Verify", func(t *testing.T) {
		e := newTokenEnv(t)
		cli := e.signer(t, SignerOptions{})
		if _, err := RotateKey(e.dir, e.clock.Now(), 1); err != nil {
			t.Fatal(err)
		}
		e.clock.Advance(reloadInterval)
		// cli is a new process: it reads the new key at once. e.s still has only the old one.
		raw, err := cli.Sign(e.robotClaims())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.s.Verify(raw, false); err != nil {
			t.Fatalf("Verify of a token signed with the rotated-in key: %v", err)
		}
	})
	t.Run("the clock went back", func(t *testing.T) {
		e := newTokenEnv(t)
		kid, err := RotateKey(e.dir, e.clock.Now(), 2)
		if err != nil {
			t.Fatal(err)
		}
		e.clock.Advance(-time.Hour)
		if got := e.s.KeyIDs(); got[0] == kid {
			t.Fatalf("rotation seen before any Sign or Verify")
		}
		if got := decodePart(t, e.sign(t, e.robotClaims()), 0)["kid"]; got != kid {
			t.Errorf("after the clock went back: kid %v, want the new key %s", got, kid)
		}
	})
}

// TestReloadKeepsLastGoodKeys holds that a key directory that goes bad after NewSigner (a corrupt key file,
// no key left, the directory gone) is reported by Err, naming the file, while the keys read before stay in
// use; and that Err clears when the directory is good again.
func TestReloadKeepsLastGoodKeys(t *testing.T) {
	tests := []struct {
		name   string
		break_ func(t *testing.T, e *tokenEnv) (mention string, repair func())
	}{
		{"a corrupt key file", func(t *testing.T, e *tokenEnv) (string, func()) {
			bad := writeKeyFile(t, e.dir, e.clock.Now().Add(time.Second), rfc7638(t, &newAttackerKey(t).PublicKey), "PRIVATE KEY", []byte("x"))
			return bad, func() {
				if err := os.Remove(filepath.Join(e.dir, bad)); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"no key left", func(t *testing.T, e *tokenEnv) (string, func()) {
			names, err := listKeyFiles(e.dir)
			if err != nil {
				t.Fatal(err)
			}
			hidden := filepath.Join(t.TempDir(), "key")
			if err := os.Rename(filepath.Join(e.dir, names[0]), hidden); err != nil {
				t.Fatal(err)
			}
			return e.dir, func() {
				if err := os.Rename(hidden, filepath.Join(e.dir, names[0])); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"the directory gone", func(t *testing.T, e *tokenEnv) (string, func()) {
			moved := filepath.Join(t.TempDir(), "moved")
			if err := os.Rename(e.dir, moved); err != nil {
				t.Fatal(err)
			}
			return e.dir, func() {
				if err := os.Rename(moved, e.dir); err != nil {
					t.Fatal(err)
				}
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTokenEnv(t)
			kid := e.s.KeyIDs()[0]
			before := e.sign(t, e.robotClaims())
			mention, repair := tt.break_(t, e)
			e.clock.Advance(reloadInterval)

			raw := e.sign(t, e.robotClaims())
			err := e.s.Err()
			if err == nil || !strings.Contains(err.Error(), mention) {
				t.Fatalf("Err: %v, want an error naming %s", err, mention)
			}
			if got := decodePart(t, raw, 0)["kid"]; got != kid {
				t.Errorf("Sign used kid %v, want the last good key %s", got, kid)
			}
			for name, tok := range map[string]string{"before": before, "after": raw} {
				if _, err := e.s.Verify(tok, false); err != nil {
					t.Errorf("token signed %s the directory broke: %v", name, err)
				}
			}

			repair()
			e.clock.Advance(reloadInterval)
			e.sign(t, e.robotClaims())
			if err := e.s.Err(); err != nil {
				t.Errorf("Err after the repair: %v", err)
			}
			if got := e.s.KeyIDs(); !slices.Equal(got, []string{kid}) {
				t.Errorf("KeyIDs %v after the repair, want [%s]", got, kid)
			}
		})
	}
}

// TestVerifyCache holds what the memory of verified tokens may answer: only while the token is valid, only
// while its key is in use, only for the kind of token it is, never a slice the caller can change, and that
// it is bounded, dropping expired entries before the oldest.
func TestVerifyCache(t *testing.T) {
	t.Run("a second Verify is answered from memory", func(t *testing.T) {
		e := newTokenEnv(t)
		raw := e.sign(t, e.robotClaims())
		first, err := e.s.Verify(raw, false)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(e.s.cache.entries); n != 1 {
			t.Fatalf("%d entries, want 1", n)
		}
		entry := e.s.cache.entries[sha256.Sum256([]byte(raw))]
		entry.claims.Subject = "marked in memory"
		second, err := e.s.Verify(raw, false)
		if err != nil {
			t.Fatal(err)
		}
		if second.Subject != "marked in memory" {
			t.Errorf("the second Verify did not come from memory: %+v", second)
		}
		if first.Subject != "robot$ci" {
			t.Errorf("first %+v", first)
		}
	})
	t.Run("an entry dies with the token's expiry and leeway", func(t *testing.T) {
		e := newTokenEnv(t)
		c := e.robotClaims()
		raw := e.sign(t, c)
		if _, err := e.s.Verify(raw, false); err != nil {
			t.Fatal(err)
		}
		e.s.cache.entries[sha256.Sum256([]byte(raw))].claims.Subject = "marked in memory"
		e.clock.Advance(c.Expiry.Sub(e.clock.Now()) + testLeeway)
		if got, err := e.s.Verify(raw, false); err != nil || got.Subject != "marked in memory" {
			t.Fatalf("at expiry plus leeway: %+v, %v; want the answer from memory", got, err)
		}
		e.clock.Advance(time.Second)
		if _, err := e.s.Verify(raw, false); !errors.Is(err, ErrInvalidToken) {
			t.Fatalf("past expiry plus leeway: %v, want ErrInvalidToken", err)
		}
		if n := len(e.s.cache.entries); n != 0 {
			t.Errorf("%d entries left", n)
		}
	})
	t.Run("the caller's changes stay its own", func(t *testing.T) {
		e := newTokenEnv(t)
		raw := e.sign(t, e.robotClaims())
		for range 3 { // the full check, the first answer from memory, the second
			c, err := e.s.Verify(raw, false)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(c.Access, e.robotClaims().Access) {
				t.Fatalf("access %v", c.Access)
			}
			c.Access[0] = "docker.io/private/db"
		}
	})
	t.Run("bounded, expired entries dropped first", func(t *testing.T) {
		e := newTokenEnv(t)
		e.s.cache.max = 3
		sign := func(subject string, life time.Duration) string {
			c := e.robotClaims()
			c.Subject, c.Expiry = subject, e.clock.Now().Add(life)
			raw := e.sign(t, c)
			if _, err := e.s.Verify(raw, false); err != nil {
				t.Fatal(err)
			}
			return raw
		}
		cached := func() []string {
			var subjects []string
			for el := e.s.cache.order.Front(); el != nil; el = el.Next() {
				subjects = append(subjects, el.Value.(*cacheEntry).claims.Subject)
			}
			return subjects
		}
		sign("a", time.Hour)
		sign("b", time.Minute)
		sign("c", time.Hour)
		e.clock.Advance(time.Minute + testLeeway + time.Second)
		sign("d", time.Hour)
		if got := cached(); !slices.Equal(got, []string{"a", "c", "d"}) {
			t.Errorf("cached %v, want the expired b dropped: [a c d]", got)
		}
		sign("e", time.Hour)
		if got := cached(); !slices.Equal(got, []string{"c", "d", "e"}) {
			t.Errorf("cached %v, want the oldest a dropped: [c d e]", got)
		}
		if len(e.s.cache.entries) != 3 {
			t.Errorf("%d entries in the map, want 3", len(e.s.cache.entries))
		}
	})
	t.Run("bounded by default", func(t *testing.T) {
		e := newTokenEnv(t)
		if e.s.cache.max != verifyCacheSize || verifyCacheSize > 100_000 {
			t.Errorf("cache bound %d", e.s.cache.max)
		}
	})
}

// TestConcurrentUse runs Sign and Verify from several goroutines while another process rotates the keys and
// the clock moves, for the race detector.
func TestConcurrentUse(t *testing.T) {
	e := newTokenEnv(t)
	e.s.cache.max = 50
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 4 {
		wg.Go(func() {
			for i := range 100 {
				c := e.robotClaims()
				c.Subject = fmt.Sprintf("robot$g%d-%d", g, i)
				raw, err := e.s.Sign(c)
				if err != nil {
					errs <- err
					return
				}
				for range 3 {
					if _, err := e.s.Verify(raw, false); err != nil {
						errs <- err
						return
					}
				}
				_ = e.s.KeyIDs()
			}
		})
	}
	wg.Go(func() {
		for range 5 {
			if _, err := RotateKey(e.dir, e.clock.Now(), 10); err != nil {
				errs <- err
				return
			}
			e.clock.Advance(reloadInterval)
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := e.s.Err(); err != nil {
		t.Errorf("Err: %v", err)
	}
}

// FuzzVerify holds that no change to a valid token makes Verify panic or accept claims other than the
// token's.
func FuzzVerify(f *testing.F) {
	e := newTokenEnv(f)
	raw := e.sign(f, e.robotClaims())
	want, err := e.s.Verify(raw, false)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(raw)
	f.Add(raw[:len(raw)/2])
	f.Add(strings.Replace(raw, ".", "..", 1))
	f.Fuzz(func(t *testing.T, s string) {
		c, err := e.s.Verify(s, false)
		if err != nil {
			if !errors.Is(err, ErrInvalidToken) {
				t.Fatalf("err %v does not wrap ErrInvalidToken", err)
			}
			return
		}
		if !reflect.DeepEqual(c, want) {
			t.Fatalf("accepted other claims %+v", c)
		}
	})
}

// BenchmarkVerify measures Verify of a token the Signer has not seen (the signature checked) and of one it
// has (answered from memory).
func BenchmarkVerify(b *testing.B) {
	b.Run("cold", func(b *testing.B) {
		e := newTokenEnv(b)
		e.s.cache.max = 0
		raw := e.sign(b, e.robotClaims())
		b.ReportAllocs()
		for b.Loop() {
			if _, err := e.s.Verify(raw, false); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cached", func(b *testing.B) {
		e := newTokenEnv(b)
		raw := e.sign(b, e.robotClaims())
		b.ReportAllocs()
		for b.Loop() {
			if _, err := e.s.Verify(raw, false); err != nil {
				b.Fatal(err)
			}
		}
	})
}
