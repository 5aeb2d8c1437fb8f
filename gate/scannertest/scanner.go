// Package scannertest is a fake vulnerability scanner for tests: an HTTPS server that speaks the Harbor
// pluggable scanner API (as harbor-scanner-trivy does) and pullgate's scanner webhook, and that pulls each
// artifact it is asked to scan from the registry named in the request, with the Authorization given there,
// as a real scanner does. Its findings are whatever the test says.
//
// It does not know vulnerabilities, image layers or pullgate: it checks the manifest and config it pulls
// against their digests and reports the findings the test supplies.
package scannertest

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"sync"
	"time"

	"github.com/pullgate/pullgate/gate"
)

// Fail says which of a Scanner's answers fail on purpose. The values combine with |.
type Fail int

const (
	// FailScan makes POST /api/v1/scan and the webhook answer 500 with an error body, without pulling.
	FailScan Fail = 1 << iota
	// FailReport makes the report (and the webhook, after its pull) answer 500 with an error body.
	FailReport
)

// The media types a Scanner speaks, spelled as harbor-scanner-trivy spells them.
const (
	MediaTypeReport11       = "application/vnd.security.vulnerability.report; version=1.1"
	MediaTypeReport10       = "application/vnd.scanner.adapter.vuln.report.harbor+json; version=1.0"
	MediaTypeOCIManifest    = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"

	mediaTypeMetadata      = "application/vnd.scanner.adapter.metadata+json; version=1.0"
	mediaTypeScanRequest10 = "application/vnd.scanner.adapter.scan.request+json; version=1.0"
	mediaTypeScanRequest11 = "application/vnd.scanner.adapter.scan.request+json; version=1.1"
	mediaTypeScanResponse  = "application/vnd.scanner.adapter.scan.response+json; version=1.0"
	mediaTypeError         = "application/vnd.scanner.adapter.error+json; version=1.0"
)

// Bounds of the fake's own state.
const (
	maxJobs    = 256  // scan jobs kept for their reports; the oldest is forgotten first
	maxDigests = 1024 // distinct digests ScansOf counts
	maxPulls   = 256  // pulls Pulls remembers, the latest
)

// Options configures a Scanner. The zero value is a scanner that finds nothing and answers at once.
type Options struct {
	// Transport carries the scanner's pulls from registries (it holds the CA that trusts them). Nil means
	// a clone of http.DefaultTransport.
	Transport http.RoundTripper
	// Findings gives the findings of a scan of repository@digest. Nil means none.
	Findings func(repository, digest string) []gate.Finding
	// RawReport, when not nil and returning a non-nil body, gives the report body sent as is instead of
	// the one built from Findings (malformed, oversized or odd reports).
	RawReport func(repository, digest string) []byte
	// Latency is how long a scan takes from its request to its report, the pull included.
	Latency time.Duration
	// Polls is how many times the report of each scan answers 302 before the report itself; the report
	// request after those waits until the scan is done.
	Polls int
	// RefreshAfter is the Refresh-After header value sent with each 302 ("1" for one second). Empty
	// means no header.
	RefreshAfter string
	// Fail makes answers fail on purpose.
	Fail Fail
	// Info names the scanner in its metadata and reports. The zero value means "Fake", "pullgate",
	// "1.0.0".
	Info gate.ScannerInfo
	// Authorization, when not empty, is the Authorization header value every request to the scanner's
	// API (Harbor and webhook) must carry; others get 401.
	Authorization string
	// Produces are the report media types the metadata offers. Nil means MediaTypeReport11 and
	// MediaTypeReport10.
	Produces []string
	// Consumes are the artifact media types the metadata accepts. Nil means MediaTypeOCIManifest and
	// MediaTypeDockerManifest.
	Consumes []string
}

// Pull is one pull the scanner made for a scan.
type Pull struct {
	Registry   string
	Repository string
	Digest     string
	// Err is nil when the manifest and its config were pulled and matched their digests.
	Err error
}

// Scanner is a running fake scanner. It is safe for concurrent use.
type Scanner struct {
	srv  *httptest.Server
	pull *http.Client
	quit chan struct{} // closed by Close

	mu         sync.Mutex
	closed     bool
	wg         sync.WaitGroup // scan jobs running
	opts       Options
	jobs       map[string]*job
	order      []string // job ids, oldest first
	maxJobs    int
	scans      int
	scansOf    map[string]int
	last       gate.ScanRequest
	pulls      []Pull
	reportGets int
}

// New starts a Scanner on an httptest TLS server. Close it when done.
func New(opts Options) *Scanner {
	if opts.Info == (gate.ScannerInfo{}) {
		opts.Info = gate.ScannerInfo{Name: "Fake", Vendor: "pullgate", Version: "1.0.0"}
	}
	if opts.Produces == nil {
		opts.Produces = []string{MediaTypeReport11, MediaTypeReport10}
	}
	if opts.Consumes == nil {
		opts.Consumes = []string{MediaTypeOCIManifest, MediaTypeDockerManifest}
	}
	tr := opts.Transport
	if tr == nil {
		tr = http.DefaultTransport.(*http.Transport).Clone()
	}
	s := &Scanner{
		pull:    &http.Client{Transport: tr, Timeout: time.Minute},
		quit:    make(chan struct{}),
		opts:    opts,
		jobs:    make(map[string]*job),
		maxJobs: maxJobs,
		scansOf: make(map[string]int),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/metadata", s.authorized(s.metadata))
	mux.HandleFunc("POST /api/v1/scan", s.authorized(s.acceptScan))
	mux.HandleFunc("GET /api/v1/scan/{id}/report", s.authorized(s.report))
	mux.HandleFunc("POST /webhook", s.authorized(s.webhook))
	s.srv = httptest.NewTLSServer(mux)
	return s
}

// URL is the base URL of the Harbor API (the API is under URL() + "/api/v1").
func (s *Scanner) URL() string { return s.srv.URL }

// WebhookURL is where the webhook form is served.
func (s *Scanner) WebhookURL() string { return s.srv.URL + "/webhook" }

// Client is an HTTP client that trusts the scanner's certificate.
func (s *Scanner) Client() *http.Client { return s.srv.Client() }

// Certificate is the scanner's self-signed certificate, to trust it.
func (s *Scanner) Certificate() *x509.Certificate { return s.srv.Certificate() }

// Close stops the server, ends the scans in progress (their reports fail) and waits for them. A closed
// Scanner refuses connections, which is how a test makes a scanner unreachable.
func (s *Scanner) Close() {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.quit)
	}
	s.mu.Unlock()
	s.srv.Close()
	s.wg.Wait()
}

// SetFindings replaces Options.Findings for the scans that finish from now on.
func (s *Scanner) SetFindings(f func(repository, digest string) []gate.Finding) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opts.Findings = f
}

// SetFail replaces Options.Fail for the answers given from now on.
func (s *Scanner) SetFail(f Fail) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opts.Fail = f
}

// SetLatency replaces Options.Latency for the scans requested from now on.
func (s *Scanner) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opts.Latency = d
}

// SetPolls replaces Options.Polls for the scans requested from now on.
func (s *Scanner) SetPolls(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opts.Polls = n
}

// Scans is how many well-formed scan requests the scanner received (Harbor and webhook, failed ones
// included).
func (s *Scanner) Scans() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.scans
}

// ScansOf is how many of those were for digest. Only the first 1024 distinct digests are counted.
func (s *Scanner) ScansOf(digest string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.scansOf[digest]
}

// Last is the last well-formed scan request received, credentials included, so that a test can try them
// elsewhere.
func (s *Scanner) Last() gate.ScanRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// Pulls are the pulls made so far, oldest first (the latest 256).
func (s *Scanner) Pulls() []Pull {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Pull(nil), s.pulls...)
}

// ReportRequests is how many report requests (GET /api/v1/scan/{id}/report) the scanner received.
func (s *Scanner) ReportRequests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reportGets
}

// record counts a well-formed scan request.
func (s *Scanner) record(r gate.ScanRequest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scans++
	if _, ok := s.scansOf[r.Digest]; ok || len(s.scansOf) < maxDigests {
		s.scansOf[r.Digest]++
	}
	s.last = r
}

// recordPull remembers a pull.
func (s *Scanner) recordPull(p Pull) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.pulls) == maxPulls {
		s.pulls = append(s.pulls[:0], s.pulls[1:]...)
	}
	s.pulls = append(s.pulls, p)
}

// settings is a copy of the options in force.
func (s *Scanner) settings() Options {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.opts
}

// stopping returns a context that ends with parent or when the Scanner closes.
func (s *Scanner) stopping(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(parent)
	go func() {
		select {
		case <-s.quit:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
