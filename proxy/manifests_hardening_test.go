package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullgate/pullgate/cache"
	"github.com/pullgate/pullgate/upstream"
)

// imageManifestWith is an OCI image manifest with the given config and extra top-level JSON members.
func imageManifestWith(config v1.Hash, configSize int, extra string) []byte {
	return []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[]%s}`,
		mediaOCIManifest, config, configSize, extra))
}

// hasLog reports whether a log line has the message prefix msg and every given attribute.
func hasLog(e *env, msg string, attrs map[string]string) bool {
	for _, l := range e.logs.lines() {
		if !strings.HasPrefix(fmt.Sprint(l["msg"]), msg) {
			continue
		}
		ok := true
		for k, v := range attrs {
			ok = ok && fmt.Sprint(l[k]) == v
		}
		if ok {
			return true
		}
	}
	return false
}

// TestManifestExtraFieldsDoNotLink: a tenant who can push to one repository of an upstream adds "blobs" naming a
// blob of a private repository to an image manifest. The registry never checks that field, so pullgate must not
// link it: the private blob, cached through its own repository, stays unknown under the tenant's repository.
func TestManifestExtraFieldsDoNotLink(t *testing.T) {
	e := newEnv(t)
	secret, sd := layerBlob(t, 4096)
	e.up.pushBlob(t, "private/app", secret, sd)
	config := []byte(`{}`)
	cd, _, _ := v1.SHA256(strings.NewReader(string(config)))
	e.up.pushBlob(t, "evil/app", config, cd)
	body := imageManifestWith(cd, len(config), fmt.Sprintf(`,"blobs":[{"mediaType":"application/octet-stream","digest":%q,"size":%d}]`, sd, len(secret)))
	e.up.putManifest(t, "evil/app", "v1", mediaOCIManifest, body)
	// A registry keeps repositories apart: the private blob is not in evil/app.
	e.up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasPrefix(r.URL.Path, "/v2/evil/app/blobs/"+sd.String()) {
			w.WriteHeader(http.StatusNotFound)
			return true
		}
		return false
	})

	if resp, b := e.get("/v2/local/evil/app/manifests/v1"); resp.StatusCode != 200 {
		t.Fatalf("tenant's manifest: %d %s", resp.StatusCode, b)
	}
	if resp, b := e.get("/v2/local/private/app/blobs/" + sd.String()); resp.StatusCode != 200 || string(b) != string(secret) {
		t.Fatalf("private blob under its own repository: %d", resp.StatusCode)
	}
	resp, b := e.get("/v2/local/evil/app/blobs/" + sd.String())
	if resp.StatusCode != 404 || ociError(t, b).Code != codeBlobUnknown {
		t.Fatalf("private blob under the tenant's repository: status %d %.200q, want 404 BLOB_UNKNOWN", resp.StatusCode, b)
	}
	if ok, err := e.cache.Linked("local", "evil/app", sd); err != nil || ok {
		t.Fatalf("private blob linked to the tenant's repository: %v %v", ok, err)
	}
	// What the type defines is linked, with the size the manifest declared.
	if size, ok, err := e.cache.LinkedSize("local", "evil/app", cd); err != nil || !ok || size != int64(len(config)) {
		t.Fatalf("config link: size %d linked %v err %v, want %d", size, ok, err, len(config))
	}
}

// TestManifestInvalidShapeRefused: a manifest whose fields contradict its type is neither served nor cached nor
// linked; the client gets 502 MANIFEST_INVALID naming the upstream, and the answer is logged and counted.
func TestManifestInvalidShapeRefused(t *testing.T) {
	d := "sha256:" + strings.Repeat("b", 64)
	tests := []struct {
		name, mediaType, body string
	}{
		{"index with blobs", mediaOCIIndex, `{"schemaVersion":2,"mediaType":"` + mediaOCIIndex + `","manifests":[],"blobs":[{"digest":"` + d + `","size":1}]}`},
		{"index with layers", mediaDockerList, `{"schemaVersion":2,"mediaType":"` + mediaDockerList + `","manifests":[],"layers":[{"digest":"` + d + `","size":1}]}`},
		{"image with manifests", mediaOCIManifest, `{"schemaVersion":2,"mediaType":"` + mediaOCIManifest + `","config":{"digest":"` + d + `","size":1},"layers":[],"manifests":[{"digest":"` + d + `","size":1}]}`},
		{"docker v2 without config", mediaDockerManifest, `{"schemaVersion":2,"mediaType":"` + mediaDockerManifest + `","layers":[{"digest":"` + d + `","size":1}]}`},
		{"unknown type", "application/vnd.example+json", `{"schemaVersion":2,"mediaType":"application/vnd.example+json","layers":[{"digest":"` + d + `","size":1}]}`},
		{"no type, no shape", "application/json", `{"schemaVersion":2,"blobs":[{"digest":"` + d + `","size":1}]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			md := e.up.putManifest(t, "team/bad", "v1", tt.mediaType, []byte(tt.body))
			for _, ref := range []string{"v1", md.String()} {
				resp, b := e.get("/v2/local/team/bad/manifests/" + ref)
				if resp.StatusCode != http.StatusBadGateway {
					t.Fatalf("%s: status %d %s, want 502", ref, resp.StatusCode, b)
				}
				if oe := ociError(t, b); oe.Code != codeManifestInvalid || !strings.Contains(oe.Message, "upstream local") {
					t.Fatalf("%s: %s, want MANIFEST_INVALID naming upstream local", ref, b)
				}
			}
			if _, err := e.cache.Stat(md); !errors.Is(err, cache.ErrNotFound) {
				t.Fatalf("invalid manifest stored: %v", err)
			}
			for _, dd := range []string{d, md.String()} {
				h, _ := v1.NewHash(dd)
				if ok, _ := e.cache.Linked("local", "team/bad", h); ok {
					t.Fatalf("%s linked", dd)
				}
			}
			if _, err := e.cache.Tag("local", "team/bad", "v1"); !errors.Is(err, cache.ErrNotFound) {
				t.Fatalf("tag of an invalid manifest recorded: %v", err)
			}
			if got := e.counter(e.m.UpstreamInvalidAnswers.WithLabelValues("local")); got != 2 {
				t.Fatalf("invalid answers = %v, want 2", got)
			}
			if !hasLog(e, "upstream sent an unusable manifest answer", map[string]string{"upstream": "local", "level": "WARN"}) {
				t.Fatal("no warning naming the upstream")
			}
		})
	}
}

// TestParseManifestShapes: the type comes from the manifest itself, and only what the type defines is linked.
func TestParseManifestShapes(t *testing.T) {
	a, b, c := "sha256:"+strings.Repeat("a", 64), "sha256:"+strings.Repeat("b", 64), "sha256:"+strings.Repeat("c", 64)
	desc := func(d string, size int) string { return fmt.Sprintf(`{"digest":%q,"size":%d}`, d, size) }
	tests := []struct {
		name     string
		body     string
		wantType string // empty: invalid
		wantRefs []string
	}{
		{"oci image", `{"schemaVersion":2,"mediaType":"` + mediaOCIManifest + `","config":` + desc(a, 2) + `,"layers":[` + desc(b, 3) + `],"subject":` + desc(c, 4) + `}`, mediaOCIManifest, []string{a, b, c}},
		{"oci image ignores blobs", `{"schemaVersion":2,"mediaType":"` + mediaOCIManifest + `","config":` + desc(a, 2) + `,"layers":[],"blobs":[` + desc(c, 4) + `]}`, mediaOCIManifest, []string{a}},
		{"oci image ignores fsLayers-like keys in annotations", `{"schemaVersion":2,"mediaType":"` + mediaOCIManifest + `","config":` + desc(a, 2) + `,"annotations":{"fsLayers":"` + b + `"}}`, mediaOCIManifest, []string{a}},
		{"docker image", `{"schemaVersion":2,"mediaType":"` + mediaDockerManifest + `","config":` + desc(a, 2) + `,"layers":[` + desc(b, 3) + `]}`, mediaDockerManifest, []string{a, b}},
		{"image by shape", `{"schemaVersion":2,"config":` + desc(a, 2) + `,"layers":[` + desc(b, 3) + `]}`, mediaOCIManifest, []string{a, b}},
		{"oci index", `{"schemaVersion":2,"mediaType":"` + mediaOCIIndex + `","manifests":[` + desc(a, 2) + `,` + desc(a, 2) + `],"subject":` + desc(b, 3) + `}`, mediaOCIIndex, []string{a, b}},
		{"docker list", `{"schemaVersion":2,"mediaType":"` + mediaDockerList + `","manifests":[` + desc(a, 2) + `]}`, mediaDockerList, []string{a}},
		{"index by shape", `{"schemaVersion":2,"manifests":[` + desc(a, 2) + `]}`, mediaOCIIndex, []string{a}},
		{"artifact", `{"mediaType":"` + mediaOCIArtifact + `","blobs":[` + desc(a, 2) + `],"subject":` + desc(b, 3) + `}`, mediaOCIArtifact, []string{a, b}},
		{"schema1", `{"schemaVersion":1,"fsLayers":[{"blobSum":"` + a + `"}],"layers":null}`, mediaDockerV1, []string{a}},
		{"schema1 signed", `{"schemaVersion":1,"fsLayers":[{"blobSum":"` + a + `"}],"signatures":[{}]}`, mediaDockerV1Signed, []string{a}},
		{"invalid digests skipped", `{"schemaVersion":2,"mediaType":"` + mediaOCIManifest + `","config":{"digest":"md5:x","size":1},"layers":[` + desc(a, 1) + `]}`, mediaOCIManifest, []string{a}},
		{"index with config", `{"schemaVersion":2,"mediaType":"` + mediaOCIIndex + `","manifests":[],"config":` + desc(a, 2) + `}`, "", nil},
		{"index with blobs", `{"schemaVersion":2,"mediaType":"` + mediaOCIIndex + `","manifests":[],"blobs":[` + desc(a, 2) + `]}`, "", nil},
		{"index without manifests", `{"schemaVersion":2,"mediaType":"` + mediaOCIIndex + `"}`, "", nil},
		{"image with manifests", `{"schemaVersion":2,"mediaType":"` + mediaOCIManifest + `","config":` + desc(a, 2) + `,"manifests":[]}`, "", nil},
		{"docker without config", `{"schemaVersion":2,"mediaType":"` + mediaDockerManifest + `","layers":[]}`, "", nil},
		{"both shapes", `{"schemaVersion":2,"config":` + desc(a, 2) + `,"manifests":[]}`, "", nil},
		{"schema1 with layers", `{"schemaVersion":1,"fsLayers":[],"layers":[` + desc(a, 2) + `]}`, "", nil},
		{"schema1 typed as oci", `{"schemaVersion":1,"mediaType":"` + mediaOCIManifest + `","fsLayers":[]}`, "", nil},
		{"unknown type", `{"schemaVersion":2,"mediaType":"text/html","config":` + desc(a, 2) + `}`, "", nil},
		{"wrong schemaVersion", `{"schemaVersion":3,"mediaType":"` + mediaOCIManifest + `","config":` + desc(a, 2) + `}`, "", nil},
		{"two sizes for one digest", `{"schemaVersion":2,"mediaType":"` + mediaOCIManifest + `","config":` + desc(a, 2) + `,"layers":[` + desc(a, 3) + `]}`, "", nil},
		{"negative size", `{"schemaVersion":2,"mediaType":"` + mediaOCIManifest + `","config":` + desc(a, -1) + `}`, "", nil},
		{"layers twice in another case", `{"schemaVersion":2,"mediaType":"` + mediaOCIManifest + `","config":` + desc(a, 2) + `,"layers":[],"LAYERS":[` + desc(c, 4) + `]}`, "", nil},
		{"digest twice in a descriptor", `{"schemaVersion":2,"mediaType":"` + mediaOCIManifest + `","config":{"digest":"` + a + `","size":2,"Digest":"` + c + `"}}`, "", nil},
		{"mediaType twice", `{"schemaVersion":2,"mediaType":"` + mediaOCIIndex + `","manifests":[],"mediaType":"` + mediaOCIIndex + `"}`, "", nil},
		{"case variants of unread keys are fine", `{"schemaVersion":2,"mediaType":"` + mediaOCIManifest + `","config":` + desc(a, 2) + `,"annotations":{"Digest":"x","digest":"y"}}`, mediaOCIManifest, []string{a}},
		{"html", `<html>portal</html>`, "", nil},
		{"null", `null`, "", nil},
		{"array", `[]`, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := parseManifest([]byte(tt.body))
			if tt.wantType == "" {
				if !errors.Is(err, errInvalidManifest) {
					t.Fatalf("parsed as %q, %v; want errInvalidManifest", p.mediaType, err)
				}
				return
			}
			if err != nil || p.mediaType != tt.wantType {
				t.Fatalf("type %q, %v; want %q", p.mediaType, err, tt.wantType)
			}
			var got []string
			for _, r := range p.refs {
				got = append(got, r.digest.String())
			}
			if strings.Join(got, ",") != strings.Join(tt.wantRefs, ",") {
				t.Fatalf("links %v, want %v", got, tt.wantRefs)
			}
		})
	}
}

// withUpstream adds a second fake upstream called name to the options.
func withUpstream(t *testing.T, name string, up *fakeUpstream) func(*Options) {
	return func(o *Options) {
		client, err := upstream.New(upstream.Options{Name: name, URL: up.srv.URL, Transport: up.srv.Client().Transport,
			Timeout: 5 * time.Second, FailureThreshold: 1000})
		if err != nil {
			t.Fatal(err)
		}
		o.Upstreams = append(o.Upstreams, Upstream{Name: name, Fetcher: client})
	}
}

// TestManifestMediaTypeFromContent: an upstream that labels a real manifest's bytes with another Content-Type
// does not decide the type that manifest is served with, neither to its own clients nor to another upstream's.
func TestManifestMediaTypeFromContent(t *testing.T) {
	for _, ct := range []string{"text/html", mediaOCIIndex} {
		t.Run(ct, func(t *testing.T) {
			other := newFakeUpstream(t)
			e := newEnv(t, withUpstream(t, "other", other))
			img := randomImage(t, 1)
			e.up.push(t, "team/app:v1", img)
			other.push(t, "team/app:v1", img)
			d, raw := mustDigest(t, img), mustRaw(t, img)
			want, err := img.MediaType()
			if err != nil {
				t.Fatal(err)
			}
			other.setFault(func(w http.ResponseWriter, r *http.Request) bool {
				if routeKind(r.URL.Path) != "manifests" {
					return false
				}
				w.Header().Set("Content-Type", ct)
				w.Header().Set("Docker-Content-Digest", d.String())
				_, _ = w.Write(raw)
				return true
			})
			for _, path := range []string{"/v2/other/team/app/manifests/" + d.String(), "/v2/local/team/app/manifests/" + d.String(), "/v2/other/team/app/manifests/v1"} {
				resp, b := e.get(path)
				if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != string(want) {
					t.Fatalf("%s: status %d Content-Type %q, want %q: %s", path, resp.StatusCode, resp.Header.Get("Content-Type"), want, b)
				}
			}
			if obj, err := e.cache.Stat(d); err != nil || obj.MediaType != string(want) {
				t.Fatalf("stored as %q (%v), want %q", obj.MediaType, err, want)
			}
		})
	}
}

// TestPoisonedStoredMediaTypeServedFromContent: a manifest stored under a type that is not a manifest type
// (labelled from an upstream's Content-Type by an older pullgate) is served with the type of its content.
func TestPoisonedStoredMediaTypeServedFromContent(t *testing.T) {
	e := newEnv(t)
	img := randomImage(t, 1)
	d, raw := mustDigest(t, img), mustRaw(t, img)
	want, _ := img.MediaType()
	w, err := e.cache.NewWriter(d, "text/html", int64(len(raw)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(raw); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := e.cache.Link("local", "team/app", d); err != nil {
		t.Fatal(err)
	}
	if err := e.cache.SetTag("local", "team/app", "v1", cache.TagEntry{Digest: d, MediaType: "text/html", Size: int64(len(raw)), Fetched: e.clock.Now()}); err != nil {
		t.Fatal(err)
	}
	e.up.resetCounts()
	for _, ref := range []string{"v1", d.String()} {
		resp, b := e.get("/v2/local/team/app/manifests/" + ref)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != string(want) || string(b) != string(raw) {
			t.Fatalf("%s: status %d Content-Type %q, want %q", ref, resp.StatusCode, resp.Header.Get("Content-Type"), want)
		}
	}
	if n := e.up.count("GET manifests") + e.up.count("HEAD manifests"); n != 0 {
		t.Fatalf("served from the cache with %d upstream requests", n)
	}
}

func mustRaw(t testing.TB, img v1.Image) []byte {
	t.Helper()
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestImmutableTagPinnedDuringRefetch: while an immutable tag is re-fetched (the upstream's HEAD named no digest,
// and the tag was re-pointed upstream), the index never points at the new digest, not even when the client that
// started the fetch went away before it ended: every client, during and after, gets the pinned manifest.
func TestImmutableTagPinnedDuringRefetch(t *testing.T) {
	pinned, err := NewPolicy(nil, []string{"v*"})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(o *Options) { o.Policy = pinned })
	img1, img2 := randomImage(t, 1), randomImage(t, 1)
	d1, d2 := mustDigest(t, img1), mustDigest(t, img2)
	e.up.push(t, "team/pin:v1", img1)
	if r, b := e.get("/v2/local/team/pin/manifests/v1"); r.StatusCode != 200 {
		t.Fatalf("warm-up: %d %s", r.StatusCode, b)
	}
	e.up.push(t, "team/pin:v1", img2)
	e.clock.advance(time.Hour)

	// hold makes the upstream answer HEADs without a digest (pullgate must GET) and hold the first GET until
	// release is closed.
	hold := func() (getStarted, release chan struct{}) {
		getStarted, release = make(chan struct{}), make(chan struct{})
		var once sync.Once
		t.Cleanup(func() {
			select {
			case <-release:
			default:
				close(release)
			}
		})
		e.up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
			if routeKind(r.URL.Path) != "manifests" {
				return false
			}
			if r.Method == http.MethodHead {
				w.WriteHeader(http.StatusOK)
				return true
			}
			once.Do(func() { close(getStarted) })
			<-release
			return false
		})
		return getStarted, release
	}
	waitStarted := func(c chan struct{}) {
		t.Helper()
		select {
		case <-c:
		case <-time.After(10 * time.Second):
			t.Fatal("the upstream GET never started")
		}
	}
	// fetchEnded waits for the re-fetch to end: the tag's entry is then confirmed at the current time.
	fetchEnded := func() {
		t.Helper()
		waitFor(t, "the re-fetch to end", func() bool {
			te, err := e.cache.Tag("local", "team/pin", "v1")
			return err == nil && te.Fetched.Equal(e.clock.Now())
		})
		if te, _ := e.cache.Tag("local", "team/pin", "v1"); te.Digest != d1 {
			t.Fatalf("index points the immutable tag at %s, want %s", te.Digest, d1)
		}
		resp, _ := e.get("/v2/local/team/pin/manifests/v1")
		if got := resp.Header.Get("Docker-Content-Digest"); resp.StatusCode != 200 || got != d1.String() {
			t.Fatalf("after the re-fetch: status %d digest %s, want %s", resp.StatusCode, got, d1)
		}
	}

	// Client A starts the re-fetch and goes away while the upstream GET is held: nobody is left to restore a pin
	// after the fetch, so the fetch itself must keep it.
	getStarted, release := hold()
	ctx, cancel := context.WithCancel(context.Background())
	aDone := make(chan struct{})
	go func() {
		defer close(aDone)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.srv.URL+"/v2/local/team/pin/manifests/v1", nil)
		if resp, err := e.srv.Client().Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	waitStarted(getStarted)
	cancel()
	<-aDone
	waitFor(t, "client A's pull log line", func() bool {
		n := 0
		for _, l := range e.logs.lines() {
			if l["msg"] == "pull" && l["reference"] == "v1" {
				n++
			}
		}
		return n == 2
	})
	close(release)
	fetchEnded()

	// Clients that come during a re-fetch all get the pinned manifest.
	e.clock.advance(time.Hour)
	getStarted, release = hold()
	type result struct {
		status int
		digest string
	}
	results := make(chan result, 4)
	for range cap(results) {
		go func() {
			resp, err := e.srv.Client().Get(e.srv.URL + "/v2/local/team/pin/manifests/v1")
			if err != nil {
				results <- result{status: -1}
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			results <- result{resp.StatusCode, resp.Header.Get("Docker-Content-Digest")}
		}()
	}
	waitStarted(getStarted)
	close(release)
	for range cap(results) {
		if r := <-results; r.status != 200 || r.digest != d1.String() {
			t.Errorf("client during the re-fetch: status %d digest %s, want 200 %s", r.status, r.digest, d1)
		}
	}
	fetchEnded()
	if got := e.counter(e.m.TagMutations.WithLabelValues("local")); got < 1 {
		t.Fatalf("tag mutations = %v, want at least 1", got)
	}
	if !hasLog(e, "tag_mutation", map[string]string{"pinned": d1.String(), "upstream_digest": d2.String()}) {
		t.Fatal("no tag_mutation log line with both digests")
	}
	if !hasLog(e, "pull", map[string]string{"event": "tag_mutation", "digest": d1.String()}) {
		t.Fatal("no pull log line with event tag_mutation")
	}
}

// TestInvalidAnswerServesStale: an upstream answering 200 with something that is not the manifest (a captive
// portal's page, JSON that is no manifest, bytes that do not match the digest) during revalidation does not
// defeat serve-stale; it is logged and counted. Content never cached still fails with a 502 naming the upstream.
func TestInvalidAnswerServesStale(t *testing.T) {
	html := func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "text/html")
		_, _ = io.WriteString(w, "<html>Please log in to the hotel Wi-Fi</html>")
	}
	tests := []struct {
		name     string
		head     func(w http.ResponseWriter) // nil: the registry answers
		get      func(w http.ResponseWriter)
		wantCode code
	}{
		{"portal on HEAD and GET", html, html, codeManifestInvalid},
		{"HEAD without digest, GET not a manifest", func(w http.ResponseWriter) { w.WriteHeader(200) }, func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"status":"ok"}`)
		}, codeManifestInvalid},
		{"HEAD with an unusable digest, GET portal", func(w http.ResponseWriter) {
			w.Header().Set("Docker-Content-Digest", "sha256:nonsense")
			w.WriteHeader(200)
		}, func(w http.ResponseWriter) {
			w.Header().Set("Docker-Content-Digest", "sha256:nonsense")
			html(w)
		}, codeDigestInvalid},
		{"GET with bytes that do not match the digest", html, func(w http.ResponseWriter) {
			w.Header().Set("Docker-Content-Digest", "sha256:"+strings.Repeat("0", 64))
			w.Header().Set("Content-Type", mediaOCIManifest)
			_, _ = w.Write(imageManifestWith(v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("1", 64)}, 2, ""))
		}, codeDigestInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			img := randomImage(t, 1)
			e.up.push(t, "team/s:v1", img)
			if resp, _ := e.get("/v2/local/team/s/manifests/v1"); resp.StatusCode != 200 {
				t.Fatalf("warm-up: %d", resp.StatusCode)
			}
			e.clock.advance(time.Hour)
			e.up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
				if routeKind(r.URL.Path) != "manifests" {
					return false
				}
				if r.Method == http.MethodHead {
					tt.head(w)
				} else {
					tt.get(w)
				}
				return true
			})
			resp, b := e.get("/v2/local/team/s/manifests/v1")
			if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != mustDigest(t, img).String() {
				t.Fatalf("stale tag: status %d %s", resp.StatusCode, b)
			}
			lines := e.logs.lines()
			if l := lines[len(lines)-1]; l["cache"] != "stale" || l["event"] != "upstream_invalid_answer" {
				t.Fatalf("pull log cache=%v event=%v, want stale and upstream_invalid_answer", l["cache"], l["event"])
			}
			if got := e.counter(e.m.UpstreamInvalidAnswers.WithLabelValues("local")); got != 1 {
				t.Fatalf("invalid answers = %v, want 1", got)
			}
			if !hasLog(e, "upstream sent an unusable manifest answer", map[string]string{"upstream": "local", "level": "WARN"}) {
				t.Fatal("no warning naming the upstream")
			}
			resp, b = e.get("/v2/local/team/s/manifests/never-cached")
			if oe := ociError(t, b); resp.StatusCode != http.StatusBadGateway || oe.Code != tt.wantCode || !strings.Contains(oe.Message, "upstream local") {
				t.Fatalf("uncached: status %d %s, want 502 %s naming upstream local", resp.StatusCode, b, tt.wantCode)
			}
		})
	}
}
