package e2e

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// imageRepo is where TestImage pushes the image it builds, on the e2e upstream.
const imageRepo = "pullgate/pullgate:test"

// imageUID is the user the image runs as, and owns its data directory.
const imageUID = 65532

// TestImage proves the container image by running it: it builds the image's prebuilt target from the binary the
// e2e suite runs (static) with buildah (vfs storage, chroot isolation: no daemon), pushes it to the e2e
// upstream, checks its configuration and files, has a containerd of its own pull it through a running pullgate
// (mirror mode, with nothing reachable as the registry itself), runs it with runc as the image's user, and checks
// that the pullgate inside answers /v2/ over TLS with a certificate from the CA it made in its data directory.
func TestImage(t *testing.T) {
	start := time.Now()
	buildah, err := exec.LookPath("buildah")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("buildah is required under CI=true: %v (apt-get install -y buildah)", err)
		}
		t.Skipf("buildah not installed (apt-get install -y buildah): %v", err)
	}
	ctr := requireTool(t, "ctr")
	containerd := requireTool(t, "containerd")
	requireTool(t, "runc")
	requireRoot(t)
	bin := pullgateBinary(t)
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	e := testEnv(t, envOptions{noSeed: true})
	ctx := ctxFor(t, 2*time.Minute)
	defer func() { t.Logf("TestImage took %v", time.Since(start).Round(100*time.Millisecond)) }()

	checkStatic(t, bin)

	// Build: the prebuilt target from a context of the binary, the host's CA bundle and build/image's files, all
	// group-writable, as a checkout under umask 002 has them: the image's modes must not depend on that.
	contextDir := t.TempDir()
	copyFile(t, bin, filepath.Join(contextDir, "dist", "pullgate"), 0o775)
	copyFile(t, "/etc/ssl/certs/ca-certificates.crt", filepath.Join(contextDir, "dist", "ca-certificates.crt"), 0o664)
	for _, f := range []string{"passwd", "group", "data-dir.tar"} {
		copyFile(t, filepath.Join(root, "build", "image", f), filepath.Join(contextDir, "build", "image", f), 0o664)
	}
	storage := t.TempDir()
	bah := func(args ...string) {
		t.Helper()
		global := []string{"--root", filepath.Join(storage, "root"), "--runroot", filepath.Join(storage, "run"), "--storage-driver", "vfs"}
		if _, err := Run(ctx, time.Minute, nil, buildah, append(global, args...)...); err != nil {
			t.Fatal(err)
		}
	}
	built := time.Now()
	bah("bud", "--isolation", "chroot", "--layers", "--target", "prebuilt", "--quiet", "-f", filepath.Join(root, "Dockerfile"),
		"-t", "localhost/pullgate:test", contextDir)
	certDir := t.TempDir()
	copyFile(t, e.caFile(), filepath.Join(certDir, "ca.crt"), 0o644)
	pushed := e.upstream.Addr + "/" + imageRepo
	bah("push", "--cert-dir", certDir, "--tls-verify=true", "--quiet", "localhost/pullgate:test", "docker://"+pushed)
	t.Logf("buildah bud and push: %v", time.Since(built).Round(100*time.Millisecond))

	img := checkImage(ctx, t, e, pushed, bin)

	// Pull: containerd knows the upstream only through pullgate, its mirror; the upstream's own address is one
	// where nothing listens, so the image comes through pullgate or not at all.
	hostsDir := t.TempDir()
	writeHostsFile(t, hostsDir, e.upHost(), hostsTOML("https://"+refusedHost, "https://"+e.pgHost(), e.caFile()))
	sock := startContainerd(ctx, t, containerd, ctr)
	c := func(timeout time.Duration, args ...string) (string, error) {
		return Run(ctx, timeout, nil, ctr, append([]string{"--address", sock, "--namespace", "e2e"}, args...)...)
	}
	ref := e.upHost() + "/" + imageRepo
	pulled := time.Now()
	if _, err := c(time.Minute, "image", "pull", "--hosts-dir", hostsDir, "--snapshotter", "native", ref); err != nil {
		t.Fatal(err)
	}
	t.Logf("containerd pull through pullgate: %v", time.Since(pulled).Round(100*time.Millisecond))
	checkServedByPullgate(t, e, img)

	// Run: as the image says (its user, entrypoint and command), on the host's network, with a read-only root
	// file system (as the deploy manifests run it) and a data directory the image's user owns mounted at the
	// image's data directory.
	dataDir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dataDir, imageUID, imageUID); err != nil {
		t.Fatal(err)
	}
	addr, err := FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr, err := FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	const id = "pullgate-image-test"
	t.Cleanup(func() {
		// Whatever happened above: no task, container or snapshot stays behind (containerd stops after this).
		_, _ = c(10*time.Second, "task", "kill", "--signal", "SIGKILL", id)
		_, _ = c(10*time.Second, "task", "delete", "--force", id)
		_, _ = c(10*time.Second, "container", "delete", id)
	})
	logDir := t.TempDir()
	run, err := StartProc(ProcSpec{Name: "ctr-run", Path: ctr, LogDir: logDir, Args: []string{
		"--address", sock, "--namespace", "e2e", "run", "--rm", "--net-host", "--read-only", "--snapshotter", "native",
		"--mount", "type=bind,src=" + dataDir + ",dst=/var/lib/pullgate,options=rbind:rw",
		"--env", "PULLGATE_ADDR=" + addr, "--env", "PULLGATE_METRICS_ADDR=" + metricsAddr,
		ref, id}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(run.Kill)
	started := time.Now()
	caFile := filepath.Join(dataDir, "tls", "ca.crt")
	var client *http.Client
	err = Poll(ctx, 30*time.Second, "the pullgate in the container", run.Exited(), func(ctx context.Context) error {
		if client == nil {
			pool, err := PoolFromFile(caFile)
			if err != nil {
				return err
			}
			client = &http.Client{Transport: Transport(pool), Timeout: 2 * time.Second}
		}
		return HTTPStatus(ctx, client, "https://"+addr+"/v2/", http.StatusOK)
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, run.Tail(40))
	}
	client.CloseIdleConnections()
	t.Logf("the container answered /v2/ over TLS %v after ctr run", time.Since(started).Round(100*time.Millisecond))
	if err := HTTPStatus(ctx, &http.Client{Timeout: 2 * time.Second}, "http://"+metricsAddr+"/readyz", http.StatusOK); err != nil {
		t.Error(err)
	}
	checkOwnedBy(t, dataDir, imageUID)

	// Stop: SIGTERM, as a kubelet stops it; pullgate exits 0 and `ctr run --rm` removes the container and its
	// snapshot.
	if _, err := c(10*time.Second, "task", "kill", "--signal", "SIGTERM", id); err != nil {
		t.Fatal(err)
	}
	select {
	case <-run.Exited():
	case <-ctx.Done():
		t.Fatalf("the container did not exit after SIGTERM\n%s", run.Tail(40))
	}
	if err := run.ExitErr(); err != nil {
		t.Errorf("the container exited with %v after SIGTERM\n%s", err, run.Tail(40))
	}
	if _, err := c(30*time.Second, "image", "remove", "--sync", ref); err != nil {
		t.Error(err)
	}
	for what, args := range map[string][]string{
		"containers": {"container", "list", "--quiet"},
		"snapshots":  {"snapshot", "--snapshotter", "native", "list"},
		"images":     {"image", "list", "--quiet"},
	} {
		out, err := c(10*time.Second, args...)
		if err != nil {
			t.Error(err)
			continue
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if what == "snapshots" {
			lines = lines[1:] // the header
		}
		if len(lines) > 0 && lines[0] != "" {
			t.Errorf("containerd still has %s after the cleanup: %q", what, lines)
		}
	}
}

// checkStatic fails t unless bin is a static ELF executable: no interpreter and no shared libraries, so that it
// runs on an empty base image.
func checkStatic(t *testing.T, bin string) {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatalf("%s has an ELF interpreter: it is not static (build with CGO_ENABLED=0)", bin)
		}
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		t.Fatal(err)
	}
	if len(libs) > 0 {
		t.Fatalf("%s needs shared libraries %q: it is not static", bin, libs)
	}
}

// imageEntry is one file of the image's flattened file system.
type imageEntry struct {
	typ      byte
	mode     int64
	uid, gid int
	sha256   string // regular files
}

// checkImage reads the image at ref from the upstream and checks its configuration and its files (the binary
// being bin, byte for byte); it returns the image.
func checkImage(ctx context.Context, t *testing.T, e *env, ref, bin string) v1.Image {
	t.Helper()
	r, err := name.ParseReference(ref, name.StrictValidation)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithTransport(e.transport()))
	if err != nil {
		t.Fatalf("reading the pushed image: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg := cf.Config
	checks := []struct {
		what      string
		got, want any
	}{
		{"user", cfg.User, fmt.Sprintf("%d:%d", imageUID, imageUID)},
		{"entrypoint", cfg.Entrypoint, []string{"/pullgate"}},
		{"command", cfg.Cmd, []string{"serve"}},
		{"working directory", cfg.WorkingDir, "/var/lib/pullgate"},
		{"volumes", slices.Sorted(maps.Keys(cfg.Volumes)), []string{"/var/lib/pullgate"}},
		{"exposed ports", slices.Sorted(maps.Keys(cfg.ExposedPorts)), []string{"5443/tcp", "9090/tcp"}},
		{"os/architecture", cf.OS + "/" + cf.Architecture, "linux/" + goarch(t, bin)},
		{"source label", cfg.Labels["org.opencontainers.image.source"], "https://github.com/pullgate/pullgate"},
		{"title label", cfg.Labels["org.opencontainers.image.title"], "pullgate"},
	}
	for _, c := range checks {
		if fmt.Sprint(c.got) != fmt.Sprint(c.want) {
			t.Errorf("image config: %s is %q, want %q", c.what, c.got, c.want)
		}
	}
	for _, kv := range []string{"PULLGATE_DATA_DIR=/var/lib/pullgate", "PULLGATE_METRICS_ADDR=:9090"} {
		if !slices.Contains(cfg.Env, kv) {
			t.Errorf("image config: environment %q lacks %s", cfg.Env, kv)
		}
	}

	// Every file of the image: the binary, the CA bundle, the user and group files, the data directory.
	// Nothing else: no shell, no package manager.
	wantImageFiles := []string{
		"etc/", "etc/group", "etc/passwd", "etc/ssl/", "etc/ssl/certs/", "etc/ssl/certs/ca-certificates.crt",
		"pullgate", "var/", "var/lib/", "var/lib/pullgate/",
	}
	files := imageFiles(t, img)
	if got := slices.Sorted(maps.Keys(files)); !slices.Equal(got, wantImageFiles) {
		for _, f := range got {
			if base := filepath.Base(f); base == "sh" || base == "bash" || base == "busybox" {
				t.Errorf("the image has a shell: /%s", f)
			}
		}
		t.Errorf("the image's files are %q, want exactly %q", got, wantImageFiles)
	}
	for f, en := range files {
		owner := 0
		if f == "var/lib/pullgate/" {
			owner = imageUID
		}
		if en.uid != owner || en.gid != owner {
			t.Errorf("/%s belongs to %d:%d, want %d:%d", f, en.uid, en.gid, owner, owner)
		}
		if en.mode&0o022 != 0 {
			t.Errorf("/%s has mode %o: writable by group or others", f, en.mode)
		}
	}
	if p := files["pullgate"]; p.typ != tar.TypeReg || p.mode&0o111 != 0o111 {
		t.Errorf("/pullgate is not an executable file: type %c mode %o", p.typ, p.mode)
	} else if want := fileSHA256(t, bin); p.sha256 != want {
		t.Errorf("/pullgate has sha256 %s, the built binary %s", p.sha256, want)
	}
	if d := files["var/lib/pullgate/"]; d.typ != tar.TypeDir || d.mode&0o700 != 0o700 {
		t.Errorf("/var/lib/pullgate is not a directory its owner can write: type %c mode %o", d.typ, d.mode)
	}
	return img
}

// goarch is the GOARCH of an ELF binary, as an image config names it.
func goarch(t *testing.T, bin string) string {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	switch f.Machine {
	case elf.EM_X86_64:
		return "amd64"
	case elf.EM_AARCH64:
		return "arm64"
	}
	return f.Machine.String()
}

// imageFiles reads img's flattened file system and returns its entries by path (directories with a trailing
// slash). It checks the files the image's user and its TLS depend on: /etc/passwd names 65532, the CA bundle
// holds certificates.
func imageFiles(t *testing.T, img v1.Image) map[string]imageEntry {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	files := map[string]imageEntry{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("reading the image's layers: %v", err)
		}
		p := strings.TrimPrefix(filepath.Clean("/"+h.Name), "/")
		if h.Typeflag == tar.TypeDir {
			p += "/"
		}
		en := imageEntry{typ: h.Typeflag, mode: h.Mode, uid: h.Uid, gid: h.Gid}
		if h.Typeflag == tar.TypeReg {
			hash := sha256.New()
			var content strings.Builder
			w := io.Writer(hash)
			if p == "etc/passwd" || p == "etc/ssl/certs/ca-certificates.crt" {
				w = io.MultiWriter(hash, &content)
			}
			if _, err := io.Copy(w, io.LimitReader(tr, 256<<20)); err != nil {
				t.Fatal(err)
			}
			en.sha256 = hex.EncodeToString(hash.Sum(nil))
			switch p {
			case "etc/passwd":
				if !regexp.MustCompile(fmt.Sprintf(`(?m)^[a-z]+:x:%d:%d:`, imageUID, imageUID)).MatchString(content.String()) {
					t.Errorf("/etc/passwd names no user %d:\n%s", imageUID, content.String())
				}
			case "etc/ssl/certs/ca-certificates.crt":
				if !x509.NewCertPool().AppendCertsFromPEM([]byte(content.String())) {
					t.Error("/etc/ssl/certs/ca-certificates.crt holds no certificate")
				}
			}
		}
		files[p] = en
	}
	return files
}

// checkServedByPullgate checks that pullgate's pull log has a 200 answer to containerd for the image's
// manifest, its config and every layer.
func checkServedByPullgate(t *testing.T, e *env, img v1.Image) {
	t.Helper()
	want := map[string]bool{}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	want[d.String()] = false
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	want[m.Config.Digest.String()] = false
	for _, l := range m.Layers {
		want[l.Digest.String()] = false
	}
	for _, line := range e.pg.PullLog() {
		var entry struct {
			Digest    string `json:"digest"`
			Status    int    `json:"status"`
			Method    string `json:"method"`
			UserAgent string `json:"user_agent"`
		}
		if json.Unmarshal([]byte(line), &entry) != nil {
			continue
		}
		if _, ok := want[entry.Digest]; ok && entry.Method == http.MethodGet && entry.Status == http.StatusOK &&
			strings.HasPrefix(entry.UserAgent, "containerd/") {
			want[entry.Digest] = true
		}
	}
	for dg, served := range want {
		if !served {
			t.Errorf("pullgate's log has no 200 answer to containerd's GET of %s", dg)
		}
	}
}

// checkOwnedBy fails t unless every file under dir (which the container wrote) belongs to uid.
func checkOwnedBy(t *testing.T, dir string, uid int) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(p string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("%s: no owner", p)
		}
		if int(st.Uid) != uid {
			t.Errorf("%s belongs to user %d: the container did not run as %d", p, st.Uid, uid)
		}
		n++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 3 {
		t.Errorf("the container wrote %d files into its data directory; want its cache and TLS files", n-1)
	}
}

// copyFile copies src to dst (making dst's directory) with mode.
func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dst, mode); err != nil { // the umask took bits off at the create
		t.Fatal(err)
	}
}

// fileSHA256 is the hex sha256 of file's content.
func fileSHA256(t *testing.T, file string) string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, bufio.NewReader(f)); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// dockerfileStages reads a Dockerfile into its stages, by name (the FROM line's AS, else its index), each a list
// of instructions with continuation lines joined and comments left out; it also returns the names in order.
func dockerfileStages(t *testing.T, file string) (map[string][]string, []string) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	stages := map[string][]string{}
	var order []string
	var cur, pending string
	for _, line := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimSpace(line)
		if pending == "" && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if strings.HasSuffix(trimmed, `\`) {
			pending += strings.TrimSuffix(trimmed, `\`) + " "
			continue
		}
		ins := strings.Join(strings.Fields(pending+trimmed), " ")
		pending = ""
		if f := strings.Fields(ins); strings.EqualFold(f[0], "FROM") {
			cur = fmt.Sprint(len(order))
			if len(f) == 4 && strings.EqualFold(f[2], "AS") {
				cur = f[3]
			}
			order = append(order, cur)
		}
		if cur != "" {
			stages[cur] = append(stages[cur], ins)
		}
	}
	return stages, order
}

// TestDockerfileTargets checks the Dockerfile's promises that TestImage cannot run here (it builds only the
// prebuilt target: the golang image cannot be pulled): the default target is the image built from source,
// statically; and it is the prebuilt target instruction for instruction, but for where /pullgate and the CA
// bundle come from. So what TestImage proves of the one holds for the other.
func TestDockerfileTargets(t *testing.T) {
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	stages, order := dockerfileStages(t, filepath.Join(root, "Dockerfile"))
	if len(order) == 0 || order[len(order)-1] != "image" {
		t.Fatalf("stages %q: the last one (what `docker build .` builds) must be \"image\"", order)
	}
	build := strings.Join(stages["build"], "\n")
	for _, want := range []string{"FROM golang:1.26-bookworm AS build", "RUN go mod download",
		`RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/pullgate ./cmd/pullgate`} {
		if !strings.Contains(build, want) {
			t.Errorf("the build stage lacks %q:\n%s", want, build)
		}
	}
	if i, j := strings.Index(build, "go mod download"), strings.Index(build, "COPY . ."); i < 0 || j < i {
		t.Errorf("the build stage copies the sources before it downloads the modules: the download is not a cached layer")
	}
	pre, img := stages["prebuilt"], stages["image"]
	if len(pre) != len(img) {
		t.Fatalf("the prebuilt target has %d instructions, the image %d:\n%s\n--\n%s", len(pre), len(img),
			strings.Join(pre, "\n"), strings.Join(img, "\n"))
	}
	// A COPY may differ only in its source: --from=build and a path in that stage, or a path under dist/.
	copyLine := regexp.MustCompile(`^COPY ((?:--[a-z]+=\S+ )*)(\S+) (\S+)$`)
	for i := 1; i < len(pre); i++ {
		if pre[i] == img[i] {
			continue
		}
		p, m := copyLine.FindStringSubmatch(pre[i]), copyLine.FindStringSubmatch(img[i])
		if p == nil || m == nil || p[3] != m[3] || !strings.HasPrefix(p[2], "dist/") ||
			!strings.Contains(" "+m[1], " --from=build ") || strings.Replace(" "+m[1], " --from=build ", " ", 1) != " "+p[1] {
			t.Errorf("instruction %d differs between the targets beyond where a file comes from:\n  prebuilt: %s\n  image:    %s", i, pre[i], img[i])
		}
	}
	for _, s := range []string{"prebuilt", "image"} {
		if got := stages[s][0]; got != "FROM scratch AS "+s {
			t.Errorf("target %s starts with %q, want an empty base", s, got)
		}
	}

	// The data directory's archive: /var and /var/lib root's, /var/lib/pullgate the image user's, and nothing else.
	f, err := os.Open(filepath.Join(root, "build", "image", "data-dir.tar"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var got []string
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("build/image/data-dir.tar: %v", err)
		}
		got = append(got, fmt.Sprintf("%s %c %o %d:%d", strings.TrimSuffix(h.Name, "/"), h.Typeflag, h.Mode, h.Uid, h.Gid))
	}
	want := []string{"var 5 755 0:0", "var/lib 5 755 0:0", fmt.Sprintf("var/lib/pullgate 5 700 %d:%d", imageUID, imageUID)}
	if !slices.Equal(got, want) {
		t.Errorf("build/image/data-dir.tar holds %q, want %q", got, want)
	}
}
