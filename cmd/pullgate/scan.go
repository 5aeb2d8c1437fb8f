package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/pullgate/pullgate/names"
)

const scanUsage = `usage: pullgate scan [flags] [IMAGE...]

Pre-scans images before a rollout: pulls the manifests of each image through a running pullgate, which starts
their vulnerability scans, and reports pullgate's verdict on every manifest. IMAGE is a reference as written in
Kubernetes manifests ("nginx:1.25", "ghcr.io/o/app@sha256:..."); with no IMAGE, or for an IMAGE of "-", the
references are read from standard input, one per line (blank lines and lines starting with '#' are skipped),
as 'pullgate images' prints them:

  helm template ... | pullgate images | pullgate scan

An image that is an index is reported platform by platform (attestation manifests left out). A manifest whose
scan is still running is asked for again when pullgate's Retry-After says (waiting at most 30s at a time),
until --timeout has passed since the image's first request. Four images are asked for at once; the output is
in the order of the input, each image once.

Output: one line per manifest, fields separated by one space:

  IMAGE PLATFORM DIGEST VERDICT[: MESSAGE]

  IMAGE     the reference in full: docker.io/library/nginx:1.25
  PLATFORM  os/arch[/variant] of a manifest of an index; "-" for an image of one manifest
  DIGEST    the manifest's digest; "-" when pullgate did not say it (its refusal of a tag names the digest
            in the message)
  VERDICT   pass     pullgate serves it (it passed the gate, or the policy lets it through)
            blocked  pullgate refuses it: vulnerabilities over the policy's threshold, a failed scan or a
                     missing signature; the message says which
            pending  its scan was still running at --timeout
            error    pullgate could not be asked, or answered otherwise (not found, no access); the message
                     says what happened
  MESSAGE   pullgate's own words, on one line

With --json, one JSON object per manifest instead, with the keys image, platform, digest, verdict and
message (empty ones left out).

Exit status: 0 when every manifest passed; 1 when any was blocked, pending or in error; 2 for a usage mistake,
an IMAGE that is not a reference included (nothing is asked then).

` + clientHelp

// clientHelp ends the usage of the commands that ask a running pullgate (addClientFlags).
const clientHelp = `Where pullgate is, and who asks (flags win over the environment):
  --server, PULLGATE_SERVER     pullgate's URL, https://host[:port]; default https://localhost:5443
  --ca-file, PULLGATE_CA_FILE   the CA of pullgate's certificate (PEM); default: the CA pullgate makes in its
                                data directory, $PULLGATE_DATA_DIR/tls/ca.crt (./pullgate-data/tls/ca.crt), when
                                that file exists, else the system's roots
  PULLGATE_USERNAME, PULLGATE_PASSWORD
                                a robot's login ("robot$ci") and secret, sent as Basic credentials over TLS;
                                set both or neither. The password is never printed.

flags:
`

const (
	// defaultPullgateURL is where a pullgate on this machine listens.
	defaultPullgateURL = "https://localhost:5443"
	// scanConcurrency is how many images are asked for at once.
	scanConcurrency = 4
	// maxManifestAnswer bounds a manifest or index read from pullgate, as pullgate bounds them.
	maxManifestAnswer = 4 << 20
	// maxErrorAnswer bounds the body of an answer that is not a success.
	maxErrorAnswer = 64 << 10
	// maxPlatforms bounds the manifests of one index that are asked for.
	maxPlatforms = 128
	// requestTimeout bounds one request to pullgate: a manifest pull waits for a verdict for as long as the
	// policy's wait, and pullgate may fetch the manifest from its upstream first.
	requestTimeout = 5 * time.Minute
	// noRetryAfter is the wait after a 503 or 429 without a usable Retry-After.
	noRetryAfter = 5 * time.Second
)

// manifestAccept is the Accept header of a manifest pull: every manifest and index media type pullgate serves.
var manifestAccept = strings.Join([]string{
	string(types.OCIManifestSchema1), string(types.DockerManifestSchema2),
	string(types.OCIImageIndex), string(types.DockerManifestList),
}, ", ")

// scanOptions are what `pullgate scan` takes from its caller besides the command line. The zero value is what
// the command uses.
type scanOptions struct {
	// MaxWait bounds one wait for a pending verdict, whatever Retry-After says; zero means 30s.
	MaxWait time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (o scanOptions) withDefaults() scanOptions {
	if o.MaxWait <= 0 {
		o.MaxWait = 30 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// scanResult is the verdict on one manifest, as printed.
type scanResult struct {
	Image    string `json:"image"`
	Platform string `json:"platform,omitempty"`
	Digest   string `json:"digest,omitempty"`
	Verdict  string `json:"verdict"`
	Message  string `json:"message,omitempty"`
}

// The verdicts scan prints.
const (
	scanPass    = "pass"
	scanBlocked = "blocked"
	scanPending = "pending"
	scanError   = "error"
)

// images reads refs as the images to ask pullgate for, each once, in order; bad lists, one line each, why
// those that are not image references are not.
func (c *pullgateClient) images(refs []string) (images []scanImage, bad []string) {
	seen := map[string]bool{}
	for _, r := range refs {
		img, err := c.image(r)
		if err != nil {
			bad = append(bad, oneLine(err.Error()))
			continue
		}
		if !seen[img.name] {
			seen[img.name] = true
			images = append(images, img)
		}
	}
	return images, bad
}

// clientImages is what scan and seed do once their flags are parsed: check --timeout and --platform, make the
// client, read the references (input) and resolve them to images (none is the message for no image at all). A
// usage mistake is written to stderr after name, and ok is false: exit status 2.
func clientImages(name string, cf *clientFlags, env map[string]string, timeout time.Duration, platformFlag string,
	input func() ([]string, error), none string, stderr io.Writer) (client *pullgateClient, images []scanImage, platforms []platform, ok bool) {
	usageErr := func(format string, args ...any) (*pullgateClient, []scanImage, []platform, bool) {
		fmt.Fprintf(stderr, name+": "+format+"\n", args...)
		return nil, nil, nil, false
	}
	if timeout <= 0 {
		return usageErr("--timeout must be positive, got %s", timeout)
	}
	platforms, err := parsePlatforms(platformFlag)
	if err != nil {
		return usageErr("--platform: %v", err)
	}
	if client, err = cf.client(env); err != nil {
		return usageErr("%v", err)
	}
	refs, err := input()
	if err != nil {
		return usageErr("%v", err)
	}
	images, bad := client.images(refs)
	if len(bad) > 0 {
		return usageErr("nothing was asked, as these are not image references:\n  %s", strings.Join(bad, "\n  "))
	}
	if len(images) == 0 {
		return usageErr("%s", none)
	}
	return client, images, platforms, true
}

// runScan is `pullgate scan [flags] [IMAGE...]`.
func runScan(args []string, env map[string]string, stdin io.Reader, stdout, stderr io.Writer, opts scanOptions) int {
	opts = opts.withDefaults()
	set := commandFlags("pullgate scan", scanUsage, stderr)
	cf := addClientFlags(set)
	asJSON := set.Bool("json", false, "print one JSON object per manifest")
	timeout := set.Duration("timeout", 10*time.Minute, "how long to keep asking for an image whose verdicts are pending")
	platform := set.String("platform", "", "check only these platforms of an index: os/arch[/variant], comma-separated (linux/amd64,linux/arm64); an image of one manifest is checked whatever it is")
	if err := set.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	client, images, platforms, ok := clientImages("pullgate scan", cf, env, *timeout, *platform,
		func() ([]string, error) { return scanInput(set.Args(), stdin) }, "no image to scan (standard input was empty)", stderr)
	if !ok {
		return 2
	}

	s := &scanner{client: client, opts: opts, timeout: *timeout, platforms: platforms, stderr: &lockedWriter{w: stderr}}
	ctx := context.Background()
	results := make([]chan []scanResult, len(images))
	sem := make(chan struct{}, scanConcurrency)
	for i, img := range images {
		results[i] = make(chan []scanResult, 1)
		go func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			results[i] <- s.check(ctx, img)
		}()
	}
	w := bufio.NewWriter(stdout)
	failed := false
	for _, ch := range results {
		for _, r := range <-ch {
			failed = failed || r.Verdict != scanPass
			if *asJSON {
				b, _ := json.Marshal(r)
				w.Write(append(b, '\n'))
			} else {
				fmt.Fprintln(w, r.line())
			}
		}
		if err := w.Flush(); err != nil {
			fmt.Fprintf(stderr, "pullgate scan: writing: %v\n", err)
			return 1
		}
	}
	if failed {
		return 1
	}
	return 0
}

// line is r as one line of the text output.
func (r scanResult) line() string {
	s := r.Image + " " + cmp.Or(r.Platform, "-") + " " + cmp.Or(r.Digest, "-") + " " + r.Verdict
	if r.Message != "" {
		s += ": " + r.Message
	}
	return s
}

// scanInput returns the references named by args, reading standard input for "-" (its first time) and when
// there is no argument.
func scanInput(args []string, stdin io.Reader) ([]string, error) {
	if len(args) == 0 {
		args = []string{"-"}
	}
	var refs []string
	readStdin := false
	for _, a := range args {
		if a != "-" {
			refs = append(refs, a)
			continue
		}
		if readStdin {
			continue
		}
		readStdin = true
		sc := bufio.NewScanner(stdin)
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if line != "" && !strings.HasPrefix(line, "#") {
				refs = append(refs, line)
			}
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("reading standard input: %w", err)
		}
	}
	return refs, nil
}

// platform is one --platform entry; an empty variant matches any.
type platform struct{ os, arch, variant string }

func parsePlatforms(s string) ([]platform, error) {
	if s == "" {
		return nil, nil
	}
	var ps []platform
	for _, p := range strings.Split(s, ",") {
		parts := strings.Split(strings.TrimSpace(p), "/")
		if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" || (len(parts) == 3 && parts[2] == "") {
			return nil, fmt.Errorf("%q is not os/arch[/variant], such as linux/amd64 or linux/arm/v7", p)
		}
		pl := platform{os: parts[0], arch: parts[1]}
		if len(parts) == 3 {
			pl.variant = parts[2]
		}
		ps = append(ps, pl)
	}
	return ps, nil
}

// wanted reports whether a manifest of an index for p is to be checked.
func (s *scanner) wanted(p *v1.Platform) bool {
	if p != nil && p.OS == "unknown" && p.Architecture == "unknown" {
		return false // an attestation manifest (buildkit's provenance and SBOM), which nothing runs
	}
	if len(s.platforms) == 0 {
		return true
	}
	if p == nil {
		return false
	}
	for _, w := range s.platforms {
		if w.os == p.OS && w.arch == p.Architecture && (w.variant == "" || w.variant == p.Variant) {
			return true
		}
	}
	return false
}

func platformString(p *v1.Platform) string {
	if p == nil || p.OS == "" {
		return ""
	}
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// scanImage is one image to check.
type scanImage struct {
	// name is the reference in full, as printed.
	name string
	// repo is the repository as pullgate is asked for it: "<upstream>/<repository>".
	repo string
	// ref is the tag or digest asked for (the digest when the reference has both).
	ref string
}

// scanner checks images through one pullgate.
type scanner struct {
	client    *pullgateClient
	opts      scanOptions
	timeout   time.Duration
	platforms []platform
	stderr    *lockedWriter
}

// target is one manifest asked for, and what pullgate answered last.
type target struct {
	ref      string // tag or digest
	res      scanResult
	done     bool      // res is final
	told     bool      // a pending note was printed
	children []*target // the manifests of an index, when the answer was one
}

// check asks for the manifests of img until each has a final answer or the timeout has passed: first its
// reference, then, when that is an index, each wanted platform manifest by digest.
func (s *scanner) check(ctx context.Context, img scanImage) []scanResult {
	deadline := s.opts.Now().Add(s.timeout)
	top := &target{ref: img.ref}
	s.settle(ctx, img, []*target{top}, deadline, true)
	if top.children == nil {
		return []scanResult{top.res}
	}
	s.settle(ctx, img, top.children, deadline, false)
	out := make([]scanResult, len(top.children))
	for i, c := range top.children {
		out[i] = c.res
	}
	return out
}

// settle runs rounds: each asks once for every target without a final answer, then waits for the shortest
// Retry-After among those still pending, until none is or the deadline has passed.
func (s *scanner) settle(ctx context.Context, img scanImage, targets []*target, deadline time.Time, top bool) {
	for {
		wait := time.Duration(-1)
		for _, t := range targets {
			if t.done {
				continue
			}
			retry, final := s.ask(ctx, img, t, top)
			if final {
				t.done = true
				continue
			}
			if wait < 0 || retry < wait {
				wait = retry
			}
		}
		if wait < 0 {
			return
		}
		wait = min(max(wait, min(time.Second, s.opts.MaxWait)), s.opts.MaxWait)
		left := deadline.Sub(s.opts.Now())
		if left <= 0 {
			return // the targets not done keep their last answer: pending, or the error that was retried
		}
		wait = min(wait, left)
		for _, t := range targets {
			if !t.done && !t.told {
				t.told = true
				s.stderr.printf("pullgate scan: %s %s: %s: %s; asking again for up to %s\n",
					img.name, cmp.Or(t.res.Platform, "-"), t.res.Verdict, t.res.Message, roundDuration(left))
			}
		}
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return
		}
	}
}

// ask sends one manifest GET for t and records the answer in t.res. final is false for an answer worth asking
// again (503, 429), with the wait pullgate asked for.
func (s *scanner) ask(ctx context.Context, img scanImage, t *target, top bool) (retry time.Duration, final bool) {
	t.res.Image = img.name
	if names.IsDigest(t.ref) {
		t.res.Digest = t.ref
	}
	set := func(verdict, msg string) { t.res.Verdict, t.res.Message = verdict, oneLine(msg) }
	a, err := s.client.get(ctx, "/v2/"+img.repo+"/manifests/"+t.ref, "", manifestAccept, maxManifestAnswer)
	if err != nil {
		set(scanError, err.Error())
		return 0, true
	}
	switch a.status {
	case http.StatusOK:
		s.served(img, t, a, top)
		return 0, true
	case http.StatusPreconditionFailed:
		set(scanBlocked, a.message())
		return 0, true
	case http.StatusServiceUnavailable, http.StatusTooManyRequests:
		ra, ok := retryAfter(a.header.Get("Retry-After"), s.opts.Now())
		verdict := scanError
		if a.status == http.StatusServiceUnavailable && ok {
			verdict = scanPending // the gate's answer while the scan runs; other 503s say no Retry-After
		}
		if !ok {
			ra = noRetryAfter
		}
		set(verdict, a.message())
		return ra, false
	case http.StatusUnauthorized, http.StatusForbidden:
		msg := a.message()
		if s.client.username == "" {
			msg += " (set PULLGATE_USERNAME and PULLGATE_PASSWORD to a robot's credentials)"
		}
		set(scanError, msg)
		return 0, true
	default:
		set(scanError, a.message())
		return 0, true
	}
}

// served records a manifest pullgate served: a pass, or, for an index at the top, the platform manifests to
// ask for next.
func (s *scanner) served(img scanImage, t *target, a *answer, top bool) {
	set := func(verdict, msg string) { t.res.Verdict, t.res.Message = verdict, oneLine(msg) }
	digest, err := answerDigest(t.ref, a)
	if err != nil {
		set(scanError, err.Error())
		return
	}
	t.res.Digest = digest
	if !isIndex(a) {
		set(scanPass, "")
		return
	}
	if !top {
		set(scanError, "an index within an index: its manifests were not checked")
		return
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(a.body))
	if err != nil {
		set(scanError, fmt.Sprintf("the index %s does not parse: %v", digest, err))
		return
	}
	var children []*target
	var all []string
	for _, m := range idx.Manifests {
		if p := platformString(m.Platform); p != "" {
			all = append(all, p)
		}
		if !s.wanted(m.Platform) {
			continue
		}
		c := &target{ref: m.Digest.String()}
		c.res.Platform = platformString(m.Platform)
		children = append(children, c)
	}
	switch {
	case len(children) > maxPlatforms:
		set(scanError, fmt.Sprintf("the index %s lists %d manifests to check; pullgate scan checks at most %d (choose with --platform)", digest, len(children), maxPlatforms))
	case len(children) == 0:
		set(scanError, fmt.Sprintf("the index %s has no manifest for the platforms asked for (it has: %s)", digest, cmp.Or(strings.Join(all, ", "), "none")))
	default:
		t.children = children
	}
}

// isIndex reports whether a manifest answer is an index, by its Content-Type or, without one, its mediaType.
func isIndex(a *answer) bool {
	mt, _, _ := mime.ParseMediaType(a.header.Get("Content-Type"))
	if mt == "" {
		var m struct {
			MediaType string `json:"mediaType"`
		}
		_ = json.Unmarshal(a.body, &m)
		mt = m.MediaType
	}
	return types.MediaType(mt).IsIndex()
}

// answerDigest returns the digest of a served manifest: ref when ref is a digest (checked against the body),
// else Docker-Content-Digest (checked too), else the body's sha256.
func answerDigest(ref string, a *answer) (string, error) {
	want := ref
	if !names.IsDigest(ref) {
		want = a.header.Get("Docker-Content-Digest")
	}
	if want == "" {
		return digestOf("sha256", a.body), nil
	}
	d, err := names.ParseDigest(want)
	if err != nil {
		return "", fmt.Errorf("pullgate named the manifest %q: %v", want, err)
	}
	if got := digestOf(d.Algorithm, a.body); got != d.String() {
		return "", fmt.Errorf("pullgate served %s for %s: the manifest does not match its digest", got, d)
	}
	return d.String(), nil
}

func digestOf(alg string, body []byte) string {
	if alg == "sha512" {
		sum := sha512.Sum512(body)
		return "sha512:" + hex.EncodeToString(sum[:])
	}
	sum := sha256.Sum256(body)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// roundDuration rounds d for people: to the second, or below ten seconds to the hundredth.
func roundDuration(d time.Duration) time.Duration {
	if d < 10*time.Second {
		return d.Round(10 * time.Millisecond)
	}
	return d.Round(time.Second)
}

// retryAfter reads a Retry-After header: seconds, or an HTTP date.
func retryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
		return time.Duration(min(n, 24*3600)) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}

// lockedWriter serialises the notes of concurrent checks.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.w, format, args...)
}

// oneLine makes text from pullgate safe to print on one line: control characters (newlines, terminal escapes)
// become spaces.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, " "))
}

// clientFlags are the flags of the commands that ask a running pullgate.
type clientFlags struct {
	server, caFile *string
}

func addClientFlags(set *flag.FlagSet) *clientFlags {
	return &clientFlags{
		server: set.String("server", "", "pullgate's URL (env PULLGATE_SERVER; default "+defaultPullgateURL+")"),
		caFile: set.String("ca-file", "", "the CA of pullgate's certificate, PEM (env PULLGATE_CA_FILE; default: the CA in pullgate's data directory when it exists, else the system's roots)"),
	}
}

// pullgateClient asks a running pullgate, with a robot's Basic credentials when it has them.
type pullgateClient struct {
	base               *url.URL
	http               *http.Client
	username, password string
}

// client builds the client from the flags and the environment. Its errors are usage mistakes.
func (f *clientFlags) client(env map[string]string) (*pullgateClient, error) {
	server := cmp.Or(*f.server, env["PULLGATE_SERVER"], defaultPullgateURL)
	if !strings.Contains(server, "://") {
		server = "https://" + server
	}
	u, err := url.Parse(server)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("server %q: give pullgate's URL as https://host[:port] (pullgate speaks only TLS)", server)
	}
	u.Path = ""
	u.Host = strings.ToLower(u.Host)
	username, password := env["PULLGATE_USERNAME"], env["PULLGATE_PASSWORD"]
	if (username == "") != (password == "") {
		return nil, errors.New("PULLGATE_USERNAME and PULLGATE_PASSWORD go together: set both or neither")
	}
	pool, err := serverRoots(*f.caFile, env)
	if err != nil {
		return nil, err
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	t.MaxResponseHeaderBytes = 1 << 20
	return &pullgateClient{
		base: u,
		http: &http.Client{Transport: t, CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse // pullgate does not redirect; credentials are not sent elsewhere
		}},
		username: username, password: password,
	}, nil
}

// serverRoots returns the roots pullgate's certificate is checked with: the system's plus the CA file named,
// or else the one in pullgate's data directory when it exists; nil (the system's) without either.
func serverRoots(caFile string, env map[string]string) (*x509.CertPool, error) {
	caFile = cmp.Or(caFile, env["PULLGATE_CA_FILE"])
	if caFile == "" {
		local := filepath.Join(cmp.Or(env["PULLGATE_DATA_DIR"], "./pullgate-data"), "tls", "ca.crt")
		if _, err := os.Stat(local); err != nil {
			return nil, nil
		}
		caFile = local
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("CA file: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s holds no PEM certificate", caFile)
	}
	return pool, nil
}

// image reads a reference as written in a manifest into what to ask pullgate for. A reference already
// written through pullgate's path prefix (pullgate.example.com/docker.io/library/nginx) is asked for as is.
func (c *pullgateClient) image(s string) (scanImage, error) {
	ref, err := names.ParseReference(s)
	if err != nil {
		return scanImage{}, err
	}
	img := scanImage{name: ref.String(), repo: c.repository(ref), ref: ref.Tag}
	if ref.Digest != (v1.Hash{}) {
		img.ref = ref.Digest.String()
	}
	return img, nil
}

// repository is ref's repository as pullgate is asked for it: "<upstream>/<repository>".
func (c *pullgateClient) repository(ref names.Reference) string {
	if ref.Registry == c.base.Host {
		return ref.Repository
	}
	return ref.Registry + "/" + ref.Repository
}

// answer is pullgate's answer to one request, its body read up to a bound.
type answer struct {
	status int
	header http.Header
	body   []byte
}

// get sends GET path?query to pullgate with the credentials, and reads a success's body up to limit bytes
// (more is an error) and any other body up to maxErrorAnswer.
func (c *pullgateClient) get(ctx context.Context, path, query, accept string, limit int64) (*answer, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	u := *c.base
	u.Path, u.RawQuery = path, query
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", accept)
	if c.username != "" {
		req.SetBasicAuth(c.username, c.password)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("asking pullgate: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		limit = maxErrorAnswer
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading pullgate's answer to %s: %w", path, err)
	}
	if int64(len(body)) > limit {
		if resp.StatusCode/100 == 2 {
			return nil, fmt.Errorf("pullgate's answer to %s is larger than %d bytes", path, limit)
		}
		body = body[:limit]
	}
	return &answer{status: resp.StatusCode, header: resp.Header, body: body}, nil
}

// message is what an answer that is not a success says: the messages of its OCI error body, else its status
// and the start of its body.
func (a *answer) message() string {
	var e struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	var msgs []string
	if json.Unmarshal(a.body, &e) == nil {
		for _, x := range e.Errors {
			if m := cmp.Or(x.Message, x.Code); m != "" {
				msgs = append(msgs, m)
			}
		}
	}
	if len(msgs) > 0 {
		return strings.Join(msgs, "; ")
	}
	msg := fmt.Sprintf("pullgate answered %d %s", a.status, http.StatusText(a.status))
	if b := strings.TrimSpace(string(a.body)); b != "" {
		if len(b) > 200 {
			b = b[:200] + "..."
		}
		msg += ": " + b
	}
	return msg
}

// commandFlags returns the flag set of `pullgate NAME`: errors and -h go to stderr, -h prints usage and then
// the flags.
func commandFlags(name, usage string, stderr io.Writer) *flag.FlagSet {
	set := flag.NewFlagSet(name, flag.ContinueOnError)
	set.SetOutput(stderr)
	set.Usage = func() {
		fmt.Fprint(stderr, usage)
		set.PrintDefaults()
	}
	return set
}
