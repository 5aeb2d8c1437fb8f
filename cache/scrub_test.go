package cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// fakeSleep stands for the scrub's timer: it records each wait, calls hook (when set) with the number of the
// wait (from 1), then moves the clock on by the wait, without waiting.
type fakeSleep struct {
	clk  *clock
	hook func(n int, d time.Duration)

	mu    sync.Mutex
	waits []time.Duration
}

func (f *fakeSleep) sleep(ctx context.Context, d time.Duration) error {
	f.mu.Lock()
	f.waits = append(f.waits, d)
	n := len(f.waits)
	f.mu.Unlock()
	if f.hook != nil {
		f.hook(n, d)
	}
	f.clk.Advance(d)
	return ctx.Err()
}

func (f *fakeSleep) recorded() []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.waits)
}

// putAs stores b under d (sha256 or sha512).
func putAs(t *testing.T, c *Cache, d v1.Hash, b []byte) Object {
	t.Helper()
	w, err := c.NewWriter(d, "", int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	o, err := w.Commit()
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// readContent returns the cached bytes of d.
func readContent(t *testing.T, c *Cache, d v1.Hash) []byte {
	t.Helper()
	f, _, err := c.Content(d)
	if err != nil {
		t.Fatalf("Content(%s): %v", d, err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// savedCursor returns the scrub's saved place, "" when there is none.
func savedCursor(t *testing.T, c *Cache) string {
	t.Helper()
	s, err := c.scrubCursor()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// sortedDigests returns the digests of objs in the order a pass visits them.
func sortedDigests(objs []Object) []string {
	var ds []string
	for _, o := range objs {
		ds = append(ds, o.Digest.String())
	}
	slices.Sort(ds)
	return ds
}

func TestScrubGoodObjects(t *testing.T) {
	clk := newClock()
	c := open(t, t.TempDir(), clk.Now)
	big := randomBytes(t, 2*scrubChunk+12345) // several chunks
	small := randomBytes(t, 1000)
	objs := []Object{
		put(t, c, big),
		put(t, c, small),
		put(t, c, []byte{}),
		putAs(t, c, sha512Of(small), small),
	}
	var want int64
	for _, o := range objs {
		want += o.Size
	}
	for pass := 1; pass <= 2; pass++ {
		var corrupt []string
		st, err := c.Scrub(t.Context(), ScrubOptions{OnCorrupt: func(o Object, p string) { corrupt = append(corrupt, p) }})
		if err != nil {
			t.Fatal(err)
		}
		if st != (ScrubStats{Objects: int64(len(objs)), Bytes: want, Complete: true}) || corrupt != nil {
			t.Errorf("pass %d: Scrub = %+v, OnCorrupt %q; want %d objects, %d bytes, nothing removed", pass, st, corrupt, len(objs), want)
		}
	}
	for _, o := range objs {
		if _, err := c.Stat(o.Digest); err != nil {
			t.Errorf("Stat(%s) after scrub: %v", o.Digest, err)
		}
	}
	if b, n := c.Usage(); b != want || n != int64(len(objs)) {
		t.Errorf("Usage = %d bytes, %d objects; want %d, %d", b, n, want, len(objs))
	}
}

func TestScrubRemovesDamaged(t *testing.T) {
	tests := []struct {
		name    string
		damage  func(t *testing.T, path string)
		problem string
		read    int64 // bytes of the damaged file read: none when its size is wrong
	}{
		{"one byte flipped", func(t *testing.T, p string) {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)/2] ^= 1
			writeOver(t, p, b)
		}, "content hashes to sha256:", 5000},
		{"truncated", func(t *testing.T, p string) {
			if err := os.Truncate(p, 10); err != nil {
				t.Fatal(err)
			}
		}, "file has 10 bytes, index says 5000", 0},
		{"one byte longer", func(t *testing.T, p string) {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			writeOver(t, p, append(b, 0))
		}, "file has 5001 bytes, index says 5000", 0},
		{"file deleted", func(t *testing.T, p string) {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
		}, "index entry without a regular file", 0},
		{"replaced by a symbolic link", func(t *testing.T, p string) {
			good := p + ".elsewhere"
			if err := os.Rename(p, good); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(good, p); err != nil {
				t.Fatal(err)
			}
		}, "index entry without a regular file", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			var logs lockedBuffer
			c, err := Open(Options{Dir: t.TempDir(), Now: clk.Now, Reserve: testReserve, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = c.Close() })
			good := put(t, c, randomBytes(t, 3000))
			data := randomBytes(t, 5000)
			bad := put(t, c, data)
			tt.damage(t, c.Path(bad.Digest))

			type call struct {
				d       v1.Hash
				problem string
			}
			var calls []call
			st, err := c.Scrub(t.Context(), ScrubOptions{OnCorrupt: func(o Object, p string) { calls = append(calls, call{o.Digest, p}) }})
			if err != nil {
				t.Fatal(err)
			}
			if st.Removed != 1 || st.Objects != 2 || st.Bytes != good.Size+tt.read || !st.Complete {
				t.Errorf("Scrub = %+v, want 2 objects checked, %d bytes read, 1 removed, complete", st, good.Size+tt.read)
			}
			if len(calls) != 1 || calls[0].d != bad.Digest || !strings.Contains(calls[0].problem, tt.problem) {
				t.Errorf("OnCorrupt calls = %+v, want one for %s saying %q", calls, bad.Digest, tt.problem)
			}
			if _, err := c.Stat(bad.Digest); !errors.Is(err, ErrNotFound) {
				t.Errorf("Stat of the damaged object = %v, want ErrNotFound", err)
			}
			if fi, err := os.Lstat(c.Path(bad.Digest)); err == nil && fi.Mode().IsRegular() {
				t.Errorf("the damaged file is still there")
			}
			if b, n := c.Usage(); b != good.Size || n != 1 {
				t.Errorf("Usage = %d bytes, %d objects; want %d, 1", b, n, good.Size)
			}
			if !strings.Contains(logs.String(), bad.Digest.String()) {
				t.Errorf("no log line names %s:\n%s", bad.Digest, logs.String())
			}
			if _, err := c.Stat(good.Digest); err != nil {
				t.Errorf("the good object: %v", err)
			}
			// The next pull stores it again.
			if err := os.Remove(c.Path(bad.Digest)); err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err) // a symbolic link the scrub left (it never removes what is not a regular file)
			}
			put(t, c, data)
			if got := readContent(t, c, bad.Digest); !bytes.Equal(got, data) {
				t.Errorf("content stored again differs")
			}
			if b, n := c.Usage(); b != good.Size+bad.Size || n != 2 {
				t.Errorf("Usage after storing again = %d bytes, %d objects; want %d, 2", b, n, good.Size+bad.Size)
			}
		})
	}
}

// writeOver replaces the content of the file at p in place.
func writeOver(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestScrubRate(t *testing.T) {
	sizes := []int{3*scrubChunk + 17, 100 << 10, 1, 0, 5000}
	tests := []struct {
		name string
		rate int64
		// stall moves the clock on by an hour in the first wait, as a slow disk or a suspended process would:
		// the time is not banked for a burst beyond one chunk.
		stall bool
	}{
		{"no limit", 0, false},
		{"1 MiB/s", 1 << 20, false},
		{"10 MB/s", 10_000_000, false},
		{"100 KiB/s, less than a chunk", 100 << 10, false},
		{"1 MiB/s after a stall", 1 << 20, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			c := open(t, t.TempDir(), clk.Now)
			var n int64
			for _, s := range sizes {
				put(t, c, randomBytes(t, s))
				n += int64(s)
			}
			fs := &fakeSleep{clk: clk}
			if tt.stall {
				fs.hook = func(n int, _ time.Duration) {
					if n == 1 {
						clk.Advance(time.Hour)
					}
				}
			}
			st, err := c.Scrub(t.Context(), ScrubOptions{Rate: tt.rate, sleep: fs.sleep})
			if err != nil {
				t.Fatal(err)
			}
			if st.Bytes != n || !st.Complete {
				t.Fatalf("Scrub = %+v, want %d bytes, complete", st, n)
			}
			waits := fs.recorded()
			if tt.rate <= 0 {
				if len(waits) != 0 {
					t.Errorf("no limit, yet waited %v", waits)
				}
				return
			}
			var sum time.Duration
			for _, w := range waits {
				sum += w
			}
			// Reading N bytes takes N/R, rounding aside, and no burst is more than one chunk.
			want := time.Duration(float64(n) / float64(tt.rate) * float64(time.Second))
			chunk := time.Duration(float64(scrubChunk) / float64(tt.rate) * float64(time.Second))
			if tt.stall {
				want -= chunk // the one chunk the bucket holds
			}
			if sum < want-time.Millisecond || sum > want+time.Millisecond {
				t.Errorf("waited %v in all for %d bytes at %d B/s, want about %v", sum, n, tt.rate, want)
			}
			burst := chunk + time.Millisecond
			for _, w := range waits {
				if w <= 0 || w > burst {
					t.Errorf("a wait of %v, want one in (0, %v]", w, burst)
				}
			}
		})
	}
}

func TestScrubResumes(t *testing.T) {
	dir := t.TempDir()
	clk := newClock()
	c := open(t, dir, clk.Now)
	var objs []Object
	for range 10 {
		objs = append(objs, put(t, c, randomBytes(t, 200)))
	}
	order := sortedDigests(objs)

	// At 1 B/s every object is a wait, after it was read: stop in the fifth one's.
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var midCursor string
	fs := &fakeSleep{clk: clk, hook: func(n int, _ time.Duration) {
		if n == 5 {
			midCursor = savedCursor(t, c)
			cancel()
		}
	}}
	st, err := c.Scrub(ctx, ScrubOptions{Rate: 1, sleep: fs.sleep, batch: 3})
	if !errors.Is(err, context.Canceled) || st.Objects != 4 || st.Complete {
		t.Fatalf("cancelled Scrub = %+v, %v; want 4 objects, context.Canceled", st, err)
	}
	if midCursor != order[2] {
		t.Errorf("cursor saved after the first batch of 3 = %q, want %q", midCursor, order[2])
	}
	if got := savedCursor(t, c); got != order[3] {
		t.Errorf("cursor saved when cancelled = %q, want the fourth object %q", got, order[3])
	}
	if last, err := c.LastScrub(); err != nil || !last.IsZero() {
		t.Errorf("LastScrub after an incomplete pass = %v, %v; want zero", last, err)
	}

	// A restart resumes after the cursor: the second call checks only the six objects left.
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c = open(t, dir, clk.Now)
	var opened []string
	hook := ScrubOptions{batch: 3, OnCorrupt: func(o Object, _ string) { opened = append(opened, o.Digest.String()) }}
	// Damage every object: each one the pass checks is removed and named to OnCorrupt.
	for _, o := range objs {
		writeOver(t, c.Path(o.Digest), make([]byte, o.Size))
	}
	clk.Advance(time.Minute)
	st, err = c.Scrub(t.Context(), hook)
	if err != nil || st.Objects != 6 || !st.Complete {
		t.Fatalf("resumed Scrub = %+v, %v; want 6 objects, complete", st, err)
	}
	if !slices.Equal(opened, order[4:]) {
		t.Errorf("resumed pass checked %q, want %q", opened, order[4:])
	}
	if got := savedCursor(t, c); got != "" {
		t.Errorf("cursor after a complete pass = %q, want none", got)
	}
	if last, err := c.LastScrub(); err != nil || !last.Equal(clk.Now()) {
		t.Errorf("LastScrub = %v, %v; want %v", last, err, clk.Now())
	}

	// A complete pass starts the next one from the first object.
	st, err = c.Scrub(t.Context(), hook)
	if err != nil || st.Objects != 4 || st.Removed != 4 || !st.Complete {
		t.Errorf("next Scrub = %+v, %v; want the 4 objects left, removed, complete", st, err)
	}
}

func TestScrubReinstalledMeanwhile(t *testing.T) {
	clk := newClock()
	c := open(t, t.TempDir(), clk.Now)
	data := randomBytes(t, 4000)
	o := put(t, c, data)
	p := c.Path(o.Digest)
	writeOver(t, p, make([]byte, len(data)))

	// The wait after the read is where another fill can put the object back: the pass saw a damaged file,
	// yet the entry is not the one it read.
	fs := &fakeSleep{clk: clk, hook: func(n int, _ time.Duration) {
		if n != 1 {
			return
		}
		if err := os.Remove(p); err != nil {
			t.Error(err)
		}
		clk.Advance(time.Second)
		put(t, c, data)
	}}
	var calls int
	st, err := c.Scrub(t.Context(), ScrubOptions{Rate: 1 << 20, sleep: fs.sleep, OnCorrupt: func(Object, string) { calls++ }})
	if err != nil {
		t.Fatal(err)
	}
	if len(fs.recorded()) == 0 {
		t.Fatal("the pass never waited: the object was not put back in the middle")
	}
	if st.Removed != 0 || calls != 0 {
		t.Errorf("Scrub = %+v with %d OnCorrupt calls; the re-installed object must stay", st, calls)
	}
	if got := readContent(t, c, o.Digest); !bytes.Equal(got, data) {
		t.Errorf("the re-installed content is not served")
	}
	if b, n := c.Usage(); b != o.Size || n != 1 {
		t.Errorf("Usage = %d bytes, %d objects; want %d, 1", b, n, o.Size)
	}

	// Removed by someone else meanwhile: nothing to do.
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if _, err := c.dropBroken(o.Digest); err != nil {
		t.Fatal(err)
	}
	if removed, err := c.dropCorrupt(o, "test"); removed || err != nil {
		t.Errorf("dropCorrupt of an object already gone = %v, %v; want false, nil", removed, err)
	}
}

func TestScrubIndexFull(t *testing.T) {
	clk := newClock()
	c := open(t, t.TempDir(), clk.Now)
	var objs []Object
	for range 5 {
		objs = append(objs, put(t, c, randomBytes(t, 300)))
	}
	bad := objs[2]
	writeOver(t, c.Path(bad.Digest), make([]byte, bad.Size))
	// Every index write is refused: the reserve is more than the disk.
	c.space.reserve.Store(math.MaxInt64 / 4)
	c.space.stale()
	st, err := c.Scrub(t.Context(), ScrubOptions{batch: 2})
	if err != nil || st.Objects != 5 || st.Removed != 1 || !st.Complete {
		t.Fatalf("Scrub with a full index = %+v, %v; want 5 objects, 1 removed, complete", st, err)
	}
	if got := savedCursor(t, c); got != "" {
		t.Errorf("cursor %q saved though the index is full", got)
	}
	if _, _, err := c.Content(bad.Digest); !errors.Is(err, ErrNotFound) {
		t.Errorf("Content of the damaged object = %v, want ErrNotFound", err)
	}
	if _, err := os.Stat(c.Path(bad.Digest)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the damaged file is still there: %v", err)
	}
}

func TestRunScrubWaitsForInterval(t *testing.T) {
	const interval = 24 * time.Hour
	tests := []struct {
		name string
		// prepare runs on a cache with 4 objects, at the clock's start.
		prepare func(t *testing.T, c *Cache, clk *clock)
		// firstWait is the first wait RunScrub asks for; passBefore says whether a pass runs before it.
		firstWait  time.Duration
		passBefore bool
	}{
		{"never scrubbed", func(*testing.T, *Cache, *clock) {}, interval, true},
		{"last pass an hour ago", func(t *testing.T, c *Cache, clk *clock) {
			if _, err := c.Scrub(t.Context(), ScrubOptions{}); err != nil {
				t.Fatal(err)
			}
			clk.Advance(time.Hour)
		}, interval - time.Hour, false},
		{"last pass longer ago than the interval", func(t *testing.T, c *Cache, clk *clock) {
			if _, err := c.Scrub(t.Context(), ScrubOptions{}); err != nil {
				t.Fatal(err)
			}
			clk.Advance(3 * interval)
		}, interval, true},
		{"pass interrupted", func(t *testing.T, c *Cache, clk *clock) {
			if _, err := c.Scrub(t.Context(), ScrubOptions{}); err != nil {
				t.Fatal(err)
			}
			clk.Advance(time.Hour)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			fs := &fakeSleep{clk: clk, hook: func(n int, _ time.Duration) {
				if n == 2 {
					cancel()
				}
			}}
			if _, err := c.Scrub(ctx, ScrubOptions{Rate: 1, sleep: fs.sleep}); !errors.Is(err, context.Canceled) {
				t.Fatalf("interrupted Scrub: %v", err)
			}
		}, interval, true},
		{"clock set back", func(t *testing.T, c *Cache, clk *clock) {
			clk.Advance(10 * interval)
			if _, err := c.Scrub(t.Context(), ScrubOptions{}); err != nil {
				t.Fatal(err)
			}
			clk.Advance(-9 * interval)
		}, interval, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			clk := newClock()
			c := open(t, dir, clk.Now)
			for range 4 {
				put(t, c, randomBytes(t, 100))
			}
			tt.prepare(t, c, clk)
			// The schedule is in the index: it survives a restart.
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			c = open(t, dir, clk.Now)
			bad := put(t, c, randomBytes(t, 100))
			writeOver(t, c.Path(bad.Digest), make([]byte, bad.Size))

			type seen struct {
				wait    time.Duration
				removed int
				last    time.Time
				now     time.Time
			}
			var removed int
			var at []seen
			// A RunScrub that never waits would loop until this deadline.
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			fs := &fakeSleep{clk: clk, hook: func(n int, d time.Duration) {
				last, err := c.LastScrub()
				if err != nil {
					t.Error(err)
				}
				at = append(at, seen{d, removed, last, clk.Now()})
				if n == 3 {
					cancel()
				}
			}}
			err := c.RunScrub(ctx, ScrubOptions{Interval: interval, sleep: fs.sleep, OnCorrupt: func(Object, string) { removed++ }})
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("RunScrub = %v, want context.Canceled", err)
			}
			if len(at) != 3 {
				t.Fatalf("waits %+v, want 3", at)
			}
			if at[0].wait != tt.firstWait {
				t.Errorf("first wait %v, want %v", at[0].wait, tt.firstWait)
			}
			if ran := at[0].last.Equal(at[0].now); ran != tt.passBefore {
				t.Errorf("a pass ran before the first wait: %v, want %v (%+v)", ran, tt.passBefore, at[0])
			}
			// Then a pass after every wait, each followed by a full interval's wait (a pass takes no time
			// on this clock).
			for i, s := range at[1:] {
				if s.wait != interval || !s.last.Equal(s.now) || s.removed != 1 {
					t.Errorf("wait %d: %+v; want %v after a pass ending now, the damaged object removed once", i+2, s, interval)
				}
			}
			if at[2].now.Sub(at[1].now) != interval {
				t.Errorf("passes %v apart, want %v", at[2].now.Sub(at[1].now), interval)
			}
		})
	}
}

func TestScrubWaitsForRepair(t *testing.T) {
	clk := newClock()
	c := open(t, t.TempDir(), clk.Now)
	bad := put(t, c, randomBytes(t, 100))
	writeOver(t, c.Path(bad.Digest), make([]byte, bad.Size))
	// As if Open had started a repair that has not ended: neither call may touch anything until it does.
	repaired := c.repaired
	c.repaired = make(chan struct{})
	// The calls end with their contexts; one that did not wait would finish its pass long before.
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if st, err := c.Scrub(ctx, ScrubOptions{}); !errors.Is(err, context.DeadlineExceeded) || st != (ScrubStats{}) {
		t.Errorf("Scrub during the repair = %+v, %v; want nothing done, context.DeadlineExceeded", st, err)
	}
	ctx, cancel = context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if err := c.RunScrub(ctx, ScrubOptions{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("RunScrub during the repair = %v, want context.DeadlineExceeded", err)
	}
	if _, err := c.Stat(bad.Digest); err != nil {
		t.Errorf("the damaged object was removed during the repair: %v", err)
	}
	close(c.repaired)
	c.repaired = repaired
	if st, err := c.Scrub(t.Context(), ScrubOptions{}); err != nil || st.Removed != 1 {
		t.Errorf("Scrub after the repair = %+v, %v; want the damaged object removed", st, err)
	}
}
