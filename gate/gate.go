package gate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/pullgate/pullgate/watch"
)

// ScanTokens mints the credential a scanner pulls one artifact with: a short-lived token that may pull that
// repository, only that manifest digest (and the blobs it names), and that bypasses the gate for that digest
// alone. *identity.Service is the implementation.
type ScanTokens interface {
	ScanToken(upstream, repository, digest string, ttl time.Duration) (string, error)
}

// Options configures New. Each field's comment says what its zero value means.
type Options struct {
	// PolicyFile is the policy's path (read again within seconds of a change). Required.
	PolicyFile string
	// Scanner is asked for verdicts; nil means none, which a policy that asks for verdicts refuses.
	Scanner Scanner
	// ScannerName names the scanner in logs and metrics; empty means "scanner".
	ScannerName string
	// Store keeps verdicts. Required.
	Store Store
	// Tokens mints the scanner's pull credential; nil means the scanner is given no authorization.
	Tokens ScanTokens
	// RegistryURL is pullgate's own URL as the scanner reaches it ("https://pullgate.example.com"). Required
	// with a Scanner.
	RegistryURL string
	// ScanTimeout bounds one scan, from its start at the scanner to its report. Zero means 10 minutes.
	ScanTimeout time.Duration
	// Concurrency is how many scans run at once. Zero means 4.
	Concurrency int
	// MaxQueued bounds the scans waiting or running; more are not started (the image stays unscanned until a
	// later pull). Zero means 1000.
	MaxQueued int
	// FailureBackoff is how long a failed scan is remembered before a pull starts another. Zero means 1 minute.
	FailureBackoff time.Duration
	// OnReload hears of every reload of the policy file: nil when it was read, else why not. Nil: no hook.
	OnReload func(error)
	// OnScan hears of every finished scan: its result ("ok", "failed") and how long it took. Nil: no hook.
	OnScan func(result string, took time.Duration)
	// Log receives scan failures and the like; nil means slog.Default().
	Log *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (o Options) withDefaults() Options {
	if o.ScannerName == "" {
		o.ScannerName = "scanner"
	}
	if o.ScanTimeout <= 0 {
		o.ScanTimeout = 10 * time.Minute
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 4
	}
	if o.MaxQueued <= 0 {
		o.MaxQueued = 1000
	}
	if o.FailureBackoff <= 0 {
		o.FailureBackoff = time.Minute
	}
	if o.OnScan == nil {
		o.OnScan = func(string, time.Duration) {}
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

const (
	maxMemo        = 10_000 // records, decisions and signature results held in memory, each
	decisionMemo   = time.Minute
	signatureOK    = 10 * time.Minute
	signatureNotOK = 30 * time.Second
	pendingRetry   = 10 * time.Second
)

// Gate decides whether manifests may be served. It is safe for concurrent use.
type Gate struct {
	o      Options
	policy *watch.File[*Policy]

	slots  chan struct{} // bounds the scans running at once
	stop   context.CancelFunc
	ctx    context.Context // cancelled by Close; scans run under it
	wg     sync.WaitGroup
	closed bool // mu

	mu       sync.Mutex
	running  map[string]*scan    // by digest
	failures map[string]failure  // by digest
	records  map[string]*Record  // by digest: the stored records read lately
	decided  map[string]memoized // by digest: the last decision that may be repeated, until its until
	signed   map[string]memoized // by digest and rule
}

type scan struct {
	done chan struct{}
	rec  *Record // on success
	err  error
}

type failure struct {
	err   error
	until time.Time
}

type memoized struct {
	policy *Policy
	rule   *CompiledRule
	d      Decision
	until  time.Time
}

// New reads the policy and returns the Gate. A policy that asks for verdicts without a Scanner is an error,
// at New and at every reload (which then keeps the last good policy).
func New(o Options) (*Gate, error) {
	o = o.withDefaults()
	if o.PolicyFile == "" || o.Store == nil {
		return nil, errors.New("gate: Options.PolicyFile and Options.Store are required")
	}
	if o.Scanner != nil && o.RegistryURL == "" {
		return nil, errors.New("gate: Options.RegistryURL is required with a Scanner")
	}
	parse := func(data []byte) (*Policy, error) {
		p, err := ParsePolicy(data, filepath.Dir(o.PolicyFile))
		if err != nil {
			return nil, fmt.Errorf("gate policy %s: %w", o.PolicyFile, err)
		}
		if o.Scanner == nil && p.NeedsScanner() {
			return nil, fmt.Errorf("gate policy %s asks for vulnerability verdicts (severity %s of rule %s) but no scanner is configured; set severity: None where no scan is wanted",
				o.PolicyFile, firstScanning(p).Severity, firstScanning(p).Name)
		}
		return p, nil
	}
	pf, err := watch.Open(o.PolicyFile, parse, watch.Options{Now: o.Now, OnReload: o.OnReload})
	if err != nil {
		return nil, err
	}
	ctx, stop := context.WithCancel(context.Background())
	return &Gate{o: o, policy: pf, slots: make(chan struct{}, o.Concurrency), ctx: ctx, stop: stop,
		running: map[string]*scan{}, failures: map[string]failure{}, records: map[string]*Record{},
		decided: map[string]memoized{}, signed: map[string]memoized{}}, nil
}

func firstScanning(p *Policy) *CompiledRule {
	if p.Default.NeedsScan() {
		return p.Default
	}
	for _, r := range p.Rules {
		if r.NeedsScan() {
			return r
		}
	}
	return p.Default
}

// Close cancels the scans still running and waits for them to end.
func (g *Gate) Close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.stop()
	g.wg.Wait()
}

// Artifact is a manifest the gate is asked about.
type Artifact struct {
	// Upstream and Repository name where it is pulled from ("docker.io", "library/nginx").
	Upstream, Repository string
	// Digest is the manifest's digest; MediaType its type; Manifest its bytes.
	Digest    string
	MediaType string
	Manifest  []byte
	// Tag is the tag it was asked for by, if any.
	Tag string
}

func (a Artifact) name() string { return a.Upstream + "/" + a.Repository }

// ref names the artifact in messages: "docker.io/library/nginx@sha256:…".
func (a Artifact) ref() string { return a.name() + "@" + a.Digest }

// Check decides whether a may be served. It waits, as long as the policy's wait and ctx allow, for a verdict
// that is not there yet (starting the scan if no one has). Signatures are fetched through src. An error is
// returned only for what the gate could not decide because of a failure of its own (the verdict store); ctx's
// error when the client went away.
func (g *Gate) Check(ctx context.Context, a Artifact, src SignatureSource) (Decision, error) {
	pol := g.policy.Current()
	rule := pol.Rule(a.name())
	now := g.o.Now()
	if d, ok := g.recall(a.Digest, pol, rule, now); ok {
		return d, nil // the warm path: one map look-up
	}
	if !Runnable(a.MediaType, a.Manifest) {
		d := Decision{Verdict: VerdictExempt, Rule: rule.Name}
		g.remember(a.Digest, pol, rule, d, now.Add(decisionMemo))
		return d, nil
	}
	until := now.Add(decisionMemo)
	if len(rule.keys) > 0 {
		d, sigUntil, err := g.checkSignature(ctx, pol, rule, a, src)
		if err != nil || !d.Allowed() {
			return d, err
		}
		until = minTime(until, sigUntil)
	}
	if !rule.NeedsScan() {
		d := Decision{Verdict: VerdictPass, Rule: rule.Name}
		g.remember(a.Digest, pol, rule, d, until)
		return d, nil
	}
	rec, err := g.record(a.Digest)
	if err != nil {
		return Decision{}, err
	}
	if rec != nil {
		if rescan := rec.ScannedAt.Add(pol.RescanAfter); !now.Before(rescan) {
			g.startScan(a) // in the background; the last verdict answers meanwhile
		} else {
			until = minTime(until, rescan)
		}
		return g.judged(pol, rule, rec, a, now, until), nil
	}
	if f, ok := g.failed(a.Digest, now); ok {
		return scanFailed(rule, a, f), nil
	}
	s := g.startScan(a)
	if s == nil {
		return unscanned(rule, a, "pullgate's scan queue is full"), nil
	}
	timer := time.NewTimer(pol.Wait)
	defer timer.Stop()
	select {
	case <-s.done:
		if s.err != nil {
			return scanFailed(rule, a, s.err), nil
		}
		now = g.o.Now()
		return g.judged(pol, rule, s.rec, a, now, minTime(until, s.rec.ScannedAt.Add(pol.RescanAfter))), nil
	case <-timer.C:
		return unscanned(rule, a, "its vulnerability scan is still running"), nil
	case <-ctx.Done():
		return Decision{}, ctx.Err()
	}
}

// judged judges rec under rule and remembers the decision until until, or an allowlist entry's expiry if
// sooner (findings are many, pulls more).
func (g *Gate) judged(pol *Policy, rule *CompiledRule, rec *Record, a Artifact, now, until time.Time) Decision {
	d := judge(rule, rec, a.ref(), now)
	for _, e := range rule.allow {
		if e.expires.After(now) {
			until = minTime(until, e.expires) // an allowlist entry that expires ends the decision with it
		}
	}
	g.remember(a.Digest, pol, rule, d, until)
	return d
}

// recall returns the decision remembered for digest under pol and rule, if it is still good at now.
func (g *Gate) recall(digest string, pol *Policy, rule *CompiledRule, now time.Time) (Decision, bool) {
	g.mu.Lock()
	m, ok := g.decided[digest]
	g.mu.Unlock()
	if !ok || m.policy != pol || m.rule != rule || !now.Before(m.until) {
		return Decision{}, false
	}
	return m.d, true
}

func (g *Gate) remember(digest string, pol *Policy, rule *CompiledRule, d Decision, until time.Time) {
	g.mu.Lock()
	boundedPut(g.decided, digest, memoized{policy: pol, rule: rule, d: d, until: until})
	g.mu.Unlock()
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// Observe starts the scan of a manifest pullgate has just fetched from its upstream, when the policy asks
// for a verdict and none is stored, so that the verdict is ready, or nearly, when a client asks.
func (g *Gate) Observe(a Artifact) {
	if !Runnable(a.MediaType, a.Manifest) || !g.policy.Current().Rule(a.name()).NeedsScan() {
		return
	}
	if rec, err := g.record(a.Digest); err != nil || rec != nil {
		return
	}
	if _, ok := g.failed(a.Digest, g.o.Now()); ok {
		return
	}
	g.startScan(a)
}

// unscanned is the decision for an image without a verdict: pending (503), or unscanned (served) where the
// rule lets unscanned images pass.
func unscanned(rule *CompiledRule, a Artifact, why string) Decision {
	if rule.Unscanned == Allow {
		return Decision{Verdict: VerdictUnscanned, Rule: rule.Name, Message: why}
	}
	return Decision{Verdict: VerdictPending, Rule: rule.Name, RetryAfter: pendingRetry, Message: fmt.Sprintf(
		"%s is not served yet: %s, and pullgate serves no image before its verdict (rule %s); retry in %d seconds",
		a.ref(), why, rule.Name, int(pendingRetry.Seconds()))}
}

// scanFailed is the decision for an image whose scan failed: blocked, or unscanned (served) where the rule
// lets such images pass.
func scanFailed(rule *CompiledRule, a Artifact, err error) Decision {
	if rule.ScanFailed == Allow {
		return Decision{Verdict: VerdictUnscanned, Rule: rule.Name, Message: "scan failed: " + err.Error()}
	}
	return Decision{Verdict: VerdictBlocked, Rule: rule.Name, Message: fmt.Sprintf(
		"blocked by pullgate policy (rule %s: images whose scan failed are not served): %s could not be scanned: %v; a later pull tries again",
		rule.Name, a.ref(), err)}
}

// checkSignature asks for a valid signature by one of the rule's keys, remembering the answer (a good one for
// longer than a missing one, which may be pushed any moment).
func (g *Gate) checkSignature(ctx context.Context, pol *Policy, rule *CompiledRule, a Artifact, src SignatureSource) (Decision, time.Time, error) {
	now := g.o.Now()
	key := a.Digest + "\x00" + rule.Name
	g.mu.Lock()
	m, ok := g.signed[key]
	g.mu.Unlock()
	if ok && m.policy == pol && now.Before(m.until) {
		return m.d, m.until, nil
	}
	signer, err := VerifySignature(ctx, src, a.Digest, rule.keys)
	var d Decision
	var se *SignatureError
	switch {
	case err == nil:
		d = Decision{Verdict: VerdictPass, Rule: rule.Name, Message: "signed by " + signer}
		m = memoized{policy: pol, d: d, until: now.Add(signatureOK)}
	case errors.As(err, &se):
		d = Decision{Verdict: VerdictBlocked, Rule: rule.Name, Message: fmt.Sprintf(
			"blocked by pullgate policy (rule %s: signature by %s required): %s", rule.Name, strings.Join(rule.SignedBy, " or "), se.Error())}
		m = memoized{policy: pol, d: d, until: now.Add(signatureNotOK)}
	case ctx.Err() != nil:
		return Decision{}, now, ctx.Err()
	default:
		g.o.Log.Warn("gate: signatures could not be fetched", "artifact", a.ref(), "error", err)
		return Decision{Verdict: VerdictPending, Rule: rule.Name, RetryAfter: pendingRetry, Message: fmt.Sprintf(
			"%s is not served yet: its signatures could not be fetched (%v); retry in %d seconds", a.ref(), err, int(pendingRetry.Seconds()))}, now, nil
	}
	g.mu.Lock()
	boundedPut(g.signed, key, m)
	g.mu.Unlock()
	return d, m.until, nil
}

// record returns the stored record of digest (nil when there is none), from memory when it was read lately.
func (g *Gate) record(digest string) (*Record, error) {
	g.mu.Lock()
	rec, ok := g.records[digest]
	g.mu.Unlock()
	if ok {
		return rec, nil
	}
	b, err := g.o.Store.Verdict(digest)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the verdict of %s: %w", digest, err)
	}
	if rec, err = DecodeRecord(b); err != nil {
		return nil, err
	}
	g.mu.Lock()
	boundedPut(g.records, digest, rec)
	g.mu.Unlock()
	return rec, nil
}

// failed returns the remembered failure of digest's last scan, if it is recent.
func (g *Gate) failed(digest string, now time.Time) (error, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	f, ok := g.failures[digest]
	if !ok || !now.Before(f.until) {
		return nil, false
	}
	return f.err, true
}

// startScan starts a's scan unless one runs already, and returns it; nil when too many are queued or the
// gate is closed.
func (g *Gate) startScan(a Artifact) *scan {
	if g.o.Scanner == nil {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if s := g.running[a.Digest]; s != nil {
		return s
	}
	if g.closed || len(g.running) >= g.o.MaxQueued {
		return nil
	}
	s := &scan{done: make(chan struct{})}
	g.running[a.Digest] = s
	g.wg.Add(1)
	go g.run(a, s)
	return s
}

// run scans a: it waits for a slot, asks the scanner, and stores the record (or remembers the failure).
func (g *Gate) run(a Artifact, s *scan) {
	defer g.wg.Done()
	start := g.o.Now()
	s.rec, s.err = g.scan(a)
	took := g.o.Now().Sub(start)
	g.mu.Lock()
	delete(g.running, a.Digest)
	if s.err == nil {
		boundedPut(g.records, a.Digest, s.rec)
		delete(g.decided, a.Digest) // a new verdict: judge again
		delete(g.failures, a.Digest)
	} else if g.ctx.Err() == nil {
		boundedPut(g.failures, a.Digest, failure{err: s.err, until: g.o.Now().Add(g.o.FailureBackoff)})
	}
	g.mu.Unlock()
	close(s.done)
	if s.err != nil {
		g.o.OnScan("failed", took)
		g.o.Log.Warn("gate: scan failed", "artifact", a.ref(), "scanner", g.o.ScannerName, "error", s.err)
		return
	}
	g.o.OnScan("ok", took)
	g.o.Log.Info("gate: scanned", "artifact", a.ref(), "scanner", s.rec.Scanner.String(), "findings", Counts(s.rec.Findings))
}

func (g *Gate) scan(a Artifact) (*Record, error) {
	select {
	case g.slots <- struct{}{}:
		defer func() { <-g.slots }()
	case <-g.ctx.Done():
		return nil, errors.New("pullgate is shutting down")
	}
	ctx, cancel := context.WithTimeout(g.ctx, g.o.ScanTimeout)
	defer cancel()
	req := ScanRequest{RegistryURL: g.o.RegistryURL, Repository: a.name(), Digest: a.Digest, Tag: a.Tag, MediaType: a.MediaType}
	if g.o.Tokens != nil {
		tok, err := g.o.Tokens.ScanToken(a.Upstream, a.Repository, a.Digest, g.o.ScanTimeout+time.Minute)
		if err != nil {
			return nil, fmt.Errorf("minting the scanner's token: %w", err)
		}
		req.Authorization = "Bearer " + tok
	}
	rep, err := g.o.Scanner.Scan(ctx, req)
	if err != nil {
		if ctx.Err() != nil && g.ctx.Err() == nil {
			return nil, fmt.Errorf("%s did not answer within %v: %w", g.o.ScannerName, g.o.ScanTimeout, err)
		}
		return nil, err
	}
	if len(rep.Findings) > MaxFindings {
		return nil, fmt.Errorf("%s reported %d findings, more than the %d pullgate keeps", g.o.ScannerName, len(rep.Findings), MaxFindings)
	}
	rec := &Record{Digest: a.Digest, Upstream: a.Upstream, Repository: a.Repository, Tag: a.Tag, MediaType: a.MediaType,
		Scanner: rep.Scanner, ScannedAt: g.o.Now().UTC(), Findings: rep.Findings}
	b, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	if err := g.o.Store.SetVerdict(a.Digest, b); err != nil {
		return nil, fmt.Errorf("storing the verdict: %w", err)
	}
	return rec, nil
}

// boundedPut adds k to m, first dropping arbitrary entries when m is full.
func boundedPut[V any](m map[string]V, k string, v V) {
	if _, ok := m[k]; !ok && len(m) >= maxMemo {
		n := 0
		for old := range m {
			delete(m, old)
			if n++; n >= maxMemo/10 {
				break
			}
		}
	}
	m[k] = v
}

// Runnable reports whether a manifest is something a container runtime runs, and so is gated: an image
// manifest with at least one filesystem layer, or a schema 1 manifest. Indexes are not (each platform
// manifest is gated when it is pulled), and neither are artifacts without layers a runtime unpacks
// (signatures, attestations, SBOMs, charts).
func Runnable(mediaType string, body []byte) bool {
	switch mediaType {
	case "application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json":
		return false
	case "application/vnd.docker.distribution.manifest.v1+json", "application/vnd.docker.distribution.manifest.v1+prettyjws":
		return true
	}
	var m struct {
		Layers []struct {
			MediaType string `json:"mediaType"`
		} `json:"layers"`
	}
	if err := json.Unmarshal(body, &m); err != nil {
		return true // what cannot be read is gated
	}
	for _, l := range m.Layers {
		if strings.HasPrefix(l.MediaType, "application/vnd.oci.image.layer.") ||
			strings.HasPrefix(l.MediaType, "application/vnd.docker.image.rootfs.") {
			return true
		}
	}
	return false
}
