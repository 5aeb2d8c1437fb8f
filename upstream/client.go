package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"golang.org/x/sync/semaphore"
	"golang.org/x/sync/singleflight"

	"github.com/pullgate/pullgate/names"
)

// Options configures one upstream. Only Name and URL are required.
type Options struct {
	// Name is what clients call the upstream ("docker.io", "ghcr.io", "hub", "local"); it names the
	// upstream in errors and events. Required.
	Name string
	// URL is the registry's base URL, "https://registry-1.docker.io". It must be https; a path, if any,
	// is kept as a prefix before /v2/. Required.
	URL string
	// Transport is the base transport (it carries the CA pool and proxy settings). Nil means a clone of
	// http.DefaultTransport that reads at most 1 MiB of response headers (net/http's default is 10
	// MiB); a Transport given here should set MaxResponseHeaderBytes likewise.
	Transport http.RoundTripper
	// Keychain gives the credentials for a Resource whose RegistryStr() is Host(), resolved each time
	// they are needed (each token request; each request to a registry that asks for Basic auth), so
	// a rotating keychain such as AuthFile takes effect at once. Nil means anonymous.
	Keychain authn.Keychain
	// Offline makes the Client never contact the upstream: Fetch returns an error wrapping ErrOffline.
	Offline bool
	// Concurrency is the most requests in flight to this upstream at once (token and ping requests
	// included), counted from sending a request until its response headers arrive: a body that is
	// being streamed does not hold a slot, so a slow client cannot starve the others. Zero means 32.
	Concurrency int
	// Timeout is how long one request may wait for its response headers (redirects included). Bodies
	// stream without a deadline; the caller's context cancels them. Zero means 30s.
	Timeout time.Duration
	// FailureThreshold is how many consecutive failures to reach the upstream (connection errors and
	// header timeouts; HTTP answers of any status are not failures) open the circuit. Zero means 5.
	FailureThreshold int
	// CoolDown is how long an open circuit fails fast before one probe request is let through. Zero
	// means 30s.
	CoolDown time.Duration
	// MaxTokens is the most bearer tokens cached at once (one per repository pulled through this
	// upstream while its token is valid); when full, the token that expires soonest is dropped.
	// Zero means 4096.
	MaxTokens int
	// Now is the clock for token expiry, Retry-After and the circuit breaker. Nil means time.Now.
	// Event durations are measured with the real monotonic clock.
	Now func() time.Time
	// Observe, when not nil, is called once per HTTP request sent upstream (token, ping and each
	// redirect hop included), when its response headers arrive or it fails. It must be quick and safe
	// for concurrent use. Nil means no hook.
	Observe func(Event)
}

// Event describes one HTTP request sent upstream, for metrics and logs. It never holds credentials.
type Event struct {
	Upstream           string        // Options.Name
	Method             string        // GET, HEAD or POST (token requests with an identity token)
	Kind               string        // "manifests", "blobs", "tags", "referrers", "token", "ping"
	Status             int           // HTTP status, 0 when no response
	Err                error         // transport error, nil when a response arrived
	Duration           time.Duration // until the response headers arrived or the request failed
	RateLimitRemaining int           // from "RateLimit-Remaining" ("100;w=21600" -> 100), -1 when absent
}

// Request is one distribution-API request for Fetch.
type Request struct {
	Method string      // GET or HEAD; empty means GET
	Repo   string      // repository, already normalised by the caller: "library/nginx"
	Kind   string      // "manifests", "blobs", "tags/list" or "referrers"
	Ref    string      // tag or digest; empty for "tags/list"
	Query  url.Values  // e.g. n and last for tags, artifactType for referrers; nil means none
	Header http.Header // e.g. Accept, Range, If-None-Match; Authorization is never forwarded
	// Credentials, when not nil, are a client's own credentials for the upstream: the request is
	// authenticated with them instead of Options.Keychain (a Basic header, or a token from the token
	// service asked with them), and the tokens obtained are used only for requests with the same
	// Credentials. Nil means pullgate's own credentials (the keychain). A username holding a NUL byte
	// is an invalid request.
	Credentials *Credentials
}

const (
	defaultConcurrency      = 32
	defaultTimeout          = 30 * time.Second
	defaultFailureThreshold = 5
	defaultCoolDown         = 30 * time.Second
	maxRedirects            = 10
	maxDrain                = 64 << 10 // bytes of an unwanted body read so its connection can be reused
	maxResponseHeaderBytes  = 1 << 20  // of the default Transport
)

func (o Options) withDefaults() Options {
	if o.Concurrency <= 0 {
		o.Concurrency = defaultConcurrency
	}
	if o.Timeout <= 0 {
		o.Timeout = defaultTimeout
	}
	if o.FailureThreshold <= 0 {
		o.FailureThreshold = defaultFailureThreshold
	}
	if o.CoolDown <= 0 {
		o.CoolDown = defaultCoolDown
	}
	if o.MaxTokens <= 0 {
		o.MaxTokens = defaultMaxTokens
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Transport == nil {
		o.Transport = http.DefaultTransport
		if t, ok := http.DefaultTransport.(*http.Transport); ok {
			t = t.Clone()
			t.MaxResponseHeaderBytes = maxResponseHeaderBytes
			o.Transport = t
		}
	}
	return o
}

// Client talks to one upstream registry. It is safe for concurrent use.
type Client struct {
	opts Options
	base *url.URL
	http *http.Client
	sem  *semaphore.Weighted

	flight singleflight.Group // "ping" and "token <realm> <service> <scope>" requests

	mu          sync.Mutex
	chal        *challenge         // nil until learned
	tokens      map[tokenKey]token // at most opts.MaxTokens
	limited     *StatusError       // the last 429, while limitedTill is in the future
	limitedTill time.Time          // no request before this time
	breaker     breaker
}

// New validates opts and returns a Client. It does no network I/O, so it works while the upstream is
// down.
func New(opts Options) (*Client, error) {
	if strings.TrimSpace(opts.Name) == "" {
		return nil, errors.New("upstream: empty name")
	}
	u, err := url.Parse(opts.URL)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: bad URL: %w", opts.Name, err)
	}
	switch {
	case u.Scheme != "https":
		return nil, fmt.Errorf("upstream %s: URL %q: scheme must be https", opts.Name, opts.URL)
	case u.Host == "" || u.Hostname() == "":
		return nil, fmt.Errorf("upstream %s: URL %q has no host", opts.Name, opts.URL)
	case u.User != nil:
		return nil, fmt.Errorf("upstream %s: URL must not hold credentials (use the credentials file)", opts.Name)
	case u.RawQuery != "" || u.Fragment != "":
		return nil, fmt.Errorf("upstream %s: URL %q must not have a query or fragment", opts.Name, opts.URL)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""
	opts = opts.withDefaults()
	c := &Client{
		opts:   opts,
		base:   u,
		sem:    semaphore.NewWeighted(int64(opts.Concurrency)),
		tokens: map[tokenKey]token{},
	}
	c.breaker = breaker{threshold: opts.FailureThreshold, coolDown: opts.CoolDown}
	c.http = &http.Client{
		Transport:     &observer{base: opts.Transport, c: c},
		CheckRedirect: checkRedirect,
	}
	return c, nil
}

// Name returns Options.Name.
func (c *Client) Name() string { return c.opts.Name }

// Host returns the host[:port] of Options.URL.
func (c *Client) Host() string { return c.base.Host }

// Fetch sends r to <URL>/v2/<Repo>/<Kind>/<Ref>?<Query>, authenticated as the upstream asks, and
// returns the response when its status is 2xx; the caller closes the body. ctx cancels the request
// and the body read. Anything else is an error:
//   - a *StatusError for an HTTP answer, with the OCI error code and message from its body (none from
//     a host that a redirect pointed at); wrong credentials give the token service's or the
//     registry's 401/403, never an anonymous retry; a 401 from a redirect target (a CDN) never
//     changes how the Client authenticates, only the upstream's own host:port does;
//   - a 429 is remembered: until its Retry-After has passed, Fetch answers a *StatusError 429 without
//     contacting the upstream; a 429 answered to a request with Credentials is not remembered (it
//     counts that client's quota, not pullgate's), but a remembered one holds for every request;
//   - a *StatusError never holds the password of Request.Credentials, even when the upstream echoes
//     it;
//   - an error wrapping ErrUnavailable for connection errors, timeouts and an open circuit;
//   - an error wrapping ErrOffline when Options.Offline is set;
//   - an error wrapping ctx.Err() when ctx ends first.
func (c *Client) Fetch(ctx context.Context, r Request) (*http.Response, error) {
	if c.opts.Offline {
		return nil, fmt.Errorf("upstream %s: %w", c.opts.Name, ErrOffline)
	}
	method, kind, u, err := c.requestURL(r)
	if err != nil {
		return nil, err
	}
	var cred *Credentials
	if r.Credentials != nil {
		v := *r.Credentials // the caller's may change while this request runs
		cred = &v
	}
	if err := c.rateLimited(); err != nil {
		return nil, err
	}
	ch, err := c.challenge(ctx)
	if err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		a, err := c.authorize(ctx, ch, r.Repo, cred)
		if err != nil {
			return nil, err
		}
		req, err := http.NewRequest(method, u, nil)
		if err != nil {
			return nil, fmt.Errorf("upstream %s: %w", c.opts.Name, err)
		}
		for k, vs := range r.Header {
			req.Header[k] = append([]string(nil), vs...)
		}
		req.Header.Del("Authorization")
		req.Header.Del("Cookie")
		if a.header != "" {
			req.Header.Set("Authorization", a.header)
		}
		resp, err := c.send(ctx, kind, req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode >= 200 && resp.StatusCode < 300 {
			return resp, nil
		}
		if resp.StatusCode == http.StatusUnauthorized && attempt == 0 && c.ownHost(resp) {
			// Only the upstream's own host may change how pullgate authenticates: a 401 from a
			// redirect target (a CDN) is an error for this request, never a reason to send the
			// upstream's credentials to a realm that the target names.
			next := parseChallenges(resp.Header.Values("WWW-Authenticate"))
			retry := false
			if a.cachedToken {
				// The token was revoked or expired early: get a fresh one, once.
				c.dropToken(a.key, a.token)
				retry = true
			}
			if next.scheme != schemeNone && !next.equal(ch) {
				// The registry asks for another authentication than /v2/ did.
				c.setChallenge(next)
				ch = next
				retry = true
			}
			if retry {
				c.drain(resp)
				continue
			}
		}
		return nil, c.statusError(resp, cred)
	}
}

// validReference reports whether ref is a tag or a digest pullgate can verify.
func validReference(ref string) bool {
	if names.IsDigest(ref) {
		_, err := names.ParseDigest(ref)
		return err == nil
	}
	return names.ValidateTag(ref) == nil
}

// requestURL checks r and returns its method, event kind and URL.
func (c *Client) requestURL(r Request) (method, kind, u string, err error) {
	method = r.Method
	if method == "" {
		method = http.MethodGet
	}
	bad := func(format string, args ...any) (string, string, string, error) {
		return "", "", "", fmt.Errorf("upstream %s: %w: %s", c.opts.Name, ErrInvalidRequest, fmt.Sprintf(format, args...))
	}
	if method != http.MethodGet && method != http.MethodHead {
		return bad("method %q", method)
	}
	if names.ValidateRepository(r.Repo) != nil {
		return bad("repository %q", r.Repo)
	}
	if err := r.Credentials.validate(); err != nil {
		return bad("%v", err)
	}
	path := c.base.Path + "/v2/" + r.Repo + "/"
	switch r.Kind {
	case "manifests":
		if !validReference(r.Ref) {
			return bad("reference %q", r.Ref)
		}
		kind, path = "manifests", path+"manifests/"+r.Ref
	case "blobs", "referrers":
		if _, err := names.ParseDigest(r.Ref); err != nil {
			return bad("digest %q", r.Ref)
		}
		kind, path = r.Kind, path+r.Kind+"/"+r.Ref
	case "tags/list":
		if r.Ref != "" {
			return bad("reference %q with tags/list", r.Ref)
		}
		kind, path = "tags", path+"tags/list"
	default:
		return bad("kind %q", r.Kind)
	}
	v := *c.base
	v.Path = path
	v.RawQuery = r.Query.Encode()
	return method, kind, v.String(), nil
}

// ownHost reports whether resp came from the upstream's own host:port (after any redirects), the only
// host whose authentication challenges are believed.
func (c *Client) ownHost(resp *http.Response) bool {
	return resp.Request != nil && resp.Request.URL != nil && strings.EqualFold(resp.Request.URL.Host, c.base.Host)
}

// redirectedAway reports whether resp came from another host than the one its request was first sent
// to.
func redirectedAway(resp *http.Response) bool {
	if resp.Request == nil {
		return false
	}
	first := resp.Request
	for first.Response != nil && first.Response.Request != nil {
		first = first.Response.Request
	}
	return !strings.EqualFold(first.URL.Host, resp.Request.URL.Host)
}

// endpoint returns the URL of path under the base URL.
func (c *Client) endpoint(path string) string {
	v := *c.base
	v.Path = c.base.Path + path
	return v.String()
}

// rateLimited returns the remembered 429 while its Retry-After has not passed.
func (c *Client) rateLimited() error {
	now := c.opts.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.limited == nil {
		return nil
	}
	if !now.Before(c.limitedTill) {
		c.limited = nil
		return nil
	}
	e := *c.limited
	e.RetryAfter = c.limitedTill.Sub(now)
	return &e
}

// statusError turns a non-2xx response into a *StatusError, remembering a 429 answered to pullgate's
// own credentials (cred nil). It reads at most maxErrorBody bytes of the body, for at most Timeout,
// keeps no code or message from a host that a redirect pointed at, and no password of cred.
func (c *Client) statusError(resp *http.Response, cred *Credentials) *StatusError {
	now := c.opts.Now()
	stop := c.limitBodyTime(resp)
	e := newStatusError(c.opts.Name, resp, now, cred)
	stop()
	if redirectedAway(resp) {
		// The host a redirect pointed at is not the upstream: its words are not passed on (a
		// redirect to an internal service must not read that service's answers out to clients).
		e.Code, e.Message = "", ""
	}
	if e.Status == http.StatusTooManyRequests && cred == nil {
		// A client's own credentials have their own quota: their 429 must not stop pullgate's
		// requests, nor other clients'.
		c.mu.Lock()
		if till := now.Add(e.RetryAfter); till.After(c.limitedTill) || c.limited == nil {
			c.limitedTill = till
		}
		saved := *e
		c.limited = &saved
		c.mu.Unlock()
	}
	return e
}

type kindKey struct{}

// errHeaderTimeout is the cancel cause of a request whose headers did not arrive within Timeout.
var errHeaderTimeout = errors.New("no response headers in time")

// send does one HTTP request (and its redirects) through the circuit breaker and the concurrency
// limit, with the header timeout. The response body, if any, stays readable until closed or ctx ends.
func (c *Client) send(ctx context.Context, kind string, req *http.Request) (*http.Response, error) {
	probe, err := c.breaker.allow(c.opts.Now(), c.opts.Name)
	if err != nil {
		return nil, err
	}
	if err := c.sem.Acquire(ctx, 1); err != nil {
		c.breaker.abandon(probe)
		return nil, fmt.Errorf("upstream %s: %w", c.opts.Name, err)
	}
	reqCtx, cancel := context.WithCancelCause(ctx)
	timer := time.AfterFunc(c.opts.Timeout, func() { cancel(errHeaderTimeout) })
	resp, err := c.http.Do(req.WithContext(context.WithValue(reqCtx, kindKey{}, kind)))
	inTime := timer.Stop()
	c.sem.Release(1)
	if err == nil && !inTime {
		resp.Body.Close()
		err = errHeaderTimeout
	}
	if err != nil {
		cause := context.Cause(reqCtx)
		cancel(nil)
		if ctx.Err() != nil {
			c.breaker.abandon(probe)
			return nil, fmt.Errorf("upstream %s: %w", c.opts.Name, ctx.Err())
		}
		var ue *url.Error
		switch {
		case errors.Is(cause, errHeaderTimeout):
			err = fmt.Errorf("no response headers within %s", c.opts.Timeout)
		case errors.As(err, &ue):
			if u, perr := url.Parse(ue.URL); perr == nil {
				ue.URL = redactURL(u) // a CDN URL's query is a signature
			}
		}
		c.breaker.failure(probe, c.opts.Now(), err)
		return nil, fmt.Errorf("upstream %s: %w: %v", c.opts.Name, ErrUnavailable, err)
	}
	c.breaker.success(probe)
	if err := ctx.Err(); err != nil {
		// The answer won the race against the cancellation; the caller asked for the error.
		resp.Body.Close()
		cancel(nil)
		return nil, fmt.Errorf("upstream %s: %w", c.opts.Name, err)
	}
	resp.Body = &cancelBody{ReadCloser: resp.Body, ctxErr: ctx.Err, cancel: cancel}
	return resp, nil
}

// cancelBody ends reads with the caller's context error once that context is done (the transport
// may otherwise deliver a clean EOF that raced with the cancellation), and releases the request's
// context when closed.
type cancelBody struct {
	io.ReadCloser
	ctxErr func() error // the caller's ctx.Err
	cancel context.CancelCauseFunc
}

func (b *cancelBody) Read(p []byte) (int, error) {
	if err := b.ctxErr(); err != nil {
		return 0, err
	}
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		if cerr := b.ctxErr(); cerr != nil {
			return n, cerr
		}
	}
	return n, err
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel(nil)
	return err
}

// checkRedirect follows up to maxRedirects https redirects and drops Authorization whenever the target
// is not the host:port that the request was first sent to (the Go client keeps it for same-domain
// redirects on other ports and for subdomains). Other headers, Range included, are kept. A request
// with a body (a POST to a token service) is never redirected to another host.
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= maxRedirects {
		return fmt.Errorf("stopped after %d redirects", maxRedirects)
	}
	if req.URL.Scheme != "https" {
		return fmt.Errorf("refusing redirect to non-https URL %s", redactURL(req.URL))
	}
	if !strings.EqualFold(req.URL.Host, via[0].URL.Host) {
		if kind, _ := req.Context().Value(kindKey{}).(string); kind == "manifests" || kind == "tags" || kind == "referrers" {
			// Only content checked against its digest (blobs) may come from another host (a CDN): a hostile
			// upstream must not make pullgate fetch, and hand to clients as the upstream's, what another https
			// host (an internal service) answers.
			return fmt.Errorf("refusing to follow a %s redirect to another host %s", kind, req.URL.Host)
		}
		if req.Method != http.MethodGet && req.Method != http.MethodHead {
			// A 307/308 would resend the body (an identity token's refresh-token grant) to
			// another host.
			return fmt.Errorf("refusing to resend a %s request to another host %s", req.Method, req.URL.Host)
		}
		req.Header.Del("Authorization")
	}
	return nil
}

// redactURL drops the query (CDN URLs carry signatures) for messages.
func redactURL(u *url.URL) string {
	v := *u
	v.User = nil
	if v.RawQuery != "" {
		v.RawQuery = "..."
	}
	return v.String()
}

// observer reports each round trip to Options.Observe.
type observer struct {
	base http.RoundTripper
	c    *Client
}

func (o *observer) RoundTrip(req *http.Request) (*http.Response, error) {
	if o.c.opts.Observe == nil {
		return o.base.RoundTrip(req)
	}
	start := time.Now()
	resp, err := o.base.RoundTrip(req)
	kind, _ := req.Context().Value(kindKey{}).(string)
	ev := Event{
		Upstream:           o.c.opts.Name,
		Method:             req.Method,
		Kind:               kind,
		Duration:           time.Since(start),
		RateLimitRemaining: -1,
	}
	if err != nil {
		ev.Err = err
		if cause := context.Cause(req.Context()); errors.Is(cause, errHeaderTimeout) {
			ev.Err = fmt.Errorf("%w: %w", cause, err)
		}
	} else {
		ev.Status = resp.StatusCode
		ev.RateLimitRemaining = parseRateLimitRemaining(resp.Header)
	}
	o.c.opts.Observe(ev)
	return resp, err
}

// drain reads a little of resp's body, so the connection can be reused, and closes it; it gives up
// after Timeout.
func (c *Client) drain(resp *http.Response) {
	defer c.limitBodyTime(resp)()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrain))
	resp.Body.Close()
}

// errBodyTimeout is the cancel cause of a body that the Client reads itself (an error, a token, a
// drain) and that did not arrive within Timeout.
var errBodyTimeout = errors.New("response body not read in time")

// limitBodyTime makes reads of resp's body fail once Timeout has passed, and returns the function
// that lifts the limit. It is for the small answers the Client reads itself, each also capped in size;
// the bodies handed to the caller stream without a deadline.
func (c *Client) limitBodyTime(resp *http.Response) (stop func()) {
	b, ok := resp.Body.(*cancelBody)
	if !ok {
		return func() {}
	}
	timer := time.AfterFunc(c.opts.Timeout, func() { b.cancel(errBodyTimeout) })
	return func() { timer.Stop() }
}
