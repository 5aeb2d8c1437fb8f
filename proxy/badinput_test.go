package proxy

import (
	"bufio"
	"bytes"
	"cmp"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// badInputCase is one request to pullgate that must be refused with a clear OCI error (invariant 7 of docs/design.md).
type badInputCase struct {
	name   string
	method string   // "" means GET
	target string   // the request target, sent byte for byte on the request line
	header []string // header name, value, ...
	fault  fault    // installed on the upstream for this row only
	status int      // 0: any 4xx
	code   code     // "": any OCI code
	// cut accepts a response that started (200) and was then cut: the upstream's bytes failed verification
	// after the headers went out, and the only honest signal left is a broken stream.
	cut   bool
	check func(t *testing.T, resp *http.Response, body []byte) // further checks, optional
	bug   string                                               // a known bug: the row is skipped with this text
}

// TestBadInput is invariant 7 of docs/design.md: invalid names, tags, digests, ranges, paths and upstream answers get a
// 4xx (or, when the upstream is at fault, a 5xx other than 500) with an OCI error body and a pull log line;
// nothing panics, an error stores nothing, and nothing unverified is ever on disk.
func TestBadInput(t *testing.T) {
	e := newEnv(t) // MaxManifestSize is the default, 4 MiB, which the oversized rows exceed

	// A cached image, a cached 1000-byte blob for the Range rows, and a cached layer larger than a manifest.
	img := randomImage(t, 1)
	e.up.push(t, "team/app:v1", img)
	imgDigest := mustDigest(t, img)
	if resp, body := e.get("/v2/local/team/app/manifests/v1"); resp.StatusCode != http.StatusOK {
		t.Fatalf("warm-up manifest: %d %s", resp.StatusCode, body)
	}
	blob, blobDigest := layerBlob(t, 1000)
	e.up.pushBlob(t, "team/rg", blob, blobDigest)
	big, bigDigest := layerBlob(t, 5<<20)
	e.up.pushBlob(t, "team/big", big, bigDigest)
	for _, b := range []struct{ repo, digest string }{{"team/rg", blobDigest.String()}, {"team/big", bigDigest.String()}} {
		if resp, body := e.get("/v2/local/" + b.repo + "/blobs/" + b.digest); resp.StatusCode != http.StatusOK {
			t.Fatalf("warm-up blob %s: %d %.200s", b.repo, resp.StatusCode, body)
		}
	}
	waitFor(t, "the warm-up fills", func() bool { return e.counter(e.m.FillsInFlight) == 0 })

	manifestBody := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}`)
	otherDigest := "sha256:" + strings.Repeat("ab", 32)
	hex64 := strings.Repeat("0123456789abcdef", 4)
	absent := "sha256:" + strings.Repeat("e", 64)
	rangePath := "/v2/local/team/rg/blobs/" + blobDigest.String()
	wrongBlob, wrongBlobDigest := layerBlob(t, 65536)
	wrongBlob[100] ^= 0xff

	// upstreamManifest answers manifest requests under /v2/<repo>/ with serve.
	upstreamManifest := func(repo string, serve func(w http.ResponseWriter)) fault {
		return func(w http.ResponseWriter, r *http.Request) bool {
			if !strings.HasPrefix(r.URL.Path, "/v2/"+repo+"/manifests/") {
				return false
			}
			serve(w)
			return true
		}
	}
	contentRange := func(t *testing.T, resp *http.Response, _ []byte) {
		t.Helper()
		if got, want := resp.Header.Get("Content-Range"), "bytes */1000"; got != want {
			t.Errorf("Content-Range = %q, want %q", got, want)
		}
	}
	rng := func(name, value string) badInputCase {
		return badInputCase{name: "range " + name, target: rangePath, header: []string{"Range", value},
			status: 416, code: codeRangeInvalid, check: contentRange}
	}
	tags := func(n string) badInputCase {
		return badInputCase{name: "tags n=" + n, target: "/v2/local/team/app/tags/list?n=" + n, status: 400, code: codePaginationInvalid}
	}
	readOnly := func(method, target string) badInputCase {
		return badInputCase{name: method + " " + strings.TrimPrefix(target, "/v2/local/team/app/"), method: method, target: target,
			status: 405, code: codeUnsupported}
	}

	tests := []badInputCase{
		// Repository names.
		{name: "uppercase name", target: "/v2/local/Team/app/manifests/v1", status: 400, code: codeNameInvalid},
		{name: "dot-dot segment", target: "/v2/local/team/../app/manifests/v1", status: 400, code: codeNameInvalid},
		{name: "dot-dot escaping v2", target: "/v2/../v2/local/team/app/manifests/v1", status: 400, code: codeNameInvalid},
		{name: "dot segment", target: "/v2/local/./team/app/manifests/v1", status: 400, code: codeNameInvalid},
		{name: "empty component", target: "/v2/local/team//app/manifests/v1", status: 400, code: codeNameInvalid},
		{name: "leading slash", target: "/v2//local/team/app/manifests/v1", status: 400, code: codeNameInvalid},
		{name: "trailing slash", target: "/v2/local/team/app//manifests/v1", status: 400, code: codeNameInvalid},
		{name: "empty name", target: "/v2//manifests/v1", status: 400, code: codeNameInvalid},
		{name: "name of 256 characters", target: "/v2/local/" + strings.Repeat("a", 250) + "/manifests/v1", status: 400, code: codeNameInvalid},
		{name: "name of 255 characters is valid", target: "/v2/local/" + strings.Repeat("b", 249) + "/manifests/v1", status: 404, code: codeManifestUnknown},
		{name: "dollar in name", target: "/v2/local/team/app$/manifests/v1", status: 400, code: codeNameInvalid},
		{name: "separator run in name", target: "/v2/local/team/a_-b/manifests/v1", status: 400, code: codeNameInvalid},
		{name: "component starting with a dash", target: "/v2/local/team/-app/manifests/v1", status: 400, code: codeNameInvalid},
		{name: "encoded slash", target: "/v2/local/team%2Fapp/manifests/v1", status: 400, code: codeNameInvalid},
		{name: "encoded dot-dot", target: "/v2/local/team/%2e%2e/app/manifests/v1", status: 400, code: codeNameInvalid},
		{name: "encoded NUL", target: "/v2/local/team/app%00/manifests/v1", status: 400, code: codeNameInvalid},
		{name: "backslash", target: `/v2/local/team\app/manifests/v1`, status: 400, code: codeNameInvalid},
		{name: "encoded slash in tag", target: "/v2/local/team/app/manifests/v1%2F..%2Fv2", status: 400, code: codeNameInvalid},
		{name: "host:port of no upstream", target: "/v2/example.com:5000/team/app/manifests/v1", status: 404, code: codeNameUnknown},
		{name: "host:port of no upstream with ns", target: "/v2/example.com:5000/team/app/blobs/" + otherDigest + "?ns=local", status: 400, code: codeNameInvalid},

		// Tags.
		{name: "tag of 129 characters", target: "/v2/local/team/app/manifests/" + strings.Repeat("t", 129), status: 400, code: codeManifestInvalid},
		{name: "tag of 128 characters is valid", target: "/v2/local/team/app/manifests/" + strings.Repeat("t", 128), status: 404, code: codeManifestUnknown},
		{name: "tag starting with a dot", target: "/v2/local/team/app/manifests/.v1", status: 400, code: codeManifestInvalid},
		{name: "tag starting with a dash", target: "/v2/local/team/app/manifests/-v1", status: 400, code: codeManifestInvalid},
		{name: "tag with a plus", target: "/v2/local/team/app/manifests/v1+build", status: 400, code: codeManifestInvalid},
		{name: "empty tag", target: "/v2/local/team/app/manifests/", status: 400, code: codeManifestInvalid},

		// Digests.
		{name: "short digest", target: "/v2/local/team/app/blobs/sha256:abc", status: 400, code: codeDigestInvalid},
		{name: "uppercase hex", target: "/v2/local/team/app/blobs/sha256:" + strings.ToUpper(hex64), status: 400, code: codeDigestInvalid},
		{name: "uppercase algorithm", target: "/v2/local/team/app/blobs/SHA256:" + hex64, status: 400, code: codeDigestInvalid},
		{name: "no algorithm", target: "/v2/local/team/app/blobs/" + hex64, status: 400, code: codeDigestInvalid},
		{name: "md5", target: "/v2/local/team/app/blobs/md5:" + hex64[:32], status: 400, code: codeDigestInvalid},
		{name: "empty sha256", target: "/v2/local/team/app/blobs/sha256:", status: 400, code: codeDigestInvalid},
		{name: "sha512 of 64 characters", target: "/v2/local/team/app/blobs/sha512:" + hex64, status: 400, code: codeDigestInvalid},
		{name: "manifest digest of 63 characters", target: "/v2/local/team/app/manifests/sha256:" + hex64[1:], status: 400, code: codeDigestInvalid},
		{name: "referrers of a tag", target: "/v2/local/team/app/referrers/v1", status: 400, code: codeDigestInvalid},

		// Ranges on a cached blob.
		rng("past the end", "bytes=1000-"),
		rng("reversed", "bytes=5-1"),
		rng("empty suffix", "bytes=-0"),
		rng("not a number", "bytes=abc"),
		rng("no numbers", "bytes=-"),
		rng("empty", "bytes="),
		rng("three parts", "bytes=1-2-3"),
		rng("negative suffix", "bytes=--5"),
		rng("overflow", "bytes=99999999999999999999-"),
		rng("other unit", "items=0-1"),

		// Tag list pagination.
		tags("-1"),
		tags("abc"),
		tags("99999999999999999999"),
		tags(""),
		tags("1e3"),

		// Upstream selection.
		{name: "unknown ns", target: "/v2/team/app/manifests/v1?ns=quay.io", status: 404, code: codeNameUnknown,
			check: func(t *testing.T, _ *http.Response, body []byte) {
				if msg := ociError(t, body).Message; !strings.Contains(msg, "local") || !strings.Contains(msg, e.up.host()) {
					t.Errorf("message %q does not name the configured upstreams", msg)
				}
			}},

		// Push methods: pullgate is read-only.
		readOnly(http.MethodPut, "/v2/local/team/app/manifests/v2"),
		readOnly(http.MethodDelete, "/v2/local/team/app/manifests/"+imgDigest.String()),
		readOnly(http.MethodPatch, "/v2/local/team/app/manifests/v1"),
		readOnly(http.MethodDelete, "/v2/local/team/app/blobs/"+otherDigest),
		readOnly(http.MethodPut, "/v2/"),
		func() badInputCase {
			c := readOnly(http.MethodPost, "/v2/local/team/app/blobs/uploads/")
			c.name = "POST upload start"
			return c
		}(),
		func() badInputCase {
			c := readOnly(http.MethodPatch, "/v2/local/team/app/blobs/uploads/0d6c3d52-5c1e-4b3b-9b1a-2b0a1c9d3e4f")
			c.name = "PATCH upload chunk"
			return c
		}(),
		func() badInputCase {
			c := readOnly(http.MethodPut, "/v2/local/team/app/blobs/uploads/0d6c3d52-5c1e-4b3b-9b1a-2b0a1c9d3e4f?digest="+otherDigest)
			c.name = "PUT upload finish"
			return c
		}(),

		// Not the registry API.
		{name: "unknown route", target: "/v2/foo/bar/baz", status: 404, code: codeNotFound},
		{name: "uploads GET", target: "/v2/local/team/app/blobs/uploads/x", status: 404, code: codeNotFound},
		{name: "not under v2", target: "/v1/local/team/app/manifests/v1", status: 404, code: codeNotFound},
		{name: "root", target: "/", status: 404, code: codeNotFound},
		{name: "catalog", target: "/v2/_catalog", status: 404, code: codeNotFound},

		// Unknown content.
		{name: "unknown blob", target: "/v2/local/team/app/blobs/" + absent, status: 404, code: codeBlobUnknown},
		{name: "unknown manifest tag", target: "/v2/local/team/app/manifests/nope", status: 404, code: codeManifestUnknown},
		{name: "unknown manifest digest", target: "/v2/local/team/app/manifests/" + absent, status: 404, code: codeManifestUnknown},
		{name: "tags of unknown repository", target: "/v2/local/team/nothing/tags/list", status: 404, code: codeNameUnknown},
		{name: "blob of another repository", target: "/v2/local/team/app/blobs/" + blobDigest.String(), status: 404, code: codeBlobUnknown,
			// The test registry keeps blobs across repositories; a real one says team/app does not hold it.
			fault: func(w http.ResponseWriter, r *http.Request) bool {
				if r.URL.Path != "/v2/team/app/blobs/"+blobDigest.String() {
					return false
				}
				w.WriteHeader(http.StatusNotFound)
				return true
			}},
		// Upstreams that misbehave: 5xx other than 500 with an OCI body, and nothing stored.
		{name: "oversized manifest with Content-Length", target: "/v2/local/team/huge/manifests/v1", status: 502, code: codeManifestInvalid,
			fault: upstreamManifest("team/huge", func(w http.ResponseWriter) {
				w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
				w.Header().Set("Content-Length", strconv.Itoa(4<<20+1))
				_, _ = w.Write(bytes.Repeat([]byte(" "), 4<<20+1))
			})},
		{name: "oversized manifest without Content-Length", target: "/v2/local/team/huge2/manifests/v1", status: 502, code: codeManifestInvalid,
			fault: upstreamManifest("team/huge2", func(w http.ResponseWriter) {
				w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
				for range 5 {
					_, _ = w.Write(bytes.Repeat([]byte(" "), 1<<20))
					w.(http.Flusher).Flush()
				}
			})},
		{name: "manifest bytes not matching Docker-Content-Digest", target: "/v2/local/team/lie/manifests/v1", status: 502, code: codeDigestInvalid,
			fault: upstreamManifest("team/lie", func(w http.ResponseWriter) {
				w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
				w.Header().Set("Docker-Content-Digest", otherDigest)
				_, _ = w.Write(manifestBody)
			})},
		{name: "manifest by digest with other bytes", target: "/v2/local/team/lie2/manifests/" + otherDigest, status: 502, code: codeDigestInvalid,
			fault: upstreamManifest("team/lie2", func(w http.ResponseWriter) {
				w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
				_, _ = w.Write(manifestBody)
			})},
		{name: "unusable Docker-Content-Digest", target: "/v2/local/team/lie3/manifests/v1", status: 502, code: codeDigestInvalid,
			fault: upstreamManifest("team/lie3", func(w http.ResponseWriter) {
				w.Header().Set("Docker-Content-Digest", "md5:abc")
				_, _ = w.Write(manifestBody)
			})},
		{name: "truncated manifest body", target: "/v2/local/team/short/manifests/v1", status: 503, code: codeUnavailable,
			fault: upstreamManifest("team/short", func(w http.ResponseWriter) {
				w.Header().Set("Content-Length", strconv.Itoa(len(manifestBody)))
				_, _ = w.Write(manifestBody[:20])
				w.(http.Flusher).Flush()
				panic(http.ErrAbortHandler)
			})},
		{name: "upstream 503 on an uncached manifest", target: "/v2/local/team/down/manifests/v1", status: 503, code: codeUnavailable,
			fault: upstreamManifest("team/down", func(w http.ResponseWriter) { w.WriteHeader(http.StatusServiceUnavailable) })},
		{name: "upstream blob of wrong bytes", target: "/v2/local/team/wrong/blobs/" + wrongBlobDigest.String(), status: 502, code: codeDigestInvalid, cut: true,
			fault: func(w http.ResponseWriter, r *http.Request) bool {
				if !strings.HasPrefix(r.URL.Path, "/v2/team/wrong/blobs/") {
					return false
				}
				w.Header().Set("Content-Length", strconv.Itoa(len(wrongBlob)))
				_, _ = w.Write(wrongBlob)
				return true
			}},
		{name: "HTML page instead of a manifest", target: "/v2/local/team/portal/manifests/v1", status: 502, code: codeManifestInvalid,
			fault: upstreamManifest("team/portal", func(w http.ResponseWriter) {
				w.Header().Set("Content-Type", "text/html")
				_, _ = w.Write([]byte("<html><body>Please log in to the Wi-Fi</body></html>"))
			})},
		{name: "a layer through the manifests route", target: "/v2/local/team/big/manifests/" + bigDigest.String(), status: 0, code: ""},
		{name: "blob answered 204", target: "/v2/local/team/nocontent/blobs/" + absent, status: 502, code: codeUnknown,
			fault: func(w http.ResponseWriter, r *http.Request) bool {
				if !strings.HasPrefix(r.URL.Path, "/v2/team/nocontent/blobs/") {
					return false
				}
				w.WriteHeader(http.StatusNoContent)
				return true
			}},
		// Last: the upstream client then refuses every request until Retry-After passes on the test clock.
		{name: "upstream 429 on an uncached manifest", target: "/v2/local/team/busy/manifests/v1", status: 429, code: codeTooManyRequests,
			fault: upstreamManifest("team/busy", func(w http.ResponseWriter) {
				w.Header().Set("Retry-After", "1")
				w.WriteHeader(http.StatusTooManyRequests)
			}),
			check: func(t *testing.T, resp *http.Response, _ []byte) {
				if resp.Header.Get("Retry-After") == "" {
					t.Error("Retry-After not passed on")
				}
			}},
	}

	before, _ := e.storedFiles()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.bug != "" {
				t.Skip("BUG: " + tt.bug)
			}
			e.up.setFault(tt.fault)
			defer e.up.setFault(nil)
			pulls := len(pullLines(e))
			method := cmp.Or(tt.method, http.MethodGet)
			resp, body, readErr := e.raw(method, tt.target, tt.header...)
			waitFor(t, "the pull log line", func() bool { return len(pullLines(e)) > pulls })
			waitFor(t, "the fills", func() bool { return e.counter(e.m.FillsInFlight) == 0 })

			switch {
			case resp == nil:
				if !tt.cut {
					t.Fatalf("no response: %v", readErr)
				}
			case tt.cut && resp.StatusCode == http.StatusOK:
				if readErr == nil && int64(len(body)) == resp.ContentLength {
					t.Fatalf("200 with a clean end of body (%d bytes); want an error or a cut stream", len(body))
				}
			case readErr != nil:
				t.Fatalf("status %d, reading body: %v", resp.StatusCode, readErr)
			default:
				if resp.StatusCode == http.StatusInternalServerError {
					t.Fatalf("500: %s", body)
				}
				if tt.status == 0 && (resp.StatusCode < 400 || resp.StatusCode > 499) || tt.status != 0 && resp.StatusCode != tt.status {
					t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, body)
				}
				if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
					t.Errorf("Content-Type %q, want application/json", ct)
				}
				if got := ociError(t, body); tt.code != "" && got.Code != tt.code {
					t.Fatalf("code %s, want %s: %s", got.Code, tt.code, body)
				}
			}
			if tt.check != nil && resp != nil {
				tt.check(t, resp, body)
			}

			lines := pullLines(e)
			last := lines[len(lines)-1]
			if resp != nil && last["status"] != float64(resp.StatusCode) {
				t.Errorf("pull log status %v, client saw %d", last["status"], resp.StatusCode)
			}
			if got, _ := last["error_code"].(string); got == "" || tt.code != "" && got != string(tt.code) {
				t.Errorf("pull log error_code %q, want %s", got, tt.code)
			}
			if after, _ := e.storedFiles(); !slices.Equal(after, before) {
				t.Errorf("an error response changed the stored files: before %v, after %v", before, after)
			}
		})
	}

	content, temp := e.storedFiles()
	if len(temp) != 0 {
		t.Errorf("temp files left: %v", temp)
	}
	if len(content) < 3 { // the image's manifest and the two warm-up blobs
		t.Errorf("only %d content files: the warm-up did not cache what it should", len(content))
	}
	for _, p := range content {
		if err := verifyContentFile(p); err != nil {
			t.Error(err)
		}
	}
}

// verifyContentFile checks that a content file at blobs/<alg>/<hex[:2]>/<hex> hashes to its name.
func verifyContentFile(p string) error {
	hexName, dir := filepath.Base(p), filepath.Dir(p)
	alg := filepath.Base(filepath.Dir(dir))
	var h hash.Hash
	switch alg {
	case "sha256":
		h = sha256.New()
	case "sha512":
		h = sha512.New()
	default:
		return fmt.Errorf("%s: unknown algorithm directory %q", p, alg)
	}
	if len(hexName) < 2 || filepath.Base(dir) != hexName[:2] {
		return fmt.Errorf("%s: not under its two-character prefix directory", p)
	}
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != hexName {
		return fmt.Errorf("%s holds content of %s:%s", p, alg, got)
	}
	return nil
}

// pullLines returns the pull log lines (the logger also carries fill warnings).
func pullLines(e *env) []map[string]any {
	var out []map[string]any
	for _, l := range e.logs.lines() {
		if l["msg"] == "pull" {
			out = append(out, l)
		}
	}
	return out
}

// raw sends one HTTP/1.1 request to pullgate over its own TLS connection with target written on the request
// line exactly as given: Go's client would clean or re-escape some of the paths this file sends. It returns the
// response and as much of its body as arrived; readErr says why the response or its body ended early (resp
// is nil when the connection closed before a response).
func (e *env) raw(method, target string, hdr ...string) (resp *http.Response, body []byte, readErr error) {
	e.t.Helper()
	cfg := e.srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	cfg.NextProtos = []string{"http/1.1"}
	conn, err := tls.Dial("tcp", e.host(), cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", method, target, e.host())
	for i := 0; i+1 < len(hdr); i += 2 {
		fmt.Fprintf(&b, "%s: %s\r\n", hdr[i], hdr[i+1])
	}
	if method == http.MethodPut || method == http.MethodPost || method == http.MethodPatch {
		b.WriteString("Content-Length: 0\r\n")
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(conn, b.String()); err != nil {
		e.t.Fatal(err)
	}
	resp, err = http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		return nil, nil, fmt.Errorf("reading the response: %w", err)
	}
	body, readErr = io.ReadAll(resp.Body)
	return resp, body, readErr
}

// TestBadInputDockerHubName: a Docker Hub upstream adds "library/" to one-element names; a name that is valid
// here but too long there is a 400 NAME_INVALID, not a 500.
func TestBadInputDockerHubName(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Upstreams[0].DockerHub = true })
	tests := []struct {
		n      int
		status int
		code   code
	}{
		{247, 404, codeManifestUnknown}, // library/ + 247 = 255: valid upstream, which does not have it
		{248, 400, codeNameInvalid},
		{255, 400, codeNameInvalid},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.n), func(t *testing.T) {
			resp, body, err := e.raw(http.MethodGet, "/v2/"+strings.Repeat("a", tt.n)+"/manifests/v1?ns=local")
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.status || ociError(t, body).Code != tt.code {
				t.Fatalf("status %d %s, want %d %s", resp.StatusCode, body, tt.status, tt.code)
			}
		})
	}
}
