package proxy

import (
	"net/http"
)

// Identity is who sent a request, as the authenticate layer established it.
type Identity struct {
	// Name identifies the client in the pull log ("robot$ci", a certificate's subject); empty for anonymous.
	Name string
	// Method says how it was established: "anonymous" today; robot, token, mtls or passthrough later.
	Method string
}

// Authenticator establishes who sent a request. It returns an error (an *apiError with codeUnauthorized and a
// challenge, typically) only for credentials that are present and wrong; a request without credentials is
// anonymous, and the authorize layer decides what anonymous may do.
type Authenticator interface {
	Authenticate(r *http.Request) (Identity, error)
}

// authenticate is the layer that decides who is asking. With no Options.Authenticator everyone is anonymous.
func (h *Handler) authenticate(r *http.Request, req *request) error {
	if h.opts.Authenticator == nil {
		req.identity = Identity{Method: "anonymous"}
		return nil
	}
	id, err := h.opts.Authenticator.Authenticate(r)
	if err != nil {
		return err
	}
	req.identity = id
	return nil
}
