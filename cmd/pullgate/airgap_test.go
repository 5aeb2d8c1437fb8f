package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/pullgate/pullgate/cache"
	"github.com/pullgate/pullgate/lifecycle"
)

// airgapEnv is a configuration whose docker.io upstream cannot be reached: whatever is served comes from the
// cache.
func airgapEnv(dataDir string) map[string]string {
	return map[string]string{
		"PULLGATE_ADDR": "127.0.0.1:0", "PULLGATE_METRICS_ADDR": "127.0.0.1:0", "PULLGATE_DATA_DIR": dataDir,
		"PULLGATE_UPSTREAMS": "docker.io=https://127.0.0.1:1,ghcr.io", "PULLGATE_DEFAULT_UPSTREAM": "docker.io",
		"PULLGATE_LOG_LEVEL": "error",
	}
}

// storeAll stores b under d with mediaType and links it to the repository.
func storeAll(t *testing.T, c *cache.Cache, up, repo string, d v1.Hash, mediaType string, b []byte) {
	t.Helper()
	w, err := c.NewWriter(d, mediaType, int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := c.LinkDescriptor(up, repo, d, int64(len(b))); err != nil {
		t.Fatal(err)
	}
}

// cacheImage stores a random image in c under up/repo:tag and returns it.
func cacheImage(t *testing.T, c *cache.Cache, up, repo, tag string) v1.Image {
	t.Helper()
	img, err := random.Image(600, 2)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := img.RawManifest()
	d, _ := img.Digest()
	mt, _ := img.MediaType()
	storeAll(t, c, up, repo, d, string(mt), raw)
	cfgName, _ := img.ConfigName()
	cfg, _ := img.RawConfigFile()
	storeAll(t, c, up, repo, cfgName, "", cfg)
	layers, _ := img.Layers()
	for _, l := range layers {
		ld, _ := l.Digest()
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc)
		if err != nil {
			t.Fatal(err)
		}
		storeAll(t, c, up, repo, ld, "", b)
	}
	if err := c.SetTag(up, repo, tag, cache.TagEntry{Digest: d, MediaType: string(mt), Size: int64(len(raw)), Fetched: time.Now()}); err != nil {
		t.Fatal(err)
	}
	return img
}

// startServeEnv runs serve in-process with env and returns its API address and a client trusting its local CA.
func startServeEnv(t *testing.T, env map[string]string) (string, *http.Client) {
	t.Helper()
	addr := serveInProcess(t, env)
	ca, err := os.ReadFile(filepath.Join(env["PULLGATE_DATA_DIR"], "tls", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	t.Cleanup(client.CloseIdleConnections)
	return "https://localhost" + addr[strings.LastIndex(addr, ":"):], client
}

// serveInProcess runs `pullgate serve` in-process with env until the test ends, and returns the API listener's
// address once it serves.
func serveInProcess(t *testing.T, env map[string]string) string {
	t.Helper()
	cfg, specs, err := loadConfig(env)
	if err != nil {
		t.Fatal(err)
	}
	logs := &logWatcher{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, specs, slog.New(slog.NewJSONHandler(logs, nil))) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for logs.find("pullgate serving") == nil {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("serve returned early: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("pullgate did not start")
		}
		time.Sleep(10 * time.Millisecond) // polling pullgate's log for its start, with a deadline
	}
	return logs.find("pullgate serving")["addr"].(string)
}

// TestAirgapExportImport holds the airgap path end to end: export from one stopped data directory (by argument,
// by list file, to a file and to standard output, the same bytes), import into another, and a pullgate that
// cannot reach any upstream then answers containerd's ?ns=docker.io requests and path-prefixed ones for the
// imported images, manifests and blobs, byte for byte. An image not cached fails the export and writes no file.
func TestAirgapExportImport(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	c, err := cache.Open(cache.Options{Dir: src, Reserve: -1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	img := cacheImage(t, c, "docker.io", "library/foo", "1")
	other := cacheImage(t, c, "ghcr.io", "org/app", "v2")
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	bundle := filepath.Join(t.TempDir(), "bundle.tar")
	var stdout, stderr bytes.Buffer
	if code := runExport([]string{"docker.io/library/foo:1", "-o", bundle, "ghcr.io/org/app:v2"}, airgapEnv(src), &stdout, &stderr); code != 0 {
		t.Fatalf("export: %d\n%s%s", code, stdout.String(), stderr.String())
	}
	for _, want := range []string{"exported docker.io/library/foo:1  sha256:", "exported ghcr.io/org/app:v2", "pullgate export: 2 images, 8 objects"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("export output lacks %q:\n%s", want, stdout.String())
		}
	}
	list := filepath.Join(t.TempDir(), "images.txt")
	if err := os.WriteFile(list, []byte("# airgap\ndocker.io/library/foo:1\n\nghcr.io/org/app:v2  # the app\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var piped bytes.Buffer
	stderr.Reset()
	if code := runExport([]string{"-f", list, "-o", "-"}, airgapEnv(src), &piped, &stderr); code != 0 {
		t.Fatalf("export -f -o -: %d\n%s", code, stderr.String())
	}
	written, err := os.ReadFile(bundle)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(written, piped.Bytes()) {
		t.Error("the same images exported to a file and to standard output differ")
	}
	if !strings.Contains(stderr.String(), "pullgate export: 2 images") {
		t.Errorf("export -o - does not report on stderr:\n%s", stderr.String())
	}

	missing := filepath.Join(t.TempDir(), "missing.tar")
	stderr.Reset()
	if code := runExport([]string{"-o", missing, "docker.io/library/foo:1", "docker.io/library/foo:2"}, airgapEnv(src), io.Discard, &stderr); code != 1 ||
		!strings.Contains(stderr.String(), "tag 2 of docker.io/library/foo is not cached") {
		t.Errorf("export of an image not cached: %d\n%s", code, stderr.String())
	}
	if entries, _ := os.ReadDir(filepath.Dir(missing)); len(entries) != 0 {
		t.Errorf("a failed export left %v", entries)
	}

	stdout.Reset()
	stderr.Reset()
	if code := runImport([]string{bundle}, airgapEnv(dst), nil, &stdout, &stderr); code != 0 {
		t.Fatalf("import: %d\n%s%s", code, stdout.String(), stderr.String())
	}
	for _, want := range []string{"imported docker.io/library/foo:1  as docker.io library/foo:1", "imported ghcr.io/org/app:v2  as ghcr.io org/app:v2", "2 of 2 images imported; 8 blobs"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("import output lacks %q:\n%s", want, stdout.String())
		}
	}
	// From standard input, again: nothing changes.
	stdout.Reset()
	if code := runImport([]string{"-"}, airgapEnv(dst), bytes.NewReader(written), &stdout, &stderr); code != 0 {
		t.Fatalf("import -: %d\n%s%s", code, stdout.String(), stderr.String())
	}

	base, client := startServeEnv(t, airgapEnv(dst))
	get := func(path string) ([]byte, string) {
		t.Helper()
		resp, err := client.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
		}
		return b, resp.Header.Get("Content-Type")
	}
	for name, x := range map[string]struct {
		img        v1.Image
		ns, prefix string
		repo, tag  string
	}{
		"containerd ns": {img, "?ns=docker.io", "", "library/foo", "1"},
		"path prefix":   {img, "", "docker.io/", "library/foo", "1"},
		"default":       {img, "", "", "library/foo", "1"},
		"ghcr ns":       {other, "?ns=ghcr.io", "", "org/app", "v2"},
	} {
		t.Run(name, func(t *testing.T) {
			raw, _ := x.img.RawManifest()
			mt, _ := x.img.MediaType()
			body, ct := get("/v2/" + x.prefix + x.repo + "/manifests/" + x.tag + x.ns)
			if !bytes.Equal(body, raw) || ct != string(mt) {
				t.Errorf("manifest: %d bytes of type %s, want the image's %d of %s", len(body), ct, len(raw), mt)
			}
			layers, _ := x.img.Layers()
			ld, _ := layers[1].Digest()
			rc, _ := layers[1].Compressed()
			want, _ := io.ReadAll(rc)
			if got, _ := get("/v2/" + x.prefix + x.repo + "/blobs/" + ld.String() + x.ns); !bytes.Equal(got, want) {
				t.Error("layer differs")
			}
		})
	}
}

// TestAirgapRefusesARunningDataDir holds that export and import refuse a data directory a running pullgate
// holds, with a message that says to stop it or use the admin API, before touching it: a fill in progress
// keeps its temp file.
func TestAirgapRefusesARunningDataDir(t *testing.T) {
	dir := t.TempDir()
	c, err := cache.Open(cache.Options{Dir: dir, Reserve: -1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	w, err := c.NewWriter(v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("a", 64)}, "", 10)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort(nil)
	if _, err := w.Write([]byte("fill")); err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(t.TempDir(), "b.tar")
	if err := os.WriteFile(bundle, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		run  func(stderr io.Writer) int
	}{
		{"export", func(stderr io.Writer) int {
			return runExport([]string{"-o", filepath.Join(t.TempDir(), "x.tar"), "foo:1"}, airgapEnv(dir), io.Discard, stderr)
		}},
		{"import", func(stderr io.Writer) int {
			return runImport([]string{bundle}, airgapEnv(dir), nil, io.Discard, stderr)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			code := tt.run(&stderr)
			want := "the data directory " + dir + " is in use by a running pullgate: stop it first, or " + tt.name + " through the running server's admin API"
			if code != 1 || !strings.Contains(stderr.String(), want) {
				t.Errorf("exit %d, stderr:\n%s\nwant %q", code, stderr.String(), want)
			}
			if tmp, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(tmp) != 1 {
				t.Errorf("the running pullgate's temp files: %v", tmp)
			}
		})
	}
}

// TestAirgapImportFailures holds the exit status and report of an import that is not clean: a bundle with a
// corrupted layer imports its other image and exits 1 naming the refused blob and the failed image.
func TestAirgapImportFailures(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	c, err := cache.Open(cache.Options{Dir: src, Reserve: -1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	img := cacheImage(t, c, "docker.io", "library/foo", "1")
	cacheImage(t, c, "docker.io", "library/foo", "2")
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	var tarball bytes.Buffer
	if code := runExport([]string{"-o", "-", "library/foo:1", "library/foo:2"}, airgapEnv(src), &tarball, io.Discard); code != 0 {
		t.Fatal("export failed")
	}
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	rc, _ := layers[0].Compressed()
	layer, _ := io.ReadAll(rc)
	b := tarball.Bytes()
	i := bytes.Index(b, layer)
	if i < 0 {
		t.Fatal("layer not found in the archive")
	}
	b[i+len(layer)/2] ^= 1
	var stdout bytes.Buffer
	code := runImport([]string{"-"}, airgapEnv(dst), bytes.NewReader(b), &stdout, io.Discard)
	out := stdout.String()
	for _, want := range []string{"REFUSED " + ld.String() + ": digest mismatch", "FAILED docker.io/library/foo:1: ", "imported docker.io/library/foo:2", "1 of 2 images imported", "1 refused"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
}

// TestNameResolver holds the mapping of names to upstreams and repositories: Docker's reading of names (short
// names are Docker Hub's, with library/), a first element naming an upstream or its URL's host, and the
// canonical name written into bundles.
func TestNameResolver(t *testing.T) {
	env := map[string]string{"PULLGATE_UPSTREAMS": "docker.io,ghcr.io,local=https://reg.example:5000", "PULLGATE_DEFAULT_UPSTREAM": "docker.io"}
	cfg, specs, err := loadConfig(env)
	if err != nil {
		t.Fatal(err)
	}
	r := nameResolver{specs, cfg.DefaultUpstream}
	const dg = "sha256:0123456789012345678901234567890123456789012345678901234567890123"
	d, _ := v1.NewHash(dg)
	tests := []struct {
		in      string
		want    lifecycle.Image
		wantErr string
	}{
		{in: "nginx", want: lifecycle.Image{Name: "docker.io/library/nginx:latest", Upstream: "docker.io", Repository: "library/nginx", Tag: "latest"}},
		{in: "nginx:1.25", want: lifecycle.Image{Name: "docker.io/library/nginx:1.25", Upstream: "docker.io", Repository: "library/nginx", Tag: "1.25"}},
		{in: "docker.io/library/nginx:1.25", want: lifecycle.Image{Name: "docker.io/library/nginx:1.25", Upstream: "docker.io", Repository: "library/nginx", Tag: "1.25"}},
		{in: "docker.io/nginx:1", want: lifecycle.Image{Name: "docker.io/library/nginx:1", Upstream: "docker.io", Repository: "library/nginx", Tag: "1"}},
		{in: "index.docker.io/nginx:1", want: lifecycle.Image{Name: "docker.io/library/nginx:1", Upstream: "docker.io", Repository: "library/nginx", Tag: "1"}},
		{in: "registry-1.docker.io/library/nginx:1", want: lifecycle.Image{Name: "docker.io/library/nginx:1", Upstream: "docker.io", Repository: "library/nginx", Tag: "1"}},
		{in: "myorg/app:1", want: lifecycle.Image{Name: "docker.io/myorg/app:1", Upstream: "docker.io", Repository: "myorg/app", Tag: "1"}},
		{in: "ghcr.io/o/r@" + dg, want: lifecycle.Image{Name: "ghcr.io/o/r@" + dg, Upstream: "ghcr.io", Repository: "o/r", Digest: d}},
		{in: "ghcr.io/o/r:v1@" + dg, want: lifecycle.Image{Name: "ghcr.io/o/r:v1@" + dg, Upstream: "ghcr.io", Repository: "o/r", Tag: "v1", Digest: d}},
		{in: "ghcr.io/r:1", want: lifecycle.Image{Name: "ghcr.io/r:1", Upstream: "ghcr.io", Repository: "r", Tag: "1"}},
		{in: "local/app:1", want: lifecycle.Image{Name: "local/app:1", Upstream: "local", Repository: "app", Tag: "1"}},
		{in: "reg.example:5000/app:1", want: lifecycle.Image{Name: "local/app:1", Upstream: "local", Repository: "app", Tag: "1"}},
		{in: "quay.io/x/y:1", wantErr: "quay.io is not an upstream pullgate is configured with"},
		{in: "other:5000/x:1", wantErr: "other:5000 is not an upstream pullgate is configured with"},
		{in: "localhost/x:1", wantErr: "localhost is not an upstream pullgate is configured with"},
		{in: "Nginx:1", wantErr: "Nginx"},
		{in: "nginx:-bad", wantErr: "-bad"},
		{in: "nginx@sha256:abc", wantErr: "sha256:abc"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := r.image(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("resolve(%q) = %+v, %v; want an error saying %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("resolve(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
		})
	}
	t.Run("no default upstream", func(t *testing.T) {
		// Names are read as Docker reads them: "nginx" is docker.io's, default upstream or not.
		if img, err := (nameResolver{specs, ""}).image("nginx:1"); err != nil || img.Upstream != "docker.io" {
			t.Errorf("resolve without a default: %+v, %v", img, err)
		}
		if _, err := (nameResolver{specs[1:], ""}).image("nginx:1"); err == nil || !strings.Contains(err.Error(), "docker.io is not an upstream") {
			t.Errorf("resolve of a Docker Hub name without Docker Hub: %v", err)
		}
	})
}
