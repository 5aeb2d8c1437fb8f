package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullgate/pullgate/cache"
	"github.com/pullgate/pullgate/upstream"
)

const indexMediaType = "application/vnd.oci.image.index.v1+json"

// maxStoredReferrers bounds one referrers answer kept in the cache index (encoded, unfiltered); a larger answer
// is served but not kept for the times the upstream cannot be reached.
const maxStoredReferrers = 1 << 20

// referrersLimits bounds the referrers answers held in memory, each for Options.TagTTL.
var referrersLimits = answerLimits{entries: 4096, bytes: 32 << 20}

// referrer is one descriptor of a referrers index: the fields the OCI image spec lists for it. Other fields an
// upstream sends are dropped.
type referrer struct {
	MediaType    string            `json:"mediaType"`
	Digest       string            `json:"digest"`
	Size         int64             `json:"size"`
	ArtifactType string            `json:"artifactType,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
}

// referrersIndex is the OCI image index the referrers API answers with.
type referrersIndex struct {
	SchemaVersion int        `json:"schemaVersion"`
	MediaType     string     `json:"mediaType"`
	Manifests     []referrer `json:"manifests"`
}

// referrersAnswer is the answer for one subject and filter, shared by every request within the TTL and
// therefore never modified.
type referrersAnswer struct {
	manifests []referrer
	cache     string // the cache result to log: miss, or what the tag fallback found in the manifest cache
}

// size estimates the memory an answer holds.
func (a referrersAnswer) size() int64 {
	n := int64(64)
	for _, m := range a.manifests {
		n += 96 + int64(len(m.MediaType)+len(m.Digest)+len(m.ArtifactType))
		for k, v := range m.Annotations {
			n += 48 + int64(len(k)+len(v))
		}
	}
	return n
}

// serveReferrers answers GET /v2/<name>/referrers/<digest> with an OCI index: from the upstream's referrers
// API, or, when the upstream has none (it answers 404 or 405), from the sha256-<hex> tag of the referrers tag
// schema. artifactType filters. Answers are shared for TagTTL. When the upstream cannot be reached, the answer
// stored when it last could is served, else 503 (429 when it rate-limits): never an empty index, which would
// read as "nothing refers to this".
func (h *Handler) serveReferrers(w *recorder, r *http.Request, req *request) error {
	d, err := parseDigest(req.ref)
	if err != nil {
		return err
	}
	req.digest = d.String()
	artifactType := r.URL.Query().Get("artifactType")
	descs, err := h.referrers(r.Context(), req, d, artifactType)
	if err != nil {
		return err
	}
	if artifactType != "" {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	if descs == nil {
		descs = []referrer{}
	}
	body, err := json.Marshal(referrersIndex{SchemaVersion: 2, MediaType: indexMediaType, Manifests: descs})
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", indexMediaType)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(body)
	}
	return nil
}

// referrers lists the descriptors referring to d, filtered by artifactType unless it is empty: the answer
// fetched less than TagTTL ago, else a new one fetched once however many requests ask, else (when the upstream
// cannot be reached) the stored one. It records the cache result in req.
func (h *Handler) referrers(ctx context.Context, req *request, d v1.Hash, artifactType string) ([]referrer, error) {
	key := req.up.Name + "\x00" + req.repo + "\x00" + d.String() + "\x00" + artifactType
	if a, ok := h.referrerAnswers.get(key, h.opts.Now(), h.opts.TagTTL); ok {
		req.cache = "hit"
		return a.manifests, nil
	}
	base := *req // the flight must not touch req, which its caller may stop waiting for
	v, err := h.flight(ctx, "referrers\x00"+key, func(ctx context.Context) (any, error) {
		if a, ok := h.referrerAnswers.get(key, h.opts.Now(), h.opts.TagTTL); ok {
			return a, nil // fetched by a flight that ended after this request looked
		}
		fb := base
		a, err := h.fetchReferrers(ctx, &fb, d, artifactType)
		if err != nil {
			return referrersAnswer{}, err
		}
		if a.cache != "stale" {
			h.referrerAnswers.put(key, a, a.size(), h.opts.Now(), referrersLimits)
		}
		return a, nil
	})
	if err == nil {
		a := v.(referrersAnswer)
		req.cache = a.cache
		return a.manifests, nil
	}
	if !serveStale(err) {
		return nil, err
	}
	if stored, ok := h.storedReferrers(req, d); ok {
		req.cache = "stale"
		return filterReferrers(stored, artifactType), nil
	}
	req.cache = "miss"
	var se *upstream.StatusError
	if errors.As(err, &se) && se.Status == http.StatusTooManyRequests {
		return nil, &apiError{code: codeTooManyRequests, retryAfter: se.RetryAfter, cause: err,
			message: fmt.Sprintf("upstream %s is rate limiting pullgate, and no referrers answer for %s is stored", req.up.Name, d)}
	}
	return nil, &apiError{code: codeUnavailable, cause: err,
		message: fmt.Sprintf("the referrers of %s cannot be listed: upstream %s cannot be reached, and no answer is stored", d, req.up.Name)}
}

// fetchReferrers asks the upstream for the referrers of d, falling back to the referrers tag schema only when
// the upstream says it has no referrers API (404 or 405). Unfiltered answers are stored for the times the
// upstream cannot be reached.
func (h *Handler) fetchReferrers(ctx context.Context, req *request, d v1.Hash, artifactType string) (referrersAnswer, error) {
	var q url.Values
	if artifactType != "" {
		q = url.Values{"artifactType": {artifactType}}
	}
	resp, err := req.up.Fetcher.Fetch(ctx, upstream.Request{Method: http.MethodGet, Repo: req.repo, Kind: "referrers", Ref: d.String(), Query: q,
		Header: http.Header{"Accept": {indexMediaType}}, Credentials: req.cred})
	if err == nil {
		idx, err := decodeIndex(resp.Body, h.opts.MaxManifestSize)
		resp.Body.Close()
		if err != nil {
			return referrersAnswer{}, &apiError{code: codeManifestInvalid, status: http.StatusBadGateway, message: fmt.Sprintf("upstream %s sent an unreadable referrers index", req.up.Name), cause: err}
		}
		if artifactType == "" {
			h.storeReferrers(req, d, idx.Manifests)
		}
		return referrersAnswer{manifests: filterReferrers(idx.Manifests, artifactType), cache: "miss"}, nil
	}
	var se *upstream.StatusError
	if !errors.As(err, &se) || (se.Status != http.StatusNotFound && se.Status != http.StatusMethodNotAllowed) {
		return referrersAnswer{}, err
	}
	// No referrers API upstream: the tag schema fallback, through the manifest cache.
	var all []referrer
	m, err := h.resolveManifest(ctx, req, fallbackTag(d))
	switch {
	case err == nil:
		if idx, err := decodeIndex(bytes.NewReader(m.body), h.opts.MaxManifestSize); err == nil {
			all = idx.Manifests
		} // else the tag holds something other than an index: no referrers
	case manifestNotFound(err):
		req.cache = "miss"
	default:
		return referrersAnswer{}, err
	}
	if req.cache != "stale" {
		h.storeReferrers(req, d, all)
	}
	return referrersAnswer{manifests: filterReferrers(all, artifactType), cache: req.cache}, nil
}

// manifestNotFound reports whether err says the upstream has no such manifest (now, or remembered).
func manifestNotFound(err error) bool {
	var se *upstream.StatusError
	var ae *apiError
	return errors.As(err, &se) && se.Status == http.StatusNotFound ||
		errors.As(err, &ae) && ae.code == codeManifestUnknown
}

// storeReferrers keeps the unfiltered answer for d in the cache index, to be served when the upstream cannot be
// reached: a non-empty answer until it is replaced, an empty one for EmptyReferrersTTL and only for a subject
// linked to the repository, so that asking about random digests does not grow the index. An answer over maxStoredReferrers bytes is not kept.
func (h *Handler) storeReferrers(req *request, d v1.Hash, all []referrer) {
	if all == nil {
		all = []referrer{}
	}
	b, err := json.Marshal(referrersIndex{SchemaVersion: 2, MediaType: indexMediaType, Manifests: all})
	if err != nil {
		return
	}
	if len(b) > maxStoredReferrers {
		h.opts.Log.Warn("referrers answer too large to keep for offline use",
			"upstream", req.up.Name, "repository", req.repo, "subject", d.String(), "bytes", len(b), "limit", maxStoredReferrers)
		return
	}
	var ttl time.Duration
	if len(all) == 0 {
		// "No referrers" is kept only for a subject the repository is known to hold: asking about random digests
		// must not grow the index.
		if linked, err := h.opts.Cache.Linked(req.up.Name, req.repo, d); err != nil || !linked {
			return
		}
		ttl = h.opts.EmptyReferrersTTL
	}
	if err := h.opts.Cache.SetReferrers(req.up.Name, req.repo, d, b, h.opts.Now(), ttl); err != nil {
		h.opts.Log.Error("storing a referrers answer", "upstream", req.up.Name, "repository", req.repo, "subject", d.String(), "error", err)
	}
}

// storedReferrers returns the unfiltered answer stored for d, if any.
func (h *Handler) storedReferrers(req *request, d v1.Hash) ([]referrer, bool) {
	b, _, err := h.opts.Cache.Referrers(req.up.Name, req.repo, d)
	if err != nil {
		if !errors.Is(err, cache.ErrNotFound) {
			h.opts.Log.Error("reading a stored referrers answer", "upstream", req.up.Name, "repository", req.repo, "subject", d.String(), "error", err)
		}
		return nil, false
	}
	idx, err := decodeIndex(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		h.opts.Log.Error("stored referrers answer is unreadable", "upstream", req.up.Name, "repository", req.repo, "subject", d.String(), "error", err)
		return nil, false
	}
	return idx.Manifests, true
}

// filterReferrers returns the descriptors of the given artifact type, in a new slice; all of them when
// artifactType is empty.
func filterReferrers(all []referrer, artifactType string) []referrer {
	if artifactType == "" {
		return all
	}
	kept := []referrer{}
	for _, m := range all {
		if m.ArtifactType == artifactType {
			kept = append(kept, m)
		}
	}
	return kept
}

// fallbackTag is the referrers tag schema's tag for d: "<alg>-<hex>", at most 128 characters.
func fallbackTag(d v1.Hash) string {
	t := d.Algorithm + "-" + d.Hex
	return t[:min(len(t), maxTagLength)]
}

// decodeIndex decodes a referrers index of at most limit bytes into typed descriptors, dropping those whose
// digest is not a valid digest or whose size is negative: they could never be fetched.
func decodeIndex(r io.Reader, limit int64) (referrersIndex, error) {
	var idx referrersIndex
	if err := json.NewDecoder(io.LimitReader(r, limit)).Decode(&idx); err != nil {
		return referrersIndex{}, err
	}
	kept := idx.Manifests[:0]
	for _, m := range idx.Manifests {
		if _, err := parseDigest(m.Digest); err == nil && m.Size >= 0 {
			kept = append(kept, m)
		}
	}
	idx.Manifests = kept
	return idx, nil
}
