package upstream

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/google/go-containerregistry/pkg/authn"
)

// The fuzz targets below run as ordinary tests over their seeds (f.Add and testdata/fuzz/<Name>/), and with
// `go test -fuzz=^FuzzName$ ./upstream/` as fuzzers.

func FuzzParseDockerConfig(f *testing.F) {
	for _, s := range []string{
		`{"auths":{"ghcr.io":{"auth":"dXNlcjpwYXNz"}}}`,
		`{"auths":{"https://index.docker.io/v1/":{"username":"u","password":"p"},"docker.io":{"auth":"YTpi"}}}`,
		`{"auths":{"localhost:5000":{"identitytoken":"tok"},"registry.example":{"registrytoken":"rt"}}}`,
		`{"registry.example":{"auth":"dXNlcjpwYXNz","email":"x"},"credsStore":"desktop"}`,
		`{"auths":{"bad host/x":{"auth":"dXNlcjpwYXNz"}}}`,
		`{"auths":{"a.io":{"auth":"not base64!"}}}`,
		`{"auths":{"a.io":{"auth":"bm9jb2xvbg=="}}}`,
		`{"auths":{"a.io":{"password":5}}}`,
		`{"auths":[]}`, `[]`, `null`, `{}`, `{"auths":{"a.io":"x"}}`, `{"auths":{"a.io":{}}}`,
		`{"auths":{"A.IO":{"auth":"YTpi"},"https://a.io":{"auth":"Yzpk"}}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		auths, err := ParseDockerConfig(data)
		if err != nil {
			// Errors name the entry, never a secret.
			secrets, keys := fzSecrets(data)
			for _, s := range secrets {
				if len(s) >= 6 && strings.Trim(s, "0123456789 ") != "" && strings.Contains(err.Error(), s) &&
					!fzInAny(s, keys) && !strings.Contains(fzFixedText, s) {
					t.Fatalf("error %q holds the secret %q", err, s)
				}
			}
			return
		}
		for host, cfg := range auths {
			n, nerr := normalizeRegistry(host)
			if nerr != nil || n != host || host != strings.ToLower(host) || strings.ContainsAny(host, "/ ") {
				t.Fatalf("host %q is not normalised (%q, %v)", host, n, nerr)
			}
			if cfg == (authn.AuthConfig{}) {
				t.Fatalf("host %q has empty credentials", host)
			}
		}
	})
}

// fzFixedText is the text of ParseDockerConfig's own error messages.
const fzFixedText = `invalid JSON at byte not a JSON object (found array string number bool object) "auths" is not an object ` +
	`entry is not a string not an object auth field is not base64(username:password) not a registry host`

// fzSecrets collects the credential values a docker config holds (field names match case-insensitively, as
// encoding/json matches them), and every key, in both shapes of the document.
func fzSecrets(data []byte) (secrets, keys []string) {
	var top map[string]json.RawMessage
	if json.Unmarshal(data, &top) != nil {
		return nil, nil
	}
	entries := map[string]json.RawMessage{}
	for k, v := range top {
		keys = append(keys, k)
		entries[k] = v
		if strings.EqualFold(k, "auths") {
			var inner map[string]json.RawMessage
			if json.Unmarshal(v, &inner) == nil {
				for k2, v2 := range inner {
					keys = append(keys, k2)
					entries[k2] = v2
				}
			}
		}
	}
	for _, raw := range entries {
		var fields map[string]any
		if json.Unmarshal(raw, &fields) != nil {
			continue
		}
		for name, v := range fields {
			keys = append(keys, name)
			s, ok := v.(string)
			if !ok {
				continue
			}
			switch strings.ToLower(name) {
			case "password", "identitytoken", "registrytoken":
				secrets = append(secrets, s)
			case "auth":
				secrets = append(secrets, s)
				if user, pass, err := decodeAuth(s); err == nil {
					secrets = append(secrets, pass, user+":"+pass)
				}
			}
		}
	}
	return secrets, keys
}

func fzInAny(s string, keys []string) bool {
	for _, k := range keys {
		if strings.Contains(k, s) || strings.Contains(strconv.Quote(k), s) {
			return true
		}
	}
	return false
}

// FuzzDockerConfigRoundTrip writes one credential the way `kubectl create secret docker-registry` does and reads
// it back: the username (which cannot hold ':' in the auth form) and the password come back exactly.
func FuzzDockerConfigRoundTrip(f *testing.F) {
	f.Add("ghcr.io", "user", "pa:ss", true, false)
	f.Add("https://index.docker.io/v1/", "u", "p", false, false)
	f.Add("Registry.Example:5000", "robot$ci", "s3cr=t", true, true)
	f.Add("[::1]:5000", "", "token-only", true, false)
	f.Add("localhost", "a", "", false, false)
	f.Fuzz(func(t *testing.T, key, user, pass string, useAuth, unpadded bool) {
		if !utf8.ValidString(key) || !utf8.ValidString(user) || !utf8.ValidString(pass) || useAuth && strings.Contains(user, ":") {
			return // JSON cannot carry it unchanged, or the auth form cannot
		}
		entry := map[string]string{"username": user, "password": pass}
		if useAuth {
			enc := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
			if unpadded {
				enc = strings.TrimRight(enc, "=")
			}
			entry = map[string]string{"auth": enc}
		}
		data, err := json.Marshal(map[string]any{"auths": map[string]any{key: entry}})
		if err != nil {
			t.Fatal(err)
		}
		auths, err := ParseDockerConfig(data)
		host, herr := normalizeRegistry(key)
		switch {
		case user == "" && pass == "":
			if err != nil || len(auths) != 0 {
				t.Fatalf("empty credentials: %v, %v; want them skipped", auths, err)
			}
		case herr != nil:
			if err == nil {
				t.Fatalf("key %q is no registry host, but it parsed as %v", key, auths)
			}
		case err != nil:
			t.Fatalf("%s: %v", data, err)
		default:
			if got := auths[host]; got.Username != user || got.Password != pass || len(auths) != 1 {
				t.Fatalf("%s: got %+v under %q (all: %v), want %q/%q", data, got, host, auths, user, pass)
			}
		}
	})
}

func FuzzParseChallenges(f *testing.F) {
	for _, s := range []string{
		`Bearer realm="https://auth.docker.io/token",service="registry.docker.io"`,
		"Basic realm=\"x\"\nbearer service=\"a,\\\"b\\\"\", realm=https://h/t, scope=\"repository:x:pull\"",
		`Negotiate abc`, `Bearer`, `Bearer realm="unterminated`, `Bearer realm="a\`, `Bearer =,=,"`, `Bearer realm`,
		"BEARER\trealm=x", ``,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		values := strings.Split(s, "\n")
		ch := parseChallenges(values)
		if ch == nil {
			t.Fatal("nil challenge")
		}
		schemeOf := func(v string) string {
			name, _, _ := strings.Cut(strings.TrimSpace(v), " ")
			return strings.ToLower(name)
		}
		var bearer, basic bool
		for _, v := range values {
			bearer = bearer || schemeOf(v) == "bearer"
			basic = basic || schemeOf(v) == "basic"
		}
		switch {
		case bearer && ch.scheme != schemeBearer, !bearer && basic && ch.scheme != schemeBasic, !bearer && !basic && ch.scheme != schemeNone:
			t.Fatalf("%q: scheme %d (bearer %v, basic %v)", s, ch.scheme, bearer, basic)
		case ch.scheme != schemeBearer && (ch.realm != "" || ch.service != ""):
			t.Fatalf("%q: realm or service without Bearer: %+v", s, ch)
		}
		for k := range parseAuthParams(s) {
			if k != strings.ToLower(strings.TrimSpace(k)) {
				t.Fatalf("%q: parameter name %q is not normalised", s, k)
			}
		}
	})
}

// FuzzChallengeRoundTrip writes a Bearer challenge with quoted (or, when possible, bare) parameters in any order,
// next to other parameters, and reads realm and service back exactly.
func FuzzChallengeRoundTrip(f *testing.F) {
	f.Add("https://auth.docker.io/token", "registry.docker.io", "repository:library/nginx:pull", false, false)
	f.Add(`https://h/t?a="b",c`, `a\b`, "", true, true)
	f.Add("x", "", "realm=\"evil\"", false, true)
	f.Fuzz(func(t *testing.T, realm, service, scope string, bare, scopeFirst bool) {
		quote := func(v string) string {
			return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(v) + `"`
		}
		param := func(v string) string {
			if bare && v != "" && !strings.ContainsAny(v, ",\"") && strings.TrimSpace(v) == v && strings.Trim(v, " \t") == v {
				return v
			}
			return quote(v)
		}
		params := []string{"realm=" + param(realm), "service=" + param(service)}
		if scopeFirst {
			params = append([]string{"scope=" + quote(scope)}, params...)
		} else {
			params = append(params, "scope="+quote(scope))
		}
		h := "Bearer " + strings.Join(params, ", ")
		ch := parseChallenges([]string{`Basic realm="r"`, h})
		if ch.scheme != schemeBearer || ch.realm != realm || ch.service != service {
			t.Fatalf("%q parsed as %+v; want realm %q service %q", h, *ch, realm, service)
		}
	})
}

func FuzzParseRetryAfter(f *testing.F) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, s := range []string{"", "120", "0", "-5", "99999999999999999999", " 30 ", "Wed, 21 Oct 2015 07:28:00 GMT",
		now.Add(90 * time.Second).Format(http.TimeFormat), "1.5", "abc"} {
		f.Add(s, now.Unix())
	}
	f.Fuzz(func(t *testing.T, v string, nowUnix int64) {
		now := time.Unix(nowUnix%(1<<40), 0)
		d := parseRetryAfter(v, now)
		if d < time.Second || d > maxRetryAfter {
			t.Fatalf("%q: %s, want within [1s, %s]", v, d, maxRetryAfter)
		}
		if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n >= 1 && n <= int(maxRetryAfter/time.Second) && d != time.Duration(n)*time.Second {
			t.Fatalf("%q: %s, want %ds", v, d, n)
		}
		if strings.TrimSpace(v) == "" && d != defaultRetryAfter {
			t.Fatalf("no Retry-After gives %s, want %s", d, defaultRetryAfter)
		}
	})
}

func FuzzParseRateLimitRemaining(f *testing.F) {
	for _, s := range []string{"100;w=21600", "0", "", "-1", " 7 ;w=1", "abc", "99999999999999999999", "1;2;3"} {
		f.Add(s, 0, "")
	}
	f.Add("", 100, ";w=21600")
	f.Fuzz(func(t *testing.T, v string, n int, window string) {
		h := http.Header{}
		h.Set("RateLimit-Remaining", v)
		if got := parseRateLimitRemaining(h); got < -1 {
			t.Fatalf("%q: %d", v, got)
		}
		if strings.ContainsAny(window, "\r\n") {
			return
		}
		h.Set("RateLimit-Remaining", strconv.Itoa(n)+";"+window)
		want := n
		if n < 0 {
			want = -1
		}
		if got := parseRateLimitRemaining(h); got != want {
			t.Fatalf("%q: %d, want %d", h.Get("RateLimit-Remaining"), got, want)
		}
	})
}

func FuzzParseErrorBody(f *testing.F) {
	for _, s := range [][2]string{
		{"application/json", `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}`},
		{"application/json", `{"details":"incorrect username or password"}`},
		{"application/json", `{"error":"x"}`},
		{"text/plain; charset=utf-8", "404 page not found\n"},
		{"text/html", "<html>"},
		{"text/plain", "\xff\xfe\x00bad\x1b[31m" + strings.Repeat("é", 600)},
		{"", `{"errors":[]}`},
	} {
		f.Add(s[0], []byte(s[1]))
	}
	f.Fuzz(func(t *testing.T, contentType string, body []byte) {
		code, msg := parseErrorBody(contentType, body, nil)
		fzCheckClean(t, "code", code, 64)
		fzCheckClean(t, "message", msg, maxMessage)
	})
}

// fzCheckClean checks what clean promises: valid UTF-8, printable, single-spaced, trimmed, at most n bytes
// plus an ellipsis.
func fzCheckClean(t *testing.T, what, s string, n int) {
	t.Helper()
	if !utf8.ValidString(s) || strings.ContainsFunc(s, func(r rune) bool { return unicode.IsControl(r) || r == utf8.RuneError }) {
		t.Fatalf("%s %q has control or invalid characters", what, s)
	}
	if strings.TrimSpace(s) != s || strings.Contains(s, "  ") {
		t.Fatalf("%s %q is not trimmed and single-spaced", what, s)
	}
	if len(s) > n+len("...") {
		t.Fatalf("%s of %d bytes, limit %d", what, len(s), n)
	}
}

// FuzzErrorBodyRoundTrip: a clean, short OCI error from the upstream reaches the StatusError unchanged.
func FuzzErrorBodyRoundTrip(f *testing.F) {
	f.Add("TOOMANYREQUESTS", "You have reached your pull rate limit.")
	f.Add("DENIED", "requested access to the resource is denied ✓")
	f.Fuzz(func(t *testing.T, code, msg string) {
		if clean(code, 64) != code || clean(msg, maxMessage) != msg {
			return
		}
		body, err := json.Marshal(map[string]any{"errors": []map[string]any{{"code": code, "message": msg, "detail": nil}}})
		if err != nil {
			t.Fatal(err)
		}
		if gc, gm := parseErrorBody("application/json", body, nil); gc != code || gm != msg {
			t.Fatalf("%s: got %q %q", body, gc, gm)
		}
	})
}

func FuzzTokenRefreshAt(f *testing.F) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, c := range []struct {
		exp    int64
		issued string
	}{{300, ""}, {0, ""}, {-5, ""}, {60, now.Add(-30 * time.Second).Format(time.RFC3339)},
		{60, now.Add(time.Hour).Format(time.RFC3339)}, {1 << 62, "2025-01-02T03:04:05.999999999Z"}, {3600, "garbage"}} {
		f.Add(now.Unix(), c.exp, c.issued)
	}
	f.Fuzz(func(t *testing.T, nowUnix, expiresIn int64, issuedAt string) {
		now := time.Unix(nowUnix%(1<<40), 0).UTC()
		at := tokenRefreshAt(now, expiresIn, issuedAt)
		if at.Before(now.Add(-maxTokenMargin)) {
			t.Fatalf("expires_in %d issued_at %q: refresh at %s, before now %s minus the margin", expiresIn, issuedAt, at, now)
		}
		if at.After(now.Add(365 * 24 * time.Hour)) {
			t.Fatalf("expires_in %d issued_at %q: refresh at %s, over a year after %s", expiresIn, issuedAt, at, now)
		}
		if issuedAt == "" && expiresIn > 0 && expiresIn < 1<<20 {
			life := time.Duration(expiresIn) * time.Second
			if want := now.Add(life - min(life/10, maxTokenMargin)); !at.Equal(want) {
				t.Fatalf("expires_in %d: refresh at %s, want %s", expiresIn, at, want)
			}
		}
	})
}

// FuzzRequestURL: every request that requestURL accepts goes to the configured host, under the configured path
// prefix, at exactly /v2/<repo>/<kind>/<ref>, with no dot segments and the query as given.
func FuzzRequestURL(f *testing.F) {
	d := "sha256:" + strings.Repeat("a", 64)
	for _, s := range [][3]string{
		{"library/nginx", "manifests", "1.25"}, {"library/nginx", "manifests", d}, {"a/b", "blobs", d}, {"a", "tags/list", ""},
		{"a", "referrers", d}, {"../x", "manifests", "v"}, {"a", "blobs", "sha256:../../x"}, {"a", "manifests", "v1/../../x"},
		{"a", "manifests", "v1?x=y"}, {"a", "blobs", "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564"},
		{"a@evil.example", "manifests", "v"}, {"a", "uploads", "x"},
	} {
		f.Add("GET", s[0], s[1], s[2], "n", "10")
	}
	f.Add("HEAD", "a", "manifests", "v", "", "")
	f.Add("PUT", "a", "manifests", "v", "", "")
	c, err := New(Options{Name: "fuzz", URL: "https://reg.example:5000/mirror/"})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, method, repo, kind, ref, qk, qv string) {
		r := Request{Method: method, Repo: repo, Kind: kind, Ref: ref}
		if qk != "" {
			r.Query = url.Values{qk: {qv}}
		}
		m, k, u, err := c.requestURL(r)
		if err != nil {
			if !errors.Is(err, ErrInvalidRequest) {
				t.Fatalf("refusal %q does not wrap ErrInvalidRequest", err)
			}
			return
		}
		if m != http.MethodGet && m != http.MethodHead {
			t.Fatalf("method %q accepted", m)
		}
		parsed, err := url.Parse(u)
		if err != nil {
			t.Fatalf("%q: %v", u, err)
		}
		if parsed.Scheme != "https" || parsed.Host != "reg.example:5000" || parsed.User != nil || parsed.Fragment != "" {
			t.Fatalf("%+v went to %q", r, u)
		}
		want := "/mirror/v2/" + repo + "/" + kind
		if ref != "" {
			want += "/" + ref
		}
		if parsed.Path != want || path.Clean(parsed.Path) != parsed.Path || strings.Contains(parsed.EscapedPath(), "%") {
			t.Fatalf("%+v: path %q (escaped %q), want %q", r, parsed.Path, parsed.EscapedPath(), want)
		}
		if got := parsed.Query(); r.Query.Encode() != got.Encode() {
			t.Fatalf("%+v: query %v", r, got)
		}
		if wantKind := strings.TrimSuffix(kind, "/list"); k != wantKind {
			t.Fatalf("kind %q reported as %q", kind, k)
		}
		if len(repo) > 255 {
			t.Fatalf("repository of %d characters accepted", len(repo))
		}
	})
}
