package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/pullgate/pullgate/cache"
	"github.com/pullgate/pullgate/gate"
	"github.com/pullgate/pullgate/identity"
	"github.com/pullgate/pullgate/metrics"
	"github.com/pullgate/pullgate/proxy"
	"github.com/pullgate/pullgate/upstream"
)

// app is pullgate built from its configuration: the cache, the registry API handler and what they report to.
// newApp builds it without listening; run serves it; close releases it.
type app struct {
	cfg     config
	specs   []upstreamSpec
	log     *slog.Logger
	tls     *tls.Config
	reg     *prometheus.Registry
	metrics *metrics.Metrics
	cache   *cache.Cache
	handler *proxy.Handler
	// identity is nil when no client identity is configured (pullgate is open) and no gate needs scanner
	// tokens; open says whether pullgate is open.
	identity *identity.Service
	open     bool
	// gate is nil without a gate policy.
	gate *gate.Gate
}

// newApp checks what the configuration points at (TLS key pair, CA and credentials files, patterns), opens the
// cache and builds the handler. A *configError names the variable at fault.
func newApp(cfg config, specs []upstreamSpec, log *slog.Logger) (*app, error) {
	a := &app{cfg: cfg, specs: specs, log: log, reg: prometheus.NewRegistry()}
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// The cache's usage is read at scrape time, through a.cache once it is open.
	a.metrics = metrics.New(a.reg, func() (int64, int64) {
		if a.cache == nil {
			return 0, 0
		}
		return a.cache.Usage()
	})
	a.metrics.CacheMaxBytes.Set(float64(cfg.limits.maxBytes))
	var err error
	if a.tls, err = serverTLS(cfg, log, a.reloadReporter("tls")); err != nil {
		return nil, err
	}
	transport, err := upstreamTransport(cfg.UpstreamCAFile)
	if err != nil {
		return nil, err
	}
	var keychain authn.Keychain
	if cfg.UpstreamAuthFile != "" {
		af, err := upstream.NewAuthFile(cfg.UpstreamAuthFile, nil)
		if err != nil {
			return nil, badVar("UPSTREAM_AUTH_FILE", "%v", err)
		}
		af.OnReload = a.reloadReporter("upstream_auth")
		keychain = af
	}
	policy, err := proxy.NewPolicy(cfg.Allow, cfg.ImmutableTags)
	if err != nil {
		return nil, badVar("ALLOW/PULLGATE_IMMUTABLE_TAGS", "%v", err)
	}
	ups, err := buildUpstreams(cfg, specs, transport, keychain, a.metrics)
	if err != nil {
		return nil, err
	}

	if a.identity, err = newIdentity(cfg, ups, a.metrics, a.reloadReporter("robots")); err != nil {
		return nil, err
	}
	if a.open = !cfg.identitiesConfigured(); a.open {
		log.Warn(openWarning)
	}

	a.cache, err = cache.Open(cache.Options{Dir: cfg.DataDir, Logger: log, Reserve: cfg.CacheReserve,
		MaxBytes: cfg.limits.maxBytes, MinFree: cfg.limits.minFree, MinFreePercent: cfg.limits.minFreePercent,
		Pins: cfg.limits.pins, OnRemove: a.countRemovals})
	if err != nil {
		return nil, fmt.Errorf("opening the cache in %s: %w", cfg.DataDir, err)
	}
	opts := proxy.Options{
		Cache:               a.cache,
		Upstreams:           ups,
		Default:             cfg.DefaultUpstream,
		TagTTL:              cfg.TagTTL,
		NegativeTTL:         cfg.NegativeTTL,
		FillTimeout:         cfg.FillTimeout,
		WriteTimeout:        cfg.WriteTimeout,
		MaxFills:            cfg.MaxFills,
		MaxFillsPerUpstream: cfg.MaxFillsPerUpstream,
		FillWait:            cfg.FillWait,
		AbandonGrace:        cfg.AbandonGrace,
		RangeWait:           cfg.RangeWait,
		PrefetchConcurrency: prefetchOption(cfg.Prefetch),
		Policy:              policy,
		TokenHost:           publicHost(cfg.TLSHosts, cfg.Addr),
		RequireLogin:        !a.open && len(cfg.Anonymous) == 0,
		Resolve:             nameResolver{specs, cfg.DefaultUpstream}.admin,
		Metrics:             a.metrics,
		Log:                 log,
	}
	if a.identity != nil {
		opts.Authenticator, opts.Authorizer = a.identity, a.identity
	}
	if !a.open {
		opts.Tokens, opts.Admin = a.identity, a.identity
	}
	var tokens gate.ScanTokens
	if a.identity != nil {
		tokens = a.identity
	}
	if a.gate, err = newGate(cfg, a.cache, tokens, a); err != nil {
		a.close()
		return nil, err
	}
	if a.gate != nil {
		opts.Gate, opts.Verdicts = a.gate, a.gate
	}
	if a.handler, err = proxy.New(opts); err != nil {
		a.close()
		return nil, err
	}
	return a, nil
}

// countRemovals counts the objects the cache removed (evicted, purged, found corrupt).
func (a *app) countRemovals(reason string, objects int, bytes int64) {
	a.metrics.Evictions.WithLabelValues(reason).Add(float64(objects))
	a.metrics.EvictedBytes.WithLabelValues(reason).Add(float64(bytes))
}

// reloadReporter logs and counts the reloads of a configuration file: each change of outcome once (a file
// that stays broken, or stays good, is not reported again on every check).
func (a *app) reloadReporter(file string) func(error) {
	var mu sync.Mutex
	last := "ok"
	return func(err error) {
		state := "ok"
		if err != nil {
			state = err.Error()
		}
		mu.Lock()
		defer mu.Unlock()
		if state == last {
			return
		}
		last = state
		if err != nil {
			a.metrics.ConfigReloads.WithLabelValues(file, "error").Inc()
			a.log.Error("reloading a configuration file failed; the previous content stays in use", "file", file, "error", err)
			return
		}
		a.metrics.ConfigReloads.WithLabelValues(file, "ok").Inc()
		a.log.Info("reloaded a configuration file", "file", file)
	}
}

// run listens and serves until ctx is done, then drains in-flight pulls (bounded by ShutdownTimeout) and the
// background fills.
func (a *app) run(ctx context.Context) error {
	cfg, log := a.cfg, a.log
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return badVar("ADDR", "cannot listen on %s: %v", cfg.Addr, err)
	}
	ln = limitListener(ln, cfg.MaxConns)
	mln, err := net.Listen("tcp", cfg.MetricsAddr)
	if err != nil {
		ln.Close()
		return badVar("METRICS_ADDR", "cannot listen on %s: %v", cfg.MetricsAddr, err)
	}
	var ready atomic.Bool
	api := &http.Server{
		Handler:           a.handler,
		TLSConfig:         a.tls,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	ops := &http.Server{Handler: opsMux(a.reg, &ready, a.open), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 2)
	go func() { errc <- api.ServeTLS(ln, "", "") }()
	go func() { errc <- ops.Serve(mln) }()
	ready.Store(true)
	names := make([]string, len(a.specs))
	for i, s := range a.specs {
		names[i] = s.name
	}
	log.Info("pullgate serving", "addr", ln.Addr().String(), "metrics", mln.Addr().String(),
		"data_dir", cfg.DataDir, "upstreams", names, "default_upstream", cfg.DefaultUpstream)
	if !a.open {
		stopRecording := a.recordLastUse(time.Minute)
		defer stopRecording()
	}
	if cfg.ScrubRate > 0 {
		sctx, stopScrub := context.WithCancel(ctx)
		scrubbed := make(chan struct{})
		go func() {
			defer close(scrubbed)
			err := a.cache.RunScrub(sctx, cache.ScrubOptions{Rate: int64(cfg.ScrubRate * 1e6), Interval: cfg.ScrubInterval})
			if err != nil && sctx.Err() == nil {
				log.Error("cache scrub stopped", "error", err)
			}
		}()
		defer func() { stopScrub(); <-scrubbed }()
	}

	select {
	case <-ctx.Done():
	case err := <-errc:
		return err
	}
	ready.Store(false)
	log.Info("shutting down: no new connections; waiting for in-flight pulls", "timeout", cfg.ShutdownTimeout.String())
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := api.Shutdown(sctx); err != nil {
		log.Warn("in-flight pulls did not finish in time; closing them", "error", err)
		_ = api.Close()
	}
	if err := a.handler.Shutdown(sctx); err != nil {
		log.Warn("cache fills did not finish in time; cancelled them", "error", err)
	}
	_ = ops.Shutdown(sctx)
	return nil
}

// close closes the cache. Call it after run returned.
func (a *app) close() {
	if a.gate != nil {
		a.gate.Close()
	}
	if a.cache == nil {
		return
	}
	if err := a.cache.Close(); err != nil {
		a.log.Error("closing the cache", "error", err)
	}
}

// prefetchOption maps PULLGATE_PREFETCH (0: off) to proxy.Options.PrefetchConcurrency (negative: off).
func prefetchOption(n int) int {
	if n == 0 {
		return -1
	}
	return n
}
