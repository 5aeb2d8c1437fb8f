package lifecycle

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullgate/pullgate/cache"
	"github.com/pullgate/pullgate/names"
)

// Default bounds of Import.
const (
	DefaultMaxIndexSize = 4 << 20
	DefaultMaxImages    = 10000
	DefaultMaxObjects   = 100000
	// maxLayoutFileSize bounds oci-layout, which holds one short field.
	maxLayoutFileSize = 4 << 10
)

// ErrBadBundle says that an archive is not an OCI image layout Import accepts: an unsafe or unknown entry, a
// missing or oversized oci-layout or index.json, more objects or images than allowed. The error says which.
var ErrBadBundle = errors.New("bad bundle")

// ImportOptions configures Import. Resolve is required; the zero value of every other field is usable.
type ImportOptions struct {
	// Resolve maps a name from the bundle's index.json ("docker.io/library/nginx:1.25") to the upstream and
	// repository the proxy serves it under, with its tag and, when the name has one, its digest. An error
	// fails that image only. Required.
	Resolve func(name string) (Image, error)
	// Immutable reports whether a tag is immutable there: it is then set with SetImmutableTag, and an image
	// whose tag already pins another digest fails. Nil means no tag is.
	Immutable func(upstream, repo, tag string) bool
	// MaxIndexSize bounds index.json; zero means DefaultMaxIndexSize.
	MaxIndexSize int64
	// MaxManifestSize bounds each manifest; zero means DefaultMaxManifestSize.
	MaxManifestSize int64
	// MaxImages bounds the descriptors of index.json; zero means DefaultMaxImages.
	MaxImages int
	// MaxObjects bounds the blobs of the archive; zero means DefaultMaxObjects.
	MaxObjects int
	// Now is the clock, for the tags' Fetched time; nil means time.Now.
	Now func() time.Time
	// Logger receives a warning for each entry skipped; nil means slog.Default().
	Logger *slog.Logger
}

func (o ImportOptions) withDefaults() ImportOptions {
	if o.MaxIndexSize <= 0 {
		o.MaxIndexSize = DefaultMaxIndexSize
	}
	if o.MaxManifestSize <= 0 {
		o.MaxManifestSize = DefaultMaxManifestSize
	}
	if o.MaxImages <= 0 {
		o.MaxImages = DefaultMaxImages
	}
	if o.MaxObjects <= 0 {
		o.MaxObjects = DefaultMaxObjects
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Immutable == nil {
		o.Immutable = func(string, string, string) bool { return false }
	}
	return o
}

// ImportStats says what Import did.
type ImportStats struct {
	// Images has one entry per descriptor of index.json that has a name, in its order, imported or not.
	Images []ImportedImage
	// Unnamed counts the descriptors of index.json without a name: their content is stored, nothing is tagged.
	Unnamed int
	// Objects and Bytes count the blobs of the archive that were verified and stored.
	Objects int
	Bytes   int64
	// Refused lists the blobs whose content did not match their digest or size: nothing of them was kept.
	Refused []RefusedObject
}

// ImportedImage is the outcome for one image of the bundle.
type ImportedImage struct {
	// Image is what Resolve made of the name, with the manifest's Digest (only Name is set when Resolve
	// failed).
	Image
	// MediaType is the manifest's type; Objects and Bytes count its closure.
	MediaType string
	Objects   int
	Bytes     int64
	// Err is why the image was not imported; nil when it was (its content linked and its tag set).
	Err error
}

// RefusedObject is a blob of the archive that failed verification.
type RefusedObject struct {
	Digest v1.Hash
	Err    error
}

// Import reads an OCI image layout archive from r into c. The archive is never trusted: each blobs/<alg>/<hex>
// entry is written through a cache.Writer under the digest its path names, so that only bytes that hash to it
// are kept (a mismatch is listed in Refused); oci-layout and index.json are read with size caps; an entry
// with an absolute path, "..", a link, a device or any other unknown entry ends the import with an error
// wrapping ErrBadBundle (directories, and the manifest.json and repositories files of docker save, are skipped
// with a warning).
//
// Then, for each descriptor of index.json with a name (io.containerd.image.name, else
// org.opencontainers.image.ref.name; a ref.name that is only a tag is an error naming it), the name is resolved
// with opts.Resolve and the image's closure checked: every manifest, config and layer (every platform) must
// have been in this archive, verified, of the size its descriptor says, each manifest parsing as the type its
// descriptor says. Content already cached does not count: a bundle proves that an image is in a repository
// only by carrying its bytes. A complete image has its manifests described (SetMediaType), every object linked
// to its repository with its size, and then its tag set. An incomplete image is linked and tagged not at all;
// it is listed with its reason in the stats and in the error (which wraps ErrIncomplete when content was
// missing). Content stored for an image that failed stays in the cache, unlinked: it is verified, and served
// nowhere.
func Import(ctx context.Context, r io.Reader, c *cache.Cache, opts ImportOptions) (ImportStats, error) {
	if opts.Resolve == nil {
		return ImportStats{}, errors.New("lifecycle: ImportOptions.Resolve is required")
	}
	opts = opts.withDefaults()
	var stats ImportStats
	stored := map[v1.Hash]int64{} // verified and stored from this archive
	var layout, index []byte
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return stats, err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return stats, fmt.Errorf("lifecycle: reading the bundle: %w", err)
		}
		p, err := entryPath(hdr.Name)
		if err != nil {
			return stats, err
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if p != "" && p != blobsDir && !isAlgDir(p) {
				opts.Logger.Warn("import: skipping a directory that is no part of an OCI image layout", "entry", p)
			}
			continue
		case tar.TypeXGlobalHeader:
			continue // tar metadata (git archive writes one), no file
		case tar.TypeReg:
		default:
			return stats, fmt.Errorf("lifecycle: %w: entry %q is a %s; an image layout holds only files and directories", ErrBadBundle, hdr.Name, typeName(hdr.Typeflag))
		}
		switch {
		case p == layoutFile:
			if layout != nil {
				return stats, fmt.Errorf("lifecycle: %w: %s is in the archive twice", ErrBadBundle, layoutFile)
			}
			if layout, err = readSmall(tr, hdr, maxLayoutFileSize); err != nil {
				return stats, err
			}
		case p == indexFile:
			if index != nil {
				return stats, fmt.Errorf("lifecycle: %w: %s is in the archive twice", ErrBadBundle, indexFile)
			}
			if index, err = readSmall(tr, hdr, opts.MaxIndexSize); err != nil {
				return stats, err
			}
		case strings.HasPrefix(p, blobsDir+"/"):
			d, err := blobDigest(p)
			if err != nil {
				return stats, err
			}
			if len(stored)+len(stats.Refused) >= opts.MaxObjects {
				return stats, fmt.Errorf("lifecycle: %w: more than %d blobs", ErrBadBundle, opts.MaxObjects)
			}
			obj, err := storeBlob(ctx, c, d, tr, hdr.Size)
			var dm *cache.DigestMismatchError
			var sm *cache.SizeMismatchError
			switch {
			case errors.As(err, &dm) || errors.As(err, &sm):
				stats.Refused = append(stats.Refused, RefusedObject{Digest: d, Err: err})
				opts.Logger.Warn("import: refused a blob that does not match its digest; nothing of it was kept", "entry", p, "error", err)
				continue
			case err != nil:
				return stats, err
			}
			if _, dup := stored[d]; !dup {
				stats.Objects++
				stats.Bytes += obj.Size
			}
			stored[d] = obj.Size
		case p == "manifest.json" || p == "repositories":
			opts.Logger.Warn("import: skipping a docker save file; the OCI image layout beside it is imported", "entry", p)
		default:
			return stats, fmt.Errorf("lifecycle: %w: unknown entry %q; an image layout holds %s, %s and %s/<algorithm>/<hex>", ErrBadBundle, hdr.Name, layoutFile, indexFile, blobsDir)
		}
	}
	if err := checkLayout(layout); err != nil {
		return stats, err
	}
	descs, err := parseIndex(index, opts.MaxImages)
	if err != nil {
		return stats, err
	}

	src := source{
		c:               c,
		maxManifestSize: opts.MaxManifestSize,
		maxObjects:      opts.MaxObjects,
		have: func(d v1.Hash) (int64, error) {
			size, ok := stored[d]
			if !ok {
				return 0, errors.New("not in the bundle")
			}
			return size, nil
		},
	}
	var failed []error
	for _, desc := range descs {
		name, err := descriptorName(desc)
		if err != nil {
			stats.Images = append(stats.Images, ImportedImage{Image: Image{Name: name}, Err: err})
			failed = append(failed, err)
			continue
		}
		if name == "" {
			stats.Unnamed++
			opts.Logger.Warn("import: a manifest of index.json has no name; its content is stored, nothing is tagged", "digest", desc.Digest)
			continue
		}
		res := importImage(c, src, desc, name, opts)
		stats.Images = append(stats.Images, res)
		if res.Err != nil {
			failed = append(failed, res.Err)
		}
	}
	if len(failed) > 0 {
		return stats, fmt.Errorf("lifecycle: %d of %d images not imported: %w", len(failed), len(stats.Images), errors.Join(failed...))
	}
	return stats, nil
}

// importImage checks one image's closure and, when it is complete, describes, links and tags it.
func importImage(c *cache.Cache, src source, desc descriptor, name string, opts ImportOptions) ImportedImage {
	res := ImportedImage{Image: Image{Name: name}}
	fail := func(err error) ImportedImage {
		res.Err = fmt.Errorf("%s: %w", name, err)
		return res
	}
	img, err := opts.Resolve(name)
	if err != nil {
		return fail(err)
	}
	img.Name = name
	res.Image = img
	d, err := names.ParseDigest(desc.Digest)
	if err != nil {
		return fail(err)
	}
	if img.Digest != (v1.Hash{}) && img.Digest != d {
		return fail(fmt.Errorf("the name says digest %s, index.json says %s", img.Digest, d))
	}
	if img.Tag == "" && img.Digest == (v1.Hash{}) {
		return fail(errors.New("the name has neither a tag nor a digest"))
	}
	res.Digest = d
	cl := src.walk(desc)
	if len(cl.problems) > 0 {
		return fail(fmt.Errorf("%w: nothing of it was tagged or linked:\n%s", ErrIncomplete, listProblems("", cl.problems)[1:]))
	}
	res.MediaType = cl.objects[0].mediaType
	res.Objects = len(cl.objects)
	for _, o := range cl.objects {
		res.Bytes += o.size
		if o.mediaType != "" {
			if err := c.SetMediaType(o.digest, o.mediaType); err != nil {
				return fail(err)
			}
		}
	}
	for _, o := range cl.objects {
		if err := c.LinkDescriptor(img.Upstream, img.Repository, o.digest, o.size); err != nil {
			return fail(err)
		}
	}
	if img.Tag == "" {
		return res
	}
	e := cache.TagEntry{Digest: d, MediaType: res.MediaType, Size: cl.objects[0].size, Fetched: opts.Now()}
	if !opts.Immutable(img.Upstream, img.Repository, img.Tag) {
		if err := c.SetTag(img.Upstream, img.Repository, img.Tag, e); err != nil {
			return fail(err)
		}
		return res
	}
	kept, err := c.SetImmutableTag(img.Upstream, img.Repository, img.Tag, e)
	if err != nil {
		return fail(err)
	}
	if kept.Digest != d {
		return fail(fmt.Errorf("immutable tag %s of %s/%s pins %s; it was not moved (the content is linked)", img.Tag, img.Upstream, img.Repository, kept.Digest))
	}
	return res
}

// storeBlob writes the n bytes of an entry under d; Commit keeps them only when they hash to d.
func storeBlob(ctx context.Context, c *cache.Cache, d v1.Hash, r io.Reader, n int64) (cache.Object, error) {
	w, err := c.NewWriter(d, "", n)
	if err != nil {
		return cache.Object{}, fmt.Errorf("lifecycle: storing %s: %w", d, err)
	}
	if _, err := io.Copy(w, ctxReader{ctx, r}); err != nil {
		w.Abort(err)
		return cache.Object{}, fmt.Errorf("lifecycle: storing %s: %w", d, err)
	}
	return w.Commit()
}

// ctxReader stops a copy when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// entryPath returns an entry's path relative to the layout's root ("" for the root itself), refusing absolute
// paths, "..", and any path that is not clean.
func entryPath(name string) (string, error) {
	bad := func(why string) error {
		return fmt.Errorf("lifecycle: %w: entry %q: %s", ErrBadBundle, name, why)
	}
	if strings.HasPrefix(name, "/") {
		return "", bad("an absolute path")
	}
	if strings.ContainsAny(name, "\\\x00") {
		return "", bad("a backslash or NUL in the path")
	}
	p := strings.TrimPrefix(name, "./")
	p = strings.TrimSuffix(p, "/")
	if p == "" || p == "." {
		return "", nil
	}
	for _, el := range strings.Split(p, "/") {
		switch el {
		case "..":
			return "", bad("the path leaves the layout")
		case "", ".":
			return "", bad("not a clean path")
		}
	}
	return p, nil
}

// isAlgDir reports whether p is blobs/<algorithm>.
func isAlgDir(p string) bool {
	rest, ok := strings.CutPrefix(p, blobsDir+"/")
	return ok && (rest == "sha256" || rest == "sha512")
}

// blobDigest is the digest a path blobs/<alg>/<hex> names.
func blobDigest(p string) (v1.Hash, error) {
	parts := strings.Split(p, "/")
	if len(parts) != 3 {
		return v1.Hash{}, fmt.Errorf("lifecycle: %w: entry %q is not %s/<algorithm>/<hex>", ErrBadBundle, p, blobsDir)
	}
	d, err := names.ParseDigest(parts[1] + ":" + parts[2])
	if err != nil {
		return v1.Hash{}, fmt.Errorf("lifecycle: %w: entry %q: %w", ErrBadBundle, p, err)
	}
	return d, nil
}

// readSmall reads a whole entry of at most limit bytes.
func readSmall(tr *tar.Reader, hdr *tar.Header, limit int64) ([]byte, error) {
	if hdr.Size > limit {
		return nil, fmt.Errorf("lifecycle: %w: %s is %d bytes; the limit is %d", ErrBadBundle, hdr.Name, hdr.Size, limit)
	}
	b, err := io.ReadAll(io.LimitReader(tr, limit))
	if err != nil {
		return nil, fmt.Errorf("lifecycle: reading %s: %w", hdr.Name, err)
	}
	return b, nil
}

func checkLayout(b []byte) error {
	if b == nil {
		return fmt.Errorf("lifecycle: %w: no %s file: not an OCI image layout", ErrBadBundle, layoutFile)
	}
	var l struct {
		Version string `json:"imageLayoutVersion"`
	}
	if err := json.Unmarshal(b, &l); err != nil {
		return fmt.Errorf("lifecycle: %w: %s: %w", ErrBadBundle, layoutFile, err)
	}
	if l.Version != layoutVersion {
		return fmt.Errorf("lifecycle: %w: %s says imageLayoutVersion %q; pullgate reads %q", ErrBadBundle, layoutFile, l.Version, layoutVersion)
	}
	return nil
}

func parseIndex(b []byte, maxImages int) ([]descriptor, error) {
	if b == nil {
		return nil, fmt.Errorf("lifecycle: %w: no %s file: not an OCI image layout", ErrBadBundle, indexFile)
	}
	var idx struct {
		SchemaVersion int          `json:"schemaVersion"`
		Manifests     []descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, fmt.Errorf("lifecycle: %w: %s: %w", ErrBadBundle, indexFile, err)
	}
	if idx.SchemaVersion != 2 {
		return nil, fmt.Errorf("lifecycle: %w: %s has schemaVersion %d, not 2", ErrBadBundle, indexFile, idx.SchemaVersion)
	}
	if len(idx.Manifests) > maxImages {
		return nil, fmt.Errorf("lifecycle: %w: %s lists %d manifests; the limit is %d", ErrBadBundle, indexFile, len(idx.Manifests), maxImages)
	}
	return idx.Manifests, nil
}

// descriptorName is the image name of an index.json descriptor: io.containerd.image.name, else
// org.opencontainers.image.ref.name; "" when it has neither. A ref.name that is only a tag names no image and
// is an error; so is a full ref.name that disagrees with io.containerd.image.name.
func descriptorName(desc descriptor) (string, error) {
	ctr, ref := desc.Annotations[annotationContainerdRef], desc.Annotations[annotationRefName]
	switch {
	case ctr != "":
		if ref != "" && !isTagOnly(ref) && ref != ctr {
			return ctr, fmt.Errorf("%s: %s says %q, %s says %q", desc.Digest, annotationContainerdRef, ctr, annotationRefName, ref)
		}
		return ctr, nil
	case ref != "" && isTagOnly(ref):
		return ref, fmt.Errorf("%s: %s %q is only a tag: it says nothing of the registry and repository; write the full name (docker.io/library/nginx:1.25) in %s or %s",
			desc.Digest, annotationRefName, ref, annotationRefName, annotationContainerdRef)
	}
	return ref, nil
}

func typeName(t byte) string {
	switch t {
	case tar.TypeSymlink:
		return "symbolic link"
	case tar.TypeLink:
		return "hard link"
	case tar.TypeChar, tar.TypeBlock:
		return "device"
	case tar.TypeFifo:
		return "named pipe"
	}
	return fmt.Sprintf("entry of type %q", t)
}
