package gate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"time"
	"unicode"
)

// The media types of the Harbor pluggable scanner API that pullgate speaks.
const (
	mediaTypeMetadata     = "application/vnd.scanner.adapter.metadata+json; version=1.0"
	mediaTypeScanRequest  = "application/vnd.scanner.adapter.scan.request+json; version=1.0"
	mediaTypeScanResponse = "application/vnd.scanner.adapter.scan.response+json; version=1.0"
	mediaTypeError        = "application/vnd.scanner.adapter.error+json; version=1.0"
	// mediaTypeReport11 is the vulnerability report of API 1.1 and later, preferred when offered.
	mediaTypeReport11 = "application/vnd.security.vulnerability.report; version=1.1"
	// mediaTypeReport10 is the older vulnerability report, the same shape under another name.
	mediaTypeReport10 = "application/vnd.scanner.adapter.vuln.report.harbor+json; version=1.0"

	mediaTypeOCIManifest    = "application/vnd.oci.image.manifest.v1+json"
	mediaTypeDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
)

// Bounds on what a scanner sends besides the report itself.
const (
	defaultMaxReportSize = 32 << 20
	maxSmallBody         = 1 << 20  // metadata and scan responses
	maxErrorBody         = 64 << 10 // bytes of an error answer read for its message
	maxErrorMessage      = 512      // runes of a scanner's message kept in an error
	maxScanID            = 1024     // bytes of a scan request id
)

// ScannerError is a scanner's answer other than the one asked for: a refusal or a failure, with the HTTP
// status and the scanner's own message. The message is bounded and never holds the Authorization values
// pullgate sent.
type ScannerError struct {
	// Op is what was asked: "metadata", "scan", "report" or "webhook".
	Op string
	// StatusCode is the HTTP status the scanner answered.
	StatusCode int
	// Message is the scanner's message (the "error.message" of its error body, or the start of a body
	// that is not one), or empty when it gave none.
	Message string
}

// Error says which request failed, with which status and the scanner's message.
func (e *ScannerError) Error() string {
	s := fmt.Sprintf("%s request: HTTP %d", e.Op, e.StatusCode)
	if t := http.StatusText(e.StatusCode); t != "" {
		s += " " + t
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// wireScanRequest is the scan request body of the Harbor API, also the webhook's request body.
type wireScanRequest struct {
	Registry            wireRegistry     `json:"registry"`
	Artifact            wireArtifact     `json:"artifact"`
	EnabledCapabilities []wireCapability `json:"enabled_capabilities,omitempty"`
}

type wireRegistry struct {
	URL           string `json:"url"`
	Authorization string `json:"authorization,omitempty"`
}

type wireArtifact struct {
	Repository string `json:"repository"`
	Digest     string `json:"digest"`
	Tag        string `json:"tag,omitempty"`
	MimeType   string `json:"mime_type,omitempty"`
}

type wireCapability struct {
	Type              string   `json:"type,omitempty"`
	ConsumesMimeTypes []string `json:"consumes_mime_types,omitempty"`
	ProducesMimeTypes []string `json:"produces_mime_types,omitempty"`
}

func newWireScanRequest(r ScanRequest) wireScanRequest {
	return wireScanRequest{
		Registry: wireRegistry{URL: r.RegistryURL, Authorization: r.Authorization},
		Artifact: wireArtifact{Repository: r.Repository, Digest: r.Digest, Tag: r.Tag, MimeType: r.MediaType},
	}
}

// wireReport is the vulnerability report of the Harbor API (both of its media types), also the
// webhook's answer.
type wireReport struct {
	GeneratedAt     string          `json:"generated_at"`
	Artifact        *wireArtifact   `json:"artifact"`
	Scanner         *ScannerInfo    `json:"scanner"`
	Vulnerabilities json.RawMessage `json:"vulnerabilities"`
}

type wireFinding struct {
	ID         string `json:"id"`
	Package    string `json:"package"`
	Version    string `json:"version"`
	FixVersion string `json:"fix_version"`
	Severity   string `json:"severity"`
}

type wireError struct {
	Error *struct {
		Message string `json:"message"`
	} `json:"error"`
}

// parseReport reads a vulnerability report about the artifact r names. A severity it does not know is
// Unknown; a report without "vulnerabilities" (so that another JSON document is never read as a clean
// report), about another digest, with more than MaxFindings findings or with a generated_at that is not
// RFC 3339 is an error. A missing generated_at is now; a missing scanner is fallback.
func parseReport(body []byte, r ScanRequest, fallback ScannerInfo, now time.Time) (Report, error) {
	var w wireReport
	if err := json.Unmarshal(body, &w); err != nil {
		return Report{}, fmt.Errorf("report: %w", err)
	}
	if w.Vulnerabilities == nil {
		return Report{}, errors.New(`report: no "vulnerabilities"`)
	}
	if w.Artifact != nil && w.Artifact.Digest != "" && w.Artifact.Digest != r.Digest {
		return Report{}, fmt.Errorf("report is about %s, not %s", bounded(w.Artifact.Digest), r.Digest)
	}
	var vulns []wireFinding
	if err := json.Unmarshal(w.Vulnerabilities, &vulns); err != nil {
		return Report{}, fmt.Errorf("report vulnerabilities: %w", err)
	}
	if len(vulns) > MaxFindings {
		return Report{}, fmt.Errorf("report holds %d findings, more than %d", len(vulns), MaxFindings)
	}
	rep := Report{Scanner: fallback, GeneratedAt: now}
	if w.Scanner != nil && *w.Scanner != (ScannerInfo{}) {
		rep.Scanner = *w.Scanner
	}
	if w.GeneratedAt != "" {
		t, err := time.Parse(time.RFC3339Nano, w.GeneratedAt)
		if err != nil {
			return Report{}, fmt.Errorf("report generated_at: %w", err)
		}
		rep.GeneratedAt = t
	}
	if len(vulns) > 0 {
		rep.Findings = make([]Finding, len(vulns))
	}
	for i, v := range vulns {
		rep.Findings[i] = Finding{
			ID:         v.ID,
			Severity:   reportSeverity(v.Severity),
			Package:    v.Package,
			Version:    v.Version,
			FixVersion: v.FixVersion,
		}
	}
	return rep, nil
}

// reportSeverity reads a finding's severity: a name outside the API's scale (None and the empty string
// included) is Unknown, as the API says of a priority the scanner did not recognise.
func reportSeverity(s string) Severity {
	v, err := ParseSeverity(s)
	if err != nil || v == SeverityNone {
		return SeverityUnknown
	}
	return v
}

// errTooLarge is returned by readCapped for a body over its cap.
var errTooLarge = errors.New("answer too large")

// readCapped reads all of r, failing with errTooLarge past max bytes.
func readCapped(r io.Reader, max int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%w: more than %d bytes", errTooLarge, max)
	}
	return b, nil
}

// statusError turns an answer with an unexpected status into a *ScannerError carrying the scanner's
// message, read from at most maxErrorBody bytes, with every one of secrets removed.
func statusError(op string, resp *http.Response, secrets ...string) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	msg := string(body)
	var w wireError
	if json.Unmarshal(body, &w) == nil && w.Error != nil {
		msg = w.Error.Message
	}
	return &ScannerError{Op: op, StatusCode: resp.StatusCode, Message: bounded(redact(msg, secrets))}
}

// redact removes each secret from s, and the credential part of one that has a scheme ("Bearer x").
func redact(s string, secrets []string) string {
	for _, sec := range secrets {
		if sec == "" {
			continue
		}
		s = strings.ReplaceAll(s, sec, "[redacted]")
		if _, cred, ok := strings.Cut(sec, " "); ok && len(cred) >= 4 {
			s = strings.ReplaceAll(s, cred, "[redacted]")
		}
	}
	return s
}

// bounded keeps at most maxErrorMessage printable runes of s, on one line.
func bounded(s string) string {
	var b strings.Builder
	n := 0
	for _, r := range strings.TrimSpace(s) {
		if n == maxErrorMessage {
			b.WriteString("…")
			break
		}
		if !unicode.IsPrint(r) {
			r = ' '
		}
		b.WriteRune(r)
		n++
	}
	return b.String()
}

// withContextError makes a scan's error wrap ctx's error when ctx is done, so that a scan that was
// cancelled or ran out of time says so whatever failed first (an answer can race with its connection's
// close).
func withContextError(ctx context.Context, err error) error {
	if err == nil || ctx.Err() == nil || errors.Is(err, ctx.Err()) {
		return err
	}
	return fmt.Errorf("%w: %w", context.Cause(ctx), err)
}

// sameMediaType says whether a and b name the same media type with the same version parameter.
func sameMediaType(a, b string) bool {
	ta, pa, err := mime.ParseMediaType(a)
	if err != nil {
		return false
	}
	tb, pb, err := mime.ParseMediaType(b)
	if err != nil {
		return false
	}
	return ta == tb && pa["version"] == pb["version"]
}

// noRedirects copies c (or def when c is nil) so that it returns a redirect as it is: a 302 is the
// Harbor API's "not ready yet", and a scanner's credentials are never sent anywhere else.
func noRedirects(c *http.Client, def func() *http.Client) *http.Client {
	var cc http.Client
	if c != nil {
		cc = *c
	} else {
		cc = *def()
	}
	cc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &cc
}

// defaultTransport is a clone of http.DefaultTransport with bounded handshakes and headers.
func defaultTransport(responseHeader time.Duration) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSHandshakeTimeout = 10 * time.Second
	t.ResponseHeaderTimeout = responseHeader
	t.MaxResponseHeaderBytes = 1 << 20
	return t
}
