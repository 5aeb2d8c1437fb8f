package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/pullgate/pullgate/upstream"
)

const (
	// maxTagPages bounds how many pages of an upstream's tag list pullgate follows.
	maxTagPages = 100
	// maxTagListBytes bounds one page of an upstream's tag list.
	maxTagListBytes = 16 << 20
	// maxTagsPerPage is the largest n pullgate answers with; a larger n is served in pages linked by Link.
	maxTagsPerPage = 10000
)

type tagList struct {
	Name string   `json:"name"`
	Tags []string `json:"tags"`
}

// serveTags answers GET /v2/<name>/tags/list with n, last and a Link header computed by pullgate itself
// (upstreams differ in whether and how they paginate). When the upstream cannot be reached, the tags pullgate
// has cached are served.
func (h *Handler) serveTags(w *recorder, r *http.Request, req *request) error {
	q := r.URL.Query()
	n := -1
	if s, ok := q["n"]; ok {
		v, err := strconv.Atoi(s[0])
		if err != nil || v < 0 {
			return errorf(codePaginationInvalid, "n=%q is not a count of tags: want an integer from 0 to %d", s[0], maxTagsPerPage)
		}
		n = min(v, maxTagsPerPage)
	}
	last := q.Get("last")
	tags, err := h.upstreamTags(r.Context(), req)
	req.cache = "miss"
	if err != nil {
		if !serveStale(err) {
			return err
		}
		cached, cerr := h.opts.Cache.Tags(req.up.Name, req.repo)
		if cerr != nil || len(cached) == 0 {
			return err
		}
		tags, req.cache = cached, "stale"
	}
	slices.Sort(tags)
	tags = slices.Compact(tags)
	if last != "" {
		i, _ := slices.BinarySearch(tags, last)
		for i < len(tags) && tags[i] <= last {
			i++
		}
		tags = tags[i:]
	}
	if n < 0 && len(tags) > maxTagsPerPage {
		n = maxTagsPerPage
	}
	page := tags
	if n >= 0 && len(tags) > n {
		page = tags[:n]
		if n > 0 {
			next := url.Values{"n": {strconv.Itoa(n)}, "last": {page[n-1]}}
			if req.ns != "" {
				next.Set("ns", req.ns)
			}
			w.Header().Set("Link", fmt.Sprintf(`<%s?%s>; rel="next"`, r.URL.EscapedPath(), next.Encode()))
		}
	}
	body, err := json.Marshal(tagList{Name: req.name, Tags: append([]string{}, page...)})
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(body)
	}
	return nil
}

// upstreamTags reads the upstream's whole tag list, following its Link pagination (bounded).
func (h *Handler) upstreamTags(ctx context.Context, req *request) ([]string, error) {
	var all []string
	query := url.Values{}
	for range maxTagPages {
		resp, err := req.up.Fetcher.Fetch(ctx, upstream.Request{Method: http.MethodGet, Repo: req.repo, Kind: "tags/list", Query: query})
		if err != nil {
			return nil, err
		}
		var page tagList
		err = json.NewDecoder(io.LimitReader(resp.Body, maxTagListBytes)).Decode(&page)
		link := resp.Header.Get("Link")
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("%w: upstream %s sent an unreadable tag list: %v", upstream.ErrUnavailable, req.up.Name, err)
		}
		all = append(all, page.Tags...)
		next := nextLinkQuery(link)
		if next == nil || next.Encode() == query.Encode() {
			return all, nil
		}
		query = next
	}
	return all, nil
}

// nextLinkQuery returns the query of a `<url>; rel="next"` Link header, or nil when there is none.
func nextLinkQuery(link string) url.Values {
	for _, part := range strings.Split(link, ",") {
		target, params, ok := strings.Cut(part, ";")
		if !ok || !strings.Contains(strings.ReplaceAll(params, " ", ""), `rel="next"`) {
			continue
		}
		target = strings.Trim(strings.TrimSpace(target), "<>")
		u, err := url.Parse(target)
		if err != nil {
			return nil
		}
		return u.Query()
	}
	return nil
}
