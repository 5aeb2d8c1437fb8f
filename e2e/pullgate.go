package e2e

import (
	"cmp"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// BuildPullgate builds ./cmd/pullgate of the module at root into dir and returns the binary's path. It builds it
// as the Dockerfile does (CGO_ENABLED=0, -trimpath, -ldflags "-s -w": a static binary for an empty base image),
// so that the end-to-end tests run the binary the container image ships.
func BuildPullgate(ctx context.Context, root, dir string) (string, error) {
	bin := filepath.Join(dir, "pullgate")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "./cmd/pullgate")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ./cmd/pullgate: %w\n%s", err, out)
	}
	return bin, nil
}

// PullgateOptions configures StartPullgate.
type PullgateOptions struct {
	// Bin is the pullgate binary; required.
	Bin string
	// Name names the process and its log; empty means "pullgate".
	Name string
	// DataDir is PULLGATE_DATA_DIR; required.
	DataDir string
	// LogDir receives the log; required.
	LogDir string
	// Addr and MetricsAddr are the listen addresses; empty means free loopback ports.
	Addr, MetricsAddr string
	// CertFile and KeyFile are the serving certificate; empty means pullgate makes its own CA in DataDir/tls.
	CertFile, KeyFile string
	// CA is the CA of CertFile; ignored without CertFile.
	CA *CA
	// Upstreams is PULLGATE_UPSTREAMS, Default is PULLGATE_DEFAULT_UPSTREAM and UpstreamCAFile is
	// PULLGATE_UPSTREAM_CA_FILE.
	Upstreams, Default, UpstreamCAFile string
	// Env holds further PULLGATE_* settings (PULLGATE_TAG_TTL=..., PULLGATE_OFFLINE=...).
	Env []string
	// V2Status is what /v2/ answers a client without credentials once pullgate is ready; zero means 200. It is
	// 401 when client identities are configured and anonymous clients may pull nothing.
	V2Status int
}

// Pullgate is a running pullgate.
type Pullgate struct {
	*Proc
	Opts PullgateOptions
	// Addr is the registry API's host:port; URL is https://Addr; MetricsURL is http://MetricsAddr.
	Addr, URL, MetricsURL string
	// CAFile is the CA that signed the serving certificate (ours, or the one pullgate made).
	CAFile string
	// Pool holds CAFile's certificate.
	Pool *x509.CertPool
}

// StartPullgate starts `pullgate serve` and waits until /readyz answers 200 and the registry API answers /v2/.
func StartPullgate(ctx context.Context, o PullgateOptions) (*Pullgate, error) {
	var err error
	if o.Name == "" {
		o.Name = "pullgate"
	}
	if o.Addr == "" {
		if o.Addr, err = FreeAddr(); err != nil {
			return nil, err
		}
	}
	if o.MetricsAddr == "" {
		if o.MetricsAddr, err = FreeAddr(); err != nil {
			return nil, err
		}
	}
	env := []string{
		"PULLGATE_ADDR=" + o.Addr,
		"PULLGATE_METRICS_ADDR=" + o.MetricsAddr,
		"PULLGATE_DATA_DIR=" + o.DataDir,
		"PULLGATE_UPSTREAMS=" + o.Upstreams,
		"PULLGATE_DEFAULT_UPSTREAM=" + o.Default,
		"PULLGATE_UPSTREAM_CA_FILE=" + o.UpstreamCAFile,
		"PULLGATE_LOG_LEVEL=info",
	}
	if o.CertFile != "" {
		env = append(env, "PULLGATE_TLS_CERT="+o.CertFile, "PULLGATE_TLS_KEY="+o.KeyFile)
	}
	env = append(env, o.Env...)
	p := &Pullgate{Opts: o, Addr: o.Addr, URL: "https://" + o.Addr, MetricsURL: "http://" + o.MetricsAddr}
	p.Proc, err = StartProc(ProcSpec{Name: o.Name, Path: o.Bin, Args: []string{"serve"}, Env: env, LogDir: o.LogDir})
	if err != nil {
		return nil, err
	}
	if err := p.WaitReady(ctx); err != nil {
		p.Kill()
		return nil, fmt.Errorf("%w\n%s", err, p.Tail(40))
	}
	return p, nil
}

// WaitReady waits for /readyz, loads the serving CA (the generated one when no certificate was given), and waits
// until the registry API answers /v2/ over TLS.
func (p *Pullgate) WaitReady(ctx context.Context) error {
	plain := &http.Client{Timeout: 2 * time.Second}
	err := Poll(ctx, 30*time.Second, p.Spec.Name+" /readyz", p.Exited(), func(ctx context.Context) error {
		return HTTPStatus(ctx, plain, p.MetricsURL+"/readyz", http.StatusOK)
	})
	if err != nil {
		return err
	}
	if p.Opts.CertFile != "" {
		p.CAFile, p.Pool = p.Opts.CA.CertFile, p.Opts.CA.Pool
	} else {
		p.CAFile = filepath.Join(p.Opts.DataDir, "tls", "ca.crt")
		if p.Pool, err = PoolFromFile(p.CAFile); err != nil {
			return fmt.Errorf("pullgate made no CA of its own: %w", err)
		}
	}
	client := &http.Client{Transport: Transport(p.Pool), Timeout: 2 * time.Second}
	defer client.CloseIdleConnections()
	return Poll(ctx, 10*time.Second, p.Spec.Name+" /v2/", p.Exited(), func(ctx context.Context) error {
		return HTTPStatus(ctx, client, p.URL+"/v2/", cmp.Or(p.Opts.V2Status, http.StatusOK))
	})
}

// Restart starts a stopped pullgate again with the same settings and waits until it is ready.
func (p *Pullgate) Restart(ctx context.Context) error {
	if err := p.Start(); err != nil {
		return err
	}
	return p.WaitReady(ctx)
}

// Verify runs `pullgate verify` on the data directory (pullgate should be stopped) and returns its output.
func (p *Pullgate) Verify(ctx context.Context) (string, error) {
	return Run(ctx, 2*time.Minute, []string{"PULLGATE_DATA_DIR=" + p.Opts.DataDir}, p.Opts.Bin, "verify")
}

// Metrics returns the text of /metrics.
func (p *Pullgate) Metrics(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.MetricsURL+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// PullLog returns the pull log lines (JSON objects with a "cache" field) written so far.
func (p *Pullgate) PullLog() []string {
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		return nil
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "{") && strings.Contains(l, `"cache"`) {
			lines = append(lines, l)
		}
	}
	return lines
}
