package cache

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// clock is an injectable clock that tests move by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// testReserve keeps the tests' ballast files small.
const testReserve = 1 << 20

// open opens a cache in dir and closes it when the test ends (closing twice is harmless).
func open(t *testing.T, dir string, now func() time.Time) *Cache {
	t.Helper()
	c, err := Open(Options{Dir: dir, Now: now, Reserve: testReserve, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func sha256Of(b []byte) v1.Hash {
	s := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(s[:])}
}

func sha512Of(b []byte) v1.Hash {
	s := sha512.Sum512(b)
	return v1.Hash{Algorithm: "sha512", Hex: hex.EncodeToString(s[:])}
}

// put stores b under its sha256 digest.
func put(t *testing.T, c *Cache, b []byte) Object {
	t.Helper()
	w, err := c.NewWriter(sha256Of(b), "application/octet-stream", int64(len(b)))
	if err != nil {
		t.Fatalf("NewWriter: %v", err)
	}
	if _, err := w.Write(b); err != nil {
		t.Fatalf("Write: %v", err)
	}
	o, err := w.Commit()
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	return o
}

// tempFiles lists the names in Dir/tmp.
func tempFiles(t *testing.T, c *Cache) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(c.dir, "tmp"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// readResult is what a reader goroutine saw.
type readResult struct {
	data []byte
	err  error
}

// readAll reads r to the end in a goroutine.
func readAll(r io.ReadCloser) <-chan readResult {
	ch := make(chan readResult, 1)
	go func() {
		defer r.Close()
		b, err := io.ReadAll(r)
		ch <- readResult{b, err}
	}()
	return ch
}

// lockedBuffer is a bytes.Buffer for a logger written from several goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitResult waits for a reader goroutine, failing the test after a generous deadline.
func waitResult(t *testing.T, ch <-chan readResult) readResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(20 * time.Second):
		t.Fatal("reader did not finish")
		return readResult{}
	}
}

// crash closes c as a crash would leave it: without the mark of a clean stop, so that the next Open repairs.
func crash(t *testing.T, c *Cache) {
	t.Helper()
	c.exact.Store(false)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

// waitRepaired waits for the background repair of c to end, failing the test after a generous deadline.
func waitRepaired(t *testing.T, c *Cache) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for c.Repairing() {
		if time.Now().After(deadline) {
			t.Fatal("repair did not finish")
		}
		time.Sleep(time.Millisecond)
	}
}

// writeOrphan puts data where the content of its digest belongs, without an index entry (what a crash between
// the rename and the index write leaves), and returns the path.
func writeOrphan(t *testing.T, c *Cache, data []byte) string {
	t.Helper()
	p := c.Path(sha256Of(data))
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
