// Package proxy is pullgate's registry API: it parses pull requests, picks the upstream, answers from the cache
// and fills the cache from the upstream on a miss, and writes the pull log.
//
// It does not know how content is laid out on disk (package cache), how upstreams authenticate or rate-limit
// (package upstream), or how it is exposed to Prometheus (package metrics). It does not listen or do TLS.
package proxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/pullgate/pullgate/cache"
	"github.com/pullgate/pullgate/gate"
	"github.com/pullgate/pullgate/identity"
	"github.com/pullgate/pullgate/lifecycle"
	"github.com/pullgate/pullgate/metrics"
	"github.com/pullgate/pullgate/upstream"
)

// Fetcher sends one request to an upstream registry. *upstream.Client is the implementation.
type Fetcher interface {
	Fetch(ctx context.Context, r upstream.Request) (*http.Response, error)
}

// Upstream is one configured upstream registry.
type Upstream struct {
	// Name is what clients call it: the ns query parameter, or the first path element ("docker.io", "hub").
	Name string
	// Hosts are further names that select this upstream in ns ("registry-1.docker.io", "index.docker.io").
	Hosts []string
	// Identity names the registry behind the upstream (its URL). When the registry a Name stands for changes,
	// what pullgate cached under the Name (tags, repository links, referrers) is dropped at New, so that nothing
	// of the old registry is served as the new one's. Empty means the Name is the identity.
	Identity string
	// DockerHub adds "library/" to single-element repository names, as Docker Hub expects.
	DockerHub bool
	// Fetcher talks to it. Required.
	Fetcher Fetcher
}

// Options configures New. Each field's comment says what its zero value means.
type Options struct {
	// Cache stores content and the index. Required.
	Cache *cache.Cache
	// Upstreams are the registries pullgate may pull from. Requests that name no configured upstream are refused.
	Upstreams []Upstream
	// Default names the upstream for requests that name none; empty means such requests are refused.
	Default string
	// TagTTL is how long a tag's digest is served without asking the upstream. Zero means 5 minutes.
	TagTTL time.Duration
	// NegativeTTL is how long "this manifest does not exist upstream" is remembered. Zero means 30 seconds.
	NegativeTTL time.Duration
	// EmptyReferrersTTL is how long an empty referrers answer is kept in the cache index, to be served when the
	// upstream cannot be reached (non-empty answers are kept until replaced). Zero means 1 hour.
	EmptyReferrersTTL time.Duration
	// FillTimeout bounds one upstream fill of a blob, independent of the clients waiting on it. Zero means 1 hour.
	FillTimeout time.Duration
	// WriteTimeout is how long one write of a response may take: each write moves the deadline on, so a slow
	// download that makes progress goes on, and a client that stopped reading is cut off. Zero means 1 minute;
	// negative means no deadline.
	WriteTimeout time.Duration
	// MaxManifestSize is the largest manifest accepted from an upstream. Zero means 4 MiB.
	MaxManifestSize int64
	// Authenticator establishes who sent a request; nil means every client is anonymous.
	Authenticator Authenticator
	// Authorizer decides which identity may pull which repository; nil means every identity may pull everything
	// the Policy allows.
	Authorizer Authorizer
	// Tokens is the token service behind /token; nil means /token is not served (404).
	Tokens TokenIssuer
	// RequireLogin answers /v2/ with 401 and a challenge to clients without credentials. Set it when
	// anonymous clients may pull nothing, so that clients log in before they ask for content.
	RequireLogin bool
	// TokenHost is the host[:port] named in challenges when the Host a client sent is not a valid host name;
	// empty means "localhost".
	TokenHost string
	// MaxFills bounds the blob fills running at once, all upstreams together. Zero means 64.
	MaxFills int
	// MaxFillsPerUpstream bounds the blob fills running at once from one upstream. Keep it below the upstream
	// client's Concurrency (32 by default), so that fills waiting for response headers never hold every slot
	// of it and manifest requests still get through. Zero means 16.
	MaxFillsPerUpstream int
	// FillWait is how long a request that needs a new fill waits for a free fill slot (as long as the client
	// waits, at most this) before it is answered 503 UNAVAILABLE with Retry-After. Zero means 30 seconds.
	FillWait time.Duration
	// AbandonGrace is how long a fill keeps running once every client reading it went away; a client that
	// asks for the blob within the grace keeps it alive. A prefetched fill gets the grace from its start.
	// Zero means 30 seconds.
	AbandonGrace time.Duration
	// RangeWait is how long a Range request that does not reach the blob's end waits for a running fill to be
	// verified (its bytes are never sent unverified) before it is answered 503 UNAVAILABLE with Retry-After.
	// Zero means 30 seconds.
	RangeWait time.Duration
	// PrefetchConcurrency is how many blobs of image manifests fetched from one upstream are prefetched at
	// once (config and layers, before a client asks); the rest start as those finish. Zero means
	// 8; a negative value disables prefetching.
	PrefetchConcurrency int
	// Admin decides who may use the admin API (/admin/v1/); nil means there is none (404).
	Admin AdminAuthorizer
	// Resolve maps image names to upstreams and repositories for the admin API's cache routes (pins, purge,
	// images, export, import), by the same rules as requests are routed; nil means those routes are off (404).
	Resolve lifecycle.Resolver
	// Verdicts lists the gate's verdicts for the admin API; nil means the gate is off.
	Verdicts VerdictLister
	// Gate decides whether a manifest may be served (scan verdicts, signatures); nil means every manifest the
	// other layers allow is served.
	Gate Gate
	// Policy decides which repositories may be pulled and which tags are immutable. Zero allows everything.
	Policy Policy
	// Metrics receives the counters; nil means a private, unexported set.
	Metrics *metrics.Metrics
	// Log receives the pull log (one line per request) and errors; nil means slog.Default().
	Log *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	// afterFunc runs f after d unless the returned stop is called first; nil means time.AfterFunc. Tests
	// replace it to fire grace and wait timers by hand.
	afterFunc func(d time.Duration, f func()) (stop func() bool)
}

func (o Options) withDefaults() Options {
	if o.TagTTL == 0 {
		o.TagTTL = 5 * time.Minute
	}
	if o.NegativeTTL == 0 {
		o.NegativeTTL = 30 * time.Second
	}
	if o.EmptyReferrersTTL == 0 {
		o.EmptyReferrersTTL = time.Hour
	}
	if o.FillTimeout == 0 {
		o.FillTimeout = time.Hour
	}
	if o.WriteTimeout == 0 {
		o.WriteTimeout = time.Minute
	}
	if o.MaxManifestSize == 0 {
		o.MaxManifestSize = 4 << 20
	}
	if o.MaxFills <= 0 {
		o.MaxFills = 64
	}
	if o.MaxFillsPerUpstream <= 0 {
		o.MaxFillsPerUpstream = 16
	}
	if o.FillWait <= 0 {
		o.FillWait = 30 * time.Second
	}
	if o.AbandonGrace <= 0 {
		o.AbandonGrace = 30 * time.Second
	}
	if o.RangeWait <= 0 {
		o.RangeWait = 30 * time.Second
	}
	if o.PrefetchConcurrency == 0 {
		o.PrefetchConcurrency = 8
	}
	if o.TokenHost == "" {
		o.TokenHost = "localhost"
	}
	if o.afterFunc == nil {
		o.afterFunc = func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }
	}
	if o.Metrics == nil {
		o.Metrics = metrics.New(prometheus.NewRegistry(), nil)
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Handler serves the pull side of the OCI distribution API.
type Handler struct {
	opts      Options
	upstreams map[string]*Upstream // by Name and by each of Hosts
	fills     fills
	manifests manifestFlights

	// Recent answers held in memory: tag lists by upstream and repository, referrers answers by upstream,
	// repository, subject and filter.
	tagLists        answerCache[tagListing]
	referrerAnswers answerCache[referrersAnswer]

	// background counts fills and flights, which outlive the requests that started them; stopping is closed
	// by Shutdown to cancel those still running when its deadline passes.
	background sync.WaitGroup
	stopOnce   sync.Once
	stopping   chan struct{}
}

// New returns the registry API handler.
func New(opts Options) (*Handler, error) {
	if opts.Cache == nil {
		return nil, errors.New("proxy: Options.Cache is required")
	}
	h := &Handler{opts: opts.withDefaults(), upstreams: map[string]*Upstream{}, stopping: make(chan struct{})}
	for i := range opts.Upstreams {
		u := &opts.Upstreams[i]
		if u.Fetcher == nil || u.Name == "" {
			return nil, fmt.Errorf("proxy: upstream %d needs a Name and a Fetcher", i)
		}
		for _, n := range append([]string{u.Name}, u.Hosts...) {
			if _, dup := h.upstreams[n]; dup {
				return nil, fmt.Errorf("proxy: upstream name %q is configured twice", n)
			}
			h.upstreams[n] = u
		}
	}
	if opts.Default != "" && h.upstreams[opts.Default] == nil {
		return nil, fmt.Errorf("proxy: default upstream %q is not configured", opts.Default)
	}
	for _, u := range opts.Upstreams {
		identity := cmp.Or(u.Identity, u.Name)
		changed, previous, err := opts.Cache.BindUpstream(u.Name, identity)
		if err != nil {
			return nil, fmt.Errorf("proxy: recording the identity of upstream %s: %w", u.Name, err)
		}
		if changed {
			h.opts.Log.Warn("upstream names another registry than before: its cached tags and links were dropped",
				"upstream", u.Name, "was", previous, "now", identity)
		}
	}
	return h, nil
}

// Shutdown waits for the background work that outlives requests (blob fills, manifest fetches) to finish,
// and cancels what still runs when ctx is done. Call it after the HTTP server stopped, before closing the cache.
func (h *Handler) Shutdown(ctx context.Context) error {
	done := make(chan struct{})
	go func() { h.background.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	h.stopOnce.Do(func() { close(h.stopping) })
	<-done
	return ctx.Err()
}

// detached returns a context for background work started by a request: not cancelled when the client goes
// away, bounded by FillTimeout, cancelled by Shutdown. done must be called when the work ends.
func (h *Handler) detached(ctx context.Context) (fctx context.Context, done func()) {
	h.background.Add(1)
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), h.opts.FillTimeout)
	go func() {
		select {
		case <-h.stopping:
			cancel()
		case <-fctx.Done():
		}
	}()
	return fctx, func() {
		cancel()
		h.background.Done()
	}
}

// request is one API request after routing: where it goes, who asks, and what the pull log will say about it.
type request struct {
	route
	up   *Upstream
	repo string // repository at the upstream ("library/nginx")
	ns   string // the ns query parameter as sent, echoed in OCI-Namespace

	// Set by the authenticate and authorize layers: who asks, and the credentials its upstream requests use
	// (nil: pullgate's own).
	identity identity.Principal
	cred     *upstream.Credentials

	// Filled in by handlers for the pull log.
	cache     string // hit, miss, stale, revalidated
	digest    string
	mediaType string
	note      string // tag_mutation and the like
	gate      gate.Verdict
}

// ServeHTTP answers one registry API request. It is a list of layers, each in its own file: routing, then
// authentication, authorization and policy, then the route's handler; the first layer that refuses ends the
// list with an error, and finish (the access log) turns it into the one OCI error answer and the pull log line.
func (h *Handler) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	w := &recorder{ResponseWriter: rw, start: h.opts.Now(), writeTimeout: h.opts.WriteTimeout}
	req := &request{}
	err := h.routeRequest(r, req)
	if err == nil {
		err = h.authenticate(r, req)
	}
	if err == nil {
		err = h.authorize(r, req)
	}
	if err == nil {
		err = h.policy(r, req)
	}
	if err == nil {
		err = h.serve(w, r, req)
	}
	h.finish(w, r, req, err)
}

// serve is the last layer: the handler of the route family.
func (h *Handler) serve(w *recorder, r *http.Request, req *request) error {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if req.ns != "" {
		w.Header().Set("OCI-Namespace", req.ns)
	}
	switch req.kind {
	case kindBase:
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", "2")
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			_, _ = io.WriteString(w, "{}")
		}
		return nil
	case kindToken:
		return h.serveToken(w, r, req)
	case kindAdmin:
		return h.serveAdmin(w, r, req)
	case kindManifests:
		return h.serveManifest(w, r, req)
	case kindBlobs:
		return h.serveBlob(w, r, req)
	case kindTags:
		return h.serveTags(w, r, req)
	case kindReferrers:
		return h.serveReferrers(w, r, req)
	}
	return errorf(codeNotFound, "no such route")
}

func (h *Handler) names() []string {
	var names []string
	for n := range h.upstreams {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// fetch asks req's upstream for one object of req's repository, with the client's own credentials when it
// passed them through (the upstream accepted them for this repository), else with pullgate's.
func (h *Handler) fetch(ctx context.Context, req *request, method string, k kind, ref string, hdr http.Header) (*http.Response, error) {
	kindPath := string(k)
	if k == kindTags {
		kindPath = "tags/list"
	}
	return req.up.Fetcher.Fetch(ctx, upstream.Request{Method: method, Repo: req.repo, Kind: kindPath, Ref: ref, Header: hdr,
		Credentials: req.cred})
}
