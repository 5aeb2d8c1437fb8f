package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// The manifest media types pullgate serves. A manifest's type is always derived from its own bytes
// (parseManifest), never from an upstream's Content-Type, so that it is the same whichever upstream sent it.
const (
	mediaOCIManifest     = "application/vnd.oci.image.manifest.v1+json"
	mediaOCIIndex        = indexMediaType
	mediaDockerManifest  = "application/vnd.docker.distribution.manifest.v2+json"
	mediaDockerList      = "application/vnd.docker.distribution.manifest.list.v2+json"
	mediaOCIArtifact     = "application/vnd.oci.artifact.manifest.v1+json" // deprecated draft, still served
	mediaDockerV1        = "application/vnd.docker.distribution.manifest.v1+json"
	mediaDockerV1Signed  = "application/vnd.docker.distribution.manifest.v1+prettyjws"
	maxLinkedDescriptors = 10000 // more descriptors than any real manifest or index lists
)

// shape is what a manifest media type is allowed to hold.
type shape int

const (
	shapeImage    shape = iota + 1 // config, layers, subject
	shapeIndex                     // manifests, subject
	shapeArtifact                  // blobs, subject
	shapeSchema1                   // fsLayers
)

// shapeOf returns the shape of a known manifest media type, or 0 for any other string. It is cheap: it is what
// lets a cache hit trust its stored media type without parsing the manifest.
func shapeOf(mediaType string) shape {
	switch mediaType {
	case mediaOCIManifest, mediaDockerManifest:
		return shapeImage
	case mediaOCIIndex, mediaDockerList:
		return shapeIndex
	case mediaOCIArtifact:
		return shapeArtifact
	case mediaDockerV1, mediaDockerV1Signed:
		return shapeSchema1
	}
	return 0
}

// errInvalidManifest says that bytes are not a manifest pullgate can serve: not JSON, of no known type, or
// holding fields their type does not define.
var errInvalidManifest = errors.New("not a valid manifest")

// descriptor is the part of an OCI descriptor pullgate reads.
type descriptor struct {
	Digest string `json:"digest"`
	Size   *int64 `json:"size"`
}

// manifestFields is every top-level field of a manifest or index whose presence pullgate checks. Slices are
// nil when the field is absent or null.
type manifestFields struct {
	SchemaVersion *int            `json:"schemaVersion"`
	MediaType     string          `json:"mediaType"`
	Config        *descriptor     `json:"config"`
	Layers        []descriptor    `json:"layers"`
	Manifests     []descriptor    `json:"manifests"`
	Blobs         []descriptor    `json:"blobs"`
	Subject       *descriptor     `json:"subject"`
	FSLayers      []fsLayer       `json:"fsLayers"`
	Signatures    json.RawMessage `json:"signatures"`
}

type fsLayer struct {
	BlobSum string `json:"blobSum"`
}

// linkedDigest is a digest a manifest's type defines as part of the repository, with the size it declares
// (-1 when the type declares none).
type linkedDigest struct {
	digest v1.Hash
	size   int64
}

// parsedManifest is what pullgate knows about a manifest once it checked its shape.
type parsedManifest struct {
	mediaType string
	refs      []linkedDigest // deduplicated, in document order
	// blobs is how many of refs are an image manifest's config and layers: what a client pulling it fetches next.
	blobs int
}

// parseManifest checks that body is a manifest of a known type whose fields agree with that type, and returns
// the type and the digests that type defines: config, layers and subject for image manifests; manifests and
// subject for indexes; blobs and subject for OCI artifact manifests; fsLayers for schema 1. Other fields that
// hold digests are never read, since registries validate only the fields of a manifest's own type. The type is
// the manifest's own mediaType field, else what its shape says. Errors wrap errInvalidManifest.
func parseManifest(body []byte) (parsedManifest, error) {
	var mf manifestFields
	if err := json.Unmarshal(body, &mf); err != nil {
		return parsedManifest{}, fmt.Errorf("%w: %v", errInvalidManifest, err)
	}
	if err := checkKeys(body); err != nil {
		return parsedManifest{}, err
	}
	mt, err := mf.derivedType()
	if err != nil {
		return parsedManifest{}, err
	}
	if err := mf.checkShape(shapeOf(mt)); err != nil {
		return parsedManifest{}, fmt.Errorf("%w: %s %v", errInvalidManifest, mt, err)
	}
	p := parsedManifest{mediaType: mt}
	seen := map[v1.Hash]int64{} // declared sizes, -1 for none
	add := func(s string, size *int64) error {
		d, err := parseDigest(s)
		if err != nil {
			return nil // an unusable digest can never be requested: nothing to link
		}
		n := int64(-1)
		if size != nil {
			if *size < 0 {
				return fmt.Errorf("%w: descriptor %s has a negative size", errInvalidManifest, d)
			}
			n = *size
		}
		if prev, ok := seen[d]; ok {
			if prev >= 0 && n >= 0 && prev != n {
				return fmt.Errorf("%w: %s is declared with sizes %d and %d", errInvalidManifest, d, prev, n)
			}
			return nil
		}
		if len(p.refs) == maxLinkedDescriptors {
			return fmt.Errorf("%w: more than %d descriptors", errInvalidManifest, maxLinkedDescriptors)
		}
		seen[d] = n
		p.refs = append(p.refs, linkedDigest{digest: d, size: n})
		return nil
	}
	var descs []descriptor
	switch shapeOf(mt) {
	case shapeImage:
		descs = append(append(descs, *mf.Config), mf.Layers...)
	case shapeIndex:
		descs = mf.Manifests
	case shapeArtifact:
		descs = mf.Blobs
	case shapeSchema1:
		for _, l := range mf.FSLayers {
			if err := add(l.BlobSum, nil); err != nil {
				return parsedManifest{}, err
			}
		}
	}
	for _, d := range descs {
		if err := add(d.Digest, d.Size); err != nil {
			return parsedManifest{}, err
		}
	}
	if shapeOf(mt) == shapeImage {
		p.blobs = len(p.refs)
	}
	if mf.Subject != nil {
		if err := add(mf.Subject.Digest, mf.Subject.Size); err != nil {
			return parsedManifest{}, err
		}
	}
	return p, nil
}

// derivedType is the manifest's media type: its mediaType field when it has one (which must be a known type),
// else schema 1 for schemaVersion 1, else what the shape of a schemaVersion 2 document says.
func (mf *manifestFields) derivedType() (string, error) {
	version := 0
	if mf.SchemaVersion != nil {
		version = *mf.SchemaVersion
	}
	if version == 1 {
		if mf.MediaType != "" && shapeOf(mf.MediaType) != shapeSchema1 {
			return "", fmt.Errorf("%w: schemaVersion 1 with mediaType %q", errInvalidManifest, mf.MediaType)
		}
		if len(mf.Signatures) > 0 && string(mf.Signatures) != "null" {
			return mediaDockerV1Signed, nil
		}
		return mediaDockerV1, nil
	}
	if mf.MediaType != "" {
		s := shapeOf(mf.MediaType)
		switch {
		case s == 0:
			return "", fmt.Errorf("%w: unknown mediaType %q", errInvalidManifest, mf.MediaType)
		case s == shapeSchema1:
			return "", fmt.Errorf("%w: mediaType %q with schemaVersion %d", errInvalidManifest, mf.MediaType, version)
		case s == shapeArtifact && mf.SchemaVersion == nil:
			return mf.MediaType, nil // the draft artifact manifest has no schemaVersion
		case version != 2:
			return "", fmt.Errorf("%w: mediaType %q with schemaVersion %d", errInvalidManifest, mf.MediaType, version)
		}
		return mf.MediaType, nil
	}
	switch {
	case version != 2:
		return "", fmt.Errorf("%w: no mediaType and schemaVersion %d", errInvalidManifest, version)
	case mf.Manifests != nil && mf.Config == nil && mf.Layers == nil:
		return mediaOCIIndex, nil
	case mf.Config != nil && mf.Manifests == nil:
		return mediaOCIManifest, nil
	}
	return "", fmt.Errorf("%w: no mediaType, and its fields are neither an image manifest's nor an index's", errInvalidManifest)
}

// checkShape refuses fields that contradict the shape s: a client that guesses the type from the fields must
// never see something other than what pullgate linked.
func (mf *manifestFields) checkShape(s shape) error {
	has := map[string]bool{
		"config":    mf.Config != nil,
		"layers":    mf.Layers != nil,
		"manifests": mf.Manifests != nil,
		"blobs":     mf.Blobs != nil,
		"fsLayers":  mf.FSLayers != nil,
	}
	var required string
	var forbidden []string
	switch s {
	case shapeImage:
		// "blobs" is not forbidden: unknown fields must be ignored, and it is not linked.
		required, forbidden = "config", []string{"manifests", "fsLayers"}
	case shapeIndex:
		required, forbidden = "manifests", []string{"config", "layers", "blobs", "fsLayers"}
	case shapeArtifact:
		forbidden = []string{"config", "layers", "manifests", "fsLayers"}
	case shapeSchema1:
		required, forbidden = "fsLayers", []string{"config", "layers", "manifests", "blobs"}
		if mf.Subject != nil {
			forbidden = append(forbidden, "subject")
			has["subject"] = true
		}
	}
	if required != "" && !has[required] {
		return fmt.Errorf("without %q", required)
	}
	for _, f := range forbidden {
		if has[f] {
			return fmt.Errorf("with %q", f)
		}
	}
	return nil
}

// servedType is the media type to serve a cached manifest with. A stored known manifest type is trusted
// without parsing (pullgate derives it from the content before storing); anything else was labelled by an
// older pullgate from an upstream's Content-Type, and is derived from the content again.
func servedType(stored string, body []byte) (string, error) {
	if shapeOf(stored) != 0 {
		return stored, nil
	}
	p, err := parseManifest(body)
	if err != nil {
		return "", err
	}
	return p.mediaType, nil
}

// objectKeys are the keys pullgate reads in one kind of JSON object, each with what it reads in the key's value.
type objectKeys map[string]valueKeys

// valueKeys says what pullgate reads in a value: the keys of an object, or of each object in an array.
type valueKeys struct {
	obj, elems objectKeys
}

// checkKeys refuses a manifest in which a key that pullgate reads appears twice, or in another case. Go's JSON
// decoder matches keys case-insensitively and keeps the last of duplicates, where a registry written in another
// language may read the exact key, or the first: "layers" and "LAYERS" in one manifest would let pullgate link
// digests the registry never checked.
func checkKeys(body []byte) error {
	desc := objectKeys{"digest": {}, "size": {}}
	descs := valueKeys{elems: desc}
	top := objectKeys{
		"schemaVersion": {}, "mediaType": {}, "signatures": {},
		"config": {obj: desc}, "subject": {obj: desc},
		"layers": descs, "manifests": descs, "blobs": descs,
		"fsLayers": {elems: objectKeys{"blobSum": {}}},
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := checkValue(dec, valueKeys{obj: top}); err != nil {
		return fmt.Errorf("%w: %v", errInvalidManifest, err)
	}
	return nil
}

// checkValue reads one JSON value from dec, checking the keys v names in it.
func checkValue(dec *json.Decoder, v valueKeys) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	switch tok {
	case json.Delim('{'):
		seen := map[string]bool{}
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				return err
			}
			key, _ := tok.(string)
			var next valueKeys
			for name, vk := range v.obj {
				if !strings.EqualFold(key, name) {
					continue
				}
				if key != name || seen[name] {
					return fmt.Errorf("ambiguous key %q", key)
				}
				seen[name], next = true, vk
			}
			if err := checkValue(dec, next); err != nil {
				return err
			}
		}
	case json.Delim('['):
		for dec.More() {
			if err := checkValue(dec, valueKeys{obj: v.elems}); err != nil {
				return err
			}
		}
	default:
		return nil
	}
	_, err = dec.Token() // the closing delimiter
	return err
}
