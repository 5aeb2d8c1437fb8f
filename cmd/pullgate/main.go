// Command pullgate is a pull-through caching registry proxy. `pullgate serve` runs it; `pullgate verify`
// checks a stopped instance's data directory. Configuration is the PULLGATE_* environment (see the README).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pullgate/pullgate/cache"
	"github.com/pullgate/pullgate/certs"
	"github.com/pullgate/pullgate/metrics"
	"github.com/pullgate/pullgate/names"
	"github.com/pullgate/pullgate/proxy"
	"github.com/pullgate/pullgate/upstream"
)

const usage = `usage: pullgate <command>

commands:
  serve    run the registry cache (configuration: PULLGATE_* environment variables, see the README)
  verify   re-hash every cached object and check the index; exit status 1 on any fault (stop pullgate first)
  robot    manage robot accounts: create, list, rotate, delete, disable, enable (pullgate robot -h)
  token    rotate-key [--keep N]: make a new signing key for the token service (a running pullgate uses it
           within seconds); the N newest keys are kept, so that tokens signed before stay valid until they expire
  rewrite  rewrite the images in Kubernetes YAML or JSON to pull through pullgate; a helm post-renderer
           (pullgate rewrite -h)
  images   list the container images in Kubernetes YAML or JSON files, or standard input (pullgate images -h)
  scan     pull images' manifests through a running pullgate and report its verdicts; exit status 1 unless
           every manifest passed (pullgate scan -h)
  seed     pull images through a running pullgate so that it caches them, with progress; resumable; exit
           status 1 unless every image was seeded (pullgate seed -h)
  verdicts list the verdicts a running pullgate keeps, through its admin API (pullgate verdicts -h)
  pin      keep images from eviction; unpin, pins (pullgate pin -h)
  export   write cached images, every platform, as an OCI image layout archive (pullgate export -h)
  import   load an OCI image layout archive into the cache, verifying every digest (pullgate import -h)
  purge    remove images, repositories, an upstream's content or what was not used for a while; a dry run
           unless --yes (pullgate purge -h)
  status   say how much of each image the cache holds (pullgate status -h)
  webhook  serve the Kubernetes admission webhook for Pods: rewrite images to come through pullgate
           (/mutate) and deny those that do not (/validate) (pullgate webhook -h)
  hosts-toml
           write containerd certs.d hosts.toml files that send registries' pulls to pullgate only
           (pullgate hosts-toml -h)
  registries-conf
           write a registries.conf drop-in that sends CRI-O's and podman's pulls to pullgate only
           (pullgate registries-conf -h)
`

func main() {
	os.Exit(run(os.Args[1:], environ(), os.Stdout, os.Stderr))
}

func environ() map[string]string {
	m := map[string]string{}
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

// run is main without the process: it returns the exit status (2 for usage and configuration mistakes).
func run(args []string, env map[string]string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "robot" {
		return runRobot(args[1:], env, stdout, stderr, robotOptions{})
	}
	if len(args) > 0 && args[0] == "token" {
		return runToken(args[1:], env, stdout, stderr)
	}
	if len(args) > 0 && args[0] == "images" {
		return runImages(args[1:], os.Stdin, stdout, stderr)
	}
	if len(args) > 0 && args[0] == "rewrite" {
		return runRewrite(args[1:], env, os.Stdin, stdout, stderr, rewriteOptions{})
	}
	if len(args) > 0 && args[0] == "scan" {
		return runScan(args[1:], env, os.Stdin, stdout, stderr, scanOptions{})
	}
	if len(args) > 0 && args[0] == "verdicts" {
		return runVerdicts(args[1:], env, stdout, stderr)
	}
	if len(args) > 0 && (args[0] == "pin" || args[0] == "unpin" || args[0] == "pins") {
		return runPin(args[0], args[1:], env, stdout, stderr)
	}
	if len(args) > 0 && args[0] == "seed" {
		return runSeed(args[1:], env, os.Stdin, stdout, stderr, seedOptions{})
	}
	if len(args) > 0 && args[0] == "export" {
		return runExport(args[1:], env, stdout, stderr)
	}
	if len(args) > 0 && args[0] == "import" {
		return runImport(args[1:], env, os.Stdin, stdout, stderr)
	}
	if len(args) > 0 && args[0] == "purge" {
		return runPurge(args[1:], env, stdout, stderr)
	}
	if len(args) > 0 && args[0] == "status" {
		return runStatus(args[1:], env, stdout, stderr)
	}
	if len(args) > 0 && args[0] == "hosts-toml" {
		return runHostsTOML(args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "registries-conf" {
		return runRegistriesConf(args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "webhook" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		return runWebhook(ctx, args[1:], stdout, stderr, webhookOptions{})
	}
	if len(args) != 1 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		cfg, specs, err := loadConfig(env)
		if err != nil {
			fmt.Fprintf(stderr, "pullgate: configuration: %v\n", err)
			return 2
		}
		log := slog.New(slog.NewJSONHandler(stdout, &slog.HandlerOptions{Level: cfg.LogLevel}))
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		err = serve(ctx, cfg, specs, log)
		if err == nil {
			return 0
		}
		log.Error("pullgate stopped", "error", err)
		var ce *configError
		if errors.As(err, &ce) {
			fmt.Fprintf(stderr, "pullgate: configuration: %v\n", err)
			return 2
		}
		return 1
	case "verify":
		// verify needs only the data directory: a configuration that serve would refuse does not stop it.
		cfg, err := loadVerifyConfig(env)
		if err != nil {
			fmt.Fprintf(stderr, "pullgate: configuration: %v\n", err)
			return 2
		}
		return verify(cfg.DataDir, slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: cfg.LogLevel})), stdout)
	default:
		fmt.Fprint(stderr, usage)
		return 2
	}
}

// serve builds pullgate from its configuration and runs it until ctx is done.
func serve(ctx context.Context, cfg config, specs []upstreamSpec, log *slog.Logger) error {
	a, err := newApp(cfg, specs, log)
	if err != nil {
		return err
	}
	defer a.close()
	return a.run(ctx)
}

// serverTLS returns the API listener's TLS configuration: the configured key pair, or the local CA's.
func serverTLS(cfg config, log *slog.Logger, onReload func(error)) (*tls.Config, error) {
	certFile, keyFile := cfg.TLSCert, cfg.TLSKey
	if certFile == "" {
		hosts := cfg.TLSHosts
		if hn, err := os.Hostname(); err == nil && hn != "" {
			hosts = append(hosts, hn)
		}
		local, err := certs.EnsureLocal(filepath.Join(cfg.DataDir, "tls"), hosts, time.Now())
		if err != nil {
			return nil, fmt.Errorf("making the local TLS certificate: %w", err)
		}
		certFile, keyFile = local.CertFile, local.KeyFile
		abs, _ := filepath.Abs(local.CAFile)
		log.Info("no PULLGATE_TLS_CERT: serving with a certificate from pullgate's local CA; clients must trust the CA file",
			"ca", abs)
	}
	r, err := certs.NewReloader(certFile, keyFile, nil, onReload)
	if err != nil {
		return nil, badVar("TLS_CERT", "%v", err)
	}
	tc := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: r.GetCertificate,
		NextProtos:     []string{"h2", "http/1.1"},
	}
	if cfg.ClientCAFile != "" {
		// Node identity: a client certificate is asked for, and when one is sent it must chain to these CAs
		// (the handshake fails otherwise); the identity layer maps it to a robot or to permissions.
		if tc.ClientCAs, err = clientCAs(cfg.ClientCAFile); err != nil {
			return nil, err
		}
		tc.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return tc, nil
}

// upstreamTransport is the base transport to upstreams: the system roots plus PULLGATE_UPSTREAM_CA_FILE.
func upstreamTransport(caFile string) (*http.Transport, error) {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 64
	// HTTP/1.1 to upstreams: blob bodies move faster over one connection each than multiplexed on one
	// HTTP/2 connection, where a new request's headers also wait behind other streams' data.
	t.ForceAttemptHTTP2 = false
	t.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	// Content is verified byte for byte: never let the transport decompress a body on the way.
	t.DisableCompression = true
	// A hostile upstream's headers are read into memory: 1 MiB is plenty for any registry.
	t.MaxResponseHeaderBytes = 1 << 20
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, badVar("UPSTREAM_CA_FILE", "%v", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, badVar("UPSTREAM_CA_FILE", "%s holds no PEM certificate", caFile)
		}
		t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}
	}
	return t, nil
}

// buildUpstreams makes one upstream client per spec, each also reachable by its host name in ?ns=.
func buildUpstreams(cfg config, specs []upstreamSpec, rt http.RoundTripper, kc authn.Keychain, m *metrics.Metrics) ([]proxy.Upstream, error) {
	taken := map[string]bool{}
	for _, s := range specs {
		taken[s.name] = true
	}
	observe := func(ev upstream.Event) {
		st := "error"
		if ev.Status != 0 {
			st = fmt.Sprint(ev.Status)
		}
		m.UpstreamRequests.WithLabelValues(ev.Upstream, ev.Kind, ev.Method, st).Inc()
		m.UpstreamLatency.WithLabelValues(ev.Upstream, ev.Kind).Observe(ev.Duration.Seconds())
		if ev.RateLimitRemaining >= 0 {
			m.UpstreamRateLimitRemaining.WithLabelValues(ev.Upstream).Set(float64(ev.RateLimitRemaining))
		}
	}
	var ups []proxy.Upstream
	for _, s := range specs {
		client, err := upstream.New(upstream.Options{
			Name:             s.name,
			URL:              s.url.String(),
			Transport:        rt,
			Keychain:         kc,
			Offline:          s.offline,
			Concurrency:      cfg.UpstreamConcurrency,
			Timeout:          cfg.UpstreamTimeout,
			FailureThreshold: cfg.UpstreamFailureThreshold,
			CoolDown:         cfg.UpstreamCoolDown,
			Observe:          observe,
		})
		if err != nil {
			return nil, badVar("UPSTREAMS", "%s: %v", s.name, err)
		}
		u := proxy.Upstream{Name: s.name, Identity: s.url.String(), DockerHub: names.IsDockerHub(s.url.Hostname()), Fetcher: client}
		aliases := []string{s.url.Host}
		if u.DockerHub {
			aliases = append(aliases, names.DockerHubHosts()...)
		}
		for _, a := range aliases {
			if !taken[a] {
				taken[a] = true
				u.Hosts = append(u.Hosts, a)
			}
		}
		ups = append(ups, u)
	}
	return ups, nil
}

// opsMux serves the operations listener: metrics and health. /readyz says so in its body when pullgate is open
// to everyone.
func opsMux(reg *prometheus.Registry, ready *atomic.Bool, open bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		if open {
			_, _ = io.WriteString(w, "ready\nwarning: "+openWarning+"\n")
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	return mux
}

// verify checks the data directory of a stopped pullgate.
func verify(dataDir string, log *slog.Logger, out io.Writer) int {
	c, err := cache.Open(cache.Options{Dir: dataDir, Logger: log})
	if err != nil {
		fmt.Fprintf(out, "pullgate verify: cannot open %s (is pullgate still running?): %v\n", dataDir, err)
		return 1
	}
	defer c.Close()
	faults, err := c.Verify(context.Background())
	if err != nil {
		fmt.Fprintf(out, "pullgate verify: %v\n", err)
		return 1
	}
	bytes, objects := c.Usage()
	for _, f := range faults {
		fmt.Fprintf(out, "FAULT %s\n", f)
	}
	fmt.Fprintf(out, "pullgate verify: %d objects, %d bytes, %d faults\n", objects, bytes, len(faults))
	if len(faults) > 0 {
		return 1
	}
	return 0
}
