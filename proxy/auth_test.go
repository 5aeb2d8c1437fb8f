package proxy

import (
	"encoding/base64"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pullgate/pullgate/upstream"
)

// TestUpstreamCredentials pulls from an upstream that requires basic auth with credentials from a
// .dockerconfigjson file, and checks that refused credentials reach the client as a clear error naming the
// upstream, with no password in the log.
func TestUpstreamCredentials(t *testing.T) {
	const user, pass = "robot", "s3cret-pa55"
	authFile := filepath.Join(t.TempDir(), ".dockerconfigjson")
	e := newEnv(t)
	host := e.up.host()
	writeAuth := func(p string) {
		t.Helper()
		cfg := `{"auths":{"` + host + `":{"auth":"` + base64.StdEncoding.EncodeToString([]byte(user+":"+p)) + `"}}}`
		if err := os.WriteFile(authFile, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeAuth("wrong-password")
	kc, err := upstream.NewAuthFile(authFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	client, err := upstream.New(upstream.Options{Name: "local", URL: e.up.srv.URL,
		Transport: e.up.srv.Client().Transport, Keychain: kc, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	e.opts.Upstreams[0].Fetcher = client
	e.restart()
	img := randomImage(t, 1)
	e.up.push(t, "private/app:v1", img)
	e.up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if u, p, ok := r.BasicAuth(); ok && u == user && p == pass {
			return false
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`))
		return true
	})

	resp, body := e.get("/v2/local/private/app/manifests/v1")
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong credentials: status %d %s", resp.StatusCode, body)
	}
	if oe := ociError(t, body); oe.Code != codeUnauthorized || !strings.Contains(oe.Message, "upstream local") {
		t.Fatalf("error does not name the upstream: %s", body)
	}
	if strings.Contains(string(body), "wrong-password") || strings.Contains(e.logs.String(), "wrong-password") {
		t.Fatal("a password reached the client or the log")
	}

	// Rotate the credentials file: the next pull uses the new ones, without a restart.
	writeAuth(pass)
	future := time.Now().Add(time.Minute)
	if err := os.Chtimes(authFile, future, future); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "rotated credentials to be used", func() bool {
		resp, _ := e.get("/v2/local/private/app/manifests/v1")
		return resp.StatusCode == http.StatusOK
	})
	if strings.Contains(e.logs.String(), pass) {
		t.Fatal("the password reached the log")
	}
}
