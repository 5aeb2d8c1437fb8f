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

	"github.com/pullgate/pullgate/names"
	"github.com/pullgate/pullgate/upstream"
)

// Bounds on reading an upstream's tag list, which a hostile or broken upstream can make endless. The list
// pullgate reads for a repository is at most maxTagPages pages, maxTags tags and maxTagListBytes bytes in total
// across all pages; when a bound is reached, pullgate answers with the tags read so far (sorted, so a client
// sees a prefix of the list) and logs "tags_truncated", rather than making a repository with a huge tag list
// unlistable.
const (
	maxTagPages     = 100
	maxTags         = 100_000
	maxTagListBytes = 16 << 20
	// maxTagsPerPage is the largest n pullgate answers with; a larger n is served in pages linked by Link.
	maxTagsPerPage = 10000
)

// tagListLimits bounds the tag lists kept in memory, one per (upstream, repository), each for Options.TagTTL.
// One list is at most about maxTagListBytes plus a string header per tag (about 18 MiB).
var tagListLimits = answerLimits{entries: 1024, bytes: 64 << 20}

type tagList struct {
	Name string   `json:"name"`
	Tags []string `json:"tags"`
}

// tagListing is one repository's tag list as read from the upstream: sorted, without duplicates, shared by
// every request within the TTL and therefore never modified.
type tagListing struct {
	tags      []string
	truncated bool // a bound stopped the reading
}

// size estimates the memory a listing holds.
func (l tagListing) size() int64 {
	n := int64(len(l.tags)) * 16
	for _, t := range l.tags {
		n += int64(len(t))
	}
	return n
}

// serveTags answers GET /v2/<name>/tags/list with n, last and a Link header computed by pullgate itself
// (upstreams differ in whether and how they paginate). The upstream's list is read once per repository and
// TagTTL and shared by all requests; when the upstream cannot be reached, the tags pullgate has cached are
// served.
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
	listing, err := h.tagListing(r.Context(), req)
	if err != nil {
		if !serveStale(err) {
			return err
		}
		cached, cerr := h.opts.Cache.Tags(req.up.Name, req.repo)
		if cerr != nil || len(cached) == 0 {
			return err
		}
		slices.Sort(cached)
		listing, req.cache = tagListing{tags: slices.Compact(cached)}, "stale"
	}
	if listing.truncated {
		req.note = "tags_truncated"
	}
	tags := listing.tags // shared: sliced, never modified
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
	if page == nil {
		page = []string{}
	}
	body, err := json.Marshal(tagList{Name: req.name, Tags: page})
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

// tagListing returns the upstream's tag list of req's repository: the one read less than TagTTL ago, else a
// new one, read once however many requests ask. It records the cache result in req.
func (h *Handler) tagListing(ctx context.Context, req *request) (tagListing, error) {
	key := req.up.Name + "\x00" + req.repo
	if l, ok := h.tagLists.get(key, h.opts.Now(), h.opts.TagTTL); ok {
		req.cache = "hit"
		return l, nil
	}
	req.cache = "miss"
	up, repo, cred := req.up, req.repo, req.cred
	v, err := h.flight(ctx, "tags\x00"+key, func(ctx context.Context) (any, error) {
		if l, ok := h.tagLists.get(key, h.opts.Now(), h.opts.TagTTL); ok {
			return l, nil // read by a flight that ended after this request looked
		}
		l, err := h.upstreamTags(ctx, up, repo, cred)
		if err != nil {
			return tagListing{}, err
		}
		if l.truncated {
			h.opts.Log.Warn("tags_truncated: the upstream's tag list is longer than pullgate reads; serving the tags read",
				"upstream", up.Name, "repository", repo, "tags", len(l.tags),
				"max_tags", maxTags, "max_bytes", maxTagListBytes, "max_pages", maxTagPages)
		}
		h.tagLists.put(key, l, l.size(), h.opts.Now(), tagListLimits)
		return l, nil
	})
	if err != nil {
		return tagListing{}, err
	}
	return v.(tagListing), nil
}

// upstreamTags reads the upstream's whole tag list of repo, following its Link pagination, within maxTagPages,
// maxTags and maxTagListBytes, with a passthrough client's credentials (cred) or pullgate's own (nil).
func (h *Handler) upstreamTags(ctx context.Context, up *Upstream, repo string, cred *upstream.Credentials) (tagListing, error) {
	var l tagListing
	budget := int64(maxTagListBytes)
	query := url.Values{}
	for page := 0; ; page++ {
		if page == maxTagPages || budget == 0 || len(l.tags) >= maxTags {
			l.truncated = true
			break
		}
		resp, err := up.Fetcher.Fetch(ctx, upstream.Request{Method: http.MethodGet, Repo: repo, Kind: "tags/list", Query: query, Credentials: cred})
		if err != nil {
			return tagListing{}, err
		}
		body := &countingReader{r: io.LimitReader(resp.Body, budget)}
		var full bool
		l.tags, full, err = readTagPage(body, l.tags, maxTags-len(l.tags))
		link := resp.Header.Get("Link")
		resp.Body.Close()
		budget -= body.n
		if err != nil {
			if budget > 0 {
				return tagListing{}, fmt.Errorf("%w: upstream %s sent an unreadable tag list: %v", upstream.ErrUnavailable, up.Name, err)
			}
			// The byte bound cut the page: the tags decoded before the cut are whole.
			l.truncated = true
			break
		}
		if full {
			l.truncated = true
			break
		}
		next := nextLinkQuery(link)
		if next == nil || next.Encode() == query.Encode() {
			break
		}
		query = next
	}
	slices.Sort(l.tags)
	l.tags = slices.Clip(slices.Compact(l.tags))
	return l, nil
}

// readTagPage decodes one page of a tag list ({"name": ..., "tags": [...]}) from r, appending at most room
// tags to tags, so that a page is never held whole in memory. Tags that do not follow the tag grammar are
// skipped: they could never be pulled. full is true when room ran out before the page did.
func readTagPage(r io.Reader, tags []string, room int) (_ []string, full bool, err error) {
	dec := json.NewDecoder(r)
	if err := expectDelim(dec, '{'); err != nil {
		return tags, false, err
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return tags, false, err
		}
		if k, _ := tok.(string); k != "tags" {
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return tags, false, err
			}
			continue
		}
		tok, err = dec.Token()
		if err != nil {
			return tags, false, err
		}
		if tok == nil {
			continue // "tags": null
		}
		if tok != json.Delim('[') {
			return tags, false, fmt.Errorf("tags is not a list")
		}
		for dec.More() {
			if room == 0 {
				return tags, true, nil
			}
			var t string
			if err := dec.Decode(&t); err != nil {
				return tags, false, err
			}
			if names.ValidateTag(t) == nil {
				tags = append(tags, t)
				room--
			}
		}
		if err := expectDelim(dec, ']'); err != nil {
			return tags, false, err
		}
	}
	return tags, false, expectDelim(dec, '}')
}

func expectDelim(dec *json.Decoder, want json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if tok != want {
		return fmt.Errorf("want %q, found %v", want, tok)
	}
	return nil
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
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
