package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullgate/pullgate/cache"
)

func TestConfigErrorsNameTheVariable(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		wantVar string
	}{
		{"bad duration", map[string]string{"PULLGATE_TAG_TTL": "soon"}, "PULLGATE_TAG_TTL"},
		{"negative ttl", map[string]string{"PULLGATE_TAG_TTL": "-1s"}, "PULLGATE_TAG_TTL"},
		{"bad addr", map[string]string{"PULLGATE_ADDR": "5443"}, "PULLGATE_ADDR"},
		{"bad metrics addr", map[string]string{"PULLGATE_METRICS_ADDR": "nope"}, "PULLGATE_METRICS_ADDR"},
		{"http upstream", map[string]string{"PULLGATE_UPSTREAMS": "local=http://127.0.0.1:5000"}, "PULLGATE_UPSTREAMS"},
		{"upstream with path", map[string]string{"PULLGATE_UPSTREAMS": "local=https://h/x"}, "PULLGATE_UPSTREAMS"},
		{"duplicate upstream", map[string]string{"PULLGATE_UPSTREAMS": "a=https://x,a=https://y"}, "PULLGATE_UPSTREAMS"},
		{"unknown default", map[string]string{"PULLGATE_UPSTREAMS": "ghcr.io", "PULLGATE_DEFAULT_UPSTREAM": "docker.io"}, "PULLGATE_DEFAULT_UPSTREAM"},
		{"cert without key", map[string]string{"PULLGATE_TLS_CERT": "/x.crt"}, "PULLGATE_TLS_CERT"},
		{"concurrency zero", map[string]string{"PULLGATE_UPSTREAM_CONCURRENCY": "0"}, "PULLGATE_UPSTREAM_CONCURRENCY"},
		{"bad offline", map[string]string{"PULLGATE_OFFLINE": "maybe"}, "PULLGATE_OFFLINE"},
		{"bad log level", map[string]string{"PULLGATE_LOG_LEVEL": "loud"}, "PULLGATE_LOG_LEVEL"},
		{"fill timeout zero", map[string]string{"PULLGATE_FILL_TIMEOUT": "0s"}, "PULLGATE_FILL_TIMEOUT"},
		{"failure threshold zero", map[string]string{"PULLGATE_UPSTREAM_FAILURE_THRESHOLD": "0"}, "PULLGATE_UPSTREAM_FAILURE_THRESHOLD"},
		{"bad cooldown", map[string]string{"PULLGATE_UPSTREAM_COOLDOWN": "later"}, "PULLGATE_UPSTREAM_COOLDOWN"},
		{"max conns zero", map[string]string{"PULLGATE_MAX_CONNS": "0"}, "PULLGATE_MAX_CONNS"},
		{"idle timeout negative", map[string]string{"PULLGATE_IDLE_TIMEOUT": "-1s"}, "PULLGATE_IDLE_TIMEOUT"},
		{"write timeout zero", map[string]string{"PULLGATE_WRITE_TIMEOUT": "0s"}, "PULLGATE_WRITE_TIMEOUT"},
		{"fills per upstream at the upstream limit", map[string]string{"PULLGATE_UPSTREAM_CONCURRENCY": "8", "PULLGATE_MAX_FILLS_PER_UPSTREAM": "8"}, "PULLGATE_MAX_FILLS_PER_UPSTREAM"},
		{"negative prefetch", map[string]string{"PULLGATE_PREFETCH": "-1"}, "PULLGATE_PREFETCH"},
		{"range wait zero", map[string]string{"PULLGATE_RANGE_WAIT": "0s"}, "PULLGATE_RANGE_WAIT"},
		{"scanner without a policy", map[string]string{"PULLGATE_SCANNER_URL": "https://scanner:8080"}, "PULLGATE_SCANNER_URL"},
		{"scanner URL not a URL", map[string]string{"PULLGATE_GATE_POLICY": "/p.yaml", "PULLGATE_SCANNER_URL": "scanner:8080"}, "PULLGATE_SCANNER_URL"},
		{"scanner URL with credentials", map[string]string{"PULLGATE_GATE_POLICY": "/p.yaml", "PULLGATE_SCANNER_URL": "https://u:p@scanner"}, "PULLGATE_SCANNER_URL"},
		{"plaintext registry URL for the scanner", map[string]string{"PULLGATE_GATE_POLICY": "/p.yaml", "PULLGATE_SCANNER_REGISTRY_URL": "http://pullgate:5443"}, "PULLGATE_SCANNER_REGISTRY_URL"},
		{"unknown scanner API", map[string]string{"PULLGATE_SCANNER_API": "clair"}, "PULLGATE_SCANNER_API"},
		{"scan concurrency zero", map[string]string{"PULLGATE_SCAN_CONCURRENCY": "0"}, "PULLGATE_SCAN_CONCURRENCY"},
		{"scan timeout zero", map[string]string{"PULLGATE_SCAN_TIMEOUT": "0s"}, "PULLGATE_SCAN_TIMEOUT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			code := run([]string{"serve"}, tt.env, io.Discard, &stderr)
			if code != 2 {
				t.Fatalf("exit status %d, want 2 (stderr %q)", code, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.wantVar) {
				t.Fatalf("stderr %q does not name %s", stderr.String(), tt.wantVar)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	cfg, specs, err := loadConfig(map[string]string{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Addr != ":5443" || cfg.DataDir != "./pullgate-data" || cfg.MetricsAddr != "127.0.0.1:9090" || cfg.DefaultUpstream != "docker.io" {
		t.Fatalf("defaults: %+v", cfg)
	}
	var names []string
	for _, s := range specs {
		names = append(names, s.name+"="+s.url.String())
	}
	want := "docker.io=https://registry-1.docker.io ghcr.io=https://ghcr.io quay.io=https://quay.io registry.k8s.io=https://registry.k8s.io gcr.io=https://gcr.io"
	if got := strings.Join(names, " "); got != want {
		t.Fatalf("upstreams %q, want %q", got, want)
	}
	_, specs, err = loadConfig(map[string]string{"PULLGATE_UPSTREAMS": "docker.io,hub=https://registry-1.docker.io,local=https://localhost:5001", "PULLGATE_OFFLINE": "local"})
	if err != nil {
		t.Fatal(err)
	}
	if len(specs) != 3 || specs[2].url.Host != "localhost:5001" || !specs[2].offline || specs[0].offline {
		t.Fatalf("specs %+v", specs)
	}
}

// logWatcher collects pullgate's JSON log and finds lines in it.
type logWatcher struct {
	mu    sync.Mutex
	lines []map[string]any
}

func (l *logWatcher) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	sc := bufio.NewScanner(bytes.NewReader(p))
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			l.lines = append(l.lines, m)
		}
	}
	return len(p), nil
}

func (l *logWatcher) find(msg string) map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range l.lines {
		if m["msg"] == msg {
			return m
		}
	}
	return nil
}

// startServe runs serve in-process and returns its API address and a stop function that waits for it.
func startServe(t *testing.T, dataDir string) (addr string, logs *logWatcher, stop func()) {
	t.Helper()
	cfg, specs, err := loadConfig(map[string]string{
		"PULLGATE_ADDR": "127.0.0.1:0", "PULLGATE_METRICS_ADDR": "127.0.0.1:0", "PULLGATE_DATA_DIR": dataDir,
		"PULLGATE_UPSTREAMS": "local=https://127.0.0.1:1", "PULLGATE_DEFAULT_UPSTREAM": "local",
	})
	if err != nil {
		t.Fatal(err)
	}
	logs = &logWatcher{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, specs, slog.New(slog.NewJSONHandler(logs, nil))) }()
	deadline := time.Now().Add(10 * time.Second)
	for logs.find("pullgate serving") == nil {
		select {
		case err := <-done:
			t.Fatalf("serve returned early: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("pullgate did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}
	t.Cleanup(stop)
	return logs.find("pullgate serving")["addr"].(string), logs, stop
}

// TestTLSOnly is invariant 8 of docs/design.md: without a configured certificate, pullgate makes a local CA, serves the
// API over TLS only, and reuses the CA across restarts.
func TestTLSOnly(t *testing.T) {
	dir := t.TempDir()
	addr, logs, stop := startServe(t, dir)
	caPath, _ := logs.find("no PULLGATE_TLS_CERT: serving with a certificate from pullgate's local CA; clients must trust the CA file")["ca"].(string)
	if caPath != filepath.Join(dir, "tls", "ca.crt") {
		t.Fatalf("logged CA path %q, want %q", caPath, filepath.Join(dir, "tls", "ca.crt"))
	}
	ca1, err := os.ReadFile(caPath)
	if err != nil {
		t.Fatal(err)
	}

	// Plain HTTP gets no registry API answer.
	resp, err := http.Get("http://" + addr + "/v2/")
	if err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK || resp.Header.Get("Docker-Distribution-API-Version") != "" {
			t.Fatalf("plaintext request answered by the API: %d %q", resp.StatusCode, body)
		}
	}

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca1)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
	check := func() {
		t.Helper()
		for _, host := range []string{"localhost", "127.0.0.1"} {
			port := addr[strings.LastIndex(addr, ":"):]
			resp, err := client.Get("https://" + host + port + "/v2/")
			if err != nil {
				t.Fatalf("TLS with the local CA to %s: %v", host, err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 || resp.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" || resp.ProtoMajor != 2 {
				t.Fatalf("GET /v2/ over TLS: %d %s %v", resp.StatusCode, resp.Proto, resp.Header)
			}
		}
	}
	check()

	// The operations listener: health, readiness and the metrics, in plain HTTP.
	metricsAddr := logs.find("pullgate serving")["metrics"].(string)
	for path, want := range map[string]string{
		"/healthz": "ok", "/readyz": "ready",
		"/metrics": `pullgate_requests_total{cache="",route="base",status="200"}`,
	} {
		resp, err := http.Get("http://" + metricsAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
			t.Fatalf("GET %s: %d, body lacks %q", path, resp.StatusCode, want)
		}
	}
	stop()
	client.CloseIdleConnections()

	addr, _, _ = startServe(t, dir)
	ca2, err := os.ReadFile(caPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ca1, ca2) {
		t.Fatal("the local CA was replaced on restart; clients that trust it would break")
	}
	check()
}

func TestVerifyCommand(t *testing.T) {
	dir := t.TempDir()
	c, err := cache.Open(cache.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	content := []byte("a blob that verify will check")
	d, _, _ := v1.SHA256(bytes.NewReader(content))
	w, err := c.NewWriter(d, "", int64(len(content)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(content); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	path := c.Path(d)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	// verify needs only the data directory: variables that serve would refuse do not stop it.
	env := map[string]string{"PULLGATE_DATA_DIR": dir, "PULLGATE_TAG_TTL": "soon", "PULLGATE_UPSTREAMS": "http://nope"}
	var out bytes.Buffer
	if code := run([]string{"verify"}, env, &out, io.Discard); code != 0 {
		t.Fatalf("verify on a clean data dir: %d\n%s", code, out.String())
	}
	// Same size, other bytes: only re-hashing finds it.
	corrupt := bytes.Clone(content)
	corrupt[0] ^= 1
	if err := os.WriteFile(path, corrupt, 0o644); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if code := run([]string{"verify"}, env, &out, io.Discard); code != 1 || !strings.Contains(out.String(), "FAULT "+d.String()) {
		t.Fatalf("verify on a corrupted object: exit %d, want 1 and a FAULT line naming %s\n%s", code, d, out.String())
	}
}
