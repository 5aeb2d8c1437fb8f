package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// The shared environment: one upstream filled with the fixtures, a counting proxy in front of it, and one
// pullgate pointed at the proxy. Client and conformance tests read from it; failure tests make their own.
//
// PULLGATE_E2E_TARGET=upstream points the client tests at the upstream instead of pullgate (to check the harness
// itself); PULLGATE_E2E_KEEP=1 keeps the work directory and logs.
var (
	workDir      string
	sharedOnce   sync.Once
	shared       *env
	sharedErr    error
	buildOnce    sync.Once
	pullgateBin  string
	buildErr     error
	cleanupMu    sync.Mutex
	mainCleanups []func()
)

func TestMain(m *testing.M) {
	var err error
	workDir, err = os.MkdirTemp("", "pullgate-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	code := m.Run()
	cleanupMu.Lock()
	for i := len(mainCleanups) - 1; i >= 0; i-- {
		mainCleanups[i]()
	}
	cleanupMu.Unlock()
	if os.Getenv("PULLGATE_E2E_KEEP") != "" {
		fmt.Fprintf(os.Stderr, "e2e: kept %s\n", workDir)
	} else {
		_ = os.RemoveAll(workDir)
	}
	os.Exit(code)
}

func atMainExit(f func()) {
	cleanupMu.Lock()
	defer cleanupMu.Unlock()
	mainCleanups = append(mainCleanups, f)
}

// requireTool skips the test when a program is missing, except under CI=true, where that is a failure.
func requireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is required under CI=true: %v (apt-get install -y docker-registry skopeo containerd)", name, err)
		}
		t.Skipf("%s not installed: %v", name, err)
	}
	return p
}

// directMode says whether client tests talk to the upstream itself (PULLGATE_E2E_TARGET=upstream).
func directMode() bool { return os.Getenv("PULLGATE_E2E_TARGET") == "upstream" }

// pullgateBinary builds cmd/pullgate once per test binary.
func pullgateBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := ModuleRoot()
		if err != nil {
			buildErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		defer cancel()
		pullgateBin, buildErr = BuildPullgate(ctx, root, workDir)
	})
	if buildErr != nil {
		t.Fatalf("building pullgate: %v", buildErr)
	}
	return pullgateBin
}

// env is a set of running servers and what they hold.
type env struct {
	dir      string
	ca       *CA
	certFile string // serving certificate for every server of the env (loopback names)
	keyFile  string
	upstream *Registry
	proxy    *CountingProxy // in front of upstream; pullgate's upstream
	fix      *Fixtures
	pg       *Pullgate // nil in direct mode
}

// upHost is the upstream as clients and pullgate see it (the counting proxy's host:port).
func (e *env) upHost() string { return e.proxy.Addr }

// pgHost is where client tests pull from: pullgate, or the upstream in direct mode.
func (e *env) pgHost() string {
	if e.pg == nil {
		return e.proxy.Addr
	}
	return e.pg.Addr
}

// caFile trusts every server of the env.
func (e *env) caFile() string { return e.ca.CertFile }

func (e *env) transport() *http.Transport { return Transport(e.ca.Pool) }

// logs lists the log files of the env's processes.
func (e *env) logs() []string {
	files, _ := filepath.Glob(filepath.Join(e.dir, "logs", "*.log"))
	return files
}

// dumpOnFailure logs the tail of every process log of e when t fails.
func (e *env) dumpOnFailure(t testing.TB) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, f := range e.logs() {
			t.Logf("---- %s (tail)\n%s", filepath.Base(f), TailFile(f, 60))
		}
	})
}

// envOptions configures newEnv.
type envOptions struct {
	bigSize  int64 // size of the big fixture; zero means 50 MB
	noSeed   bool  // leave the upstream empty
	noPG     bool  // start no pullgate
	pgEnv    []string
	ownPGTLS bool // let pullgate make its own CA
}

// newEnv starts an upstream, a counting proxy and (unless noPG) pullgate in dir, and stops them with cleanup.
func newEnv(ctx context.Context, dir string, o envOptions, cleanup func(func())) (*env, error) {
	e := &env{dir: dir}
	logDir := filepath.Join(dir, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, err
	}
	var err error
	if e.ca, err = NewCA(dir); err != nil {
		return nil, err
	}
	if e.certFile, e.keyFile, err = e.ca.Issue(dir, "loopback", LoopbackHosts()...); err != nil {
		return nil, err
	}
	e.upstream, err = StartRegistry(ctx, RegistryOptions{Name: "upstream", Dir: filepath.Join(dir, "upstream"), LogDir: logDir,
		CertFile: e.certFile, KeyFile: e.keyFile, CA: e.ca})
	if err != nil {
		return nil, fmt.Errorf("upstream: %w", err)
	}
	cleanup(func() { e.upstream.Kill() })
	if e.proxy, err = StartCountingProxy(e.upstream.URL, e.ca, e.certFile, e.keyFile); err != nil {
		return nil, err
	}
	cleanup(func() { e.proxy.Close() })
	if !o.noSeed {
		if e.fix, err = Seed(ctx, e.upstream.Addr, SeedOptions{BigSize: o.bigSize, Transport: e.transport()}); err != nil {
			return nil, fmt.Errorf("seeding the upstream: %w", err)
		}
		// Every client test compares with the fixtures' digests: make sure they are what a direct pull gets.
		for _, im := range e.fix.All() {
			ref, err := name.NewDigest(im.DigestRef(e.upHost()), name.StrictValidation)
			if err != nil {
				return nil, err
			}
			d, err := remote.Get(ref, remote.WithContext(ctx), remote.WithTransport(e.transport()))
			if err != nil {
				return nil, fmt.Errorf("direct pull of %s: %w", ref, err)
			}
			if d.Digest != im.Digest || d.MediaType != im.MediaType {
				return nil, fmt.Errorf("direct pull of %s: %s %s, pushed %s %s", ref, d.Digest, d.MediaType, im.Digest, im.MediaType)
			}
		}
	}
	if o.noPG {
		return e, nil
	}
	bin := pullgateBin
	if bin == "" {
		return nil, fmt.Errorf("pullgate not built")
	}
	po := PullgateOptions{Bin: bin, DataDir: filepath.Join(dir, "pullgate-data"), LogDir: logDir,
		Upstreams: "local=" + e.proxy.URL, Default: "local", UpstreamCAFile: e.ca.CertFile, Env: o.pgEnv}
	if !o.ownPGTLS {
		po.CertFile, po.KeyFile, po.CA = e.certFile, e.keyFile, e.ca
	}
	if e.pg, err = StartPullgate(ctx, po); err != nil {
		return nil, fmt.Errorf("pullgate: %w", err)
	}
	cleanup(func() {
		if err := e.pg.Stop(10 * time.Second); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
		}
	})
	return e, nil
}

// sharedEnv returns the environment shared by read-only tests, starting it on first use.
func sharedEnv(t testing.TB) *env {
	t.Helper()
	requireTool(t, RegistryBinary)
	if !directMode() {
		pullgateBinary(t)
	}
	sharedOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		o := envOptions{noPG: directMode()}
		if testing.Short() {
			o.bigSize = 8 << 20
		}
		shared, sharedErr = newEnv(ctx, filepath.Join(workDir, "shared"), o, atMainExit)
	})
	if sharedErr != nil {
		t.Fatalf("shared environment: %v\n%s", sharedErr, tailLogs(filepath.Join(workDir, "shared", "logs")))
	}
	shared.dumpOnFailure(t)
	return shared
}

// testEnv starts an environment of t's own, stopped when t ends.
func testEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	requireTool(t, RegistryBinary)
	if !o.noPG {
		pullgateBinary(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	e, err := newEnv(ctx, dir, o, t.Cleanup)
	if err != nil {
		t.Fatalf("environment: %v\n%s", err, tailLogs(filepath.Join(dir, "logs")))
	}
	e.dumpOnFailure(t)
	return e
}

func tailLogs(dir string) string {
	files, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	var b strings.Builder
	for _, f := range files {
		fmt.Fprintf(&b, "---- %s\n%s\n", filepath.Base(f), TailFile(f, 40))
	}
	return b.String()
}

// ctxFor returns a context that ends after limit or when t ends.
func ctxFor(t testing.TB, limit time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	t.Cleanup(cancel)
	return ctx
}
