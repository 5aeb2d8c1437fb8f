package cache

import (
	"errors"
	"testing"
	"time"
)

// TestSetMediaType holds that SetMediaType describes a stored object (replacing what was recorded, size and
// store time kept), survives a reopen, and refuses what is not stored with ErrNotFound.
func TestSetMediaType(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, newClock().Now)
	b := randomBytes(t, 300)
	w, err := c.NewWriter(sha256Of(b), "", int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	stored, err := w.Commit()
	if err != nil {
		t.Fatal(err)
	}
	const oci = "application/vnd.oci.image.manifest.v1+json"
	tests := []struct {
		name, mediaType string
	}{
		{"describe a blob stored without a type", oci},
		{"the same again", oci},
		{"replace a type", "application/vnd.oci.image.index.v1+json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := c.SetMediaType(stored.Digest, tt.mediaType); err != nil {
				t.Fatal(err)
			}
			o, err := c.Stat(stored.Digest)
			if err != nil {
				t.Fatal(err)
			}
			if o.MediaType != tt.mediaType || o.Size != stored.Size || !o.Stored.Equal(stored.Stored) {
				t.Errorf("Stat = %+v, want type %q, size %d, stored %v", o, tt.mediaType, stored.Size, stored.Stored)
			}
		})
	}
	t.Run("not stored", func(t *testing.T) {
		if err := c.SetMediaType(sha256Of([]byte("nothing")), oci); !errors.Is(err, ErrNotFound) {
			t.Errorf("SetMediaType of a digest not stored: %v, want ErrNotFound", err)
		}
		if _, err := c.Stat(sha256Of([]byte("nothing"))); !errors.Is(err, ErrNotFound) {
			t.Errorf("SetMediaType created an entry: %v", err)
		}
	})
	t.Run("invalid digest", func(t *testing.T) {
		d := sha256Of(b)
		d.Algorithm = "md5"
		if err := c.SetMediaType(d, oci); !errors.Is(err, ErrUnsupportedDigest) {
			t.Errorf("SetMediaType(md5): %v", err)
		}
	})
	t.Run("after reopen", func(t *testing.T) {
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		c2 := open(t, dir, func() time.Time { return time.Now() })
		o, err := c2.Stat(stored.Digest)
		if err != nil || o.MediaType != "application/vnd.oci.image.index.v1+json" {
			t.Errorf("after reopen: %+v, %v", o, err)
		}
	})
}
