package proxy

import (
	"net/http"

	"github.com/pullgate/pullgate/names"
)

// Policy says which repositories may be pulled through pullgate and which tags may never be re-pointed.
// Patterns are names.Pattern globs: '*' matches within one path element, '**' across elements, '?' one character.
type Policy struct {
	// Allow holds patterns over "<upstream>/<repository>" ("docker.io/library/*", "ghcr.io/myorg/**").
	// Empty allows everything.
	Allow []names.Pattern
	// ImmutableTags holds patterns over tags ("v*", "*.*.*", "**"). A matching tag, once cached, keeps its
	// digest even when the upstream re-points it. Empty means every tag follows the upstream.
	ImmutableTags []names.Pattern
}

// NewPolicy compiles allow and immutable-tag patterns.
func NewPolicy(allow, immutableTags []string) (Policy, error) {
	a, err := names.CompilePatterns(allow)
	if err != nil {
		return Policy{}, err
	}
	t, err := names.CompilePatterns(immutableTags)
	if err != nil {
		return Policy{}, err
	}
	return Policy{Allow: a, ImmutableTags: t}, nil
}

func (p Policy) allowed(upstream, repo string) bool {
	return len(p.Allow) == 0 || names.MatchAny(p.Allow, upstream+"/"+repo)
}

func (p Policy) immutable(tag string) bool { return names.MatchAny(p.ImmutableTags, tag) }

// policy is the layer that applies the allow-list: a repository no pattern allows is refused, whoever asks.
func (h *Handler) policy(_ *http.Request, req *request) error {
	if req.up == nil || h.opts.Policy.allowed(req.up.Name, req.repo) {
		return nil
	}
	h.opts.Metrics.PolicyDenials.WithLabelValues(req.up.Name).Inc()
	return errorf(codeDenied, "%s/%s is not on pullgate's allow-list", req.up.Name, req.repo)
}
