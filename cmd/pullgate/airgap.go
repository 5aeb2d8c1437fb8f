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
	"net/http"
	"net/url"
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
from a running pullgate's admin API with --server (or PULLGATE_SERVER; an admin robot's PULLGATE_USERNAME and
PULLGATE_PASSWORD), else from the data directory of a stopped pullgate (PULLGATE_DATA_DIR). Nothing is
fetched: an image that is not all cached is an error, and nothing is written. -o - writes to standard output.
`

const importUsage = `usage: pullgate import BUNDLE.tar

Loads an OCI image layout archive (pullgate export, skopeo copy ... oci-archive:, ...) through a running
pullgate's admin API with --server (or PULLGATE_SERVER; an admin robot's credentials), else into the data
directory of a stopped pullgate (PULLGATE_DATA_DIR), verifying every digest, and tags each image named in its
index.json under the upstream and repository pullgate serves that name from. - reads standard input.
`

// maxExportList bounds the file of export -f.
const maxExportList = 1 << 20

// runExport is `pullgate export`.
func runExport(args []string, env map[string]string, stdout, stderr io.Writer) int {
	set := commandFlags("pullgate export", exportUsage, stderr)
	out := set.String("o", "", "the archive to write; - for standard output")
	list := set.String("f", "", "a file of images to export, one per line (# starts a comment)")
	cf := addClientFlags(set)
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
	if t, err := adminTargetOf(cf, env); err != nil {
		fmt.Fprintf(stderr, "pullgate export: %v\n", err)
		return 2
	} else if t.client != nil {
		return remoteExport(t.client, refs, *out, stdout, stderr)
	}
	cfg, specs, err := loadConfig(env)
	if err != nil {
		fmt.Fprintf(stderr, "pullgate export: configuration: %v\n", err)
		return 2
	}
	r := nameResolver{specs, cfg.DefaultUpstream}
	var images []lifecycle.Image
	bad := false
	for _, ref := range refs {
		img, err := r.image(ref)
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
	set := commandFlags("pullgate import", importUsage, stderr)
	cf := addClientFlags(set)
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
	if t, err := adminTargetOf(cf, env); err != nil {
		fmt.Fprintf(stderr, "pullgate import: %v\n", err)
		return 2
	} else if t.client != nil {
		return remoteImport(t.client, files[0], stdin, stdout, stderr)
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
	r := nameResolver{specs, cfg.DefaultUpstream}
	stats, err := lifecycle.Import(ctx, bufio.NewReaderSize(in, 1<<20), c, lifecycle.ImportOptions{
		Resolve:   r.image,
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
	b, err := io.ReadAll(io.LimitReader(f, maxExportList+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxExportList {
		return nil, fmt.Errorf("%s: over %d bytes", name, maxExportList)
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

// remoteExport asks a running pullgate's admin API for the archive of refs and writes it to out (through a
// temp file and a rename, so that a failed export leaves no file).
func remoteExport(c *pullgateClient, refs []string, out string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	resp, err := c.send(ctx, http.MethodGet, "export", url.Values{"image": refs}, nil, "")
	if err == nil && resp.StatusCode != http.StatusOK {
		err = decodeAdmin(resp, nil)
		resp.Body.Close()
	}
	if err != nil {
		fmt.Fprintf(stderr, "pullgate export: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	w, report := io.Writer(stdout), stdout
	var tmp *os.File
	if out == "-" {
		report = stderr
	} else {
		if tmp, err = os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".*"); err != nil {
			fmt.Fprintf(stderr, "pullgate export: %v\n", err)
			return 1
		}
		defer os.Remove(tmp.Name()) // fails harmlessly once renamed
		w = tmp
	}
	n, err := io.Copy(w, resp.Body)
	if err == nil && tmp != nil {
		err = tmp.Sync()
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp.Name(), out)
		}
	}
	if err != nil {
		if tmp != nil {
			_ = tmp.Close()
		}
		fmt.Fprintf(stderr, "pullgate export: the archive was cut after %d bytes: %v\n", n, err)
		return 1
	}
	fmt.Fprintf(report, "pullgate export: %d images, %d bytes written to %s\n", len(refs), n, out)
	return 0
}

// remoteImport sends an archive to a running pullgate's admin API, which verifies and stores it.
func remoteImport(c *pullgateClient, file string, stdin io.Reader, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	in := stdin
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			fmt.Fprintf(stderr, "pullgate import: %v\n", err)
			return 1
		}
		defer f.Close()
		in = f
	}
	resp, err := c.send(ctx, http.MethodPost, "import", nil, in, "application/x-tar")
	var ans struct {
		Images []struct {
			Image, Digest, Error string
			Objects              int
			Bytes                int64
		}
		Objects int
		Bytes   int64
		Refused []string
		Error   string
	}
	if err == nil {
		err = decodeAdmin(resp, &ans)
		resp.Body.Close()
	}
	if err != nil {
		fmt.Fprintf(stderr, "pullgate import: %v\n", err)
		return 1
	}
	imported := 0
	for _, im := range ans.Images {
		if im.Error != "" {
			fmt.Fprintf(stdout, "FAILED %s\n", im.Error)
			continue
		}
		imported++
		fmt.Fprintf(stdout, "imported %s  %s  (%d objects, %d bytes)\n", im.Image, im.Digest, im.Objects, im.Bytes)
	}
	for _, r := range ans.Refused {
		fmt.Fprintf(stdout, "REFUSED %s\n", r)
	}
	fmt.Fprintf(stdout, "pullgate import: %d of %d images imported; %d blobs verified and stored (%d bytes), %d refused\n",
		imported, len(ans.Images), ans.Objects, ans.Bytes, len(ans.Refused))
	if ans.Error != "" {
		fmt.Fprintf(stderr, "pullgate import: %s\n", ans.Error)
		return 1
	}
	return 0
}
