package proxy

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/pullgate/pullgate/identity"
	"github.com/pullgate/pullgate/names"
)

// Authenticator establishes who sent a request. *identity.Service is the implementation. It returns an error
// (identity.ErrBadCredentials, *identity.RateLimitedError) only for credentials that are present and not
// valid; a request without credentials is anonymous, and the authorize layer decides what anonymous may do.
type Authenticator interface {
	Authenticate(r *http.Request) (identity.Principal, error)
}

// authenticate is the layer that decides who is asking. With no Options.Authenticator everyone is anonymous.
// The token service authenticates the credentials it is given itself.
func (h *Handler) authenticate(r *http.Request, req *request) error {
	if h.opts.Authenticator == nil || req.kind == kindToken {
		req.identity = identity.Anonymous()
		return nil
	}
	p, err := h.opts.Authenticator.Authenticate(r)
	if err != nil {
		req.identity = identity.Principal{Method: identity.MethodRobot}
		return h.authError(r, req, err)
	}
	req.identity = p
	return nil
}

// authError turns an identity decision into what the client sees: 401 with a challenge that tells it where to
// log in, 403, 429 or 503. The message is the same for a repository that exists and one that does not.
func (h *Handler) authError(r *http.Request, req *request, err error) error {
	reason := ""
	var ae *apiError
	var rl *identity.RateLimitedError
	switch {
	case errors.Is(err, identity.ErrUnauthenticated):
		reason = "unauthenticated"
		ae = &apiError{code: codeUnauthorized, message: "authentication required", challenge: h.challenge(r, req, "")}
	case errors.Is(err, identity.ErrBadCredentials):
		reason = "bad_credentials"
		ae = &apiError{code: codeUnauthorized, message: "authentication required: the credentials are not valid", challenge: h.challenge(r, req, "invalid_token")}
	case errors.Is(err, identity.ErrInsufficientScope):
		reason = "insufficient_scope"
		ae = &apiError{code: codeUnauthorized, message: "authentication required: the token does not cover this repository", challenge: h.challenge(r, req, "insufficient_scope")}
	case errors.Is(err, identity.ErrDenied):
		reason = "denied"
		ae = &apiError{code: codeDenied, message: "requested access to the resource is denied"}
	case errors.As(err, &rl):
		reason = "rate_limited"
		ae = &apiError{code: codeTooManyRequests, message: "too many failed logins from this address or for this user", retryAfter: rl.RetryAfter}
	case errors.Is(err, identity.ErrUnavailable):
		reason = "unavailable"
		ae = &apiError{code: codeUnavailable, retryAfter: 10 * time.Second, message: "the upstream could not be asked whether it accepts these credentials", cause: err}
	default:
		return err
	}
	h.opts.Metrics.AuthDenials.WithLabelValues(string(req.identity.Method), reason).Inc()
	return ae
}

// challenge is the WWW-Authenticate value of a 401: pullgate's token service at the host the client used (with
// the ns the request named, so that the token is for the same upstream), and the scope of the repository as
// the client addressed it. errParam is the RFC 6750 error code, or empty.
func (h *Handler) challenge(r *http.Request, req *request, errParam string) string {
	if req.kind == kindToken || req.kind == kindAdmin {
		return `Basic realm="pullgate"`
	}
	host := strings.ToLower(r.Host)
	if names.ValidateRegistry(host) != nil {
		host = h.opts.TokenHost
	}
	realm := "https://" + host + "/token"
	if req.ns != "" {
		realm += "?ns=" + req.ns
	}
	c := fmt.Sprintf(`Bearer realm=%q,service=%q`, realm, tokenService)
	if req.kind != kindBase && req.kind != kindToken && req.kind != kindAdmin && req.name != "" {
		c += fmt.Sprintf(`,scope="repository:%s:pull"`, req.name)
	}
	if errParam != "" {
		c += fmt.Sprintf(`,error=%q`, errParam)
	}
	return c
}

// tokenService is the service pullgate's tokens are issued for (the "service" of challenges and the "aud" of
// tokens).
const tokenService = "pullgate"
