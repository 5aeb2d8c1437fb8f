package gate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// WebhookOptions configures a Webhook. Only URL is required.
type WebhookOptions struct {
	// URL is where scan requests are posted, "https://scanner.internal/scan". It must be http or https,
	// without user information, query or fragment. Required.
	URL string
	// Authorization is the Authorization header value sent with every scan request. Empty means none. It
	// never appears in an error.
	Authorization string
	// Client sends the requests. Nil means a client with 10s connection and TLS handshake timeouts and no
	// other limit than Timeout (a scan is answered when it is done). Its redirect policy is replaced: a
	// redirect is an error, never followed.
	Client *http.Client
	// MaxReportSize is the largest report body read, in bytes; a larger one fails the scan. Zero means
	// 32 MiB.
	MaxReportSize int64
	// Timeout bounds one Scan, request to report. Zero means 15m.
	Timeout time.Duration
	// Now is the clock; a report without generated_at is dated Now(). Nil means time.Now.
	Now func() time.Time
}

func (o WebhookOptions) withDefaults() WebhookOptions {
	if o.MaxReportSize <= 0 {
		o.MaxReportSize = defaultMaxReportSize
	}
	if o.Timeout <= 0 {
		o.Timeout = defaultScanTimeout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Webhook is a client of an in-house scanner that answers a scan request synchronously, in one HTTP
// exchange.
//
// For each scan, pullgate sends POST to URL with "Content-Type: application/json", "Accept:
// application/json", the configured Authorization header if any, and the body of the Harbor pluggable
// scanner API's scan request:
//
//	{"registry": {"url": "https://pullgate.example.com", "authorization": "Bearer <token>"},
//	 "artifact": {"repository": "docker.io/library/nginx", "digest": "sha256:…", "tag": "1.27",
//	              "mime_type": "application/vnd.oci.image.manifest.v1+json"}}
//
// The scanner pulls the artifact from registry.url with the distribution API (GET
// /v2/<repository>/manifests/<digest>, then the blobs it names), sending registry.authorization as the
// Authorization header exactly as given (it is omitted when pullgate needs none; tag and mime_type are
// omitted when unknown). It answers when the scan is done. A 200 answer is the report: a JSON body
// (Content-Type application/json, or one of the Harbor API's vulnerability report types) in the shape of
// the Harbor API's vulnerability report:
//
//	{"scanner": {"name": "…", "vendor": "…", "version": "…"},
//	 "generated_at": "2026-11-26T07:41:00Z",
//	 "artifact": {"digest": "sha256:…"},
//	 "vulnerabilities": [{"id": "CVE-2024-0001", "package": "openssl", "version": "3.0.1",
//	                      "fix_version": "3.0.2", "severity": "High"}]}
//
// "vulnerabilities" is required; an empty array or null means nothing was found. A severity is one of
// Unknown, Negligible, Low, Medium, High and Critical in any letter case; any other is read as Unknown.
// "generated_at" (RFC 3339) is optional and defaults to the time the answer arrived; "artifact" is
// optional and, when its digest is given, must be the digest asked for; "scanner" is optional. A report
// holds at most MaxFindings findings and MaxReportSize bytes.
//
// Any other status fails the scan. The error holds the status and the scanner's message: "message" of a
// body {"error": {"message": "…"}}, else the start of the body. Redirects are not followed.
//
// Nothing is retried; a scan unanswered after Timeout fails. A Webhook is safe for concurrent use.
type Webhook struct {
	opts   WebhookOptions
	url    string
	host   string
	client *http.Client
}

var _ Scanner = (*Webhook)(nil)

// NewWebhook returns a client of the scanner at opts.URL. It does not contact the scanner.
func NewWebhook(opts WebhookOptions) (*Webhook, error) {
	u, host, err := scannerURL(opts.URL)
	if err != nil {
		return nil, fmt.Errorf("scanner webhook: %w", err)
	}
	opts = opts.withDefaults()
	return &Webhook{
		opts: opts,
		url:  u,
		host: host,
		client: noRedirects(opts.Client, func() *http.Client {
			return &http.Client{Transport: defaultTransport(0)}
		}),
	}, nil
}

// Scan posts the scan request and reads the report from the answer. See Webhook.
func (w *Webhook) Scan(ctx context.Context, r ScanRequest) (Report, error) {
	rep, err := w.scan(ctx, r)
	if err != nil {
		return Report{}, fmt.Errorf("scanner webhook %s: scan of %s@%s: %w", w.host, r.Repository, r.Digest, err)
	}
	return rep, nil
}

func (w *Webhook) scan(ctx context.Context, r ScanRequest) (_ Report, err error) {
	if r.RegistryURL == "" || r.Repository == "" || r.Digest == "" {
		return Report{}, errors.New("a scan request needs a registry URL, a repository and a digest")
	}
	ctx, cancel := context.WithTimeout(ctx, w.opts.Timeout)
	defer cancel()
	defer func() { err = withContextError(ctx, err) }()
	body, err := json.Marshal(newWireScanRequest(r))
	if err != nil {
		return Report{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		return Report{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	if w.opts.Authorization != "" {
		req.Header.Set("Authorization", w.opts.Authorization)
	}
	resp, err := w.client.Do(req)
	if err != nil {
		return Report{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Report{}, statusError("webhook", resp, w.opts.Authorization, r.Authorization)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "" && !readableReportType(ct) {
		return Report{}, fmt.Errorf("the scanner answered %q, not a JSON report", bounded(ct))
	}
	b, err := readCapped(resp.Body, w.opts.MaxReportSize)
	if err != nil {
		return Report{}, fmt.Errorf("report: %w", err)
	}
	return parseReport(b, r, ScannerInfo{}, w.opts.Now())
}
