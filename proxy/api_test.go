package proxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullgate/pullgate/upstream"
)

// putManifest stores raw manifest bytes in the upstream under ref, bypassing faults.
func (u *fakeUpstream) putManifest(t *testing.T, repo, ref, mediaType string, body []byte) v1.Hash {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPut, u.srv.URL+"/v2/"+repo+"/manifests/"+ref, bytes.NewReader(body))
	req.Header.Set("Content-Type", mediaType)
	resp, err := u.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT manifest %s:%s: %s", repo, ref, resp.Status)
	}
	d, _, _ := v1.SHA256(bytes.NewReader(body))
	return d
}

func TestTagsListPagination(t *testing.T) {
	e := newEnv(t)
	img := randomImage(t, 1)
	for _, tag := range []string{"b", "a", "d", "c", "e"} {
		e.up.push(t, "team/t:"+tag, img)
	}
	tests := []struct {
		query    string
		want     []string
		wantLink string
	}{
		{"", []string{"a", "b", "c", "d", "e"}, ""},
		{"?n=2", []string{"a", "b"}, `</v2/local/team/t/tags/list?last=b&n=2>; rel="next"`},
		{"?n=2&last=b", []string{"c", "d"}, `</v2/local/team/t/tags/list?last=d&n=2>; rel="next"`},
		{"?n=2&last=d", []string{"e"}, ""},
		{"?last=bb", []string{"c", "d", "e"}, ""},
		{"?n=0", []string{}, ""},
		{"?n=5", []string{"a", "b", "c", "d", "e"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			resp, body := e.get("/v2/local/team/t/tags/list" + tt.query)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			var tl tagList
			if err := json.Unmarshal(body, &tl); err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(tl.Tags) != fmt.Sprint(tt.want) || tl.Tags == nil {
				t.Fatalf("tags %v, want %v", tl.Tags, tt.want)
			}
			if got := resp.Header.Get("Link"); got != tt.wantLink {
				t.Fatalf("Link %q, want %q", got, tt.wantLink)
			}
		})
	}
	// With ns, the next link keeps it.
	resp, _ := e.get("/v2/team/t/tags/list?n=1&ns=local")
	if got := resp.Header.Get("Link"); !strings.Contains(got, "ns=local") {
		t.Fatalf("Link %q lost ns", got)
	}
	if resp.Header.Get("OCI-Namespace") != "local" {
		t.Fatalf("OCI-Namespace %q", resp.Header.Get("OCI-Namespace"))
	}
	// Upstream down: the tags pullgate has cached are served.
	if r, _ := e.get("/v2/local/team/t/manifests/c"); r.StatusCode != 200 {
		t.Fatal(r.Status)
	}
	e.up.setFault(func(w http.ResponseWriter, r *http.Request) bool { w.WriteHeader(503); return true })
	e.clock.advance(e.opts.TagTTL) // the tag list read above is shared for TagTTL; after it, the upstream is asked
	resp, body := e.get("/v2/local/team/t/tags/list")
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"tags":["c"]`) {
		t.Fatalf("stale tags: %d %s", resp.StatusCode, body)
	}
}

// TestTagsListFollowsUpstreamLinks reads an upstream that paginates by itself.
func TestTagsListFollowsUpstreamLinks(t *testing.T) {
	e := newEnv(t)
	e.up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.HasSuffix(r.URL.Path, "/tags/list") {
			return false
		}
		if r.URL.Query().Get("last") == "" {
			w.Header().Set("Link", `</v2/team/p/tags/list?n=2&last=b>; rel="next"`)
			fmt.Fprint(w, `{"name":"team/p","tags":["a","b"]}`)
		} else {
			fmt.Fprint(w, `{"name":"team/p","tags":["c"]}`)
		}
		return true
	})
	resp, body := e.get("/v2/local/team/p/tags/list")
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"tags":["a","b","c"]`) {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
}

const sbomType = "application/vnd.example.sbom.v1"

// TestReferrersFallbackTag builds the referrers index from the sha256-<hex> tag when the upstream has no
// referrers API, filters by artifactType, and answers an empty index when there is nothing.
func TestReferrersFallbackTag(t *testing.T) {
	e := newEnv(t)
	img := randomImage(t, 1)
	e.up.push(t, "team/ref:v1", img)
	subject := mustDigest(t, img)
	// The referrers: two small images pushed to the repository, listed with their artifact types.
	var descs []string
	for i, at := range []string{sbomType, "application/vnd.example.sig"} {
		ref := randomImage(t, 1)
		e.up.push(t, fmt.Sprintf("team/ref:art%d", i), ref)
		raw, _ := ref.RawManifest()
		mt, _ := ref.MediaType()
		descs = append(descs, fmt.Sprintf(`{"mediaType":%q,"digest":%q,"size":%d,"artifactType":%q}`, mt, mustDigest(t, ref), len(raw), at))
	}
	idx := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` + strings.Join(descs, ",") + `]}`
	e.up.putManifest(t, "team/ref", "sha256-"+subject.Hex, "application/vnd.oci.image.index.v1+json", []byte(idx))

	tests := []struct {
		name, query string
		wantN       int
		wantFilter  bool
	}{
		{"all", "", 2, false},
		{"filtered", "?artifactType=" + sbomType, 1, true},
		{"filter matching nothing", "?artifactType=application/none", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := e.get("/v2/local/team/ref/referrers/" + subject.String() + tt.query)
			checkReferrers(t, resp, body, tt.wantN, tt.wantFilter)
		})
	}
	resp, body := e.get("/v2/local/team/ref/referrers/sha256:" + strings.Repeat("3", 64))
	checkReferrers(t, resp, body, 0, false)
}

// TestReferrersAPI passes through an upstream's referrers API.
func TestReferrersAPI(t *testing.T) {
	e := newEnvWithRegistry(t, []registry.Option{registry.WithReferrersSupport(true)})
	img := randomImage(t, 1)
	e.up.push(t, "team/api:v1", img)
	subject := mustDigest(t, img)
	size, _ := img.Size()
	art := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":%q,`+
		`"config":{"mediaType":"`+sbomType+`","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},`+
		`"layers":[],"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":%d}}`, sbomType, subject.String(), size)
	e.up.pushBlob(t, "team/api", []byte("{}"), v1.Hash{Algorithm: "sha256", Hex: "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"})
	artDigest := e.up.putManifest(t, "team/api", "sbom", "application/vnd.oci.image.manifest.v1+json", []byte(art))

	resp, body := e.get("/v2/local/team/api/referrers/" + subject.String())
	checkReferrers(t, resp, body, 1, false)
	if !strings.Contains(string(body), artDigest.String()) || !strings.Contains(string(body), sbomType) {
		t.Fatalf("referrers index lacks the artifact: %s", body)
	}
	resp, body = e.get("/v2/local/team/api/referrers/" + subject.String() + "?artifactType=application/other")
	checkReferrers(t, resp, body, 0, true)
	if e.up.count("GET referrers") != 2 {
		t.Fatalf("upstream referrers requests %v", e.up.counts)
	}
}

func checkReferrers(t *testing.T, resp *http.Response, body []byte, wantN int, wantFilter bool) {
	t.Helper()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != indexMediaType {
		t.Fatalf("status %d type %q: %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	var idx referrersIndex
	if err := json.Unmarshal(body, &idx); err != nil || idx.SchemaVersion != 2 || idx.MediaType != indexMediaType || idx.Manifests == nil {
		t.Fatalf("not an OCI index: %s (%v)", body, err)
	}
	if len(idx.Manifests) != wantN {
		t.Fatalf("%d referrers, want %d: %s", len(idx.Manifests), wantN, body)
	}
	if got := resp.Header.Get("OCI-Filters-Applied") == "artifactType"; got != wantFilter {
		t.Fatalf("OCI-Filters-Applied %q", resp.Header.Get("OCI-Filters-Applied"))
	}
}

func TestImmutableTagKeepsPinnedDigest(t *testing.T) {
	pinned, err := NewPolicy(nil, []string{"v*"})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(o *Options) { o.Policy = pinned })
	img1, img2 := randomImage(t, 1), randomImage(t, 1)
	e.up.push(t, "team/pin:v1", img1)
	e.up.push(t, "team/pin:latest", img1)
	for _, tag := range []string{"v1", "latest"} {
		if r, _ := e.get("/v2/local/team/pin/manifests/" + tag); r.StatusCode != 200 {
			t.Fatal(r.Status)
		}
	}
	// An attacker re-points both tags upstream.
	e.up.push(t, "team/pin:v1", img2)
	e.up.push(t, "team/pin:latest", img2)
	e.clock.advance(time.Hour)

	resp, _ := e.get("/v2/local/team/pin/manifests/v1")
	if got := resp.Header.Get("Docker-Content-Digest"); got != mustDigest(t, img1).String() {
		t.Fatalf("immutable tag re-pointed to %s", got)
	}
	if got := e.counter(e.m.TagMutations.WithLabelValues("local")); got != 1 {
		t.Fatalf("tag mutations = %v, want 1", got)
	}
	lines := e.logs.lines()
	found := false
	for _, l := range lines {
		if strings.HasPrefix(fmt.Sprint(l["msg"]), "tag_mutation") && l["pinned"] == mustDigest(t, img1).String() && l["upstream_digest"] == mustDigest(t, img2).String() {
			found = true
		}
	}
	if !found {
		t.Fatal("no tag_mutation log line with both digests")
	}
	resp, _ = e.get("/v2/local/team/pin/manifests/latest")
	if got := resp.Header.Get("Docker-Content-Digest"); got != mustDigest(t, img2).String() {
		t.Fatalf("mutable tag not followed: %s", got)
	}
}

func TestAllowList(t *testing.T) {
	p, err := NewPolicy([]string{"local/library/*", "local/myorg/**"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(o *Options) { o.Policy = p })
	img := randomImage(t, 1)
	for _, r := range []string{"library/ok:v1", "myorg/deep/er:v1", "other/no:v1", "library/nested/no:v1"} {
		e.up.push(t, r, img)
	}
	e.up.resetCounts()
	tests := []struct {
		path string
		want int
	}{
		{"/v2/local/library/ok/manifests/v1", 200},
		{"/v2/local/myorg/deep/er/manifests/v1", 200},
		{"/v2/local/other/no/manifests/v1", 403},
		{"/v2/local/library/nested/no/manifests/v1", 403},
		{"/v2/local/other/no/blobs/" + mustDigest(t, img).String(), 403},
		{"/v2/local/other/no/tags/list", 403},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			before := e.up.count("GET manifests") + e.up.count("GET tags") + e.up.count("GET blobs") + e.up.count("HEAD blobs")
			resp, body := e.get(tt.path)
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.want, body)
			}
			if tt.want == 403 {
				if ociError(t, body).Code != codeDenied {
					t.Fatalf("want DENIED: %s", body)
				}
				if after := e.up.count("GET manifests") + e.up.count("GET tags") + e.up.count("GET blobs") + e.up.count("HEAD blobs"); after != before {
					t.Fatal("a denied request reached the upstream")
				}
			}
		})
	}
	if got := e.counter(e.m.PolicyDenials.WithLabelValues("local")); got != 4 {
		t.Fatalf("policy denials = %v, want 4", got)
	}
}

func TestNegativeCache(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.NegativeTTL = 30 * time.Second })
	for range 3 {
		resp, body := e.get("/v2/local/team/none/manifests/v9")
		if resp.StatusCode != 404 || ociError(t, body).Code != codeManifestUnknown {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
	}
	if n := e.up.count("GET manifests"); n != 1 {
		t.Fatalf("upstream asked %d times for a missing manifest within the negative TTL, want 1", n)
	}
	e.clock.advance(31 * time.Second)
	e.up.push(t, "team/none:v9", randomImage(t, 1))
	if resp, _ := e.get("/v2/local/team/none/manifests/v9"); resp.StatusCode != 200 {
		t.Fatalf("after the negative TTL: %d", resp.StatusCode)
	}
}

func TestPullLogLine(t *testing.T) {
	e := newEnv(t)
	img := randomImage(t, 1)
	e.up.push(t, "team/log:v1", img)
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+"/v2/team/log/manifests/v1?ns=local", nil)
	req.Header.Set("User-Agent", "containerd/test")
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	lines := e.logs.lines()
	l := lines[len(lines)-1]
	want := map[string]any{
		"msg": "pull", "method": "GET", "upstream": "local", "repository": "team/log", "reference": "v1",
		"digest": mustDigest(t, img).String(), "status": float64(200), "cache": "miss", "user_agent": "containerd/test",
	}
	for k, v := range want {
		if l[k] != v {
			t.Errorf("log %s = %v, want %v", k, l[k], v)
		}
	}
	for _, k := range []string{"time", "remote", "media_type", "bytes", "duration_ms"} {
		if _, ok := l[k]; !ok {
			t.Errorf("log line lacks %s: %v", k, l)
		}
	}
	if resp.Header.Get("OCI-Namespace") != "local" || resp.Header.Get("Content-Length") == "" {
		t.Fatalf("headers %v", resp.Header)
	}
	head := e.do(http.MethodHead, "/v2/local/team/log/manifests/v1")
	head.Body.Close()
	if head.ContentLength <= 0 || head.Header.Get("Docker-Content-Digest") != mustDigest(t, img).String() {
		t.Fatalf("HEAD: Content-Length %d, headers %v", head.ContentLength, head.Header)
	}
}

func TestPushIsUnsupported(t *testing.T) {
	e := newEnv(t)
	for _, m := range []string{http.MethodPut, http.MethodPost, http.MethodPatch, http.MethodDelete} {
		resp := e.do(m, "/v2/local/team/x/manifests/v1")
		var body bytes.Buffer
		_, _ = body.ReadFrom(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 405 || ociError(t, body.Bytes()).Code != codeUnsupported {
			t.Fatalf("%s: %d %s", m, resp.StatusCode, body.String())
		}
	}
}

// TestOfflineServesCacheOnly: an offline upstream is never contacted; cached content is served, and anything
// else is MANIFEST_UNKNOWN or BLOB_UNKNOWN saying the upstream is offline.
func TestOfflineServesCacheOnly(t *testing.T) {
	e := newEnv(t)
	img := randomImage(t, 2)
	e.up.push(t, "team/air:v1", img)
	if r, _ := e.get("/v2/local/team/air/manifests/v1"); r.StatusCode != 200 {
		t.Fatal(r.Status)
	}
	layers, _ := img.Layers()
	cached, _ := layers[0].Digest()
	if r, _ := e.get("/v2/local/team/air/blobs/" + cached.String()); r.StatusCode != 200 {
		t.Fatal(r.Status)
	}
	offline, err := upstream.New(upstream.Options{Name: "local", URL: e.up.srv.URL, Offline: true})
	if err != nil {
		t.Fatal(err)
	}
	e.opts.Upstreams[0].Fetcher = offline
	e.restart()
	e.up.resetCounts()
	e.clock.advance(24 * time.Hour)

	tests := []struct {
		path     string
		want     int
		wantCode code
	}{
		{"/v2/local/team/air/manifests/v1", 200, ""},
		{"/v2/local/team/air/manifests/" + mustDigest(t, img).String(), 200, ""},
		{"/v2/local/team/air/blobs/" + cached.String(), 200, ""},
		{"/v2/local/team/air/manifests/v2", 404, codeManifestUnknown},
		{"/v2/local/team/air/blobs/sha256:" + strings.Repeat("9", 64), 404, codeBlobUnknown},
		{"/v2/local/team/air/tags/list", 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			resp, body := e.get(tt.path)
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.want, body)
			}
			if tt.wantCode != "" {
				if oe := ociError(t, body); oe.Code != tt.wantCode || !strings.Contains(oe.Message, "offline") {
					t.Fatalf("want %s saying the upstream is offline: %s", tt.wantCode, body)
				}
			}
		})
	}
	e.up.mu.Lock()
	defer e.up.mu.Unlock()
	if len(e.up.counts) != 0 {
		t.Fatalf("an offline upstream was contacted: %v", e.up.counts)
	}
}
