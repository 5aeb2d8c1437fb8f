package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path"
	"regexp"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullgate/pullgate/cache"
	"github.com/pullgate/pullgate/upstream"
)

// The fuzz targets below run as ordinary tests over their seeds (f.Add and testdata/fuzz/<Name>/), and with
// `go test -fuzz=^FuzzName$ ./proxy/` as fuzzers.

// isOCIRejection checks that err is an apiError that writeError answers with a 4xx.
func isOCIRejection(t *testing.T, err error) *apiError {
	t.Helper()
	var ae *apiError
	if !errors.As(err, &ae) {
		t.Fatalf("rejection is not an apiError: %T %v", err, err)
	}
	st := ae.status
	if st == 0 {
		st = status[ae.code]
	}
	if st < 400 || st > 499 || ae.message == "" {
		t.Fatalf("rejection %v answers %d", ae, st)
	}
	return ae
}

func FuzzParseRoute(f *testing.F) {
	d := "sha256:" + strings.Repeat("a", 64)
	for _, s := range []string{
		"/v2", "/v2/", "/v2/library/nginx/manifests/1.25", "/v2/docker.io/library/nginx/manifests/" + d,
		"/v2/local/team/app/blobs/" + d, "/v2/a/tags/list", "/v2/a/b/referrers/" + d, "/v2/a/uploads/x",
		"/v2/localhost:5000/a/manifests/v", "/v2/a/../b/manifests/v", "/v2/a%2Fb/manifests/v", "/v2//a/blobs/x",
		"/v2/a/manifests/.v", "/v2/a__b--c.d/manifests/v", "/v2/tags/list", "/v2//tags/list", "/v2/a/blobs/sha512:" + strings.Repeat("0", 128),
		"/v2/a:/b/manifests/v", "/v2/:1/b/manifests/v",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		r, err := parseRoute(p)
		if err != nil {
			isOCIRejection(t, err)
			return
		}
		if r.kind == kindBase {
			if p != "/v2" && p != "/v2/" || r.name != "" || r.ref != "" {
				t.Fatalf("%q parsed as the base route %+v", p, r)
			}
			return
		}
		if err := validateName(r.name); err != nil {
			t.Fatalf("%q: accepted name %q does not validate: %v", p, r.name, err)
		}
		if len(r.name) > maxNameLength {
			t.Fatalf("%q: name of %d characters", p, len(r.name))
		}
		if strings.ContainsAny(p, "%\\\x00") {
			t.Fatalf("%q: accepted an encoded or control character", p)
		}
		for i, c := range strings.Split(r.name, "/") {
			if c == "" || c == "." || c == ".." || strings.Contains(c, "..") {
				t.Fatalf("%q: name %q has component %q", p, r.name, c)
			}
			if i > 0 && strings.Contains(c, ":") {
				t.Fatalf("%q: name %q has a colon past its first component", p, r.name)
			}
			if c != strings.ToLower(c) {
				t.Fatalf("%q: name %q is not lowercase", p, r.name)
			}
		}
		if path.Clean("/"+r.name) != "/"+r.name {
			t.Fatalf("%q: name %q is not a clean path", p, r.name)
		}
		var rebuilt string
		switch r.kind {
		case kindTags:
			if r.ref != "" {
				t.Fatalf("%q: tags route with ref %q", p, r.ref)
			}
			rebuilt = "/v2/" + r.name + "/tags/list"
		case kindManifests:
			if isDigest(r.ref) {
				checkDigestRef(t, r.ref)
			} else if !tagOracle.MatchString(r.ref) || len(r.ref) > maxTagLength || strings.HasPrefix(r.ref, ".") || strings.HasPrefix(r.ref, "-") {
				t.Fatalf("%q: invalid tag %q accepted", p, r.ref)
			}
			rebuilt = "/v2/" + r.name + "/manifests/" + r.ref
		case kindBlobs, kindReferrers:
			checkDigestRef(t, r.ref)
			rebuilt = "/v2/" + r.name + "/" + string(r.kind) + "/" + r.ref
		default:
			t.Fatalf("%q: unknown kind %q", p, r.kind)
		}
		if rebuilt != p {
			t.Fatalf("%q parsed as %+v, which rebuilds as %q", p, r, rebuilt)
		}
		if r2, err := parseRoute(rebuilt); err != nil || r2 != r {
			t.Fatalf("%q: rebuilt %q parses as %+v, %v; want %+v", p, rebuilt, r2, err, r)
		}
	})
}

// checkDigestRef checks an accepted digest reference: a supported algorithm and lowercase hex of its length,
// that re-parses to itself.
func checkDigestRef(t *testing.T, ref string) {
	t.Helper()
	d, err := parseDigest(ref)
	if err != nil || d.String() != ref {
		t.Fatalf("accepted digest %q re-parses as %v, %v", ref, d, err)
	}
	want := map[string]int{"sha256": 64, "sha512": 128}[d.Algorithm]
	if want == 0 || len(d.Hex) != want || strings.Trim(d.Hex, "0123456789abcdef") != "" {
		t.Fatalf("accepted digest %q", ref)
	}
}

func FuzzParseDigest(f *testing.F) {
	for _, s := range []string{
		"sha256:" + strings.Repeat("a", 64), "sha512:" + strings.Repeat("0", 128), "sha256:", ":", "sha256:" + strings.Repeat("A", 64),
		"md5:d41d8cd98f00b204e9800998ecf8427e", "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564", "sha256:abc", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := parseDigest(s)
		if err != nil {
			if isOCIRejection(t, err).code != codeDigestInvalid {
				t.Fatalf("%q: rejected with %v, want DIGEST_INVALID", s, err)
			}
			return
		}
		checkDigestRef(t, s)
		if d.Algorithm == "sha256" {
			// go-containerregistry agrees on every sha256 digest pullgate accepts.
			if h, err := v1.NewHash(s); err != nil || h != d {
				t.Fatalf("%q: accepted, but v1.NewHash says %v, %v", s, h, err)
			}
		}
	})
}

func FuzzParseRange(f *testing.F) {
	for _, s := range []string{"", "bytes=0-9", "bytes=990-", "bytes=-5", "bytes=500-5000", "bytes=1000-", "bytes=5-1", "bytes=abc",
		"lines=1-2", "bytes=0-1,5-6", "bytes=-0", "bytes= 1-2 ", "bytes=99999999999999999999-", "bytes=-99999999999999999999", "bytes=+1-2"} {
		f.Add(s, int64(1000))
		f.Add(s, int64(0))
	}
	f.Add("bytes=0-", int64(1))
	f.Add("bytes=9223372036854775806-", int64(9223372036854775807))
	f.Fuzz(func(t *testing.T, s string, size int64) {
		if size < 0 {
			size = -(size + 1) // parseRange is only called with a known size
		}
		start, length, ranged, err := parseRange(s, size)
		if err != nil {
			if isOCIRejection(t, err).code != codeRangeInvalid {
				t.Fatalf("%q/%d: %v, want RANGE_INVALID", s, size, err)
			}
			if s == "" {
				t.Fatalf("no Range header refused: %v", err)
			}
			return
		}
		if !ranged {
			if start != 0 || length != size {
				t.Fatalf("%q/%d: unranged answer %d+%d", s, size, start, length)
			}
			return
		}
		if start < 0 || start >= size || length <= 0 || length > size-start {
			t.Fatalf("%q/%d: range %d+%d is outside the blob", s, size, start, length)
		}
		// Cross-check against net/http's Range handling on a small blob, where both serve one range.
		if size > 1<<16 || !strings.HasPrefix(s, "bytes=") {
			return
		}
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.Header.Set("Range", s)
		http.ServeContent(rec, req, "", time.Time{}, bytes.NewReader(make([]byte, size)))
		if rec.Code == http.StatusPartialContent && !strings.HasPrefix(rec.Header().Get("Content-Type"), "multipart/") {
			if got, want := rec.Header().Get("Content-Range"), contentRangeOf(start, length, size); got != want {
				t.Fatalf("%q/%d: pullgate serves %s, net/http %s", s, size, want, got)
			}
		}
	})
}

func contentRangeOf(start, length, size int64) string {
	return fmt.Sprintf("bytes %d-%d/%d", start, start+length-1, size)
}

func FuzzManifestParsing(f *testing.F) {
	d := "sha256:" + strings.Repeat("a", 64)
	for _, s := range []string{
		`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"` + d + `","size":2},"layers":[{"digest":"` + d + `"}]}`,
		`{"schemaVersion":2,"manifests":[{"digest":"` + d + `","platform":{"os":"linux"}}]}`,
		`{"schemaVersion":1,"fsLayers":[{"blobSum":"` + d + `"}]}`,
		`{"blobs":[{"digest":"sha512:` + strings.Repeat("0", 128) + `"}],"subject":{"digest":"` + d + `"}}`,
		`{"layers":[{"digest":"md5:x"},{"digest":5}]}`, `[]`, `null`, `{"manifests":null}`, `{"config":null}`, ``, `{`,
	} {
		f.Add([]byte(s), "")
		f.Add([]byte(s), "application/vnd.oci.image.index.v1+json; charset=utf-8")
	}
	f.Add([]byte(`{}`), "application/json")
	f.Add([]byte(`{}`), "text/plain")
	f.Fuzz(func(t *testing.T, body []byte, _ string) {
		// The Content-Type is not an input: a manifest's type and links come from its bytes alone.
		p, perr := parseManifest(body)
		if perr != nil {
			if !errors.Is(perr, errInvalidManifest) {
				t.Fatalf("parseManifest error %v does not wrap errInvalidManifest", perr)
			}
		} else if shapeOf(p.mediaType) == 0 {
			t.Fatalf("parsed %q as unknown media type %q", body, p.mediaType)
		}
		for _, r := range p.refs {
			checkDigestRef(t, r.digest.String())
		}
		// Every valid digest that go-containerregistry finds in the fields of the manifest's own type is linked.
		has := func(s string) bool {
			for _, r := range p.refs {
				if r.digest.String() == s {
					return true
				}
			}
			return false
		}
		if m, err := v1.ParseManifest(bytes.NewReader(body)); err == nil && m != nil && shapeOf(p.mediaType) == shapeImage {
			for _, desc := range append([]v1.Descriptor{m.Config}, m.Layers...) {
				if _, err := parseDigest(desc.Digest.String()); err == nil && !has(desc.Digest.String()) {
					t.Fatalf("manifest references %s, parseManifest found %v", desc.Digest, p.refs)
				}
			}
		}
		if idx, err := v1.ParseIndexManifest(bytes.NewReader(body)); err == nil && idx != nil && shapeOf(p.mediaType) == shapeIndex {
			for _, desc := range idx.Manifests {
				if _, err := parseDigest(desc.Digest.String()); err == nil && !has(desc.Digest.String()) {
					t.Fatalf("index references %s, parseManifest found %v", desc.Digest, p.refs)
				}
			}
		}
		// A manifest's own mediaType field is the type it is served with.
		var own struct {
			MediaType string `json:"mediaType"`
		}
		if perr == nil && json.Unmarshal(body, &own) == nil && own.MediaType != "" && own.MediaType != p.mediaType {
			t.Fatalf("mediaType %q served as %q", own.MediaType, p.mediaType)
		}

		// A referrers index that decodes encodes again, and never holds more than the limit allowed to be read.
		if idx, err := decodeIndex(bytes.NewReader(body), 4<<20); err == nil {
			out, err := json.Marshal(referrersIndex{SchemaVersion: 2, MediaType: indexMediaType, Manifests: idx.Manifests})
			if err != nil {
				t.Fatalf("a decoded index does not encode again: %v", err)
			}
			if again, err := decodeIndex(bytes.NewReader(out), 4<<20); err != nil || len(again.Manifests) != len(idx.Manifests) {
				t.Fatalf("re-encoded index decodes as %d descriptors, %v; want %d", len(again.Manifests), err, len(idx.Manifests))
			}
		}
		if _, err := decodeIndex(bytes.NewReader(body), 0); err == nil {
			t.Fatalf("decodeIndex with a limit of 0 decoded %q", body)
		}
	})
}

// FuzzServeHTTP sends whole requests to the handler, with an upstream that cannot be reached and one cached,
// linked blob: whatever the method, target and Range, the answer is never a 500 nor a panic, and every error
// has an OCI body (invariant 7 of docs/design.md).
func FuzzServeHTTP(f *testing.F) {
	blob := []byte("pullgate fuzz blob: twenty-six bytes and more")
	sum := sha256.Sum256(blob)
	d := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	for _, s := range []struct{ method, target, rng string }{
		{"GET", "/v2/", ""},
		{"GET", "/v2/local/team/app/blobs/" + d.String(), ""},
		{"GET", "/v2/local/team/app/blobs/" + d.String(), "bytes=3-9"},
		{"HEAD", "/v2/team/app/blobs/" + d.String() + "?ns=local", "bytes=-3"},
		{"GET", "/v2/local/team/app/blobs/" + d.String(), "bytes=100-"},
		{"GET", "/v2/local/team/app/manifests/" + d.String(), ""},
		{"GET", "/v2/local/team/app/manifests/v1", ""},
		{"GET", "/v2/local/team/app/tags/list?n=2&last=a", ""},
		{"GET", "/v2/local/team/app/referrers/" + d.String() + "?artifactType=x", ""},
		{"PUT", "/v2/local/team/app/manifests/v1", ""},
		{"POST", "/v2/local/team/app/blobs/uploads/", ""},
		{"GET", "/v2/local/team/../app/manifests/v1", ""},
		{"GET", "/v2/reg.example:5000/team/app/manifests/v1", ""},
		{"GET", "/v2/team/app/tags/list?ns=nowhere", ""},
		{"GET", "/v2/local/team/app/blobs/sha256:" + strings.Repeat("0", 64), ""},
	} {
		f.Add(s.method, s.target, s.rng)
	}
	c, err := cache.Open(cache.Options{Dir: f.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = c.Close() })
	w, err := c.NewWriter(d, "", int64(len(blob)))
	if err != nil {
		f.Fatal(err)
	}
	if _, err := w.Write(blob); err != nil {
		f.Fatal(err)
	}
	if _, err := w.Commit(); err != nil {
		f.Fatal(err)
	}
	if err := c.Link("local", "team/app", d); err != nil {
		f.Fatal(err)
	}
	now := func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) }
	// Nothing listens on port 1: the first request fails at once and opens the circuit, and every later one
	// fails fast with ErrUnavailable.
	up, err := upstream.New(upstream.Options{Name: "local", URL: "https://127.0.0.1:1", Timeout: 2 * time.Second,
		FailureThreshold: 1, CoolDown: time.Hour, Now: now})
	if err != nil {
		f.Fatal(err)
	}
	h, err := New(Options{Cache: c, Default: "local", Now: now, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Upstreams: []Upstream{{Name: "local", Hosts: []string{"reg.example:5000"}, Fetcher: up}}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, method, target, rng string) {
		raw := method + " " + target + " HTTP/1.1\r\nHost: pullgate.example\r\n"
		if rng != "" {
			raw += "Range: " + rng + "\r\n"
		}
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw + "\r\n")))
		if err != nil {
			return // net/http answers 400 itself
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req = req.WithContext(ctx)
		rec := httptest.NewRecorder()
		aborted := false
		func() {
			defer func() {
				if p := recover(); p != nil {
					if p != http.ErrAbortHandler {
						panic(p)
					}
					aborted = true
				}
			}()
			h.ServeHTTP(rec, req)
		}()
		res := rec.Result()
		body, _ := io.ReadAll(res.Body)
		if res.StatusCode == http.StatusInternalServerError {
			t.Fatalf("%s %q Range %q: 500 %s", method, target, rng, body)
		}
		if aborted {
			return // a stream cut after the headers: only possible with an upstream, which there is not
		}
		if res.StatusCode >= 400 && req.Method != http.MethodHead {
			var eb errorBody
			if err := json.Unmarshal(body, &eb); err != nil || len(eb.Errors) != 1 || eb.Errors[0].Code == "" || eb.Errors[0].Message == "" {
				t.Fatalf("%s %q: %d without an OCI error body: %q", method, target, res.StatusCode, body)
			}
			if _, ok := status[eb.Errors[0].Code]; !ok {
				t.Fatalf("%s %q: unknown code %q", method, target, eb.Errors[0].Code)
			}
		}
		if res.StatusCode == http.StatusOK || res.StatusCode == http.StatusPartialContent {
			if req.Method != http.MethodGet && req.Method != http.MethodHead {
				t.Fatalf("%s %q answered %d", method, target, res.StatusCode)
			}
			if req.Method == http.MethodGet && res.Header.Get("Docker-Content-Digest") == d.String() && res.StatusCode == http.StatusOK && !bytes.Equal(body, blob) {
				t.Fatalf("%s %q: 200 with a body that is not the blob: %q", method, target, body)
			}
		}
	})
}

// tagOracle is the OCI tag grammar, written out here on its own as an independent check of the names package.
var tagOracle = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
