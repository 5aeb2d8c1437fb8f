package upstream

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestParseDockerConfig(t *testing.T) {
	tests := []struct {
		name    string
		json    string
		want    map[string]authn.AuthConfig
		wantErr string
	}{
		{
			name: "auth field",
			json: `{"auths":{"ghcr.io":{"auth":"` + b64("bob:pa:ss") + `"}}}`,
			want: map[string]authn.AuthConfig{"ghcr.io": {Username: "bob", Password: "pa:ss"}},
		},
		{
			name: "auth field unpadded",
			json: `{"auths":{"ghcr.io":{"auth":"` + strings.TrimRight(b64("bob:p"), "=") + `"}}}`,
			want: map[string]authn.AuthConfig{"ghcr.io": {Username: "bob", Password: "p"}},
		},
		{
			name: "username and password",
			json: `{"auths":{"quay.io":{"username":"u","password":"p","email":"x@y"}}}`,
			want: map[string]authn.AuthConfig{"quay.io": {Username: "u", Password: "p"}},
		},
		{
			name: "auth wins over username",
			json: `{"auths":{"quay.io":{"username":"u","password":"p","auth":"` + b64("a:b") + `"}}}`,
			want: map[string]authn.AuthConfig{"quay.io": {Username: "a", Password: "b"}},
		},
		{
			name: "tokens",
			json: `{"auths":{"a.io":{"identitytoken":"id"},"b.io":{"registrytoken":"rt"}}}`,
			want: map[string]authn.AuthConfig{"a.io": {IdentityToken: "id"}, "b.io": {RegistryToken: "rt"}},
		},
		{
			name: "Docker Hub URL key",
			json: `{"auths":{"https://index.docker.io/v1/":{"auth":"` + b64("hub:pw") + `"}}}`,
			want: map[string]authn.AuthConfig{"docker.io": {Username: "hub", Password: "pw"}},
		},
		{
			name: "URL keys with port and path, case",
			json: `{"auths":{"https://Reg.Example.com:5443/v2/":{"auth":"` + b64("r:pw") + `"}}}`,
			want: map[string]authn.AuthConfig{"reg.example.com:5443": {Username: "r", Password: "pw"}},
		},
		{
			name: "bare host wins over URL form",
			json: `{"auths":{"https://index.docker.io/v1/":{"auth":"` + b64("old:1") + `"},"docker.io":{"auth":"` + b64("new:2") + `"}}}`,
			want: map[string]authn.AuthConfig{"docker.io": {Username: "new", Password: "2"}},
		},
		{
			name: "empty entries and credential helpers skipped",
			json: `{"auths":{"a.io":{}},"credsStore":"desktop","credHelpers":{"gcr.io":"gcloud"}}`,
			want: map[string]authn.AuthConfig{},
		},
		{
			name: "legacy dockercfg",
			json: `{"https://index.docker.io/v1/":{"auth":"` + b64("leg:acy") + `","email":"e"},"HttpHeaders":{"x":"y"}}`,
			want: map[string]authn.AuthConfig{"docker.io": {Username: "leg", Password: "acy"}},
		},
		{name: "bad base64", json: `{"auths":{"a.io":{"auth":"!!not-base64-secret!!"}}}`, wantErr: `entry "a.io": auth field is not base64`},
		{name: "auth without colon", json: `{"auths":{"a.io":{"auth":"` + b64("nocolon-secret") + `"}}}`, wantErr: "username:password"},
		{name: "bad JSON", json: `{"auths":{"a.io":{"auth":"x"`, wantErr: "invalid JSON"},
		{name: "syntax error after secret", json: `{"auths":{"a.io":{"password":"secret" x}}}`, wantErr: "invalid JSON at byte"},
		{name: "not an object", json: `["a"]`, wantErr: "not a JSON object"},
		{name: "null", json: `null`, wantErr: "not a JSON object"},
		{name: "auths not an object", json: `{"auths":[]}`, wantErr: `"auths" is not an object`},
		{name: "field not a string", json: `{"auths":{"a.io":{"password":42}}}`, wantErr: `"password" is not a string`},
		{name: "bad host", json: `{"auths":{"a b":{"username":"u","password":"secret"}}}`, wantErr: "not a registry host"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseDockerConfig([]byte(tt.json))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "secret") {
					t.Errorf("error %q shows a secret", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			for k, w := range tt.want {
				if got[k] != w {
					t.Errorf("%s: got %+v, want %+v", k, got[k], w)
				}
			}
		})
	}
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func resolveBasic(t *testing.T, kc authn.Keychain, host string) (string, string) {
	t.Helper()
	a, err := kc.Resolve(resource(host))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := a.Authorization()
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Username, cfg.Password
}

func TestAuthFileRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), ".dockerconfigjson")
	entry := func(user, pass string) string {
		return `{"auths":{"https://index.docker.io/v1/":{"auth":"` + b64(user+":"+pass) + `"}}}`
	}
	writeFile(t, path, entry("one", "pw1"))
	clk := newClock()
	f, err := NewAuthFile(path, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	check := func(step, host, wantUser string) {
		t.Helper()
		if u, _ := resolveBasic(t, f, host); u != wantUser {
			t.Errorf("%s: user for %s = %q, want %q", step, host, u, wantUser)
		}
	}
	check("start", "registry-1.docker.io", "one")
	check("start", "index.docker.io", "one")
	check("unknown host", "ghcr.io", "")

	writeFile(t, path, entry("two", "pw2"))
	check("within the check interval", "docker.io", "one")
	clk.Advance(authFileCheckInterval)
	check("rotated", "registry-1.docker.io", "two")

	writeFile(t, path, `{"auths":{"docker.io":{"auth":"broken-secret"}}}`)
	clk.Advance(authFileCheckInterval)
	check("bad file keeps the last good", "docker.io", "two")
	if err := f.Err(); err == nil || !strings.Contains(err.Error(), "keeping the last good") || strings.Contains(err.Error(), "broken-secret") {
		t.Errorf("Err() = %v", err)
	}

	os.Remove(path)
	clk.Advance(authFileCheckInterval)
	check("missing file keeps the last good", "docker.io", "two")

	writeFile(t, path, entry("three", "pw3"))
	clk.Advance(authFileCheckInterval)
	check("fixed", "docker.io", "three")
	if err := f.Err(); err != nil {
		t.Errorf("Err() = %v after a good reload", err)
	}
}

func TestNewAuthFileErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := NewAuthFile(filepath.Join(dir, "missing"), nil); err == nil {
		t.Error("missing file: no error")
	}
	bad := filepath.Join(dir, "bad")
	writeFile(t, bad, `{"auths":{"a.io":{"auth":"%%secret%%"}}}`)
	_, err := NewAuthFile(bad, nil)
	if err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("err = %v, want an error without the secret", err)
	}
}

// TestAuthFileRotationEndToEnd rotates the password on the registry and in the file: the Client
// picks the new one up without a restart.
func TestAuthFileRotationEndToEnd(t *testing.T) {
	pass := &atomic.Value{}
	pass.Store("first-pw")
	u := newUpstream(t, basicAuthWrap("alice", pass))
	path := filepath.Join(t.TempDir(), "config.json")
	write := func(pw string) {
		writeFile(t, path, `{"auths":{"`+u.srv.URL+`":{"username":"alice","password":"`+pw+`"}}}`)
	}
	write("first-pw")
	clk := newClock()
	f, err := NewAuthFile(path, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	c := newTestClient(t, u.srv, Options{Keychain: f, Now: clk.Now})
	if _, _, err := fetchBody(t, c, manifestReq(u.img)); err != nil {
		t.Fatal(err)
	}
	pass.Store("second-pw")
	_, _, err = fetchBody(t, c, manifestReq(u.img))
	checkAuthResult(t, err, 401)
	checkNoSecret(t, err, "alice", "first-pw")
	write("second-pw")
	clk.Advance(authFileCheckInterval + time.Second)
	if _, _, err := fetchBody(t, c, manifestReq(u.img)); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
}
