package proxy

import (
	"errors"

	"github.com/pullgate/pullgate/cache"
)

// prefetch starts fills of blobs, the config and layers of an image manifest of req's repository just fetched from
// the upstream and stored (which linked them to the repository), so that the client finds them filling or
// filled. It skips blobs that are cached or filling, and stops when the upstream's PrefetchConcurrency slots
// or its fill slots are taken: prefetching never waits and never takes a slot a client is waiting for. The
// fills are ordinary ones (verified, bounded by FillTimeout), whose abandon grace runs from their start.
func (h *Handler) prefetch(req *request, blobs []linkedDigest) {
	if h.opts.PrefetchConcurrency < 0 || len(blobs) == 0 {
		return
	}
	all, perUp, slots := h.semaphores(req.up.Name)
	for _, b := range blobs {
		if _, err := h.opts.Cache.Stat(b.digest); !errors.Is(err, cache.ErrNotFound) {
			continue // cached, or the cache cannot say: a client will find out
		}
		if !slots.TryAcquire(1) {
			return
		}
		if !perUp.TryAcquire(1) {
			slots.Release(1)
			return
		}
		if !all.TryAcquire(1) {
			perUp.Release(1)
			slots.Release(1)
			return
		}
		release := func() { all.Release(1); perUp.Release(1); slots.Release(1) }
		_, started, err := h.newFill(&request{up: req.up, repo: req.repo}, b.digest, release, false)
		if !started {
			release()
		}
		if err != nil {
			h.opts.Log.Error("prefetching a blob", "upstream", req.up.Name, "repository", req.repo, "digest", b.digest.String(), "error", err)
			continue
		}
		if started {
			h.opts.Metrics.Prefetches.WithLabelValues(req.up.Name).Inc()
		}
	}
}
