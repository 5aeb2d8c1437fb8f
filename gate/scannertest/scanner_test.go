package scannertest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/pullgate/pullgate/gate"
)

const token = "Bearer registry-token"

// testRegistry is go-containerregistry's registry in an httptest TLS server that lets a GET through only
// with Authorization token; tamper, when set, rewrites the manifests it serves.
type testRegistry struct {
	srv    *httptest.Server
	mu     sync.Mutex
	tamper bool
}

func newRegistry(t *testing.T) *testRegistry {
	t.Helper()
	tr := &testRegistry{}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	tr.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && r.URL.Path != "/v2/" && r.Header.Get("Authorization") != token {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		tr.mu.Lock()
		tamper := tr.tamper
		tr.mu.Unlock()
		if tamper && strings.Contains(r.URL.Path, "/manifests/") {
			rec := httptest.NewRecorder()
			reg.ServeHTTP(rec, r)
			w.WriteHeader(rec.Code)
			_, _ = w.Write(append(rec.Body.Bytes(), ' '))
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(tr.srv.Close)
	return tr
}

// push pushes a random image as repo:latest and returns the scan request for it.
func (tr *testRegistry) push(t *testing.T, repo string) gate.ScanRequest {
	t.Helper()
	img, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(strings.TrimPrefix(tr.srv.URL, "https://") + "/" + repo + ":latest")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithTransport(tr.srv.Client().Transport)); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return gate.ScanRequest{
		RegistryURL: tr.srv.URL, Authorization: token, Repository: repo, Digest: d.String(),
		Tag: "latest", MediaType: MediaTypeDockerManifest,
	}
}

func newScanner(t *testing.T, tr *testRegistry, o Options) *Scanner {
	t.Helper()
	o.Transport = tr.srv.Client().Transport
	s := New(o)
	t.Cleanup(s.Close)
	return s
}

// call sends one request to the scanner and returns its answer with the body read.
func call(t *testing.T, s *Scanner, method, path string, header map[string]string, body any) (*http.Response, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, s.URL()+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	c := s.Client()
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func scanBody(r gate.ScanRequest, produces ...string) map[string]any {
	m := map[string]any{
		"registry": map[string]string{"url": r.RegistryURL, "authorization": r.Authorization},
		"artifact": map[string]string{"repository": r.Repository, "digest": r.Digest, "tag": r.Tag, "mime_type": r.MediaType},
	}
	if produces != nil {
		m["enabled_capabilities"] = []map[string]any{{"type": "vulnerability", "produces_mime_types": produces}}
	}
	return m
}

var scanHeader = map[string]string{"Content-Type": mediaTypeScanRequest10}

// accept posts a scan request with header (scanHeader when nil) and returns its id.
func accept(t *testing.T, s *Scanner, header map[string]string, body map[string]any) string {
	t.Helper()
	if header == nil {
		header = scanHeader
	}
	resp, b := call(t, s, "POST", "/api/v1/scan", header, body)
	if resp.StatusCode != http.StatusAccepted || resp.Header.Get("Content-Type") != mediaTypeScanResponse {
		t.Fatalf("scan answered %s %q: %s", resp.Status, resp.Header.Get("Content-Type"), b)
	}
	var sr struct{ ID string }
	if err := json.Unmarshal(b, &sr); err != nil || sr.ID == "" {
		t.Fatalf("scan response %s: %v", b, err)
	}
	return sr.ID
}

// errorMessage checks that b is the Harbor API's error body and returns its message.
func errorMessage(t *testing.T, resp *http.Response, b []byte) string {
	t.Helper()
	if ct := resp.Header.Get("Content-Type"); ct != mediaTypeError {
		t.Errorf("error Content-Type %q", ct)
	}
	var e struct {
		Error struct{ Message string } `json:"error"`
	}
	if err := json.Unmarshal(b, &e); err != nil || e.Error.Message == "" {
		t.Errorf("error body %s: %v", b, err)
	}
	return e.Error.Message
}

// TestHarborAPI checks the fake's answers to requests of the Harbor pluggable scanner API, good and bad.
func TestHarborAPI(t *testing.T) {
	tr := newRegistry(t)
	img := tr.push(t, "library/app")
	s := newScanner(t, tr, Options{Polls: 2, RefreshAfter: "1", Authorization: "Bearer adapter",
		Findings: func(repo, digest string) []gate.Finding {
			return []gate.Finding{{ID: "CVE-1", Severity: gate.SeverityHigh, Package: repo, Version: digest[:12]}}
		}})
	auth := func(h map[string]string) map[string]string {
		m := map[string]string{"Authorization": "Bearer adapter"}
		for k, v := range h {
			m[k] = v
		}
		return m
	}

	t.Run("metadata", func(t *testing.T) {
		resp, b := call(t, s, "GET", "/api/v1/metadata", auth(nil), nil)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != mediaTypeMetadata {
			t.Fatalf("%s %q", resp.Status, resp.Header.Get("Content-Type"))
		}
		var md struct {
			Scanner      gate.ScannerInfo
			Capabilities []wireCapability
		}
		if err := json.Unmarshal(b, &md); err != nil {
			t.Fatal(err)
		}
		if md.Scanner.Name != "Fake" || len(md.Capabilities) != 1 || md.Capabilities[0].Type != "vulnerability" ||
			fmt.Sprint(md.Capabilities[0].Produces) != fmt.Sprint([]string{MediaTypeReport11, MediaTypeReport10}) {
			t.Errorf("metadata %s", b)
		}
	})

	bad := []struct {
		name          string
		method, path  string
		header        map[string]string
		body          any
		status        int
		messageHolds  string
		skipAuthorize bool
	}{
		{name: "no adapter Authorization", method: "GET", path: "/api/v1/metadata", status: 401, skipAuthorize: true},
		{name: "scan as plain JSON", method: "POST", path: "/api/v1/scan", header: map[string]string{"Content-Type": "application/json"},
			body: scanBody(img), status: 400, messageHolds: "media type"},
		{name: "scan not JSON", method: "POST", path: "/api/v1/scan", header: scanHeader, body: "x", status: 400, messageHolds: "unmarshalling"},
		{name: "scan without digest", method: "POST", path: "/api/v1/scan", header: scanHeader,
			body:   map[string]any{"registry": map[string]string{"url": img.RegistryURL}, "artifact": map[string]string{"repository": "a"}},
			status: 422, messageHolds: "artifact.digest"},
		{name: "scan with a bad registry URL", method: "POST", path: "/api/v1/scan", header: scanHeader,
			body: scanBody(gate.ScanRequest{RegistryURL: "pullgate:5000", Repository: "a", Digest: "sha256:00"}), status: 422, messageHolds: "registry.url"},
		{name: "scan asking for a raw report", method: "POST", path: "/api/v1/scan", header: scanHeader,
			body: scanBody(img, "application/vnd.scanner.adapter.vuln.report.raw"), status: 422, messageHolds: "unsupported report"},
		{name: "report of an unknown scan", method: "GET", path: "/api/v1/scan/nope/report", header: map[string]string{"Accept": MediaTypeReport11},
			status: 404, messageHolds: "nope"},
		{name: "report in an unsupported type", method: "GET", path: "/api/v1/scan/nope/report", header: map[string]string{"Accept": "application/json"},
			status: 501, messageHolds: "application/json"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			h := tt.header
			if !tt.skipAuthorize {
				h = auth(h)
			}
			before := s.Scans()
			resp, b := call(t, s, tt.method, tt.path, h, tt.body)
			if resp.StatusCode != tt.status {
				t.Fatalf("%s, want %d: %s", resp.Status, tt.status, b)
			}
			if msg := errorMessage(t, resp, b); !strings.Contains(msg, tt.messageHolds) {
				t.Errorf("message %q does not say %q", msg, tt.messageHolds)
			}
			if s.Scans() != before {
				t.Errorf("a bad request counted as a scan")
			}
		})
	}

	t.Run("302s then the report in the type asked for", func(t *testing.T) {
		id := accept(t, s, auth(scanHeader), scanBody(img, MediaTypeReport10))
		path := "/api/v1/scan/" + id + "/report"
		for i := range 2 {
			resp, _ := call(t, s, "GET", path, auth(map[string]string{"Accept": MediaTypeReport10}), nil)
			if resp.StatusCode != http.StatusFound || resp.Header.Get("Refresh-After") != "1" || resp.Header.Get("Location") != path {
				t.Fatalf("poll %d: %s Refresh-After %q Location %q", i, resp.Status, resp.Header.Get("Refresh-After"), resp.Header.Get("Location"))
			}
		}
		// A job keeps its report under the type it was asked for, as harbor-scanner-trivy does.
		if resp, b := call(t, s, "GET", path, auth(map[string]string{"Accept": MediaTypeReport11}), nil); resp.StatusCode != 404 {
			t.Errorf("report in another type: %s %s", resp.Status, b)
		}
		resp, b := call(t, s, "GET", path, auth(map[string]string{"Accept": MediaTypeReport10}), nil)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != MediaTypeReport10 {
			t.Fatalf("%s %q: %s", resp.Status, resp.Header.Get("Content-Type"), b)
		}
		var rep wireReport
		if err := json.Unmarshal(b, &rep); err != nil {
			t.Fatal(err)
		}
		if rep.Artifact.Digest != img.Digest || rep.Scanner.Name != "Fake" || rep.Severity != "High" || len(rep.Vulnerabilities) != 1 ||
			rep.Vulnerabilities[0] != (wireFinding{ID: "CVE-1", Severity: "High", Package: "library/app", Version: img.Digest[:12]}) {
			t.Errorf("report %s", b)
		}
		if _, err := time.Parse(time.RFC3339, rep.GeneratedAt); err != nil {
			t.Errorf("generated_at: %v", err)
		}
	})

	t.Run("report failure set at run time", func(t *testing.T) {
		s.SetPolls(0)
		id := accept(t, s, auth(scanHeader), scanBody(img))
		s.SetFail(FailReport)
		defer s.SetFail(0)
		resp, b := call(t, s, "GET", "/api/v1/scan/"+id+"/report", auth(map[string]string{"Accept": MediaTypeReport11}), nil)
		if resp.StatusCode != 500 || !strings.Contains(errorMessage(t, resp, b), "FailReport") {
			t.Errorf("%s %s", resp.Status, b)
		}
	})
}

// TestPulls checks that the fake pulls what it scans with the Authorization it is given, and that a
// failed pull fails the scan with the registry's status.
func TestPulls(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(r *gate.ScanRequest)
		tamper  bool
		failure string // "" when the pull succeeds
	}{
		{name: "pulled with the token"},
		{name: "wrong token", edit: func(r *gate.ScanRequest) { r.Authorization = "Bearer stolen" }, failure: "registry answered 401 Unauthorized"},
		{name: "no token", edit: func(r *gate.ScanRequest) { r.Authorization = "" }, failure: "registry answered 401 Unauthorized"},
		{name: "unknown digest", edit: func(r *gate.ScanRequest) { r.Digest = "sha256:" + strings.Repeat("0", 64) }, failure: "404"},
		{name: "manifest not matching its digest", tamper: true, failure: "does not match its digest"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := newRegistry(t)
			img := tr.push(t, "team/app")
			tr.mu.Lock()
			tr.tamper = tt.tamper
			tr.mu.Unlock()
			if tt.edit != nil {
				tt.edit(&img)
			}
			s := newScanner(t, tr, Options{})
			id := accept(t, s, nil, scanBody(img))
			resp, b := call(t, s, "GET", "/api/v1/scan/"+id+"/report", map[string]string{"Accept": MediaTypeReport11}, nil)
			pulls := s.Pulls()
			if len(pulls) != 1 || pulls[0].Digest != img.Digest || pulls[0].Repository != "team/app" || pulls[0].Registry != tr.srv.URL {
				t.Fatalf("pulls %+v", pulls)
			}
			if tt.failure == "" {
				if resp.StatusCode != 200 || pulls[0].Err != nil {
					t.Errorf("%s %s, pull error %v", resp.Status, b, pulls[0].Err)
				}
				return
			}
			if resp.StatusCode != 500 || !strings.Contains(errorMessage(t, resp, b), tt.failure) {
				t.Errorf("%s %s, want 500 saying %q", resp.Status, b, tt.failure)
			}
			if pulls[0].Err == nil || !strings.Contains(pulls[0].Err.Error(), tt.failure) {
				t.Errorf("pull error %v, want one saying %q", pulls[0].Err, tt.failure)
			}
		})
	}
}

// TestWebhook checks the synchronous form.
func TestWebhook(t *testing.T) {
	tr := newRegistry(t)
	img := tr.push(t, "library/app")
	s := newScanner(t, tr, Options{Polls: 5, Findings: func(string, string) []gate.Finding {
		return []gate.Finding{{ID: "CVE-2", Severity: gate.SeverityLow}}
	}})
	post := func(t *testing.T, contentType string, body any) (*http.Response, []byte) {
		t.Helper()
		req, _ := json.Marshal(body)
		resp, err := s.Client().Post(s.WebhookURL(), contentType, bytes.NewReader(req))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	resp, b := post(t, "application/json", scanBody(img))
	var rep wireReport
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" || json.Unmarshal(b, &rep) != nil ||
		len(rep.Vulnerabilities) != 1 || rep.Vulnerabilities[0].Severity != "Low" || rep.Artifact.Digest != img.Digest {
		t.Errorf("%s %q %s", resp.Status, resp.Header.Get("Content-Type"), b)
	}
	if resp, b := post(t, mediaTypeScanRequest10, scanBody(img)); resp.StatusCode != http.StatusUnsupportedMediaType {
		t.Errorf("Harbor scan request type: %s %s", resp.Status, b)
	}
	s.SetFail(FailScan)
	if resp, b := post(t, "application/json", scanBody(img)); resp.StatusCode != 500 || !strings.Contains(errorMessage(t, resp, b), "FailScan") {
		t.Errorf("FailScan: %s %s", resp.Status, b)
	}
	if got := s.Scans(); got != 2 {
		t.Errorf("Scans %d, want 2", got)
	}
	if got := s.ScansOf(img.Digest); got != 2 {
		t.Errorf("ScansOf %d, want 2", got)
	}
	if got := len(s.Pulls()); got != 1 {
		t.Errorf("%d pulls, want 1 (FailScan does not pull)", got)
	}
}

// TestBounds checks that the fake's maps and lists stay small.
func TestBounds(t *testing.T) {
	tr := newRegistry(t)
	img := tr.push(t, "library/app")
	s := newScanner(t, tr, Options{})

	s.mu.Lock()
	s.maxJobs = 3
	s.mu.Unlock()
	var ids []string
	for range 5 {
		ids = append(ids, accept(t, s, nil, scanBody(img)))
	}
	s.mu.Lock()
	jobs := len(s.jobs)
	s.mu.Unlock()
	if jobs != 3 {
		t.Errorf("%d jobs kept, want 3", jobs)
	}
	for i, id := range ids {
		resp, _ := call(t, s, "GET", "/api/v1/scan/"+id+"/report", map[string]string{"Accept": MediaTypeReport11}, nil)
		if want := map[bool]int{true: 404, false: 200}[i < 2]; resp.StatusCode != want {
			t.Errorf("job %d: %s, want %d", i, resp.Status, want)
		}
	}

	for i := range maxDigests + 10 {
		s.record(gate.ScanRequest{Digest: fmt.Sprintf("sha256:%d", i)})
		s.recordPull(Pull{Digest: fmt.Sprintf("sha256:%d", i)})
	}
	s.mu.Lock()
	digests, pulls, last := len(s.scansOf), len(s.pulls), s.pulls[len(s.pulls)-1].Digest
	s.mu.Unlock()
	if digests != maxDigests || pulls != maxPulls || last != fmt.Sprintf("sha256:%d", maxDigests+9) {
		t.Errorf("%d digests, %d pulls (last %s)", digests, pulls, last)
	}
	if got := s.Scans(); got != 5+maxDigests+10 {
		t.Errorf("Scans %d", got)
	}
}

// TestClose checks that Close ends scans in progress and the requests waiting for them, and leaves no
// goroutine behind.
func TestClose(t *testing.T) {
	tr := newRegistry(t)
	img := tr.push(t, "library/app")
	before := runtime.NumGoroutine()

	s := New(Options{Transport: tr.srv.Client().Transport, Latency: time.Hour})
	id := accept(t, s, nil, scanBody(img))
	client := s.Client()
	answered := make(chan error, 2)
	go func() {
		req, _ := http.NewRequest("GET", s.URL()+"/api/v1/scan/"+id+"/report", nil)
		req.Header.Set("Accept", MediaTypeReport11)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable {
				err = fmt.Errorf("report %s, want 503", resp.Status)
			}
		}
		answered <- err
	}()
	go func() {
		b, _ := json.Marshal(scanBody(img))
		resp, err := client.Post(s.WebhookURL(), "application/json", bytes.NewReader(b))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusInternalServerError {
				err = fmt.Errorf("webhook %s, want 500", resp.Status)
			}
		}
		answered <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for len(s.Pulls()) < 2 || s.ReportRequests() < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the scans did not start")
		}
		time.Sleep(time.Millisecond)
	}

	closed := make(chan struct{})
	go func() { s.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close still waiting after 5s")
	}
	for range 2 {
		if err := <-answered; err != nil {
			t.Error(err)
		}
	}
	client.CloseIdleConnections()
	tr.srv.Client().CloseIdleConnections()

	for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > before; {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines, %d before New:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(time.Millisecond)
	}
}

// TestClientGone checks that the fake sends nothing, not an empty 200, to a client that went away while
// it waited for a scan.
func TestClientGone(t *testing.T) {
	tr := newRegistry(t)
	img := tr.push(t, "library/app")
	s := newScanner(t, tr, Options{Latency: time.Hour})
	id := accept(t, s, nil, scanBody(img))
	body, _ := json.Marshal(scanBody(img))
	tests := []struct {
		name    string
		handler http.HandlerFunc
		req     func(ctx context.Context) *http.Request
	}{
		{"report", s.report, func(ctx context.Context) *http.Request {
			r := httptest.NewRequestWithContext(ctx, "GET", "/api/v1/scan/"+id+"/report", nil)
			r.SetPathValue("id", id)
			r.Header.Set("Accept", MediaTypeReport11)
			return r
		}},
		{"webhook", s.webhook, func(ctx context.Context) *http.Request {
			r := httptest.NewRequestWithContext(ctx, "POST", "/webhook", bytes.NewReader(body))
			r.Header.Set("Content-Type", "application/json")
			return r
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			rec := httptest.NewRecorder()
			defer func() {
				if p := recover(); p != http.ErrAbortHandler {
					t.Errorf("handler answered %d %q, panicked with %v; want http.ErrAbortHandler", rec.Code, rec.Body, p)
				}
			}()
			tt.handler(rec, tt.req(ctx))
		})
	}
}
