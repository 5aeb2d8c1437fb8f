// Package metrics defines pullgate's Prometheus collectors. It registers them on the Registerer it is given and
// keeps no global state; it knows nothing about HTTP routing, the cache's layout or upstream protocols.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics holds every collector pullgate exports. Fields are safe for concurrent use.
type Metrics struct {
	// Requests counts registry API requests by route family, status code and cache result.
	Requests *prometheus.CounterVec
	// RequestDuration observes the time to serve a registry API request, by route family.
	RequestDuration *prometheus.HistogramVec
	// BytesServed counts body bytes sent to clients by source: "cache" or "upstream" (streamed during a fill).
	BytesServed *prometheus.CounterVec
	// BytesFetched counts body bytes received from each upstream.
	BytesFetched *prometheus.CounterVec
	// UpstreamRequests counts requests to upstreams by upstream, kind and status ("error" when none).
	UpstreamRequests *prometheus.CounterVec
	// UpstreamLatency observes the time to response headers from upstreams.
	UpstreamLatency *prometheus.HistogramVec
	// UpstreamRateLimitRemaining is the last RateLimit-Remaining an upstream announced.
	UpstreamRateLimitRemaining *prometheus.GaugeVec
	// FillsInFlight is the number of upstream fills running now.
	FillsInFlight prometheus.Gauge
	// DigestMismatches counts upstream content that did not match its digest.
	DigestMismatches *prometheus.CounterVec
	// TagMutations counts revalidations that found an immutable tag re-pointed upstream.
	TagMutations *prometheus.CounterVec
	// PolicyDenials counts requests refused by the allow-list.
	PolicyDenials *prometheus.CounterVec
	// ConfigReloads counts reloads of configuration files (the TLS key pair, upstream credentials) by file and
	// result ("ok" or "error").
	ConfigReloads *prometheus.CounterVec
	// UpstreamInvalidAnswers counts upstream answers with a success status that were not the manifest asked
	// for (not a manifest, an invalid one, or the wrong bytes), by upstream.
	UpstreamInvalidAnswers *prometheus.CounterVec
	// GateVerdicts counts manifest requests by the gate's verdict: pass, blocked, pending, unscanned, bypass,
	// exempt.
	GateVerdicts *prometheus.CounterVec
	// Scans counts finished vulnerability scans by result ("ok", "failed").
	Scans *prometheus.CounterVec
	// ScanDuration observes how long scans took, from queueing to the report.
	ScanDuration prometheus.Histogram
	// FillsAbandoned counts fills stopped because no client read them for the abandon grace.
	FillsAbandoned prometheus.Counter
	// FillsBusy counts requests refused (503) because every fill slot for the upstream stayed taken.
	FillsBusy *prometheus.CounterVec
	// Prefetches counts blob fills started ahead of clients for image manifests, by upstream.
	Prefetches *prometheus.CounterVec
	// Logins counts authentication attempts by method (robot, mtls, passthrough) and result ("ok",
	// "bad_credentials", "rate_limited", "refused", "unavailable").
	Logins *prometheus.CounterVec
	// AuthDenials counts requests refused by authentication or authorization, by method and reason
	// ("unauthenticated", "bad_credentials", "insufficient_scope", "denied", "rate_limited", "unavailable").
	AuthDenials *prometheus.CounterVec
	// TokensIssued counts tokens the token service issued, by method.
	TokensIssued *prometheus.CounterVec
	// Evictions counts objects removed from the cache, by reason ("quota", "min_free", "purge", "corrupt").
	Evictions *prometheus.CounterVec
	// EvictedBytes counts the bytes of the objects removed from the cache, by reason.
	EvictedBytes *prometheus.CounterVec
	// CacheMaxBytes is the cache quota (PULLGATE_MAX_BYTES); 0 when there is none.
	CacheMaxBytes prometheus.Gauge
}

// Usage reports the cache's size; it is read at scrape time.
type Usage func() (bytes, objects int64)

// New creates the collectors and registers them on reg. usage may be nil, then no cache gauges are exported.
func New(reg prometheus.Registerer, usage Usage) *Metrics {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullgate_requests_total",
			Help: "Registry API requests by route, status and cache result.",
		}, []string{"route", "status", "cache"}),
		RequestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pullgate_request_duration_seconds",
			Help:    "Time to serve a registry API request, by route.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
		}, []string{"route"}),
		BytesServed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullgate_served_bytes_total",
			Help: "Body bytes sent to clients, by source (cache or upstream).",
		}, []string{"source"}),
		BytesFetched: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullgate_upstream_fetched_bytes_total",
			Help: "Body bytes received from upstreams while filling the cache.",
		}, []string{"upstream"}),
		UpstreamRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullgate_upstream_requests_total",
			Help: "Requests made to upstreams, by upstream, kind, method and status.",
		}, []string{"upstream", "kind", "method", "status"}),
		UpstreamLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pullgate_upstream_request_duration_seconds",
			Help:    "Time to response headers from upstreams.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"upstream", "kind"}),
		UpstreamRateLimitRemaining: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pullgate_upstream_ratelimit_remaining",
			Help: "The last RateLimit-Remaining value an upstream sent.",
		}, []string{"upstream"}),
		FillsInFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pullgate_fills_in_flight",
			Help: "Upstream fills running now.",
		}),
		DigestMismatches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullgate_digest_mismatches_total",
			Help: "Upstream content refused because it did not match its digest.",
		}, []string{"upstream"}),
		TagMutations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullgate_tag_mutations_total",
			Help: "Immutable tags found re-pointed upstream (the cached digest kept being served).",
		}, []string{"upstream"}),
		PolicyDenials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullgate_policy_denials_total",
			Help: "Requests refused by the allow-list, by upstream.",
		}, []string{"upstream"}),
		ConfigReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullgate_config_reloads_total",
			Help: "Reloads of configuration files whose outcome changed (ok after error, error after ok, another error), by file and result; on error the previous content stays in use.",
		}, []string{"file", "result"}),
		UpstreamInvalidAnswers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullgate_upstream_invalid_answers_total",
			Help: "Upstream answers with a success status that were not the manifest asked for, by upstream.",
		}, []string{"upstream"}),
		FillsAbandoned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pullgate_fills_abandoned_total",
			Help: "Blob fills stopped because every client reading them went away.",
		}),
		FillsBusy: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullgate_fills_busy_total",
			Help: "Blob requests refused because every fill slot for the upstream stayed taken, by upstream.",
		}, []string{"upstream"}),
		Logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullgate_logins_total",
			Help: "Client authentication attempts by method and result.",
		}, []string{"method", "result"}),
		AuthDenials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullgate_auth_denials_total",
			Help: "Requests refused by authentication or authorization, by method and reason.",
		}, []string{"method", "reason"}),
		TokensIssued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullgate_tokens_issued_total",
			Help: "Tokens issued by pullgate's token service, by method.",
		}, []string{"method"}),
		GateVerdicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullgate_gate_verdicts_total",
			Help: "Manifest requests by the policy gate's verdict: pass, blocked, pending, unscanned, bypass, exempt.",
		}, []string{"verdict"}),
		Scans: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullgate_scans_total",
			Help: "Finished vulnerability scans by result (ok, failed).",
		}, []string{"result"}),
		ScanDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pullgate_scan_duration_seconds",
			Help:    "Time from a scan's start to its report or failure.",
			Buckets: []float64{0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600},
		}),
		Prefetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullgate_prefetches_total",
			Help: "Blob fills started ahead of clients for image manifests, by upstream.",
		}, []string{"upstream"}),
		Evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullgate_cache_evictions_total",
			Help: "Objects removed from the cache, by reason (quota, min_free, purge, corrupt).",
		}, []string{"reason"}),
		EvictedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullgate_cache_evicted_bytes_total",
			Help: "Bytes of the objects removed from the cache, by reason (quota, min_free, purge, corrupt).",
		}, []string{"reason"}),
		CacheMaxBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pullgate_cache_max_bytes",
			Help: "The cache quota in bytes (PULLGATE_MAX_BYTES); 0 when there is none.",
		}),
	}
	reg.MustRegister(m.Requests, m.RequestDuration, m.BytesServed, m.BytesFetched, m.UpstreamRequests,
		m.UpstreamLatency, m.UpstreamRateLimitRemaining, m.FillsInFlight, m.DigestMismatches, m.TagMutations,
		m.PolicyDenials, m.UpstreamInvalidAnswers, m.ConfigReloads, m.FillsAbandoned, m.FillsBusy, m.Prefetches,
		m.Logins, m.AuthDenials, m.TokensIssued, m.GateVerdicts, m.Scans, m.ScanDuration,
		m.Evictions, m.EvictedBytes, m.CacheMaxBytes)
	if usage != nil {
		reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "pullgate_cache_bytes",
				Help: "Bytes of content stored in the cache.",
			}, func() float64 { b, _ := usage(); return float64(b) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "pullgate_cache_objects",
				Help: "Objects (blobs and manifests) stored in the cache.",
			}, func() float64 { _, n := usage(); return float64(n) }),
		)
	}
	return m
}
