package watch

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func parseInt(b []byte) (int, error) { return strconv.Atoi(strings.TrimSpace(string(b))) }

func TestFileReloads(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "v")
	write := func(s string) {
		t.Helper()
		// A new file each time, renamed into place, as editors and kubelet Secret updates do.
		tmp := filepath.Join(dir, "tmp")
		if err := os.WriteFile(tmp, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write("1")
	c := &clock{t: time.Unix(1000, 0)}
	var reloads []error
	f, err := Open(path, parseInt, Options{Now: c.now, OnReload: func(err error) { reloads = append(reloads, err) }})
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name    string
		content string // written before the step; empty: unchanged
		advance time.Duration
		want    int
		wantErr bool
	}{
		{name: "within the interval the old value stays", content: "2", advance: Interval / 2, want: 1},
		{name: "after the interval the change is read", advance: Interval, want: 2},
		{name: "a bad file keeps the last good value", content: "x", advance: Interval, want: 2, wantErr: true},
		{name: "still bad, still the last good value", advance: Interval, want: 2, wantErr: true},
		{name: "fixed", content: "3", advance: Interval, want: 3},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if s.content != "" {
				write(s.content)
			}
			c.t = c.t.Add(s.advance)
			if got := f.Current(); got != s.want {
				t.Fatalf("Current() = %d, want %d", got, s.want)
			}
			if (f.Err() != nil) != s.wantErr {
				t.Fatalf("Err() = %v, want error %v", f.Err(), s.wantErr)
			}
		})
	}
	if len(reloads) == 0 || reloads[len(reloads)-1] != nil {
		t.Fatalf("OnReload heard %v; the last reload succeeded", reloads)
	}
}

func TestFileSizeLimit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(path, []byte("12345678"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(path, parseInt, Options{MaxSize: 4})
	if err == nil || !strings.Contains(err.Error(), "larger than 4 bytes") {
		t.Fatalf("Open of an 8-byte file with MaxSize 4: %v", err)
	}
	if _, err := Open(filepath.Join(t.TempDir(), "missing"), parseInt, Options{}); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Open of a missing file: %v", err)
	}
}
