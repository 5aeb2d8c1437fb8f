package proxy

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullgate/pullgate/cache"
	"github.com/pullgate/pullgate/upstream"
)

func (h *Handler) serveBlob(w *recorder, r *http.Request, req *request) error {
	d, err := parseDigest(req.ref)
	if err != nil {
		return err
	}
	req.digest = d.String()
	for attempt := 1; ; attempt++ {
		f, obj, err := h.opts.Cache.Content(d)
		if err == nil {
			defer f.Close()
			if err := h.confirmLink(r.Context(), req, kindBlobs, d); err != nil {
				return err
			}
			if err := h.gateManifestAsBlob(r.Context(), req, d, obj.MediaType); err != nil {
				return err
			}
			req.cache = "hit"
			h.opts.Cache.Touch(d)
			return h.serveCached(w, r, d, f, obj.Size)
		}
		if !errors.Is(err, cache.ErrNotFound) {
			return err
		}
		req.cache = "miss"
		if err := h.checkBlobMissing(req, d); err != nil {
			return err
		}
		if r.Method == http.MethodHead {
			return h.headBlobUpstream(w, r, req, d)
		}
		fl, err := h.startFill(r.Context(), req, d)
		if err != nil {
			return err
		}
		if fl == nil {
			continue // the fill finished between our look-up and startFill: it is in the cache now
		}
		err = h.serveFromFill(w, r, req, d, fl)
		h.leaveFill(fl)
		if attempt < maxFillAttempts && w.status == 0 && h.retryOwnFill(req, fl, err) {
			continue
		}
		return err
	}
}

// maxFillAttempts bounds how often one request starts over after joining fills that failed for reasons of
// the client that started them.
const maxFillAttempts = 3

// blobMissingRef is the negative-cache reference of a blob the upstream said a repository does not hold; it
// cannot collide with a tag or with a manifest digest.
func blobMissingRef(d v1.Hash) string { return "blobs/" + d.String() }

// checkBlobMissing answers BLOB_UNKNOWN while the upstream's 404 for d in req's repository is remembered,
// unless a manifest of the repository has referenced d since.
func (h *Handler) checkBlobMissing(req *request, d v1.Hash) error {
	c := h.opts.Cache
	missing, err := c.Missing(req.up.Name, req.repo, blobMissingRef(d))
	if err != nil || !missing {
		return err
	}
	if linked, err := c.Linked(req.up.Name, req.repo, d); err != nil || linked {
		return err
	}
	return errorf(codeBlobUnknown, "blob %s is unknown to upstream %s in %s (remembered for up to %s)", d, req.up.Name, req.repo, h.opts.NegativeTTL)
}

// rememberBlobMissing records the upstream's 404 for d in req's repository for NegativeTTL.
func (h *Handler) rememberBlobMissing(req *request, d v1.Hash, err error) {
	var se *upstream.StatusError
	if !errors.As(err, &se) || se.Status != http.StatusNotFound {
		return
	}
	if err := h.opts.Cache.SetMissing(req.up.Name, req.repo, blobMissingRef(d), h.opts.Now().Add(h.opts.NegativeTTL)); err != nil {
		h.opts.Log.Error("remembering a missing blob", "error", err)
	}
}

// headBlobUpstream answers a HEAD for a blob that is not cached from the upstream's HEAD, without fetching it.
func (h *Handler) headBlobUpstream(w *recorder, r *http.Request, req *request, d v1.Hash) error {
	resp, err := h.fetch(r.Context(), req, http.MethodHead, kindBlobs, d.String(), nil)
	if err != nil {
		h.rememberBlobMissing(req, d, err)
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

// serveCached sends a cached blob with http.ServeContent: ranges (several too), HEAD, and the conditional
// requests that match the digest ETag (If-None-Match, If-Range). A malformed or unsatisfiable range is a 416
// with an OCI body and Content-Range: bytes */size.
func (h *Handler) serveCached(w *recorder, r *http.Request, d v1.Hash, content io.ReadSeeker, size int64) error {
	hdr := w.Header()
	hdr.Set("Content-Type", "application/octet-stream")
	hdr.Set("Docker-Content-Digest", d.String())
	hdr.Set("Etag", `"`+d.String()+`"`)
	if rg := r.Header.Get("Range"); rg != "" && !strings.Contains(rg, ",") {
		// One range is checked here, more strictly than ServeContent does (it serves "bytes=" whole).
		if _, _, _, err := parseRange(rg, size); err != nil {
			hdr.Set("Content-Range", fmt.Sprintf("bytes */%d", size))
			return err
		}
	}
	before := w.bytes
	rw := &rangeRefusal{recorder: w}
	http.ServeContent(rw, r, "", time.Time{}, content)
	h.opts.Metrics.BytesServed.WithLabelValues("cache").Add(float64(w.bytes - before))
	if rw.refused {
		return errorf(codeRangeInvalid, "Range %q is not satisfiable for a blob of %d bytes", r.Header.Get("Range"), size)
	}
	return nil
}

// rangeRefusal passes a response through, except ServeContent's plain-text 416, which it swallows so that
// the caller can answer with an OCI error instead.
type rangeRefusal struct {
	*recorder
	refused bool
}

func (x *rangeRefusal) WriteHeader(code int) {
	if code == http.StatusRequestedRangeNotSatisfiable {
		x.refused = true
		return
	}
	x.recorder.WriteHeader(code)
}

func (x *rangeRefusal) Write(p []byte) (int, error) {
	if x.refused {
		return len(p), nil
	}
	return x.recorder.Write(p)
}

// ReadFrom copies the body ServeContent sends with copyBuffered's large buffers.
func (x *rangeRefusal) ReadFrom(src io.Reader) (int64, error) { return copyBuffered(x, src) }

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
