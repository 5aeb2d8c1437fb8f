package lifecycle

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// TestExportReadable holds that an exported archive is an OCI image layout that go-containerregistry's layout
// package reads and validates (an image and a multi-platform index, every platform included), with one
// annotated descriptor per image, every blob once, and that skopeo reads and copies it by name.
func TestExportReadable(t *testing.T) {
	c := openCache(t)
	f := filler{t: t, c: c, up: "docker.io", repo: "library/foo"}
	img := randomImage(t)
	imgDigest := f.image(img)
	f.tag("1", imgDigest)
	idx := randomIndex(t)
	idxDigest := f.index(idx)
	f.tag("multi", idxDigest)

	images := []Image{
		{Name: "docker.io/library/foo:1", Upstream: "docker.io", Repository: "library/foo", Tag: "1"},
		{Name: "docker.io/library/foo:multi", Upstream: "docker.io", Repository: "library/foo", Tag: "multi"},
		// The same image by digest: its blobs are written once.
		{Name: "docker.io/library/foo@" + imgDigest.String(), Upstream: "docker.io", Repository: "library/foo", Digest: imgDigest},
	}
	var buf bytes.Buffer
	stats, err := Export(context.Background(), &buf, c, images)
	if err != nil {
		t.Fatal(err)
	}
	if len(stats.Images) != 3 || stats.Images[0].Digest != imgDigest || stats.Images[1].Digest != idxDigest {
		t.Errorf("stats = %+v", stats)
	}
	// image: manifest, config, 2 layers; index: itself, 2 × (manifest, config, 2 layers).
	if want := 4 + 1 + 2*4; stats.Objects != want {
		t.Errorf("%d objects written, want %d", stats.Objects, want)
	}

	seen := map[string]bool{}
	for _, e := range readEntries(t, buf.Bytes()) {
		if seen[e.hdr.Name] {
			t.Errorf("entry %s written twice", e.hdr.Name)
		}
		seen[e.hdr.Name] = true
		if e.hdr.Typeflag == tar.TypeReg && strings.HasPrefix(e.hdr.Name, "blobs/") {
			d, err := v1.NewHash(strings.Replace(strings.TrimPrefix(e.hdr.Name, "blobs/"), "/", ":", 1))
			if err != nil {
				t.Fatal(err)
			}
			if got := sha(e.body); got != d {
				t.Errorf("%s holds content of %s", e.hdr.Name, got)
			}
		}
	}
	for _, want := range []string{"oci-layout", "index.json", "blobs/", "blobs/sha256/"} {
		if !seen[want] {
			t.Errorf("no %s in the archive", want)
		}
	}

	dir := t.TempDir()
	untar(t, buf.Bytes(), dir)
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	top, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := top.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != len(images) {
		t.Fatalf("index.json lists %d manifests, want %d", len(im.Manifests), len(images))
	}
	for i, desc := range im.Manifests {
		t.Run(images[i].Name, func(t *testing.T) {
			for _, k := range []string{annotationRefName, annotationContainerdRef} {
				if desc.Annotations[k] != images[i].Name {
					t.Errorf("annotation %s = %q, want %q", k, desc.Annotations[k], images[i].Name)
				}
			}
			if desc.MediaType.IsIndex() {
				child, err := top.ImageIndex(desc.Digest)
				if err != nil {
					t.Fatal(err)
				}
				if err := validate.Index(child); err != nil {
					t.Errorf("validate.Index: %v", err)
				}
				return
			}
			got, err := top.Image(desc.Digest)
			if err != nil {
				t.Fatal(err)
			}
			if err := validate.Image(got); err != nil {
				t.Errorf("validate.Image: %v", err)
			}
		})
	}

	t.Run("skopeo", func(t *testing.T) {
		if _, err := exec.LookPath("skopeo"); err != nil {
			t.Skip("skopeo is not on PATH")
		}
		archive := filepath.Join(t.TempDir(), "bundle.tar")
		if err := os.WriteFile(archive, buf.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, img := range images[:2] {
			out, err := exec.Command("skopeo", "inspect", "--raw", "oci-archive:"+archive+":"+img.Name).CombinedOutput()
			if err != nil {
				t.Fatalf("skopeo inspect %s: %v\n%s", img.Name, err, out)
			}
			if d := sha(bytes.TrimSpace(out)); d != imgDigest && d != idxDigest && sha(out) != imgDigest && sha(out) != idxDigest {
				t.Errorf("skopeo inspect --raw %s: a manifest of digest %s", img.Name, d)
			}
		}
		dest := t.TempDir()
		out, err := exec.Command("skopeo", "copy", "oci-archive:"+archive+":"+images[0].Name, "dir:"+dest).CombinedOutput()
		if err != nil {
			t.Fatalf("skopeo copy: %v\n%s", err, out)
		}
		m, err := img.Manifest()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range m.Layers {
			if _, err := os.Stat(filepath.Join(dest, l.Digest.Hex)); err != nil {
				t.Errorf("skopeo copy did not write layer %s: %v", l.Digest, err)
			}
		}
	})
}

// TestExportIncomplete holds that Export writes nothing when any image is not all cached in its repository,
// and that its error lists every image and object at fault.
func TestExportIncomplete(t *testing.T) {
	c := openCache(t)
	good := randomImage(t)
	f := filler{t: t, c: c, up: "docker.io", repo: "library/foo"}
	goodDigest := f.image(good)
	f.tag("good", goodDigest)

	partial := randomImage(t)
	layers, _ := partial.Layers()
	missing, _ := layers[1].Digest()
	pf := f
	pf.skip = map[v1.Hash]bool{missing: true}
	f.tag("partial", pf.image(partial))

	other := randomIndex(t)
	im, _ := other.IndexManifest()
	missingChild := im.Manifests[1].Digest
	of := f
	of.skip = map[v1.Hash]bool{missingChild: true}
	f.tag("platform", of.index(other))

	// Cached, but in another repository only.
	elsewhere := randomImage(t)
	ef := filler{t: t, c: c, up: "docker.io", repo: "library/bar"}
	elsewhereDigest := ef.image(elsewhere)
	ef.tag("1", elsewhereDigest)

	img := func(tag string) Image {
		return Image{Name: "docker.io/library/foo:" + tag, Upstream: "docker.io", Repository: "library/foo", Tag: tag}
	}
	images := []Image{
		img("good"), img("partial"), img("platform"), img("absent"),
		{Name: "docker.io/library/foo@" + elsewhereDigest.String(), Upstream: "docker.io", Repository: "library/foo", Digest: elsewhereDigest},
		{Name: "docker.io/library/foo:good@" + elsewhereDigest.String(), Upstream: "docker.io", Repository: "library/foo", Tag: "good", Digest: elsewhereDigest},
	}
	var buf bytes.Buffer
	_, err := Export(context.Background(), &buf, c, images)
	if !errors.Is(err, ErrIncomplete) {
		t.Fatalf("Export: %v, want ErrIncomplete", err)
	}
	if buf.Len() != 0 {
		t.Errorf("Export wrote %d bytes before failing", buf.Len())
	}
	msg := err.Error()
	tests := []struct{ name, want string }{
		{"missing layer", "foo:partial: " + missing.String()},
		{"missing platform", "foo:platform: " + missingChild.String()},
		{"missing tag", "tag absent of docker.io/library/foo is not cached"},
		{"other repository", "foo@" + elsewhereDigest.String() + ": " + elsewhereDigest.String() + ": not cached in docker.io/library/foo"},
		{"tag and digest disagree", "tag good points at " + goodDigest.String()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(msg, tt.want) {
				t.Errorf("error does not say %q:\n%s", tt.want, msg)
			}
		})
	}
	if strings.Contains(msg, "foo:good:") {
		t.Errorf("error blames the complete image:\n%s", msg)
	}
}
