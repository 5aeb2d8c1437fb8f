package cache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func TestRepairAtOpen(t *testing.T) {
	dir := t.TempDir()
	clk := newClock()
	c := open(t, dir, clk.Now)
	keep := put(t, c, []byte("kept manifest"))
	lost := put(t, c, []byte("manifest whose file is deleted"))
	other := put(t, c, []byte("another blob"))
	for _, tag := range []struct {
		name string
		d    v1.Hash
	}{{"keep", keep.Digest}, {"lost", lost.Digest}} {
		if err := c.SetTag("docker.io", "library/app", tag.name, TagEntry{Digest: tag.d, Fetched: clk.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Link("docker.io", "library/app", other.Digest); err != nil {
		t.Fatal(err)
	}
	if err := c.SetMissing("docker.io", "library/app", "gone", clk.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	// A writer in progress at the time of the "crash".
	w, err := c.NewWriter(sha256Of([]byte("partial")), "", -1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("part")); err != nil {
		t.Fatal(err)
	}
	crash(t, c)

	// What a crash can leave behind, and a file deleted by hand.
	if err := os.WriteFile(filepath.Join(dir, "tmp", "sha256-leftover-123"), []byte("junk"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(c.Path(lost.Digest)); err != nil {
		t.Fatal(err)
	}
	orphanData := []byte("renamed, but the index entry was never written")
	orphan := writeOrphan(t, c, orphanData)

	c = open(t, dir, clk.Now)
	waitRepaired(t, c)
	if n := tempFiles(t, c); len(n) != 0 {
		t.Errorf("temp files after Open: %v", n)
	}
	if _, err := c.Stat(lost.Digest); !errors.Is(err, ErrNotFound) {
		t.Errorf("Stat of the object whose file was deleted = %v, want ErrNotFound", err)
	}
	if _, err := c.Tag("docker.io", "library/app", "lost"); !errors.Is(err, ErrNotFound) {
		t.Errorf("tag pointing at the deleted object = %v, want ErrNotFound", err)
	}
	if _, err := os.Stat(orphan); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("orphan file still there: %v", err)
	}
	for _, o := range []Object{keep, other} {
		if _, err := c.Stat(o.Digest); err != nil {
			t.Errorf("Stat(%s) after reopen: %v", o.Digest, err)
		}
	}
	if e, err := c.Tag("docker.io", "library/app", "keep"); err != nil || e.Digest != keep.Digest {
		t.Errorf("tag after reopen = %+v, %v", e, err)
	}
	if tags, err := c.Tags("docker.io", "library/app"); err != nil || !slices.Equal(tags, []string{"keep"}) {
		t.Errorf("Tags after reopen = %v, %v", tags, err)
	}
	if ok, err := c.Linked("docker.io", "library/app", other.Digest); err != nil || !ok {
		t.Errorf("Linked after reopen = %v, %v", ok, err)
	}
	if ok, err := c.Missing("docker.io", "library/app", "gone"); err != nil || !ok {
		t.Errorf("Missing after reopen = %v, %v", ok, err)
	}
	if b, o := c.Usage(); b != keep.Size+other.Size || o != 2 {
		t.Errorf("Usage after reopen = %d, %d; want %d, 2", b, o, keep.Size+other.Size)
	}
	faults, err := c.Verify(context.Background())
	if err != nil || len(faults) != 0 {
		t.Errorf("Verify after repair = %v, %v", faults, err)
	}
	// The writer from before the crash can no longer store anything.
	if _, err := w.Commit(); err == nil {
		t.Error("Commit of a writer from a closed cache succeeded")
	}
}

func TestRepairWrongSize(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, nil)
	o := put(t, c, []byte("will be truncated"))
	crash(t, c)
	if err := os.Truncate(c.Path(o.Digest), 3); err != nil {
		t.Fatal(err)
	}
	c = open(t, dir, nil)
	waitRepaired(t, c)
	if _, err := c.Stat(o.Digest); !errors.Is(err, ErrNotFound) {
		t.Errorf("Stat = %v, want ErrNotFound", err)
	}
	if _, err := os.Stat(c.Path(o.Digest)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("file of the wrong size still there: %v", err)
	}
	if b, n := c.Usage(); b != 0 || n != 0 {
		t.Errorf("Usage = %d, %d; want 0, 0", b, n)
	}
}

func TestUsageAfterReopen(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, nil)
	var want int64
	for _, n := range []int{0, 1, 1000, 70_000} {
		want += put(t, c, randomBytes(t, n)).Size
	}
	put(t, c, []byte{}) // the empty blob again: no change
	if b, o := c.Usage(); b != want || o != 4 {
		t.Errorf("Usage = %d, %d; want %d, 4", b, o, want)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c = open(t, dir, nil)
	if b, o := c.Usage(); b != want || o != 4 {
		t.Errorf("Usage after reopen = %d, %d; want %d, 4", b, o, want)
	}
}

func TestOpenTwice(t *testing.T) {
	dir := t.TempDir()
	open(t, dir, nil)
	if c, err := Open(Options{Dir: dir}); err == nil {
		c.Close()
		t.Error("a second Open of the same directory succeeded")
	}
	if _, err := Open(Options{}); err == nil {
		t.Error("Open without Dir succeeded")
	}
}

func TestLogsGoToLogger(t *testing.T) {
	var buf lockedBuffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	dir := t.TempDir()
	c, err := Open(Options{Dir: dir, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tmp", "left"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	c, err = Open(Options{Dir: dir, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{`"component":"badger"`, `removed temp file`, `"msg":"cache opened"`} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s:\n%s", want, out)
		}
	}
}

func TestUseAfterClose(t *testing.T) {
	c := open(t, t.TempDir(), nil)
	d := put(t, c, []byte("x")).Digest
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Stat(d); err == nil || errors.Is(err, ErrNotFound) {
		t.Errorf("Stat after Close = %v, want an error that is not a miss", err)
	}
	if _, err := c.NewWriter(d, "", -1); err == nil {
		t.Error("NewWriter after Close succeeded")
	}
	c.Touch(d) // no panic
}

func TestVerify(t *testing.T) {
	type setup struct {
		c    *Cache
		objs []Object
	}
	tests := []struct {
		name    string
		damage  func(t *testing.T, s setup) (digest, path string)
		problem string // substring of the one expected fault's Problem; empty for none
	}{
		{name: "clean", damage: func(*testing.T, setup) (string, string) { return "", "" }},
		{name: "corrupted file", problem: "hashes to", damage: func(t *testing.T, s setup) (string, string) {
			p := s.c.Path(s.objs[1].Digest)
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)/2] ^= 0x01
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			return s.objs[1].Digest.String(), p
		}},
		{name: "truncated file", problem: "bytes, index says", damage: func(t *testing.T, s setup) (string, string) {
			p := s.c.Path(s.objs[0].Digest)
			if err := os.Truncate(p, s.objs[0].Size-1); err != nil {
				t.Fatal(err)
			}
			return s.objs[0].Digest.String(), p
		}},
		{name: "missing file", problem: "index entry without file", damage: func(t *testing.T, s setup) (string, string) {
			p := s.c.Path(s.objs[2].Digest)
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			return s.objs[2].Digest.String(), p
		}},
		{name: "orphan file", problem: "file without index entry", damage: func(t *testing.T, s setup) (string, string) {
			data := []byte("orphan")
			d := sha256Of(data)
			p := s.c.Path(d)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, data, 0o644); err != nil {
				t.Fatal(err)
			}
			return d.String(), p
		}},
		{name: "stray file", problem: "unexpected file", damage: func(t *testing.T, s setup) (string, string) {
			p := filepath.Join(s.c.dir, "blobs", "sha256", "notes.txt")
			if err := os.WriteFile(p, []byte("hello"), 0o644); err != nil {
				t.Fatal(err)
			}
			return "", p
		}},
		{name: "leftover temp file", problem: "leftover temp file", damage: func(t *testing.T, s setup) (string, string) {
			p := filepath.Join(s.c.dir, "tmp", "sha256-left-1")
			if err := os.WriteFile(p, []byte("junk"), 0o644); err != nil {
				t.Fatal(err)
			}
			return "", p
		}},
		{name: "tag at missing object", problem: "points at a missing object", damage: func(t *testing.T, s setup) (string, string) {
			d := sha256Of([]byte("never stored"))
			if err := s.c.SetTag("docker.io", "library/app", "broken", TagEntry{Digest: d}); err != nil {
				t.Fatal(err)
			}
			return d.String(), ""
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := open(t, t.TempDir(), nil)
			s := setup{c: c}
			for _, n := range []int{100, 20_000, 5} {
				s.objs = append(s.objs, put(t, c, randomBytes(t, n)))
			}
			if err := c.SetTag("docker.io", "library/app", "ok", TagEntry{Digest: s.objs[0].Digest}); err != nil {
				t.Fatal(err)
			}
			// A writer in progress is not a leftover.
			w, err := c.NewWriter(sha256Of([]byte("in progress")), "", -1)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Abort(nil)
			if _, err := w.Write([]byte("in")); err != nil {
				t.Fatal(err)
			}

			digest, path := tt.damage(t, s)
			faults, err := c.Verify(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if tt.problem == "" {
				if len(faults) != 0 {
					t.Errorf("faults on a clean cache: %v", faults)
				}
				return
			}
			if len(faults) != 1 {
				t.Fatalf("faults = %v, want one", faults)
			}
			f := faults[0]
			if f.Digest != digest || f.Path != path || !strings.Contains(f.Problem, tt.problem) {
				t.Errorf("fault = %v; want digest %q, path %q, problem containing %q", f, digest, path, tt.problem)
			}
			// Verify repairs nothing.
			if again, err := c.Verify(context.Background()); err != nil || len(again) != 1 {
				t.Errorf("second Verify = %v, %v; want the same fault", again, err)
			}
		})
	}
}

func TestVerifyStopsWithContext(t *testing.T) {
	c := open(t, t.TempDir(), nil)
	put(t, c, randomBytes(t, 1000))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Verify(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Verify = %v, want context.Canceled", err)
	}
}

func TestVerifyFaultsBounded(t *testing.T) {
	c := open(t, t.TempDir(), nil)
	c.faultLimit = 5
	if err := os.MkdirAll(filepath.Join(c.dir, "blobs", "sha256"), 0o700); err != nil {
		t.Fatal(err)
	}
	for i := range 12 {
		if err := os.WriteFile(filepath.Join(c.dir, "blobs", "sha256", fmt.Sprintf("stray-%d", i)), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	faults, err := c.Verify(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(faults) != 6 || faults[5].Problem != "7 more faults not listed" {
		t.Errorf("faults = %v; want 5 and one counting the 7 others", faults)
	}
}
