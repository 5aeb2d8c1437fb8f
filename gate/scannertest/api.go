package scannertest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/pullgate/pullgate/gate"
)

// job is one scan accepted through the Harbor API. Its fields below done are written once, before done
// is closed.
type job struct {
	req         gate.ScanRequest
	reportTypes []string // asked for in enabled_capabilities; nil: any the scanner produces
	polls       int      // 302s answered so far, under Scanner.mu

	done   chan struct{}
	err    error  // the scan failed (the pull)
	report []byte // the report body
}

type wireScanRequest struct {
	Registry *struct {
		URL           string `json:"url"`
		Authorization string `json:"authorization"`
	} `json:"registry"`
	Artifact *struct {
		Repository string `json:"repository"`
		Digest     string `json:"digest"`
		Tag        string `json:"tag"`
		MimeType   string `json:"mime_type"`
	} `json:"artifact"`
	EnabledCapabilities []struct {
		Type              string   `json:"type"`
		ProducesMimeTypes []string `json:"produces_mime_types"`
	} `json:"enabled_capabilities"`
}

type wireArtifact struct {
	Repository string `json:"repository"`
	Digest     string `json:"digest"`
	Tag        string `json:"tag,omitempty"`
	MimeType   string `json:"mime_type,omitempty"`
}

type wireFinding struct {
	ID         string `json:"id"`
	Package    string `json:"package"`
	Version    string `json:"version"`
	FixVersion string `json:"fix_version,omitempty"`
	Severity   string `json:"severity"`
}

type wireReport struct {
	GeneratedAt     string           `json:"generated_at"`
	Artifact        wireArtifact     `json:"artifact"`
	Scanner         gate.ScannerInfo `json:"scanner"`
	Severity        string           `json:"severity,omitempty"`
	Vulnerabilities []wireFinding    `json:"vulnerabilities"`
}

type wireCapability struct {
	Type     string   `json:"type"`
	Consumes []string `json:"consumes_mime_types"`
	Produces []string `json:"produces_mime_types"`
}

// authorized wraps h with the check of Options.Authorization.
func (s *Scanner) authorized(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		want := s.settings().Authorization
		if want != "" && r.Header.Get("Authorization") != want {
			writeError(w, http.StatusUnauthorized, "the scanner's API needs its Authorization")
			return
		}
		h(w, r)
	}
}

func (s *Scanner) metadata(w http.ResponseWriter, _ *http.Request) {
	o := s.settings()
	writeJSON(w, http.StatusOK, mediaTypeMetadata, map[string]any{
		"scanner":      o.Info,
		"capabilities": []wireCapability{{Type: "vulnerability", Consumes: o.Consumes, Produces: o.Produces}},
		"properties": map[string]string{
			"harbor.scanner-adapter/scanner-type": "os-package-vulnerability",
		},
	})
}

// parseScanRequest reads and checks a scan request body, answering the client itself when it is not one.
func parseScanRequest(w http.ResponseWriter, r *http.Request) (gate.ScanRequest, *wireScanRequest, bool) {
	var wr wireScanRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&wr); err != nil {
		writeError(w, http.StatusBadRequest, "unmarshalling scan request: "+err.Error())
		return gate.ScanRequest{}, nil, false
	}
	var bad string
	switch {
	case wr.Registry == nil || wr.Registry.URL == "":
		bad = "missing registry.url"
	case wr.Artifact == nil || wr.Artifact.Repository == "":
		bad = "missing artifact.repository"
	case wr.Artifact.Digest == "":
		bad = "missing artifact.digest"
	}
	if bad == "" {
		if u, err := url.ParseRequestURI(wr.Registry.URL); err != nil || (u.Scheme != "https" && u.Scheme != "http") {
			bad = "invalid registry.url"
		}
	}
	if bad != "" {
		writeError(w, http.StatusUnprocessableEntity, bad)
		return gate.ScanRequest{}, nil, false
	}
	return gate.ScanRequest{
		RegistryURL:   wr.Registry.URL,
		Authorization: wr.Registry.Authorization,
		Repository:    wr.Artifact.Repository,
		Digest:        wr.Artifact.Digest,
		Tag:           wr.Artifact.Tag,
		MediaType:     wr.Artifact.MimeType,
	}, &wr, true
}

func (s *Scanner) acceptScan(w http.ResponseWriter, r *http.Request) {
	ct := r.Header.Get("Content-Type")
	if !sameMediaType(ct, mediaTypeScanRequest10) && !sameMediaType(ct, mediaTypeScanRequest11) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("unsupported scan request media type %q", ct))
		return
	}
	req, wr, ok := parseScanRequest(w, r)
	if !ok {
		return
	}
	o := s.settings()
	var types []string
	for _, c := range wr.EnabledCapabilities {
		if c.Type != "vulnerability" {
			writeError(w, http.StatusUnprocessableEntity, fmt.Sprintf("unsupported capability %q", c.Type))
			return
		}
		if len(c.ProducesMimeTypes) == 0 {
			writeError(w, http.StatusBadRequest, `"enabled_capabilities.produces_mime_types" is missing`)
			return
		}
		for _, p := range c.ProducesMimeTypes {
			if !containsMediaType(o.Produces, p) {
				writeError(w, http.StatusUnprocessableEntity, fmt.Sprintf("unsupported report media type %q", p))
				return
			}
		}
		types = append(types, c.ProducesMimeTypes...)
	}
	s.record(req)
	if o.Fail&FailScan != 0 {
		writeError(w, http.StatusInternalServerError, "enqueuing scan job: refused (FailScan)")
		return
	}

	j := &job{req: req, reportTypes: types, done: make(chan struct{})}
	id := newID()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		writeError(w, http.StatusServiceUnavailable, "the scanner is closing")
		return
	}
	if len(s.order) == s.maxJobs {
		delete(s.jobs, s.order[0])
		s.order = s.order[1:]
	}
	s.jobs[id] = j
	s.order = append(s.order, id)
	s.wg.Add(1)
	s.mu.Unlock()

	go func() {
		defer s.wg.Done()
		ctx, cancel := s.stopping(context.Background())
		defer cancel()
		j.report, j.err = s.run(ctx, req, o.Latency)
		close(j.done)
	}()
	writeJSON(w, http.StatusAccepted, mediaTypeScanResponse, map[string]string{"id": id})
}

// run does one scan: pulls the artifact, waits out the latency and builds the report.
func (s *Scanner) run(ctx context.Context, req gate.ScanRequest, latency time.Duration) ([]byte, error) {
	start := time.Now()
	err := s.pullArtifact(ctx, req)
	s.recordPull(Pull{Registry: req.RegistryURL, Repository: req.Repository, Digest: req.Digest, Err: err})
	if err != nil {
		return nil, err
	}
	if rest := latency - time.Since(start); rest > 0 {
		t := time.NewTimer(rest)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return nil, fmt.Errorf("scan interrupted: %w", ctx.Err())
		}
	}
	o := s.settings()
	if o.RawReport != nil {
		if b := o.RawReport(req.Repository, req.Digest); b != nil {
			return b, nil
		}
	}
	var findings []gate.Finding
	if o.Findings != nil {
		findings = o.Findings(req.Repository, req.Digest)
	}
	rep := wireReport{
		GeneratedAt:     time.Now().UTC().Format(time.RFC3339Nano),
		Artifact:        wireArtifact{Repository: req.Repository, Digest: req.Digest, Tag: req.Tag, MimeType: req.MediaType},
		Scanner:         o.Info,
		Vulnerabilities: make([]wireFinding, 0, len(findings)),
	}
	var top gate.Severity
	for _, f := range findings {
		top = max(top, f.Severity)
		rep.Vulnerabilities = append(rep.Vulnerabilities, wireFinding{
			ID: f.ID, Package: f.Package, Version: f.Version, FixVersion: f.FixVersion, Severity: f.Severity.String(),
		})
	}
	if len(findings) > 0 {
		rep.Severity = top.String()
	}
	return json.Marshal(rep)
}

func (s *Scanner) report(w http.ResponseWriter, r *http.Request) {
	o := s.settings()
	accept := r.Header.Get("Accept")
	i := slices.IndexFunc(o.Produces, func(p string) bool { return sameMediaType(p, accept) })
	if i < 0 {
		writeError(w, http.StatusNotImplemented, fmt.Sprintf("unsupported report media type %q", accept))
		return
	}
	contentType := o.Produces[i]

	s.mu.Lock()
	s.reportGets++
	j := s.jobs[r.PathValue("id")]
	var poll bool
	if j != nil && j.polls < o.Polls {
		j.polls++
		poll = true
	}
	s.mu.Unlock()
	switch {
	case j == nil:
		writeError(w, http.StatusNotFound, "cannot find scan job: "+r.PathValue("id"))
		return
	case j.reportTypes != nil && !containsMediaType(j.reportTypes, accept):
		// harbor-scanner-trivy keeps a job's reports under the media types it was asked for.
		writeError(w, http.StatusNotFound, fmt.Sprintf("cannot find scan job: %s (%s)", r.PathValue("id"), accept))
		return
	case poll:
		w.Header().Set("Location", r.URL.String())
		if o.RefreshAfter != "" {
			w.Header().Set("Refresh-After", o.RefreshAfter)
		}
		w.WriteHeader(http.StatusFound)
		return
	}
	select {
	case <-j.done:
	case <-r.Context().Done():
		panic(http.ErrAbortHandler) // as in webhook
	case <-s.quit:
		writeError(w, http.StatusServiceUnavailable, "the scanner is closing")
		return
	}
	switch {
	case s.settings().Fail&FailReport != 0:
		writeError(w, http.StatusInternalServerError, "scan job failed: analysis refused (FailReport)")
	case j.err != nil:
		writeError(w, http.StatusInternalServerError, j.err.Error())
	default:
		w.Header().Set("Content-Type", contentType)
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(j.report)
	}
}

// webhook is the synchronous form: the answer to the scan request is the report.
func (s *Scanner) webhook(w http.ResponseWriter, r *http.Request) {
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct != "application/json" {
		writeError(w, http.StatusUnsupportedMediaType, "a scan request is application/json")
		return
	}
	req, _, ok := parseScanRequest(w, r)
	if !ok {
		return
	}
	s.record(req)
	o := s.settings()
	if o.Fail&FailScan != 0 {
		writeError(w, http.StatusInternalServerError, "scan refused (FailScan)")
		return
	}
	ctx, cancel := s.stopping(r.Context())
	defer cancel()
	report, err := s.run(ctx, req, o.Latency)
	switch {
	case r.Context().Err() != nil:
		// The client went away: send nothing rather than an empty 200, which a client whose context ended
		// can still read, its connection's close racing with the answer.
		panic(http.ErrAbortHandler)
	case s.settings().Fail&FailReport != 0:
		writeError(w, http.StatusInternalServerError, "scan failed: analysis refused (FailReport)")
	case err != nil:
		writeError(w, http.StatusInternalServerError, err.Error())
	default:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(report)
	}
}

func writeJSON(w http.ResponseWriter, status int, contentType string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.Header().Set("Content-Type", contentType)
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// writeError answers with the Harbor API's error body.
func writeError(w http.ResponseWriter, status int, msg string) {
	b, _ := json.Marshal(map[string]map[string]string{"error": {"message": msg}})
	w.Header().Set("Content-Type", mediaTypeError)
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// sameMediaType says whether a and b are the same media type with the same version parameter.
func sameMediaType(a, b string) bool {
	ta, pa, err := mime.ParseMediaType(a)
	if err != nil {
		return false
	}
	tb, pb, err := mime.ParseMediaType(b)
	return err == nil && ta == tb && pa["version"] == pb["version"]
}

func containsMediaType(list []string, mt string) bool {
	return slices.ContainsFunc(list, func(l string) bool { return sameMediaType(l, mt) })
}
