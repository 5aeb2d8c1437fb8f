package e2e

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// airgapUpstream is the upstream name both pullgates of TestAirgap give the upstream registry: images are
// named docker.io/..., and containerd asks a docker.io mirror with ?ns=docker.io.
const airgapUpstream = "docker.io"

// createAdminRobot runs `pullgate robot create NAME --admin --allow PATTERN --json` on robotsFile and returns
// what it printed: a robot that may pull every repository of the upstream and use the admin API.
func createAdminRobot(ctx context.Context, t *testing.T, bin, robotsFile, name, allow string) Robot {
	t.Helper()
	out, err := Run(ctx, time.Minute, []string{"PULLGATE_ROBOTS_FILE=" + robotsFile}, bin, "robot", "create", name,
		"--admin", "--allow", allow, "--expires", "1d", "--json")
	if err != nil {
		t.Fatalf("pullgate robot create --admin: %v", err) // printed only on failure, which prints no secret
	}
	var r Robot
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.Secret == "" {
		t.Fatalf("pullgate robot create --admin --json printed no robot with a secret: %s", jsonErrorPlace(err))
	}
	return r
}

// clientEnv is the environment of a pullgate client command (seed, export, import with --server) logged in as r
// and trusting caFile.
func clientEnv(caFile string, r Robot) []string {
	return []string{"PULLGATE_CA_FILE=" + caFile, "PULLGATE_USERNAME=" + r.Username, "PULLGATE_PASSWORD=" + r.Secret}
}

// runPullgate runs the pullgate binary with env and args and fails t unless it exits 0. The output is redacted
// of secrets.
func runPullgate(ctx context.Context, t *testing.T, bin string, env []string, secrets []string, args ...string) string {
	t.Helper()
	out, err := Run(ctx, 2*time.Minute, env, bin, args...)
	if err != nil {
		t.Fatalf("pullgate %s: %v", args[0], redactErr(err, secrets...))
	}
	return redact(out, secrets...)
}

// bundleEntries lists the regular files of a tar archive with their sizes.
func bundleEntries(t *testing.T, file string) map[string]int64 {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	entries := map[string]int64{}
	tr := tar.NewReader(f)
	for range 100_000 { // bounded: the bundles here hold a few dozen entries
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return entries
		}
		if err != nil {
			t.Fatalf("reading %s: %v", file, err)
		}
		if hdr.Typeflag == tar.TypeReg {
			entries[strings.TrimPrefix(hdr.Name, "./")] = hdr.Size
		}
	}
	t.Fatalf("%s has more than 100000 entries", file)
	return nil
}

// bundleNames returns the org.opencontainers.image.ref.name of each descriptor of a bundle's index.json.
func bundleNames(t *testing.T, file string) []string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for range 100_000 {
		hdr, err := tr.Next()
		if err != nil {
			t.Fatalf("%s has no index.json: %v", file, err)
		}
		if strings.TrimPrefix(hdr.Name, "./") != "index.json" {
			continue
		}
		var idx struct {
			Manifests []struct {
				Annotations map[string]string `json:"annotations"`
			} `json:"manifests"`
		}
		if err := json.NewDecoder(io.LimitReader(tr, 4<<20)).Decode(&idx); err != nil {
			t.Fatalf("%s: index.json: %v", file, err)
		}
		var names []string
		for _, m := range idx.Manifests {
			names = append(names, m.Annotations["org.opencontainers.image.ref.name"])
		}
		return names
	}
	t.Fatalf("%s has more than 100000 entries", file)
	return nil
}

// tamperBundle copies the tar archive src to dst with one byte of the entry named entry flipped, and fails t
// when src has no such entry.
func tamperBundle(t *testing.T, src, dst, entry string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	tr, tw := tar.NewReader(in), tar.NewWriter(out)
	flipped := false
	for range 100_000 {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if strings.TrimPrefix(hdr.Name, "./") != entry || hdr.Size == 0 {
			if _, err := io.Copy(tw, tr); err != nil {
				t.Fatal(err)
			}
			continue
		}
		b, err := io.ReadAll(io.LimitReader(tr, 64<<20))
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 0x01
		flipped = true
		if _, err := tw.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if !flipped {
		t.Fatalf("%s has no entry %s to tamper with", src, entry)
	}
}

// blobEntry is where an OCI image layout keeps d.
func blobEntry(d v1.Hash) string { return "blobs/" + d.Algorithm + "/" + d.Hex }

// statusOf GETs path (with ?ns=docker.io) from pg anonymously and returns the status.
func statusOf(ctx context.Context, t *testing.T, pg *Pullgate, path string) int {
	t.Helper()
	client := &http.Client{Transport: Transport(pg.Pool), Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()
	resp, _, err := get(ctx, client, pg.URL+path+"?ns="+airgapUpstream, func(r *http.Request) {
		r.Header.Set("Accept", "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "+
			"application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json")
	})
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode
}

// notServed fails t when pg serves any part of im: its tag, its manifests by digest, its config and layers.
func notServed(ctx context.Context, t *testing.T, pg *Pullgate, im Image) {
	t.Helper()
	paths := []string{"/v2/" + im.Repo + "/manifests/" + im.Tag}
	for _, d := range im.Manifests {
		paths = append(paths, "/v2/"+im.Repo+"/manifests/"+d.String())
	}
	for _, d := range im.Blobs {
		paths = append(paths, "/v2/"+im.Repo+"/blobs/"+d.String())
	}
	for _, p := range paths {
		if st := statusOf(ctx, t, pg, p); st == http.StatusOK {
			t.Errorf("GET %s: 200, but the image was not imported", p)
		}
	}
}

// blobGETs counts the successful blob GETs of repo in pg's pull log.
func blobGETs(pg *Pullgate, repo string) int {
	return countLines(pg, func(l PullLine) bool {
		return l.Method == http.MethodGet && l.Repository == repo && l.Status == http.StatusOK && strings.Contains(l.Path, "/blobs/")
	})
}

// TestAirgap carries images from a connected pullgate to an offline one in a bundle: pullgate A seeds them from
// the upstream (every platform of the index) and exports them; skopeo reads the bundle; pullgate B, offline,
// imports one image into its stopped data directory and another through its admin API; then, with the upstream
// registry stopped, containerd pulls each of them from B by tag and by digest, and nothing reaches the
// upstream. A bundle with one flipped byte in a layer is refused by both kinds of import, and nothing of that
// image is served.
func TestAirgap(t *testing.T) {
	skopeo := requireTool(t, "skopeo")
	ctr := requireTool(t, "ctr")
	containerd := requireTool(t, "containerd")
	requireRoot(t)
	bin := pullgateBinary(t)
	e := testEnv(t, envOptions{noPG: true, bigSize: 1 << 20})
	ctx := ctxFor(t, 5*time.Minute)
	dir := t.TempDir()
	logDir := filepath.Join(e.dir, "logs")
	upstreams := airgapUpstream + "=" + e.proxy.URL
	offlineIm, onlineIm, tamperedIm := e.fix.Layers10, e.fix.Multi, e.fix.Single
	imageName := func(im Image) string { return airgapUpstream + "/" + im.Repo + ":" + im.Tag }

	// Pullgate A: connected, client identities on, one robot that may pull everything and use the admin API.
	robotsA := filepath.Join(dir, "robots-a.yaml")
	adminA := createAdminRobot(ctx, t, bin, robotsA, "airgap", airgapUpstream+"/**")
	secrets := []string{adminA.Secret}
	pgA, err := StartPullgate(ctx, PullgateOptions{Bin: bin, Name: "pullgate-a", DataDir: filepath.Join(dir, "data-a"), LogDir: logDir,
		CertFile: e.certFile, KeyFile: e.keyFile, CA: e.ca, Upstreams: upstreams, UpstreamCAFile: e.ca.CertFile,
		Env: []string{"PULLGATE_ROBOTS_FILE=" + robotsA}, V2Status: http.StatusUnauthorized})
	if err != nil {
		t.Fatalf("pullgate A: %v", err)
	}
	t.Cleanup(func() { pgA.Kill() })
	envA := clientEnv(e.caFile(), adminA)

	images := []Image{offlineIm, onlineIm, tamperedIm}
	seedArgs := []string{"seed", "--server", pgA.URL}
	for _, im := range images {
		seedArgs = append(seedArgs, imageName(im))
	}
	out := runPullgate(ctx, t, bin, envA, secrets, seedArgs...)
	t.Logf("pullgate seed:\n%s", out)
	for _, im := range images {
		if n := e.proxy.Count("GET /v2/" + im.Repo + "/manifests/" + im.Tag); n == 0 && e.proxy.Count("HEAD /v2/"+im.Repo+"/manifests/"+im.Tag) == 0 {
			t.Errorf("seeding %s asked the upstream nothing about its tag", imageName(im))
		}
	}

	// One bundle per import, and a third to tamper with. Export refuses an image whose closure is not whole
	// in A, so a bundle of the index proves that the seed fetched every platform; the entries are checked too.
	bundles := map[string]string{}
	for _, im := range images {
		bundle := filepath.Join(dir, strings.ReplaceAll(im.Repo, "/", "-")+".tar")
		runPullgate(ctx, t, bin, envA, secrets, "export", "--server", pgA.URL, "-o", bundle, imageName(im))
		bundles[im.Repo] = bundle
		entries := bundleEntries(t, bundle)
		for _, d := range append(append([]v1.Hash{}, im.Manifests...), im.Blobs...) {
			if _, ok := entries[blobEntry(d)]; !ok {
				t.Errorf("the bundle of %s lacks %s", imageName(im), d)
			}
		}
		for _, f := range []string{"oci-layout", "index.json"} {
			if _, ok := entries[f]; !ok {
				t.Errorf("the bundle of %s has no %s", imageName(im), f)
			}
		}
		if names := bundleNames(t, bundle); len(names) != 1 || names[0] != imageName(im) {
			t.Errorf("the bundle of %s names %q", imageName(im), names)
		}
		// skopeo reads the bundle as an OCI archive by the name it carries: the top manifest's bytes are the
		// image's, and for an image skopeo finds its config. skopeo (containers/image) looks names up only among
		// descriptors of OCI media types: a Docker schema 2 image, exported as it is, is found by ctr import
		// and pullgate import, not by skopeo.
		if im.MediaType == types.DockerManifestSchema2 {
			continue
		}
		raw := filepath.Join(dir, "raw")
		src := "oci-archive:" + bundle + ":" + imageName(im)
		if err := RunToFile(ctx, time.Minute, raw, skopeo, "inspect", "--raw", src); err != nil {
			t.Fatalf("skopeo inspect --raw %s: %v", src, err)
		}
		if got, _ := fileDigest(raw); got != im.Digest.String() {
			t.Errorf("skopeo inspect --raw %s: %s, want %s", src, got, im.Digest)
		}
		if !im.MediaType.IsIndex() {
			if err := RunToFile(ctx, time.Minute, raw, skopeo, "inspect", "--config", "--raw", src); err != nil {
				t.Fatalf("skopeo inspect --config --raw %s: %v", src, err)
			}
			if got, _ := fileDigest(raw); got != im.Blobs[0].String() {
				t.Errorf("skopeo inspect --config --raw %s: %s, want the config %s", src, got, im.Blobs[0])
			}
		}
	}
	if err := pgA.Stop(10 * time.Second); err != nil {
		t.Error(err)
	}
	tampered := filepath.Join(dir, "tampered.tar")
	tamperBundle(t, bundles[tamperedIm.Repo], tampered, blobEntry(tamperedIm.Blobs[len(tamperedIm.Blobs)-1]))

	// Pullgate B: offline, the same upstream name, anonymous pulls of it, an admin robot of its own.
	e.proxy.Reset()
	robotsB := filepath.Join(dir, "robots-b.yaml")
	adminB := createAdminRobot(ctx, t, bin, robotsB, "importer", airgapUpstream+"/**")
	secrets = append(secrets, adminB.Secret)
	dataB := filepath.Join(dir, "data-b")
	serveEnvB := []string{"PULLGATE_OFFLINE=true", "PULLGATE_ROBOTS_FILE=" + robotsB, "PULLGATE_ANONYMOUS=" + airgapUpstream + "/**"}
	// A decoy default upstream where nothing listens: B serves docker.io only to requests that name it, as
	// containerd's ?ns=docker.io does.
	upstreamsB, defaultB := upstreams+",decoy=https://"+refusedHost, "decoy"
	optsB := PullgateOptions{Bin: bin, Name: "pullgate-b", DataDir: dataB, LogDir: logDir, CertFile: e.certFile, KeyFile: e.keyFile, CA: e.ca,
		Upstreams: upstreamsB, Default: defaultB, UpstreamCAFile: e.ca.CertFile, Env: serveEnvB}
	pgB, err := StartPullgate(ctx, optsB)
	if err != nil {
		t.Fatalf("pullgate B: %v", err)
	}
	t.Cleanup(func() { pgB.Kill() })
	if st := statusOf(ctx, t, pgB, "/v2/"+offlineIm.Repo+"/manifests/"+offlineIm.Tag); st == http.StatusOK {
		t.Fatalf("offline pullgate B serves %s before any import", imageName(offlineIm))
	}
	if err := pgB.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}

	// Into the stopped data directory, with serve's configuration: the tampered bundle first, then the good one.
	stoppedEnv := append([]string{"PULLGATE_DATA_DIR=" + dataB, "PULLGATE_UPSTREAMS=" + upstreamsB, "PULLGATE_DEFAULT_UPSTREAM=" + defaultB,
		"PULLGATE_UPSTREAM_CA_FILE=" + e.ca.CertFile, "PULLGATE_SERVER="}, serveEnvB...)
	tamperedImport := func(env []string, args ...string) {
		t.Helper()
		out, err := Run(ctx, 2*time.Minute, env, bin, args...)
		out = redact(out, secrets...)
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 {
			t.Errorf("pullgate %s of a bundle with a flipped layer byte: %v, want exit status 1\n%s", strings.Join(args, " "), redactErr(err, secrets...), out)
			return
		}
		if d := tamperedIm.Blobs[len(tamperedIm.Blobs)-1]; !strings.Contains(out, d.Hex) {
			t.Errorf("pullgate %s of a bundle with a flipped byte in %s does not name it:\n%s", strings.Join(args, " "), d, out)
		}
	}
	tamperedImport(stoppedEnv, "import", tampered)
	out = runPullgate(ctx, t, bin, stoppedEnv, secrets, "import", bundles[offlineIm.Repo])
	t.Logf("pullgate import (stopped data directory):\n%s", out)

	if err := pgB.Restart(ctx); err != nil {
		t.Fatalf("pullgate B after the import: %v", err)
	}
	notServed(ctx, t, pgB, tamperedIm)
	// Through the running B's admin API: again the tampered bundle first.
	envB := clientEnv(e.caFile(), adminB)
	tamperedImport(envB, "import", "--server", pgB.URL, tampered)
	out = runPullgate(ctx, t, bin, envB, secrets, "import", "--server", pgB.URL, bundles[onlineIm.Repo])
	t.Logf("pullgate import --server:\n%s", out)
	notServed(ctx, t, pgB, tamperedIm)

	// No upstream from here on: containerd pulls from B alone, through a docker.io hosts.toml whose server is a
	// port where nothing listens.
	if err := e.upstream.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	sock := startContainerd(ctx, t, containerd, ctr)
	hostsDir := t.TempDir()
	writeHostsFile(t, hostsDir, airgapUpstream, hostsTOML("https://"+refusedHost, pgB.URL, e.caFile()))
	for _, im := range []Image{offlineIm, onlineIm} {
		for _, by := range []string{"tag", "digest"} {
			ref := imageName(im)
			if by == "digest" {
				ref = airgapUpstream + "/" + im.Repo + "@" + im.Digest.String()
			}
			t.Run(im.Repo+"/by "+by, func(t *testing.T) {
				before := blobGETs(pgB, im.Repo)
				_, err := Run(ctx, time.Minute, nil, ctr, "--address", sock, "--namespace", "airgap", "image", "pull",
					"--hosts-dir", hostsDir, "--snapshotter", "native", ref)
				if err != nil {
					t.Fatal(err)
				}
				ls, err := Run(ctx, 30*time.Second, nil, ctr, "--address", sock, "--namespace", "airgap", "image", "ls")
				if err != nil {
					t.Fatal(err)
				}
				if got := imageDigest(ls, ref); got != im.Digest.String() {
					t.Errorf("containerd has %s as %q, want %s\n%s", ref, got, im.Digest, ls)
				}
				if blobGETs(pgB, im.Repo) == before {
					t.Errorf("pullgate B served no blob of %s for the pull of %s", im.Repo, ref)
				}
				// Remove the image and its content, so that the next pull of the same image fetches it again.
				if _, err := Run(ctx, 30*time.Second, nil, ctr, "--address", sock, "--namespace", "airgap", "image", "rm", "--sync", ref); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
	for _, l := range pgB.PullLines() {
		if l.Upstream != "" && l.Upstream != airgapUpstream {
			t.Errorf("pullgate B served %s %s from upstream %q, want %s (?ns=%s)", l.Method, l.Path, l.Upstream, airgapUpstream, airgapUpstream)
		}
	}
	if counts := e.proxy.Counts(); len(counts) > 0 {
		t.Errorf("requests reached the upstream after pullgate B started: %v", counts)
	}
	if err := pgB.Stop(10 * time.Second); err != nil {
		t.Error(err)
	}
	if out, err := pgB.Verify(ctx); err != nil {
		t.Errorf("pullgate verify of B's data directory: %v\n%s", err, out)
	}
}
