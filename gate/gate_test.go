package gate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// memStore is a Store in memory.
type memStore struct {
	mu sync.Mutex
	m  map[string][]byte
}

func (s *memStore) Verdict(d string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b, ok := s.m[d]; ok {
		return b, nil
	}
	return nil, ErrNotFound
}

func (s *memStore) SetVerdict(d string, b []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[d] = b
	return nil
}

// heldScanner answers each scan when the test releases it, with the findings or error of that moment.
type heldScanner struct {
	scans    atomic.Int32
	started  chan ScanRequest
	release  chan struct{}
	mu       sync.Mutex
	findings []Finding
	err      error
}

func newHeldScanner() *heldScanner {
	return &heldScanner{started: make(chan ScanRequest, 100), release: make(chan struct{}, 100)}
}

func (s *heldScanner) Scan(ctx context.Context, r ScanRequest) (Report, error) {
	s.scans.Add(1)
	s.started <- r
	select {
	case <-s.release:
	case <-ctx.Done():
		return Report{}, ctx.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return Report{Scanner: ScannerInfo{Name: "held", Version: "1"}, Findings: s.findings}, s.err
}

func (s *heldScanner) set(f []Finding, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.findings, s.err = f, err
}

type tokens struct{}

func (tokens) ScanToken(up, repo, digest string, ttl time.Duration) (string, error) {
	return "tok:" + up + "/" + repo + "@" + digest, nil
}

type fixture struct {
	g       *Gate
	scanner *heldScanner
	store   *memStore
	policy  string
	now     atomic.Int64
}

func newFixture(t *testing.T, policy string) *fixture {
	t.Helper()
	f := &fixture{scanner: newHeldScanner(), store: &memStore{m: map[string][]byte{}}, policy: filepath.Join(t.TempDir(), "policy.yaml")}
	f.now.Store(time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC).UnixNano())
	f.writePolicy(t, policy)
	g, err := New(Options{PolicyFile: f.policy, Scanner: f.scanner, Store: f.store, Tokens: tokens{}, RegistryURL: "https://pullgate.test",
		FailureBackoff: time.Minute, Now: f.clock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for range 100 {
			f.scanner.release <- struct{}{}
		}
		g.Close()
	})
	f.g = g
	return f
}

func (f *fixture) clock() time.Time        { return time.Unix(0, f.now.Load()).UTC() }
func (f *fixture) advance(d time.Duration) { f.now.Add(int64(d)) }
func (f *fixture) writePolicy(t *testing.T, s string) {
	t.Helper()
	tmp := f.policy + ".tmp"
	if err := os.WriteFile(tmp, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, f.policy); err != nil {
		t.Fatal(err)
	}
}

var image = Artifact{Upstream: "docker.io", Repository: "library/nginx", Digest: "sha256:" + fmt.Sprintf("%064d", 1),
	MediaType: "application/vnd.oci.image.manifest.v1+json", Tag: "1.25",
	Manifest: []byte(`{"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip"}]}`)}

func (f *fixture) check(t *testing.T) Decision {
	t.Helper()
	d, err := f.g.Check(context.Background(), image, nil)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// checkAsync runs Check in the background once the scan it starts has reached the scanner.
func (f *fixture) checkAsync(t *testing.T) <-chan Decision {
	t.Helper()
	out := make(chan Decision, 1)
	go func() {
		d, _ := f.g.Check(context.Background(), image, nil)
		out <- d
	}()
	return out
}

func TestFirstPullWaitsForItsVerdict(t *testing.T) {
	f := newFixture(t, "severity: High\nwait: 1m\n")
	f.scanner.set([]Finding{{ID: "CVE-1", Severity: SeverityCritical, FixVersion: "2"}}, nil)
	out := f.checkAsync(t)
	req := <-f.scanner.started
	if req.Repository != "docker.io/library/nginx" || req.Digest != image.Digest || req.Authorization != "Bearer tok:docker.io/library/nginx@"+image.Digest ||
		req.RegistryURL != "https://pullgate.test" || req.Tag != "1.25" {
		t.Fatalf("scan request %+v", req)
	}
	select {
	case d := <-out:
		t.Fatalf("Check answered %v before the scan finished", d)
	default:
	}
	f.scanner.release <- struct{}{}
	if d := <-out; d.Verdict != VerdictBlocked {
		t.Fatalf("first pull of a vulnerable image: %+v", d)
	}
	if d := f.check(t); d.Verdict != VerdictBlocked || f.scanner.scans.Load() != 1 {
		t.Fatalf("second pull: %+v after %d scans; want the stored verdict", d, f.scanner.scans.Load())
	}
}

func TestConcurrentFirstPullsScanOnce(t *testing.T) {
	f := newFixture(t, "severity: High\nwait: 1m\n")
	const n = 20
	outs := make([]<-chan Decision, n)
	for i := range outs {
		outs[i] = f.checkAsync(t)
	}
	<-f.scanner.started
	// Each Check joins the running scan or, arriving after it, finds the stored verdict: either way, one scan.
	f.scanner.release <- struct{}{}
	for _, o := range outs {
		if d := <-o; d.Verdict != VerdictPass {
			t.Fatalf("verdict %+v", d)
		}
	}
	if got := f.scanner.scans.Load(); got != 1 {
		t.Fatalf("%d concurrent first pulls caused %d scans, want 1", n, got)
	}
}

func TestWaitOver(t *testing.T) {
	tests := []struct {
		name   string
		policy string
		want   Verdict
	}{
		{name: "closed: pending with Retry-After", policy: "wait: 1ms\n", want: VerdictPending},
		{name: "open: served unscanned", policy: "wait: 1ms\nunscanned: allow\n", want: VerdictUnscanned},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, tt.policy)
			d := f.check(t)
			if d.Verdict != tt.want {
				t.Fatalf("verdict %+v, want %s", d, tt.want)
			}
			if tt.want == VerdictPending && (d.RetryAfter <= 0 || d.Message == "") {
				t.Fatalf("pending without Retry-After or message: %+v", d)
			}
		})
	}
}

func TestScanFailure(t *testing.T) {
	tests := []struct {
		name   string
		policy string
		want   Verdict
	}{
		{name: "closed", policy: "wait: 1m\n", want: VerdictBlocked},
		{name: "open", policy: "wait: 1m\nscan_failed: allow\n", want: VerdictUnscanned},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, tt.policy)
			f.scanner.set(nil, errors.New("adapter answered 500: database not ready"))
			f.scanner.release <- struct{}{}
			d := f.check(t)
			if d.Verdict != tt.want {
				t.Fatalf("verdict %+v, want %s", d, tt.want)
			}
			if tt.want == VerdictBlocked && !strings.Contains(d.Message, "database not ready") {
				t.Fatalf("the message does not say why: %q", d.Message)
			}
			// Within the backoff, no new scan; after it, a pull starts one.
			f.check(t)
			if f.scanner.scans.Load() != 1 {
				t.Fatalf("%d scans within the failure backoff", f.scanner.scans.Load())
			}
			f.scanner.set(nil, nil)
			f.advance(2 * time.Minute)
			f.scanner.release <- struct{}{}
			if d := f.check(t); d.Verdict != VerdictPass || f.scanner.scans.Load() != 2 {
				t.Fatalf("after the backoff: %+v, %d scans", d, f.scanner.scans.Load())
			}
		})
	}
}

func TestPolicyReloadRejudgesWithoutRescan(t *testing.T) {
	f := newFixture(t, "severity: Critical\nwait: 1m\n")
	f.scanner.set([]Finding{{ID: "CVE-H", Severity: SeverityHigh}}, nil)
	f.scanner.release <- struct{}{}
	if d := f.check(t); d.Verdict != VerdictPass {
		t.Fatalf("High under a Critical threshold: %+v", d)
	}
	f.writePolicy(t, "severity: High\nwait: 1m\n")
	f.advance(5 * time.Second)
	if d := f.check(t); d.Verdict != VerdictBlocked {
		t.Fatalf("after lowering the threshold: %+v", d)
	}
	f.writePolicy(t, "severity: High\nwait: 1m\nallowlist: [{id: CVE-H, expires: \"2026-11-26T12:01:00Z\"}]\n")
	f.advance(5 * time.Second)
	if d := f.check(t); d.Verdict != VerdictPass {
		t.Fatalf("allowlisted: %+v", d)
	}
	f.advance(50 * time.Second) // the allowlist entry expires (12:01); the memo of the decision must not outlive it
	if d := f.check(t); d.Verdict != VerdictBlocked {
		t.Fatalf("after the allowlist entry expired: %+v", d)
	}
	f.writePolicy(t, "severity: [broken\n")
	f.advance(5 * time.Second)
	if d := f.check(t); d.Verdict != VerdictBlocked {
		t.Fatalf("a broken policy file must keep the last good one: %+v", d)
	}
	if n := f.scanner.scans.Load(); n != 1 {
		t.Fatalf("%d scans; policy changes must not rescan", n)
	}
}

func TestRescanAfter(t *testing.T) {
	f := newFixture(t, "severity: High\nwait: 1m\nrescan_after: 1h\n")
	f.scanner.release <- struct{}{}
	if d := f.check(t); d.Verdict != VerdictPass {
		t.Fatal(d)
	}
	f.advance(2 * time.Hour)
	f.scanner.set([]Finding{{ID: "CVE-NEW", Severity: SeverityCritical}}, nil)
	// The old verdict answers while the rescan runs.
	if d := f.check(t); d.Verdict != VerdictPass {
		t.Fatalf("during the rescan: %+v", d)
	}
	<-f.scanner.started
	<-f.scanner.started
	f.scanner.release <- struct{}{}
	deadline := time.Now().Add(10 * time.Second)
	for f.check(t).Verdict != VerdictBlocked {
		if time.Now().After(deadline) {
			t.Fatal("the rescan's verdict never took over")
		}
	}
	if n := f.scanner.scans.Load(); n != 2 {
		t.Fatalf("%d scans, want 2", n)
	}
}

func TestObserveStartsTheScan(t *testing.T) {
	f := newFixture(t, "severity: High\nwait: 1m\n")
	f.g.Observe(image)
	if r := <-f.scanner.started; r.Digest != image.Digest {
		t.Fatal(r)
	}
	f.g.Observe(image)
	index := Artifact{Upstream: "docker.io", Repository: "library/nginx", Digest: "sha256:" + fmt.Sprintf("%064d", 2),
		MediaType: "application/vnd.oci.image.index.v1+json", Manifest: []byte(`{"manifests":[]}`)}
	f.g.Observe(index)
	if d, _ := f.g.Check(context.Background(), index, nil); d.Verdict != VerdictExempt {
		t.Fatalf("an index: %+v", d)
	}
	f.scanner.release <- struct{}{}
	if d := f.check(t); d.Verdict != VerdictPass {
		t.Fatal(d)
	}
	if n := f.scanner.scans.Load(); n != 1 {
		t.Fatalf("%d scans, want 1", n)
	}
}

func TestPolicyNeedsAScanner(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.yaml")
	if err := os.WriteFile(path, []byte("severity: High\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Options{PolicyFile: path, Store: &memStore{}}); err == nil || !strings.Contains(err.Error(), "no scanner") {
		t.Fatalf("a scanning policy without a scanner: %v", err)
	}
	if err := os.WriteFile(path, []byte("severity: None\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	g, err := New(Options{PolicyFile: path, Store: &memStore{}})
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := g.Check(context.Background(), image, nil); d.Verdict != VerdictPass {
		t.Fatalf("severity None: %+v", d)
	}
}
