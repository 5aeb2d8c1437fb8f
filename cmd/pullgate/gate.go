package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/pullgate/pullgate/cache"
	"github.com/pullgate/pullgate/gate"
	"github.com/pullgate/pullgate/watch"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// checkGate checks the gate's variables: a scanner needs a policy, and its URLs must be URLs.
func (c config) checkGate() error {
	if c.ScannerURL != "" && c.GatePolicy == "" {
		return badVar("SCANNER_URL", "a scanner without PULLGATE_GATE_POLICY gates nothing; set the policy file too")
	}
	for name, v := range map[string]string{"SCANNER_URL": c.ScannerURL, "SCANNER_REGISTRY_URL": c.ScannerRegistryURL} {
		if v == "" {
			continue
		}
		u, err := url.Parse(v)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil {
			return badVar(name, "%q is not an http(s) URL without credentials", v)
		}
	}
	if c.ScannerRegistryURL != "" && !strings.HasPrefix(c.ScannerRegistryURL, "https://") {
		return badVar("SCANNER_REGISTRY_URL", "pullgate speaks only TLS: the scanner reaches it at an https URL, got %q", c.ScannerRegistryURL)
	}
	switch c.ScannerAPI {
	case "harbor", "webhook":
	default:
		return badVar("SCANNER_API", "%q is neither harbor nor webhook", c.ScannerAPI)
	}
	return nil
}

// newGate builds the gate from the configuration, or returns nil when no gate policy is configured.
func newGate(cfg config, c *cache.Cache, tokens gate.ScanTokens, a *app) (*gate.Gate, error) {
	if cfg.GatePolicy == "" {
		return nil, nil
	}
	scanner, err := newScanner(cfg)
	if err != nil {
		return nil, err
	}
	registryURL := cfg.ScannerRegistryURL
	if registryURL == "" {
		registryURL = "https://" + publicHost(cfg.TLSHosts, cfg.Addr)
	}
	g, err := gate.New(gate.Options{
		PolicyFile:  cfg.GatePolicy,
		Scanner:     scanner,
		ScannerName: cfg.ScannerAPI + " scanner at " + cfg.ScannerURL,
		Store:       verdictStore{c},
		Tokens:      tokens,
		RegistryURL: registryURL,
		ScanTimeout: cfg.ScanTimeout,
		Concurrency: cfg.ScanConcurrency,
		OnReload:    a.reloadReporter("gate_policy"),
		OnScan: func(result string, took time.Duration) {
			a.metrics.Scans.WithLabelValues(result).Inc()
			a.metrics.ScanDuration.Observe(took.Seconds())
		},
		Log: a.log,
	})
	if err != nil {
		return nil, badVar("GATE_POLICY", "%v", err)
	}
	return g, nil
}

// newScanner builds the scanner client, or returns nil when no scanner is configured.
func newScanner(cfg config) (gate.Scanner, error) {
	if cfg.ScannerURL == "" {
		return nil, nil
	}
	authorization := ""
	if cfg.ScannerAuthFile != "" {
		b, err := watch.ReadLimited(cfg.ScannerAuthFile, 64<<10)
		if err != nil {
			return nil, badVar("SCANNER_AUTH_FILE", "%v", err)
		}
		authorization = strings.TrimSpace(string(b))
		if authorization == "" || strings.ContainsAny(authorization, "\r\n") {
			return nil, badVar("SCANNER_AUTH_FILE", "%s must hold one Authorization header value, such as \"Bearer <token>\"", cfg.ScannerAuthFile)
		}
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxResponseHeaderBytes = 1 << 20
	if cfg.ScannerCAFile != "" {
		pem, err := os.ReadFile(cfg.ScannerCAFile)
		if err != nil {
			return nil, badVar("SCANNER_CA_FILE", "%v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, badVar("SCANNER_CA_FILE", "%s holds no PEM certificate", cfg.ScannerCAFile)
		}
		transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	client := &http.Client{Transport: transport, Timeout: 5 * time.Minute}
	switch cfg.ScannerAPI {
	case "webhook":
		w, err := gate.NewWebhook(gate.WebhookOptions{URL: cfg.ScannerURL, Authorization: authorization, Client: client})
		if err != nil {
			return nil, badVar("SCANNER_URL", "%v", err)
		}
		return w, nil
	default:
		h, err := gate.NewHarbor(gate.HarborOptions{URL: cfg.ScannerURL, Authorization: authorization, Client: client})
		if err != nil {
			return nil, badVar("SCANNER_URL", "%v", err)
		}
		return h, nil
	}
}

// verdictStore keeps the gate's verdicts in the cache's index.
type verdictStore struct{ c *cache.Cache }

func (s verdictStore) Verdict(digest string) ([]byte, error) {
	d, err := v1.NewHash(digest)
	if err != nil {
		return nil, err
	}
	b, err := s.c.Verdict(d)
	if errors.Is(err, cache.ErrNotFound) {
		return nil, fmt.Errorf("%w: %v", gate.ErrNotFound, err)
	}
	return b, err
}

func (s verdictStore) SetVerdict(digest string, record []byte) error {
	d, err := v1.NewHash(digest)
	if err != nil {
		return err
	}
	return s.c.SetVerdict(d, record)
}

func (s verdictStore) Verdicts(fn func(digest string, record []byte) error) error {
	return s.c.Verdicts(func(d v1.Hash, v []byte) error { return fn(d.String(), v) })
}
