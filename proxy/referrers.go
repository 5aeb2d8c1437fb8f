package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullgate/pullgate/upstream"
)

const indexMediaType = "application/vnd.oci.image.index.v1+json"

// referrersIndex is the OCI image index the referrers API answers with. Descriptors are kept whole.
type referrersIndex struct {
	SchemaVersion int              `json:"schemaVersion"`
	MediaType     string           `json:"mediaType"`
	Manifests     []map[string]any `json:"manifests"`
}

// serveReferrers answers GET /v2/<name>/referrers/<digest> with an OCI index, always 200: from the upstream's
// referrers API when it has one, else from the sha256-<hex> tag fallback, else empty. artifactType filters.
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
		kept := descs[:0]
		for _, m := range descs {
			if m["artifactType"] == artifactType {
				kept = append(kept, m)
			}
		}
		descs = kept
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	body, err := json.Marshal(referrersIndex{SchemaVersion: 2, MediaType: indexMediaType, Manifests: append([]map[string]any{}, descs...)})
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

// referrers lists the descriptors referring to d, unfiltered.
func (h *Handler) referrers(ctx context.Context, req *request, d v1.Hash, artifactType string) ([]map[string]any, error) {
	var q url.Values
	if artifactType != "" {
		q = url.Values{"artifactType": {artifactType}}
	}
	resp, err := req.up.Fetcher.Fetch(ctx, upstream.Request{Method: http.MethodGet, Repo: req.repo, Kind: "referrers", Ref: d.String(), Query: q,
		Header: http.Header{"Accept": {indexMediaType}}})
	if err == nil {
		defer resp.Body.Close()
		idx, err := decodeIndex(resp.Body, h.opts.MaxManifestSize)
		if err != nil {
			return nil, &apiError{code: codeManifestInvalid, status: http.StatusBadGateway, message: fmt.Sprintf("upstream %s sent an unreadable referrers index", req.up.Name), cause: err}
		}
		req.cache = "miss"
		return idx.Manifests, nil
	}
	var se *upstream.StatusError
	if errors.As(err, &se) && (se.Status == http.StatusUnauthorized || se.Status == http.StatusForbidden) {
		return nil, err
	}
	// No referrers API upstream (or no upstream now): the tag schema fallback, through the manifest cache.
	tag := fallbackTag(d)
	fb := *req
	m, ferr := h.resolveManifest(ctx, &fb, tag)
	req.cache = fb.cache
	if ferr != nil {
		if !errors.As(ferr, &se) || se.Status != http.StatusNotFound {
			var ae *apiError
			if !errors.As(ferr, &ae) || ae.code != codeManifestUnknown {
				req.note = "referrers_unavailable: " + ferr.Error()
			}
		}
		return nil, nil
	}
	idx, err := decodeIndex(strings.NewReader(string(m.body)), h.opts.MaxManifestSize)
	if err != nil {
		return nil, nil // the tag holds something other than an index: no referrers
	}
	return idx.Manifests, nil
}

// fallbackTag is the referrers tag schema's tag for d: "<alg>-<hex>", at most 128 characters.
func fallbackTag(d v1.Hash) string {
	t := d.Algorithm + "-" + d.Hex
	return t[:min(len(t), maxTagLength)]
}

func decodeIndex(r io.Reader, limit int64) (referrersIndex, error) {
	var idx referrersIndex
	if err := json.NewDecoder(io.LimitReader(r, limit)).Decode(&idx); err != nil {
		return idx, err
	}
	return idx, nil
}
