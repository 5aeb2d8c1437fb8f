package cache

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestPrivateModes(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string)
	}{
		{name: "new directory", setup: func(*testing.T, string) {}},
		{name: "existing world-readable directories", setup: func(t *testing.T, dir string) {
			for _, d := range []string{"blobs/sha256", "tmp", "index"} {
				if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(filepath.Join(dir, d), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Chmod(filepath.Join(dir, "blobs"), 0o755); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			tt.setup(t, dir)
			c := open(t, dir, nil)
			o := put(t, c, []byte("fetched with upstream credentials"))
			w, err := c.NewWriter(sha256Of([]byte("in progress")), "", -1)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Abort(nil)
			if _, err := w.Write([]byte("in")); err != nil {
				t.Fatal(err)
			}
			p := c.Path(o.Digest)
			want := map[string]fs.FileMode{
				filepath.Join(dir, "blobs"):           0o700,
				filepath.Join(dir, "blobs", "sha256"): 0o700,
				filepath.Dir(p):                       0o700,
				filepath.Join(dir, "tmp"):             0o700,
				filepath.Join(dir, "index"):           0o700,
				p:                                     0o600,
				w.tmp:                                 0o600,
			}
			if tt.name == "new directory" {
				want[dir] = 0o700
			}
			for path, mode := range want {
				fi, err := os.Stat(path)
				if err != nil {
					t.Fatal(err)
				}
				if fi.Mode().Perm() != mode {
					t.Errorf("%s has mode %v, want %v", path, fi.Mode().Perm(), mode)
				}
			}
		})
	}
}
