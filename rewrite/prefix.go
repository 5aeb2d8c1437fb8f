package rewrite

import (
	"errors"
	"fmt"

	"github.com/pullgate/pullgate/names"
)

// ErrNotThrough is wrapped by Prefix.Check's error for an image that does not come through pullgate.
var ErrNotThrough = errors.New("image does not come through pullgate")

// Prefix rewrites image references to pullgate's path-prefix form: with Registry "pullgate.example.com",
// "nginx:1.25" becomes "pullgate.example.com/docker.io/library/nginx:1.25". It is the one rule that
// `pullgate rewrite` and the admission webhook apply to every image. The zero Prefix is not usable; make one
// with NewPrefix.
type Prefix struct {
	registry string
	exclude  []names.Pattern
}

// NewPrefix returns the rule for pullgate at registry (host[:port], as clients write it in image references).
// An image whose canonical "registry/repository" (e.g. "docker.io/library/nginx") matches one of the exclude
// globs (names.Pattern syntax) is left as written.
func NewPrefix(registry string, exclude []string) (*Prefix, error) {
	if _, err := (names.Reference{Registry: "docker.io", Repository: "library/x", Tag: "t"}).Through(registry); err != nil {
		return nil, fmt.Errorf("registry %q: %w", registry, err)
	}
	ps, err := names.CompilePatterns(exclude)
	if err != nil {
		return nil, fmt.Errorf("exclude: %w", err)
	}
	return &Prefix{registry: registry, exclude: ps}, nil
}

// Registry returns pullgate's host[:port] as given to NewPrefix.
func (p *Prefix) Registry() string { return p.registry }

// Image returns image as pulled through pullgate, and whether that differs from image as written. An image
// already on pullgate and an excluded image are returned as written, so applying Image twice changes nothing.
// Short names are resolved as Docker and containerd resolve them; a digest, and a tag beside it, are kept.
// The error is for an image that is not a valid reference, or that cannot be written after a path prefix (a
// registry with a port: exclude it, or pull it in mirror mode).
func (p *Prefix) Image(image string) (string, bool, error) {
	ref, err := names.ParseReference(image)
	if err != nil {
		return "", false, err
	}
	if ref.Registry == p.registry || p.Excluded(ref) {
		return image, false, nil
	}
	out, err := ref.Through(p.registry)
	if err != nil {
		return "", false, fmt.Errorf("image %q: %w", image, err)
	}
	return out.String(), true, nil
}

// Excluded reports whether ref is left alone by an exclude pattern.
func (p *Prefix) Excluded(ref names.Reference) bool {
	return names.MatchAny(p.exclude, ref.Registry+"/"+ref.Repository)
}

// Check returns nil for an image that comes through pullgate (its registry is pullgate's) or is excluded, and
// an error wrapping ErrNotThrough, naming the image, for any other; an invalid reference is its parse error.
func (p *Prefix) Check(image string) error {
	ref, err := names.ParseReference(image)
	if err != nil {
		return err
	}
	if ref.Registry == p.registry || p.Excluded(ref) {
		return nil
	}
	return fmt.Errorf("%w: %q is pulled from %s, not through %s", ErrNotThrough, image, ref.Registry, p.registry)
}
