package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullgate/pullgate/cache"
)

func (h *Handler) serveBlob(w *recorder, r *http.Request, req *request) error {
	d, err := parseDigest(req.ref)
	if err != nil {
		return err
	}
	req.digest = d.String()
	for {
		f, obj, err := h.opts.Cache.Content(d)
		if err == nil {
			defer f.Close()
			if err := h.confirmLink(r.Context(), req, kindBlobs, d); err != nil {
				return err
			}
			req.cache = "hit"
			h.opts.Cache.Touch(d)
			return h.serveBlobFrom(w, r, d, f, obj.Size, "cache")
		}
		if !errors.Is(err, cache.ErrNotFound) {
			return err
		}
		req.cache = "miss"
		if r.Method == http.MethodHead {
			return h.headBlobUpstream(w, r, req, d)
		}
		fl, err := h.startFill(r.Context(), req, d)
		if err != nil {
			return err
		}
		if fl != nil {
			return h.serveFromFill(w, r, req, d, fl)
		}
		// The fill finished between our look-up and startFill: it is in the cache now.
	}
}

// headBlobUpstream answers a HEAD for a blob that is not cached from the upstream's HEAD, without fetching it.
func (h *Handler) headBlobUpstream(w *recorder, r *http.Request, req *request, d v1.Hash) error {
	resp, err := h.fetch(r.Context(), req, http.MethodHead, kindBlobs, d.String(), nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if err := h.opts.Cache.Link(req.up.Name, req.repo, d); err != nil {
		return err
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "application/octet-stream")
	hdr.Set("Docker-Content-Digest", d.String())
	if resp.ContentLength >= 0 {
		hdr.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

// serveBlobFrom sends a cached blob, or the one range the client asked for. Headers go out only once the
// range is known to be satisfiable.
func (h *Handler) serveBlobFrom(w *recorder, r *http.Request, d v1.Hash, src io.ReaderAt, size int64, source string) error {
	start, length, err := h.writeBlobHeaders(w, r, d, size)
	if err != nil || r.Method == http.MethodHead {
		return err
	}
	n, err := copyBuffered(w, io.NewSectionReader(src, start, length))
	h.opts.Metrics.BytesServed.WithLabelValues(source).Add(float64(n))
	return err
}

// writeBlobHeaders validates the Range header against size (-1: unknown, Range is then ignored) and writes the
// status and headers. It returns the byte range to send.
func (h *Handler) writeBlobHeaders(w *recorder, r *http.Request, d v1.Hash, size int64) (start, length int64, err error) {
	hdr := w.Header()
	hdr.Set("Content-Type", "application/octet-stream")
	hdr.Set("Docker-Content-Digest", d.String())
	hdr.Set("Etag", `"`+d.String()+`"`)
	length = size
	ranged := false
	if size >= 0 {
		hdr.Set("Accept-Ranges", "bytes")
		start, length, ranged, err = parseRange(r.Header.Get("Range"), size)
		if err != nil {
			hdr.Set("Content-Range", fmt.Sprintf("bytes */%d", size))
			return 0, 0, err
		}
	}
	if length >= 0 {
		hdr.Set("Content-Length", strconv.FormatInt(length, 10))
	}
	if ranged {
		hdr.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, start+length-1, size))
		w.WriteHeader(http.StatusPartialContent)
	} else {
		w.WriteHeader(http.StatusOK)
	}
	return start, length, nil
}

// parseRange parses a Range header holding one byte range ("bytes=a-b", "bytes=a-", "bytes=-n") against a
// blob of size bytes. ranged is false when there is no Range header, or more than one range (the whole blob is
// then sent, as HTTP allows). A malformed or unsatisfiable range is an error for a 416.
func parseRange(s string, size int64) (start, length int64, ranged bool, err error) {
	if s == "" {
		return 0, size, false, nil
	}
	spec, ok := strings.CutPrefix(s, "bytes=")
	if !ok {
		return 0, 0, false, errorf(codeRangeInvalid, "unsupported Range %q: only bytes ranges are served", s)
	}
	if strings.Contains(spec, ",") {
		return 0, size, false, nil
	}
	first, last, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return 0, 0, false, errorf(codeRangeInvalid, "malformed Range %q", s)
	}
	num := func(v string) (int64, bool) {
		if v == "" || strings.Trim(v, "0123456789") != "" {
			return 0, false
		}
		n, err := strconv.ParseInt(v, 10, 64)
		return n, err == nil
	}
	switch {
	case first == "": // the last n bytes
		n, ok := num(last)
		if !ok || n == 0 {
			return 0, 0, false, errorf(codeRangeInvalid, "malformed or empty suffix Range %q", s)
		}
		n = min(n, size)
		if n == 0 {
			return 0, 0, false, errorf(codeRangeInvalid, "Range %q is not satisfiable for a blob of %d bytes", s, size)
		}
		return size - n, n, true, nil
	default:
		a, ok := num(first)
		if !ok {
			return 0, 0, false, errorf(codeRangeInvalid, "malformed Range %q", s)
		}
		if a >= size {
			return 0, 0, false, errorf(codeRangeInvalid, "Range %q starts at or past the end of a blob of %d bytes", s, size)
		}
		b := size - 1
		if last != "" {
			if b, ok = num(last); !ok || b < a {
				return 0, 0, false, errorf(codeRangeInvalid, "malformed Range %q", s)
			}
			b = min(b, size-1)
		}
		return a, b - a + 1, true, nil
	}
}

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

func copyBuffered(dst io.Writer, src io.Reader) (int64, error) {
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	return io.CopyBuffer(struct{ io.Writer }{dst}, src, *bp)
}

// fills tracks the blob fills in progress, one per digest (DESIGN invariant 3).
type fills struct {
	mu sync.Mutex
	m  map[v1.Hash]*fill
}

// fill is one upstream download of a blob into the cache, which any number of clients stream from.
type fill struct {
	up, repo string        // who started it; another repository must be confirmed before joining
	ready    chan struct{} // closed once the upstream answered (w and size are set) or failed (err is set)
	w        *cache.Writer
	size     int64
	err      error
}

// startFill returns the fill of d in progress, or starts one. It returns nil when d is in the cache by now.
func (h *Handler) startFill(ctx context.Context, req *request, d v1.Hash) (*fill, error) {
	h.fills.mu.Lock()
	defer h.fills.mu.Unlock()
	if f := h.fills.m[d]; f != nil {
		return f, nil
	}
	if _, err := h.opts.Cache.Stat(d); err == nil {
		return nil, nil
	} else if !errors.Is(err, cache.ErrNotFound) {
		return nil, err
	}
	if h.fills.m == nil {
		h.fills.m = map[v1.Hash]*fill{}
	}
	f := &fill{up: req.up.Name, repo: req.repo, ready: make(chan struct{})}
	h.fills.m[d] = f
	fctx, done := h.detached(ctx)
	go func() {
		defer done()
		h.runFill(fctx, &request{up: req.up, repo: req.repo}, d, f)
		h.fills.mu.Lock()
		delete(h.fills.m, d)
		h.fills.mu.Unlock()
	}()
	return f, nil
}

// runFill downloads d into the cache. It runs on its own context: clients that leave do not stop it.
func (h *Handler) runFill(ctx context.Context, req *request, d v1.Hash, f *fill) {
	m := h.opts.Metrics
	m.FillsInFlight.Inc()
	defer m.FillsInFlight.Dec()
	resp, err := h.fetch(ctx, req, http.MethodGet, kindBlobs, d.String(), nil)
	if err == nil && resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		err = &apiError{code: codeUnknown, status: http.StatusBadGateway, message: fmt.Sprintf("upstream %s answered a blob GET with %s", req.up.Name, resp.Status)}
	}
	if err == nil {
		f.size = resp.ContentLength
		f.w, err = h.opts.Cache.NewWriter(d, "", resp.ContentLength)
		if err != nil {
			resp.Body.Close()
		}
	}
	if err != nil {
		f.err = err
		close(f.ready)
		return
	}
	defer resp.Body.Close()
	close(f.ready)
	if err := h.opts.Cache.Link(req.up.Name, req.repo, d); err != nil {
		h.opts.Log.Error("linking a blob", "digest", d.String(), "error", err)
	}
	n, err := copyBuffered(f.w, resp.Body)
	m.BytesFetched.WithLabelValues(req.up.Name).Add(float64(n))
	if err != nil {
		err = fmt.Errorf("reading blob %s from upstream %s after %d bytes: %w", d, req.up.Name, n, err)
		f.w.Abort(err)
		h.opts.Log.Warn("fill failed", "upstream", req.up.Name, "repository", req.repo, "digest", d.String(), "error", err)
		return
	}
	if _, err := f.w.Commit(); err != nil {
		var dm *cache.DigestMismatchError
		var sm *cache.SizeMismatchError
		if errors.As(err, &dm) || errors.As(err, &sm) {
			m.DigestMismatches.WithLabelValues(req.up.Name).Inc()
		}
		h.opts.Log.Warn("fill refused", "upstream", req.up.Name, "repository", req.repo, "digest", d.String(), "error", err)
	}
}

// serveFromFill streams a blob to one client while the fill writes it.
func (h *Handler) serveFromFill(w *recorder, r *http.Request, req *request, d v1.Hash, f *fill) error {
	ctx := r.Context()
	if f.up != req.up.Name || f.repo != req.repo {
		if err := h.confirmLink(ctx, req, kindBlobs, d); err != nil {
			return err
		}
	}
	select {
	case <-f.ready:
	case <-ctx.Done():
		return ctx.Err()
	}
	if f.err != nil {
		return f.err
	}
	rd := f.w.NewReader(ctx)
	defer rd.Close()
	start, length, err := h.writeBlobHeaders(w, r, d, f.size)
	if err != nil {
		return err
	}
	if start > 0 {
		if _, err := io.CopyN(io.Discard, rd, start); err != nil {
			return err
		}
	}
	src := io.Reader(rd)
	if length >= 0 {
		src = io.LimitReader(rd, length)
	}
	// Bytes go out as they arrive: headers now, and each chunk when written, not when a buffer fills.
	fw := flushWriter{w: w, rc: http.NewResponseController(w)}
	_ = fw.rc.Flush()
	n, err := copyBuffered(fw, src)
	h.opts.Metrics.BytesServed.WithLabelValues("upstream").Add(float64(n))
	if err == nil && length >= 0 && n < length {
		err = fmt.Errorf("blob %s ended after %d of %d bytes", d, n, length)
	}
	return err
}

// flushWriter flushes the response after every write, for streams whose source is slower than the client.
type flushWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err == nil {
		err = f.rc.Flush()
	}
	return n, err
}
