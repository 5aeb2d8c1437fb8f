package proxy

import (
	"context"
	"errors"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullgate/pullgate/cache"
)

// maxPrefetchRuns bounds the manifests whose blobs wait to be prefetched from one upstream; a manifest fetched
// while that many wait gets no prefetch (its client fills what it asks for, as without prefetching).
const maxPrefetchRuns = 64

// prefetch fetches blobs, the config and layers of an image manifest of req's repository just fetched from the
// upstream and stored (which linked them to the repository), ahead of the client, so that it finds them filling
// or filled. In the background it goes through the blobs in order, skipping those cached or filling, each
// started as a slot of the upstream's PrefetchConcurrency frees up, so that at most that many run at once. Fill
// slots are queued for fairly with clients. The fills are ordinary ones (verified, bounded by FillTimeout),
// whose abandon grace runs from their start.
func (h *Handler) prefetch(req *request, blobs []linkedDigest) {
	if h.opts.PrefetchConcurrency < 0 || len(blobs) == 0 {
		return
	}
	up := req.up.Name
	fs := &h.fills
	fs.mu.Lock()
	if fs.queued == nil {
		fs.queued = map[string]int{}
	}
	if fs.queued[up] >= maxPrefetchRuns {
		fs.mu.Unlock()
		return
	}
	fs.queued[up]++
	fs.mu.Unlock()
	ctx, done := h.detached(context.Background())
	go func() {
		defer done()
		defer func() {
			fs.mu.Lock()
			fs.queued[up]--
			fs.mu.Unlock()
		}()
		h.prefetchRun(ctx, &request{up: req.up, repo: req.repo, cred: req.cred}, blobs)
	}()
}

// prefetchRun starts the fills of blobs one by one as prefetch and fill slots free up, until ctx ends.
func (h *Handler) prefetchRun(ctx context.Context, req *request, blobs []linkedDigest) {
	all, perUp, slots := h.semaphores(req.up.Name)
	for _, b := range blobs {
		if _, err := h.opts.Cache.Stat(b.digest); !errors.Is(err, cache.ErrNotFound) {
			continue // cached, or the cache cannot say: a client will find out
		}
		if h.filling(b.digest) {
			continue
		}
		if slots.Acquire(ctx, 1) != nil {
			return
		}
		if perUp.Acquire(ctx, 1) != nil {
			slots.Release(1)
			return
		}
		if all.Acquire(ctx, 1) != nil {
			perUp.Release(1)
			slots.Release(1)
			return
		}
		release := func() { all.Release(1); perUp.Release(1); slots.Release(1) }
		_, started, err := h.newFill(req, b.digest, release, false)
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

// filling reports whether a fill of d is running.
func (h *Handler) filling(d v1.Hash) bool {
	h.fills.mu.Lock()
	defer h.fills.mu.Unlock()
	return h.fills.m[d] != nil
}
