package gate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// ErrNotScannable is returned by a Scanner asked to scan an artifact of a media type it says it does not
// consume.
var ErrNotScannable = errors.New("the scanner does not scan this media type")

// HarborOptions configures a Harbor client. Only URL is required.
type HarborOptions struct {
	// URL is the adapter's base URL, "https://trivy-adapter:8443"; the API is under URL + "/api/v1". It
	// must be http or https, without user information, query or fragment. Required.
	URL string
	// Authorization is the Authorization header value sent with every request to the adapter ("Bearer
	// <token>", "Basic <credentials>"). Empty means none. It never appears in an error.
	Authorization string
	// Client sends the requests. Nil means a client with 10s connection and TLS handshake timeouts, a
	// 30s wait for response headers and 1m for a whole request. Its redirect policy is replaced: a
	// redirect is returned as it is, never followed.
	Client *http.Client
	// MaxReportSize is the largest report body read, in bytes; a larger one fails the scan. Zero means
	// 32 MiB.
	MaxReportSize int64
	// PollInterval is the wait before asking for a report again after a 302 without a usable
	// Refresh-After header (missing, not a whole number of seconds, or negative). Zero means 5s.
	PollInterval time.Duration
	// MaxPollInterval caps every wait between report requests, whatever Refresh-After says. Zero means 1m.
	MaxPollInterval time.Duration
	// Timeout bounds one Scan as a whole, metadata to report. Zero means 15m.
	Timeout time.Duration
	// Now is the clock; a report without generated_at is dated Now(). Nil means time.Now.
	Now func() time.Time
	// Wait waits d between report requests, returning early with ctx's error when ctx is done. Nil means a
	// timer; tests may record the waits and return at once.
	Wait func(ctx context.Context, d time.Duration) error
}

const (
	defaultPollInterval    = 5 * time.Second
	defaultMaxPollInterval = time.Minute
	defaultScanTimeout     = 15 * time.Minute
	// minPollInterval is the least wait between report requests ("Refresh-After: 0" included), so that an
	// adapter cannot make pullgate spin; MaxPollInterval, when smaller, wins.
	minPollInterval = 100 * time.Millisecond
)

func (o HarborOptions) withDefaults() HarborOptions {
	if o.MaxReportSize <= 0 {
		o.MaxReportSize = defaultMaxReportSize
	}
	if o.PollInterval <= 0 {
		o.PollInterval = defaultPollInterval
	}
	if o.MaxPollInterval <= 0 {
		o.MaxPollInterval = defaultMaxPollInterval
	}
	if o.Timeout <= 0 {
		o.Timeout = defaultScanTimeout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Wait == nil {
		o.Wait = wait
	}
	return o
}

// Harbor is a client of a scanner adapter that implements the Harbor pluggable scanner API v1.1 or v1.2
// (harbor-scanner-trivy and the other adapters Harbor itself uses).
//
// Scan reads the adapter's metadata (GET /api/v1/metadata) to learn which vulnerability report it
// produces, preferring "application/vnd.security.vulnerability.report; version=1.1" to
// "application/vnd.scanner.adapter.vuln.report.harbor+json; version=1.0"; posts the scan request (POST
// /api/v1/scan, "application/vnd.scanner.adapter.scan.request+json; version=1.0", asking for that report
// type in enabled_capabilities); and asks for the report (GET /api/v1/scan/{id}/report with that type in
// Accept) until it is ready: a 302 is asked again after its Refresh-After seconds (PollInterval when it has
// none, at most MaxPollInterval), a 200 is the report, and any other status fails the scan with the
// adapter's error message. A Harbor is safe for concurrent use.
type Harbor struct {
	opts   HarborOptions
	base   string // URL without a trailing slash
	host   string // for errors
	client *http.Client
}

var _ Scanner = (*Harbor)(nil)

// NewHarbor returns a client of the adapter at opts.URL. It does not contact the adapter.
func NewHarbor(opts HarborOptions) (*Harbor, error) {
	base, host, err := scannerURL(opts.URL)
	if err != nil {
		return nil, fmt.Errorf("harbor adapter: %w", err)
	}
	opts = opts.withDefaults()
	return &Harbor{
		opts: opts,
		base: base,
		host: host,
		client: noRedirects(opts.Client, func() *http.Client {
			return &http.Client{Transport: defaultTransport(30 * time.Second), Timeout: time.Minute}
		}),
	}, nil
}

// scannerURL checks a scanner's base URL and returns it without a trailing slash, and its host.
func scannerURL(s string) (base, host string, err error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", "", fmt.Errorf("URL: %w", err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return "", "", fmt.Errorf("URL %q: the scheme must be http or https", s)
	case u.Host == "":
		return "", "", fmt.Errorf("URL %q: no host", s)
	case u.User != nil:
		return "", "", errors.New("URL: user information is not allowed (use Authorization)")
	case u.RawQuery != "" || u.Fragment != "":
		return "", "", fmt.Errorf("URL %q: a query or fragment is not allowed", s)
	}
	return strings.TrimSuffix(u.String(), "/"), u.Host, nil
}

// Metadata is what an adapter says of itself, as pullgate reads it.
type Metadata struct {
	// Scanner names the scanner.
	Scanner ScannerInfo
	// Consumes are the artifact media types its vulnerability capabilities consume.
	Consumes []string
	// Produces are the report media types its vulnerability capabilities produce.
	Produces []string
	// ReportType is the report media type pullgate asks for, as the adapter spells it: the API 1.1
	// vulnerability report when offered, else the 1.0 Harbor report.
	ReportType string
	// Properties are the adapter's free-form properties (vulnerability database dates and the like).
	Properties map[string]string
}

type wireMetadata struct {
	Scanner      ScannerInfo       `json:"scanner"`
	Capabilities []wireCapability  `json:"capabilities"`
	Properties   map[string]string `json:"properties"`
}

// Metadata asks the adapter what it is and what it scans. It fails when the adapter's vulnerability
// capabilities consume neither OCI nor Docker v2 image manifests, or produce no report pullgate reads.
func (h *Harbor) Metadata(ctx context.Context) (Metadata, error) {
	md, err := h.metadata(ctx)
	if err != nil {
		return Metadata{}, fmt.Errorf("harbor adapter %s: %w", h.host, err)
	}
	return md, nil
}

func (h *Harbor) metadata(ctx context.Context) (Metadata, error) {
	resp, err := h.do(ctx, http.MethodGet, "/api/v1/metadata", nil, "", mediaTypeMetadata)
	if err != nil {
		return Metadata{}, fmt.Errorf("metadata: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Metadata{}, statusError("metadata", resp, h.opts.Authorization)
	}
	body, err := readCapped(resp.Body, maxSmallBody)
	if err != nil {
		return Metadata{}, fmt.Errorf("metadata: %w", err)
	}
	var w wireMetadata
	if err := json.Unmarshal(body, &w); err != nil {
		return Metadata{}, fmt.Errorf("metadata: %w", err)
	}
	md := Metadata{Scanner: w.Scanner, Properties: w.Properties}
	for _, c := range w.Capabilities {
		if c.Type != "" && c.Type != "vulnerability" {
			continue
		}
		md.Consumes = append(md.Consumes, c.ConsumesMimeTypes...)
		md.Produces = append(md.Produces, c.ProducesMimeTypes...)
	}
	if !containsMediaType(md.Consumes, mediaTypeOCIManifest) && !containsMediaType(md.Consumes, mediaTypeDockerManifest) {
		return Metadata{}, fmt.Errorf("metadata: %s scans no image manifests (it consumes %s)",
			md.Scanner, bounded(strings.Join(md.Consumes, ", ")))
	}
	for _, want := range []string{mediaTypeReport11, mediaTypeReport10} {
		for _, p := range md.Produces {
			if sameMediaType(p, want) {
				md.ReportType = p
				return md, nil
			}
		}
	}
	return Metadata{}, fmt.Errorf("metadata: %s produces no vulnerability report pullgate reads (it produces %s)",
		md.Scanner, bounded(strings.Join(md.Produces, ", ")))
}

func containsMediaType(list []string, mt string) bool {
	for _, l := range list {
		if sameMediaType(l, mt) {
			return true
		}
	}
	return false
}

// Scan asks the adapter to scan the artifact r names and waits for its report. See Harbor.
func (h *Harbor) Scan(ctx context.Context, r ScanRequest) (Report, error) {
	rep, err := h.scan(ctx, r)
	if err != nil {
		return Report{}, fmt.Errorf("harbor adapter %s: scan of %s@%s: %w", h.host, r.Repository, r.Digest, err)
	}
	return rep, nil
}

func (h *Harbor) scan(ctx context.Context, r ScanRequest) (_ Report, err error) {
	if r.RegistryURL == "" || r.Repository == "" || r.Digest == "" {
		return Report{}, errors.New("a scan request needs a registry URL, a repository and a digest")
	}
	ctx, cancel := context.WithTimeout(ctx, h.opts.Timeout)
	defer cancel()
	defer func() { err = withContextError(ctx, err) }()

	md, err := h.metadata(ctx)
	if err != nil {
		return Report{}, err
	}
	if r.MediaType != "" && !containsMediaType(md.Consumes, r.MediaType) {
		return Report{}, fmt.Errorf("%w: %s does not consume %s", ErrNotScannable, md.Scanner, r.MediaType)
	}
	id, err := h.submit(ctx, r, md.ReportType)
	if err != nil {
		return Report{}, err
	}
	path := "/api/v1/scan/" + url.PathEscape(id) + "/report"
	for {
		resp, err := h.do(ctx, http.MethodGet, path, nil, "", md.ReportType)
		if err != nil {
			return Report{}, fmt.Errorf("report: %w", err)
		}
		switch resp.StatusCode {
		case http.StatusOK:
			defer resp.Body.Close()
			return h.readReport(resp, r, md)
		case http.StatusFound:
			d := h.pollWait(resp.Header.Get("Refresh-After"))
			drain(resp)
			if err := h.opts.Wait(ctx, d); err != nil {
				return Report{}, fmt.Errorf("waiting for the report: %w", err)
			}
		default:
			err := statusError("report", resp, h.opts.Authorization, r.Authorization)
			drain(resp)
			return Report{}, err
		}
	}
}

// submit posts the scan request and returns the adapter's id for it.
func (h *Harbor) submit(ctx context.Context, r ScanRequest, reportType string) (string, error) {
	w := newWireScanRequest(r)
	w.EnabledCapabilities = []wireCapability{{Type: "vulnerability", ProducesMimeTypes: []string{reportType}}}
	body, err := json.Marshal(w)
	if err != nil {
		return "", fmt.Errorf("scan: %w", err)
	}
	resp, err := h.do(ctx, http.MethodPost, "/api/v1/scan", body, mediaTypeScanRequest, mediaTypeScanResponse)
	if err != nil {
		return "", fmt.Errorf("scan: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return "", statusError("scan", resp, h.opts.Authorization, r.Authorization)
	}
	b, err := readCapped(resp.Body, maxSmallBody)
	if err != nil {
		return "", fmt.Errorf("scan: %w", err)
	}
	var sr struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(b, &sr); err != nil {
		return "", fmt.Errorf("scan response: %w", err)
	}
	if sr.ID == "" || len(sr.ID) > maxScanID {
		return "", fmt.Errorf("scan response: an id of %d bytes (want 1 to %d)", len(sr.ID), maxScanID)
	}
	return sr.ID, nil
}

// readReport reads and parses a 200 answer to a report request.
func (h *Harbor) readReport(resp *http.Response, r ScanRequest, md Metadata) (Report, error) {
	if ct := resp.Header.Get("Content-Type"); ct != "" && !readableReportType(ct) {
		return Report{}, fmt.Errorf("report: the adapter answered %q, not a vulnerability report", bounded(ct))
	}
	body, err := readCapped(resp.Body, h.opts.MaxReportSize)
	if err != nil {
		return Report{}, fmt.Errorf("report: %w", err)
	}
	return parseReport(body, r, md.Scanner, h.opts.Now())
}

// readableReportType says whether a report's Content-Type is one pullgate parses: either vulnerability
// report type, or plain JSON from an adapter that does not label its answers.
func readableReportType(ct string) bool {
	if t, _, err := mime.ParseMediaType(ct); err == nil && t == "application/json" {
		return true
	}
	return sameMediaType(ct, mediaTypeReport11) || sameMediaType(ct, mediaTypeReport10)
}

// pollWait is how long to wait after a 302 with the given Refresh-After value.
func (h *Harbor) pollWait(refreshAfter string) time.Duration {
	d := h.opts.PollInterval
	if n, err := strconv.ParseInt(strings.TrimSpace(refreshAfter), 10, 64); err == nil && n >= 0 {
		if n > int64(h.opts.MaxPollInterval/time.Second) {
			d = h.opts.MaxPollInterval
		} else {
			d = time.Duration(n) * time.Second
		}
	}
	d = max(d, minPollInterval)
	return min(d, h.opts.MaxPollInterval)
}

// do sends one request to the adapter.
func (h *Harbor) do(ctx context.Context, method, path string, body []byte, contentType, accept string) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, h.base+path, rd)
	if err != nil {
		return nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Accept", accept)
	if h.opts.Authorization != "" {
		req.Header.Set("Authorization", h.opts.Authorization)
	}
	return h.client.Do(req)
}

// drain reads a little of an unwanted body so its connection can be reused, and closes it.
func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
	resp.Body.Close()
}

// wait is the default HarborOptions.Wait.
func wait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}
