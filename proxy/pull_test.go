package proxy

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// TestPullMultiPlatformImage pulls a multi-platform index through pullgate with go-containerregistry, by tag and
// by digest, routed by ns and by path prefix, and checks every digest against a direct pull.
func TestPullMultiPlatformImage(t *testing.T) {
	e := newEnv(t)
	idx, err := random.Index(2048, 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	e.up.push(t, "team/app:v1", idx)
	want := mustDigest(t, idx)

	direct, err := remote.Index(mustRef(t, e.up.host()+"/team/app:v1"), remote.WithTransport(e.up.srv.Client().Transport))
	if err != nil {
		t.Fatal(err)
	}
	if got := mustDigest(t, direct); got != want {
		t.Fatalf("direct pull digest %s, pushed %s", got, want)
	}

	nsTransport := &nsRoundTripper{ns: "local", next: e.srv.Client().Transport}
	tests := []struct {
		name string
		ref  string
		rt   http.RoundTripper
	}{
		{"prefix by tag", e.host() + "/local/team/app:v1", e.srv.Client().Transport},
		{"prefix by digest", e.host() + "/local/team/app@" + want.String(), e.srv.Client().Transport},
		{"ns by tag", e.host() + "/team/app:v1", nsTransport},
		{"ns by digest", e.host() + "/team/app@" + want.String(), nsTransport},
		{"default upstream by tag", e.host() + "/team/app:v1", e.srv.Client().Transport},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := remote.Index(mustRef(t, tt.ref), remote.WithTransport(tt.rt))
			if err != nil {
				t.Fatal(err)
			}
			if d := mustDigest(t, got); d != want {
				t.Fatalf("digest through pullgate %s, want %s", d, want)
			}
			// validate.Index reads every manifest, config and layer and checks each against its digest.
			if err := validate.Index(got); err != nil {
				t.Fatalf("invalid index through pullgate: %v", err)
			}
		})
	}
	if got := e.up.count("GET blobs"); got != 2*(2+1+1) {
		t.Errorf("upstream blob GETs = %d, want each of the 8 blobs (2 images of 2 layers, 1 config and a layer-less...) fetched once", got)
	}
}

// nsRoundTripper adds ?ns= to every request, as containerd does for a mirror.
type nsRoundTripper struct {
	ns   string
	next http.RoundTripper
}

func (n *nsRoundTripper) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	q := r.URL.Query()
	q.Set("ns", n.ns)
	r.URL.RawQuery = q.Encode()
	return n.next.RoundTrip(r)
}

func mustRef(t *testing.T, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestConcurrentColdBlobOneUpstreamGet is invariant 3 of docs/design.md: 20 clients, one upstream GET, 20 correct bodies.
func TestConcurrentColdBlobOneUpstreamGet(t *testing.T) {
	e := newEnv(t)
	blob, d := layerBlob(t, 3<<20)
	e.up.pushBlob(t, "team/big", blob, d)
	release := make(chan struct{})
	e.up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && routeKind(r.URL.Path) == "blobs" {
			<-release // hold the upstream until every client is waiting
		}
		return false
	})
	// The repository must be known to hold the blob, as it would be after its manifest was pulled.
	if err := e.cache.Link("local", "team/big", d); err != nil {
		t.Fatal(err)
	}
	const clients = 20
	var wg sync.WaitGroup
	bodies := make([][]byte, clients)
	errs := make([]error, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := e.srv.Client().Get(e.srv.URL + "/v2/local/team/big/blobs/" + d.String())
			if err != nil {
				errs[i] = err
				return
			}
			defer resp.Body.Close()
			bodies[i], errs[i] = io.ReadAll(resp.Body)
		}()
	}
	waitFor(t, "the one upstream GET", func() bool { return e.up.count("GET blobs") >= 1 })
	close(release)
	wg.Wait()
	for i := range clients {
		if errs[i] != nil || !bytes.Equal(bodies[i], blob) {
			t.Fatalf("client %d: err %v, %d bytes, equal %v", i, errs[i], len(bodies[i]), bytes.Equal(bodies[i], blob))
		}
	}
	if got := e.up.count("GET blobs"); got != 1 {
		t.Fatalf("upstream blob GETs = %d, want 1", got)
	}
}

// TestFillStreamsBeforeComplete checks that a client receives bytes while the upstream is still sending, and
// that a client that leaves does not abort the fill for the one that stays.
func TestFillStreamsBeforeComplete(t *testing.T) {
	e := newEnv(t)
	blob, d := layerBlob(t, 1<<20)
	half := len(blob) / 2
	resume := make(chan struct{})
	e.up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || routeKind(r.URL.Path) != "blobs" {
			return false
		}
		w.Header().Set("Content-Length", "1048576")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(blob[:half])
		w.(http.Flusher).Flush()
		<-resume
		_, _ = w.Write(blob[half:])
		return true
	})
	if err := e.cache.Link("local", "team/stream", d); err != nil {
		t.Fatal(err)
	}
	url := e.srv.URL + "/v2/local/team/stream/blobs/" + d.String()

	leaver, cancelLeaver := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(leaver, http.MethodGet, url, nil)
	resp1, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	first := make([]byte, 1000)
	if _, err := io.ReadFull(resp1.Body, first); err != nil {
		t.Fatalf("no bytes streamed while the upstream was mid-body: %v", err)
	}
	if !bytes.Equal(first, blob[:1000]) {
		t.Fatal("streamed bytes differ from the blob")
	}
	cancelLeaver()
	resp1.Body.Close()

	resp2, err := e.srv.Client().Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp2.Body.Close()
	got := make([]byte, half-1)
	if _, err := io.ReadFull(resp2.Body, got); err != nil {
		t.Fatalf("second client got no streamed bytes: %v", err)
	}
	close(resume)
	rest, err := io.ReadAll(resp2.Body)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(append(got, rest...), blob) {
		t.Fatal("second client's body differs from the blob")
	}
	waitFor(t, "the blob in the cache", func() bool { _, err := e.cache.Stat(d); return err == nil })
	if n := e.up.count("GET blobs"); n != 1 {
		t.Fatalf("upstream GETs = %d, want 1 (the leaver must not abort or restart the fill)", n)
	}
}

// TestUnverifiedBytesNeverKept is invariant 1 of docs/design.md: wrong or truncated bytes from the upstream are an error
// to the client, a metric, and nothing on disk.
func TestUnverifiedBytesNeverKept(t *testing.T) {
	tests := []struct {
		name  string
		serve func(w http.ResponseWriter, blob []byte)
	}{
		{"wrong bytes", func(w http.ResponseWriter, blob []byte) {
			bad := bytes.Clone(blob)
			bad[len(bad)/2] ^= 0xff
			w.Header().Set("Content-Length", "65536")
			_, _ = w.Write(bad)
		}},
		{"truncated body", func(w http.ResponseWriter, blob []byte) {
			w.Header().Set("Content-Length", "65536")
			_, _ = w.Write(blob[:1000])
			panic(http.ErrAbortHandler)
		}},
		{"longer body", func(w http.ResponseWriter, blob []byte) {
			_, _ = w.Write(append(bytes.Clone(blob), "trailing"...))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			blob, d := layerBlob(t, 65536)
			e.up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
				if routeKind(r.URL.Path) != "blobs" {
					return false
				}
				if r.Method == http.MethodGet {
					tt.serve(w, blob)
				}
				return true
			})
			if err := e.cache.Link("local", "team/bad", d); err != nil {
				t.Fatal(err)
			}
			var body []byte
			resp, readErr := e.srv.Client().Get(e.srv.URL + "/v2/local/team/bad/blobs/" + d.String())
			if readErr == nil {
				body, readErr = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			if readErr == nil && resp.StatusCode == http.StatusOK && bytes.Equal(body, blob) {
				t.Fatal("client received a complete body that was not verified")
			}
			if readErr == nil && resp.StatusCode >= 400 {
				ociError(t, body)
			}
			if readErr == nil && resp.StatusCode == http.StatusOK {
				t.Fatalf("client got 200 and a clean end of body with %d bytes; want an error or a cut stream", len(body))
			}
			waitFor(t, "the fill to finish", func() bool { return e.counter(e.m.FillsInFlight) == 0 })
			if _, err := e.cache.Stat(d); err == nil {
				t.Fatal("unverified blob is in the cache")
			}
			content, temp := e.storedFiles()
			if len(content) != 0 || len(temp) != 0 {
				t.Fatalf("files left on disk: content %v temp %v", content, temp)
			}
			if tt.name != "truncated body" {
				if got := e.counter(e.m.DigestMismatches.WithLabelValues("local")); got != 1 {
					t.Fatalf("digest mismatch metric = %v, want 1", got)
				}
			}
		})
	}
}

// TestManifestDigestMismatch: a manifest by digest whose bytes hash otherwise is refused and not stored.
func TestManifestDigestMismatch(t *testing.T) {
	e := newEnv(t)
	img := randomImage(t, 1)
	e.up.push(t, "team/m:v1", img)
	d := mustDigest(t, img)
	e.up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if routeKind(r.URL.Path) != "manifests" {
			return false
		}
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.Header().Set("Docker-Content-Digest", d.String())
		_, _ = io.WriteString(w, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}`)
		return true
	})
	for _, ref := range []string{d.String(), "v1"} {
		resp, body := e.get("/v2/local/team/m/manifests/" + ref)
		if resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("%s: status %d, want 502: %s", ref, resp.StatusCode, body)
		}
		if ociError(t, body).Code != codeDigestInvalid && ref == d.String() {
			t.Fatalf("%s: want DIGEST_INVALID: %s", ref, body)
		}
	}
	if _, err := e.cache.Stat(d); err == nil {
		t.Fatal("mismatching manifest stored under the requested digest")
	}
}

// TestTagFreshness is invariant 5 of docs/design.md: a tag is served from the index within the TTL, revalidated with one
// HEAD after it, and followed when the upstream re-points it; digests are never revalidated.
func TestTagFreshness(t *testing.T) {
	e := newEnv(t)
	img1, img2 := randomImage(t, 1), randomImage(t, 1)
	e.up.push(t, "team/f:latest", img1)
	d1, d2 := mustDigest(t, img1), mustDigest(t, img2)

	check := func(wantDigest v1.Hash, wantCache string) {
		t.Helper()
		resp, body := e.get("/v2/local/team/f/manifests/latest")
		if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != wantDigest.String() {
			t.Fatalf("status %d digest %s, want %s: %s", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"), wantDigest, body)
		}
		lines := e.logs.lines()
		if got := lines[len(lines)-1]["cache"]; got != wantCache {
			t.Fatalf("pull log cache = %v, want %s", got, wantCache)
		}
	}
	check(d1, "miss")
	e.up.resetCounts()
	check(d1, "hit")
	if n := e.up.count("GET manifests") + e.up.count("HEAD manifests"); n != 0 {
		t.Fatalf("fresh tag cost %d upstream requests", n)
	}
	e.clock.advance(2 * time.Minute)
	check(d1, "revalidated")
	if e.up.count("HEAD manifests") != 1 || e.up.count("GET manifests") != 0 {
		t.Fatalf("revalidation: %v, want exactly one HEAD", e.up.counts)
	}
	e.up.push(t, "team/f:latest", img2)
	e.clock.advance(2 * time.Minute)
	check(d2, "miss")

	e.up.resetCounts()
	e.clock.advance(24 * time.Hour)
	resp, _ := e.get("/v2/local/team/f/manifests/" + d1.String())
	if resp.StatusCode != 200 || e.up.count("HEAD manifests")+e.up.count("GET manifests") != 0 {
		t.Fatalf("manifest by digest: status %d, upstream requests %v; want 200 and none", resp.StatusCode, e.up.counts)
	}
}

// TestServeStale is invariant 4 of docs/design.md: when the upstream fails, cached tags are served, and uncached content
// gets a clear error.
func TestServeStale(t *testing.T) {
	tests := []struct {
		name       string
		fault      fault
		wantStatus int
		wantCode   code
		retryAfter string
	}{
		{"down", func(w http.ResponseWriter, r *http.Request) bool { panic(http.ErrAbortHandler) }, 503, codeUnavailable, ""},
		{"503", func(w http.ResponseWriter, r *http.Request) bool { w.WriteHeader(503); return true }, 503, codeUnavailable, ""},
		{"500", func(w http.ResponseWriter, r *http.Request) bool { w.WriteHeader(500); return true }, 503, codeUnavailable, ""},
		{"429", func(w http.ResponseWriter, r *http.Request) bool {
			w.Header().Set("Retry-After", "120")
			w.WriteHeader(429)
			return true
		}, 429, codeTooManyRequests, "120"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			img := randomImage(t, 1)
			e.up.push(t, "team/s:v1", img)
			resp, _ := e.get("/v2/local/team/s/manifests/v1")
			if resp.StatusCode != 200 {
				t.Fatalf("warm-up: %d", resp.StatusCode)
			}
			e.clock.advance(time.Hour)
			e.up.setFault(tt.fault)
			resp, body := e.get("/v2/local/team/s/manifests/v1")
			if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != mustDigest(t, img).String() {
				t.Fatalf("stale tag: status %d: %s", resp.StatusCode, body)
			}
			lines := e.logs.lines()
			if got := lines[len(lines)-1]["cache"]; got != "stale" {
				t.Fatalf("pull log cache = %v, want stale", got)
			}
			resp, body = e.get("/v2/local/team/s/manifests/never-cached")
			if resp.StatusCode != tt.wantStatus || ociError(t, body).Code != tt.wantCode {
				t.Fatalf("uncached: status %d body %s, want %d %s", resp.StatusCode, body, tt.wantStatus, tt.wantCode)
			}
			if got := resp.Header.Get("Retry-After"); got != tt.retryAfter {
				t.Fatalf("Retry-After = %q, want %q", got, tt.retryAfter)
			}
		})
	}
}

// TestRestartServesFromCache is invariant 2 of docs/design.md's visible half: after a restart with the upstream gone,
// everything pulled before is still served.
func TestRestartServesFromCache(t *testing.T) {
	e := newEnv(t)
	img := randomImage(t, 3)
	e.up.push(t, "team/r:v1", img)
	if _, err := remote.Image(e.ref("team/r:v1"), e.remoteOpts()...); err != nil {
		t.Fatal(err)
	}
	pulled, err := remote.Image(e.ref("team/r:v1"), e.remoteOpts()...)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(pulled); err != nil {
		t.Fatal(err)
	}
	e.restart()
	e.up.srv.Close()
	e.clock.advance(time.Hour)
	got, err := remote.Image(e.ref("team/r:v1"), e.remoteOpts()...)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(got); err != nil {
		t.Fatalf("after restart with the upstream down: %v", err)
	}
	if mustDigest(t, got) != mustDigest(t, img) {
		t.Fatal("digest changed across restart")
	}
}

// TestNoCrossRepositoryLeak is invariant 6 of docs/design.md: a blob cached for repository A is served under B only after
// the upstream confirms B has it.
func TestNoCrossRepositoryLeak(t *testing.T) {
	e := newEnv(t)
	img := randomImage(t, 1)
	e.up.push(t, "team/a:v1", img)
	if _, err := remote.Image(e.ref("team/a:v1"), e.remoteOpts()...); err != nil {
		t.Fatal(err)
	}
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	resp, _ := e.get("/v2/local/team/a/blobs/" + ld.String())
	if resp.StatusCode != 200 {
		t.Fatalf("blob under its own repository: %d", resp.StatusCode)
	}
	// The upstream says team/b does not have it.
	e.up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasPrefix(r.URL.Path, "/v2/team/b/") {
			w.WriteHeader(http.StatusNotFound)
			return true
		}
		return false
	})
	e.up.resetCounts()
	resp, body := e.get("/v2/local/team/b/blobs/" + ld.String())
	if resp.StatusCode != 404 || ociError(t, body).Code != codeBlobUnknown {
		t.Fatalf("blob under another repository: status %d %s, want 404 BLOB_UNKNOWN", resp.StatusCode, body)
	}
	if e.up.count("HEAD blobs") != 1 {
		t.Fatalf("want one upstream confirmation, got %v", e.up.counts)
	}
	// When the upstream confirms, it is served and remembered.
	e.up.setFault(nil)
	resp, _ = e.get("/v2/local/team/c/blobs/" + ld.String())
	if resp.StatusCode != 200 {
		t.Fatalf("confirmed blob: %d", resp.StatusCode)
	}
	e.up.resetCounts()
	resp, _ = e.get("/v2/local/team/c/blobs/" + ld.String())
	if resp.StatusCode != 200 || e.up.count("HEAD blobs") != 0 {
		t.Fatalf("second pull under a confirmed repository: %d, %v", resp.StatusCode, e.up.counts)
	}
}

// TestBlobRanges serves ranges of a cached blob, and refuses bad ones with 416 and an OCI body.
func TestBlobRanges(t *testing.T) {
	e := newEnv(t)
	blob, d := layerBlob(t, 1000)
	e.up.pushBlob(t, "team/rg", blob, d)
	if err := e.cache.Link("local", "team/rg", d); err != nil {
		t.Fatal(err)
	}
	path := "/v2/local/team/rg/blobs/" + d.String()
	if resp, _ := e.get(path); resp.StatusCode != 200 {
		t.Fatalf("fill: %d", resp.StatusCode)
	}
	tests := []struct {
		rng        string
		wantStatus int
		want       []byte
		wantRange  string
	}{
		{"bytes=0-9", 206, blob[:10], "bytes 0-9/1000"},
		{"bytes=990-", 206, blob[990:], "bytes 990-999/1000"},
		{"bytes=-5", 206, blob[995:], "bytes 995-999/1000"},
		{"bytes=500-5000", 206, blob[500:], "bytes 500-999/1000"},
		{"bytes=1000-", 416, nil, "bytes */1000"},
		{"bytes=5-1", 416, nil, "bytes */1000"},
		{"bytes=abc", 416, nil, "bytes */1000"},
		{"lines=1-2", 416, nil, "bytes */1000"},
		{"", 200, blob, ""},
	}
	for _, tt := range tests {
		t.Run(tt.rng, func(t *testing.T) {
			resp, body := e.get(path, "Range", tt.rng)
			if resp.StatusCode != tt.wantStatus || resp.Header.Get("Content-Range") != tt.wantRange {
				t.Fatalf("status %d Content-Range %q, want %d %q", resp.StatusCode, resp.Header.Get("Content-Range"), tt.wantStatus, tt.wantRange)
			}
			if tt.wantStatus == 416 {
				ociError(t, body)
				return
			}
			if !bytes.Equal(body, tt.want) {
				t.Fatalf("body of %d bytes differs", len(body))
			}
		})
	}
}

// TestShutdownCancelsDetachedFills: a fill whose clients left keeps running until Shutdown's deadline, then is
// cancelled, leaving nothing on disk.
func TestShutdownCancelsDetachedFills(t *testing.T) {
	e := newEnv(t)
	blob, d := layerBlob(t, 1<<20)
	e.up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || routeKind(r.URL.Path) != "blobs" {
			return false
		}
		w.Header().Set("Content-Length", "1048576")
		_, _ = w.Write(blob[:1000])
		w.(http.Flusher).Flush()
		<-r.Context().Done() // never finishes
		return true
	})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.srv.URL+"/v2/local/team/hang/blobs/"+d.String(), nil)
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	resp.Body.Close()
	if got := e.counter(e.m.FillsInFlight); got != 1 {
		t.Fatalf("fills in flight = %v, want the detached fill still running", got)
	}
	sctx, scancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer scancel()
	if err := e.h.Shutdown(sctx); err == nil {
		t.Fatal("Shutdown returned nil although a fill outlived its deadline")
	}
	if got := e.counter(e.m.FillsInFlight); got != 0 {
		t.Fatalf("fills in flight after Shutdown = %v", got)
	}
	if content, temp := e.storedFiles(); len(content)+len(temp) != 0 {
		t.Fatalf("files left: %v %v", content, temp)
	}
}
