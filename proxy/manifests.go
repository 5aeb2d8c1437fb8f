package proxy

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sync/singleflight"

	"github.com/pullgate/pullgate/cache"
	"github.com/pullgate/pullgate/upstream"
)

// manifestAccept is what pullgate accepts from upstreams: every manifest and index type in use.
var manifestAccept = strings.Join([]string{
	mediaOCIIndex, mediaOCIManifest, mediaDockerList, mediaDockerManifest, mediaOCIArtifact, mediaDockerV1Signed, mediaDockerV1,
}, ", ")

// manifest is one manifest's bytes and what they are. Manifests are small (bounded by MaxManifestSize), so
// unlike blobs they are handled in memory.
type manifest struct {
	digest    v1.Hash
	mediaType string
	body      []byte
	// repointed is, for a manifest fetched by an immutable tag that kept its pinned digest, the digest the
	// upstream's tag names now; zero otherwise.
	repointed v1.Hash
}

// manifestFlights de-duplicates concurrent upstream requests for the same manifest.
type manifestFlights struct{ singleflight.Group }

func (h *Handler) serveManifest(w *recorder, r *http.Request, req *request) error {
	m, err := h.resolveManifest(r.Context(), req, req.ref)
	if err != nil {
		return err
	}
	req.digest, req.mediaType = m.digest.String(), m.mediaType
	if err := h.gateManifest(r.Context(), req, m); err != nil {
		return err
	}
	if m.repointed != (v1.Hash{}) {
		req.cache, req.note = "revalidated", "tag_mutation"
	}
	req.digest, req.mediaType = m.digest.String(), m.mediaType
	hdr := w.Header()
	hdr.Set("Content-Type", m.mediaType)
	hdr.Set("Docker-Content-Digest", m.digest.String())
	hdr.Set("Etag", `"`+m.digest.String()+`"`)
	hdr.Set("Content-Length", strconv.Itoa(len(m.body)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(m.body)
	}
	return nil
}

// resolveManifest finds the manifest ref (a tag or a digest) of req's repository: from the cache when it may,
// else from the upstream. It records the cache result in req.
func (h *Handler) resolveManifest(ctx context.Context, req *request, ref string) (manifest, error) {
	if isDigest(ref) {
		d, err := parseDigest(ref)
		if err != nil {
			return manifest{}, err
		}
		return h.manifestByDigest(ctx, req, d)
	}
	return h.manifestByTag(ctx, req, ref)
}

func (h *Handler) manifestByDigest(ctx context.Context, req *request, d v1.Hash) (manifest, error) {
	m, err := h.cachedManifest(d)
	if err == nil {
		if err := h.confirmLink(ctx, req, kindManifests, d); err != nil {
			return manifest{}, err
		}
		req.cache = "hit"
		return m, nil
	}
	if !errors.Is(err, cache.ErrNotFound) {
		return manifest{}, err
	}
	req.cache = "miss"
	return h.fetchManifest(ctx, req, d.String(), d)
}

func (h *Handler) manifestByTag(ctx context.Context, req *request, tag string) (manifest, error) {
	c := h.opts.Cache
	e, err := c.Tag(req.up.Name, req.repo, tag)
	if errors.Is(err, cache.ErrNotFound) {
		req.cache = "miss"
		return h.fetchManifest(ctx, req, tag, v1.Hash{})
	}
	if err != nil {
		return manifest{}, err
	}
	cached, err := h.cachedManifest(e.Digest)
	if errors.Is(err, cache.ErrNotFound) {
		req.cache = "miss" // the tag outlived its content (a repair removed it): fetch again
		return h.fetchManifest(ctx, req, tag, v1.Hash{})
	}
	if err != nil {
		return manifest{}, err
	}
	now := h.opts.Now()
	if now.Sub(e.Fetched) < h.opts.TagTTL {
		req.cache = "hit"
		return cached, nil
	}
	return h.revalidate(ctx, req, tag, e, cached)
}

// revalidate asks the upstream, with one HEAD, whether a stale tag still points at the cached digest.
func (h *Handler) revalidate(ctx context.Context, req *request, tag string, e cache.TagEntry, cached manifest) (manifest, error) {
	key := "head\x00" + req.up.Name + "\x00" + req.repo + "\x00" + tag
	v, err := h.flight(ctx, key, func(ctx context.Context) (any, error) {
		resp, err := h.fetch(ctx, req, http.MethodHead, kindManifests, tag, http.Header{"Accept": {manifestAccept}})
		if err != nil {
			return v1.Hash{}, err
		}
		resp.Body.Close()
		d, _ := parseDigest(resp.Header.Get("Docker-Content-Digest"))
		return d, nil
	})
	if err != nil {
		return h.serveStaleOr(req, cached, err)
	}
	upDigest := v.(v1.Hash)
	if upDigest == e.Digest {
		req.cache = "revalidated"
		e.Fetched = h.opts.Now()
		if _, err := h.setTag(req, tag, e); err != nil {
			return manifest{}, err
		}
		return cached, nil
	}
	if upDigest != (v1.Hash{}) && h.opts.Policy.immutable(tag) {
		// The pinned entry is kept whatever the upstream says: only its Fetched time moves.
		e.Fetched = h.opts.Now()
		if _, err := h.opts.Cache.SetImmutableTag(req.up.Name, req.repo, tag, e); err != nil {
			return manifest{}, err
		}
		h.tagMutation(req, tag, e.Digest, upDigest)
		cached.repointed = upDigest
		return cached, nil
	}
	// The tag moved (or the upstream did not say where): fetch what it points at now. An immutable tag keeps
	// its pin in the same index write that would move it (downloadManifest).
	m, err := h.fetchManifest(ctx, req, tag, v1.Hash{})
	if err != nil {
		return h.serveStaleOr(req, cached, err)
	}
	req.cache = "miss"
	return m, nil
}

// serveStaleOr serves the cached manifest when err is an upstream failure that allows it (an upstream that is
// down, rate-limited, failing, or answering with something that is not the manifest), else returns err.
func (h *Handler) serveStaleOr(req *request, cached manifest, err error) (manifest, error) {
	if !serveStale(err) {
		return manifest{}, err
	}
	req.cache = "stale"
	if errors.Is(err, errInvalidAnswer) {
		req.note = "upstream_invalid_answer"
	}
	return cached, nil
}

// setTag points tag at e.Digest. An immutable tag that points elsewhere already keeps its digest, decided in
// the same index write; the entry in force afterwards is returned.
func (h *Handler) setTag(req *request, tag string, e cache.TagEntry) (cache.TagEntry, error) {
	if h.opts.Policy.immutable(tag) {
		return h.opts.Cache.SetImmutableTag(req.up.Name, req.repo, tag, e)
	}
	return e, h.opts.Cache.SetTag(req.up.Name, req.repo, tag, e)
}

// tagMutation reports that the upstream re-pointed an immutable tag, whose pinned digest is served instead.
func (h *Handler) tagMutation(req *request, tag string, pinned, upDigest v1.Hash) {
	h.opts.Metrics.TagMutations.WithLabelValues(req.up.Name).Inc()
	h.opts.Log.Warn("tag_mutation: immutable tag re-pointed upstream; serving the pinned digest",
		"upstream", req.up.Name, "repository", req.repo, "tag", tag,
		"pinned", pinned.String(), "upstream_digest", upDigest.String())
}

// cachedManifest reads a stored manifest.
func (h *Handler) cachedManifest(d v1.Hash) (manifest, error) {
	f, obj, err := h.opts.Cache.Content(d)
	if err != nil {
		return manifest{}, err
	}
	defer f.Close()
	if obj.MediaType == "" {
		// Stored by a blob fill: the media type is unknown, so it is not served as a manifest from the cache;
		// fetching it as a manifest fills the type in.
		return manifest{}, cache.ErrNotFound
	}
	if obj.Size > h.opts.MaxManifestSize {
		return manifest{}, errorf(codeManifestUnknown, "%s is a blob of %d bytes, not a manifest", d, obj.Size)
	}
	body := make([]byte, obj.Size)
	if _, err := io.ReadFull(f, body); err != nil {
		return manifest{}, fmt.Errorf("reading cached manifest %s: %w", d, err)
	}
	mt, err := servedType(obj.MediaType, body)
	if err != nil {
		return manifest{}, errorf(codeManifestUnknown, "%s is stored as %q and is not a manifest", d, obj.MediaType)
	}
	h.opts.Cache.Touch(d)
	return manifest{digest: d, mediaType: mt, body: body}, nil
}

// fetchManifest fetches ref from the upstream once however many clients ask, verifies it, stores it, links it
// (and the descriptors its type defines) to the repository, and points the tag at it. want is the expected digest when ref
// is a digest.
func (h *Handler) fetchManifest(ctx context.Context, req *request, ref string, want v1.Hash) (manifest, error) {
	c := h.opts.Cache
	if missing, err := c.Missing(req.up.Name, req.repo, ref); err != nil {
		return manifest{}, err
	} else if missing {
		return manifest{}, errorf(codeManifestUnknown, "manifest %s:%s is unknown to upstream %s (remembered for up to %s)", req.repo, ref, req.up.Name, h.opts.NegativeTTL)
	}
	key := "get\x00" + req.up.Name + "\x00" + req.repo + "\x00" + ref
	v, err := h.flight(ctx, key, func(ctx context.Context) (any, error) {
		m, err := h.downloadManifest(ctx, req, ref, want)
		var se *upstream.StatusError
		if errors.As(err, &se) && se.Status == http.StatusNotFound {
			if err := c.SetMissing(req.up.Name, req.repo, ref, h.opts.Now().Add(h.opts.NegativeTTL)); err != nil {
				h.opts.Log.Error("remembering a missing manifest", "error", err)
			}
		}
		return m, err
	})
	if err != nil {
		return manifest{}, err
	}
	return v.(manifest), nil
}

// errInvalidAnswer marks an upstream answer that came with a success status but is not the manifest asked for:
// not a manifest at all (a captive portal's page), a manifest of an invalid shape, or bytes that do not match the
// digest. A cached tag is then served stale.
var errInvalidAnswer = errors.New("upstream answer is not a usable manifest")

// invalidAnswer logs and counts an unusable upstream answer and returns the error the client sees (when nothing
// cached can be served instead). It wraps errInvalidAnswer and cause.
func (h *Handler) invalidAnswer(req *request, ref string, c code, msg string, cause error) error {
	h.opts.Metrics.UpstreamInvalidAnswers.WithLabelValues(req.up.Name).Inc()
	h.opts.Log.Warn("upstream sent an unusable manifest answer", "upstream", req.up.Name, "repository", req.repo,
		"reference", ref, "problem", msg, "error", cause)
	return &apiError{code: c, status: http.StatusBadGateway, message: fmt.Sprintf("upstream %s %s", req.up.Name, msg),
		cause: fmt.Errorf("%w: %w", errInvalidAnswer, cause)}
}

// downloadManifest fetches ref, checks its digest and shape, stores and links it, and, for a tag, points the
// tag at it (an immutable tag keeps its pinned digest, which is then what is returned).
func (h *Handler) downloadManifest(ctx context.Context, req *request, ref string, want v1.Hash) (manifest, error) {
	resp, err := h.fetch(ctx, req, http.MethodGet, kindManifests, ref, http.Header{"Accept": {manifestAccept}})
	if err != nil {
		return manifest{}, err
	}
	defer resp.Body.Close()
	limit := h.opts.MaxManifestSize
	if resp.ContentLength > limit {
		return manifest{}, &apiError{code: codeManifestInvalid, status: http.StatusBadGateway,
			message: fmt.Sprintf("upstream %s sent a manifest of %d bytes; the limit is %d", req.up.Name, resp.ContentLength, limit)}
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return manifest{}, fmt.Errorf("%w: reading manifest from %s: %v", upstream.ErrUnavailable, req.up.Name, err)
	}
	if int64(len(body)) > limit {
		return manifest{}, &apiError{code: codeManifestInvalid, status: http.StatusBadGateway,
			message: fmt.Sprintf("upstream %s sent a manifest over the %d byte limit", req.up.Name, limit)}
	}
	if resp.ContentLength >= 0 && int64(len(body)) != resp.ContentLength {
		return manifest{}, fmt.Errorf("%w: upstream %s sent %d of %d manifest bytes", upstream.ErrUnavailable, req.up.Name, len(body), resp.ContentLength)
	}
	contentType := resp.Header.Get("Content-Type")
	if want == (v1.Hash{}) {
		s := resp.Header.Get("Docker-Content-Digest")
		if want, err = headerDigest(s, body); err != nil {
			return manifest{}, h.invalidAnswer(req, ref, codeDigestInvalid, fmt.Sprintf("sent an unusable Docker-Content-Digest (Content-Type %.100q)", contentType), err)
		}
	}
	// The digest first: bytes that are not what was asked for are refused as such, whatever they look like.
	if got, err := digestOf(want.Algorithm, body); err != nil {
		return manifest{}, err
	} else if got != want {
		h.opts.Metrics.DigestMismatches.WithLabelValues(req.up.Name).Inc()
		return manifest{}, h.invalidAnswer(req, ref, codeDigestInvalid, "sent a manifest that does not match its digest; nothing was kept",
			&cache.DigestMismatchError{Want: want, Got: got, Size: int64(len(body))})
	}
	p, err := parseManifest(body)
	if err != nil {
		return manifest{}, h.invalidAnswer(req, ref, codeManifestInvalid, fmt.Sprintf("answered with something that is not a valid manifest (Content-Type %.100q)", contentType), err)
	}
	if ct := mediaTypeOf(contentType); shapeOf(ct) != 0 && ct != p.mediaType {
		// The body is verified and its own type is what is served; the header is only noted.
		h.opts.Log.Warn("upstream Content-Type disagrees with the manifest; serving the manifest's own type",
			"upstream", req.up.Name, "repository", req.repo, "reference", ref, "content_type", ct, "media_type", p.mediaType)
	}
	m := manifest{digest: want, mediaType: p.mediaType, body: body}
	if err := h.storeManifest(req, m, p.refs); err != nil {
		return manifest{}, err
	}
	h.observe(req, m)
	if isDigest(ref) {
		h.prefetch(req, p.refs[:p.blobs])
		return m, nil
	}
	e := cache.TagEntry{Digest: m.digest, MediaType: m.mediaType, Size: int64(len(body)), Fetched: h.opts.Now()}
	kept, err := h.setTag(req, ref, e)
	if err != nil {
		return manifest{}, err
	}
	if kept.Digest == m.digest {
		h.prefetch(req, p.refs[:p.blobs])
		return m, nil
	}
	// An immutable tag: the index still points at the pinned digest, which is what every client gets.
	h.tagMutation(req, ref, kept.Digest, m.digest)
	pinned, err := h.cachedManifest(kept.Digest)
	if errors.Is(err, cache.ErrNotFound) {
		pinned, err = h.downloadManifest(ctx, req, kept.Digest.String(), kept.Digest)
	}
	if err != nil {
		return manifest{}, fmt.Errorf("reading the pinned manifest %s of immutable tag %s: %w", kept.Digest, ref, err)
	}
	pinned.repointed = m.digest
	return pinned, nil
}

// mediaTypeOf is the media type of a Content-Type header, without parameters.
func mediaTypeOf(contentType string) string {
	ct, _, _ := strings.Cut(contentType, ";")
	return strings.TrimSpace(ct)
}

// headerDigest is the digest a manifest fetched by tag must match: the upstream's Docker-Content-Digest s when
// it sent one (in the algorithm it chose), else the sha256 of the body.
func headerDigest(s string, body []byte) (v1.Hash, error) {
	if s == "" {
		return digestOf("sha256", body)
	}
	return parseDigest(s)
}

// digestOf hashes body with the algorithm alg (sha256 or sha512).
func digestOf(alg string, body []byte) (v1.Hash, error) {
	var sum []byte
	switch alg {
	case "sha256":
		s := sha256.Sum256(body)
		sum = s[:]
	case "sha512":
		s := sha512.Sum512(body)
		sum = s[:]
	default:
		return v1.Hash{}, fmt.Errorf("%w: %q", cache.ErrUnsupportedDigest, alg)
	}
	return v1.Hash{Algorithm: alg, Hex: hex.EncodeToString(sum)}, nil
}

// storeManifest stores m (the cache verifies its digest again) and links it, with the descriptors its type
// defines and the sizes they declare, to the repository.
func (h *Handler) storeManifest(req *request, m manifest, refs []linkedDigest) error {
	c := h.opts.Cache
	w, err := c.NewWriter(m.digest, m.mediaType, int64(len(m.body)))
	if err != nil {
		return err
	}
	if _, err := w.Write(m.body); err != nil {
		w.Abort(err)
		return err
	}
	if _, err := w.Commit(); err != nil {
		return err
	}
	for _, r := range append(refs, linkedDigest{digest: m.digest, size: int64(len(m.body))}) {
		if err := c.LinkDescriptor(req.up.Name, req.repo, r.digest, r.size); err != nil {
			return err
		}
	}
	return nil
}

// confirmLink makes sure the repository is known to contain d (invariant: no cross-repository leaks): linked in the index, or
// confirmed now by the upstream with a HEAD, after which it is linked.
func (h *Handler) confirmLink(ctx context.Context, req *request, k kind, d v1.Hash) error {
	c := h.opts.Cache
	ok, err := c.Linked(req.up.Name, req.repo, d)
	if err != nil || ok {
		return err
	}
	key := "link\x00" + string(k) + req.up.Name + "\x00" + req.repo + "\x00" + d.String()
	_, err = h.flight(ctx, key, func(ctx context.Context) (any, error) {
		resp, err := h.fetch(ctx, req, http.MethodHead, k, d.String(), http.Header{"Accept": {manifestAccept}})
		if err != nil {
			return nil, err
		}
		resp.Body.Close()
		return nil, c.Link(req.up.Name, req.repo, d)
	})
	if err != nil {
		var se *upstream.StatusError
		if errors.As(err, &se) && se.Status == http.StatusNotFound {
			return errorf(unknownCode(k), "%s is not known in %s/%s", d, req.up.Name, req.repo)
		}
		return fmt.Errorf("confirming %s in %s/%s: %w", d, req.up.Name, req.repo, err)
	}
	return nil
}

// flight runs fn once for all concurrent callers with the same key. fn runs on a context that no caller can
// cancel (a client that goes away must not abort the fetch for the others), bounded by FillTimeout; each
// caller stops waiting when its own ctx is done.
func (h *Handler) flight(ctx context.Context, key string, fn func(context.Context) (any, error)) (any, error) {
	ch := h.manifests.DoChan(key, func() (any, error) {
		fctx, done := h.detached(ctx)
		defer done()
		return fn(fctx)
	})
	select {
	case res := <-ch:
		return res.Val, res.Err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// serveStale reports whether an upstream failure lets a cached tag be served instead (invariant: serve stale rather than fail).
func serveStale(err error) bool {
	var se *upstream.StatusError
	if errors.As(err, &se) {
		return se.Status == http.StatusTooManyRequests || se.Status >= 500
	}
	return errors.Is(err, errInvalidAnswer) || errors.Is(err, upstream.ErrUnavailable) || errors.Is(err, upstream.ErrOffline) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		isTimeout(err)
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}
