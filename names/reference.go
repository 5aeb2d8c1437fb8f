package names

import (
	"fmt"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// maxReferenceLength bounds the input of ParseReference: the longest name, tag and sha512 digest together.
const maxReferenceLength = MaxRepositoryLength + 1 + MaxTagLength + 1 + len("sha512:") + 128

// Reference is an image reference as users write it in manifests, in canonical form. A Reference from
// ParseReference or Through always has a Registry and a Repository, and a Tag, a Digest or both.
type Reference struct {
	// Registry is the lowercase host[:port] that serves the image; "docker.io" for Docker Hub under any of
	// its names.
	Registry string
	// Repository is the repository at that registry, "library/" included for Docker Hub's one-component
	// names.
	Repository string
	// Tag is the tag, or empty when the reference names only a digest.
	Tag string
	// Digest is the manifest digest, or the zero Hash when the reference names only a tag.
	Digest v1.Hash
}

// ParseReference parses an image reference as Docker does, with the stricter rules listed in the package
// documentation: "nginx" is docker.io/library/nginx:latest; "ghcr.io/o/r@sha256:..." has no tag; a tag and a
// digest together are both kept. The first component names the registry when it contains '.' or ':' or is
// "localhost". The error wraps ErrNameInvalid, ErrTagInvalid or ErrDigestInvalid.
func ParseReference(s string) (Reference, error) {
	if s == "" {
		return Reference{}, fmt.Errorf("%w: empty image reference", ErrNameInvalid)
	}
	if len(s) > maxReferenceLength {
		return Reference{}, fmt.Errorf("%w: image reference %s: %d bytes, the limit is %d", ErrNameInvalid, quote(s), len(s), maxReferenceLength)
	}
	var r Reference
	name, digest, hasDigest := strings.Cut(s, "@")
	if hasDigest {
		h, err := ParseDigest(digest)
		if err != nil {
			return Reference{}, fmt.Errorf("image reference %s: %w", quote(s), err)
		}
		r.Digest = h
	}
	if i := strings.LastIndexByte(name, ':'); i >= 0 && !strings.Contains(name[i+1:], "/") {
		name, r.Tag = name[:i], name[i+1:]
		if err := ValidateTag(r.Tag); err != nil {
			return Reference{}, fmt.Errorf("image reference %s: %w", quote(s), err)
		}
	} else if !hasDigest {
		r.Tag = DefaultTag
	}
	r.Registry, r.Repository = DefaultRegistry, name
	if first, rest, ok := strings.Cut(name, "/"); ok && isRegistryComponent(first) {
		r.Registry, r.Repository = asciiLower(first), rest
		if err := ValidateRegistry(r.Registry); err != nil {
			return Reference{}, fmt.Errorf("image reference %s: %w", quote(s), err)
		}
	}
	if IsDockerHub(r.Registry) {
		r.Registry, r.Repository = DefaultRegistry, DockerHubRepository(r.Repository)
	}
	if err := ValidateRepository(r.Repository); err != nil {
		return Reference{}, fmt.Errorf("image reference %s: %w", quote(s), err)
	}
	if n := len(r.Registry) + 1 + len(r.Repository); n > MaxRepositoryLength {
		return Reference{}, fmt.Errorf("%w: image reference %s: registry and repository are %d bytes, the limit is %d", ErrNameInvalid, quote(s), n, MaxRepositoryLength)
	}
	return r, nil
}

// isRegistryComponent is Docker's rule for the first component of a reference: it names a registry when it
// contains '.' or ':' or is "localhost".
func isRegistryComponent(c string) bool {
	return strings.ContainsAny(c, ".:") || c == "localhost"
}

// String returns the canonical form "registry/repository[:tag][@digest]", which ParseReference parses back to
// r.
func (r Reference) String() string {
	var b strings.Builder
	b.WriteString(r.Registry)
	b.WriteByte('/')
	b.WriteString(r.Repository)
	if r.Tag != "" {
		b.WriteByte(':')
		b.WriteString(r.Tag)
	}
	if r.Digest != (v1.Hash{}) {
		b.WriteByte('@')
		b.WriteString(r.Digest.String())
	}
	return b.String()
}

// Through returns r as pulled through pullgate's path prefix at pullgateHost: Registry becomes pullgateHost
// and Repository becomes r.Registry + "/" + r.Repository, so docker.io/library/nginx:1.25 becomes
// pullgate.example.com/docker.io/library/nginx:1.25. A reference already at pullgateHost is returned as is.
//
// It fails, wrapping ErrNameInvalid, when the result would not parse back to itself: when pullgateHost is not
// a valid registry that a reference recognises as one (it needs a '.' or a ':' or to be "localhost", and must
// not be a Docker Hub name), when r.Registry has a port (a ':' cannot be in a repository component, so such
// images can be pulled through pullgate only in mirror mode), or when the result is longer than
// MaxRepositoryLength.
func (r Reference) Through(pullgateHost string) (Reference, error) {
	if err := ValidateRegistry(pullgateHost); err != nil {
		return Reference{}, fmt.Errorf("pullgate host: %w", err)
	}
	if !isRegistryComponent(pullgateHost) || IsDockerHub(pullgateHost) {
		return Reference{}, fmt.Errorf("%w: pullgate host %s would not read as its own registry in an image reference", ErrNameInvalid, quote(pullgateHost))
	}
	if r.Registry == pullgateHost {
		return r, nil
	}
	if strings.Contains(r.Registry, ":") {
		return Reference{}, fmt.Errorf("%w: registry %s has a port, which cannot be written after a path prefix", ErrNameInvalid, quote(r.Registry))
	}
	out := r
	out.Registry, out.Repository = pullgateHost, r.Registry+"/"+r.Repository
	if err := ValidateRepository(out.Repository); err != nil {
		return Reference{}, err
	}
	if n := len(out.Registry) + 1 + len(out.Repository); n > MaxRepositoryLength {
		return Reference{}, fmt.Errorf("%w: %s through %s is %d bytes, the limit is %d", ErrNameInvalid, quote(r.Registry+"/"+r.Repository), pullgateHost, n, MaxRepositoryLength)
	}
	return out, nil
}
