package proxy

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"
)

// Policy says which repositories may be pulled through pullgate and which tags may never be re-pointed.
// Patterns are globs: '*' matches within one path element, '**' matches across elements, '?' one character.
type Policy struct {
	// Allow holds patterns over "<upstream>/<repository>" ("docker.io/library/*", "ghcr.io/myorg/**").
	// Empty allows everything.
	Allow []*regexp.Regexp
	// ImmutableTags holds patterns over tags ("v*", "*.*.*", "**"). A matching tag, once cached, keeps its
	// digest even when the upstream re-points it. Empty means every tag follows the upstream.
	ImmutableTags []*regexp.Regexp
}

// NewPolicy compiles allow and immutable-tag patterns.
func NewPolicy(allow, immutableTags []string) (Policy, error) {
	var p Policy
	for _, s := range allow {
		re, err := compileGlob(s)
		if err != nil {
			return Policy{}, err
		}
		p.Allow = append(p.Allow, re)
	}
	for _, s := range immutableTags {
		re, err := compileGlob(s)
		if err != nil {
			return Policy{}, err
		}
		p.ImmutableTags = append(p.ImmutableTags, re)
	}
	return p, nil
}

// compileGlob turns a glob into an anchored regular expression.
func compileGlob(glob string) (*regexp.Regexp, error) {
	if glob == "" || strings.IndexFunc(glob, func(r rune) bool { return r <= ' ' || r >= 0x7f }) >= 0 {
		return nil, fmt.Errorf("invalid pattern %q: patterns are printable ASCII, as repository names and tags are", glob)
	}
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(glob); i++ {
		switch c := glob[i]; {
		case c == '*' && i+1 < len(glob) && glob[i+1] == '*':
			b.WriteString("(?s:.*)")
			i++
		case c == '*':
			b.WriteString("[^/]*")
		case c == '?':
			b.WriteString("[^/]")
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	b.WriteString("$")
	return regexp.Compile(b.String())
}

func matchAny(res []*regexp.Regexp, s string) bool {
	for _, re := range res {
		if re.MatchString(s) {
			return true
		}
	}
	return false
}

func (p Policy) allowed(upstream, repo string) bool {
	return len(p.Allow) == 0 || matchAny(p.Allow, upstream+"/"+repo)
}

func (p Policy) immutable(tag string) bool { return matchAny(p.ImmutableTags, tag) }

// policy is the layer that applies the allow-list: a repository no pattern allows is refused, whoever asks.
func (h *Handler) policy(_ *http.Request, req *request) error {
	if req.up == nil || h.opts.Policy.allowed(req.up.Name, req.repo) {
		return nil
	}
	h.opts.Metrics.PolicyDenials.WithLabelValues(req.up.Name).Inc()
	return errorf(codeDenied, "%s/%s is not on pullgate's allow-list", req.up.Name, req.repo)
}
