package identity

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLastUseRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), LastUseFile)
	paris := time.FixedZone("CET", 3600)
	in := LastUse{
		"ci":      time.Date(2026, 3, 1, 12, 30, 45, 999_000_000, paris),
		"builder": time.Date(2025, 12, 31, 23, 59, 59, 0, time.UTC),
	}
	if err := in.Write(path); err != nil {
		t.Fatal(err)
	}
	out, err := ReadLastUse(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != len(in) {
		t.Fatalf("read %d robots, wrote %d: %v", len(out), len(in), out)
	}
	for name, want := range in {
		// Kept to the second: the fraction is dropped, the instant is the same.
		if got := out[name]; !got.Equal(want.Truncate(time.Second)) {
			t.Errorf("%s: read %v, wrote %v", name, got, want)
		}
	}
}

func TestLastUseFileForm(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, LastUseFile)
	if err := (LastUse{"ci": time.Date(2026, 3, 1, 11, 30, 45, 0, time.FixedZone("CET", 3600))}).Write(path); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(bytes.TrimSpace(data)), `{"robots":{"ci":"2026-03-01T10:30:45Z"}}`; got != want {
		t.Fatalf("file holds %s, want %s", got, want)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if mode := st.Mode().Perm(); mode != 0o600 {
		t.Fatalf("mode %v, want 0600", mode)
	}
	// Written atomically: a rewrite puts a new file in place (a reader of the old one reads it whole) and
	// leaves no temporary file behind.
	old, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := (LastUse{}).Write(path); err != nil {
		t.Fatal(err)
	}
	if stale, err := io.ReadAll(old); err != nil || !bytes.Equal(stale, data) {
		t.Fatalf("the old file changed under its reader: %q, %v", stale, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != LastUseFile {
		t.Fatalf("directory holds %v, want only %s", entries, LastUseFile)
	}
	data, _ = os.ReadFile(path)
	if got := string(bytes.TrimSpace(data)); got != `{"robots":{}}` {
		t.Fatalf("an empty LastUse is written as %s", got)
	}
}

func TestReadLastUse(t *testing.T) {
	big := `{"robots":{"a":"` + strings.Repeat("x", maxFileSize) + `"}}`
	tests := []struct {
		name    string
		content *string // nil: no file
		want    LastUse
		wantErr string
	}{
		{name: "missing file is empty", content: nil, want: LastUse{}},
		{name: "one robot", content: lastUseText(`{"robots":{"ci":"2026-01-02T03:04:05Z"}}`), want: LastUse{"ci": time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}},
		{name: "no robots", content: lastUseText(`{"robots":{}}`), want: LastUse{}},
		{name: "not json", content: lastUseText(`robots: []`), wantErr: "last-use file"},
		{name: "not a time", content: lastUseText(`{"robots":{"ci":"yesterday"}}`), wantErr: `robot "ci"`},
		{name: "larger than 4 MiB", content: &big, wantErr: "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), LastUseFile)
			if tt.content != nil {
				if err := os.WriteFile(path, []byte(*tt.content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			got, err := ReadLastUse(path)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got == nil {
				t.Fatal("nil LastUse: callers may record into it")
			}
			gotJSON, _ := json.Marshal(got)
			wantJSON, _ := json.Marshal(tt.want)
			if string(gotJSON) != string(wantJSON) {
				t.Fatalf("read %s, want %s", gotJSON, wantJSON)
			}
		})
	}
}

func TestReadLastUseUnreadable(t *testing.T) {
	// A directory where the file should be is an error, not "never used".
	path := filepath.Join(t.TempDir(), LastUseFile)
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadLastUse(path); err == nil {
		t.Fatal("no error reading a directory")
	}
}

func lastUseText(s string) *string { return &s }

func TestLastUseWriteBounded(t *testing.T) {
	// A file ReadLastUse would refuse is never written: the write fails and the old file stays.
	path := filepath.Join(t.TempDir(), LastUseFile)
	if err := (LastUse{"ci": time.Unix(0, 0)}).Write(path); err != nil {
		t.Fatal(err)
	}
	big := LastUse{}
	for i := 0; len(big)*(maxRobotName+26) <= maxFileSize; i++ {
		big[fmt.Sprintf("%0*d", maxRobotName, i)] = time.Unix(0, 0)
	}
	if err := big.Write(path); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("writing %d robots: %v, want an error", len(big), err)
	}
	l, err := ReadLastUse(path)
	if err != nil || len(l) != 1 {
		t.Fatalf("after a refused write: %v, %v", l, err)
	}
}
