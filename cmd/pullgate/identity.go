package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pullgate/pullgate/identity"
	"github.com/pullgate/pullgate/metrics"
	"github.com/pullgate/pullgate/names"
	"github.com/pullgate/pullgate/proxy"
	"github.com/pullgate/pullgate/upstream"
)

// openWarning is what pullgate says, at start and in /readyz, when no client identity is configured.
const openWarning = "OPEN: no client identities are configured (PULLGATE_ROBOTS_FILE, PULLGATE_CLIENT_CA_FILE, " +
	"PULLGATE_PASSTHROUGH, PULLGATE_ANONYMOUS): anyone who can reach pullgate pulls anything through it, with pullgate's own upstream credentials"

// tokenKeysDir is where the token service's signing keys live, under the data directory.
func tokenKeysDir(dataDir string) string { return filepath.Join(dataDir, "token-keys") }

// newIdentity builds the identity service from the configuration. With no identity configured pullgate is
// open: it returns nil, or, when the gate needs scanner tokens, a service in open mode that knows only them.
func newIdentity(cfg config, ups []proxy.Upstream, m *metrics.Metrics, onReload func(error)) (*identity.Service, error) {
	open := !cfg.identitiesConfigured()
	if open && cfg.GatePolicy == "" {
		return nil, nil
	}
	anonymous, err := names.CompilePatterns(cfg.Anonymous)
	if err != nil {
		return nil, badVar("ANONYMOUS", "%v", err)
	}
	passthrough, err := names.CompilePatterns(cfg.Passthrough)
	if err != nil {
		return nil, badVar("PASSTHROUGH", "%v", err)
	}
	signer, err := identity.NewSigner(identity.SignerOptions{Dir: tokenKeysDir(cfg.DataDir)})
	if err != nil {
		return nil, fmt.Errorf("token signing keys: %w", err)
	}
	checker := upstreamChecker{}
	for _, u := range ups {
		if c, ok := u.Fetcher.(pullChecker); ok {
			checker[u.Name] = c
		}
	}
	svc, err := identity.New(identity.Options{
		RobotsFile:     cfg.RobotsFile,
		RobotPrefix:    cfg.RobotPrefix,
		Anonymous:      anonymous,
		Passthrough:    passthrough,
		PassthroughTTL: cfg.PassthroughTTL,
		Checker:        checker,
		Signer:         signer,
		TokenTTL:       cfg.TokenTTL,
		RefreshTTL:     cfg.RefreshTokenTTL,
		Open:           open,
		OnReload:       onReload,
		OnLogin: func(method identity.Method, result string) {
			m.Logins.WithLabelValues(string(method), result).Inc()
		},
	})
	if err != nil {
		return nil, badVar("ROBOTS_FILE", "%v", err)
	}
	return svc, nil
}

// clientCAs reads PULLGATE_CLIENT_CA_FILE: the CAs whose client certificates identify nodes.
func clientCAs(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, badVar("CLIENT_CA_FILE", "%v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, badVar("CLIENT_CA_FILE", "%s holds no PEM certificate", file)
	}
	return pool, nil
}

// publicHost is the host[:port] clients reach pullgate at, for challenges and for the pull secrets `pullgate
// robot` prints: the first of PULLGATE_TLS_HOSTS that is not a wildcard (else localhost), with PULLGATE_ADDR's
// port unless it is 443.
func publicHost(tlsHosts []string, addr string) string {
	host := "localhost"
	for _, h := range tlsHosts {
		if h = strings.TrimSpace(h); h != "" && !strings.HasPrefix(h, "*") {
			host = h
			break
		}
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" || port == "443" {
		if strings.Contains(host, ":") {
			return "[" + host + "]"
		}
		return host
	}
	return net.JoinHostPort(host, port)
}

// pullChecker is what an upstream client offers to check passed-through credentials. *upstream.Client is one.
type pullChecker interface {
	CheckPull(ctx context.Context, repo string, cred upstream.Credentials) error
}

// upstreamChecker asks the named upstream whether credentials may pull a repository there.
type upstreamChecker map[string]pullChecker

func (c upstreamChecker) CheckPull(ctx context.Context, up, repo, username, password string) error {
	pc, ok := c[up]
	if !ok {
		return fmt.Errorf("upstream %s cannot check credentials", up)
	}
	err := pc.CheckPull(ctx, repo, upstream.Credentials{Username: username, Password: password})
	if errors.Is(err, upstream.ErrRefused) {
		return fmt.Errorf("%w: %v", identity.ErrDenied, err)
	}
	return err
}

// recordLastUse writes when each robot last authenticated into the data directory's last-use file (read by
// `pullgate robot list`) every interval, and once more when the returned stop is called. Times only move
// forward: a robot's entry written by an earlier run is kept until this run sees a newer use.
func (a *app) recordLastUse(interval time.Duration) (stop func()) {
	file := filepath.Join(a.cfg.DataDir, identity.LastUseFile)
	write := func() {
		seen := a.identity.LastUse()
		if len(seen) == 0 {
			return
		}
		all, err := identity.ReadLastUse(file)
		if err != nil {
			a.log.Warn("reading the robots' last-use file; writing it anew", "file", file, "error", err)
			all = identity.LastUse{}
		}
		changed := false
		for name, t := range seen {
			if t.After(all[name]) {
				all[name], changed = t, true
			}
		}
		if !changed {
			return
		}
		if err := all.Write(file); err != nil {
			a.log.Warn("writing the robots' last-use file", "file", file, "error", err)
		}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				write()
			case <-done:
				write()
				return
			}
		}
	}()
	return func() { close(done); <-finished }
}
