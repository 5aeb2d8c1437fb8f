package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/pullgate/pullgate/cache"
	"github.com/pullgate/pullgate/lifecycle"
	"github.com/pullgate/pullgate/names"
)

const exportUsage = `usage: pullgate export [-f FILE] -o BUNDLE.tar IMAGE...

Writes cached images, every platform, as an OCI image layout archive (skopeo's oci-archive:, crane, oras),
from the data directory of a STOPPED pullgate (PULLGATE_DATA_DIR). Nothing is fetched: an image that is not
all cached is an error, and nothing is written. -o - writes to standard output.
`

const importUsage = `usage: pullgate import BUNDLE.tar

Loads an OCI image layout archive (pullgate export, skopeo copy ... oci-archive:, ...) into the data directory
of a STOPPED pullgate (PULLGATE_DATA_DIR), verifying every digest, and tags each image named in its index.json
under the upstream and repository pullgate serves that name from. - reads standard input.
`

// maxImageList bounds the file of export -f.
const maxImageList = 1 << 20

// runExport is `pullgate export`.
func runExport(args []string, env map[string]string, stdout, stderr io.Writer) int {
	set := flag.NewFlagSet("pullgate export", flag.ContinueOnError)
	set.SetOutput(stderr)
	set.Usage = func() {
		fmt.Fprint(stderr, exportUsage)
		set.PrintDefaults()
	}
	out := set.String("o", "", "the archive to write; - for standard output")
	list := set.String("f", "", "a file of images to export, one per line (# starts a comment)")
	refs, err := parseInterspersed(set, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *list != "" {
		more, err := readImageList(*list)
		if err != nil {
			fmt.Fprintf(stderr, "pullgate export: %v\n", err)
			return 2
		}
		refs = append(refs, more...)
	}
	if *out == "" || len(refs) == 0 {
		set.Usage()
		return 2
	}
	cfg, specs, err := loadConfig(env)
	if err != nil {
		fmt.Fprintf(stderr, "pullgate export: configuration: %v\n", err)
		return 2
	}
	r := newNameResolver(cfg, specs)
	var images []lifecycle.Image
	bad := false
	for _, ref := range refs {
		img, err := r.resolve(ref)
		if err != nil {
			fmt.Fprintf(stderr, "pullgate export: %s: %v\n", ref, err)
			bad = true
			continue
		}
		images = append(images, img)
	}
	if bad {
		return 2
	}
	if _, err := os.Stat(cfg.DataDir); err != nil {
		fmt.Fprintf(stderr, "pullgate export: no data directory: %v\n", err)
		return 1
	}
	c, err := openStopped(cfg, "export", stderr)
	if err != nil {
		fmt.Fprintf(stderr, "pullgate export: %v\n", err)
		return 1
	}
	defer c.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	report, w := stdout, io.Writer(stdout)
	var tmp *os.File
	if *out == "-" {
		report = stderr // standard output is the archive
	} else {
		if tmp, err = os.CreateTemp(filepath.Dir(*out), "."+filepath.Base(*out)+".*"); err != nil {
			fmt.Fprintf(stderr, "pullgate export: %v\n", err)
			return 1
		}
		defer os.Remove(tmp.Name()) // fails harmlessly once renamed
		w = tmp
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	stats, err := lifecycle.Export(ctx, bw, c, images)
	if err == nil {
		err = bw.Flush()
	}
	if err == nil && tmp != nil {
		err = tmp.Sync()
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp.Name(), *out)
		}
	}
	if err != nil {
		if tmp != nil {
			_ = tmp.Close()
		}
		fmt.Fprintf(stderr, "pullgate export: %v\n", err)
		return 1
	}
	for _, im := range stats.Images {
		fmt.Fprintf(report, "exported %s  %s  %s  (%d objects, %d bytes)\n", im.Name, im.Digest, im.MediaType, im.Objects, im.Bytes)
	}
	fmt.Fprintf(report, "pullgate export: %d images, %d objects, %d bytes written to %s\n", len(stats.Images), stats.Objects, stats.Bytes, *out)
	return 0
}

// runImport is `pullgate import`.
func runImport(args []string, env map[string]string, stdin io.Reader, stdout, stderr io.Writer) int {
	set := flag.NewFlagSet("pullgate import", flag.ContinueOnError)
	set.SetOutput(stderr)
	set.Usage = func() {
		fmt.Fprint(stderr, importUsage)
		set.PrintDefaults()
	}
	files, err := parseInterspersed(set, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if len(files) != 1 {
		set.Usage()
		return 2
	}
	cfg, specs, err := loadConfig(env)
	if err != nil {
		fmt.Fprintf(stderr, "pullgate import: configuration: %v\n", err)
		return 2
	}
	immutable, err := names.CompilePatterns(cfg.ImmutableTags)
	if err != nil {
		fmt.Fprintf(stderr, "pullgate import: configuration: PULLGATE_IMMUTABLE_TAGS: %v\n", err)
		return 2
	}
	in := stdin
	if files[0] != "-" {
		f, err := os.Open(files[0])
		if err != nil {
			fmt.Fprintf(stderr, "pullgate import: %v\n", err)
			return 1
		}
		defer f.Close()
		in = f
	}
	c, err := openStopped(cfg, "import", stderr)
	if err != nil {
		fmt.Fprintf(stderr, "pullgate import: %v\n", err)
		return 1
	}
	defer c.Close()
	// Bind the upstreams as serve will: were one re-pointed at another registry, serve would drop its tags,
	// these included. Dropping them now leaves the import's in place.
	for _, s := range specs {
		if changed, previous, err := c.BindUpstream(s.name, s.url.String()); err != nil {
			fmt.Fprintf(stderr, "pullgate import: %v\n", err)
			return 1
		} else if changed {
			fmt.Fprintf(stderr, "pullgate import: upstream %s names %s, not %s as before: its cached tags and links were dropped\n", s.name, s.url, previous)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r := newNameResolver(cfg, specs)
	stats, err := lifecycle.Import(ctx, bufio.NewReaderSize(in, 1<<20), c, lifecycle.ImportOptions{
		Resolve:   r.resolve,
		Immutable: func(_, _, tag string) bool { return names.MatchAny(immutable, tag) },
		Logger:    quietLogger(cfg, stderr),
	})
	var imported int
	for _, im := range stats.Images {
		if im.Err != nil {
			fmt.Fprintf(stdout, "FAILED %v\n", im.Err)
			continue
		}
		imported++
		ref := im.Repository + "@" + im.Digest.String()
		if im.Tag != "" {
			ref = im.Repository + ":" + im.Tag + "  " + im.Digest.String()
		}
		fmt.Fprintf(stdout, "imported %s  as %s %s  (%d objects, %d bytes)\n", im.Name, im.Upstream, ref, im.Objects, im.Bytes)
	}
	for _, o := range stats.Refused {
		fmt.Fprintf(stdout, "REFUSED %s: %v\n", o.Digest, o.Err)
	}
	fmt.Fprintf(stdout, "pullgate import: %d of %d images imported; %d blobs verified and stored (%d bytes), %d refused, %d unnamed manifests\n",
		imported, len(stats.Images), stats.Objects, stats.Bytes, len(stats.Refused), stats.Unnamed)
	if err != nil {
		if len(stats.Images) == 0 || errors.Is(err, lifecycle.ErrBadBundle) {
			fmt.Fprintf(stderr, "pullgate import: %v\n", err)
		}
		return 1
	}
	return 0
}

// parseInterspersed parses flags that may come after positional arguments ("export IMAGE -o x.tar").
func parseInterspersed(set *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := set.Parse(args); err != nil {
			return nil, err
		}
		args = set.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// readImageList reads export -f's file: one image per line, blank lines and # comments skipped.
func readImageList(name string) ([]string, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxImageList+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxImageList {
		return nil, fmt.Errorf("%s: over %d bytes", name, maxImageList)
	}
	var refs []string
	for _, line := range strings.Split(string(b), "\n") {
		line, _, _ = strings.Cut(line, "#")
		if line = strings.TrimSpace(line); line != "" {
			refs = append(refs, line)
		}
	}
	return refs, nil
}

// errInUse says that a running pullgate holds the data directory.
var errInUse = errors.New("is in use by a running pullgate")

// openStopped opens the cache of a stopped pullgate. The index's lock is tried first, because opening the cache
// clears its temp directory, which a running pullgate's fills are writing to.
func openStopped(cfg config, verb string, stderr io.Writer) (*cache.Cache, error) {
	inUse := func() error {
		return fmt.Errorf("the data directory %s %w: stop it first, or %s through the running server's admin API", cfg.DataDir, errInUse, verb)
	}
	if err := checkNotRunning(filepath.Join(cfg.DataDir, "index")); err != nil {
		if errors.Is(err, errInUse) {
			return nil, inUse()
		}
		return nil, err
	}
	c, err := cache.Open(cache.Options{Dir: cfg.DataDir, Reserve: cfg.CacheReserve, Logger: quietLogger(cfg, stderr)})
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return nil, inUse() // started in between
	}
	if err != nil {
		return nil, fmt.Errorf("opening the cache in %s: %w", cfg.DataDir, err)
	}
	return c, nil
}

// checkNotRunning returns errInUse when another process holds the lock of the index directory (badger's flock).
func checkNotRunning(index string) error {
	d, err := os.Open(index)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer d.Close()
	if err := syscall.Flock(int(d.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return errInUse
		}
		return fmt.Errorf("locking %s: %w", index, err)
	}
	return syscall.Flock(int(d.Fd()), syscall.LOCK_UN)
}

// quietLogger logs to stderr at PULLGATE_LOG_LEVEL, warnings at least: the commands report on their own.
func quietLogger(cfg config, stderr io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: max(cfg.LogLevel, slog.LevelWarn)}))
}

// nameResolver maps an image name to an upstream and repository with the proxy's rules (proxy.resolve) over the
// upstreams serve builds (buildUpstreams): a first path element naming an upstream or one of its host names
// selects it, else the default upstream; Docker Hub's one-component names get "library/".
type nameResolver struct {
	upstreams map[string]*resolvedUpstream
	def       string
}

type resolvedUpstream struct {
	name, host string // host is the first element of exported names: the name, docker.io for Docker Hub
	dockerHub  bool
}

func newNameResolver(cfg config, specs []upstreamSpec) nameResolver {
	r := nameResolver{upstreams: map[string]*resolvedUpstream{}, def: cfg.DefaultUpstream}
	for _, s := range specs {
		r.upstreams[s.name] = nil
	}
	for _, s := range specs {
		u := &resolvedUpstream{name: s.name, host: s.name, dockerHub: names.IsDockerHub(s.url.Hostname())}
		if u.dockerHub {
			u.host = names.DefaultRegistry
		}
		r.upstreams[s.name] = u
		aliases := []string{s.url.Host}
		if u.dockerHub {
			aliases = append(aliases, names.DockerHubHosts()...)
		}
		for _, a := range aliases {
			if _, taken := r.upstreams[a]; !taken {
				r.upstreams[a] = u
			}
		}
	}
	return r
}

// resolve maps a reference ("docker.io/library/nginx:1.25", "nginx", "ghcr.io/o/r@sha256:...") to an image.
// A reference with neither tag nor digest means the tag latest. The Name of the result is canonical: the
// upstream's name (docker.io for Docker Hub, whatever its name), the repository, the tag and digest, so that a
// pullgate configured with the same upstream names files it in the same place.
//
// It differs from proxy.resolve in one case, on purpose: a first element that reads as a registry (with a '.'
// or ':', or "localhost") but names no configured upstream is an error here, where the proxy would take the
// whole name as a repository of the default upstream; an image of quay.io must not be filed under docker.io.
func (r nameResolver) resolve(ref string) (lifecycle.Image, error) {
	var img lifecycle.Image
	name, digest, hasDigest := strings.Cut(ref, "@")
	if hasDigest {
		d, err := names.ParseDigest(digest)
		if err != nil {
			return img, err
		}
		img.Digest = d
	}
	if i := strings.LastIndexByte(name, ':'); i >= 0 && !strings.Contains(name[i+1:], "/") {
		name, img.Tag = name[:i], name[i+1:]
		if err := names.ValidateTag(img.Tag); err != nil {
			return img, err
		}
	} else if !hasDigest {
		img.Tag = names.DefaultTag
	}
	var up *resolvedUpstream
	repo := name
	first, rest, ok := strings.Cut(name, "/")
	switch {
	case ok && r.upstreams[first] != nil:
		up, repo = r.upstreams[first], rest
	case ok && (strings.ContainsAny(first, ".:") || first == "localhost"):
		return img, fmt.Errorf("%q names no upstream configured in PULLGATE_UPSTREAMS", first)
	case r.def != "":
		up = r.upstreams[r.def]
	default:
		return img, fmt.Errorf("%q names no configured upstream and PULLGATE_DEFAULT_UPSTREAM is empty", name)
	}
	if up.dockerHub {
		repo = names.DockerHubRepository(repo)
	}
	if err := names.ValidateRepository(repo); err != nil {
		return img, err
	}
	if len(repo) > names.MaxRepositoryLength {
		return img, fmt.Errorf("repository %q at upstream %s is %d characters, the limit is %d", repo, up.name, len(repo), names.MaxRepositoryLength)
	}
	img.Upstream, img.Repository = up.name, repo
	img.Name = up.host + "/" + repo
	if img.Tag != "" {
		img.Name += ":" + img.Tag
	}
	if hasDigest {
		img.Name += "@" + img.Digest.String()
	}
	return img, nil
}
