package proxy

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/pullgate/pullgate/cache"
	"github.com/pullgate/pullgate/identity"
	"github.com/pullgate/pullgate/upstream"
)

// TestClientGoneIs499 holds that a client that goes away mid-request is logged as 499 at info level and never
// counted as a server error.
func TestClientGoneIs499(t *testing.T) {
	e := newEnv(t)
	blob, d := layerBlob(t, 1<<20)
	e.up.pushBlob(t, "team/app", blob, d)
	arrived := make(chan struct{})
	release := make(chan struct{})
	e.up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			close(arrived)
			<-release // the upstream hangs until the client has gone
			return true
		}
		return false
	})
	defer close(release)

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.srv.URL+"/v2/team/app/blobs/"+d.String(), nil)
	errc := make(chan error, 1)
	go func() {
		resp, err := e.srv.Client().Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	<-arrived
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("client error %v, want context.Canceled", err)
	}

	var line map[string]any
	waitFor(t, "the pull log line", func() bool {
		for _, l := range e.logs.lines() {
			if l["msg"] == "pull" && strings.Contains(l["path"].(string), "/blobs/") {
				line = l
				return true
			}
		}
		return false
	})
	if line["status"] != float64(statusClientClosed) || line["level"] != "INFO" {
		t.Errorf("pull log: status %v level %v, want 499 INFO", line["status"], line["level"])
	}
	for _, st := range []string{"499", "500"} {
		want := map[string]float64{"499": 1, "500": 0}[st]
		if got := e.counter(e.m.Requests.WithLabelValues("blobs", st, "miss")); got != want {
			t.Errorf("requests{status=%s} = %v, want %v", st, got, want)
		}
	}
}

// TestUpstreamIdentityChange holds that pointing an upstream name at another registry drops what was cached
// under the name: the new registry's tag is served, not the old one's.
func TestUpstreamIdentityChange(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Upstreams[0].Identity = "https://registry-a.example" })
	old, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	e.up.push(t, "team/app:v1", old)
	if resp, _ := e.get("/v2/team/app/manifests/v1"); resp.StatusCode != http.StatusOK {
		t.Fatalf("first pull: %d", resp.StatusCode)
	}

	other := newFakeUpstream(t)
	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	other.push(t, "team/app:v1", img)
	client, err := upstream.New(upstream.Options{Name: "local", URL: other.srv.URL, Transport: other.srv.Client().Transport,
		Now: e.clock.Now, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	e.opts.Upstreams = []Upstream{{Name: "local", Identity: other.srv.URL, Fetcher: client}}
	e.restart()

	resp, _ := e.get("/v2/team/app/manifests/v1")
	if got, want := resp.Header.Get("Docker-Content-Digest"), mustDigest(t, img).String(); got != want {
		t.Fatalf("after re-pointing the upstream, the tag is %s; want the new registry's %s", got, want)
	}
	// The old registry's manifest is still on disk, but no repository of the new registry is known to hold it.
	if resp, _ := e.get("/v2/team/app/manifests/" + mustDigest(t, old).String()); resp.StatusCode != http.StatusNotFound {
		t.Errorf("old registry's manifest by digest: %d, want 404 (the new registry does not have it)", resp.StatusCode)
	}
}

// denyAll is an Authorizer that refuses everything.
type denyAll struct{ asked int }

func (d *denyAll) UpstreamCredentials(identity.Principal, string, string) (string, string, bool) {
	return "", "", false
}

func (d *denyAll) Authorize(context.Context, identity.Principal, string, string) error {
	d.asked++
	return identity.ErrDenied
}

// TestAuthorizeBeforeCache holds that the authorize layer answers before any cache look-up: a cached manifest
// is refused, and the upstream is not asked.
func TestAuthorizeBeforeCache(t *testing.T) {
	e := newEnv(t)
	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	e.up.push(t, "team/app:v1", img)
	if resp, _ := e.get("/v2/team/app/manifests/v1"); resp.StatusCode != http.StatusOK {
		t.Fatalf("warm: %d", resp.StatusCode)
	}
	deny := &denyAll{}
	e.opts.Authorizer = deny
	e.restart()
	e.up.resetCounts()
	for _, p := range []string{"/v2/team/app/manifests/v1", "/v2/team/app/manifests/" + mustDigest(t, img).String(), "/v2/team/app/tags/list"} {
		resp, body := e.get(p)
		if resp.StatusCode != http.StatusForbidden || ociError(t, body).Code != codeDenied {
			t.Errorf("GET %s: %d %s, want 403 DENIED", p, resp.StatusCode, body)
		}
	}
	if deny.asked != 3 {
		t.Errorf("authorizer asked %d times, want 3", deny.asked)
	}
	for _, k := range []string{"GET manifests", "HEAD manifests", "GET tags"} {
		if n := e.up.count(k); n != 0 {
			t.Errorf("upstream saw %d %s for refused requests", n, k)
		}
	}
}

// TestStalledReaderIsCutOff holds that a client that stops reading a blob does not pin its handler: each
// write has a deadline that moves on with progress, so the handler ends, logs and frees the connection.
func TestStalledReaderIsCutOff(t *testing.T) {
	tests := []struct {
		name  string
		http2 bool
	}{{"HTTP/2", true}, {"HTTP/1.1", false}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, func(o *Options) { o.WriteTimeout = time.Second })
			blob, d := layerBlob(t, 32<<20)
			e.up.pushBlob(t, "team/app", blob, d)
			path := "/v2/team/app/blobs/" + d.String()
			if resp, _ := e.get(path); resp.StatusCode != http.StatusOK { // warm: served from the cache
				t.Fatalf("warm: %d", resp.StatusCode)
			}
			tr := e.srv.Client().Transport.(*http.Transport).Clone()
			if !tt.http2 {
				tr.ForceAttemptHTTP2 = false
				tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
				tr.TLSClientConfig = tr.TLSClientConfig.Clone()
				tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
			}
			defer tr.CloseIdleConnections()
			resp, err := (&http.Client{Transport: tr}).Get(e.srv.URL + path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close() // never read: the client has stalled
			waitFor(t, "the stalled request's pull log line", func() bool {
				n := 0
				for _, l := range e.logs.lines() {
					if l["msg"] == "pull" && l["path"] == path {
						n++
					}
				}
				return n == 2
			})
		})
	}
}

// TestErrorMapping holds what a client is told for local and upstream failures that are not its fault: a full
// disk is a 503 that says so (and never a 404 or a 500, nor a local path).
func TestErrorMapping(t *testing.T) {
	tests := []struct {
		name   string
		err    error
		status int
		code   code
	}{
		{"cache full", fmt.Errorf("storing a blob: %w", fmt.Errorf("%w: 12 bytes free on the filesystem of /var/lib/pullgate", cache.ErrFull)), http.StatusServiceUnavailable, codeUnavailable},
		{"upstream down", fmt.Errorf("x: %w", upstream.ErrUnavailable), http.StatusServiceUnavailable, codeUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ae := toAPIError(tt.err, kindBlobs)
			st := cmp.Or(ae.status, status[ae.code])
			if st != tt.status || ae.code != tt.code {
				t.Fatalf("%v -> %d %s, want %d %s", tt.err, st, ae.code, tt.status, tt.code)
			}
			if strings.Contains(ae.message, "/var/lib") {
				t.Fatalf("message %q shows a local path", ae.message)
			}
		})
	}
}
