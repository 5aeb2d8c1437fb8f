package proxy

import (
	"bytes"
	"context"
	"encoding/json"
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
	"application/vnd.oci.image.index.v1+json",
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.docker.distribution.manifest.v2+json",
	"application/vnd.oci.artifact.manifest.v1+json",
	"application/vnd.docker.distribution.manifest.v1+prettyjws",
	"application/vnd.docker.distribution.manifest.v1+json",
}, ", ")

// manifest is one manifest's bytes and what they are. Manifests are small (bounded by MaxManifestSize), so
// unlike blobs they are handled in memory.
type manifest struct {
	digest    v1.Hash
	mediaType string
	body      []byte
}

// manifestFlights de-duplicates concurrent upstream requests for the same manifest.
type manifestFlights struct{ singleflight.Group }

func (h *Handler) serveManifest(w *recorder, r *http.Request, req *request) error {
	m, err := h.resolveManifest(r.Context(), req, req.ref)
	if err != nil {
		return err
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
		d, _ := v1.NewHash(resp.Header.Get("Docker-Content-Digest"))
		return d, nil
	})
	if err != nil {
		if serveStale(err) {
			req.cache = "stale"
			return cached, nil
		}
		return manifest{}, err
	}
	upDigest := v.(v1.Hash)
	if upDigest == e.Digest {
		req.cache = "revalidated"
		e.Fetched = h.opts.Now()
		return cached, h.opts.Cache.SetTag(req.up.Name, req.repo, tag, e)
	}
	if upDigest != (v1.Hash{}) && h.opts.Policy.immutable(tag) {
		return h.keepImmutable(req, tag, e, cached, upDigest)
	}
	// The tag moved (or the upstream did not say where): fetch what it points at now.
	m, err := h.fetchManifest(ctx, req, tag, v1.Hash{})
	if err != nil {
		if serveStale(err) {
			req.cache = "stale"
			return cached, nil
		}
		return manifest{}, err
	}
	req.cache = "miss"
	if m.digest != e.Digest && h.opts.Policy.immutable(tag) {
		return h.keepImmutable(req, tag, e, cached, m.digest)
	}
	return m, nil
}

// keepImmutable serves the pinned digest of an immutable tag that the upstream re-pointed, and says so.
func (h *Handler) keepImmutable(req *request, tag string, e cache.TagEntry, cached manifest, upDigest v1.Hash) (manifest, error) {
	req.cache, req.note = "revalidated", "tag_mutation"
	h.opts.Metrics.TagMutations.WithLabelValues(req.up.Name).Inc()
	h.opts.Log.Warn("tag_mutation: immutable tag re-pointed upstream; serving the pinned digest",
		"upstream", req.up.Name, "repository", req.repo, "tag", tag,
		"pinned", e.Digest.String(), "upstream_digest", upDigest.String())
	e.Fetched = h.opts.Now()
	return cached, h.opts.Cache.SetTag(req.up.Name, req.repo, tag, e)
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
	h.opts.Cache.Touch(d)
	return manifest{digest: d, mediaType: obj.MediaType, body: body}, nil
}

// fetchManifest fetches ref from the upstream once however many clients ask, verifies it, stores it, links it
// (and what it references) to the repository, and points the tag at it. want is the expected digest when ref
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
	if want == (v1.Hash{}) {
		want, err = headerDigest(resp.Header, body)
		if err != nil {
			return manifest{}, err
		}
	}
	if !looksLikeManifest(body) {
		return manifest{}, &apiError{code: codeManifestInvalid, status: http.StatusBadGateway,
			message: fmt.Sprintf("upstream %s answered with something that is not a manifest (Content-Type %q)", req.up.Name, resp.Header.Get("Content-Type"))}
	}
	m := manifest{digest: want, mediaType: manifestMediaType(resp.Header.Get("Content-Type"), body), body: body}
	if err := h.storeManifest(req, m); err != nil {
		var dm *cache.DigestMismatchError
		if errors.As(err, &dm) {
			h.opts.Metrics.DigestMismatches.WithLabelValues(req.up.Name).Inc()
		}
		return manifest{}, err
	}
	h.prefetch(req, m)
	if !isDigest(ref) {
		e := cache.TagEntry{Digest: m.digest, MediaType: m.mediaType, Size: int64(len(body)), Fetched: h.opts.Now()}
		if err := h.opts.Cache.SetTag(req.up.Name, req.repo, ref, e); err != nil {
			return manifest{}, err
		}
	}
	return m, nil
}

// headerDigest is the digest a manifest fetched by tag must match: the upstream's Docker-Content-Digest when
// it sent one (in the algorithm it chose), else the sha256 of the body.
func headerDigest(h http.Header, body []byte) (v1.Hash, error) {
	s := h.Get("Docker-Content-Digest")
	if s == "" {
		d, _, err := v1.SHA256(bytes.NewReader(body))
		return d, err
	}
	d, err := parseDigest(s)
	if err != nil {
		return v1.Hash{}, &apiError{code: codeDigestInvalid, status: http.StatusBadGateway, message: "upstream sent an unusable Docker-Content-Digest", cause: err}
	}
	return d, nil
}

// storeManifest verifies and stores m and links it, and every descriptor it lists, to the repository.
func (h *Handler) storeManifest(req *request, m manifest) error {
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
	for _, d := range append(referencedDigests(m.body), m.digest) {
		if err := c.Link(req.up.Name, req.repo, d); err != nil {
			return err
		}
	}
	for _, b := range imageBlobs(m.body) {
		if err := c.LinkDescriptor(req.up.Name, req.repo, b.digest, b.size); err != nil {
			return err
		}
	}
	return nil
}

// descriptor is the part of an OCI descriptor pullgate reads.
type descriptor struct {
	MediaType    string            `json:"mediaType"`
	Digest       string            `json:"digest"`
	Size         int64             `json:"size"`
	ArtifactType string            `json:"artifactType,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	Platform     json.RawMessage   `json:"platform,omitempty"`
}

// manifestFields is the part of any manifest or index pullgate reads.
type manifestFields struct {
	MediaType    string       `json:"mediaType"`
	ArtifactType string       `json:"artifactType"`
	Config       *descriptor  `json:"config"`
	Layers       []descriptor `json:"layers"`
	Manifests    []descriptor `json:"manifests"`
	Blobs        []descriptor `json:"blobs"`
	Subject      *descriptor  `json:"subject"`
	FSLayers     []struct {
		BlobSum string `json:"blobSum"`
	} `json:"fsLayers"`
}

// referencedDigests lists the digests a manifest or index refers to (config, layers, child manifests), which
// the repository therefore contains. Invalid ones are skipped: they can never be requested.
func referencedDigests(body []byte) []v1.Hash {
	var mf manifestFields
	if json.Unmarshal(body, &mf) != nil {
		return nil
	}
	var out []v1.Hash
	add := func(s string) {
		if d, err := parseDigest(s); err == nil {
			out = append(out, d)
		}
	}
	if mf.Config != nil {
		add(mf.Config.Digest)
	}
	for _, l := range [][]descriptor{mf.Layers, mf.Manifests, mf.Blobs} {
		for _, d := range l {
			add(d.Digest)
		}
	}
	for _, l := range mf.FSLayers {
		add(l.BlobSum)
	}
	return out
}

// looksLikeManifest reports whether body is a JSON object shaped like a manifest or index (a schemaVersion, or a
// media type), so that an HTML error page or a stray blob is never cached under a tag.
func looksLikeManifest(body []byte) bool {
	var v struct {
		SchemaVersion *int   `json:"schemaVersion"`
		MediaType     string `json:"mediaType"`
	}
	return json.Unmarshal(body, &v) == nil && (v.SchemaVersion != nil || v.MediaType != "")
}

// manifestMediaType picks the media type to serve a manifest with: the upstream's Content-Type when it is a
// specific type, else the manifest's own mediaType field, else what its shape says.
func manifestMediaType(contentType string, body []byte) string {
	ct, _, _ := strings.Cut(contentType, ";")
	ct = strings.TrimSpace(ct)
	if ct != "" && ct != "application/octet-stream" && ct != "text/plain" && ct != "application/json" {
		return ct
	}
	var mf manifestFields
	_ = json.Unmarshal(body, &mf)
	switch {
	case mf.MediaType != "":
		return mf.MediaType
	case mf.Manifests != nil:
		return "application/vnd.oci.image.index.v1+json"
	case len(mf.FSLayers) > 0:
		return "application/vnd.docker.distribution.manifest.v1+json"
	}
	return "application/vnd.oci.image.manifest.v1+json"
}

// confirmLink makes sure the repository is known to contain d (DESIGN invariant 6): linked in the index, or
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

// serveStale reports whether an upstream failure lets a cached tag be served instead (DESIGN invariant 4).
func serveStale(err error) bool {
	var se *upstream.StatusError
	if errors.As(err, &se) {
		return se.Status == http.StatusTooManyRequests || se.Status >= 500
	}
	return errors.Is(err, upstream.ErrUnavailable) || errors.Is(err, upstream.ErrOffline) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		isTimeout(err)
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}
