package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullgate/pullgate/cache"
	"github.com/pullgate/pullgate/gate"
	"github.com/pullgate/pullgate/identity"
	"github.com/pullgate/pullgate/names"
	"github.com/pullgate/pullgate/upstream"
)

// Gate decides whether a manifest may be served (its vulnerability verdict and signatures). *gate.Gate is the
// implementation.
type Gate interface {
	// Check decides on a manifest about to be served; src fetches its signatures through the cache.
	Check(ctx context.Context, a gate.Artifact, src gate.SignatureSource) (gate.Decision, error)
	// Observe hears of a manifest just fetched from an upstream, so that its scan starts at once.
	Observe(a gate.Artifact)
}

// gateManifest is the gate layer of a manifest request, which runs once the manifest's digest is known: the
// manifest is served only when the gate passes it (invariant: no manifest before the gate passes it, first
// pull included). The scanner's pull of the one artifact its token names bypasses it.
func (h *Handler) gateManifest(ctx context.Context, req *request, m manifest) error {
	if h.opts.Gate == nil {
		return nil
	}
	if req.identity.Method == identity.MethodScanner && req.identity.Artifact == m.digest.String() {
		req.gate = gate.VerdictBypass
		h.opts.Metrics.GateVerdicts.WithLabelValues(string(req.gate)).Inc()
		return nil
	}
	d, err := h.opts.Gate.Check(ctx, h.artifact(req, m), &signatureSource{h: h, req: req})
	if err != nil {
		return err
	}
	req.gate = d.Verdict
	h.opts.Metrics.GateVerdicts.WithLabelValues(string(d.Verdict)).Inc()
	switch d.Verdict {
	case gate.VerdictBlocked:
		// 412, as Harbor answers a pull its policy prevents; the message says why.
		return &apiError{code: codeDenied, status: http.StatusPreconditionFailed, message: d.Message}
	case gate.VerdictPending:
		return &apiError{code: codeUnavailable, retryAfter: d.RetryAfter, message: d.Message}
	}
	return nil
}

// gateManifestAsBlob gates a manifest asked for through the blobs route (containerd asks /blobs/<digest> for a
// digest whose /manifests/ answer failed): an object pullgate stored as a manifest passes the same gate there.
func (h *Handler) gateManifestAsBlob(ctx context.Context, req *request, d v1.Hash, mediaType string) error {
	if h.opts.Gate == nil || mediaType == "" {
		return nil
	}
	m, err := h.cachedManifest(d)
	if err != nil {
		return err
	}
	return h.gateManifest(ctx, req, m)
}

// artifact describes m, of req's repository, to the gate.
func (h *Handler) artifact(req *request, m manifest) gate.Artifact {
	a := gate.Artifact{Upstream: req.up.Name, Repository: req.repo, Digest: m.digest.String(), MediaType: m.mediaType, Manifest: m.body}
	if !isDigest(req.ref) {
		a.Tag = req.ref
	}
	return a
}

// observe tells the gate of a manifest just fetched from the upstream.
func (h *Handler) observe(req *request, m manifest) {
	if h.opts.Gate != nil {
		h.opts.Gate.Observe(h.artifact(req, m))
	}
}

// scannerScope holds a scanner's token to the artifact it was minted for: that manifest digest and the blobs
// that manifest names, nothing else of the repository (no tags, no referrers, no other manifest).
func (h *Handler) scannerScope(r *http.Request, req *request) error {
	a := req.identity.Artifact
	if req.identity.Method != identity.MethodScanner {
		return nil
	}
	switch req.kind {
	case kindManifests:
		if req.ref == a {
			return nil
		}
	case kindBlobs:
		if req.ref == a || h.artifactNames(a, req.ref) {
			return nil
		}
	}
	return h.authError(r, req, identity.ErrDenied)
}

// artifactNames reports whether the cached manifest with digest a names blob digest b.
func (h *Handler) artifactNames(a, b string) bool {
	d, err := parseDigest(a)
	if err != nil {
		return false
	}
	m, err := h.cachedManifest(d)
	if err != nil {
		return false
	}
	p, err := parseManifest(m.body)
	if err != nil {
		return false
	}
	for _, r := range p.refs {
		if r.digest.String() == b {
			return true
		}
	}
	return false
}

// maxSignatureBlob bounds a blob fetched for signature verification that its caller did not bound lower.
const maxSignatureBlob = 4 << 20

// signatureSource fetches what signature verification needs from the repository of one request, through the
// cache, with the request's upstream credentials.
type signatureSource struct {
	h   *Handler
	req *request
}

// sub is a request of its own for the same repository and identity, so that the pull log fields of the
// client's request are left alone.
func (s *signatureSource) sub(k kind) *request {
	r := &request{up: s.req.up, repo: s.req.repo, ns: s.req.ns, identity: s.req.identity, cred: s.req.cred}
	r.kind, r.name = k, s.req.name
	return r
}

func (s *signatureSource) Manifest(ctx context.Context, ref string) ([]byte, string, error) {
	if !isDigest(ref) {
		if err := names.ValidateTag(ref); err != nil {
			return nil, "", err
		}
	}
	m, err := s.h.resolveManifest(ctx, s.sub(kindManifests), ref)
	if err != nil {
		return nil, "", notFoundAs(err)
	}
	return m.body, m.mediaType, nil
}

func (s *signatureSource) Blob(ctx context.Context, dgst string, limit int64) ([]byte, error) {
	d, err := parseDigest(dgst)
	if err != nil {
		return nil, err
	}
	limit = min(limit, maxSignatureBlob)
	req := s.sub(kindBlobs)
	f, obj, err := s.h.opts.Cache.Content(d)
	if err == nil {
		defer f.Close()
		if err := s.h.confirmLink(ctx, req, kindBlobs, d); err != nil {
			return nil, notFoundAs(err)
		}
		if obj.Size > limit {
			return nil, fmt.Errorf("blob %s has %d bytes, more than the %d a signature may have", d, obj.Size, limit)
		}
		return io.ReadAll(f)
	}
	if !errors.Is(err, cache.ErrNotFound) {
		return nil, err
	}
	resp, err := s.h.fetch(ctx, req, http.MethodGet, kindBlobs, d.String(), nil)
	if err != nil {
		return nil, notFoundAs(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%w: reading blob %s: %v", upstream.ErrUnavailable, d, err)
	}
	if int64(len(body)) > limit {
		return nil, fmt.Errorf("blob %s is larger than the %d bytes a signature may have", d, limit)
	}
	if got, err := digestOf(d.Algorithm, body); err != nil || got != d {
		return nil, &cache.DigestMismatchError{Want: d, Got: got, Size: int64(len(body))}
	}
	if err := s.h.storeSmall(req, d, body); err != nil {
		s.h.opts.Log.Warn("keeping a signature blob", "digest", d.String(), "error", err)
	}
	return body, nil
}

func (s *signatureSource) Referrers(ctx context.Context, dgst string) ([]byte, error) {
	d, err := parseDigest(dgst)
	if err != nil {
		return nil, err
	}
	rs, err := s.h.referrers(ctx, s.sub(kindReferrers), d, "")
	if err != nil {
		return nil, notFoundAs(err)
	}
	return json.Marshal(referrersIndex{SchemaVersion: 2, MediaType: mediaOCIIndex, Manifests: rs})
}

// storeSmall stores a verified blob held in memory and links it to req's repository.
func (h *Handler) storeSmall(req *request, d v1.Hash, body []byte) error {
	w, err := h.opts.Cache.NewWriter(d, "", int64(len(body)))
	if err != nil {
		return err
	}
	if _, err := w.Write(body); err != nil {
		w.Abort(err)
		return err
	}
	if _, err := w.Commit(); err != nil {
		return err
	}
	return h.opts.Cache.Link(req.up.Name, req.repo, d)
}

// notFoundAs turns "the upstream has no such thing" into gate.ErrNotFound, so that the gate tells a missing
// signature from a failure to fetch one.
func notFoundAs(err error) error {
	ae := toAPIError(err, kindManifests)
	if ae.code == codeManifestUnknown || ae.code == codeBlobUnknown || ae.code == codeNameUnknown {
		return fmt.Errorf("%w: %v", gate.ErrNotFound, err)
	}
	return err
}
