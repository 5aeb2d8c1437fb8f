package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// RegistryBinary is Debian's distribution registry (2.8).
const RegistryBinary = "docker-registry"

// RegistryOptions configures StartRegistry.
type RegistryOptions struct {
	// Name names the process and its log file; empty means "registry".
	Name string
	// Dir holds the config and the storage; required.
	Dir string
	// LogDir receives the log; empty means Dir.
	LogDir string
	// Addr is the listen address; empty means a free loopback port.
	Addr string
	// CertFile and KeyFile are the serving certificate; required (the registry speaks TLS only here).
	CertFile, KeyFile string
	// CA is trusted by the readiness probe; required.
	CA *CA
	// ProxyRemoteURL, when set, runs the registry as a pull-through cache of that URL (distribution's proxy mode).
	ProxyRemoteURL string
	// ProxyCAFile is the CA bundle the proxy trusts for ProxyRemoteURL (passed as SSL_CERT_FILE).
	ProxyCAFile string
}

// Registry is a running docker-registry.
type Registry struct {
	*Proc
	// Addr is host:port; URL is https://Addr.
	Addr, URL string
	// StorageDir is the filesystem storage root.
	StorageDir string
}

// StartRegistry writes a config for docker-registry, starts it and waits until /v2/ answers 200.
func StartRegistry(ctx context.Context, o RegistryOptions) (*Registry, error) {
	path, err := exec.LookPath(RegistryBinary)
	if err != nil {
		return nil, err
	}
	if o.Name == "" {
		o.Name = "registry"
	}
	if o.LogDir == "" {
		o.LogDir = o.Dir
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, err
	}
	if o.Addr == "" {
		if o.Addr, err = FreeAddr(); err != nil {
			return nil, err
		}
	}
	r := &Registry{Addr: o.Addr, URL: "https://" + o.Addr, StorageDir: filepath.Join(o.Dir, "storage")}
	config := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
  secret: e2e-not-secret
  tls:
    certificate: %s
    key: %s
`, r.StorageDir, o.Addr, o.CertFile, o.KeyFile)
	var env []string
	if o.ProxyRemoteURL != "" {
		config += fmt.Sprintf("proxy:\n  remoteurl: %s\n", o.ProxyRemoteURL)
		env = append(env, "SSL_CERT_FILE="+o.ProxyCAFile)
	}
	configFile := filepath.Join(o.Dir, o.Name+".yml")
	if err := os.WriteFile(configFile, []byte(config), 0o644); err != nil {
		return nil, err
	}
	r.Proc, err = StartProc(ProcSpec{Name: o.Name, Path: path, Args: []string{"serve", configFile}, Env: env, LogDir: o.LogDir})
	if err != nil {
		return nil, err
	}
	if err := r.WaitReady(ctx, o.CA); err != nil {
		r.Kill()
		return nil, fmt.Errorf("%w\n%s", err, r.Tail(30))
	}
	return r, nil
}

// WaitReady waits until /v2/ answers 200, for a start or a restart.
func (r *Registry) WaitReady(ctx context.Context, ca *CA) error {
	client := &http.Client{Transport: Transport(ca.Pool), Timeout: 2 * time.Second}
	defer client.CloseIdleConnections()
	return Poll(ctx, 20*time.Second, r.Spec.Name+" /v2/", r.Exited(), func(ctx context.Context) error {
		return HTTPStatus(ctx, client, r.URL+"/v2/", http.StatusOK)
	})
}

// Restart starts a stopped registry again and waits until it is ready.
func (r *Registry) Restart(ctx context.Context, ca *CA) error {
	if err := r.Start(); err != nil {
		return err
	}
	return r.WaitReady(ctx, ca)
}
