package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/pullgate/pullgate/cache"
)

// config is every PULLGATE_* variable. The README's configuration table lists the same, with these defaults.
type config struct {
	Addr                     string        `env:"ADDR" envDefault:":5443"`
	MetricsAddr              string        `env:"METRICS_ADDR" envDefault:"127.0.0.1:9090"`
	DataDir                  string        `env:"DATA_DIR" envDefault:"./pullgate-data"`
	TLSCert                  string        `env:"TLS_CERT"`
	TLSKey                   string        `env:"TLS_KEY"`
	TLSHosts                 []string      `env:"TLS_HOSTS" envSeparator:","`
	Upstreams                []string      `env:"UPSTREAMS" envSeparator:"," envDefault:"docker.io,ghcr.io,quay.io,registry.k8s.io,gcr.io"`
	DefaultUpstream          string        `env:"DEFAULT_UPSTREAM" envDefault:"docker.io"`
	UpstreamCAFile           string        `env:"UPSTREAM_CA_FILE"`
	UpstreamAuthFile         string        `env:"UPSTREAM_AUTH_FILE"`
	UpstreamConcurrency      int           `env:"UPSTREAM_CONCURRENCY" envDefault:"32"`
	UpstreamTimeout          time.Duration `env:"UPSTREAM_TIMEOUT" envDefault:"30s"`
	UpstreamFailureThreshold int           `env:"UPSTREAM_FAILURE_THRESHOLD" envDefault:"5"`
	UpstreamCoolDown         time.Duration `env:"UPSTREAM_COOLDOWN" envDefault:"30s"`
	FillTimeout              time.Duration `env:"FILL_TIMEOUT" envDefault:"1h"`
	MaxConns                 int           `env:"MAX_CONNS" envDefault:"1024"`
	IdleTimeout              time.Duration `env:"IDLE_TIMEOUT" envDefault:"30s"`
	WriteTimeout             time.Duration `env:"WRITE_TIMEOUT" envDefault:"1m"`
	MaxFills                 int           `env:"MAX_FILLS" envDefault:"64"`
	MaxFillsPerUpstream      int           `env:"MAX_FILLS_PER_UPSTREAM" envDefault:"16"`
	FillWait                 time.Duration `env:"FILL_WAIT" envDefault:"30s"`
	AbandonGrace             time.Duration `env:"ABANDON_GRACE" envDefault:"30s"`
	RangeWait                time.Duration `env:"RANGE_WAIT" envDefault:"30s"`
	Prefetch                 int           `env:"PREFETCH" envDefault:"8"`
	CacheReserve             int64         `env:"CACHE_RESERVE" envDefault:"0"`
	MaxBytes                 string        `env:"MAX_BYTES" envDefault:"200GiB"`
	MinFree                  string        `env:"MIN_FREE" envDefault:"10%"`
	Pin                      []string      `env:"PIN" envSeparator:","`
	ScrubRate                float64       `env:"SCRUB_RATE" envDefault:"10"`
	ScrubInterval            time.Duration `env:"SCRUB_INTERVAL" envDefault:"168h"`
	Offline                  string        `env:"OFFLINE" envDefault:"false"`
	TagTTL                   time.Duration `env:"TAG_TTL" envDefault:"5m"`
	NegativeTTL              time.Duration `env:"NEGATIVE_TTL" envDefault:"30s"`
	ImmutableTags            []string      `env:"IMMUTABLE_TAGS" envSeparator:","`
	Allow                    []string      `env:"ALLOW" envSeparator:","`
	RobotsFile               string        `env:"ROBOTS_FILE"`
	RobotPrefix              string        `env:"ROBOT_PREFIX"`
	Anonymous                []string      `env:"ANONYMOUS" envSeparator:","`
	Passthrough              []string      `env:"PASSTHROUGH" envSeparator:","`
	PassthroughTTL           time.Duration `env:"PASSTHROUGH_TTL" envDefault:"1m"`
	ClientCAFile             string        `env:"CLIENT_CA_FILE"`
	TokenTTL                 time.Duration `env:"TOKEN_TTL" envDefault:"5m"`
	RefreshTokenTTL          time.Duration `env:"REFRESH_TOKEN_TTL" envDefault:"24h"`
	GatePolicy               string        `env:"GATE_POLICY"`
	ScannerURL               string        `env:"SCANNER_URL"`
	ScannerAPI               string        `env:"SCANNER_API" envDefault:"harbor"`
	ScannerAuthFile          string        `env:"SCANNER_AUTH_FILE"`
	ScannerCAFile            string        `env:"SCANNER_CA_FILE"`
	ScannerRegistryURL       string        `env:"SCANNER_REGISTRY_URL"`
	ScanTimeout              time.Duration `env:"SCAN_TIMEOUT" envDefault:"10m"`
	ScanConcurrency          int           `env:"SCAN_CONCURRENCY" envDefault:"4"`
	LogLevel                 slog.Level    `env:"LOG_LEVEL" envDefault:"info"`
	ShutdownTimeout          time.Duration `env:"SHUTDOWN_TIMEOUT" envDefault:"30s"`

	// Parsed by loadConfig from the variables above.
	limits cacheLimits
}

// cacheLimits are the cache's quota, free-space floor and pins.
type cacheLimits struct {
	maxBytes       int64
	minFree        int64
	minFreePercent float64
	pins           []cache.Pin
}

// verifyConfig is what `pullgate verify` reads: only where the data is, and how much to log.
type verifyConfig struct {
	DataDir  string     `env:"DATA_DIR" envDefault:"./pullgate-data"`
	LogLevel slog.Level `env:"LOG_LEVEL" envDefault:"warn"`
}

// loadVerifyConfig parses the variables verify needs and ignores the rest.
func loadVerifyConfig(environ map[string]string) (verifyConfig, error) {
	var c verifyConfig
	if err := env.ParseWithOptions(&c, env.Options{Prefix: "PULLGATE_", Environment: environ}); err != nil {
		return c, &configError{msg: err.Error()}
	}
	if c.DataDir == "" {
		return c, badVar("DATA_DIR", "must not be empty")
	}
	return c, nil
}

// upstreamSpec is one entry of PULLGATE_UPSTREAMS.
type upstreamSpec struct {
	name    string
	url     *url.URL
	offline bool
}

// configError is a configuration mistake: startup stops with exit status 2.
type configError struct{ msg string }

func (e *configError) Error() string { return e.msg }

func badVar(name, format string, args ...any) error {
	return &configError{msg: fmt.Sprintf("PULLGATE_%s: %s", name, fmt.Sprintf(format, args...))}
}

// loadConfig parses the environment (environ is os.Environ() in production) and checks every value.
func loadConfig(environ map[string]string) (config, []upstreamSpec, error) {
	var c config
	if err := env.ParseWithOptions(&c, env.Options{Prefix: "PULLGATE_", Environment: environ}); err != nil {
		var agg env.AggregateError
		if errors.As(err, &agg) {
			var msgs []string
			for _, e := range agg.Errors {
				msgs = append(msgs, describeEnvError(e))
			}
			return c, nil, &configError{msg: strings.Join(msgs, "; ")}
		}
		return c, nil, &configError{msg: err.Error()}
	}
	for name, addr := range map[string]string{"ADDR": c.Addr, "METRICS_ADDR": c.MetricsAddr} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return c, nil, badVar(name, "%q is not a host:port listen address", addr)
		}
	}
	if c.DataDir == "" {
		return c, nil, badVar("DATA_DIR", "must not be empty")
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return c, nil, badVar("TLS_CERT", "PULLGATE_TLS_CERT and PULLGATE_TLS_KEY go together: set both or neither")
	}
	for name, n := range map[string]int{"UPSTREAM_CONCURRENCY": c.UpstreamConcurrency, "UPSTREAM_FAILURE_THRESHOLD": c.UpstreamFailureThreshold, "MAX_CONNS": c.MaxConns,
		"MAX_FILLS": c.MaxFills, "MAX_FILLS_PER_UPSTREAM": c.MaxFillsPerUpstream, "SCAN_CONCURRENCY": c.ScanConcurrency} {
		if n < 1 {
			return c, nil, badVar(name, "must be at least 1, got %d", n)
		}
	}
	for name, d := range map[string]time.Duration{"TAG_TTL": c.TagTTL, "NEGATIVE_TTL": c.NegativeTTL, "UPSTREAM_TIMEOUT": c.UpstreamTimeout,
		"SHUTDOWN_TIMEOUT": c.ShutdownTimeout, "UPSTREAM_COOLDOWN": c.UpstreamCoolDown, "FILL_TIMEOUT": c.FillTimeout,
		"IDLE_TIMEOUT": c.IdleTimeout, "WRITE_TIMEOUT": c.WriteTimeout, "FILL_WAIT": c.FillWait, "ABANDON_GRACE": c.AbandonGrace,
		"RANGE_WAIT": c.RangeWait, "PASSTHROUGH_TTL": c.PassthroughTTL, "REFRESH_TOKEN_TTL": c.RefreshTokenTTL, "SCAN_TIMEOUT": c.ScanTimeout} {
		if d <= 0 {
			return c, nil, badVar(name, "must be a positive duration such as 30s or 5m, got %s", d)
		}
	}
	if c.MaxFillsPerUpstream >= c.UpstreamConcurrency {
		// Fills wait for response headers inside the upstream's concurrency limit: if they could take all of it,
		// manifest requests would queue behind them.
		return c, nil, badVar("MAX_FILLS_PER_UPSTREAM", "must be below PULLGATE_UPSTREAM_CONCURRENCY (%d), so that fills never hold every upstream slot; got %d", c.UpstreamConcurrency, c.MaxFillsPerUpstream)
	}
	if c.TokenTTL < time.Minute {
		// The token spec has clients assume 60 seconds when a token service says less.
		return c, nil, badVar("TOKEN_TTL", "must be at least 1m, got %s", c.TokenTTL)
	}
	if c.RobotPrefix != "" && (strings.ContainsAny(c.RobotPrefix, ": \t") || len(c.RobotPrefix) > 32) {
		return c, nil, badVar("ROBOT_PREFIX", "%q: a login prefix has no ':' or spaces and at most 32 characters", c.RobotPrefix)
	}
	if c.Prefetch < 0 {
		return c, nil, badVar("PREFETCH", "must be 0 (off) or more, got %d", c.Prefetch)
	}
	if err := c.checkGate(); err != nil {
		return c, nil, err
	}
	specs, err := parseUpstreams(c.Upstreams)
	if err != nil {
		return c, nil, err
	}
	if err := applyOffline(specs, c.Offline); err != nil {
		return c, nil, err
	}
	if c.DefaultUpstream != "" && !hasUpstream(specs, c.DefaultUpstream) {
		return c, nil, badVar("DEFAULT_UPSTREAM", "%q is not in PULLGATE_UPSTREAMS; set it to one of them, or to empty to refuse requests that name no upstream", c.DefaultUpstream)
	}
	if c.limits, err = c.parseLimits(nameResolver{specs, c.DefaultUpstream}); err != nil {
		return c, nil, err
	}
	return c, specs, nil
}

// identitiesConfigured says whether any client identity is configured: then clients are authenticated and
// anything not allowed to anonymous clients needs credentials. Without any, pullgate is open to everyone who
// can reach it.
func (c config) identitiesConfigured() bool {
	return c.RobotsFile != "" || c.ClientCAFile != "" || len(c.Passthrough) > 0 || len(c.Anonymous) > 0
}

// describeEnvError names the variable behind a parse error (the env library names the struct field).
func describeEnvError(err error) string {
	var pe env.ParseError
	if errors.As(err, &pe) {
		if f, ok := reflect.TypeOf(config{}).FieldByName(pe.Name); ok {
			return fmt.Sprintf("PULLGATE_%s: %v", f.Tag.Get("env"), pe.Err)
		}
	}
	return err.Error()
}

// parseUpstreams reads "name[=url]" entries. The URL defaults to https://<name>, and to Docker Hub's registry
// for docker.io.
func parseUpstreams(entries []string) ([]upstreamSpec, error) {
	var specs []upstreamSpec
	for _, e := range entries {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		name, raw, hasURL := strings.Cut(e, "=")
		name = strings.TrimSpace(name)
		if name == "" || strings.ContainsAny(name, "/ ?#@") {
			return nil, badVar("UPSTREAMS", "%q: an upstream name is a registry host or a short alias, without '/'", e)
		}
		if hasUpstream(specs, name) {
			return nil, badVar("UPSTREAMS", "upstream %q is listed twice", name)
		}
		if !hasURL {
			raw = "https://" + name
			if name == "docker.io" {
				raw = "https://registry-1.docker.io"
			}
		}
		u, err := url.Parse(strings.TrimSpace(raw))
		if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
			return nil, badVar("UPSTREAMS", "%q: the URL must be https://host[:port] with no path (pullgate speaks TLS to upstreams too)", e)
		}
		if p := u.Port(); p != "" {
			if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
				return nil, badVar("UPSTREAMS", "%q: bad port %q", e, p)
			}
		}
		u.Path = ""
		specs = append(specs, upstreamSpec{name: name, url: u})
	}
	if len(specs) == 0 {
		return nil, badVar("UPSTREAMS", "names no upstream")
	}
	return specs, nil
}

// applyOffline reads PULLGATE_OFFLINE: true or false for every upstream, or a list of upstream names.
func applyOffline(specs []upstreamSpec, v string) error {
	if b, err := strconv.ParseBool(strings.TrimSpace(v)); err == nil {
		for i := range specs {
			specs[i].offline = b
		}
		return nil
	}
	for _, name := range strings.Split(v, ",") {
		name = strings.TrimSpace(name)
		found := false
		for i := range specs {
			if specs[i].name == name {
				specs[i].offline, found = true, true
			}
		}
		if !found {
			return badVar("OFFLINE", "%q is neither true/false nor an upstream in PULLGATE_UPSTREAMS", name)
		}
	}
	return nil
}

func hasUpstream(specs []upstreamSpec, name string) bool {
	for _, s := range specs {
		if s.name == name {
			return true
		}
	}
	return false
}

// parseLimits reads PULLGATE_MAX_BYTES, PULLGATE_MIN_FREE, PULLGATE_PIN and the scrub's variables.
func (c config) parseLimits(r nameResolver) (cacheLimits, error) {
	var l cacheLimits
	var err error
	if l.maxBytes, err = parseBytes(c.MaxBytes); err != nil {
		return l, badVar("MAX_BYTES", "%v (0 means no quota)", err)
	}
	if l.minFree, l.minFreePercent, err = parseFree(c.MinFree); err != nil {
		return l, badVar("MIN_FREE", "%v", err)
	}
	for _, s := range c.Pin {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := r.pin(s)
		if err != nil {
			return l, badVar("PIN", "%v", err)
		}
		l.pins = append(l.pins, p)
	}
	if c.ScrubRate < 0 {
		return l, badVar("SCRUB_RATE", "must be 0 (off) or a rate in MB/s, got %g", c.ScrubRate)
	}
	if c.ScrubInterval < time.Hour {
		return l, badVar("SCRUB_INTERVAL", "must be at least 1h, got %s", c.ScrubInterval)
	}
	return l, nil
}
