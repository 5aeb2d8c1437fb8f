package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// refusedHost is a registry address where nothing listens: mirror configurations name it as the primary
// location, so that a client which gave up on pullgate fails instead of quietly pulling around it.
const refusedHost = "127.0.0.1:1"

// fileDigest returns "sha256:<hex>" of a file.
func fileDigest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// TestSkopeoMirror copies images with skopeo from a registry whose only working mirror (registries.conf) is
// pullgate, and checks the manifests and every blob it wrote.
func TestSkopeoMirror(t *testing.T) {
	skopeo := requireTool(t, "skopeo")
	e := sharedEnv(t)
	ctx := ctxFor(t, 3*time.Minute)
	certDir := t.TempDir()
	if err := os.Symlink(e.caFile(), filepath.Join(certDir, "ca.crt")); err != nil {
		t.Fatal(err)
	}
	mirrors := []struct{ name, location string }{
		{"default upstream", e.pgHost()},
		{"path prefix", e.pgHost() + "/local"},
	}
	if e.pg == nil {
		mirrors = mirrors[:1]
	}
	fixtures := []Image{e.fix.Single, e.fix.Multi, e.fix.Layers10, e.fix.Referrer}
	const source = "upstream.e2e.test" // a name only registries.conf knows
	for _, m := range mirrors {
		conf := filepath.Join(t.TempDir(), "registries.conf")
		err := os.WriteFile(conf, []byte(fmt.Sprintf(`unqualified-search-registries = []
[[registry]]
prefix = %q
location = %q
[[registry.mirror]]
location = %q
`, source, refusedHost, m.location)), 0o644)
		if err != nil {
			t.Fatal(err)
		}
		for _, im := range fixtures {
			for _, by := range []string{"tag", "digest"} {
				ref := "docker://" + im.Ref(source)
				if by == "digest" {
					ref = "docker://" + im.DigestRef(source)
				} else if im.Tag == "" {
					continue
				}
				t.Run(fmt.Sprintf("%s/%s/by %s", m.name, im.Repo, by), func(t *testing.T) {
					home := t.TempDir()
					common := []string{"--registries-conf", conf, "--insecure-policy"}
					// inspect --raw returns the manifest's bytes as served: they must hash to the digest.
					raw := filepath.Join(home, "raw")
					err := RunToFile(ctx, time.Minute, raw, skopeo, append(common, "inspect", "--raw", "--cert-dir", certDir, "--retry-times", "0", ref)...)
					if err != nil {
						t.Fatal(err)
					}
					if got, _ := fileDigest(raw); got != im.Digest.String() {
						t.Errorf("skopeo inspect --raw %s: manifest hashes to %s, want %s", ref, got, im.Digest)
					}
					out := filepath.Join(home, "out")
					_, err = Run(ctx, time.Minute, []string{"HOME=" + home}, skopeo, append(common, "copy", "--all",
						"--src-cert-dir", certDir, "--retry-times", "0", ref, "dir:"+out)...)
					if err != nil {
						t.Fatal(err)
					}
					checkDirCopy(t, out, im)
				})
			}
		}
	}
}

// checkDirCopy checks a skopeo dir: copy of im: the top manifest's digest (skopeo re-serializes an index it copies
// with --all, so not for an index), every child manifest, and that every file named by a digest hashes to it.
func checkDirCopy(t *testing.T, dir string, im Image) {
	t.Helper()
	got, err := fileDigest(filepath.Join(dir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !im.MediaType.IsIndex() && got != im.Digest.String() {
		t.Errorf("manifest.json is %s, want %s", got, im.Digest)
	}
	for _, d := range im.Manifests[1:] {
		p := filepath.Join(dir, d.Hex+".manifest.json")
		if got, err := fileDigest(p); err != nil || got != d.String() {
			t.Errorf("child manifest %s: %s %v", d, got, err)
		}
	}
	for _, d := range im.Blobs {
		if got, err := fileDigest(filepath.Join(dir, d.Hex)); err != nil || got != d.String() {
			t.Errorf("blob %s: %s %v", d, got, err)
		}
	}
}

// writeHostsDir writes a containerd hosts directory for the registry upHost whose one mirror is pgURL (pull and
// resolve), trusting caFile, and returns the directory.
func writeHostsDir(t *testing.T, upHost, pgURL, caFile string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, upHost), 0o755); err != nil {
		t.Fatal(err)
	}
	hosts := fmt.Sprintf(`server = "https://%s"
ca = %q

[host.%q]
  capabilities = ["pull", "resolve"]
  ca = %q
`, upHost, caFile, pgURL, caFile)
	if err := os.WriteFile(filepath.Join(dir, upHost, "hosts.toml"), []byte(hosts), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// containerdBypassed fails t when containerd sent requests of the given "METHOD kind"s ("GET blobs") straight to
// the upstream (the hosts.toml server) instead of to pullgate, its mirror: it does that when the mirror fails.
func containerdBypassed(t *testing.T, e *env, kinds ...string) {
	t.Helper()
	if e.pg == nil {
		return
	}
	for _, k := range kinds {
		if n := e.proxy.Count("UA containerd " + k); n > 0 {
			t.Errorf("containerd sent %d %s requests straight to the upstream (pullgate failed or was skipped): %v", n, k, e.proxy.Counts())
		}
	}
}

// TestCtrFetchObject fetches manifests and blobs with `ctr content fetch-object --hosts-dir` (no daemon), through
// a hosts.toml that names pullgate as the mirror, and checks each object's digest.
func TestCtrFetchObject(t *testing.T) {
	ctr := requireTool(t, "ctr")
	e := sharedEnv(t)
	ctx := ctxFor(t, 2*time.Minute)
	hostsDir := writeHostsDir(t, e.upHost(), "https://"+e.pgHost(), e.caFile())
	e.proxy.Reset()
	im := e.fix.Layers10
	objects := append(append([]string{}, hashes(im.Manifests)...), hashes(im.Blobs)...)
	for _, obj := range objects {
		t.Run(obj[:19], func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "object")
			// fetch-object fetches what the reference resolves to; containerd resolves a digest as a manifest,
			// then as a blob.
			ref := e.upHost() + "/" + im.Repo + "@" + obj
			if err := RunToFile(ctx, time.Minute, out, ctr, "content", "fetch-object", "--hosts-dir", hostsDir, ref); err != nil {
				t.Fatal(err)
			}
			if got, _ := fileDigest(out); got != obj {
				t.Errorf("fetch-object %s: got %s", obj, got)
			}
		})
	}
	// A HEAD of manifests/<blob digest> is expected to reach the upstream: distribution 2.8 answers it with 500,
	// pullgate passes that on as 503, and containerd then tries its next host, the server, before blobs/<digest>.
	containerdBypassed(t, e, "GET manifests", "GET blobs", "HEAD blobs")
}

func hashes[T fmt.Stringer](hs []T) []string {
	s := make([]string, len(hs))
	for i, h := range hs {
		s[i] = h.String()
	}
	return s
}

// TestContainerdPull starts a containerd daemon of its own and pulls (and unpacks) multi-layer and multi-platform
// images with `ctr image pull --hosts-dir` through pullgate.
func TestContainerdPull(t *testing.T) {
	ctr := requireTool(t, "ctr")
	containerd := requireTool(t, "containerd")
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("containerd needs root")
		}
		t.Skip("containerd needs root")
	}
	e := sharedEnv(t)
	ctx := ctxFor(t, 2*time.Minute)
	sock := startContainerd(ctx, t, containerd, ctr)
	hostsDir := writeHostsDir(t, e.upHost(), "https://"+e.pgHost(), e.caFile())
	e.proxy.Reset()
	for _, im := range []Image{e.fix.Layers10, e.fix.Multi} {
		t.Run(im.Repo, func(t *testing.T) {
			ref := im.Ref(e.upHost())
			_, err := Run(ctx, time.Minute, nil, ctr, "--address", sock, "--namespace", "e2e", "image", "pull",
				"--hosts-dir", hostsDir, "--snapshotter", "native", ref)
			if err != nil {
				t.Fatal(err)
			}
			out, err := Run(ctx, 30*time.Second, nil, ctr, "--address", sock, "--namespace", "e2e", "image", "ls")
			if err != nil {
				t.Fatal(err)
			}
			if got := imageDigest(out, ref); got != im.Digest.String() {
				t.Errorf("containerd has %s as %q, want %s\n%s", ref, got, im.Digest, out)
			}
			out, err = Run(ctx, 30*time.Second, nil, ctr, "--address", sock, "--namespace", "e2e", "content", "ls", "--quiet")
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range im.Manifests[:min(2, len(im.Manifests))] {
				if !strings.Contains(out, d.String()) {
					t.Errorf("containerd's content store lacks manifest %s", d)
				}
			}
		})
	}
	containerdBypassed(t, e, "GET manifests", "HEAD manifests", "GET blobs", "HEAD blobs")
}

// imageDigest finds ref's digest in `ctr image ls` output.
func imageDigest(ls, ref string) string {
	sc := bufio.NewScanner(strings.NewReader(ls))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 3 && f[0] == ref {
			return f[2]
		}
	}
	return ""
}

// startContainerd runs a containerd with its own root, state and socket (CRI and other heavy plugins off) and
// returns the socket's path once it answers.
func startContainerd(ctx context.Context, t *testing.T, containerd, ctr string) string {
	t.Helper()
	sock, p := launchContainerd(t, "containerd", containerd, func(string) string { return "" })
	err := Poll(ctx, 30*time.Second, "containerd", p.Exited(), func(ctx context.Context) error {
		_, err := Run(ctx, 5*time.Second, nil, ctr, "--address", sock, "version")
		return err
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, p.Tail(40))
	}
	return sock
}

// launchContainerd starts a containerd named name with its own root, state and socket in a short temporary
// directory (a unix socket path must fit in 108 bytes) and returns the socket and the process; it is stopped
// when t ends. cri returns the CRI plugin's configuration for that directory, or "" to leave the plugin off.
func launchContainerd(t *testing.T, name, containerd string, cri func(dir string) string) (string, *Proc) {
	t.Helper()
	dir, err := os.MkdirTemp("", "ctrd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "c.sock")
	criConfig := cri(dir)
	disabled := ""
	if criConfig == "" {
		disabled = "\n  \"io.containerd.grpc.v1.cri\","
	}
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = [%s
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]
[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  level = "info"
%s`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), disabled, sock, sock+".ttrpc", criConfig)
	configFile := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(configFile, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := StartProc(ProcSpec{Name: name, Path: containerd, Args: []string{"--config", configFile}, LogDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("---- %s (tail)\n%s", name, p.Tail(40))
		}
		if err := p.Stop(10 * time.Second); err != nil {
			t.Log(err)
		}
	})
	return sock, p
}
