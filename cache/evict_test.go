package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// openQuota opens a cache with a quota and records what OnRemove reports.
func openQuota(t *testing.T, clk *clock, opts Options) (*Cache, *removals) {
	t.Helper()
	rm := &removals{}
	opts.Dir = t.TempDir()
	opts.Now = clk.Now
	opts.Reserve = testReserve
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	opts.OnRemove = rm.add
	c, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, rm
}

type removals struct {
	mu      sync.Mutex
	objects map[string]int
}

func (r *removals) add(reason string, objects int, _ int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.objects == nil {
		r.objects = map[string]int{}
	}
	r.objects[reason] += objects
}

func (r *removals) count(reason string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.objects[reason]
}

// putManifest stores a manifest body with an image media type.
func putManifest(t *testing.T, c *Cache, body []byte) v1.Hash {
	t.Helper()
	d := sha256Of(body)
	w, err := c.NewWriter(d, "application/vnd.oci.image.manifest.v1+json", int64(len(body)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(body); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	return d
}

// image stores an image manifest naming a config and layers of the given sizes, and returns every digest.
func image(t *testing.T, c *Cache, name string, sizes ...int) (manifest v1.Hash, blobs []v1.Hash) {
	t.Helper()
	type desc struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int    `json:"size"`
	}
	var layers []desc
	for i, n := range sizes {
		b := []byte(fmt.Sprintf("%s-%d-%s", name, i, strings.Repeat("x", n)))[:n]
		o := put(t, c, b)
		blobs = append(blobs, o.Digest)
		layers = append(layers, desc{"application/vnd.oci.image.layer.v1.tar", o.Digest.String(), n})
	}
	body, _ := json.Marshal(map[string]any{"schemaVersion": 2, "config": layers[0], "layers": layers[1:]})
	return putManifest(t, c, body), blobs
}

func stored(c *Cache, d v1.Hash) bool {
	_, err := c.Stat(d)
	return err == nil
}

// TestEvictLeastRecentlyUsed runs with one batch for the whole eviction and with a batch per object: the
// references of every batch of a pass go, not only those of the last.
func TestEvictLeastRecentlyUsed(t *testing.T) {
	for _, batch := range []int{0, 1} {
		t.Run(fmt.Sprintf("batch %d", batch), func(t *testing.T) {
			testEvictLeastRecentlyUsed(t, batch)
		})
	}
}

func testEvictLeastRecentlyUsed(t *testing.T, batch int) {
	clk := newClock()
	c, rm := openQuota(t, clk, Options{removeBatch: batch})
	var ds []v1.Hash
	for i := range 6 {
		ds = append(ds, put(t, c, []byte(fmt.Sprintf("object %d %s", i, strings.Repeat("o", 100)))).Digest)
		clk.Advance(time.Minute)
	}
	// Use 0 and 1 again: 2 and 3 are now the least recently used.
	clk.Advance(time.Hour)
	c.Touch(ds[0])
	c.Touch(ds[1])
	for _, d := range ds[:4] {
		if err := c.Link("docker.io", "library/app", d); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.SetTag("docker.io", "library/app", "v2", TagEntry{Digest: ds[2]}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetTag("docker.io", "library/app", "v0", TagEntry{Digest: ds[0]}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetVerdict(ds[2], []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	o, _ := c.Stat(ds[2])
	bytesBefore, objectsBefore := c.Usage()

	st, err := c.Evict(context.Background(), 2*o.Size, nil, ReasonQuota)
	if err != nil {
		t.Fatal(err)
	}
	if st.Objects != 2 || st.Bytes != 2*o.Size {
		t.Errorf("Evict = %+v, want 2 objects of %d bytes", st, 2*o.Size)
	}
	for i, d := range ds {
		if want := i != 2 && i != 3; stored(c, d) != want {
			t.Errorf("object %d stored = %v, want %v", i, !want, want)
		}
	}
	if _, err := c.Tag("docker.io", "library/app", "v2"); !errors.Is(err, ErrNotFound) {
		t.Errorf("the tag of an evicted manifest: %v, want ErrNotFound", err)
	}
	if _, err := c.Tag("docker.io", "library/app", "v0"); err != nil {
		t.Errorf("the tag of a kept manifest: %v", err)
	}
	for i, d := range ds[:4] {
		linked, err := c.Linked("docker.io", "library/app", d)
		if err != nil || linked != (i < 2) {
			t.Errorf("object %d linked = %v, %v; want %v", i, linked, err, i < 2)
		}
	}
	if _, err := c.Verdict(ds[2]); !errors.Is(err, ErrNotFound) {
		t.Errorf("the verdict of an evicted manifest: %v, want ErrNotFound", err)
	}
	if _, err := c.Accessed(ds[2]); !errors.Is(err, ErrNotFound) {
		t.Errorf("the access time of an evicted object: %v, want ErrNotFound", err)
	}
	if b, n := c.Usage(); b != bytesBefore-2*o.Size || n != objectsBefore-2 {
		t.Errorf("Usage = %d, %d; want %d, %d", b, n, bytesBefore-2*o.Size, objectsBefore-2)
	}
	if got := rm.count(ReasonQuota); got != 2 {
		t.Errorf("OnRemove counted %d objects, want 2", got)
	}
	// The next request for it misses cleanly, and it can be stored again.
	if _, _, err := c.Content(ds[2]); !errors.Is(err, ErrNotFound) {
		t.Errorf("Content of an evicted object: %v", err)
	}
	put(t, c, []byte(fmt.Sprintf("object %d %s", 2, strings.Repeat("o", 100))))
}

func TestEvictKeepsOpenReaders(t *testing.T) {
	c, _ := openQuota(t, newClock(), Options{})
	data := randomBytes(t, 256<<10)
	o := put(t, c, data)
	f, _, err := c.Content(o.Digest)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// A fill in progress is not an object yet: eviction cannot touch it.
	pending := randomBytes(t, 1000)
	w, err := c.NewWriter(sha256Of(pending), "", int64(len(pending)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(pending[:500]); err != nil {
		t.Fatal(err)
	}
	if st, err := c.Evict(context.Background(), 1<<40, nil, ReasonQuota); err != nil || st.Objects != 1 {
		t.Fatalf("Evict = %+v, %v; want the one stored object", st, err)
	}
	got, err := io.ReadAll(f)
	if err != nil || sha256Of(got) != o.Digest {
		t.Errorf("a reader that opened the object before it was evicted read %d bytes, %v", len(got), err)
	}
	if _, err := w.Write(pending[500:]); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(); err != nil {
		t.Errorf("a fill running during eviction: %v", err)
	}
	if !stored(c, sha256Of(pending)) {
		t.Error("the fill that ran during eviction is not stored")
	}
}

func TestQuota(t *testing.T) {
	clk := newClock()
	const quota = 100 << 10
	c, rm := openQuota(t, clk, Options{MaxBytes: quota, QuotaWait: time.Minute})
	// Fill to the quota with 10 KiB objects, each used a minute after the one before.
	var ds []v1.Hash
	for range 10 {
		ds = append(ds, put(t, c, randomBytes(t, 10<<10)).Digest)
		clk.Advance(time.Minute)
	}
	if b, _ := c.Usage(); b != quota {
		t.Fatalf("Usage = %d, want %d", b, quota)
	}
	// One more does not fit: the fill waits for an eviction round, which takes the least recently used down to
	// evictTarget percent, and then it fits.
	c.Touch(ds[0])
	o := put(t, c, randomBytes(t, 10<<10))
	if !stored(c, o.Digest) || !stored(c, ds[0]) {
		t.Error("the new object or the recently used one is gone")
	}
	if stored(c, ds[1]) || stored(c, ds[2]) {
		t.Error("the least recently used objects were not evicted")
	}
	if b, _ := c.Usage(); b > quota {
		t.Errorf("Usage = %d, over the quota %d", b, quota)
	}
	if rm.count(ReasonQuota) == 0 {
		t.Error("OnRemove was not told")
	}
	// Content larger than the quota is refused, naming the quota, and nothing is left behind.
	_, err := c.NewWriter(sha256Of([]byte("huge")), "", quota+1)
	if !errors.Is(err, ErrQuota) || !strings.Contains(err.Error(), fmt.Sprint(quota)) {
		t.Errorf("NewWriter larger than the quota = %v, want ErrQuota naming it", err)
	}
	if n := c.inflight.Load(); n != 0 {
		t.Errorf("%d bytes still reserved after the refusal", n)
	}
	// Content of unknown size is counted as it is written.
	big := randomBytes(t, quota+1)
	w, err := c.NewWriter(sha256Of(big), "", -1)
	if err != nil {
		t.Fatal(err)
	}
	_, err = w.Write(big)
	if !errors.Is(err, ErrQuota) {
		t.Errorf("writing more than the quota at unknown size = %v, want ErrQuota", err)
	}
	if n := c.inflight.Load(); n != 0 {
		t.Errorf("%d bytes still reserved after a failed write", n)
	}
}

func TestPinsAreKept(t *testing.T) {
	clk := newClock()
	c, _ := openQuota(t, clk, Options{})
	m1, b1 := image(t, c, "pinned", 3000, 4000, 5000)
	sig := putManifest(t, c, []byte(`{"schemaVersion":2,"layers":[]}`))
	idxBody, _ := json.Marshal(map[string]any{"schemaVersion": 2, "manifests": []map[string]any{{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m1.String(), "size": 1}}})
	idx := putManifest(t, c, idxBody)
	for _, tag := range []string{"1.25", idx.Algorithm + "-" + idx.Hex + ".sig"} {
		d := idx
		if strings.HasSuffix(tag, ".sig") {
			d = sig
		}
		if err := c.SetTag("docker.io", "library/nginx", tag, TagEntry{Digest: d}); err != nil {
			t.Fatal(err)
		}
	}
	m2, b2 := image(t, c, "other", 3000, 4000)
	if err := c.SetTag("docker.io", "library/redis", "7", TagEntry{Digest: m2}); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Hour) // the other image is used later than the pinned one
	c.Touch(m2)
	for _, d := range b2 {
		c.Touch(d)
	}

	p, err := ParsePin("docker.io/library/nginx:1.*")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.AddPin(p); err != nil {
		t.Fatal(err)
	}
	keep, pinned, err := c.pinned(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := append([]v1.Hash{idx, m1, sig}, b1...)
	var wantBytes int64
	for _, d := range want {
		o, _ := c.Stat(d)
		wantBytes += o.Size
		if !keep(d) {
			t.Errorf("%s is not kept by the pin", d)
		}
	}
	if pinned != wantBytes {
		t.Errorf("pinned bytes = %d, want %d", pinned, wantBytes)
	}
	if _, err := c.Evict(context.Background(), 1<<40, keep, ReasonQuota); err != nil {
		t.Fatal(err)
	}
	for _, d := range want {
		if !stored(c, d) {
			t.Errorf("pinned %s was evicted", d)
		}
	}
	for _, d := range append([]v1.Hash{m2}, b2...) {
		if stored(c, d) {
			t.Errorf("unpinned %s was kept", d)
		}
	}

	// Pins survive a restart and can be removed; fixed ones are listed too.
	fixed, _ := ParsePin("ghcr.io/acme/**")
	pins, err := c.Pins()
	if err != nil || len(pins) != 1 || pins[0].String() != "docker.io/library/nginx:1.*" {
		t.Errorf("Pins = %v, %v", pins, err)
	}
	if ok, err := c.RemovePin(p); !ok || err != nil {
		t.Errorf("RemovePin = %v, %v", ok, err)
	}
	c2, _ := openQuota(t, clk, Options{Pins: []Pin{fixed}})
	if pins, _ := c2.Pins(); len(pins) != 1 || !pins[0].Fixed {
		t.Errorf("Pins with a fixed one = %+v", pins)
	}
}

func TestPinsOverTheQuotaRefuseNewContent(t *testing.T) {
	clk := newClock()
	c, _ := openQuota(t, clk, Options{MaxBytes: 50 << 10, QuotaWait: time.Minute})
	m, _ := image(t, c, "big", 20<<10, 25<<10)
	if err := c.SetTag("docker.io", "library/big", "1", TagEntry{Digest: m}); err != nil {
		t.Fatal(err)
	}
	if err := c.AddPin(Pin{Upstream: "docker.io", Repository: "library/big"}); err != nil {
		t.Fatal(err)
	}
	_, err := c.NewWriter(sha256Of([]byte("more")), "", 10<<10)
	if !errors.Is(err, ErrQuota) || !strings.Contains(err.Error(), "pinned") {
		t.Errorf("new content with pins filling the quota = %v, want ErrQuota saying what is pinned", err)
	}
	if !stored(c, m) {
		t.Error("a pinned manifest was evicted")
	}
}

func TestParsePin(t *testing.T) {
	tests := []struct {
		in, want string
		bad      bool
	}{
		{in: "docker.io/library/nginx:1.25", want: "docker.io/library/nginx:1.25"},
		{in: "docker.io/library/nginx", want: "docker.io/library/nginx"},
		{in: "localhost:5000/app/**", want: "localhost:5000/app/**"},
		{in: "ghcr.io/acme/*:v*", want: "ghcr.io/acme/*:v*"},
		{in: "docker.io/library/redis@sha256:" + strings.Repeat("a", 64), want: "docker.io/library/redis@sha256:" + strings.Repeat("a", 64)},
		{in: "nginx", bad: true},
		{in: "/library/nginx", bad: true},
		{in: "docker.io/library/nginx:", bad: true},
		{in: "docker.io/library/redis@sha256:abc", bad: true},
		{in: "docker.io/lib rary", bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			p, err := ParsePin(tt.in)
			if (err != nil) != tt.bad {
				t.Fatalf("ParsePin = %v, %v", p, err)
			}
			if !tt.bad && p.String() != tt.want {
				t.Errorf("String = %q, want %q", p.String(), tt.want)
			}
		})
	}
}

func TestWalkSeesNotedAccessTimes(t *testing.T) {
	clk := newClock()
	c, _ := openQuota(t, clk, Options{})
	a := put(t, c, []byte("a")).Digest
	b := put(t, c, []byte("b")).Digest
	clk.Advance(time.Hour)
	c.Touch(b) // noted, not written
	got := map[v1.Hash]time.Time{}
	if err := c.Walk(context.Background(), func(o Object, at time.Time) error { got[o.Digest] = at; return nil }); err != nil {
		t.Fatal(err)
	}
	if !got[a].IsZero() || !got[b].Equal(clk.Now()) {
		t.Errorf("Walk access times = %v", got)
	}
	if len(got) != 2 {
		t.Errorf("Walk saw %d objects, want 2", len(got))
	}
}

// TestQuotaWaiterReleasedByBatch checks that a fill waiting for room goes on after the removal batch that made
// it, not after the whole round: the round's second batch does not end until the fill has its room.
func TestQuotaWaiterReleasedByBatch(t *testing.T) {
	clk := newClock()
	const size, n = 1000, 50
	released := make(chan struct{})
	var calls atomic.Int32
	opts := Options{MaxBytes: size * n, QuotaWait: time.Minute, removeBatch: 5}
	opts.OnRemove = func(reason string, objects int, _ int64) {
		if calls.Add(1) != 2 {
			return
		}
		select {
		case <-released:
		case <-time.After(20 * time.Second):
			t.Error("the waiting fill was not released by the first batch: the round's second batch ended without it")
		}
	}
	opts.Dir = t.TempDir()
	opts.Now = clk.Now
	opts.Reserve = testReserve
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	c, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	for range n {
		put(t, c, randomBytes(t, size))
		clk.Advance(time.Minute)
	}
	b := randomBytes(t, size)
	w, err := c.NewWriter(sha256Of(b), "", size) // over the quota: waits for room
	close(released)
	if err != nil {
		t.Fatalf("NewWriter: %v", err)
	}
	w.Abort(nil)
	// The round goes on: its second batch, which checked that the fill had its room, ends.
	deadline := time.Now().Add(30 * time.Second)
	for calls.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d removal batches, want the round to go on after the fill's", calls.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestOverQuotaCacheNeverGrows: a cache whose quota was lowered below what it holds lets a fill in as soon as
// eviction has freed the fill's bytes (not once the whole cache is under the quota, which may take minutes), and
// it never grows meanwhile.
func TestOverQuotaCacheNeverGrows(t *testing.T) {
	clk := newClock()
	const size, n = 1000, 50
	dir := t.TempDir()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	c, err := Open(Options{Dir: dir, Now: clk.Now, Reserve: testReserve, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	for range n {
		put(t, c, randomBytes(t, size))
		clk.Advance(time.Minute)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	released := make(chan struct{})
	var calls atomic.Int32
	opts := Options{Dir: dir, Now: clk.Now, Reserve: testReserve, Logger: quiet, MaxBytes: size * n / 2, QuotaWait: time.Minute, removeBatch: 1}
	opts.OnRemove = func(string, int, int64) {
		if calls.Add(1) != 2 {
			return
		}
		select {
		case <-released:
		case <-time.After(20 * time.Second):
			t.Error("the fill was not let in once eviction had freed its bytes: it waits for the cache to be under the quota")
		}
	}
	c, err = Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	b := randomBytes(t, size)
	w, err := c.NewWriter(sha256Of(b), "", size)
	close(released)
	if err != nil {
		t.Fatalf("NewWriter: %v", err)
	}
	if level := c.bytes.Load() + c.inflight.Load(); level > size*n {
		t.Errorf("stored and reserved bytes %d, more than the %d stored when the fill asked: the cache grew over its quota", level, size*n)
	}
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if used, _ := c.Usage(); used > size*n {
		t.Errorf("usage %d after the fill, more than the %d stored when it asked", used, size*n)
	}

	// Content larger than the whole quota is still refused at once, whatever eviction frees.
	if _, err := c.NewWriter(sha256Of([]byte("huge")), "", size*n/2+1); !errors.Is(err, ErrQuota) {
		t.Errorf("NewWriter larger than the quota over the quota = %v, want ErrQuota", err)
	}
	big := randomBytes(t, size*n/2+1)
	w, err = c.NewWriter(sha256Of(big), "", -1)
	if err != nil {
		t.Fatal(err)
	}
	var werr error
	for chunk := range slices.Chunk(big, size/2) {
		if _, werr = w.Write(chunk); werr != nil {
			break
		}
	}
	if !errors.Is(werr, ErrQuota) {
		t.Errorf("writing more than the quota at unknown size, over the quota = %v, want ErrQuota", werr)
	}
	w.Abort(nil)
	if r := c.inflight.Load(); r != 0 {
		t.Errorf("%d bytes still reserved after the refusals", r)
	}
}

// TestBackgroundRoundRests: a round nobody waits for rests after each slice of its work, evictIdle times as
// long as the slice took (at most evictMaxRest), so that it takes a bounded share of a CPU from serving; while a
// writer waits for room it does not rest.
func TestBackgroundRoundRests(t *testing.T) {
	clk := newClock()
	const size, n = 1000, 30
	c, rm := openQuota(t, clk, Options{MaxBytes: size * n * 100 / 97, removeBatch: 1})
	for range n {
		put(t, c, randomBytes(t, size))
		clk.Advance(time.Minute)
	}
	var mu sync.Mutex
	var rests []time.Duration
	c.rested = func(d time.Duration) {
		mu.Lock()
		rests = append(rests, d)
		mu.Unlock()
	}
	select {
	case <-c.evictRound(): // 97% of the quota: a background round frees down to 90%
	case <-time.After(30 * time.Second):
		t.Fatal("the eviction round did not end within 30 s")
	}
	removed := rm.count(ReasonQuota)
	mu.Lock()
	got := slices.Clone(rests)
	mu.Unlock()
	if removed < 2 || len(got) < removed-1 {
		t.Fatalf("%d objects removed one per batch, %d rests; want a rest between batches", removed, len(got))
	}
	for i, d := range got {
		if d <= 0 || d > evictMaxRest {
			t.Errorf("rest %d: %v, want more than 0 and at most %v", i, d, evictMaxRest)
		}
	}

	// A scan rests after every scanSlice entries it reads.
	mu.Lock()
	rests = nil
	mu.Unlock()
	p := c.newPacer()
	for range 2*scanSlice + 1 {
		if err := p.step(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	if len(rests) != 2 {
		t.Errorf("%d rests in a scan of %d entries, want 2", len(rests), 2*scanSlice+1)
	}
	mu.Unlock()

	// A writer waits for room: the round goes on at once.
	c.asking.Add(1)
	defer c.asking.Add(-1)
	mu.Lock()
	rests = nil
	mu.Unlock()
	p = c.newPacer()
	p.since = time.Now().Add(-time.Hour)
	if err := p.pause(t.Context()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(rests) != 1 || rests[0] != 0 {
		t.Errorf("rests while a writer waits: %v, want one of 0", rests)
	}
}
