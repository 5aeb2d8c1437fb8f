// Package lifecycle moves images between the cache and OCI image layout archives, for airgaps: Export writes
// the images of a cache into a tar that skopeo's oci-archive:, crane and oras read, and Import loads such a
// tar into a cache, verifying every byte and attaching each image to its upstream and repository.
//
// It knows OCI image layouts and the cache; it speaks no HTTP and reaches no upstream. Which upstream and
// repository a name means is decided by the caller (ImportOptions.Resolve), with the proxy's rules.
package lifecycle

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullgate/pullgate/cache"
	"github.com/pullgate/pullgate/names"
)

// Image is one image as a bundle names it and as the cache keeps it.
type Image struct {
	// Name is the full reference written into the bundle's index.json, "docker.io/library/nginx:1.25".
	Name string
	// Upstream is the configured upstream name ("docker.io") and Repository the repository at it
	// ("library/nginx"), as the proxy's resolve gives them.
	Upstream, Repository string
	// Tag is the tag, or empty when the image is named by digest only.
	Tag string
	// Digest is the manifest digest, or the zero Hash when the image is named by tag only.
	Digest v1.Hash
}

// ErrIncomplete says that an image's closure (its manifests, configs and layers, every platform) is not all
// there: not cached (Export) or not in the bundle (Import). The error lists what is missing.
var ErrIncomplete = errors.New("image incomplete")

// Names of the parts of an OCI image layout.
const (
	layoutFile    = "oci-layout"
	indexFile     = "index.json"
	blobsDir      = "blobs"
	layoutVersion = "1.0.0"

	annotationRefName       = "org.opencontainers.image.ref.name"
	annotationContainerdRef = "io.containerd.image.name"
)

// Manifest media types an image layout may hold.
const (
	mediaOCIManifest    = "application/vnd.oci.image.manifest.v1+json"
	mediaOCIIndex       = "application/vnd.oci.image.index.v1+json"
	mediaDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	mediaDockerList     = "application/vnd.docker.distribution.manifest.list.v2+json"
	mediaOCIArtifact    = "application/vnd.oci.artifact.manifest.v1+json"
)

// Bounds that no real image comes near.
const (
	// DefaultMaxManifestSize is the largest manifest read, the proxy's limit too.
	DefaultMaxManifestSize = 4 << 20
	// maxDepth bounds indexes of indexes.
	maxDepth = 8
)

// shape is what a manifest media type holds.
type shape int

const (
	shapeImage    shape = iota + 1 // config and layers
	shapeIndex                     // manifests
	shapeArtifact                  // blobs
)

func shapeOf(mediaType string) shape {
	switch mediaType {
	case mediaOCIManifest, mediaDockerManifest:
		return shapeImage
	case mediaOCIIndex, mediaDockerList:
		return shapeIndex
	case mediaOCIArtifact:
		return shapeArtifact
	}
	return 0
}

// descriptor is an OCI content descriptor.
type descriptor struct {
	MediaType   string            `json:"mediaType,omitempty"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    json.RawMessage   `json:"platform,omitempty"`
}

// manifestDoc is every field of a manifest or index that the closure depends on. Slices are nil when the field
// is absent.
type manifestDoc struct {
	SchemaVersion *int         `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        *descriptor  `json:"config"`
	Layers        []descriptor `json:"layers"`
	Manifests     []descriptor `json:"manifests"`
	Blobs         []descriptor `json:"blobs"`
	FSLayers      []any        `json:"fsLayers"`
}

// parseManifest returns the media type of a manifest, derived from its content as the proxy derives it (its
// own mediaType field, else what its fields say), with the descriptors that type defines, each marked as a
// manifest or not. Schema 1 manifests cannot be in an image layout and are refused.
func parseManifest(body []byte) (mediaType string, children []child, err error) {
	var m manifestDoc
	if err := json.Unmarshal(body, &m); err != nil {
		return "", nil, fmt.Errorf("not a manifest: %w", err)
	}
	if m.SchemaVersion != nil && *m.SchemaVersion == 1 || m.FSLayers != nil {
		return "", nil, errors.New("a schema 1 manifest cannot be in an OCI image layout")
	}
	mediaType = m.MediaType
	switch {
	case mediaType != "" && shapeOf(mediaType) == 0:
		return "", nil, fmt.Errorf("unknown manifest mediaType %q", mediaType)
	case mediaType == mediaOCIArtifact && m.SchemaVersion == nil:
	case m.SchemaVersion == nil || *m.SchemaVersion != 2:
		return "", nil, errors.New("not a manifest: schemaVersion is not 2")
	case mediaType != "":
	case m.Manifests != nil && m.Config == nil && m.Layers == nil:
		mediaType = mediaOCIIndex
	case m.Config != nil && m.Manifests == nil:
		mediaType = mediaOCIManifest
	default:
		return "", nil, errors.New("not a manifest: no mediaType, and its fields are neither an image manifest's nor an index's")
	}
	switch shapeOf(mediaType) {
	case shapeImage:
		if m.Config == nil || m.Manifests != nil {
			return "", nil, fmt.Errorf("%s without config, or with manifests", mediaType)
		}
		children = append(children, child{*m.Config, false})
		for _, l := range m.Layers {
			children = append(children, child{l, false})
		}
	case shapeIndex:
		if m.Manifests == nil || m.Config != nil || m.Layers != nil || m.Blobs != nil {
			return "", nil, fmt.Errorf("%s without manifests, or with config, layers or blobs", mediaType)
		}
		for _, c := range m.Manifests {
			children = append(children, child{c, true})
		}
	case shapeArtifact:
		if m.Config != nil || m.Layers != nil || m.Manifests != nil {
			return "", nil, fmt.Errorf("%s with config, layers or manifests", mediaType)
		}
		for _, b := range m.Blobs {
			children = append(children, child{b, false})
		}
	}
	return mediaType, children, nil
}

// child is a descriptor a manifest's type defines, and whether it names a manifest.
type child struct {
	desc     descriptor
	manifest bool
}

// object is one piece of an image's closure.
type object struct {
	digest v1.Hash
	size   int64
	// mediaType is the type derived from the content of a manifest; empty for other blobs.
	mediaType string
}

// source is where a closure is looked for.
type source struct {
	c *cache.Cache
	// have returns the size of d when d is there for this walk, or an error saying why not.
	have            func(d v1.Hash) (int64, error)
	maxManifestSize int64
	// maxObjects bounds the closure; zero means no bound.
	maxObjects int
}

// closure is what walk found: every object once (the root first), and every problem.
type closure struct {
	objects  []object
	problems []string
	seen     map[v1.Hash]int64
}

// walk collects the closure of root: the manifest, and what its type defines, down through indexes (every
// platform). It records a problem, and goes on, for anything missing, of another size than its descriptor
// says, not a manifest where one is named, or of another media type than its descriptor says. A subject is not
// part of an image's closure and is not followed.
func (s source) walk(root descriptor) closure {
	cl := closure{seen: map[v1.Hash]int64{}}
	s.visit(&cl, root, true, 0, "")
	return cl
}

func (s source) visit(cl *closure, desc descriptor, manifest bool, depth int, parent string) {
	where := ""
	if parent != "" {
		where = " (named by " + parent + ")"
	}
	d, err := names.ParseDigest(desc.Digest)
	if err != nil {
		cl.problems = append(cl.problems, fmt.Sprintf("descriptor%s: %v", where, err))
		return
	}
	if desc.Size < 0 {
		cl.problems = append(cl.problems, fmt.Sprintf("%s%s: negative size %d", d, where, desc.Size))
		return
	}
	if prev, ok := cl.seen[d]; ok {
		if prev != desc.Size {
			cl.problems = append(cl.problems, fmt.Sprintf("%s%s: declared with sizes %d and %d", d, where, prev, desc.Size))
		}
		return
	}
	if s.maxObjects > 0 && len(cl.seen) >= s.maxObjects {
		cl.problems = append(cl.problems, fmt.Sprintf("more than %d objects in one image", s.maxObjects))
		return
	}
	cl.seen[d] = desc.Size
	size, err := s.have(d)
	if err != nil {
		cl.problems = append(cl.problems, fmt.Sprintf("%s%s: %v", d, where, err))
		return
	}
	if size != desc.Size {
		cl.problems = append(cl.problems, fmt.Sprintf("%s%s: %d bytes, its descriptor says %d", d, where, size, desc.Size))
		return
	}
	if !manifest {
		cl.objects = append(cl.objects, object{digest: d, size: size})
		return
	}
	if depth >= maxDepth {
		cl.problems = append(cl.problems, fmt.Sprintf("%s%s: indexes nested deeper than %d", d, where, maxDepth))
		return
	}
	if size > s.maxManifestSize {
		cl.problems = append(cl.problems, fmt.Sprintf("%s%s: a manifest of %d bytes, the limit is %d", d, where, size, s.maxManifestSize))
		return
	}
	body, err := s.read(d, size)
	if err != nil {
		cl.problems = append(cl.problems, fmt.Sprintf("%s%s: %v", d, where, err))
		return
	}
	mt, children, err := parseManifest(body)
	if err != nil {
		cl.problems = append(cl.problems, fmt.Sprintf("%s%s: %v", d, where, err))
		return
	}
	if desc.MediaType != "" && desc.MediaType != mt {
		cl.problems = append(cl.problems, fmt.Sprintf("%s%s: its descriptor says mediaType %q, the manifest is %q", d, where, desc.MediaType, mt))
		return
	}
	cl.objects = append(cl.objects, object{digest: d, size: size, mediaType: mt})
	for _, ch := range children {
		s.visit(cl, ch.desc, ch.manifest, depth+1, d.String())
	}
}

// read returns the stored content of a manifest of the given size.
func (s source) read(d v1.Hash, size int64) ([]byte, error) {
	f, _, err := s.c.Content(d)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	body := make([]byte, size)
	if _, err := io.ReadFull(f, body); err != nil {
		return nil, fmt.Errorf("reading the stored manifest: %w", err)
	}
	return body, nil
}

// rootDescriptor is the descriptor of a stored manifest, its type derived from its content.
func rootDescriptor(s source, d v1.Hash) (descriptor, error) {
	size, err := s.have(d)
	if err != nil {
		return descriptor{}, err
	}
	if size > s.maxManifestSize {
		return descriptor{}, fmt.Errorf("a manifest of %d bytes, the limit is %d", size, s.maxManifestSize)
	}
	body, err := s.read(d, size)
	if err != nil {
		return descriptor{}, err
	}
	mt, _, err := parseManifest(body)
	if err != nil {
		return descriptor{}, err
	}
	return descriptor{MediaType: mt, Digest: d.String(), Size: size}, nil
}

// listProblems formats problems one per line under a heading.
func listProblems(heading string, problems []string) string {
	var b bytes.Buffer
	b.WriteString(heading)
	for _, p := range problems {
		b.WriteString("\n  ")
		b.WriteString(p)
	}
	return b.String()
}

// isTagOnly reports whether a ref.name is only a tag ("1.25", "latest"): it has no '/', ':' or '@'.
func isTagOnly(name string) bool { return !strings.ContainsAny(name, "/:@") }
