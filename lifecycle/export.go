package lifecycle

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullgate/pullgate/cache"
)

// ExportStats says what Export wrote.
type ExportStats struct {
	// Images has one entry per exported image, in the order asked.
	Images []ExportedImage
	// Objects and Bytes count the blobs written, each digest once however many images share it.
	Objects int
	Bytes   int64
}

// ExportedImage is one image Export wrote.
type ExportedImage struct {
	Image
	// Digest is the manifest digest the image's tag pointed at; MediaType its type.
	Digest    v1.Hash
	MediaType string
	// Objects and Bytes count the image's closure, shared blobs included.
	Objects int
	Bytes   int64
}

// layoutTime is the modification time of every entry of an exported archive, so that the same images give the
// same bytes.
var layoutTime = time.Unix(0, 0).UTC()

// Export writes images, read from c, as an OCI image layout archive to w: oci-layout, index.json with one
// descriptor per image (annotated with its Name as org.opencontainers.image.ref.name and
// io.containerd.image.name) and blobs/<alg>/<hex> for every object of every image's closure (every platform of
// an index), each digest once, streamed from the cache's file. Tags are resolved through the cache; nothing is
// fetched. An image is exported only from its own repository: every object must be linked to it.
//
// Nothing is written unless every image is complete: the error then wraps ErrIncomplete and lists every
// image and object that is not cached. An error after writing began (an object removed meanwhile, a failed
// write) leaves a truncated archive, which the caller discards.
func Export(ctx context.Context, w io.Writer, c *cache.Cache, images []Image) (ExportStats, error) {
	var stats ExportStats
	var problems []string
	var index []descriptor
	var objects []object
	written := map[v1.Hash]bool{}
	named := map[string]bool{}
	for _, img := range images {
		if named[img.Name] {
			problems = append(problems, fmt.Sprintf("%s: named twice", img.Name))
			continue
		}
		named[img.Name] = true
		src := exportSource(c, img.Upstream, img.Repository)
		d, err := exportDigest(c, img)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", img.Name, err))
			continue
		}
		root, err := rootDescriptor(src, d)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %s: %v", img.Name, d, err))
			continue
		}
		cl := src.walk(root)
		for _, p := range cl.problems {
			problems = append(problems, fmt.Sprintf("%s: %s", img.Name, p))
		}
		if len(cl.problems) > 0 {
			continue
		}
		ex := ExportedImage{Image: img, Digest: d, MediaType: root.MediaType, Objects: len(cl.objects)}
		for _, o := range cl.objects {
			ex.Bytes += o.size
			if !written[o.digest] {
				written[o.digest] = true
				objects = append(objects, o)
			}
		}
		root.Annotations = map[string]string{annotationRefName: img.Name, annotationContainerdRef: img.Name}
		index = append(index, root)
		stats.Images = append(stats.Images, ex)
	}
	if len(problems) > 0 {
		return ExportStats{}, fmt.Errorf("%w: nothing was written:\n%s", ErrIncomplete, listProblems("not cached:", problems))
	}

	tw := tar.NewWriter(w)
	layout, _ := json.Marshal(map[string]string{"imageLayoutVersion": layoutVersion})
	if err := writeFile(tw, layoutFile, layout); err != nil {
		return stats, err
	}
	idx, err := json.Marshal(struct {
		SchemaVersion int          `json:"schemaVersion"`
		MediaType     string       `json:"mediaType"`
		Manifests     []descriptor `json:"manifests"`
	}{2, mediaOCIIndex, index})
	if err != nil {
		return stats, fmt.Errorf("lifecycle: %w", err)
	}
	if err := writeFile(tw, indexFile, idx); err != nil {
		return stats, err
	}
	dirs := map[string]bool{}
	if err := writeDir(tw, blobsDir+"/"); err != nil {
		return stats, err
	}
	for _, o := range objects {
		if err := ctx.Err(); err != nil {
			return stats, err
		}
		if dir := blobsDir + "/" + o.digest.Algorithm + "/"; !dirs[dir] {
			dirs[dir] = true
			if err := writeDir(tw, dir); err != nil {
				return stats, err
			}
		}
		if err := writeBlob(tw, c, o); err != nil {
			return stats, err
		}
		stats.Objects++
		stats.Bytes += o.size
	}
	if err := tw.Close(); err != nil {
		return stats, fmt.Errorf("lifecycle: writing the archive: %w", err)
	}
	return stats, nil
}

// exportSource finds objects in c that are linked to the repository.
func exportSource(c *cache.Cache, upstream, repo string) source {
	return source{
		c:               c,
		maxManifestSize: DefaultMaxManifestSize,
		have: func(d v1.Hash) (int64, error) {
			linked, err := c.Linked(upstream, repo, d)
			if err != nil {
				return 0, err
			}
			o, err := c.Stat(d)
			if errors.Is(err, cache.ErrNotFound) || err == nil && !linked {
				return 0, fmt.Errorf("not cached in %s/%s", upstream, repo)
			}
			if err != nil {
				return 0, err
			}
			return o.Size, nil
		},
	}
}

// exportDigest is the manifest digest of img: its tag's in the cache, which must agree with Digest when both
// are given.
func exportDigest(c *cache.Cache, img Image) (v1.Hash, error) {
	if img.Tag == "" {
		if img.Digest == (v1.Hash{}) {
			return v1.Hash{}, errors.New("names neither a tag nor a digest")
		}
		return img.Digest, nil
	}
	e, err := c.Tag(img.Upstream, img.Repository, img.Tag)
	if errors.Is(err, cache.ErrNotFound) {
		return v1.Hash{}, fmt.Errorf("tag %s of %s/%s is not cached", img.Tag, img.Upstream, img.Repository)
	}
	if err != nil {
		return v1.Hash{}, err
	}
	if img.Digest != (v1.Hash{}) && img.Digest != e.Digest {
		return v1.Hash{}, fmt.Errorf("tag %s points at %s in the cache, not at %s", img.Tag, e.Digest, img.Digest)
	}
	return e.Digest, nil
}

func writeFile(tw *tar.Writer, name string, body []byte) error {
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Size: int64(len(body)), Mode: 0o644, ModTime: layoutTime}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("lifecycle: writing %s: %w", name, err)
	}
	if _, err := tw.Write(body); err != nil {
		return fmt.Errorf("lifecycle: writing %s: %w", name, err)
	}
	return nil
}

func writeDir(tw *tar.Writer, name string) error {
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: layoutTime}); err != nil {
		return fmt.Errorf("lifecycle: writing %s: %w", name, err)
	}
	return nil
}

// writeBlob streams the cached content of o into the archive.
func writeBlob(tw *tar.Writer, c *cache.Cache, o object) error {
	name := blobsDir + "/" + o.digest.Algorithm + "/" + o.digest.Hex
	f, obj, err := c.Content(o.digest)
	if err != nil {
		return fmt.Errorf("lifecycle: %s is no longer cached: %w", o.digest, err)
	}
	defer f.Close()
	if obj.Size != o.size {
		return fmt.Errorf("lifecycle: %s is %d bytes in the cache, %d when the export began", o.digest, obj.Size, o.size)
	}
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Size: o.size, Mode: 0o644, ModTime: layoutTime}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("lifecycle: writing %s: %w", name, err)
	}
	if _, err := io.CopyN(tw, f, o.size); err != nil {
		return fmt.Errorf("lifecycle: writing %s: %w", name, err)
	}
	return nil
}
