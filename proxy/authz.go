package proxy

import (
	"context"
	"net/http"

	"github.com/pullgate/pullgate/identity"
	"github.com/pullgate/pullgate/upstream"
)

// Authorizer decides whether a principal may pull from a repository of an upstream. *identity.Service is the
// implementation. It answers before any cache look-up, so that what is cached reveals nothing to a client that
// may not see it.
type Authorizer interface {
	// Authorize returns nil when p may pull upstream/repo, else one of identity's errors (the same for a
	// repository that does not exist as for one p may not see).
	Authorize(ctx context.Context, p identity.Principal, upstream, repo string) error
	// UpstreamCredentials returns the client's own credentials to fetch upstream/repo with, when the upstream
	// decided that p may pull it (passthrough); ok false means pullgate's own credentials.
	UpstreamCredentials(p identity.Principal, upstream, repo string) (username, password string, ok bool)
}

// authorize is the layer that decides whether the identity may pull the repository. With no
// Options.Authorizer every identity may pull everything the policy allows. /v2/ itself is refused only to
// anonymous clients, when Options.RequireLogin says that anonymous clients may pull nothing.
func (h *Handler) authorize(r *http.Request, req *request) error {
	if req.kind == kindAdmin {
		return h.authorizeAdmin(r, req)
	}
	if h.opts.Authorizer == nil || req.kind == kindToken {
		return nil // the token service decides per scope
	}
	if req.kind == kindBase {
		if h.opts.RequireLogin && req.identity.Method == identity.MethodAnonymous {
			return h.authError(r, req, identity.ErrUnauthenticated)
		}
		return nil
	}
	if req.up == nil {
		return nil
	}
	if err := h.opts.Authorizer.Authorize(r.Context(), req.identity, req.up.Name, req.repo); err != nil {
		return h.authError(r, req, err)
	}
	if err := h.scannerScope(r, req); err != nil {
		return err
	}
	if user, pass, ok := h.opts.Authorizer.UpstreamCredentials(req.identity, req.up.Name, req.repo); ok {
		req.cred = &upstream.Credentials{Username: user, Password: pass}
	}
	return nil
}
