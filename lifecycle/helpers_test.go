package lifecycle

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/pullgate/pullgate/cache"
	"github.com/pullgate/pullgate/names"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// openCache opens a cache in a new temporary directory, closed when the test ends.
func openCache(t *testing.T) *cache.Cache {
	t.Helper()
	c, err := cache.Open(cache.Options{Dir: t.TempDir(), Reserve: -1, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// store writes content into c as the proxy does: verified by the writer.
func store(t *testing.T, c *cache.Cache, d v1.Hash, mediaType string, r io.Reader, size int64) {
	t.Helper()
	w, err := c.NewWriter(d, mediaType, size)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(w, r); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
}

// filler puts images into a cache as the proxy leaves them after a pull: manifests stored with their type,
// blobs without, every descriptor linked with its size, the tag set.
type filler struct {
	t        *testing.T
	c        *cache.Cache
	up, repo string
	// skip names digests not stored (to make an image incomplete).
	skip map[v1.Hash]bool
}

func (f filler) image(img v1.Image) v1.Hash {
	t := f.t
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	mt, _ := img.MediaType()
	f.put(d, string(mt), raw)
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	f.put(m.Config.Digest, "", cfg)
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		ld, _ := l.Digest()
		size, _ := l.Size()
		if err := f.c.LinkDescriptor(f.up, f.repo, ld, size); err != nil {
			t.Fatal(err)
		}
		if f.skip[ld] {
			continue
		}
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		store(t, f.c, ld, "", rc, size)
		rc.Close()
	}
	return d
}

func (f filler) index(idx v1.ImageIndex) v1.Hash {
	t := f.t
	raw, err := idx.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	d, _ := idx.Digest()
	mt, _ := idx.MediaType()
	f.put(d, string(mt), raw)
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, desc := range im.Manifests {
		img, err := idx.Image(desc.Digest)
		if err != nil {
			t.Fatal(err)
		}
		f.image(img)
	}
	return d
}

func (f filler) put(d v1.Hash, mediaType string, b []byte) {
	if err := f.c.LinkDescriptor(f.up, f.repo, d, int64(len(b))); err != nil {
		f.t.Fatal(err)
	}
	if f.skip[d] {
		return
	}
	store(f.t, f.c, d, mediaType, bytes.NewReader(b), int64(len(b)))
}

func (f filler) tag(tag string, d v1.Hash) {
	o, err := f.c.Stat(d)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := f.c.SetTag(f.up, f.repo, tag, cache.TagEntry{Digest: d, MediaType: o.MediaType, Size: o.Size, Fetched: time.Now()}); err != nil {
		f.t.Fatal(err)
	}
}

func randomImage(t *testing.T) v1.Image {
	t.Helper()
	img, err := random.Image(700, 2)
	if err != nil {
		t.Fatal(err)
	}
	// OCI-typed, as skopeo 1.9 reads only OCI descriptors from an image layout.
	return mutate.ConfigMediaType(mutate.MediaType(img, types.OCIManifestSchema1), types.OCIConfigJSON)
}

func randomIndex(t *testing.T) v1.ImageIndex {
	t.Helper()
	idx, err := random.Index(500, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

// resolveTest maps a reference to (registry, repository) as pullgate with the upstreams docker.io and ghcr.io
// would; other registries resolve nowhere.
func resolveTest(name string) (Image, error) {
	r, err := names.ParseReference(name)
	if err != nil {
		return Image{}, err
	}
	if r.Registry != "docker.io" && r.Registry != "ghcr.io" {
		return Image{}, fmt.Errorf("%q names no configured upstream", r.Registry)
	}
	return Image{Name: name, Upstream: r.Registry, Repository: r.Repository, Tag: r.Tag, Digest: r.Digest}, nil
}

// entry is one tar entry, for taking bundles apart and putting hostile ones together.
type entry struct {
	hdr  tar.Header
	body []byte
}

func readEntries(t *testing.T, b []byte) []entry {
	t.Helper()
	var out []entry
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, entry{*hdr, body})
	}
}

func writeEntries(t *testing.T, es []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		hdr := e.hdr
		if hdr.Typeflag == tar.TypeReg {
			hdr.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(&hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// untar writes a bundle into dir (the test's own archives only: paths are not checked).
func untar(t *testing.T, b []byte, dir string) {
	t.Helper()
	for _, e := range readEntries(t, b) {
		p := filepath.Join(dir, e.hdr.Name)
		if e.hdr.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, e.body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// export exports images from c and returns the archive.
func export(t *testing.T, c *cache.Cache, images ...Image) []byte {
	t.Helper()
	var buf bytes.Buffer
	if _, err := Export(context.Background(), &buf, c, images); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func sha(b []byte) v1.Hash {
	s := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(s[:])}
}
