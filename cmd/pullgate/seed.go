package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/term"

	"github.com/pullgate/pullgate/names"
	"github.com/pullgate/pullgate/rewrite"
)

const seedUsage = `usage: pullgate seed [flags] [IMAGE...]

Fills a running pullgate with images before they are needed (before a rollout, or before a network goes
away): pulls each image through pullgate, its manifests and every byte of its config and layers, so that
pullgate fetches, verifies and keeps them as it does for any client, the gate included. Nothing is written
here but the state file.

The images are the IMAGE arguments, the lines of the files given with -f (one reference per line; blank lines
and lines starting with '#' are skipped; "-f -" is standard input), or, when there are neither, every image in
the Kubernetes YAML or JSON on standard input:

  helm template ... | pullgate seed
  pullgate seed -f images.txt --platform linux/amd64,linux/arm64

An index is seeded platform by platform: all of them, or those --platform names (attestation manifests are
left out); an image of one manifest is seeded whatever its platform. A 503 or 429 from pullgate (a scan still
running, its fill slots busy) is asked again when its Retry-After says (waiting at most 30s at a time), until
--timeout has passed since the image's first request. A refusal (blocked by the gate: 412; no access: 401,
403; not found: 404) fails that image, with pullgate's message.

Progress goes to standard error: bars when it is a terminal, else one line when an image starts and one when
it ends:

  seeding IMAGE: N blobs, B bytes[; S blobs already seeded]
  seeded IMAGE: B bytes in DURATION
  failed IMAGE: REASON

Then a summary on standard output, and, when an image failed, "failed:" and one line per failed image with
the reason. --quiet leaves out the progress and the summary.

Resuming: the digest of each blob read in full (and checked against its digest) is recorded in a state file,
by default in the user's cache directory, one per pullgate server; after a run that was interrupted or in
which an image failed, the next run skips those blobs and says how many it skipped. A run that seeded every
image removes the file: the next reads every blob again, from pullgate's cache, which also marks them as
recently used (a blob pullgate has evicted since is fetched again). --state "" uses no file (every blob is
read).

Exit status: 0 when every image was seeded; 1 when any failed; 2 for a usage mistake, an IMAGE that is not a
reference included (nothing is asked then).

` + clientHelp

const (
	// defaultSeedJobs is how many images are seeded at once without --jobs.
	defaultSeedJobs = 4
	// maxSeedJobs bounds --jobs.
	maxSeedJobs = 64
	// maxImageList bounds a file of image references given with -f.
	maxImageList = 16 << 20
	// maxSeedBlobs bounds the blobs of one image (all its platforms).
	maxSeedBlobs = 10000
	// seedStall is how long a blob may go without a byte arriving before its read is given up.
	seedStall = 5 * time.Minute
)

// seedDisplay chooses how `pullgate seed` shows its progress.
type seedDisplay int

const (
	// displayAuto is bars when standard error is a terminal, plain lines otherwise.
	displayAuto seedDisplay = iota
	// displayPlain is one line per image start and end.
	displayPlain
	// displayBars is progress bars.
	displayBars
)

// seedOptions are what `pullgate seed` takes from its caller besides the command line. The zero value is what
// the command uses.
type seedOptions struct {
	// scanOptions bound one wait (here: after a 503 or 429, whatever Retry-After says) and give the clock.
	scanOptions
	// Display chooses the progress display; zero (displayAuto) means bars on a terminal, else plain lines.
	Display seedDisplay
}

func (o seedOptions) withDefaults() seedOptions {
	o.scanOptions = o.scanOptions.withDefaults()
	return o
}

// runSeed is `pullgate seed [flags] [IMAGE...]`: it reads images through a running pullgate so that pullgate
// caches them. It returns the exit status.
func runSeed(args []string, env map[string]string, stdin io.Reader, stdout, stderr io.Writer, opts seedOptions) int {
	opts = opts.withDefaults()
	set := commandFlags("pullgate seed", seedUsage, stderr)
	cf := addClientFlags(set)
	var files []string
	set.Func("f", `a file of image references, one per line ("-": standard input); may be repeated`, func(s string) error {
		files = append(files, s)
		return nil
	})
	platform := set.String("platform", "", "seed only these platforms of an index: os/arch[/variant], comma-separated (linux/amd64,linux/arm64); default: all")
	jobs := set.Int("jobs", defaultSeedJobs, fmt.Sprintf("how many images are seeded at once (1 to %d)", maxSeedJobs))
	timeout := set.Duration("timeout", 10*time.Minute, "how long to keep asking again for an image pullgate answers 503 or 429 for")
	statePath := set.String("state", "", `the state file (default: <user cache dir>/pullgate/seed-<hash of the server>.state; "" for none)`)
	quiet := set.Bool("quiet", false, "print no progress and no summary: only what failed")
	if err := set.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	usageErr := func(format string, args ...any) int {
		fmt.Fprintf(stderr, "pullgate seed: "+format+"\n", args...)
		return 2
	}
	if *jobs < 1 || *jobs > maxSeedJobs {
		return usageErr("--jobs must be from 1 to %d, got %d", maxSeedJobs, *jobs)
	}
	client, images, platforms, ok := clientImages("pullgate seed", cf, env, *timeout, *platform,
		func() ([]string, error) { return seedInput(set.Args(), files, stdin) }, "no image to seed", stderr)
	if !ok {
		return 2
	}

	server := client.base.String()
	explicitState := false
	set.Visit(func(f *flag.Flag) { explicitState = explicitState || f.Name == "state" })
	path := *statePath
	if !explicitState {
		var err error
		if path, err = defaultStatePath(server); err != nil {
			fmt.Fprintf(stderr, "pullgate seed: no state file, every blob is read: %v\n", err)
		}
	}
	state, note, err := openSeedState(path, server)
	if err != nil {
		return usageErr("%v", err)
	}
	if note != "" && !*quiet {
		fmt.Fprintf(stderr, "pullgate seed: %s\n", note)
	}

	var progress seedProgress
	switch {
	case *quiet:
		progress = quietProgress{}
	case opts.Display == displayBars || (opts.Display == displayAuto && isTerminal(stderr)):
		progress = newBarProgress(stderr, 0)
	default:
		progress = &plainProgress{w: &lockedWriter{w: stderr}, now: opts.Now}
	}
	s := &seeder{
		client:   client,
		opts:     opts,
		timeout:  *timeout,
		filter:   &scanner{platforms: platforms},
		state:    state,
		progress: progress,
	}
	began := opts.Now()
	results := make([]seedResult, len(images))
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(*jobs, len(images)) {
		wg.Go(func() {
			for i := range next {
				results[i] = s.seed(context.Background(), images[i])
			}
		})
	}
	for i := range images {
		next <- i
	}
	close(next)
	wg.Wait()
	progress.close()
	stateNote, stateErr := state.close()

	var failed []seedResult
	var read int64
	skipped, seeded := 0, 0
	for _, r := range results {
		read += r.read
		skipped += r.skipped
		if r.err != nil {
			failed = append(failed, r)
		} else {
			seeded++
		}
	}
	w := bufio.NewWriter(stdout)
	if !*quiet {
		fmt.Fprintf(w, "seeded %d of %d images: %d bytes read in %s", seeded, len(images), read, roundDuration(opts.Now().Sub(began)))
		if skipped > 0 {
			fmt.Fprintf(w, "; skipped %s already seeded (state file %s)", plural(skipped, "blob"), path)
		}
		fmt.Fprintln(w)
		if stateNote != "" {
			fmt.Fprintf(stderr, "pullgate seed: %s\n", stateNote)
		}
	}
	if stateErr != nil {
		fmt.Fprintf(stderr, "pullgate seed: %v (the next run may read again what this one read)\n", stateErr)
	}
	if len(failed) == 0 && stateErr == nil {
		if err := state.remove(); err != nil {
			fmt.Fprintf(stderr, "pullgate seed: %v\n", err)
		}
	}
	if len(failed) > 0 {
		fmt.Fprintln(w, "failed:")
		for _, r := range failed {
			fmt.Fprintf(w, "  %s: %s\n", r.image, oneLine(r.err.Error()))
		}
	}
	if err := w.Flush(); err != nil {
		fmt.Fprintf(stderr, "pullgate seed: writing: %v\n", err)
		return 1
	}
	if len(failed) > 0 {
		return 1
	}
	return 0
}

// seedInput returns the image references to seed: args, then the lines of files ("-" is stdin, read once),
// or, when there are neither, the images of the Kubernetes YAML on stdin.
func seedInput(args, files []string, stdin io.Reader) ([]string, error) {
	refs := append([]string(nil), args...)
	readStdin := false
	for _, name := range files {
		var r io.Reader
		switch {
		case name == "-" && readStdin:
			continue
		case name == "-":
			readStdin = true
			r, name = stdin, "standard input"
		default:
			f, err := os.Open(name)
			if err != nil {
				return nil, err
			}
			defer f.Close()
			r = f
		}
		lines, err := referenceLines(r)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		refs = append(refs, lines...)
	}
	if len(args) == 0 && len(files) == 0 {
		images, err := rewrite.Images(stdin)
		if err != nil {
			return nil, fmt.Errorf("standard input: %w", err)
		}
		refs = images
	}
	return refs, nil
}

// referenceLines reads one reference per line, up to maxImageList bytes; blank lines and lines starting with
// '#' are skipped.
func referenceLines(r io.Reader) ([]string, error) {
	lr := &io.LimitedReader{R: r, N: maxImageList + 1}
	sc := bufio.NewScanner(lr)
	var refs []string
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line != "" && !strings.HasPrefix(line, "#") {
			refs = append(refs, line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if lr.N <= 0 {
		return nil, fmt.Errorf("larger than %d bytes", maxImageList)
	}
	return refs, nil
}

// defaultStatePath is the state file of a server: <user cache dir>/pullgate/seed-<hash of its URL>.state.
func defaultStatePath(server string) (string, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(server))
	return filepath.Join(dir, "pullgate", "seed-"+hex.EncodeToString(sum[:6])+".state"), nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// seedResult is how the seeding of one image went.
type seedResult struct {
	image   string
	read    int64 // bytes of blobs read
	skipped int   // blobs not read because they were read before
	err     error
}

// seeder seeds images through one pullgate.
type seeder struct {
	client   *pullgateClient
	opts     seedOptions
	timeout  time.Duration
	filter   *scanner // only its platforms: wanted says which manifests of an index are seeded
	state    *seedState
	progress seedProgress
}

// blob is one blob to read.
type blob struct {
	digest v1.Hash
	size   int64
}

// seed reads img through pullgate: its manifest, each wanted platform's manifest when that is an index, and
// every blob those name that the state does not have. A platform that fails does not stop the others.
func (s *seeder) seed(ctx context.Context, img scanImage) (res seedResult) {
	res.image = img.name
	deadline := s.opts.Now().Add(s.timeout)
	blobs, errs := s.plan(ctx, img, deadline)
	if len(blobs) == 0 && len(errs) > 0 {
		res.err = errors.Join(errs...)
		s.progress.failed(img.name, res.err)
		return res
	}
	var todo []blob
	var bytes int64
	for _, b := range blobs {
		if s.state.has(b.digest.String()) {
			res.skipped++
			continue
		}
		todo = append(todo, b)
		bytes += b.size
	}
	prog := s.progress.start(img.name, len(todo), bytes, res.skipped)
	for _, b := range todo {
		if s.state.has(b.digest.String()) { // another image read it meanwhile
			res.skipped++
			prog.skip(b.size)
			continue
		}
		n, err := s.readBlob(ctx, img, b, deadline, prog)
		res.read += n
		if err != nil {
			errs = append(errs, err)
			break // the next run resumes here
		}
		s.state.record(b.digest.String())
	}
	res.err = errors.Join(errs...)
	prog.end(res.err)
	return res
}

// plan reads img's manifests and returns the blobs they name, each once, and an error per manifest that
// failed.
func (s *seeder) plan(ctx context.Context, img scanImage, deadline time.Time) ([]blob, []error) {
	a, err := s.manifest(ctx, img, img.ref, deadline)
	if err != nil {
		return nil, []error{err}
	}
	var blobs []blob
	seen := map[v1.Hash]bool{}
	add := func(a *answer, digest string) error {
		m, err := v1.ParseManifest(bytes.NewReader(a.body))
		if err != nil {
			return fmt.Errorf("the manifest %s does not parse: %w", digest, err)
		}
		for _, d := range append([]v1.Descriptor{m.Config}, m.Layers...) {
			if !d.MediaType.IsDistributable() {
				continue // a foreign layer, which registries do not serve
			}
			if _, err := names.ParseDigest(d.Digest.String()); err != nil || d.Size < 0 {
				return fmt.Errorf("the manifest %s names a blob %q of %d bytes: %v", digest, d.Digest, d.Size, cmp.Or(err, errors.New("a negative size")))
			}
			if seen[d.Digest] {
				continue
			}
			if len(blobs) >= maxSeedBlobs {
				return fmt.Errorf("the image names more than %d blobs", maxSeedBlobs)
			}
			seen[d.Digest] = true
			blobs = append(blobs, blob{digest: d.Digest, size: d.Size})
		}
		return nil
	}
	digest, err := answerDigest(img.ref, a)
	if err != nil {
		return nil, []error{err}
	}
	if !isIndex(a) {
		if err := add(a, digest); err != nil {
			return nil, []error{err}
		}
		return blobs, nil
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(a.body))
	if err != nil {
		return nil, []error{fmt.Errorf("the index %s does not parse: %w", digest, err)}
	}
	var children []v1.Descriptor
	var all []string
	for _, m := range idx.Manifests {
		if p := platformString(m.Platform); p != "" {
			all = append(all, p)
		}
		if s.filter.wanted(m.Platform) {
			children = append(children, m)
		}
	}
	switch {
	case len(children) > maxPlatforms:
		return nil, []error{fmt.Errorf("the index %s lists %d manifests to seed; pullgate seed seeds at most %d (choose with --platform)", digest, len(children), maxPlatforms)}
	case len(children) == 0:
		return nil, []error{fmt.Errorf("the index %s has no manifest for the platforms asked for (it has: %s)", digest, cmp.Or(strings.Join(all, ", "), "none"))}
	}
	var errs []error
	for _, c := range children {
		ref := c.Digest.String()
		platformErr := func(err error) error {
			return fmt.Errorf("%s: %w", cmp.Or(platformString(c.Platform), ref), err)
		}
		ca, err := s.manifest(ctx, img, ref, deadline)
		if err == nil {
			_, err = answerDigest(ref, ca)
		}
		if err == nil && isIndex(ca) {
			err = errors.New("an index within an index: its manifests were not seeded")
		}
		if err == nil {
			err = add(ca, ref)
		}
		if err != nil {
			errs = append(errs, platformErr(err))
		}
	}
	return blobs, errs
}

// manifest GETs the manifest ref of img, asking again after a 503 or 429 until the deadline.
func (s *seeder) manifest(ctx context.Context, img scanImage, ref string, deadline time.Time) (*answer, error) {
	for {
		a, err := s.client.get(ctx, "/v2/"+img.repo+"/manifests/"+ref, "", manifestAccept, maxManifestAnswer)
		if err != nil {
			return nil, err
		}
		if a.status == http.StatusOK {
			return a, nil
		}
		if err := s.again(ctx, a, deadline); err != nil {
			return nil, err
		}
	}
}

// again waits before a request is sent again: after a 503 or 429, for pullgate's Retry-After (within
// [min(1s, MaxWait), MaxWait]) when the deadline allows. It returns the answer's error otherwise.
func (s *seeder) again(ctx context.Context, a *answer, deadline time.Time) error {
	msg := a.message()
	switch a.status {
	case http.StatusServiceUnavailable, http.StatusTooManyRequests:
	case http.StatusUnauthorized, http.StatusForbidden:
		if s.client.username == "" {
			msg += " (set PULLGATE_USERNAME and PULLGATE_PASSWORD to a robot's credentials)"
		}
		return errors.New(msg)
	default:
		return errors.New(msg)
	}
	wait, ok := retryAfter(a.header.Get("Retry-After"), s.opts.Now())
	if !ok {
		wait = noRetryAfter
	}
	wait = min(max(wait, min(time.Second, s.opts.MaxWait)), s.opts.MaxWait)
	left := deadline.Sub(s.opts.Now())
	if left <= 0 {
		return fmt.Errorf("%s (still so after --timeout)", msg)
	}
	timer := time.NewTimer(min(wait, left))
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// readBlob GETs blob b of img and reads it to the end, counting bytes as they arrive, checking its size and
// digest, asking again after a 503 or 429 until the deadline. It returns the bytes read.
func (s *seeder) readBlob(ctx context.Context, img scanImage, b blob, deadline time.Time, prog imageProgress) (int64, error) {
	for {
		n, a, err := s.readBlobOnce(ctx, img, b, prog)
		if a == nil {
			if err != nil {
				err = fmt.Errorf("blob %s: %w", b.digest, err)
			}
			return n, err
		}
		if err := s.again(ctx, a, deadline); err != nil {
			return n, fmt.Errorf("blob %s: %w", b.digest, err)
		}
	}
}

// readBlobOnce sends one GET for a blob. An answer other than 200 is returned, its body read up to
// maxErrorAnswer; a 200's body is read, counted and checked.
func (s *seeder) readBlobOnce(ctx context.Context, img scanImage, b blob, prog imageProgress) (int64, *answer, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stall := time.AfterFunc(seedStall, cancel) // reset by every read that brings bytes
	defer stall.Stop()
	u := *s.client.base
	u.Path = "/v2/" + img.repo + "/blobs/" + b.digest.String()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return 0, nil, err
	}
	if s.client.username != "" {
		req.SetBasicAuth(s.client.username, s.client.password)
	}
	resp, err := s.client.http.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("asking pullgate: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorAnswer))
		return 0, &answer{status: resp.StatusCode, header: resp.Header, body: body}, nil
	}
	var h hash.Hash
	switch b.digest.Algorithm {
	case "sha256":
		h = sha256.New()
	case "sha512":
		h = sha512.New()
	default:
		return 0, nil, fmt.Errorf("a digest algorithm pullgate seed cannot check: %s", b.digest.Algorithm)
	}
	buf := make([]byte, 64<<10)
	body := io.LimitReader(resp.Body, b.size+1) // one byte more than declared is enough to know it is too long
	var n int64
	for {
		k, err := body.Read(buf)
		if k > 0 {
			stall.Reset(seedStall)
			h.Write(buf[:k])
			n += int64(k)
			prog.read(int64(k))
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			if ctx.Err() != nil && errors.Is(err, context.Canceled) {
				err = fmt.Errorf("no byte for %s", seedStall)
			}
			return n, nil, fmt.Errorf("reading: %w", err)
		}
	}
	if n > b.size {
		return n, nil, fmt.Errorf("pullgate served more than the %d bytes the manifest says", b.size)
	}
	if n < b.size {
		return n, nil, fmt.Errorf("pullgate served %d of the %d bytes the manifest says", n, b.size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != b.digest.Hex {
		return n, nil, fmt.Errorf("pullgate served %s:%s, which does not match its digest", b.digest.Algorithm, got)
	}
	return n, nil, nil
}
