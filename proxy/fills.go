package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sync/semaphore"

	"github.com/pullgate/pullgate/cache"
	"github.com/pullgate/pullgate/upstream"
)

// A fill is one upstream download of a blob into the cache, which any number of clients stream from. Fills are
// bounded three ways: MaxFills in all, MaxFillsPerUpstream per upstream (below the upstream client's own
// concurrency, so that manifests never queue behind fills), and FillTimeout each. A fill that no client reads
// any more stops after AbandonGrace.

// busyRetryAfter is the Retry-After of the 503 answered when a fill slot or a range's verification took too
// long.
const busyRetryAfter = 5 * time.Second

var (
	// errFillAbandoned ends a fill whose clients all went away and did not come back within the grace.
	errFillAbandoned = errors.New("every client went away")
	// errDeclaredSize marks a fill refused because the upstream's Content-Length differs from the size a
	// manifest of the starting repository declared: another repository may declare the true size.
	errDeclaredSize = errors.New("size differs from the declared size")
)

// fills tracks the blob fills in progress, one per digest (one upstream fetch per missing object), and the
// slots that bound them.
type fills struct {
	mu       sync.Mutex
	m        map[v1.Hash]*fill
	all      *semaphore.Weighted            // MaxFills
	upstream map[string]*semaphore.Weighted // MaxFillsPerUpstream, by upstream name (configured ones only)
	prefetch map[string]*semaphore.Weighted // PrefetchConcurrency, by upstream name
	queued   map[string]int                 // prefetch runs waiting or running, by upstream name
}

// fill is one download. Its state moves once from starting to streaming (ready closed) and once to ended
// (done closed); clients wait on those channels and read the bytes through the cache writer's readers.
type fill struct {
	digest   v1.Hash
	up, repo string // who started it; another repository must be confirmed before joining
	declared int64  // the size a manifest of the starting repository declared, -1 when unknown
	cancel   context.CancelCauseFunc

	ready    chan struct{} // closed once the upstream answered (w and size are set) or failed (startErr is set)
	w        *cache.Writer
	size     int64
	startErr error
	done     chan struct{} // closed once the fill ended: stored, or failed (endErr is set)
	endErr   error

	// Guarded by fills.mu: how many clients read the fill, and the grace timer armed when none does.
	waiters   int
	ended     bool
	graceGen  int
	stopGrace func() bool
}

// semaphores returns the fill slots, overall and for upstream up, and up's prefetch slots (nil when
// prefetching is off).
func (h *Handler) semaphores(up string) (all, perUp, prefetch *semaphore.Weighted) {
	fs := &h.fills
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.all == nil {
		fs.all = semaphore.NewWeighted(int64(h.opts.MaxFills))
		fs.upstream = map[string]*semaphore.Weighted{}
		fs.prefetch = map[string]*semaphore.Weighted{}
	}
	if fs.upstream[up] == nil {
		fs.upstream[up] = semaphore.NewWeighted(int64(h.fillsPerUpstream(up)))
		if h.opts.PrefetchConcurrency > 0 {
			fs.prefetch[up] = semaphore.NewWeighted(int64(h.opts.PrefetchConcurrency))
		}
	}
	return fs.all, fs.upstream[up], fs.prefetch[up]
}

// concurrencyLimited is a Fetcher that says how many of its requests may wait for response headers at once.
type concurrencyLimited interface {
	Concurrency() int
}

// fillsPerUpstream is MaxFillsPerUpstream, lowered to half the upstream client's concurrency when the client
// says it and the option would reach it: fills must never hold every slot of the client, or manifests queue.
func (h *Handler) fillsPerUpstream(up string) int {
	n := h.opts.MaxFillsPerUpstream
	if u := h.upstreams[up]; u != nil {
		if c, ok := u.Fetcher.(concurrencyLimited); ok && c.Concurrency() > 0 && n >= c.Concurrency() {
			n = max(1, c.Concurrency()/2)
		}
	}
	return n
}

// fillSlot waits for a fill slot of req's upstream, as long as ctx allows and at most FillWait. It returns
// the function that gives the slot back.
func (h *Handler) fillSlot(ctx context.Context, req *request) (release func(), err error) {
	all, perUp, _ := h.semaphores(req.up.Name)
	if perUp.TryAcquire(1) {
		if all.TryAcquire(1) {
			return func() { all.Release(1); perUp.Release(1) }, nil
		}
		perUp.Release(1)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := h.opts.afterFunc(h.opts.FillWait, cancel)
	defer stop()
	// The upstream's own slot first, so that a crowded upstream does not hold the shared ones while it waits.
	err = perUp.Acquire(wctx, 1)
	if err == nil {
		if err = all.Acquire(wctx, 1); err != nil {
			perUp.Release(1)
		}
	}
	switch {
	case err == nil:
		return func() { all.Release(1); perUp.Release(1) }, nil
	case ctx.Err() != nil:
		return nil, ctx.Err()
	}
	h.opts.Metrics.FillsBusy.WithLabelValues(req.up.Name).Inc()
	return nil, &apiError{code: codeUnavailable, retryAfter: busyRetryAfter,
		message: fmt.Sprintf("too many blob downloads from upstream %s are in progress; retry later", req.up.Name)}
}

// startFill returns the fill of d in progress, or starts one, with the caller counted as one of its clients
// (leaveFill must follow). It returns nil when d is in the cache by now.
func (h *Handler) startFill(ctx context.Context, req *request, d v1.Hash) (*fill, error) {
	if f := h.joinFill(d); f != nil {
		return f, nil
	}
	release, err := h.fillSlot(ctx, req)
	if err != nil {
		return nil, err
	}
	f, started, err := h.newFill(req, d, release, true)
	if !started {
		release()
	}
	return f, err
}

// joinFill counts one more client of the fill of d in progress and returns it, or returns nil.
func (h *Handler) joinFill(d v1.Hash) *fill {
	h.fills.mu.Lock()
	defer h.fills.mu.Unlock()
	f := h.fills.m[d]
	if f != nil {
		f.waiters++
		f.disarm()
	}
	return f
}

// newFill registers and starts the fill of d holding the given slot, unless a fill of d is in progress (which
// it joins when client is set) or d is in the cache by now (nil). started says whether the slot was used.
// client says whether the caller reads the fill; a fill started with none (a prefetch) has its grace timer
// armed from the start.
func (h *Handler) newFill(req *request, d v1.Hash, release func(), client bool) (f *fill, started bool, err error) {
	declared, linked, err := h.opts.Cache.LinkedSize(req.up.Name, req.repo, d)
	if err != nil {
		return nil, false, err
	}
	if !linked {
		declared = -1
	}
	h.fills.mu.Lock()
	defer h.fills.mu.Unlock()
	if f := h.fills.m[d]; f != nil {
		if !client {
			return nil, false, nil
		}
		f.waiters++
		f.disarm()
		return f, false, nil
	}
	if _, err := h.opts.Cache.Stat(d); err == nil {
		return nil, false, nil
	} else if !errors.Is(err, cache.ErrNotFound) {
		return nil, false, err
	}
	if h.fills.m == nil {
		h.fills.m = map[v1.Hash]*fill{}
	}
	f = &fill{digest: d, up: req.up.Name, repo: req.repo, declared: declared, ready: make(chan struct{}), done: make(chan struct{})}
	if client {
		f.waiters = 1
	}
	dctx, done := h.detached(context.Background())
	fctx, cancel := context.WithCancelCause(dctx)
	f.cancel = cancel
	if f.waiters == 0 {
		h.armGrace(f)
	}
	h.fills.m[d] = f
	go func() {
		defer done()
		err := h.runFill(fctx, &request{up: req.up, repo: req.repo, cred: req.cred}, d, f)
		if err != nil && errors.Is(context.Cause(fctx), errFillAbandoned) {
			err = fmt.Errorf("fill of %s stopped: %w", d, errFillAbandoned)
		}
		h.fills.mu.Lock()
		if h.fills.m[d] == f {
			delete(h.fills.m, d)
		}
		f.ended = true
		f.disarm()
		h.fills.mu.Unlock()
		f.endErr = err
		close(f.done)
		cancel(nil)
		release()
	}()
	return f, true, nil
}

// leaveFill counts one client fewer of f; when none is left, the grace timer starts.
func (h *Handler) leaveFill(f *fill) {
	h.fills.mu.Lock()
	defer h.fills.mu.Unlock()
	f.waiters--
	if f.waiters == 0 && !f.ended {
		h.armGrace(f)
	}
}

// armGrace starts the timer that stops f after AbandonGrace unless a client joins first. fills.mu is held.
func (h *Handler) armGrace(f *fill) {
	f.disarm()
	gen := f.graceGen
	f.stopGrace = h.opts.afterFunc(h.opts.AbandonGrace, func() {
		h.fills.mu.Lock()
		expired := f.graceGen == gen && f.waiters == 0 && !f.ended
		if expired && h.fills.m[f.digest] == f {
			delete(h.fills.m, f.digest) // a client that comes now starts a new fill rather than join a dying one
		}
		h.fills.mu.Unlock()
		if expired {
			h.opts.Metrics.FillsAbandoned.Inc()
			f.cancel(errFillAbandoned)
		}
	})
}

// disarm stops f's grace timer, if one is armed. fills.mu is held.
func (f *fill) disarm() {
	f.graceGen++
	if f.stopGrace != nil {
		f.stopGrace()
		f.stopGrace = nil
	}
}

// joinedFillError is the failure of a fill's upstream request, as seen by a client that joined the fill.
type joinedFillError struct{ err error }

func (e *joinedFillError) Error() string { return e.err.Error() }
func (e *joinedFillError) Unwrap() error { return e.err }

// retryOwnFill reports whether a client that joined a fill started under another repository should start
// over with a fill of its own: the fill's upstream request failed for a reason of the repository that started
// it (the upstream refused that repository, or its Content-Length differs from a size only that repository's
// manifests declared), and the client's own repository was confirmed to hold the blob before it joined.
func (h *Handler) retryOwnFill(req *request, f *fill, err error) bool {
	var je *joinedFillError
	if !errors.As(err, &je) || (f.up == req.up.Name && f.repo == req.repo) {
		return false
	}
	if errors.Is(je.err, errDeclaredSize) {
		return true
	}
	var se *upstream.StatusError
	if !errors.As(je.err, &se) {
		return false
	}
	switch se.Status {
	case http.StatusNotFound, http.StatusUnauthorized, http.StatusForbidden, http.StatusTooManyRequests:
		return true
	}
	return false
}

// runFill downloads d into the cache and returns why it failed, if it did. It runs on its own context: clients
// that leave do not stop it, only the abandon grace, FillTimeout and Shutdown do.
func (h *Handler) runFill(ctx context.Context, req *request, d v1.Hash, f *fill) error {
	m := h.opts.Metrics
	m.FillsInFlight.Inc()
	defer m.FillsInFlight.Dec()
	resp, size, err := h.openBlob(ctx, req, d, f.declared)
	if err == nil {
		f.w, err = h.opts.Cache.NewWriter(d, "", size)
		if err != nil {
			resp.Body.Close()
		}
	}
	if err != nil {
		h.rememberBlobMissing(req, d, err)
		f.startErr = err
		close(f.ready)
		return err
	}
	defer resp.Body.Close()
	f.size = size
	close(f.ready)
	if err := h.opts.Cache.Link(req.up.Name, req.repo, d); err != nil {
		h.opts.Log.Error("linking a blob", "digest", d.String(), "error", err)
	}
	n, err := copyBuffered(f.w, resp.Body)
	m.BytesFetched.WithLabelValues(req.up.Name).Add(float64(n))
	if err != nil {
		if cause := context.Cause(ctx); errors.Is(cause, errFillAbandoned) {
			err = cause
		}
		err = fmt.Errorf("reading blob %s from upstream %s after %d bytes: %w", d, req.up.Name, n, err)
		f.w.Abort(err)
		h.opts.Log.Warn("fill failed", "upstream", req.up.Name, "repository", req.repo, "digest", d.String(), "error", err)
		return err
	}
	if _, err := f.w.Commit(); err != nil {
		var dm *cache.DigestMismatchError
		var sm *cache.SizeMismatchError
		if errors.As(err, &dm) || errors.As(err, &sm) {
			m.DigestMismatches.WithLabelValues(req.up.Name).Inc()
		}
		h.opts.Log.Warn("fill refused", "upstream", req.up.Name, "repository", req.repo, "digest", d.String(), "error", err)
		return err
	}
	return nil
}

// openBlob sends the upstream GET for d and checks its answer: a 200 whose Content-Length, when a manifest
// of the repository declared d's size, is that size. size is what the body must hold (-1: unknown).
func (h *Handler) openBlob(ctx context.Context, req *request, d v1.Hash, declared int64) (resp *http.Response, size int64, err error) {
	resp, err = h.fetch(ctx, req, http.MethodGet, kindBlobs, d.String(), nil)
	if err != nil {
		return nil, 0, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, 0, &apiError{code: codeUnknown, status: http.StatusBadGateway, message: fmt.Sprintf("upstream %s answered a blob GET with %s", req.up.Name, resp.Status)}
	}
	size = resp.ContentLength
	if declared >= 0 {
		if size >= 0 && size != declared {
			resp.Body.Close()
			h.opts.Metrics.DigestMismatches.WithLabelValues(req.up.Name).Inc()
			return nil, 0, &apiError{code: codeSizeInvalid, status: http.StatusBadGateway, cause: errDeclaredSize,
				message: fmt.Sprintf("upstream %s sent %d bytes for blob %s, which a manifest of %s declares as %d bytes; nothing was kept", req.up.Name, size, d, req.repo, declared)}
		}
		size = declared
	}
	return resp, size, nil
}

// serveFromFill serves one client of a fill: it streams the blob while the fill writes it, or, for a range that
// stops short of the end, waits for the fill to be verified and serves the range from the cache.
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
	if f.startErr != nil {
		return &joinedFillError{f.startErr}
	}
	if rg := r.Header.Get("Range"); rg != "" && f.size >= 0 {
		// The cache writer's readers hold back only the blob's last byte until the digest is verified: a
		// range that does not reach it would get unverified bytes.
		if start, length, ranged, err := parseRange(rg, f.size); err == nil && ranged && start+length < f.size {
			return h.serveAfterFill(w, r, d, f)
		}
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

// serveAfterFill waits, at most RangeWait, for f to end, then serves the request from the cache.
func (h *Handler) serveAfterFill(w *recorder, r *http.Request, d v1.Hash, f *fill) error {
	waited := make(chan struct{})
	stop := h.opts.afterFunc(h.opts.RangeWait, func() { close(waited) })
	defer stop()
	select {
	case <-f.done:
	case <-r.Context().Done():
		return r.Context().Err()
	case <-waited:
		return &apiError{code: codeUnavailable, retryAfter: busyRetryAfter,
			message: fmt.Sprintf("blob %s is still being downloaded and verified; retry the range later", d)}
	}
	if f.endErr != nil {
		return f.endErr
	}
	file, obj, err := h.opts.Cache.Content(d)
	if errors.Is(err, cache.ErrNotFound) {
		return &apiError{code: codeUnavailable, retryAfter: busyRetryAfter, message: fmt.Sprintf("blob %s was removed from the cache; retry", d)}
	}
	if err != nil {
		return err
	}
	defer file.Close()
	return h.serveCached(w, r, d, file, obj.Size)
}
