package names

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

const (
	// MaxRepositoryLength is the longest repository name, in bytes. For a reference it bounds
	// "registry/repository" together, as Docker does.
	MaxRepositoryLength = 255
	// MaxTagLength is the longest tag, in bytes.
	MaxTagLength = 128
)

var (
	// ErrNameInvalid is wrapped by every error about a repository name or a registry host.
	ErrNameInvalid = errors.New("invalid repository name")
	// ErrTagInvalid is wrapped by every error about a tag.
	ErrTagInvalid = errors.New("invalid tag")
	// ErrDigestInvalid is wrapped by every error about a digest, unsupported algorithms included.
	ErrDigestInvalid = errors.New("invalid digest")
	// ErrDigestUnsupported is wrapped, together with ErrDigestInvalid, by errors about a well-formed digest
	// whose algorithm pullgate cannot verify ("sha384:...").
	ErrDigestUnsupported = errors.New("unsupported digest algorithm")
)

var (
	// componentPattern is one path component of a repository name (OCI distribution spec).
	componentPattern = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$`)
	// tagPattern is a tag (OCI distribution spec).
	tagPattern = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
	// algorithmPattern and encodedPattern are the two halves of a digest (OCI image spec).
	algorithmPattern = regexp.MustCompile(`^[a-z0-9]+(?:[+._-][a-z0-9]+)*$`)
	encodedPattern   = regexp.MustCompile(`^[a-zA-Z0-9=_-]+$`)
	lowerHexPattern  = regexp.MustCompile(`^[a-f0-9]+$`)
)

// ValidateRepository checks a repository name as an upstream registry sees it ("library/nginx"): components
// of [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)* joined by '/', at most MaxRepositoryLength bytes. The error wraps
// ErrNameInvalid.
func ValidateRepository(name string) error {
	if err := checkLength(name); err != nil {
		return err
	}
	for c := range strings.SplitSeq(name, "/") {
		if err := checkComponent(name, c); err != nil {
			return err
		}
	}
	return nil
}

// ValidateRepositoryWithHost checks a repository name as a client writes it after pullgate's host, where the
// first component may name a registry with a port ("localhost:5000/x", "docker.io/library/nginx"). Without a
// port the first component is checked as any other (a lowercase host name is a valid component). A host with
// a port must be followed by at least one component. The error wraps ErrNameInvalid.
func ValidateRepositoryWithHost(name string) error {
	if err := checkLength(name); err != nil {
		return err
	}
	first, rest, more := strings.Cut(name, "/")
	if strings.Contains(first, ":") {
		if err := ValidateRegistry(first); err != nil {
			return fmt.Errorf("%w %s: first component: %w", ErrNameInvalid, quote(name), err)
		}
		if !more {
			return fmt.Errorf("%w %s: a registry host needs a repository after it", ErrNameInvalid, quote(name))
		}
	} else if err := checkComponent(name, first); err != nil {
		return err
	}
	if !more {
		return nil
	}
	for c := range strings.SplitSeq(rest, "/") {
		if err := checkComponent(name, c); err != nil {
			return err
		}
	}
	return nil
}

func checkLength(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty", ErrNameInvalid)
	case len(name) > MaxRepositoryLength:
		return fmt.Errorf("%w %s: %d bytes, the limit is %d", ErrNameInvalid, quote(name), len(name), MaxRepositoryLength)
	}
	return nil
}

func checkComponent(name, c string) error {
	if !componentPattern.MatchString(c) {
		return fmt.Errorf("%w %s: component %s must match [a-z0-9]+((.|_|__|-+)[a-z0-9]+)*", ErrNameInvalid, quote(name), quote(c))
	}
	return nil
}

// ValidateTag checks a tag: up to MaxTagLength of [A-Za-z0-9_.-], not starting with '.' or '-'. The error
// wraps ErrTagInvalid.
func ValidateTag(tag string) error {
	if !tagPattern.MatchString(tag) {
		return fmt.Errorf("%w %s: a tag is 1 to %d of [A-Za-z0-9_.-] and does not start with '.' or '-'", ErrTagInvalid, quote(tag), MaxTagLength)
	}
	return nil
}

// ParseDigest parses "<algorithm>:<encoded>" and accepts only what pullgate can verify: sha256 with 64 and
// sha512 with 128 lowercase hex characters. The error wraps ErrDigestInvalid, and also ErrDigestUnsupported
// when the digest is well formed but its algorithm is another ("sha384:...").
func ParseDigest(s string) (v1.Hash, error) {
	alg, enc, ok := strings.Cut(s, ":")
	if !ok || !algorithmPattern.MatchString(alg) || !encodedPattern.MatchString(enc) {
		return v1.Hash{}, fmt.Errorf("%w %s: want <algorithm>:<hex>", ErrDigestInvalid, quote(s))
	}
	var want int
	switch alg {
	case "sha256":
		want = 64
	case "sha512":
		want = 128
	default:
		return v1.Hash{}, fmt.Errorf("%w %s: %w %s, pullgate verifies sha256 and sha512", ErrDigestInvalid, quote(s), ErrDigestUnsupported, quote(alg))
	}
	if len(enc) != want || !lowerHexPattern.MatchString(enc) {
		return v1.Hash{}, fmt.Errorf("%w %s: a %s digest is %d lowercase hex characters", ErrDigestInvalid, quote(s), alg, want)
	}
	return v1.Hash{Algorithm: alg, Hex: enc}, nil
}

// IsDigest reports whether a manifest reference is a digest rather than a tag: a tag never contains ':'. It
// does not validate either; see ParseDigest and ValidateTag.
func IsDigest(ref string) bool { return strings.Contains(ref, ":") }

// maxQuoted is how many bytes of a bad input an error message repeats: enough to recognise it, not enough
// to let a client fill the logs.
const maxQuoted = 80

// quote returns s as a Go string literal for an error message, cut to maxQuoted bytes.
func quote(s string) string {
	if len(s) > maxQuoted {
		return fmt.Sprintf("%q... (%d bytes)", s[:maxQuoted], len(s))
	}
	return fmt.Sprintf("%q", s)
}
