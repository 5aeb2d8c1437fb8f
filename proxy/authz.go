package proxy

import (
	"context"
	"net/http"
)

// Authorizer decides whether an identity may pull from a repository of an upstream. It answers before any
// cache look-up, so that what is cached reveals nothing to a client that may not see it.
type Authorizer interface {
	// Authorize returns nil when id may pull upstream/repo, else the error the client gets (the same for a
	// repository that does not exist as for one it may not see).
	Authorize(ctx context.Context, id Identity, upstream, repo string) error
}

// authorize is the layer that decides whether the identity may pull the repository. With no
// Options.Authorizer every identity may pull everything the policy allows.
func (h *Handler) authorize(r *http.Request, req *request) error {
	if h.opts.Authorizer == nil || req.up == nil {
		return nil
	}
	return h.opts.Authorizer.Authorize(r.Context(), req.identity, req.up.Name, req.repo)
}
