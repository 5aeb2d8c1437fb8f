package cache

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestCleanStopSkipsScan(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, nil)
	a := put(t, c, []byte("object a"))
	b := put(t, c, []byte("object bb"))
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	// An orphan left by hand after a clean stop: no scan at Open means it stays (Verify reports it).
	orphanData := []byte("not indexed")
	orphan := writeOrphan(t, c, orphanData)
	c = open(t, dir, nil)
	if c.Repairing() {
		t.Error("repairing after a clean stop")
	}
	if _, err := os.Stat(orphan); err != nil {
		t.Errorf("Open scanned the blobs after a clean stop: %v", err)
	}
	if bytes, n := c.Usage(); bytes != a.Size+b.Size || n != 2 {
		t.Errorf("Usage = %d, %d; want %d, 2 from the clean-stop mark", bytes, n, a.Size+b.Size)
	}
	if _, err := os.Stat(filepath.Join(dir, "clean")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the clean-stop mark outlived Open: %v", err)
	}
}

func TestContentChecksTheFile(t *testing.T) {
	tests := []struct {
		name   string
		damage func(path string) error
	}{
		{name: "missing", damage: os.Remove},
		{name: "truncated", damage: func(p string) error { return os.Truncate(p, 2) }},
		{name: "grown", damage: func(p string) error {
			f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return err
			}
			_, err = f.WriteString("more")
			return errors.Join(err, f.Close())
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := open(t, t.TempDir(), nil)
			keep := put(t, c, []byte("kept"))
			o := put(t, c, []byte("damaged from outside"))
			if err := tt.damage(c.Path(o.Digest)); err != nil {
				t.Fatal(err)
			}
			if f, _, err := c.Content(o.Digest); !errors.Is(err, ErrNotFound) {
				if f != nil {
					f.Close()
				}
				t.Fatalf("Content = %v, want ErrNotFound", err)
			}
			if _, err := c.Stat(o.Digest); !errors.Is(err, ErrNotFound) {
				t.Errorf("Stat after Content found the damage = %v, want ErrNotFound", err)
			}
			if bytes, n := c.Usage(); bytes != keep.Size || n != 1 {
				t.Errorf("Usage = %d, %d; want %d, 1", bytes, n, keep.Size)
			}
			put(t, c, []byte("damaged from outside")) // can be stored again
			f, _, err := c.Content(o.Digest)
			if err != nil {
				t.Fatal(err)
			}
			f.Close()
		})
	}
}

func TestRepairRacesWriters(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, nil)
	var want int64
	var kept []Object
	for i := range 300 {
		o := put(t, c, []byte(fmt.Sprintf("object %d", i)))
		if i%10 == 0 {
			if err := os.Remove(c.Path(o.Digest)); err != nil {
				t.Fatal(err)
			}
			continue
		}
		kept = append(kept, o)
		want += o.Size
	}
	crash(t, c)

	c = open(t, dir, nil)
	var wg sync.WaitGroup
	var mu sync.Mutex
	added := int64(0)
	for g := range 4 {
		wg.Go(func() {
			for i := range 50 {
				data := []byte(fmt.Sprintf("new object %d/%d", g, i))
				w, err := c.NewWriter(sha256Of(data), "", int64(len(data)))
				if err != nil {
					t.Error(err)
					return
				}
				w.Write(data)
				if _, err := w.Commit(); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				added += int64(len(data))
				mu.Unlock()
				// Serving and re-storing objects of the repaired set meanwhile.
				o := kept[(g*50+i)%len(kept)]
				if f, _, err := c.Content(o.Digest); err == nil {
					f.Close()
				} else {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	waitRepaired(t, c)
	if bytes, n := c.Usage(); bytes != want+added || n != int64(len(kept)+200) {
		t.Errorf("Usage after repair = %d, %d; want %d, %d", bytes, n, want+added, len(kept)+200)
	}
	faults, err := c.Verify(context.Background())
	if err != nil || len(faults) != 0 {
		t.Errorf("Verify after repair = %v, %v", faults, err)
	}
}

func TestCloseStopsRepair(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, nil)
	var want int64
	for i := range 200 {
		want += put(t, c, []byte(fmt.Sprintf("object %d", i))).Size
	}
	crash(t, c)
	c = open(t, dir, nil)
	stopped := c.Repairing()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if c.Repairing() {
		t.Error("repair still running after Close")
	}
	c = open(t, dir, nil)
	if stopped && !c.Repairing() {
		// The interrupted repair left no clean-stop mark: it must run again (it may already have ended).
		if _, err := os.Stat(filepath.Join(dir, "clean")); err == nil {
			t.Error("clean-stop mark written after an interrupted repair")
		}
	}
	waitRepaired(t, c)
	if bytes, n := c.Usage(); bytes != want || n != 200 {
		t.Errorf("Usage = %d, %d; want %d, 200", bytes, n, want)
	}
}

// TestKillNine kills, with SIGKILL, a child process that stores objects, then opens its cache.
func TestKillNine(t *testing.T) {
	if dir := os.Getenv("PULLGATE_CACHE_TEST_CHILD"); dir != "" {
		killNineChild(dir)
		return
	}
	dir := t.TempDir()
	// A clean stop first: its mark must not be trusted after the crash.
	c := open(t, dir, nil)
	put(t, c, []byte("stored before the clean stop"))
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestKillNine$")
	cmd.Env = append(os.Environ(), "PULLGATE_CACHE_TEST_CHILD="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	committed := 0
	for sc.Scan() && committed < 100 {
		if strings.HasPrefix(sc.Text(), "committed ") {
			committed++
		}
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if committed < 100 {
		t.Fatalf("child committed only %d objects", committed)
	}

	c = open(t, dir, nil)
	waitRepaired(t, c)
	_, n := c.Usage()
	if n < int64(committed)+1 {
		t.Errorf("Usage counts %d objects, the child committed at least %d", n, committed)
	}
	faults, err := c.Verify(context.Background())
	if err != nil || len(faults) != 0 {
		t.Errorf("Verify after the crash and repair = %v, %v", faults, err)
	}
}

func killNineChild(dir string) {
	c, err := Open(Options{Dir: dir})
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(2)
	}
	for i := 0; ; i++ {
		data := []byte(fmt.Sprintf("object %d %s", i, time.Now()))
		w, err := c.NewWriter(sha256Of(data), "", -1)
		if err == nil {
			w.Write(data)
			_, err = w.Commit()
		}
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(2)
		}
		fmt.Println("committed", i)
	}
}

func TestVerifyAfterCrashWaitsForRepair(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, nil)
	var last Object
	for i := range 2000 {
		last = put(t, c, []byte(fmt.Sprintf("object %d", i)))
	}
	if err := os.Remove(c.Path(last.Digest)); err != nil {
		t.Fatal(err)
	}
	crash(t, c)
	c = open(t, dir, nil)
	faults, err := c.Verify(context.Background())
	if err != nil || len(faults) != 0 {
		t.Errorf("Verify right after a crashed Open = %v, %v; want what the repair left: nothing", faults, err)
	}
	if c.Repairing() {
		t.Error("Verify returned while the repair runs")
	}
}

func TestRepairKeepsNewTags(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, nil)
	for i := range 500 {
		put(t, c, []byte(fmt.Sprintf("object %d", i)))
	}
	gone := put(t, c, []byte("manifest whose file is lost"))
	if err := c.SetTag("docker.io", "library/app", "old", TagEntry{Digest: gone.Digest}); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(c.Path(gone.Digest)); err != nil {
		t.Fatal(err)
	}
	crash(t, c)
	c = open(t, dir, nil)
	// Written while the repair runs: a tag whose manifest is not stored yet is not the repair's business.
	pending := sha256Of([]byte("manifest being fetched"))
	if err := c.SetTag("docker.io", "library/app", "new", TagEntry{Digest: pending}); err != nil {
		t.Fatal(err)
	}
	waitRepaired(t, c)
	if _, err := c.Tag("docker.io", "library/app", "new"); err != nil {
		t.Errorf("tag written after Open = %v, want it kept", err)
	}
	if _, err := c.Tag("docker.io", "library/app", "old"); !errors.Is(err, ErrNotFound) {
		t.Errorf("tag whose manifest was lost in the crash = %v, want ErrNotFound", err)
	}
}

func TestNewCacheNeedsNoRepair(t *testing.T) {
	tests := []struct {
		name       string
		orphan     bool
		wantRepair bool
	}{
		{name: "new directory"},
		{name: "index lost, content left", orphan: true, wantRepair: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			var orphan string
			if tt.orphan {
				data := []byte("content without an index")
				orphan = filepath.Join(dir, "blobs", "sha256", sha256Of(data).Hex[:2], sha256Of(data).Hex)
				if err := os.MkdirAll(filepath.Dir(orphan), 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(orphan, data, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			var logs lockedBuffer
			c, err := Open(Options{Dir: dir, Reserve: testReserve, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if want := fmt.Sprintf("repair=%v", tt.wantRepair); !strings.Contains(logs.String(), want) {
				t.Errorf("Open's log lacks %s:\n%s", want, logs.String())
			}
			waitRepaired(t, c)
			if orphan != "" {
				if _, err := os.Stat(orphan); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("content file without an index entry kept: %v", err)
				}
			}
		})
	}
}

// TestSecondOpenTouchesNothing checks that opening a data directory another Cache holds fails before anything
// in it changes: a running fill keeps its temp file, and the running cache's index keeps working.
func TestSecondOpenTouchesNothing(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, newClock().Now)
	b := randomBytes(t, 4096)
	w, err := c.NewWriter(sha256Of(b), "application/octet-stream", int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(b[:1000]); err != nil {
		t.Fatal(err)
	}
	before := tempFiles(t, c)
	if len(before) == 0 {
		t.Fatal("the writer has no temp file")
	}
	if second, err := Open(Options{Dir: dir, Reserve: testReserve, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}); err == nil {
		_ = second.Close()
		t.Fatal("a second Open of a data directory in use succeeded")
	}
	if after := tempFiles(t, c); !slices.Equal(before, after) {
		t.Fatalf("the second Open changed tmp/: %v, then %v", before, after)
	}
	if _, err := w.Write(b[1000:]); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(); err != nil {
		t.Fatalf("Commit after the second Open: %v", err)
	}
}
