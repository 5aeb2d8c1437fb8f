package lifecycle

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullgate/pullgate/cache"
)

// closureOf lists the digests and sizes of an image's closure, manifests with their types.
func closureOf(t *testing.T, img v1.Image) []object {
	t.Helper()
	raw, _ := img.RawManifest()
	d, _ := img.Digest()
	mt, _ := img.MediaType()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	out := []object{{digest: d, size: int64(len(raw)), mediaType: string(mt)}, {digest: m.Config.Digest, size: m.Config.Size}}
	for _, l := range m.Layers {
		out = append(out, object{digest: l.Digest, size: l.Size})
	}
	return out
}

func indexClosure(t *testing.T, idx v1.ImageIndex) []object {
	t.Helper()
	raw, _ := idx.RawManifest()
	d, _ := idx.Digest()
	out := []object{{digest: d, size: int64(len(raw)), mediaType: mediaOCIIndex}}
	im, _ := idx.IndexManifest()
	for _, desc := range im.Manifests {
		img, err := idx.Image(desc.Digest)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, closureOf(t, img)...)
	}
	return out
}

// checkImported holds what the proxy needs of an imported image: the tag points at the manifest with its type
// and size, every object of the closure is stored, linked to the repository with its size, and manifests are
// described with their own type (blobs are not).
func checkImported(t *testing.T, c *cache.Cache, up, repo, tag string, objs []object) {
	t.Helper()
	if tag != "" {
		e, err := c.Tag(up, repo, tag)
		if err != nil {
			t.Fatalf("tag %s/%s:%s: %v", up, repo, tag, err)
		}
		if e.Digest != objs[0].digest || e.MediaType != objs[0].mediaType || e.Size != objs[0].size {
			t.Errorf("tag %s = %+v, want %s %s %d", tag, e, objs[0].digest, objs[0].mediaType, objs[0].size)
		}
	}
	for _, o := range objs {
		st, err := c.Stat(o.digest)
		if err != nil {
			t.Errorf("%s not stored: %v", o.digest, err)
			continue
		}
		if st.MediaType != o.mediaType {
			t.Errorf("%s stored with type %q, want %q", o.digest, st.MediaType, o.mediaType)
		}
		size, ok, err := c.LinkedSize(up, repo, o.digest)
		if err != nil || !ok || size != o.size {
			t.Errorf("%s linked to %s/%s: %v size %d (%v), want size %d", o.digest, up, repo, ok, size, err, o.size)
		}
	}
}

// checkNotImported holds that nothing of an image was tagged or linked.
func checkNotImported(t *testing.T, c *cache.Cache, up, repo, tag string, objs []object) {
	t.Helper()
	if _, err := c.Tag(up, repo, tag); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("tag %s/%s:%s was set (%v)", up, repo, tag, err)
	}
	for _, o := range objs {
		if ok, _ := c.Linked(up, repo, o.digest); ok {
			t.Errorf("%s was linked to %s/%s", o.digest, up, repo)
		}
	}
}

// TestImportRoundTrip holds that an exported bundle imports into a fresh cache with tags, links and media
// types as the proxy serves them, under the repositories the names resolve to (an image and a multi-platform
// index, a name with a digest), and that importing again changes nothing.
func TestImportRoundTrip(t *testing.T) {
	src := openCache(t)
	f := filler{t: t, c: src, up: "docker.io", repo: "library/foo"}
	img, idx := randomImage(t), randomIndex(t)
	imgDigest := f.image(img)
	f.tag("1", imgDigest)
	f.tag("multi", f.index(idx))
	gf := filler{t: t, c: src, up: "ghcr.io", repo: "org/app"}
	other := randomImage(t)
	otherDigest := gf.image(other)
	bundle := export(t, src,
		Image{Name: "docker.io/library/foo:1", Upstream: "docker.io", Repository: "library/foo", Tag: "1"},
		Image{Name: "docker.io/library/foo:multi", Upstream: "docker.io", Repository: "library/foo", Tag: "multi"},
		Image{Name: "ghcr.io/org/app:v2@" + otherDigest.String(), Upstream: "ghcr.io", Repository: "org/app", Digest: otherDigest},
	)

	dst := openCache(t)
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	for round := range 2 {
		stats, err := Import(context.Background(), bytes.NewReader(bundle), dst, ImportOptions{Resolve: resolveTest, Now: func() time.Time { return now }, Logger: quiet})
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if len(stats.Images) != 3 || stats.Objects != 4+1+8+4 || len(stats.Refused) != 0 {
			t.Errorf("round %d: stats %+v", round, stats)
		}
		for _, im := range stats.Images {
			if im.Err != nil {
				t.Errorf("%s: %v", im.Name, im.Err)
			}
		}
		checkImported(t, dst, "docker.io", "library/foo", "1", closureOf(t, img))
		checkImported(t, dst, "docker.io", "library/foo", "multi", indexClosure(t, idx))
		checkImported(t, dst, "ghcr.io", "org/app", "v2", closureOf(t, other))
		if e, _ := dst.Tag("docker.io", "library/foo", "1"); !e.Fetched.Equal(now) {
			t.Errorf("tag fetched %v, want %v", e.Fetched, now)
		}
	}
	// Nothing leaks into a repository the bundle did not name.
	if ok, _ := dst.Linked("docker.io", "library/foo", otherDigest); ok {
		t.Error("ghcr.io's image is linked to docker.io/library/foo")
	}
}

// TestImportImmutableTag holds that an immutable tag that pins another digest is not moved by an import, and
// that the image is reported as not imported.
func TestImportImmutableTag(t *testing.T) {
	src := openCache(t)
	f := filler{t: t, c: src, up: "docker.io", repo: "library/foo"}
	img := randomImage(t)
	f.tag("1", f.image(img))
	bundle := export(t, src, Image{Name: "docker.io/library/foo:1", Upstream: "docker.io", Repository: "library/foo", Tag: "1"})

	dst := openCache(t)
	pinned := filler{t: t, c: dst, up: "docker.io", repo: "library/foo"}.image(randomImage(t))
	if _, err := dst.SetImmutableTag("docker.io", "library/foo", "1", cache.TagEntry{Digest: pinned, Size: 1}); err != nil {
		t.Fatal(err)
	}
	immutable := func(up, repo, tag string) bool { return tag == "1" }
	stats, err := Import(context.Background(), bytes.NewReader(bundle), dst, ImportOptions{Resolve: resolveTest, Immutable: immutable, Logger: quiet})
	if err == nil || !strings.Contains(err.Error(), "pins "+pinned.String()) {
		t.Fatalf("Import: %v", err)
	}
	if len(stats.Images) != 1 || stats.Images[0].Err == nil {
		t.Errorf("stats %+v", stats)
	}
	if e, _ := dst.Tag("docker.io", "library/foo", "1"); e.Digest != pinned {
		t.Errorf("immutable tag moved to %s", e.Digest)
	}
}

// TestImportHostile holds that a bundle is never trusted: bad content is refused and the image it belongs to
// is neither tagged nor linked while the other images import; unsafe or unknown entries and oversized files
// end the import with a clear error; a name that resolves nowhere or is only a tag fails its image.
func TestImportHostile(t *testing.T) {
	src := openCache(t)
	f := filler{t: t, c: src, up: "docker.io", repo: "library/foo"}
	victim, bystander := randomImage(t), randomImage(t)
	f.tag("victim", f.image(victim))
	f.tag("bystander", f.image(bystander))
	good := export(t, src,
		Image{Name: "docker.io/library/foo:victim", Upstream: "docker.io", Repository: "library/foo", Tag: "victim"},
		Image{Name: "docker.io/library/foo:bystander", Upstream: "docker.io", Repository: "library/foo", Tag: "bystander"},
	)
	victimObjs := closureOf(t, victim)
	vm, _ := victim.Manifest()
	layer := vm.Layers[0].Digest
	manifestDigest, _ := victim.Digest()
	blobName := func(d v1.Hash) string { return "blobs/" + d.Algorithm + "/" + d.Hex }

	// edit returns the good bundle's entries changed by fn.
	edit := func(fn func([]entry) []entry) []byte {
		return writeEntries(t, fn(readEntries(t, good)))
	}
	editEntry := func(name string, fn func(e *entry)) []byte {
		return edit(func(es []entry) []entry {
			for i := range es {
				if es[i].hdr.Name == name {
					fn(&es[i])
				}
			}
			return es
		})
	}
	editIndex := func(fn func(m map[string]any)) []byte {
		return editEntry("index.json", func(e *entry) {
			var m map[string]any
			if err := json.Unmarshal(e.body, &m); err != nil {
				t.Fatal(err)
			}
			fn(m)
			e.body, _ = json.Marshal(m)
		})
	}
	victimDesc := func(m map[string]any) map[string]any {
		return m["manifests"].([]any)[0].(map[string]any)
	}
	add := func(e entry) []byte {
		return edit(func(es []entry) []entry { return append(es, e) })
	}
	reg := func(name string, body []byte) entry {
		return entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644}, body: body}
	}

	tests := []struct {
		name   string
		bundle []byte
		opts   ImportOptions
		// fatal: the import stops with ErrBadBundle. Otherwise the victim fails with wantErr and the
		// bystander imports.
		fatal    bool
		wantErr  string
		refused  bool
		bystands bool
	}{
		{name: "flipped byte in a layer", bundle: editEntry(blobName(layer), func(e *entry) { e.body[len(e.body)/2] ^= 1 }),
			wantErr: layer.String() + " (named by " + manifestDigest.String() + "): not in the bundle", refused: true},
		{name: "layer of another size", bundle: editEntry(blobName(layer), func(e *entry) { e.body = append(e.body, 0) }),
			wantErr: "not in the bundle", refused: true},
		{name: "manifest naming a missing blob", bundle: edit(func(es []entry) []entry {
			var out []entry
			for _, e := range es {
				if e.hdr.Name != blobName(layer) {
					out = append(out, e)
				}
			}
			return out
		}), wantErr: layer.String() + " (named by " + manifestDigest.String() + "): not in the bundle"},
		{name: "descriptor mediaType disagrees with the manifest", bundle: editIndex(func(m map[string]any) {
			victimDesc(m)["mediaType"] = mediaOCIIndex
		}), wantErr: `its descriptor says mediaType "` + mediaOCIIndex + `"`},
		{name: "descriptor size disagrees", bundle: editIndex(func(m map[string]any) {
			victimDesc(m)["size"] = 12
		}), wantErr: "its descriptor says 12"},
		{name: "name resolves nowhere", bundle: editIndex(func(m map[string]any) {
			victimDesc(m)["annotations"] = map[string]any{annotationRefName: "quay.io/x/y:1"}
		}), wantErr: `"quay.io" names no configured upstream`},
		{name: "ref.name only a tag", bundle: editIndex(func(m map[string]any) {
			victimDesc(m)["annotations"] = map[string]any{annotationRefName: "victim"}
		}), wantErr: `"victim" is only a tag`},
		{name: "names that disagree", bundle: editIndex(func(m map[string]any) {
			victimDesc(m)["annotations"] = map[string]any{annotationRefName: "docker.io/library/foo:victim", annotationContainerdRef: "docker.io/library/bar:victim"}
		}), wantErr: "says"},
		{name: "a blob claimed to be a manifest", bundle: editIndex(func(m map[string]any) {
			victimDesc(m)["digest"] = layer.String()
			victimDesc(m)["size"] = vm.Layers[0].Size
			victimDesc(m)["mediaType"] = ""
		}), wantErr: "not a manifest"},
		{name: "content cached but not in the bundle", bundle: edit(func(es []entry) []entry {
			var out []entry
			for _, e := range es {
				if e.hdr.Name != blobName(layer) {
					out = append(out, e)
				}
			}
			return out
		}), opts: ImportOptions{}, wantErr: "not in the bundle"},
		{name: "parent directory", bundle: add(reg("blobs/../../evil", []byte("x"))), fatal: true, wantErr: "the path leaves the layout"},
		{name: "dot-dot at the start", bundle: add(reg("../evil", []byte("x"))), fatal: true, wantErr: "the path leaves the layout"},
		{name: "absolute path", bundle: add(reg("/tmp/evil", []byte("x"))), fatal: true, wantErr: "an absolute path"},
		{name: "symlink", bundle: add(entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "blobs/sha256/link", Linkname: "/etc/passwd"}}), fatal: true, wantErr: "symbolic link"},
		{name: "hard link", bundle: add(entry{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "x", Linkname: "index.json"}}), fatal: true, wantErr: "hard link"},
		{name: "device", bundle: add(entry{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev", Devmajor: 1, Devminor: 3}}), fatal: true, wantErr: "device"},
		{name: "unknown file", bundle: add(reg("evil.sh", []byte("x"))), fatal: true, wantErr: `unknown entry "evil.sh"`},
		{name: "blob path of an unknown algorithm", bundle: add(reg("blobs/md5/d41d8cd98f00b204e9800998ecf8427e", nil)), fatal: true, wantErr: "md5"},
		{name: "oversized index.json", bundle: editEntry("index.json", func(e *entry) { e.body = append(e.body, bytes.Repeat([]byte(" "), 2000)...) }),
			opts: ImportOptions{MaxIndexSize: 1024}, fatal: true, wantErr: "index.json is"},
		{name: "index.json twice", bundle: add(reg("index.json", []byte("{}"))), fatal: true, wantErr: "twice"},
		{name: "too many images", bundle: good, opts: ImportOptions{MaxImages: 1}, fatal: true, wantErr: "the limit is 1"},
		{name: "too many blobs", bundle: good, opts: ImportOptions{MaxObjects: 3}, fatal: true, wantErr: "more than 3 blobs"},
		{name: "no oci-layout", bundle: edit(func(es []entry) []entry { return es[1:] }), fatal: true, wantErr: "no oci-layout"},
		{name: "another layout version", bundle: editEntry("oci-layout", func(e *entry) { e.body = []byte(`{"imageLayoutVersion":"2.0.0"}`) }), fatal: true, wantErr: "2.0.0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := openCache(t)
			if tt.name == "content cached but not in the bundle" {
				// The layer is cached from another repository: knowing its digest must not link it here.
				filler{t: t, c: dst, up: "docker.io", repo: "library/private"}.image(victim)
			}
			opts := tt.opts
			opts.Resolve, opts.Logger = resolveTest, quiet
			stats, err := Import(context.Background(), bytes.NewReader(tt.bundle), dst, opts)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Import: %v, want an error saying %q", err, tt.wantErr)
			}
			if tt.fatal {
				if !errors.Is(err, ErrBadBundle) {
					t.Errorf("error does not wrap ErrBadBundle: %v", err)
				}
				checkNotImported(t, dst, "docker.io", "library/foo", "victim", victimObjs)
				checkNotImported(t, dst, "docker.io", "library/foo", "bystander", closureOf(t, bystander))
				if _, err := os.Stat(filepath.Join(filepath.Dir(t.TempDir()), "evil")); err == nil {
					t.Error("a file was written outside the cache")
				}
				return
			}
			if strings.Contains(tt.wantErr, "not in the bundle") && !errors.Is(err, ErrIncomplete) {
				t.Errorf("error does not wrap ErrIncomplete: %v", err)
			}
			if tt.refused {
				if len(stats.Refused) != 1 || stats.Refused[0].Digest != layer {
					t.Errorf("refused %+v, want %s", stats.Refused, layer)
				}
				if _, err := dst.Stat(layer); !errors.Is(err, cache.ErrNotFound) {
					t.Errorf("the refused layer is stored: %v", err)
				}
			}
			checkNotImported(t, dst, "docker.io", "library/foo", "victim", victimObjs)
			checkImported(t, dst, "docker.io", "library/foo", "bystander", closureOf(t, bystander))
			var failed int
			for _, im := range stats.Images {
				if im.Err != nil {
					failed++
				}
			}
			if failed != 1 {
				t.Errorf("%d images failed, want 1: %+v", failed, stats.Images)
			}
		})
	}
}

// TestImportTolerated holds what an import accepts from other tools: "./" prefixes, directory entries, docker
// save's extra files (skipped), an unnamed descriptor (its content stored, nothing tagged), and a ref.name that
// is only a tag beside io.containerd.image.name (containerd's export).
func TestImportTolerated(t *testing.T) {
	src := openCache(t)
	f := filler{t: t, c: src, up: "docker.io", repo: "library/foo"}
	img := randomImage(t)
	d := f.image(img)
	f.tag("1", d)
	good := export(t, src, Image{Name: "docker.io/library/foo:1", Upstream: "docker.io", Repository: "library/foo", Tag: "1"})
	es := readEntries(t, good)
	for i := range es {
		es[i].hdr.Name = "./" + es[i].hdr.Name
		if es[i].hdr.Name == "./index.json" {
			var m map[string]any
			_ = json.Unmarshal(es[i].body, &m)
			ms := m["manifests"].([]any)
			desc := ms[0].(map[string]any)
			desc["annotations"] = map[string]any{annotationRefName: "1", annotationContainerdRef: "docker.io/library/foo:1"}
			unnamed := map[string]any{"mediaType": desc["mediaType"], "digest": desc["digest"], "size": desc["size"]}
			m["manifests"] = append(ms, unnamed)
			es[i].body, _ = json.Marshal(m)
		}
	}
	es = append([]entry{{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "./"}}}, es...)
	es = append(es, entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "manifest.json"}, body: []byte("[]")},
		entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "extra/"}})
	dst := openCache(t)
	stats, err := Import(context.Background(), bytes.NewReader(writeEntries(t, es)), dst, ImportOptions{Resolve: resolveTest, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if stats.Unnamed != 1 || len(stats.Images) != 1 {
		t.Errorf("stats %+v", stats)
	}
	checkImported(t, dst, "docker.io", "library/foo", "1", closureOf(t, img))
}

// TestImportSkopeoBundle holds that a bundle written by skopeo (from a directory skopeo made of a layout)
// imports.
func TestImportSkopeoBundle(t *testing.T) {
	if _, err := exec.LookPath("skopeo"); err != nil {
		t.Skip("skopeo is not on PATH")
	}
	src := openCache(t)
	f := filler{t: t, c: src, up: "docker.io", repo: "library/foo"}
	img := randomImage(t)
	f.tag("1", f.image(img))
	tmp := t.TempDir()
	layoutDir, dir, archive := filepath.Join(tmp, "layout"), filepath.Join(tmp, "dir"), filepath.Join(tmp, "x.tar")
	untar(t, export(t, src, Image{Name: "docker.io/library/foo:1", Upstream: "docker.io", Repository: "library/foo", Tag: "1"}), layoutDir)
	for _, args := range [][]string{
		{"copy", "oci:" + layoutDir + ":docker.io/library/foo:1", "dir:" + dir},
		{"copy", "dir:" + dir, "oci-archive:" + archive + ":docker.io/library/foo:1"},
	} {
		if out, err := exec.Command("skopeo", args...).CombinedOutput(); err != nil {
			t.Fatalf("skopeo %v: %v\n%s", args, err, out)
		}
	}
	r, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	dst := openCache(t)
	if _, err := Import(context.Background(), r, dst, ImportOptions{Resolve: resolveTest, Logger: quiet}); err != nil {
		t.Fatal(err)
	}
	e, err := dst.Tag("docker.io", "library/foo", "1")
	if err != nil {
		t.Fatal(err)
	}
	// skopeo may rewrite the manifest (dir: keeps it as is, so the digest is the same).
	o, err := dst.Stat(e.Digest)
	if err != nil || shapeOf(o.MediaType) != shapeImage {
		t.Errorf("imported manifest %s: %+v %v", e.Digest, o, err)
	}
}
