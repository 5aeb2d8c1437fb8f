package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// fetched is the outcome of one raw GET.
type fetched struct {
	status int
	header http.Header
	n      int64  // body bytes read
	digest string // sha256 of what was read
	body   []byte // the first 4 KiB of the body
	err    error  // reading the body
}

// rawGet sends GET url (with an Accept for manifests) and reads the whole body, hashing it.
func rawGet(ctx context.Context, client *http.Client, url string) (fetched, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fetched{}, err
	}
	req.Header.Set("Accept", "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "+
		"application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json")
	resp, err := client.Do(req)
	if err != nil {
		return fetched{}, err
	}
	defer resp.Body.Close()
	f := fetched{status: resp.StatusCode, header: resp.Header}
	h := sha256.New()
	head := &limitedBuffer{max: 4096}
	f.n, f.err = io.Copy(io.MultiWriter(h, head), resp.Body)
	f.digest, f.body = "sha256:"+hex.EncodeToString(h.Sum(nil)), head.b
	return f, nil
}

type limitedBuffer struct {
	b   []byte
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - len(l.b); room > 0 {
		l.b = append(l.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// ociError parses an OCI error body and returns its first code, or "" when the body is not one.
func ociError(body []byte) string {
	var e struct {
		Errors []struct{ Code, Message string } `json:"errors"`
	}
	if json.Unmarshal(body, &e) != nil || len(e.Errors) == 0 {
		return ""
	}
	return e.Errors[0].Code
}

func blobURL(base string, im Image, d v1.Hash) string {
	return base + "/v2/" + im.Repo + "/blobs/" + d.String()
}

func manifestURL(base string, im Image, ref string) string {
	return base + "/v2/" + im.Repo + "/manifests/" + ref
}

// wantServed checks that GET url answers 200 with content hashing to want.
func wantServed(ctx context.Context, t *testing.T, client *http.Client, url, want string) {
	t.Helper()
	f, err := rawGet(ctx, client, url)
	if err != nil {
		t.Errorf("GET %s: %v", url, err)
		return
	}
	if f.status != http.StatusOK || f.err != nil || f.digest != want {
		t.Errorf("GET %s: status %d, %d bytes hashing to %s (read error %v), want 200 and %s; body %q", url, f.status, f.n, f.digest, f.err, want, f.body)
	}
}

// wantUnavailable checks that GET url fails with a 5xx and an OCI error body (never a 404, which would say the
// content does not exist, nor a 200).
func wantUnavailable(ctx context.Context, t *testing.T, client *http.Client, url string) {
	t.Helper()
	f, err := rawGet(ctx, client, url)
	if err != nil {
		t.Errorf("GET %s: %v (want a 5xx with an OCI error body)", url, err)
		return
	}
	if f.status < 500 || ociError(f.body) == "" {
		t.Errorf("GET %s: status %d body %q, want a 5xx with an OCI error body", url, f.status, f.body)
	} else {
		t.Logf("GET %s with the upstream down: %d %s", url, f.status, strings.TrimSpace(string(f.body)))
	}
}

// checkBlobFiles hashes every file in pullgate's blob store against its name, without pullgate's help, and
// returns the number checked.
func checkBlobFiles(t *testing.T, dataDir string) int {
	t.Helper()
	root := filepath.Join(dataDir, "blobs")
	n := 0
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p == root {
				return nil
			}
			return err
		}
		if d.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		parts := strings.Split(rel, string(filepath.Separator))
		if len(parts) != 3 || parts[0] != "sha256" {
			t.Errorf("unexpected file in the blob store: %s", rel)
			return nil
		}
		got, err := fileDigest(p)
		if err != nil {
			return err
		}
		if got != "sha256:"+parts[2] {
			t.Errorf("CORRUPT: %s hashes to %s", rel, got)
		}
		n++
		return nil
	})
	if err != nil {
		t.Errorf("walking %s: %v", root, err)
	}
	return n
}

// blobFileExists says whether the blob store holds a file for d.
func blobFileExists(dataDir string, d v1.Hash) bool {
	_, err := os.Stat(filepath.Join(dataDir, "blobs", d.Algorithm, d.Hex[:2], d.Hex))
	return err == nil
}

// verifyClean runs `pullgate verify` on pg's data directory (pg must be stopped) and fails t on any fault.
func verifyClean(ctx context.Context, t *testing.T, pg *Pullgate, when string) {
	t.Helper()
	out, err := pg.Verify(ctx)
	if err != nil {
		t.Errorf("pullgate verify %s: %v", when, err)
		return
	}
	t.Logf("pullgate verify %s: %s", when, strings.TrimSpace(lastLine(out)))
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// stopClean sends SIGTERM and fails t unless pullgate exits by itself with status 0.
func stopClean(t *testing.T, pg *Pullgate) {
	t.Helper()
	if err := pg.Stop(30 * time.Second); err != nil {
		t.Errorf("graceful stop: %v", err)
	} else if err := pg.ExitErr(); err != nil {
		t.Errorf("pullgate exited after SIGTERM with %v", err)
	}
}

// TestUpstreamKilled warms the cache, kills the upstream (docker-registry, kill -9) and checks that cached
// content is still served (also a tag past its TTL: stale rather than fail), that uncached content fails with a
// clear 5xx, that nothing unverified lands on disk, and that all is well once the upstream is back.
func TestUpstreamKilled(t *testing.T) {
	e := testEnv(t, envOptions{bigSize: 8 << 20, pgEnv: []string{"PULLGATE_TAG_TTL=1s"}})
	ctx := ctxFor(t, 2*time.Minute)
	client := &http.Client{Transport: e.transport(), Timeout: time.Minute}
	pg, f := e.pg, e.fix
	cached := []Image{f.Single, f.Big}
	for _, im := range cached {
		if _, err := pullAll(ctx, im.Ref(e.pgHost()), e.transport()); err != nil {
			t.Fatalf("warming %s: %v", im.Repo, err)
		}
	}
	e.upstream.Kill()

	t.Run("cached content by digest", func(t *testing.T) {
		for _, im := range cached {
			wantServed(ctx, t, client, manifestURL(pg.URL, im, im.Digest.String()), im.Digest.String())
			for _, b := range im.Blobs {
				wantServed(ctx, t, client, blobURL(pg.URL, im, b), b.String())
			}
		}
	})
	t.Run("cached tag past its TTL is served stale", func(t *testing.T) {
		im := f.Single
		before := len(pg.PullLog())
		err := Poll(ctx, 15*time.Second, "a stale answer for "+im.Repo+":"+im.Tag, nil, func(ctx context.Context) error {
			wantServed(ctx, t, client, manifestURL(pg.URL, im, im.Tag), im.Digest.String())
			if t.Failed() {
				return nil // reported; stop polling
			}
			for _, l := range pg.PullLog()[before:] {
				if strings.Contains(l, `"cache":"stale"`) && strings.Contains(l, "/manifests/"+im.Tag) {
					return nil
				}
			}
			return errors.New(`no "cache":"stale" line in the pull log yet`)
		})
		if err != nil {
			t.Error(err)
		}
	})
	t.Run("uncached content fails clearly", func(t *testing.T) {
		wantUnavailable(ctx, t, client, manifestURL(pg.URL, f.Multi, f.Multi.Tag))
		wantUnavailable(ctx, t, client, manifestURL(pg.URL, f.Layers10, f.Layers10.Digest.String()))
		wantUnavailable(ctx, t, client, blobURL(pg.URL, f.Layers10, f.Layers10.Blobs[1]))
		if !pg.Running() {
			t.Fatalf("pullgate exited: %v", pg.ExitErr())
		}
	})
	t.Run("upstream back", func(t *testing.T) {
		if err := e.upstream.Restart(ctx, e.ca); err != nil {
			t.Fatal(err)
		}
		// Poll: pullgate may hold a short-lived memory of the failure (negative cache, circuit breaker).
		start := time.Now()
		err := Poll(ctx, 45*time.Second, "a pull of uncached content after the upstream came back", pg.Exited(), func(ctx context.Context) error {
			_, err := pullAll(ctx, f.Multi.Ref(e.pgHost()), e.transport())
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("uncached content pulled %v after the upstream came back", time.Since(start).Round(time.Millisecond))
		for _, im := range []Image{f.Layers10, f.Single} {
			if _, err := pullAll(ctx, im.Ref(e.pgHost()), e.transport()); err != nil {
				t.Error(err)
			}
		}
	})
	stopClean(t, pg)
	checkBlobFiles(t, pg.Opts.DataDir)
	verifyClean(ctx, t, pg, "after the upstream came back")
}

// TestUpstreamKilledMidBlob kills the upstream while pullgate streams a cold 50 MB blob to a client: the client
// must not get a complete-looking wrong body, the blob must not be stored, and once the upstream is back the
// blob pulls whole.
func TestUpstreamKilledMidBlob(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the 50 MB mid-transfer kill")
	}
	e := testEnv(t, envOptions{})
	ctx := ctxFor(t, 2*time.Minute)
	client := &http.Client{Transport: e.transport(), Timeout: time.Minute}
	pg, big := e.pg, e.fix.Big
	layer := big.Blobs[1]
	if _, err := pullAll(ctx, e.fix.Single.Ref(e.pgHost()), e.transport()); err != nil { // something cached
		t.Fatal(err)
	}
	e.proxy.BytesPerSecond.Store(20 << 20) // about 2.5 s for the blob: time to kill the upstream mid-way
	e.proxy.Reset()
	done := make(chan fetched, 1)
	go func() {
		f, err := rawGet(ctx, client, blobURL(pg.URL, big, layer))
		if err != nil {
			f.err = err
		}
		done <- f
	}()
	err := Poll(ctx, 30*time.Second, "10 MB of the blob through the proxy", nil, func(context.Context) error {
		if n := e.proxy.Bytes.Load(); n < 10<<20 {
			return fmt.Errorf("%d bytes so far", n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	e.upstream.Kill()
	var got fetched
	select {
	case got = <-done:
	case <-ctx.Done():
		t.Fatal("the client's GET did not end after the upstream was killed")
	}
	t.Logf("client: status %d, %d bytes of about 50 MB, read error: %v", got.status, got.n, got.err)
	if got.status == http.StatusOK && got.err == nil && got.digest != layer.String() {
		t.Errorf("the client got a complete-looking body (%d bytes, no error) that hashes to %s, not %s", got.n, got.digest, layer)
	}
	if got.status == http.StatusOK && got.err == nil && got.digest == layer.String() {
		t.Logf("the client got the whole blob before the kill took effect (the kernel buffers held the rest)")
	}
	if blobFileExists(pg.Opts.DataDir, layer) && got.digest != layer.String() {
		t.Errorf("the blob %s is in the store although its transfer was cut", layer)
	}
	checkBlobFiles(t, pg.Opts.DataDir)
	wantServed(ctx, t, client, manifestURL(pg.URL, e.fix.Single, e.fix.Single.Digest.String()), e.fix.Single.Digest.String())

	e.proxy.BytesPerSecond.Store(0)
	if err := e.upstream.Restart(ctx, e.ca); err != nil {
		t.Fatal(err)
	}
	err = Poll(ctx, 45*time.Second, "the whole blob after the upstream came back", pg.Exited(), func(ctx context.Context) error {
		f, err := rawGet(ctx, client, blobURL(pg.URL, big, layer))
		if err != nil {
			return err
		}
		if f.status != http.StatusOK || f.err != nil || f.digest != layer.String() {
			return fmt.Errorf("status %d, %d bytes, %s, %v", f.status, f.n, f.digest, f.err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	stopClean(t, pg)
	checkBlobFiles(t, pg.Opts.DataDir)
	verifyClean(ctx, t, pg, "after the cut transfer")
}

// TestUpstreamDownFromStart starts pullgate with its upstream not running: pulls fail with a clear 5xx and
// pullgate stays up and ready; once the upstream starts, pulls work.
func TestUpstreamDownFromStart(t *testing.T) {
	requireTool(t, RegistryBinary)
	bin := pullgateBinary(t)
	ctx := ctxFor(t, 2*time.Minute)
	dir := t.TempDir()
	logDir := filepath.Join(dir, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	ca, err := NewCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := ca.Issue(dir, "loopback", LoopbackHosts()...)
	if err != nil {
		t.Fatal(err)
	}
	upAddr, err := FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	pg, err := StartPullgate(ctx, PullgateOptions{Bin: bin, DataDir: filepath.Join(dir, "data"), LogDir: logDir,
		CertFile: certFile, KeyFile: keyFile, CA: ca, Upstreams: "local=https://" + upAddr, Default: "local", UpstreamCAFile: ca.CertFile})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Kill() })
	(&env{dir: dir}).dumpOnFailure(t)
	client := &http.Client{Transport: Transport(ca.Pool), Timeout: time.Minute}
	probe := Image{Repo: "e2e/single", Tag: "v1"}
	for range 3 {
		wantUnavailable(ctx, t, client, manifestURL(pg.URL, probe, "v1"))
	}
	if err := HTTPStatus(ctx, &http.Client{Timeout: 5 * time.Second}, pg.MetricsURL+"/healthz", http.StatusOK); err != nil {
		t.Errorf("healthz with the upstream down: %v", err)
	}

	up, err := StartRegistry(ctx, RegistryOptions{Name: "upstream", Dir: filepath.Join(dir, "upstream"), LogDir: logDir,
		Addr: upAddr, CertFile: certFile, KeyFile: keyFile, CA: ca})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Kill)
	fix, err := Seed(ctx, up.Addr, SeedOptions{BigSize: 1 << 20, Transport: Transport(ca.Pool)})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = Poll(ctx, 45*time.Second, "a pull once the upstream runs", pg.Exited(), func(ctx context.Context) error {
		_, err := pullAll(ctx, fix.Single.Ref(pg.Addr), Transport(ca.Pool))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("pulled %v after the upstream started", time.Since(start).Round(time.Millisecond))
	for _, im := range fix.All() {
		if p, err := pullAll(ctx, im.DigestRef(pg.Addr), Transport(ca.Pool)); err != nil || p.digest != im.Digest {
			t.Errorf("pull %s: %v %v", im.Repo, p.digest, err)
		}
	}
	stopClean(t, pg)
	verifyClean(ctx, t, pg, "after the upstream started late")
}

// TestKill9DuringColdPulls kills pullgate with SIGKILL while 20 clients pull cold images, checks every stored
// file against its digest before anything touches the data, restarts pullgate, runs `pullgate verify`, and pulls
// every image whole.
func TestKill9DuringColdPulls(t *testing.T) {
	e := testEnv(t, envOptions{bigSize: 16 << 20})
	ctx := ctxFor(t, 3*time.Minute)
	pg := e.pg
	// Ten fresh images of three 256 KiB layers, plus the big one: 20 clients, two per image and two on Big.
	var images []Image
	for i := range 10 {
		img, err := PlatformImage(3, 256<<10, v1.Platform{OS: "linux", Architecture: "amd64"})
		if err != nil {
			t.Fatal(err)
		}
		im, err := PushImage(e.upstream.Addr, fmt.Sprintf("e2e/cold%d", i), "v1", img, remote.WithContext(ctx), remote.WithTransport(e.transport()))
		if err != nil {
			t.Fatal(err)
		}
		images = append(images, im)
	}
	targets := append(append([]Image{}, images...), images[:8]...)
	targets = append(targets, e.fix.Big, e.fix.Big)
	e.proxy.BytesPerSecond.Store(4 << 20) // per response: the pulls are still running when the kill comes
	e.proxy.Reset()

	pullCtx, cancelPulls := context.WithCancel(ctx)
	defer cancelPulls()
	var wg sync.WaitGroup
	errs := make([]error, len(targets))
	for i, im := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = pullAll(pullCtx, im.Ref(e.pgHost()), e.transport())
		}()
	}
	err := Poll(ctx, 60*time.Second, "4 MB pulled from the upstream", nil, func(context.Context) error {
		if n := e.proxy.Bytes.Load(); n < 4<<20 {
			return fmt.Errorf("%d bytes so far", n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	pg.Kill()
	t.Logf("killed pullgate (SIGKILL) after %d upstream bytes, %d blob GETs", e.proxy.Bytes.Load(), e.proxy.Count("GET blobs"))
	cancelPulls()
	wg.Wait()
	failed := 0
	for _, err := range errs {
		if err != nil {
			failed++
		}
	}
	t.Logf("%d of %d pulls were cut by the kill", failed, len(targets))

	n := checkBlobFiles(t, pg.Opts.DataDir)
	t.Logf("%d files in the blob store right after the kill, each matches its digest", n)
	verifyClean(ctx, t, pg, "right after kill -9")

	e.proxy.BytesPerSecond.Store(0)
	if err := pg.Restart(ctx); err != nil {
		t.Fatalf("restart after kill -9: %v", err)
	}
	for _, im := range append(images, e.fix.Big) {
		p, err := pullAll(ctx, im.DigestRef(e.pgHost()), e.transport())
		if err != nil {
			t.Errorf("pull %s after the restart: %v", im.Repo, err)
		} else if p.digest != im.Digest {
			t.Errorf("pull %s after the restart: digest %s, want %s", im.Repo, p.digest, im.Digest)
		}
	}
	stopClean(t, pg)
	checkBlobFiles(t, pg.Opts.DataDir)
	verifyClean(ctx, t, pg, "after the restart and full pulls")
}

// TestDiskFull gives pullgate a data directory on a small tmpfs, fills it with a blob larger than the space
// left, and checks for a clear error, an uncorrupted store and a service that recovers when space returns.
func TestDiskFull(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the disk-full test")
	}
	if os.Geteuid() != 0 {
		skipOrFail(t, "mounting a tmpfs needs root")
	}
	e := testEnv(t, envOptions{noPG: true, bigSize: 40 << 20})
	ctx := ctxFor(t, 2*time.Minute)
	data := filepath.Join(t.TempDir(), "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.CommandContext(ctx, "mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", data).CombinedOutput(); err != nil {
		skipOrFail(t, fmt.Sprintf("mount -t tmpfs: %v: %s", err, out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", data).CombinedOutput(); err != nil {
			t.Logf("umount %s: %v %s", data, err, out)
		}
	})
	pg, err := StartPullgate(ctx, PullgateOptions{Bin: pullgateBinary(t), DataDir: data, LogDir: filepath.Join(e.dir, "logs"),
		CertFile: e.certFile, KeyFile: e.keyFile, CA: e.ca, Upstreams: "local=" + e.proxy.URL, Default: "local", UpstreamCAFile: e.ca.CertFile})
	if err != nil {
		t.Fatalf("pullgate on a 24 MB tmpfs: %v", err)
	}
	t.Cleanup(pg.Kill)
	client := &http.Client{Transport: e.transport(), Timeout: time.Minute}
	f := e.fix
	if _, err := pullAll(ctx, f.Single.Ref(pg.Addr), e.transport()); err != nil {
		t.Fatalf("small pull with space left: %v", err)
	}
	layer := f.Big.Blobs[1]
	got, err := rawGet(ctx, client, blobURL(pg.URL, f.Big, layer))
	if err != nil {
		got.err = err
	}
	if got.status == http.StatusOK {
		t.Logf("40 MB blob onto a 24 MB disk: status 200, cut after %d bytes, read error %v", got.n, got.err)
	} else {
		t.Logf("40 MB blob onto a 24 MB disk: status %d, body %q", got.status, truncate(got.body, 300))
	}
	if got.status == http.StatusOK && got.err == nil {
		t.Errorf("the client got a complete answer (%d bytes, %s) although the blob cannot fit", got.n, got.digest)
	}
	if got.status >= 400 && ociError(got.body) == "" {
		t.Errorf("status %d without an OCI error body: %q", got.status, got.body)
	}
	if got.status == http.StatusNotFound {
		t.Errorf("a full disk answered 404 (a local error reported as a miss)")
	}
	logText := TailFile(pg.LogPath, 200)
	if !strings.Contains(logText, "no space left on device") {
		t.Errorf("pullgate's log does not say %q", "no space left on device")
	}
	if blobFileExists(data, layer) {
		t.Errorf("the blob that did not fit is in the store")
	}
	checkBlobFiles(t, data)
	if err := HTTPStatus(ctx, &http.Client{Timeout: 5 * time.Second}, pg.MetricsURL+"/healthz", http.StatusOK); err != nil {
		t.Errorf("healthz after the disk filled: %v", err)
	}
	wantServed(ctx, t, client, manifestURL(pg.URL, f.Single, f.Single.Tag), f.Single.Digest.String())

	if out, err := exec.CommandContext(ctx, "mount", "-o", "remount,size=256m", data).CombinedOutput(); err != nil {
		t.Fatalf("growing the tmpfs: %v %s", err, out)
	}
	err = Poll(ctx, 30*time.Second, "the big blob once space returned", pg.Exited(), func(ctx context.Context) error {
		f, err := rawGet(ctx, client, blobURL(pg.URL, e.fix.Big, layer))
		if err != nil {
			return err
		}
		if f.status != http.StatusOK || f.err != nil || f.digest != layer.String() {
			return fmt.Errorf("status %d, %d bytes, %s, %v", f.status, f.n, f.digest, f.err)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	if _, err := pullAll(ctx, f.Big.Ref(pg.Addr), e.transport()); err != nil {
		t.Error(err)
	}
	stopClean(t, pg)
	checkBlobFiles(t, data)
	verifyClean(ctx, t, pg, "after the disk filled and grew")
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}

// skipOrFail skips t with reason, except under CI=true, where it fails.
func skipOrFail(t *testing.T, reason string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(reason)
	}
	t.Skip(reason)
}

// TestOwnCA starts pullgate without a certificate: it must make a CA in its data directory, serve with it, and
// reuse it after a restart.
func TestOwnCA(t *testing.T) {
	e := testEnv(t, envOptions{ownPGTLS: true, bigSize: 1 << 20})
	ctx := ctxFor(t, time.Minute)
	pg := e.pg
	caBefore, err := os.ReadFile(pg.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	rt := Transport(pg.Pool)
	rt.TLSClientConfig.RootCAs.AppendCertsFromPEM(mustRead(t, e.ca.CertFile))
	if _, err := pullAll(ctx, e.fix.Single.Ref(pg.Addr), rt); err != nil {
		t.Fatalf("pull trusting pullgate's own CA: %v", err)
	}
	stopClean(t, pg)
	if err := pg.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	caAfter, err := os.ReadFile(pg.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	if string(caBefore) != string(caAfter) {
		t.Errorf("pullgate made a new CA on restart")
	}
	if _, err := pullAll(ctx, e.fix.Single.DigestRef(pg.Addr), Transport(pg.Pool)); err != nil {
		t.Errorf("pull after restart with the first CA: %v", err)
	}
}

func mustRead(t *testing.T, file string) []byte {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
