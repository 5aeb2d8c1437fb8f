package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/pullgate/pullgate/identity"
)

// TokenIssuer is the logic behind pullgate's token service (/token). *identity.Service is the implementation.
type TokenIssuer interface {
	// Login checks the user name and secret of the OAuth2 password grant, sent from remote.
	Login(ctx context.Context, remote, user, secret string) (identity.Principal, error)
	// Refresh checks a refresh token of the OAuth2 refresh_token grant.
	Refresh(raw string) (identity.Principal, error)
	// Issue signs a token for p that grants pull on access ("<upstream>/<repository>" names).
	Issue(p identity.Principal, access []string, refresh bool) (identity.Grant, error)
}

const (
	maxTokenForm   = 64 << 10 // bytes of a POST form read
	maxTokenScopes = 32       // scopes decided per token request; more are ignored
)

// tokenAnswer is the token service's JSON answer, as the distribution token spec and OAuth2 write it.
type tokenAnswer struct {
	Token        string `json:"token"`
	AccessToken  string `json:"access_token"`
	ExpiresIn    int    `json:"expires_in"`
	IssuedAt     string `json:"issued_at"`
	RefreshToken string `json:"refresh_token,omitempty"`
}

// serveToken is the token service: GET with Basic credentials (or a client certificate, or none for what
// anonymous clients may pull), or POST with the OAuth2 password or refresh_token grant. It answers a signed
// token whose grant is cut to what the identity may pull: each requested repository scope is resolved to an
// upstream and a repository as a registry request would be (with the realm's ns), and is granted only when the
// allow-list and the Authorizer let the identity pull it. A partial grant is not an error.
func (h *Handler) serveToken(w *recorder, r *http.Request, req *request) error {
	if h.opts.Tokens == nil || h.opts.Authenticator == nil || h.opts.Authorizer == nil {
		return errorf(codeNotFound, "pullgate has no token service: no client identities are configured")
	}
	var (
		p       identity.Principal
		err     error
		scopes  []string
		refresh bool
	)
	switch r.Method {
	case http.MethodGet:
		if strings.HasPrefix(strings.ToLower(r.Header.Get("Authorization")), "bearer ") {
			return errorf(codeUnauthorized, "the token service takes Basic credentials, not a token")
		}
		p, err = h.opts.Authenticator.Authenticate(r)
		q := r.URL.Query()
		for _, s := range q["scope"] {
			scopes = append(scopes, strings.Fields(s)...)
		}
		refresh = q.Get("offline_token") == "true"
	case http.MethodPost:
		r.Body = http.MaxBytesReader(w, r.Body, maxTokenForm)
		if perr := r.ParseForm(); perr != nil {
			return &apiError{code: codeUnsupported, status: http.StatusBadRequest, message: fmt.Sprintf("invalid_request: the token request is not a valid form of at most %d bytes", maxTokenForm)}
		}
		f := r.PostForm
		switch f.Get("grant_type") {
		case "password":
			p, err = h.opts.Tokens.Login(r.Context(), identity.RemoteHost(r), f.Get("username"), f.Get("password"))
		case "refresh_token":
			p, err = h.opts.Tokens.Refresh(f.Get("refresh_token"))
		default:
			// OAuth2 answers an unknown grant with 400 (unsupported_grant_type).
			return &apiError{code: codeUnsupported, status: http.StatusBadRequest, message: "unsupported_grant_type: grant_type must be password or refresh_token"}
		}
		scopes = strings.Fields(f.Get("scope"))
		refresh = f.Get("access_type") == "offline"
	}
	if err != nil {
		req.identity = identity.Principal{Method: identity.MethodRobot}
		return h.authError(r, req, err)
	}
	req.identity = p
	granted, err := h.grant(r.Context(), p, req.ns, scopes)
	if err != nil {
		return h.authError(r, req, err)
	}
	g, err := h.opts.Tokens.Issue(p, granted, refresh)
	if err != nil {
		return err
	}
	h.opts.Metrics.TokensIssued.WithLabelValues(string(p.Method)).Inc()
	body, err := json.Marshal(tokenAnswer{Token: g.Token, AccessToken: g.Token, ExpiresIn: int(g.ExpiresIn / time.Second),
		IssuedAt: g.IssuedAt.UTC().Format(time.RFC3339), RefreshToken: g.RefreshToken})
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
	return nil
}

// grant decides each requested scope and returns the "<upstream>/<repository>" names p may pull. Scopes that
// are not repository pulls, that name no upstream, or that p may not pull are left out. An upstream that could
// not be asked about passed-through credentials, or too many failures, fail the whole request.
func (h *Handler) grant(ctx context.Context, p identity.Principal, ns string, scopes []string) ([]string, error) {
	var granted []string
	seen := map[string]bool{}
	for i, s := range scopes {
		if i == maxTokenScopes {
			break
		}
		name, ok := pullScope(s)
		if !ok || validateName(name) != nil {
			continue
		}
		up, repo, err := h.resolve(ns, name)
		if err != nil {
			continue
		}
		canonical := up.Name + "/" + repo
		if seen[canonical] || !h.opts.Policy.allowed(up.Name, repo) {
			continue
		}
		seen[canonical] = true
		err = h.opts.Authorizer.Authorize(ctx, p, up.Name, repo)
		var rl *identity.RateLimitedError
		switch {
		case err == nil:
			granted = append(granted, canonical)
		case errors.Is(err, identity.ErrUnavailable), errors.As(err, &rl):
			return nil, err
		}
	}
	return granted, nil
}

// pullScope returns the repository name of a scope "repository:<name>:<actions>" whose actions include pull
// ("*" included). The name may hold a registry's ":port".
func pullScope(s string) (string, bool) {
	typ, rest, ok := strings.Cut(s, ":")
	i := strings.LastIndexByte(rest, ':')
	if !ok || typ != "repository" || i <= 0 {
		return "", false
	}
	for _, a := range strings.Split(rest[i+1:], ",") {
		if a == "pull" || a == "*" {
			return rest[:i], true
		}
	}
	return "", false
}
