package cache

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tmpfs mounts a tmpfs of size bytes on a temp directory, unmounted when the test ends. Mounting needs root:
// the test skips without it, except under CI=true, where it fails.
func tmpfs(t *testing.T, size string) string {
	t.Helper()
	need := func(why string) {
		if os.Getenv("CI") == "true" {
			t.Fatal(why)
		}
		t.Skip(why)
	}
	if os.Geteuid() != 0 {
		need("mounting a tmpfs needs root")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", mnt).CombinedOutput(); err != nil {
		need("mount tmpfs: " + err.Error() + ": " + string(out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	return mnt
}

// fillDisk writes the file path until its filesystem has no space left.
func fillDisk(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, n := range []int{1 << 20, 4 << 10, 1} {
		buf := make([]byte, n)
		for {
			if _, err := f.Write(buf); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatal(err)
				}
				break
			}
		}
	}
	if free, _, err := statfs(filepath.Dir(path)); err != nil || free != 0 {
		t.Fatalf("after filling: %d bytes free, %v", free, err)
	}
}

// waitFor polls cond until it holds, failing the test after a generous deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestFullDisk(t *testing.T) {
	const reserve = 8 << 20
	tests := []struct {
		name       string
		beforeOpen bool
	}{
		{name: "full while running"},
		{name: "full before Open", beforeOpen: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mnt := tmpfs(t, "64m")
			dir := filepath.Join(mnt, "data")
			clk := newClock()
			opts := Options{Dir: dir, Now: clk.Now, Reserve: reserve, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
			openFull := func() *Cache {
				t.Helper()
				c, err := Open(opts)
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				t.Cleanup(func() { c.Close() })
				return c
			}
			c := openFull()
			waitFor(t, "the ballast", c.space.hasBallast)
			small := []byte("a small manifest")
			large := randomBytes(t, 300<<10)
			a, b := put(t, c, small), put(t, c, large)
			if err := c.SetTag("docker.io", "library/app", "v1", TagEntry{Digest: a.Digest}); err != nil {
				t.Fatal(err)
			}

			fill := filepath.Join(mnt, "fill")
			if tt.beforeOpen {
				if err := c.Close(); err != nil {
					t.Fatal(err)
				}
				fillDisk(t, fill)
				c = openFull()
			} else {
				fillDisk(t, fill)
				clk.Advance(2 * spaceInterval) // the next check reads the free space again
			}

			// Cached content is served.
			serves := func(c *Cache) {
				t.Helper()
				for _, want := range []struct {
					o    Object
					data []byte
				}{{a, small}, {b, large}} {
					f, _, err := c.Content(want.o.Digest)
					if err != nil {
						t.Fatalf("Content on a full disk: %v", err)
					}
					got, err := io.ReadAll(f)
					f.Close()
					if err != nil || !bytes.Equal(got, want.data) {
						t.Errorf("Content on a full disk: %d bytes, %v", len(got), err)
					}
				}
				if e, err := c.Tag("docker.io", "library/app", "v1"); err != nil || e.Digest != a.Digest {
					t.Errorf("Tag on a full disk = %+v, %v", e, err)
				}
			}
			serves(c)

			// New fills are refused, with a clear error.
			_, err := c.NewWriter(sha256Of([]byte("new")), "", 3)
			if !errors.Is(err, ErrFull) || !strings.Contains(err.Error(), "bytes free") {
				t.Errorf("NewWriter on a full disk = %v, want ErrFull saying how much is free", err)
			}
			// Index writes stop before the index runs out of room (the process would die of SIGBUS).
			for i := 0; ; i++ {
				c.Touch(sha256Of([]byte{byte(i), byte(i >> 8), byte(i >> 16)}))
				err := c.SetTag("docker.io", "library/app", strings.Repeat("t", 100)+string(rune('a'+i%26))+string(rune('a'+i/26%26))+string(rune('a'+i/676%26)), TagEntry{Digest: a.Digest})
				if errors.Is(err, ErrFull) {
					break
				}
				if err != nil {
					t.Fatalf("SetTag %d: %v", i, err)
				}
				if i == 17000 {
					t.Fatal("index writes were never refused on a full disk")
				}
			}
			if err := c.Link("docker.io", "library/app", b.Digest); !errors.Is(err, ErrFull) {
				t.Errorf("Link on a full disk = %v, want ErrFull", err)
			}

			// A restart on the full disk serves too.
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			c = openFull()
			serves(c)

			// Space back: fills work again and the ballast comes back.
			if err := os.Remove(fill); err != nil {
				t.Fatal(err)
			}
			clk.Advance(2 * spaceInterval)
			put(t, c, []byte("after the disk had room again"))
			waitFor(t, "the ballast to come back", c.space.hasBallast)
		})
	}
}

func TestFullDiskDuringFill(t *testing.T) {
	mnt := tmpfs(t, "32m")
	clk := newClock()
	c, err := Open(Options{Dir: filepath.Join(mnt, "data"), Now: clk.Now, Reserve: 4 << 20, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A fill of unknown size stops at the reserve, whatever its size.
	data := randomBytes(t, 40<<20)
	w, err := c.NewWriter(sha256Of(data), "", -1)
	if err != nil {
		t.Fatal(err)
	}
	reader := w.NewReader(t.Context())
	defer reader.Close() // before the unmount
	r := make(chan readResult, 1)
	go func() {
		b, err := io.ReadAll(reader)
		r <- readResult{b, err}
	}()
	var werr error
	for off := 0; off < len(data) && werr == nil; off += 64 << 10 {
		_, werr = w.Write(data[off:min(off+64<<10, len(data))])
	}
	if !errors.Is(werr, ErrFull) {
		t.Fatalf("Write past the reserve = %v, want ErrFull", werr)
	}
	if res := waitResult(t, r); !errors.Is(res.err, ErrFull) {
		t.Errorf("reader got %v, want ErrFull", res.err)
	}
	if free, _, err := statfs(mnt); err != nil || free < 2<<20 {
		t.Errorf("%d bytes free after the refused fill (%v); the reserve was not kept", free, err)
	}
	if n := tempFiles(t, c); len(n) != 0 {
		t.Errorf("temp files left: %v", n)
	}
	// An announced size that does not fit is refused at once.
	if w, err := c.NewWriter(sha256Of([]byte("big")), "", 40<<20); !errors.Is(err, ErrFull) {
		if w != nil {
			w.Abort(nil)
		}
		t.Errorf("NewWriter of 40 MiB on a 32 MiB disk = %v, want ErrFull", err)
	}
}

func TestReserveFitsSmallDisks(t *testing.T) {
	mnt := tmpfs(t, "32m")
	c, err := Open(Options{Dir: filepath.Join(mnt, "data"), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.space.reserve.Load(); got != 4<<20 {
		t.Errorf("reserve on a 32 MiB filesystem = %d, want an eighth of it", got)
	}
	// A 16 MiB fill fits on the 32 MiB disk: the 64 MiB default alone would refuse everything.
	data := randomBytes(t, 16<<20)
	w, err := c.NewWriter(sha256Of(data), "", int64(len(data)))
	if err != nil {
		t.Fatalf("NewWriter of 16 MiB on a 32 MiB disk: %v", err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.NewWriter(sha256Of([]byte("x")), "", 14<<20); !errors.Is(err, ErrFull) || !strings.Contains(err.Error(), "no space left on device") {
		t.Errorf("NewWriter of 14 MiB more = %v, want ErrFull (no space left on device)", err)
	}
}
