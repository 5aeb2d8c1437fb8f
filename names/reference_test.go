package names

import (
	"errors"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

var sha256Digest = v1.Hash{Algorithm: "sha256", Hex: hex64}

func TestParseReference(t *testing.T) {
	d := "@sha256:" + hex64
	tests := []struct {
		name string
		in   string
		want Reference
	}{
		{"official image", "nginx", Reference{"docker.io", "library/nginx", "latest", v1.Hash{}}},
		{"official image with tag", "nginx:1.25", Reference{"docker.io", "library/nginx", "1.25", v1.Hash{}}},
		{"user image", "bitnami/redis:7", Reference{"docker.io", "bitnami/redis", "7", v1.Hash{}}},
		{"docker.io short", "docker.io/nginx", Reference{"docker.io", "library/nginx", "latest", v1.Hash{}}},
		{"docker.io library", "docker.io/library/nginx:1.25", Reference{"docker.io", "library/nginx", "1.25", v1.Hash{}}},
		{"index.docker.io", "index.docker.io/library/nginx", Reference{"docker.io", "library/nginx", "latest", v1.Hash{}}},
		{"registry-1.docker.io short", "registry-1.docker.io/nginx", Reference{"docker.io", "library/nginx", "latest", v1.Hash{}}},
		{"upper-case Docker Hub", "Docker.IO/nginx", Reference{"docker.io", "library/nginx", "latest", v1.Hash{}}},
		{"ghcr digest", "ghcr.io/o/r" + d, Reference{"ghcr.io", "o/r", "", sha256Digest}},
		{"tag and digest", "ghcr.io/o/r:v1" + d, Reference{"ghcr.io", "o/r", "v1", sha256Digest}},
		{"docker hub digest", "nginx" + d, Reference{"docker.io", "library/nginx", "", sha256Digest}},
		{"sha512", "quay.io/a/b@sha512:" + hex128, Reference{"quay.io", "a/b", "", v1.Hash{Algorithm: "sha512", Hex: hex128}}},
		{"localhost with port", "localhost:5000/x:tag", Reference{"localhost:5000", "x", "tag", v1.Hash{}}},
		{"localhost", "localhost/x", Reference{"localhost", "x", "latest", v1.Hash{}}},
		{"localhost alone is a repository", "localhost", Reference{"docker.io", "library/localhost", "latest", v1.Hash{}}},
		{"host:port alone is repository:tag", "localhost:5000", Reference{"docker.io", "library/localhost", "5000", v1.Hash{}}},
		{"ip and port", "127.0.0.1:5000/a/b", Reference{"127.0.0.1:5000", "a/b", "latest", v1.Hash{}}},
		{"upper-case registry lowercased", "GHCR.io/o/r", Reference{"ghcr.io", "o/r", "latest", v1.Hash{}}},
		{"deep repository", "registry.k8s.io/a/b/c/d:v1.0.0", Reference{"registry.k8s.io", "a/b/c/d", "v1.0.0", v1.Hash{}}},
		{"docker.io port is another registry", "docker.io:443/nginx", Reference{"docker.io:443", "nginx", "latest", v1.Hash{}}},
		{"component without dot is not a registry", "myregistry/app", Reference{"docker.io", "myregistry/app", "latest", v1.Hash{}}},
		{"longest", "ghcr.io/" + strings.Repeat("a", MaxRepositoryLength-len("ghcr.io/")), Reference{"ghcr.io", strings.Repeat("a", MaxRepositoryLength-len("ghcr.io/")), "latest", v1.Hash{}}},
		{"longest tag", "ghcr.io/a:" + strings.Repeat("t", MaxTagLength), Reference{"ghcr.io", "a", strings.Repeat("t", MaxTagLength), v1.Hash{}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseReference(tt.in)
			if err != nil {
				t.Fatalf("ParseReference(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Fatalf("ParseReference(%q) = %#v, want %#v", tt.in, got, tt.want)
			}
			again, err := ParseReference(got.String())
			if err != nil || again != got {
				t.Errorf("ParseReference(%q) = %#v, %v; want %#v", got.String(), again, err, got)
			}
		})
	}
}

func TestParseReferenceInvalid(t *testing.T) {
	d := "@sha256:" + hex64
	tests := []struct {
		name string
		in   string
		want error
	}{
		{"empty", "", ErrNameInvalid},
		{"upper-case repository", "Nginx", ErrNameInvalid},
		{"upper-case first component is not a registry", "Foo/bar", ErrNameInvalid},
		{"upper-case localhost is not a registry", "LOCALHOST/x", ErrNameInvalid},
		{"dot dot", "ghcr.io/o/../r", ErrNameInvalid},
		{"dot dot registry", "../x", ErrNameInvalid},
		{"encoded slash", "ghcr.io/o%2Fr", ErrNameInvalid},
		{"NUL", "ghcr.io/o/r\x00:tag", ErrNameInvalid},
		{"NUL in tag", "ghcr.io/o/r:t\x00", ErrTagInvalid},
		{"space", "nginx :1", ErrNameInvalid},
		{"scheme", "https://ghcr.io/o/r", ErrNameInvalid},
		{"leading slash", "/nginx", ErrNameInvalid},
		{"trailing slash", "ghcr.io/o/", ErrNameInvalid},
		{"empty component", "ghcr.io//r", ErrNameInvalid},
		{"registry only", "ghcr.io/", ErrNameInvalid},
		{"repository with colon", "ghcr.io/a:b/c", ErrNameInvalid},
		{"empty tag", "nginx:", ErrTagInvalid},
		{"empty tag with digest", "nginx:" + d, ErrTagInvalid},
		{"tag with leading dot", "nginx:.x", ErrTagInvalid},
		{"tag too long", "nginx:" + strings.Repeat("t", MaxTagLength+1), ErrTagInvalid},
		{"empty digest", "nginx@", ErrDigestInvalid},
		{"two digests", "nginx" + d + d, ErrDigestInvalid},
		{"63 hex", "nginx@sha256:" + hex64[:63], ErrDigestInvalid},
		{"65 hex", "nginx@sha256:" + hex64 + "a", ErrDigestInvalid},
		{"upper-case hex", "nginx@sha256:" + strings.ToUpper(hex64), ErrDigestInvalid},
		{"sha384", "nginx@sha384:" + strings.Repeat("ab", 48), ErrDigestUnsupported},
		{"digest without name", d, ErrNameInvalid},
		{"port out of range", "localhost:65536/x", ErrNameInvalid},
		{"port zero", "localhost:0/x", ErrNameInvalid},
		{"port with leading zero", "localhost:05000/x", ErrNameInvalid},
		{"empty port", "localhost:/x", ErrNameInvalid},
		{"ipv6", "[::1]:5000/x:tag", ErrNameInvalid},
		{"ipv6 without port", "[::1]/x", ErrNameInvalid},
		{"registry with underscore", "my_reg.io/x", ErrNameInvalid},
		{"kelvin sign registry", "\u212a8s.io/x", ErrNameInvalid},
		{"fullwidth registry", "ｇｈｃｒ.io/x", ErrNameInvalid},
		{"cyrillic repository", "ghcr.io/о/r", ErrNameInvalid},
		{"name too long", "ghcr.io/" + strings.Repeat("a", MaxRepositoryLength-len("ghcr.io/")+1), ErrNameInvalid},
		{"too long after library", strings.Repeat("a", MaxRepositoryLength-len("docker.io/")), ErrNameInvalid},
		{"input too long", strings.Repeat("a/", 10000) + "a", ErrNameInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseReference(tt.in)
			if err == nil {
				t.Fatalf("ParseReference(%q) = %#v, want an error wrapping %v", tt.in, got, tt.want)
			}
			if !errors.Is(err, tt.want) {
				t.Errorf("ParseReference(%q): %v does not wrap %v", tt.in, err, tt.want)
			}
			if got != (Reference{}) {
				t.Errorf("ParseReference(%q) returned %#v with its error", tt.in, got)
			}
		})
	}
}

func TestReferenceString(t *testing.T) {
	tests := []struct {
		name string
		ref  Reference
		want string
	}{
		{"tag", Reference{"docker.io", "library/nginx", "1.25", v1.Hash{}}, "docker.io/library/nginx:1.25"},
		{"digest", Reference{"ghcr.io", "o/r", "", sha256Digest}, "ghcr.io/o/r@sha256:" + hex64},
		{"both", Reference{"localhost:5000", "x", "t", sha256Digest}, "localhost:5000/x:t@sha256:" + hex64},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.ref.String(); got != tt.want {
				t.Errorf("String() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestReferenceThrough(t *testing.T) {
	const pg = "pullgate.example.com"
	tests := []struct {
		name string
		in   string // parsed with ParseReference
		host string
		want string // String() of the result; empty when Through fails
	}{
		{"docker hub", "nginx:1.25", pg, pg + "/docker.io/library/nginx:1.25"},
		{"docker hub default tag", "nginx", pg, pg + "/docker.io/library/nginx:latest"},
		{"ghcr digest", "ghcr.io/o/r@sha256:" + hex64, pg, pg + "/ghcr.io/o/r@sha256:" + hex64},
		{"tag and digest", "quay.io/a/b:v1@sha256:" + hex64, pg, pg + "/quay.io/a/b:v1@sha256:" + hex64},
		{"pullgate with port", "nginx", "pullgate:8443", "pullgate:8443/docker.io/library/nginx:latest"},
		{"pullgate on localhost", "nginx", "localhost", "localhost/docker.io/library/nginx:latest"},
		{"already through pullgate", pg + "/docker.io/library/nginx:1.25", pg, pg + "/docker.io/library/nginx:1.25"},
		{"localhost registry", "localhost/x", pg, pg + "/localhost/x:latest"},
		{"registry with port", "localhost:5000/x:tag", pg, ""},
		{"pullgate host without dot reads as a repository", "nginx", "pullgate", ""},
		{"pullgate host is docker hub", "ghcr.io/o/r", "index.docker.io", ""},
		{"pullgate host upper case", "nginx", "PULLGATE.example.com", ""},
		{"pullgate host ipv6", "nginx", "[::1]:443", ""},
		{"pullgate host with path", "nginx", "pullgate.example.com/x", ""},
		{"pullgate host empty", "nginx", "", ""},
		{"too long", "ghcr.io/" + strings.Repeat("a", MaxRepositoryLength-len("ghcr.io/")), pg, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := ParseReference(tt.in)
			if err != nil {
				t.Fatalf("ParseReference(%q): %v", tt.in, err)
			}
			got, err := r.Through(tt.host)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("Through(%q) = %q, want an error", tt.host, got)
				}
				if !errors.Is(err, ErrNameInvalid) {
					t.Errorf("Through(%q): %v does not wrap ErrNameInvalid", tt.host, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Through(%q): %v", tt.host, err)
			}
			if got.String() != tt.want {
				t.Errorf("Through(%q) = %q, want %q", tt.host, got, tt.want)
			}
			if got.Tag != r.Tag || got.Digest != r.Digest {
				t.Errorf("Through(%q) changed the tag or digest: %#v from %#v", tt.host, got, r)
			}
			again, err := ParseReference(got.String())
			if err != nil || again != got {
				t.Errorf("ParseReference(%q) = %#v, %v; want %#v", got.String(), again, err, got)
			}
		})
	}
}

func TestReferenceThroughInvalidReference(t *testing.T) {
	tests := []struct {
		name string
		ref  Reference
	}{
		{"zero", Reference{}},
		{"no registry", Reference{Repository: "x", Tag: "t"}},
		{"bad repository", Reference{Registry: "ghcr.io", Repository: "../x", Tag: "t"}},
		{"upper-case registry", Reference{Registry: "GHCR.io", Repository: "x", Tag: "t"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, err := tt.ref.Through("pullgate.example.com"); !errors.Is(err, ErrNameInvalid) {
				t.Errorf("Through() = %#v, %v; want an error wrapping ErrNameInvalid", got, err)
			}
		})
	}
}
