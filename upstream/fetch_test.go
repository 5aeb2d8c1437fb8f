package upstream

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

func TestNew(t *testing.T) {
	tests := []struct {
		name, upName, url string
		wantErr           string
		wantHost          string
	}{
		{name: "ok", upName: "docker.io", url: "https://registry-1.docker.io", wantHost: "registry-1.docker.io"},
		{name: "trailing slash and port", upName: "local", url: "https://reg.local:5443/", wantHost: "reg.local:5443"},
		{name: "empty name", upName: " ", url: "https://x.io", wantErr: "empty name"},
		{name: "http", upName: "x", url: "http://x.io", wantErr: "must be https"},
		{name: "no host", upName: "x", url: "https:///v2", wantErr: "no host"},
		{name: "unparsable", upName: "x", url: "https://x.io:port", wantErr: "bad URL"},
		{name: "credentials in URL", upName: "x", url: "https://u:secret@x.io", wantErr: "must not hold credentials"},
		{name: "query", upName: "x", url: "https://x.io/?a=b", wantErr: "query"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(Options{Name: tt.upName, URL: tt.url})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "secret") {
					t.Errorf("error %q shows the password", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Host() != tt.wantHost || c.Name() != tt.upName {
				t.Errorf("Host, Name = %q, %q; want %q, %q", c.Host(), c.Name(), tt.wantHost, tt.upName)
			}
		})
	}
}

func TestFetchAnonymous(t *testing.T) {
	u := newUpstream(t, nil)
	c := newTestClient(t, u.srv, Options{})
	img := u.img
	tests := []struct {
		name       string
		req        Request
		wantStatus int
		wantBody   []byte // nil: not checked
		wantDigest string // Docker-Content-Digest
		wantLength string
		wantCode   string // StatusError code when the fetch must fail
		wantHTTP   int
	}{
		{name: "GET manifest by tag", req: manifestReq(img), wantStatus: 200, wantDigest: img.manifest.String()},
		{name: "HEAD manifest", req: func() Request { r := manifestReq(img); r.Method = "HEAD"; return r }(),
			wantStatus: 200, wantDigest: img.manifest.String(), wantBody: []byte{}},
		{name: "GET manifest by digest", req: Request{Repo: img.repo, Kind: "manifests", Ref: img.manifest.String()},
			wantStatus: 200, wantDigest: img.manifest.String()},
		{name: "GET blob", req: Request{Repo: img.repo, Kind: "blobs", Ref: img.layer.String()},
			wantStatus: 200, wantBody: img.data},
		{name: "HEAD blob", req: Request{Method: "HEAD", Repo: img.repo, Kind: "blobs", Ref: img.layer.String()},
			wantStatus: 200, wantBody: []byte{}, wantLength: strconv.Itoa(len(img.data))},
		{name: "GET blob range", req: Request{Repo: img.repo, Kind: "blobs", Ref: img.layer.String(),
			Header: http.Header{"Range": {"bytes=2-9"}}}, wantStatus: 206, wantBody: img.data[2:10]},
		{name: "tags list", req: Request{Repo: img.repo, Kind: "tags/list", Query: url.Values{"n": {"10"}}},
			wantStatus: 200, wantBody: []byte(`{"name":"test/app","tags":["v1"]}`)},
		{name: "unknown tag", req: Request{Repo: img.repo, Kind: "manifests", Ref: "nope"},
			wantHTTP: 404, wantCode: "MANIFEST_UNKNOWN"},
		{name: "unknown blob", req: Request{Repo: img.repo, Kind: "blobs", Ref: "sha256:" + strings.Repeat("0", 64)},
			wantHTTP: 404, wantCode: "BLOB_UNKNOWN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := c.Fetch(context.Background(), tt.req)
			if tt.wantHTTP != 0 {
				var se *StatusError
				if !errors.As(err, &se) || se.Status != tt.wantHTTP || se.Code != tt.wantCode || se.Upstream != "test" {
					t.Fatalf("err = %#v, want StatusError %d %s", err, tt.wantHTTP, tt.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body := readAll(t, resp)
			if resp.StatusCode != tt.wantStatus {
				t.Errorf("status = %d, want %d", resp.StatusCode, tt.wantStatus)
			}
			if tt.wantBody != nil && !bytes.Equal(bytes.TrimSpace(body), tt.wantBody) {
				t.Errorf("body = %q, want %q", trunc(body), trunc(tt.wantBody))
			}
			if tt.wantDigest != "" {
				if got := resp.Header.Get("Docker-Content-Digest"); got != tt.wantDigest {
					t.Errorf("digest = %s, want %s", got, tt.wantDigest)
				}
				if len(body) > 0 && "sha256:"+sha256Hex(body) != tt.wantDigest {
					t.Errorf("manifest bytes do not match the digest")
				}
			}
			if tt.wantLength != "" && resp.Header.Get("Content-Length") != tt.wantLength {
				t.Errorf("Content-Length = %q, want %q", resp.Header.Get("Content-Length"), tt.wantLength)
			}
		})
	}
	if n := u.hits.get("ping"); n != 1 {
		t.Errorf("pings = %d, want 1 (the challenge is cached)", n)
	}
}

func TestFetchInvalidRequest(t *testing.T) {
	u := newUpstream(t, nil)
	c := newTestClient(t, u.srv, Options{})
	for _, r := range []Request{
		{Method: "DELETE", Repo: "a/b", Kind: "manifests", Ref: "v1"},
		{Repo: "A/B", Kind: "manifests", Ref: "v1"},
		{Repo: "a/../b", Kind: "manifests", Ref: "v1"},
		{Repo: "a/b", Kind: "manifests", Ref: "../x"},
		{Repo: "a/b", Kind: "blobs", Ref: "v1"},
		{Repo: "a/b", Kind: "uploads", Ref: "x"},
		{Repo: "a/b", Kind: "tags/list", Ref: "x"},
	} {
		if _, err := c.Fetch(context.Background(), r); err == nil || !strings.Contains(err.Error(), "invalid request") {
			t.Errorf("Fetch(%+v) = %v, want an invalid request error", r, err)
		}
	}
	if n := u.hits.get(""); n != 0 {
		t.Errorf("upstream saw %d requests, want 0", n)
	}
}

func TestOffline(t *testing.T) {
	u := newUpstream(t, nil)
	c := newTestClient(t, u.srv, Options{Offline: true})
	_, err := c.Fetch(context.Background(), manifestReq(u.img))
	if !errors.Is(err, ErrOffline) {
		t.Fatalf("err = %v, want ErrOffline", err)
	}
	if n := u.hits.get(""); n != 0 {
		t.Errorf("upstream saw %d requests, want 0", n)
	}
}

func TestRedirectDropsAuthorization(t *testing.T) {
	// The registry (basic auth) redirects blob GETs to a "CDN" on another host:port, which records
	// what it receives and serves the blob from the same registry.
	var cdnSawAuth, cdnRange atomic.Value
	var cdnHits atomic.Int64
	var cdn *httptest.Server
	pass := &atomic.Value{}
	pass.Store("s3cret")
	u := newUpstream(t, func(reg http.Handler) http.Handler {
		redirect := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
				http.Redirect(w, r, cdn.URL+r.URL.Path+"?sig=abc", http.StatusTemporaryRedirect)
				return
			}
			reg.ServeHTTP(w, r)
		})
		cdn = startTLS(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			cdnHits.Add(1)
			cdnSawAuth.Store(r.Header.Get("Authorization"))
			cdnRange.Store(r.Header.Get("Range"))
			reg.ServeHTTP(w, r)
		}))
		return basicAuthWrap("alice", pass)(redirect)
	})
	c := newTestClient(t, u.srv, Options{Keychain: staticKeychain{"alice", "s3cret"}})
	status, body, err := fetchBody(t, c, Request{Repo: u.img.repo, Kind: "blobs", Ref: u.img.layer.String(),
		Header: http.Header{"Range": {"bytes=2-9"}}})
	if err != nil {
		t.Fatal(err)
	}
	if status != http.StatusPartialContent || !bytes.Equal(body, u.img.data[2:10]) {
		t.Errorf("status %d body %q, want 206 and the range", status, body)
	}
	if cdnHits.Load() != 1 {
		t.Fatalf("CDN hits = %d, want 1", cdnHits.Load())
	}
	if got := cdnSawAuth.Load().(string); got != "" {
		t.Errorf("CDN received Authorization %q", got)
	}
	if got := cdnRange.Load().(string); got != "bytes=2-9" {
		t.Errorf("CDN received Range %q, want bytes=2-9", got)
	}
}

func TestObserve(t *testing.T) {
	var mu sync.Mutex
	var events []Event
	ts := &tokenService{anonymousOK: true, expiresIn: 300}
	u := newUpstream(t, func(h http.Handler) http.Handler {
		h = ts.wrap(h)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/manifests/") {
				w.Header().Set("RateLimit-Remaining", "99;w=21600")
			}
			h.ServeHTTP(w, r)
		})
	})
	ts.base = u.srv.URL
	c := newTestClient(t, u.srv, Options{Name: "hub", Observe: func(e Event) {
		mu.Lock()
		events = append(events, e)
		mu.Unlock()
	}})
	if _, _, err := fetchBody(t, c, manifestReq(u.img)); err != nil {
		t.Fatal(err)
	}
	type ev struct {
		kind, method string
		status, rl   int
	}
	want := []ev{{"ping", "GET", 401, -1}, {"token", "GET", 200, -1}, {"manifests", "GET", 200, 99}}
	mu.Lock()
	defer mu.Unlock()
	if len(events) != len(want) {
		t.Fatalf("events = %+v, want %d", events, len(want))
	}
	for i, e := range events {
		got := ev{e.Kind, e.Method, e.Status, e.RateLimitRemaining}
		if got != want[i] || e.Upstream != "hub" || e.Err != nil || e.Duration <= 0 {
			t.Errorf("event %d = %+v, want %+v", i, e, want[i])
		}
	}
}

func readAll(t *testing.T, resp *http.Response) []byte {
	t.Helper()
	var b bytes.Buffer
	if _, err := b.ReadFrom(resp.Body); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func trunc(b []byte) []byte { return b[:min(len(b), 64)] }
