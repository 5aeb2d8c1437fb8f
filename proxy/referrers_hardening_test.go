package proxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/pullgate/pullgate/cache"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullgate/pullgate/upstream"
)

const sigType = "application/vnd.example.sig.v1"

// pushReferrers pushes to team/sig a subject image and two artifacts that refer to it (an SBOM and a
// signature; go-containerregistry's registry takes the artifact type from the config's media type), and the
// sha256-<hex> tag index listing them, for upstreams with and without a referrers API.
func pushReferrers(t *testing.T, e *env) v1.Hash {
	t.Helper()
	img := randomImage(t, 1)
	e.up.push(t, "team/sig:v1", img)
	subject := mustDigest(t, img)
	size, _ := img.Size()
	emptyConfig := v1.Hash{Algorithm: "sha256", Hex: "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}
	e.up.pushBlob(t, "team/sig", []byte("{}"), emptyConfig)
	var descs []string
	for _, at := range []string{sbomType, sigType} {
		art := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":%q,`+
			`"config":{"mediaType":%q,"digest":%q,"size":2},"layers":[],`+
			`"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":%d}}`, at, at, emptyConfig, subject, size)
		d := e.up.putManifest(t, "team/sig", strings.ReplaceAll(at[len("application/vnd.example."):], ".", "-"), "application/vnd.oci.image.manifest.v1+json", []byte(art))
		descs = append(descs, fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":%d,"artifactType":%q}`, d, len(art), at))
	}
	idx := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` + strings.Join(descs, ",") + `]}`
	e.up.putManifest(t, "team/sig", "sha256-"+subject.Hex, indexMediaType, []byte(idx))
	return subject
}

// goOffline restarts pullgate on the same data directory with an upstream client that never contacts the
// upstream.
func goOffline(t *testing.T, e *env) {
	t.Helper()
	offline, err := upstream.New(upstream.Options{Name: "local", URL: e.up.srv.URL, Transport: e.up.srv.Client().Transport, Now: e.clock.Now, Offline: true})
	if err != nil {
		t.Fatal(err)
	}
	e.opts.Upstreams = []Upstream{{Name: "local", Hosts: e.opts.Upstreams[0].Hosts, Fetcher: offline}}
	e.restart()
}

// TestReferrersUpstreamFailures never answers an empty index because the upstream failed: only a 404 or 405
// of the referrers API falls back to the tag schema; any other failure serves the answer stored when the
// upstream last answered (across a restart too), or is a 503 (a 429 for a 429).
func TestReferrersUpstreamFailures(t *testing.T) {
	status := func(code int, onlyReferrers bool) fault {
		return func(w http.ResponseWriter, r *http.Request) bool {
			if onlyReferrers && !strings.Contains(r.URL.Path, "/referrers/") {
				return false
			}
			if code == http.StatusTooManyRequests {
				w.Header().Set("Retry-After", "30")
			}
			w.WriteHeader(code)
			return true
		}
	}
	unreachable := func(w http.ResponseWriter, r *http.Request) bool { panic(http.ErrAbortHandler) }
	tagUnreachable := func(w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/referrers/") {
			w.WriteHeader(http.StatusNotFound)
			return true
		}
		panic(http.ErrAbortHandler)
	}
	tests := []struct {
		name       string
		stored     bool // asked once while the upstream answered, then TagTTL passed
		offline    bool
		fault      fault
		query      string
		wantStatus int
		wantCode   code // for errors
		wantN      int  // for 200
		wantCache  string
	}{
		{name: "5xx, answer stored", stored: true, fault: status(503, false), wantStatus: 200, wantN: 2, wantCache: "stale"},
		{name: "5xx, nothing stored", fault: status(503, false), wantStatus: 503, wantCode: codeUnavailable},
		{name: "500 of the referrers API only, nothing stored", fault: status(500, true), wantStatus: 503, wantCode: codeUnavailable},
		{name: "429, answer stored", stored: true, fault: status(429, false), wantStatus: 200, wantN: 2, wantCache: "stale"},
		{name: "429, nothing stored", fault: status(429, false), wantStatus: 429, wantCode: codeTooManyRequests},
		{name: "unreachable, answer stored", stored: true, fault: unreachable, wantStatus: 200, wantN: 2, wantCache: "stale"},
		{name: "unreachable, nothing stored", fault: unreachable, wantStatus: 503, wantCode: codeUnavailable},
		{name: "offline, answer stored", stored: true, offline: true, wantStatus: 200, wantN: 2, wantCache: "stale"},
		{name: "offline, answer stored, filtered", stored: true, offline: true, query: "?artifactType=" + sigType, wantStatus: 200, wantN: 1, wantCache: "stale"},
		{name: "offline, nothing stored", offline: true, wantStatus: 503, wantCode: codeUnavailable},
		{name: "404: tag fallback", fault: status(404, true), wantStatus: 200, wantN: 2, wantCache: "miss"},
		{name: "405: tag fallback", fault: status(405, true), wantStatus: 200, wantN: 2, wantCache: "miss"},
		{name: "404, fallback tag unreachable, nothing stored", fault: tagUnreachable, wantStatus: 503, wantCode: codeUnavailable},
		{name: "404, fallback tag unreachable, answer stored", stored: true, fault: tagUnreachable, wantStatus: 200, wantN: 2, wantCache: "stale"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnvWithRegistry(t, []registry.Option{registry.WithReferrersSupport(true)})
			subject := pushReferrers(t, e)
			path := "/v2/local/team/sig/referrers/" + subject.String()
			if tt.stored {
				resp, body := e.get(path)
				checkReferrers(t, resp, body, 2, false)
				e.clock.advance(e.opts.TagTTL)
			}
			if tt.offline {
				goOffline(t, e)
			}
			e.up.setFault(tt.fault)
			resp, body := e.get(path + tt.query)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.wantStatus, body)
			}
			if tt.wantStatus != http.StatusOK {
				if got := ociError(t, body); got.Code != tt.wantCode {
					t.Fatalf("code %s, want %s", got.Code, tt.wantCode)
				}
				if tt.wantStatus == http.StatusTooManyRequests && resp.Header.Get("Retry-After") == "" {
					t.Fatal("429 without Retry-After")
				}
				return
			}
			checkReferrers(t, resp, body, tt.wantN, tt.query != "")
			if lines := e.logs.lines(); lines[len(lines)-1]["cache"] != tt.wantCache {
				t.Fatalf("pull log cache %v, want %s", lines[len(lines)-1]["cache"], tt.wantCache)
			}
		})
	}
}

// TestReferrersTypedDescriptors keeps only the descriptor fields of the OCI spec from an upstream's answer,
// drops descriptors that could never be fetched, and filters by artifactType.
func TestReferrersTypedDescriptors(t *testing.T) {
	e := newEnv(t)
	subject := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("5", 64)}
	good := `{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:` + strings.Repeat("6", 64) + `","size":10,` +
		`"artifactType":"` + sigType + `","annotations":{"org.example":"yes"},"x-junk":{"deep":[1,2,3]},"urls":["https://evil.example/"],"platform":{"os":"linux"}}`
	e.up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.Contains(r.URL.Path, "/referrers/") {
			return false
		}
		w.Header().Set("Content-Type", indexMediaType)
		fmt.Fprintf(w, `{"schemaVersion":2,"mediaType":%q,"annotations":{"top":"level"},"x-top":1,"manifests":[%s,`+
			`{"mediaType":"x","digest":"sha256:nothex","size":1,"artifactType":%q},{"mediaType":"x","digest":"sha256:%s","size":-1}]}`,
			indexMediaType, good, sigType, strings.Repeat("7", 64))
		return true
	})
	tests := []struct {
		name, query string
		wantN       int
	}{
		{"all", "", 1},
		{"matching filter", "?artifactType=" + sigType, 1},
		{"other filter", "?artifactType=" + sbomType, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := e.get("/v2/local/team/typed/referrers/" + subject.String() + tt.query)
			checkReferrers(t, resp, body, tt.wantN, tt.query != "")
			var raw struct {
				Manifests []map[string]json.RawMessage `json:"manifests"`
			}
			var top map[string]json.RawMessage
			if json.Unmarshal(body, &raw) != nil || json.Unmarshal(body, &top) != nil {
				t.Fatalf("not JSON: %s", body)
			}
			for k := range top {
				if k != "schemaVersion" && k != "mediaType" && k != "manifests" {
					t.Fatalf("index field %q passed through: %s", k, body)
				}
			}
			for _, m := range raw.Manifests {
				for k := range m {
					switch k {
					case "mediaType", "digest", "size", "artifactType", "annotations":
					default:
						t.Fatalf("descriptor field %q passed through: %s", k, body)
					}
				}
			}
		})
	}
}

// TestReferrersShared fetches a subject's referrers once per TagTTL, however many clients ask at once, and keeps
// the answers held in memory within their bound.
func TestReferrersShared(t *testing.T) {
	e := newEnvWithRegistry(t, []registry.Option{registry.WithReferrersSupport(true)})
	subject := pushReferrers(t, e)
	path := "/v2/local/team/sig/referrers/" + subject.String()
	release := make(chan struct{})
	e.up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/referrers/") {
			<-release
		}
		return false
	})
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, body := e.get(path)
			checkReferrers(t, resp, body, 2, false)
		}()
	}
	waitFor(t, "the upstream referrers request", func() bool { return e.up.count("GET referrers") >= 1 })
	close(release)
	wg.Wait()
	if got := e.up.count("GET referrers"); got != 1 {
		t.Fatalf("%d upstream referrers requests for concurrent clients, want 1", got)
	}
	e.clock.advance(e.opts.TagTTL - 1)
	resp, body := e.get(path)
	checkReferrers(t, resp, body, 2, false)
	if got := e.up.count("GET referrers"); got != 1 {
		t.Fatalf("%d upstream referrers requests within the TTL, want 1", got)
	}
	e.clock.advance(1)
	resp, body = e.get(path)
	checkReferrers(t, resp, body, 2, false)
	if got := e.up.count("GET referrers"); got != 2 {
		t.Fatalf("%d upstream referrers requests after the TTL, want 2", got)
	}
	if n, b := e.h.referrerAnswers.len(); n != 1 || b > referrersLimits.bytes {
		t.Fatalf("%d answers, %d bytes held", n, b)
	}
}

// TestReferrersStoredTTL keeps a non-empty referrers answer in the cache index until replaced, and an empty one
// only for EmptyReferrersTTL, so that asking about random digests does not grow the index for ever.
func TestReferrersStoredTTL(t *testing.T) {
	e := newEnvWithRegistry(t, []registry.Option{registry.WithReferrersSupport(true)}, func(o *Options) { o.EmptyReferrersTTL = time.Second })
	subject := pushReferrers(t, e)
	nothing := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("8", 64)}
	random := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("9", 64)}
	// "nothing" is a digest the repository is known to hold (as if its manifest had been pulled), with no referrers.
	if err := e.cache.Link("local", "team/sig", nothing); err != nil {
		t.Fatal(err)
	}
	for _, d := range []v1.Hash{subject, nothing, random} {
		resp, body := e.get("/v2/local/team/sig/referrers/" + d.String())
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		_, _, err := e.cache.Referrers("local", "team/sig", d)
		if d == random {
			if !errors.Is(err, cache.ErrNotFound) {
				t.Fatalf("empty answer for a digest the repository does not hold was stored (%v): random digests would grow the index", err)
			}
		} else if err != nil {
			t.Fatalf("answer for %s not stored: %v", d, err)
		}
	}
	// The index's TTL runs on the real clock, in whole seconds.
	waitFor(t, "the empty answer to expire", func() bool {
		_, _, err := e.cache.Referrers("local", "team/sig", nothing)
		return err != nil
	})
	if _, _, err := e.cache.Referrers("local", "team/sig", subject); err != nil {
		t.Fatalf("non-empty answer expired: %v", err)
	}
}
