package gate_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/pullgate/pullgate/gate"
	"github.com/pullgate/pullgate/gate/scannertest"
)

// tokenRegistry is go-containerregistry's registry in an httptest TLS server, behind a wrapper that
// answers a GET (a pull) only when it carries Authorization: "Bearer <token>". Pushes need no token.
type tokenRegistry struct {
	srv   *httptest.Server
	token string // the whole header value

	mu      sync.Mutex
	pulled  []string // paths of the GETs let through
	refused int
}

func newTokenRegistry(t *testing.T) *tokenRegistry {
	t.Helper()
	tr := &tokenRegistry{token: "Bearer " + randomHex(t)}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	tr.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && r.URL.Path != "/v2/" {
			tr.mu.Lock()
			ok := r.Header.Get("Authorization") == tr.token
			if ok {
				tr.pulled = append(tr.pulled, r.URL.Path)
			} else {
				tr.refused++
			}
			tr.mu.Unlock()
			if !ok {
				w.Header().Set("WWW-Authenticate", `Bearer realm="https://auth.invalid/token"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
				return
			}
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(tr.srv.Close)
	return tr
}

func (tr *tokenRegistry) pulls() ([]string, int) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return slices.Clone(tr.pulled), tr.refused
}

// image is an image pushed to a tokenRegistry, and the scan request for it.
type image struct {
	req    gate.ScanRequest
	config string // its config digest
}

// pushImage pushes a random image as repo:tag and returns the scan request for it, with the registry's
// token.
func pushImage(t *testing.T, tr *tokenRegistry, repo, tag string) image {
	t.Helper()
	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(strings.TrimPrefix(tr.srv.URL, "https://") + "/" + repo + ":" + tag)
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
	mt, err := img.MediaType()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return image{
		req: gate.ScanRequest{
			RegistryURL:   tr.srv.URL,
			Authorization: tr.token,
			Repository:    repo,
			Digest:        d.String(),
			Tag:           tag,
			MediaType:     string(mt),
		},
		config: cfg.String(),
	}
}

func randomHex(t *testing.T) string {
	t.Helper()
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

// recorder is a RoundTripper that records the requests pullgate sends to a scanner.
type recorder struct {
	base http.RoundTripper

	mu   sync.Mutex
	reqs []recorded
}

type recorded struct {
	method, path string
	header       http.Header
	body         []byte
}

func (rc *recorder) RoundTrip(r *http.Request) (*http.Response, error) {
	var body []byte
	if r.Body != nil {
		body, _ = io.ReadAll(r.Body)
		r.Body.Close()
		r.Body = io.NopCloser(bytes.NewReader(body))
	}
	rc.mu.Lock()
	rc.reqs = append(rc.reqs, recorded{method: r.Method, path: r.URL.Path, header: r.Header.Clone(), body: body})
	rc.mu.Unlock()
	return rc.base.RoundTrip(r)
}

func (rc *recorder) requests() []recorded {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return slices.Clone(rc.reqs)
}

// waits is a HarborOptions.Wait that records the waits asked for and returns at once.
type waits struct {
	mu sync.Mutex
	d  []time.Duration
}

func (w *waits) wait(ctx context.Context, d time.Duration) error {
	w.mu.Lock()
	w.d = append(w.d, d)
	w.mu.Unlock()
	return ctx.Err()
}

func (w *waits) all() []time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.d)
}

// harborEnv is a token registry holding one image, a fake scanner that pulls from it, and a Harbor
// client of the fake whose requests are recorded.
type harborEnv struct {
	reg   *tokenRegistry
	img   image
	fake  *scannertest.Scanner
	rec   *recorder
	waits *waits
	// realWait leaves HarborOptions.Wait nil (the package's timer) instead of the recorder.
	realWait bool
}

func newHarborEnv(t *testing.T, o scannertest.Options) *harborEnv {
	t.Helper()
	e := &harborEnv{reg: newTokenRegistry(t), waits: &waits{}}
	e.img = pushImage(t, e.reg, "library/app", "1.0")
	o.Transport = e.reg.srv.Client().Transport
	e.fake = scannertest.New(o)
	t.Cleanup(e.fake.Close)
	e.rec = &recorder{base: e.fake.Client().Transport}
	return e
}

// harbor returns a client of the fake; o.URL and o.Client are filled in, and o.Wait when nil unless
// realWait.
func (e *harborEnv) harbor(t *testing.T, o gate.HarborOptions) *gate.Harbor {
	t.Helper()
	o.URL = e.fake.URL()
	o.Client = &http.Client{Transport: e.rec}
	if o.Wait == nil && !e.realWait {
		o.Wait = e.waits.wait
	}
	h, err := gate.NewHarbor(o)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func findingsOf(fs ...gate.Finding) func(string, string) []gate.Finding {
	return func(string, string) []gate.Finding { return fs }
}

var twoFindings = []gate.Finding{
	{ID: "CVE-2024-0001", Severity: gate.SeverityCritical, Package: "openssl", Version: "3.0.1", FixVersion: "3.0.2"},
	{ID: "CVE-2024-0002", Severity: gate.SeverityNegligible, Package: "zlib", Version: "1.2"},
}

// TestHarborScan runs scans through the fake adapter, which pulls the image from the token registry.
func TestHarborScan(t *testing.T) {
	tests := []struct {
		name         string
		polls        int
		refreshAfter string
		produces     []string
		wantAccept   string
		wantWaits    []time.Duration
	}{
		{name: "report at once", wantAccept: scannertest.MediaTypeReport11},
		{
			// Were the 302s followed as redirects, there would be no waits.
			name: "three 302s with Refresh-After", polls: 3, refreshAfter: "2",
			wantAccept: scannertest.MediaTypeReport11, wantWaits: []time.Duration{2 * time.Second, 2 * time.Second, 2 * time.Second},
		},
		{
			name: "302s without Refresh-After wait PollInterval", polls: 2,
			wantAccept: scannertest.MediaTypeReport11, wantWaits: []time.Duration{7 * time.Second, 7 * time.Second},
		},
		{
			name: "1.1 report preferred when offered second", produces: []string{scannertest.MediaTypeReport10, scannertest.MediaTypeReport11},
			wantAccept: scannertest.MediaTypeReport11,
		},
		{
			name: "1.0 report when it is the only one", produces: []string{scannertest.MediaTypeReport10}, polls: 1, refreshAfter: "1",
			wantAccept: scannertest.MediaTypeReport10, wantWaits: []time.Duration{time.Second},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newHarborEnv(t, scannertest.Options{
				Findings:     findingsOf(twoFindings...),
				Polls:        tt.polls,
				RefreshAfter: tt.refreshAfter,
				Produces:     tt.produces,
				Latency:      5 * time.Millisecond,
				Info:         gate.ScannerInfo{Name: "Trivy", Vendor: "Aqua Security", Version: "0.58.1"},
			})
			before := time.Now()
			h := e.harbor(t, gate.HarborOptions{PollInterval: 7 * time.Second})
			rep, err := h.Scan(t.Context(), e.img.req)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(rep.Findings, twoFindings) {
				t.Errorf("findings %+v, want %+v", rep.Findings, twoFindings)
			}
			if want := (gate.ScannerInfo{Name: "Trivy", Vendor: "Aqua Security", Version: "0.58.1"}); rep.Scanner != want {
				t.Errorf("scanner %+v, want %+v", rep.Scanner, want)
			}
			if rep.GeneratedAt.Before(before.Add(-time.Second)) || rep.GeneratedAt.After(time.Now().Add(time.Second)) {
				t.Errorf("generated at %v, not during the test", rep.GeneratedAt)
			}
			if got := e.waits.all(); !slices.Equal(got, tt.wantWaits) {
				t.Errorf("waits %v, want %v", got, tt.wantWaits)
			}
			if got := e.fake.ReportRequests(); got != tt.polls+1 {
				t.Errorf("%d report requests, want %d", got, tt.polls+1)
			}
			checkHarborRequests(t, e, tt.wantAccept)

			// The fake pulled the manifest and its config from the registry with the registry's token.
			pulled, refused := e.reg.pulls()
			want := []string{"/v2/library/app/manifests/" + e.img.req.Digest, "/v2/library/app/blobs/" + e.img.config}
			if !slices.Equal(pulled, want) || refused != 0 {
				t.Errorf("registry pulls %v (%d refused), want %v", pulled, refused, want)
			}
			if p := e.fake.Pulls(); len(p) != 1 || p[0].Err != nil || p[0].Registry != e.reg.srv.URL {
				t.Errorf("fake's pulls %+v", p)
			}
			if got := e.fake.Last(); got != e.img.req {
				t.Errorf("fake got %+v, want %+v", got, e.img.req)
			}
		})
	}
}

// checkHarborRequests checks what the client sent: metadata, scan request, then report requests with
// the given Accept.
func checkHarborRequests(t *testing.T, e *harborEnv, accept string) {
	t.Helper()
	reqs := e.rec.requests()
	if len(reqs) < 3 {
		t.Fatalf("%d requests, want at least 3", len(reqs))
	}
	if r := reqs[0]; r.method != "GET" || r.path != "/api/v1/metadata" ||
		r.header.Get("Accept") != "application/vnd.scanner.adapter.metadata+json; version=1.0" {
		t.Errorf("first request %s %s Accept %q", r.method, r.path, r.header.Get("Accept"))
	}
	r := reqs[1]
	if r.method != "POST" || r.path != "/api/v1/scan" ||
		r.header.Get("Content-Type") != "application/vnd.scanner.adapter.scan.request+json; version=1.0" ||
		r.header.Get("Accept") != "application/vnd.scanner.adapter.scan.response+json; version=1.0" {
		t.Errorf("scan request %s %s Content-Type %q Accept %q", r.method, r.path, r.header.Get("Content-Type"), r.header.Get("Accept"))
	}
	var body map[string]any
	if err := json.Unmarshal(r.body, &body); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"registry": map[string]any{"url": e.img.req.RegistryURL, "authorization": e.img.req.Authorization},
		"artifact": map[string]any{
			"repository": e.img.req.Repository, "digest": e.img.req.Digest,
			"tag": e.img.req.Tag, "mime_type": e.img.req.MediaType,
		},
		"enabled_capabilities": []any{map[string]any{"type": "vulnerability", "produces_mime_types": []any{accept}}},
	}
	if fmt.Sprint(body) != fmt.Sprint(want) {
		t.Errorf("scan request body\n%s\nwant\n%v", r.body, want)
	}
	for _, r := range reqs[2:] {
		if r.method != "GET" || !strings.HasPrefix(r.path, "/api/v1/scan/") || !strings.HasSuffix(r.path, "/report") ||
			r.header.Get("Accept") != accept {
			t.Errorf("report request %s %s Accept %q, want Accept %q", r.method, r.path, r.header.Get("Accept"), accept)
		}
	}
}

// TestHarborPollWait checks the wait after a 302 for each Refresh-After value.
func TestHarborPollWait(t *testing.T) {
	tests := []struct {
		name         string
		refreshAfter string
		maxPoll      time.Duration
		want         time.Duration
	}{
		{name: "seconds honoured", refreshAfter: "3", want: 3 * time.Second},
		{name: "capped by MaxPollInterval", refreshAfter: "120", maxPoll: 20 * time.Second, want: 20 * time.Second},
		{name: "capped by the default MaxPollInterval", refreshAfter: "3600", want: time.Minute},
		{name: "huge value capped", refreshAfter: "99999999999999999", want: time.Minute},
		{name: "missing is PollInterval", refreshAfter: "", want: 7 * time.Second},
		{name: "not a number is PollInterval", refreshAfter: "soon", want: 7 * time.Second},
		{name: "negative is PollInterval", refreshAfter: "-5", want: 7 * time.Second},
		{name: "zero is the floor", refreshAfter: "0", want: 100 * time.Millisecond},
		{name: "MaxPollInterval below the floor wins", refreshAfter: "0", maxPoll: 10 * time.Millisecond, want: 10 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newHarborEnv(t, scannertest.Options{Polls: 1, RefreshAfter: tt.refreshAfter})
			h := e.harbor(t, gate.HarborOptions{PollInterval: 7 * time.Second, MaxPollInterval: tt.maxPoll})
			if _, err := h.Scan(t.Context(), e.img.req); err != nil {
				t.Fatal(err)
			}
			if got := e.waits.all(); !slices.Equal(got, []time.Duration{tt.want}) {
				t.Errorf("waits %v, want [%v]", got, tt.want)
			}
		})
	}
}

// TestHarborScanFails checks that each way a scan can fail is an error that says why.
func TestHarborScanFails(t *testing.T) {
	tooMany := make([]gate.Finding, gate.MaxFindings+1)
	for i := range tooMany {
		tooMany[i] = gate.Finding{ID: fmt.Sprintf("CVE-%d", i), Severity: gate.SeverityLow}
	}
	tests := []struct {
		name      string
		opts      scannertest.Options
		harbor    gate.HarborOptions
		edit      func(e *harborEnv, r *gate.ScanRequest)
		wantScans int    // scan requests the fake got
		wantOp    string // when not empty, a *gate.ScannerError for this op
		status    int    // and this status
		wantIs    error  // when not nil, errors.Is
		contains  string // the error mentions this
	}{
		{
			name: "scan request refused", opts: scannertest.Options{Fail: scannertest.FailScan},
			wantScans: 1, wantOp: "scan", status: 500, contains: "FailScan",
		},
		{
			name: "report failed", opts: scannertest.Options{Fail: scannertest.FailReport, Polls: 2, RefreshAfter: "1"},
			wantScans: 1, wantOp: "report", status: 500, contains: "FailReport",
		},
		{
			name:      "registry refuses the scanner's token",
			edit:      func(_ *harborEnv, r *gate.ScanRequest) { r.Authorization = "Bearer wrong" },
			wantScans: 1, wantOp: "report", status: 500, contains: "401 Unauthorized",
		},
		{
			name: "report too large", opts: scannertest.Options{Findings: findingsOf(twoFindings...)},
			harbor:    gate.HarborOptions{MaxReportSize: 100},
			wantScans: 1, contains: "more than 100 bytes",
		},
		{
			name: "too many findings", opts: scannertest.Options{Findings: findingsOf(tooMany...)},
			wantScans: 1, contains: "more than 50000",
		},
		{
			name: "report about another digest",
			opts: scannertest.Options{RawReport: func(string, string) []byte {
				return []byte(`{"artifact":{"digest":"sha256:0000"},"vulnerabilities":[]}`)
			}},
			wantScans: 1, contains: "report is about sha256:0000",
		},
		{
			name:      "report without vulnerabilities",
			opts:      scannertest.Options{RawReport: func(string, string) []byte { return []byte(`{"error":{"message":"x"}}`) }},
			wantScans: 1, contains: `no "vulnerabilities"`,
		},
		{
			name:      "report not JSON",
			opts:      scannertest.Options{RawReport: func(string, string) []byte { return []byte(`<html>`) }},
			wantScans: 1, contains: "invalid character",
		},
		{
			name:      "report with a bad generated_at",
			opts:      scannertest.Options{RawReport: func(string, string) []byte { return []byte(`{"generated_at":"yesterday","vulnerabilities":[]}`) }},
			wantScans: 1, contains: "generated_at",
		},
		{
			name:      "media type not consumed",
			edit:      func(_ *harborEnv, r *gate.ScanRequest) { r.MediaType = "application/vnd.oci.image.index.v1+json" },
			wantScans: 0, wantIs: gate.ErrNotScannable, contains: "does not consume application/vnd.oci.image.index.v1+json",
		},
		{
			name: "adapter Authorization missing", opts: scannertest.Options{Authorization: "Bearer adapter-secret"},
			wantScans: 0, wantOp: "metadata", status: 401,
		},
		{
			name: "adapter Authorization wrong", opts: scannertest.Options{Authorization: "Bearer adapter-secret"},
			harbor:    gate.HarborOptions{Authorization: "Bearer not-it"},
			wantScans: 0, wantOp: "metadata", status: 401,
		},
		{
			name: "adapter unreachable", edit: func(e *harborEnv, _ *gate.ScanRequest) { e.fake.Close() },
			wantScans: 0, contains: "connect",
		},
		{
			name: "incomplete request", edit: func(_ *harborEnv, r *gate.ScanRequest) { r.Digest = "" },
			wantScans: 0, contains: "needs a registry URL, a repository and a digest",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newHarborEnv(t, tt.opts)
			req := e.img.req
			if tt.edit != nil {
				tt.edit(e, &req)
			}
			h := e.harbor(t, tt.harbor)
			rep, err := h.Scan(t.Context(), req)
			if err == nil {
				t.Fatalf("scan succeeded: %+v", rep)
			}
			t.Log(err)
			if tt.wantOp != "" {
				var se *gate.ScannerError
				if !errors.As(err, &se) || se.Op != tt.wantOp || se.StatusCode != tt.status {
					t.Errorf("error %v, want a ScannerError of %s with status %d", err, tt.wantOp, tt.status)
				}
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("error %v is not %v", err, tt.wantIs)
			}
			if !strings.Contains(err.Error(), tt.contains) {
				t.Errorf("error %q does not say %q", err, tt.contains)
			}
			if !strings.Contains(err.Error(), req.Digest) {
				t.Errorf("error %q does not name the digest", err)
			}
			if strings.Contains(err.Error(), e.reg.token) {
				t.Errorf("error %q holds the registry token", err)
			}
			if got := e.fake.Scans(); got != tt.wantScans {
				t.Errorf("fake got %d scan requests, want %d", got, tt.wantScans)
			}
		})
	}
}

// TestHarborReportParsing checks how report fields are read: severities outside the scale are Unknown,
// a null list is a clean report, a missing generated_at is Now and a missing scanner is the metadata's.
func TestHarborReportParsing(t *testing.T) {
	now := time.Date(2026, 11, 26, 7, 41, 0, 0, time.UTC)
	info := gate.ScannerInfo{Name: "Meta", Vendor: "V", Version: "2"}
	tests := []struct {
		name  string
		body  string
		want  gate.Report
		fails bool
	}{
		{
			name: "severities in any case, unknown names are Unknown",
			body: `{"generated_at":"2026-01-02T03:04:05.5Z","scanner":{"name":"S","vendor":"X","version":"9"},"vulnerabilities":[
				{"id":"a","severity":"CRITICAL"},{"id":"b","severity":"high"},{"id":"c","severity":"Extreme"},
				{"id":"d","severity":""},{"id":"e","severity":"None"},{"id":"f","severity":"negligible"},{"id":"g"},
				{"id":"h","severity":"Medium","package":"p","version":"1","fix_version":"2","description":"ignored"}]}`,
			want: gate.Report{
				Scanner:     gate.ScannerInfo{Name: "S", Vendor: "X", Version: "9"},
				GeneratedAt: time.Date(2026, 1, 2, 3, 4, 5, 5e8, time.UTC),
				Findings: []gate.Finding{
					{ID: "a", Severity: gate.SeverityCritical}, {ID: "b", Severity: gate.SeverityHigh},
					{ID: "c", Severity: gate.SeverityUnknown}, {ID: "d", Severity: gate.SeverityUnknown},
					{ID: "e", Severity: gate.SeverityUnknown}, {ID: "f", Severity: gate.SeverityNegligible},
					{ID: "g", Severity: gate.SeverityUnknown},
					{ID: "h", Severity: gate.SeverityMedium, Package: "p", Version: "1", FixVersion: "2"},
				},
			},
		},
		{name: "null vulnerabilities is clean", body: `{"vulnerabilities":null}`, want: gate.Report{Scanner: info, GeneratedAt: now}},
		{name: "empty vulnerabilities is clean", body: `{"vulnerabilities":[],"scanner":{}}`, want: gate.Report{Scanner: info, GeneratedAt: now}},
		{name: "vulnerabilities not a list", body: `{"vulnerabilities":{}}`, fails: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newHarborEnv(t, scannertest.Options{Info: info, RawReport: func(string, string) []byte { return []byte(tt.body) }})
			h := e.harbor(t, gate.HarborOptions{Now: func() time.Time { return now }})
			rep, err := h.Scan(t.Context(), e.img.req)
			if tt.fails {
				if err == nil {
					t.Fatalf("scan succeeded: %+v", rep)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if rep.Scanner != tt.want.Scanner || !rep.GeneratedAt.Equal(tt.want.GeneratedAt) || !slices.Equal(rep.Findings, tt.want.Findings) {
				t.Errorf("report\n%+v\nwant\n%+v", rep, tt.want)
			}
		})
	}
}

// TestHarborWaitsForContext checks that the default wait between report requests ends when ctx does,
// and that Timeout bounds a scan whose report never comes.
func TestHarborWaitsForContext(t *testing.T) {
	t.Run("cancelled while polling", func(t *testing.T) {
		e := newHarborEnv(t, scannertest.Options{Polls: 1000, RefreshAfter: "30"})
		e.realWait = true
		h := e.harbor(t, gate.HarborOptions{})
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		done := make(chan error, 1)
		go func() {
			_, err := h.Scan(ctx, e.img.req)
			done <- err
		}()
		waitUntil(t, func() bool { return e.fake.ReportRequests() == 1 })
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("error %v, want context.Canceled", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Scan still waiting 5s after its context was cancelled")
		}
		if got := e.fake.ReportRequests(); got != 1 {
			t.Errorf("%d report requests, want 1", got)
		}
	})
	t.Run("Timeout", func(t *testing.T) {
		e := newHarborEnv(t, scannertest.Options{Polls: 1 << 30, RefreshAfter: "0"})
		e.realWait = true
		h := e.harbor(t, gate.HarborOptions{MaxPollInterval: time.Millisecond, Timeout: 100 * time.Millisecond})
		start := time.Now()
		_, err := h.Scan(t.Context(), e.img.req)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("error %v, want context.DeadlineExceeded", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("Scan took %v with a 100ms Timeout", d)
		}
		if got := e.fake.ReportRequests(); got < 2 {
			t.Errorf("%d report requests, want several", got)
		}
	})
}

// waitUntil polls cond until it holds, for at most 5s.
func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestHarborAuthorization checks that the adapter's Authorization goes with every request to it.
func TestHarborAuthorization(t *testing.T) {
	const secret = "Bearer adapter-secret"
	e := newHarborEnv(t, scannertest.Options{Authorization: secret, Polls: 2, RefreshAfter: "1"})
	h := e.harbor(t, gate.HarborOptions{Authorization: secret})
	if _, err := h.Scan(t.Context(), e.img.req); err != nil {
		t.Fatal(err)
	}
	reqs := e.rec.requests()
	if len(reqs) != 5 {
		t.Errorf("%d requests, want 5 (metadata, scan, 3 reports)", len(reqs))
	}
	for _, r := range reqs {
		if got := r.header.Get("Authorization"); got != secret {
			t.Errorf("%s %s with Authorization %q", r.method, r.path, got)
		}
	}
}

// TestHarborMisbehavingAdapter runs the client against an adapter that is not the fake: one that echoes
// the credentials it got in its errors, labels its report wrongly or answers with a redirect elsewhere.
func TestHarborMisbehavingAdapter(t *testing.T) {
	const adapterSecret = "Bearer adapter-0123456789"
	const registryToken = "registry-token-9876543210"
	metadata := `{"scanner":{"name":"Odd","version":"1"},"capabilities":[{"consumes_mime_types":["` +
		scannertest.MediaTypeOCIManifest + `"],"produces_mime_types":["` + scannertest.MediaTypeReport11 + `"]}]}`
	tests := []struct {
		name     string
		report   func(w http.ResponseWriter, r *http.Request, scanBody string)
		contains string
	}{
		{
			name: "error echoing credentials",
			report: func(w http.ResponseWriter, r *http.Request, scanBody string) {
				w.Header().Set("Content-Type", "application/vnd.scanner.adapter.error+json; version=1.0")
				w.WriteHeader(http.StatusInternalServerError)
				msg, _ := json.Marshal("got " + r.Header.Get("Authorization") + " and " + scanBody + strings.Repeat("x", 5000))
				fmt.Fprintf(w, `{"error":{"message":%s}}`, msg)
			},
			contains: "HTTP 500 Internal Server Error: got [redacted] and",
		},
		{
			name: "error echoing the bare registry token",
			report: func(w http.ResponseWriter, _ *http.Request, scanBody string) {
				var body struct {
					Registry struct{ Authorization string } `json:"registry"`
				}
				_ = json.Unmarshal([]byte(scanBody), &body)
				_, tok, _ := strings.Cut(body.Registry.Authorization, " ")
				http.Error(w, "token "+tok+" expired", http.StatusInternalServerError)
			},
			contains: "HTTP 500 Internal Server Error: token [redacted] expired",
		},
		{
			name: "plain text error",
			report: func(w http.ResponseWriter, _ *http.Request, _ string) {
				http.Error(w, "upstream\x00 database\nis down", http.StatusBadGateway)
			},
			contains: "HTTP 502 Bad Gateway: upstream  database is down",
		},
		{
			name: "raw report",
			report: func(w http.ResponseWriter, _ *http.Request, _ string) {
				w.Header().Set("Content-Type", "application/vnd.scanner.adapter.vuln.report.raw")
				fmt.Fprint(w, `{"vulnerabilities":[]}`)
			},
			contains: "not a vulnerability report",
		},
		{
			name: "redirect elsewhere",
			report: func(w http.ResponseWriter, r *http.Request, _ string) {
				http.Redirect(w, r, "https://elsewhere.invalid/report", http.StatusTemporaryRedirect)
			},
			contains: "HTTP 307",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var scanBody string
			mux := http.NewServeMux()
			mux.HandleFunc("GET /api/v1/metadata", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, metadata) })
			mux.HandleFunc("POST /api/v1/scan", func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				mu.Lock()
				scanBody = string(b)
				mu.Unlock()
				w.WriteHeader(http.StatusAccepted)
				fmt.Fprint(w, `{"id":"a/b c"}`)
			})
			mux.HandleFunc("GET /api/v1/scan/{id}/report", func(w http.ResponseWriter, r *http.Request) {
				if r.PathValue("id") != "a/b c" {
					http.Error(w, "bad id "+r.PathValue("id"), http.StatusNotFound)
					return
				}
				mu.Lock()
				b := scanBody
				mu.Unlock()
				tt.report(w, r, b)
			})
			srv := httptest.NewTLSServer(mux)
			defer srv.Close()
			h, err := gate.NewHarbor(gate.HarborOptions{URL: srv.URL + "/", Authorization: adapterSecret, Client: srv.Client()})
			if err != nil {
				t.Fatal(err)
			}
			req := gate.ScanRequest{
				RegistryURL: "https://pullgate.example", Authorization: "Bearer " + registryToken,
				Repository: "library/app", Digest: "sha256:abcd", MediaType: scannertest.MediaTypeOCIManifest,
			}
			_, err = h.Scan(t.Context(), req)
			if err == nil {
				t.Fatal("scan succeeded")
			}
			t.Log(err)
			msg := err.Error()
			if !strings.Contains(msg, tt.contains) {
				t.Errorf("error %q does not say %q", msg, tt.contains)
			}
			for _, secret := range []string{"adapter-0123456789", registryToken} {
				if strings.Contains(msg, secret) {
					t.Errorf("error holds %q", secret)
				}
			}
			if len(msg) > 1000 {
				t.Errorf("error of %d bytes", len(msg))
			}
		})
	}
}

// TestHarborMetadata checks what Metadata reads and when it refuses an adapter.
func TestHarborMetadata(t *testing.T) {
	tests := []struct {
		name       string
		opts       scannertest.Options
		wantReport string
		fails      string
	}{
		{name: "both reports", wantReport: scannertest.MediaTypeReport11},
		{name: "1.0 report only", opts: scannertest.Options{Produces: []string{scannertest.MediaTypeReport10}}, wantReport: scannertest.MediaTypeReport10},
		{
			name:  "raw report only",
			opts:  scannertest.Options{Produces: []string{"application/vnd.scanner.adapter.vuln.report.raw"}},
			fails: "produces no vulnerability report pullgate reads",
		},
		{
			name:  "no image manifests",
			opts:  scannertest.Options{Consumes: []string{"application/vnd.cncf.helm.config.v1+json"}},
			fails: "scans no image manifests",
		},
		{name: "Docker manifests only", opts: scannertest.Options{Consumes: []string{scannertest.MediaTypeDockerManifest}}, wantReport: scannertest.MediaTypeReport11},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.Info = gate.ScannerInfo{Name: "Trivy", Vendor: "Aqua Security", Version: "0.58.1"}
			e := newHarborEnv(t, tt.opts)
			md, err := e.harbor(t, gate.HarborOptions{}).Metadata(t.Context())
			if tt.fails != "" {
				if err == nil || !strings.Contains(err.Error(), tt.fails) {
					t.Fatalf("error %v, want one saying %q", err, tt.fails)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if md.ReportType != tt.wantReport || md.Scanner != tt.opts.Info || len(md.Consumes) == 0 || len(md.Produces) == 0 ||
				md.Properties["harbor.scanner-adapter/scanner-type"] != "os-package-vulnerability" {
				t.Errorf("metadata %+v", md)
			}
		})
	}
}

// TestNewHarborURL checks the adapter URLs NewHarbor takes.
func TestNewHarborURL(t *testing.T) {
	tests := []struct {
		url string
		ok  bool
	}{
		{"https://trivy:8443", true},
		{"http://trivy:8080/", true},
		{"https://gw.example/scanners/trivy", true},
		{"", false},
		{"trivy:8080", false},
		{"ftp://trivy", false},
		{"https://", false},
		{"https://user:pass@trivy", false},
		{"https://trivy?x=1", false},
		{"https://trivy#f", false},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			_, err := gate.NewHarbor(gate.HarborOptions{URL: tt.url})
			if (err == nil) != tt.ok {
				t.Errorf("NewHarbor(%q) error %v, want ok %v", tt.url, err, tt.ok)
			}
			if err != nil && strings.Contains(err.Error(), "pass") {
				t.Errorf("error %q holds the password", err)
			}
		})
	}
}
