package upstream

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
)

type scheme int

const (
	schemeNone scheme = iota
	schemeBasic
	schemeBearer
)

// challenge is what the registry asks for in WWW-Authenticate.
type challenge struct {
	scheme  scheme
	realm   string // bearer: the token service URL
	service string // bearer: the service parameter for token requests
}

func (a *challenge) equal(b *challenge) bool {
	return a.scheme == b.scheme && a.realm == b.realm && a.service == b.service
}

// parseChallenges reads WWW-Authenticate values; Bearer wins over Basic, unknown schemes are ignored.
func parseChallenges(values []string) *challenge {
	best := &challenge{}
	for _, v := range values {
		name, rest, _ := strings.Cut(strings.TrimSpace(v), " ")
		switch strings.ToLower(name) {
		case "bearer":
			params := parseAuthParams(rest)
			return &challenge{scheme: schemeBearer, realm: params["realm"], service: params["service"]}
		case "basic":
			best = &challenge{scheme: schemeBasic}
		}
	}
	return best
}

// parseAuthParams parses `realm="https://x/token",service="x",scope="a,b"` (RFC 7235 auth-params,
// quoted strings with backslash escapes or tokens).
func parseAuthParams(s string) map[string]string {
	params := map[string]string{}
	for {
		s = strings.TrimLeft(s, " \t,")
		if s == "" {
			return params
		}
		eq := strings.IndexByte(s, '=')
		if eq < 0 {
			return params
		}
		key := strings.ToLower(strings.TrimSpace(s[:eq]))
		s = strings.TrimLeft(s[eq+1:], " \t")
		var val strings.Builder
		if strings.HasPrefix(s, `"`) {
			i := 1
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				val.WriteByte(s[i])
			}
			s = s[min(i+1, len(s)):]
		} else {
			end := strings.IndexByte(s, ',')
			if end < 0 {
				end = len(s)
			}
			val.WriteString(strings.TrimSpace(s[:end]))
			s = s[end:]
		}
		params[key] = val.String()
	}
}

// challenge returns the cached challenge, learning it with GET /v2/ the first time. Concurrent callers
// share one ping; a failed ping is not cached.
func (c *Client) challenge(ctx context.Context) (*challenge, error) {
	c.mu.Lock()
	ch := c.chal
	c.mu.Unlock()
	if ch != nil {
		return ch, nil
	}
	v, err := c.shared(ctx, "ping", c.ping)
	if err != nil {
		return nil, err
	}
	return v.(*challenge), nil
}

func (c *Client) setChallenge(ch *challenge) {
	c.mu.Lock()
	c.chal = ch
	c.mu.Unlock()
}

func (c *Client) ping(ctx context.Context) (any, error) {
	req, err := http.NewRequest(http.MethodGet, c.endpoint("/v2/"), nil)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", c.opts.Name, err)
	}
	resp, err := c.send(ctx, "ping", req)
	if err != nil {
		return nil, err
	}
	ch := &challenge{}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return nil, c.statusError(resp, nil)
	case resp.StatusCode == http.StatusUnauthorized && c.ownHost(resp):
		// A challenge from another host that /v2/ redirected to is not the upstream's.
		ch = parseChallenges(resp.Header.Values("WWW-Authenticate"))
	}
	// Any other answer (200, or a 404 from a registry that does not serve /v2/): no authentication
	// until a request gets a 401 that says otherwise.
	c.drain(resp)
	c.setChallenge(ch)
	return ch, nil
}

// shared runs fn once for all concurrent callers with the same key. fn runs on a context that the
// callers' cancellation does not reach, bounded by twice the Timeout (the header timeout fires
// first); each caller stops waiting when its own ctx ends.
func (c *Client) shared(ctx context.Context, key string, fn func(context.Context) (any, error)) (any, error) {
	res := c.flight.DoChan(key, func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*c.opts.Timeout)
		defer cancel()
		return fn(fctx)
	})
	select {
	case r := <-res:
		return r.Val, r.Err
	case <-ctx.Done():
		return nil, fmt.Errorf("upstream %s: %w", c.opts.Name, ctx.Err())
	}
}

// auth is the Authorization for one request and where it came from.
type auth struct {
	header      string   // Authorization value, empty for anonymous
	key         tokenKey // bearer: the token's cache key
	token       string   // bearer: the token
	cachedToken bool     // bearer: the token came from the cache, not a request made for this Fetch
}

// authorize returns the Authorization for a request to repo under challenge ch, with cred, or with
// the keychain when cred is nil.
func (c *Client) authorize(ctx context.Context, ch *challenge, repo string, cred *Credentials) (auth, error) {
	switch ch.scheme {
	case schemeBasic:
		cfg, err := c.credentialsFor(ctx, cred)
		if err != nil || (cfg.Username == "" && cfg.Password == "") {
			return auth{}, err
		}
		return auth{header: basicAuth(cfg.Username, cfg.Password)}, nil
	case schemeBearer:
		scope := "repository:" + repo + ":pull"
		// Tokens are cached by the realm and service that issued them as well as by scope: a
		// token is only ever sent back under the challenge it was obtained for. They are cached,
		// and fetched once for concurrent requests, by whose credentials obtained them too.
		key := tokenKey{realm: ch.realm, service: ch.service, scope: scope, client: cred.cacheKey()}
		if t, ok := c.cachedToken(key); ok {
			return auth{header: "Bearer " + t, key: key, token: t, cachedToken: true}, nil
		}
		v, err := c.shared(ctx, "token "+key.String(), func(ctx context.Context) (any, error) {
			return c.fetchToken(ctx, ch, key, cred)
		})
		if err != nil {
			return auth{}, err
		}
		t := v.(string)
		return auth{header: "Bearer " + t, key: key, token: t}, nil
	}
	return auth{}, nil
}

// credentialsFor returns cred when it is not nil, else the keychain's credentials: a request with a
// client's own credentials never consults the keychain.
func (c *Client) credentialsFor(ctx context.Context, cred *Credentials) (authn.AuthConfig, error) {
	if cred != nil {
		return authn.AuthConfig{Username: cred.Username, Password: cred.Password}, nil
	}
	return c.credentials(ctx)
}

// credentials resolves the keychain for Host(). Its errors never hold the secrets.
func (c *Client) credentials(ctx context.Context) (authn.AuthConfig, error) {
	if c.opts.Keychain == nil {
		return authn.AuthConfig{}, nil
	}
	a, err := authn.Resolve(ctx, c.opts.Keychain, resource(c.Host()))
	if err != nil {
		return authn.AuthConfig{}, fmt.Errorf("upstream %s: resolving credentials: %w", c.opts.Name, err)
	}
	cfg, err := authn.Authorization(ctx, a)
	if err != nil {
		return authn.AuthConfig{}, fmt.Errorf("upstream %s: resolving credentials: %w", c.opts.Name, err)
	}
	if cfg.Username == "" && cfg.Password == "" && cfg.Auth != "" {
		if user, pass, err := decodeAuth(cfg.Auth); err == nil {
			cfg.Username, cfg.Password = user, pass
		}
	}
	return *cfg, nil
}

// resource is the authn.Resource of a registry host.
type resource string

func (r resource) String() string      { return string(r) }
func (r resource) RegistryStr() string { return string(r) }

func basicAuth(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// token is a cached bearer token.
type token struct {
	value     string
	refreshAt time.Time // fetch a new one from then on
}

// tokenKey is what a cached token was issued for: the realm and service of the challenge, the scope,
// and whose credentials obtained it.
type tokenKey struct {
	realm, service, scope string
	client                string // Credentials.cacheKey of a request's own credentials; "" for the keychain's
}

// String returns the key as one string that no other key gives (realm and service are quoted).
func (k tokenKey) String() string {
	return strconv.Quote(k.realm) + " " + strconv.Quote(k.service) + " " + k.scope + " " + k.client
}

const (
	defaultTokenLifetime = 60 * time.Second
	maxTokenMargin       = 30 * time.Second
	maxTokenBody         = 1 << 20  // bytes of a token response read
	maxTokenLen          = 16 << 10 // bytes of a token value accepted (real ones are a few KiB)
	defaultMaxTokens     = 4096
)

func (c *Client) cachedToken(key tokenKey) (string, bool) {
	now := c.opts.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.tokens[key]
	if !ok || !now.Before(t.refreshAt) {
		return "", false
	}
	return t.value, true
}

// dropToken forgets the token for key if it is still value (a newer one stays).
func (c *Client) dropToken(key tokenKey, value string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tokens[key].value == value {
		delete(c.tokens, key)
	}
}

// storeToken caches t under key. The cache holds at most Options.MaxTokens tokens: when it is full,
// the expired ones go first, then the one that expires soonest.
func (c *Client) storeToken(key tokenKey, t token) {
	now := c.opts.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.tokens[key]; !ok && len(c.tokens) >= c.opts.MaxTokens {
		var soonest tokenKey
		var soonestAt time.Time
		for k, old := range c.tokens {
			if !now.Before(old.refreshAt) {
				delete(c.tokens, k)
				continue
			}
			if soonestAt.IsZero() || old.refreshAt.Before(soonestAt) {
				soonest, soonestAt = k, old.refreshAt
			}
		}
		if len(c.tokens) >= c.opts.MaxTokens {
			delete(c.tokens, soonest)
		}
	}
	c.tokens[key] = t
}

// fetchToken asks the token service of ch for a token for key's scope with cred (the keychain's
// credentials when nil), caches it under key and returns it. A registry token from the keychain is
// used as it is, without a request.
func (c *Client) fetchToken(ctx context.Context, ch *challenge, key tokenKey, cred *Credentials) (any, error) {
	scope := key.scope
	cfg, err := c.credentialsFor(ctx, cred)
	if err != nil {
		return nil, err
	}
	if cfg.RegistryToken != "" {
		return cfg.RegistryToken, nil
	}
	realm, err := url.Parse(ch.realm)
	if err != nil || realm.Scheme != "https" || realm.Host == "" {
		return nil, fmt.Errorf("upstream %s: token realm %q is not an https URL", c.opts.Name, ch.realm)
	}
	var req *http.Request
	if cfg.IdentityToken != "" {
		// OAuth2 refresh-token grant, as docker login's identity tokens need.
		form := url.Values{
			"grant_type":    {"refresh_token"},
			"refresh_token": {cfg.IdentityToken},
			"client_id":     {"pullgate"},
			"scope":         {scope},
		}
		if ch.service != "" {
			form.Set("service", ch.service)
		}
		req, err = http.NewRequest(http.MethodPost, realm.String(), strings.NewReader(form.Encode()))
		if err == nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
	} else {
		q := realm.Query()
		if ch.service != "" {
			q.Set("service", ch.service)
		}
		q.Set("scope", scope)
		realm.RawQuery = q.Encode()
		req, err = http.NewRequest(http.MethodGet, realm.String(), nil)
		if err == nil && (cfg.Username != "" || cfg.Password != "") {
			req.SetBasicAuth(cfg.Username, cfg.Password)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("upstream %s: token request: %w", c.opts.Name, err)
	}
	resp, err := c.send(ctx, "token", req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		se := c.statusError(resp, cred)
		se.Message = strings.TrimSuffix("token request refused: "+se.Message, ": ")
		se.fromTokenService = true
		return nil, se
	}
	defer resp.Body.Close()
	defer c.limitBodyTime(resp)()
	var body struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
		ExpiresIn   int64  `json:"expires_in"`
		IssuedAt    string `json:"issued_at"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxTokenBody)).Decode(&body); err != nil {
		return nil, fmt.Errorf("upstream %s: %w: token response is not JSON", c.opts.Name, ErrUnavailable)
	}
	value := body.Token
	if value == "" {
		value = body.AccessToken
	}
	if value == "" {
		return nil, fmt.Errorf("upstream %s: %w: token response holds no token", c.opts.Name, ErrUnavailable)
	}
	if len(value) > maxTokenLen {
		return nil, fmt.Errorf("upstream %s: %w: token longer than %d bytes", c.opts.Name, ErrUnavailable, maxTokenLen)
	}
	now := c.opts.Now()
	c.storeToken(key, token{value: value, refreshAt: tokenRefreshAt(now, body.ExpiresIn, body.IssuedAt)})
	return value, nil
}

// tokenRefreshAt returns when a token should be replaced: at its expiry (issued_at, when it is in the
// recent past, else now; plus expires_in, default 60s) minus 10% of its lifetime or 30s, whichever is
// less.
func tokenRefreshAt(now time.Time, expiresIn int64, issuedAt string) time.Time {
	lifetime := defaultTokenLifetime
	if expiresIn > 0 {
		lifetime = time.Duration(min(expiresIn, int64(365*24*time.Hour/time.Second))) * time.Second
	}
	issued := now
	if t, err := time.Parse(time.RFC3339, issuedAt); err == nil && !t.After(now) && now.Sub(t) < lifetime {
		issued = t
	}
	return issued.Add(lifetime - min(lifetime/10, maxTokenMargin))
}

// decodeAuth decodes the "auth" field of a docker config: base64(user:password), padded or not.
func decodeAuth(s string) (user, pass string, err error) {
	s = strings.TrimSpace(s)
	enc := base64.StdEncoding
	if !strings.HasSuffix(s, "=") {
		enc = base64.RawStdEncoding
	}
	b, err := enc.DecodeString(s)
	if err != nil {
		return "", "", fmt.Errorf("auth field is not base64")
	}
	user, pass, ok := strings.Cut(string(b), ":")
	if !ok {
		return "", "", fmt.Errorf("auth field is not base64(username:password)")
	}
	return user, pass, nil
}
