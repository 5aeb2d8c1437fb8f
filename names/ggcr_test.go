package names

import (
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
)

// ggcrReference is what go-containerregistry's pkg/name makes of s, in this package's terms: its
// "index.docker.io" is written "docker.io", and a digest reference has no tag (it drops one).
func ggcrReference(t *testing.T, s string) (Reference, error) {
	t.Helper()
	ref, err := name.ParseReference(s)
	if err != nil {
		return Reference{}, err
	}
	r := Reference{Registry: ref.Context().RegistryStr(), Repository: ref.Context().RepositoryStr()}
	if r.Registry == name.DefaultRegistry {
		r.Registry = DefaultRegistry
	}
	switch ref := ref.(type) {
	case name.Tag:
		r.Tag = ref.TagStr()
	case name.Digest:
		h, err := ParseDigest(ref.DigestStr())
		if err != nil {
			t.Fatalf("go-containerregistry's digest %q: %v", ref.DigestStr(), err)
		}
		r.Digest = h
	}
	return r, nil
}

// TestParseReferenceAgreesWithGGCR holds that where both parsers accept a reference and their rules agree,
// they read it the same way.
func TestParseReferenceAgreesWithGGCR(t *testing.T) {
	d := "@sha256:" + hex64
	for _, s := range []string{
		"nginx",
		"nginx:1.25",
		"nginx:1.25-alpine",
		"library/nginx",
		"bitnami/redis:7.2",
		"docker.io/nginx",
		"docker.io/library/nginx:latest",
		"index.docker.io/library/nginx",
		"index.docker.io/nginx:1",
		"ghcr.io/owner/repo:v1.0.0",
		"ghcr.io/owner/repo" + d,
		"quay.io/a/b/c/d:x_y",
		"registry.k8s.io/pause:3.9",
		"localhost/x",
		"localhost:5000/x:tag",
		"localhost:5000/a/b" + d,
		"127.0.0.1:5000/a__b/c--d",
		"my-registry.example.com:443/team/app:V1",
		"docker.io:443/nginx",
		"myregistry/app",
		"localhost:5000",
		"docker.io/a.b-c_d__e/f",
		"foo.bar",
		"ghcr.io/o/r@sha512:" + hex128,
		"ghcr.io/" + strings.Repeat("a", MaxRepositoryLength-len("ghcr.io/")),
		"ghcr.io/a:" + strings.Repeat("T", MaxTagLength),
	} {
		t.Run(s, func(t *testing.T) {
			ours, err := ParseReference(s)
			if err != nil {
				t.Fatalf("ParseReference(%q): %v", s, err)
			}
			theirs, err := ggcrReference(t, s)
			if err != nil {
				t.Fatalf("go-containerregistry refuses %q, which ParseReference accepts: %v", s, err)
			}
			if ours != theirs {
				t.Errorf("ParseReference(%q) = %#v, go-containerregistry reads %#v", s, ours, theirs)
			}
		})
	}
}

// TestParseReferenceDiffersFromGGCR lists where this package deliberately reads a reference otherwise than
// go-containerregistry (see the package documentation), and holds both readings, so a change on either side
// shows here.
func TestParseReferenceDiffersFromGGCR(t *testing.T) {
	d := "@sha256:" + hex64
	tests := []struct {
		name   string
		in     string
		ours   string // ParseReference(in).String(), or empty when it refuses
		theirs string // go-containerregistry's reading, or empty when it refuses
	}{
		{"registry-1.docker.io is Docker Hub", "registry-1.docker.io/nginx", "docker.io/library/nginx:latest", "registry-1.docker.io/nginx:latest"},
		{"registry.hub.docker.com is Docker Hub", "registry.hub.docker.com/nginx", "docker.io/library/nginx:latest", "registry.hub.docker.com/nginx:latest"},
		{"upper-case Docker Hub", "Docker.io/nginx", "docker.io/library/nginx:latest", "Docker.io/nginx:latest"},
		{"registry lowercased", "GHCR.io/o/r", "ghcr.io/o/r:latest", "GHCR.io/o/r:latest"},
		{"tag kept with digest", "ghcr.io/o/r:v1" + d, "ghcr.io/o/r:v1" + d, "ghcr.io/o/r" + d},
		{"port out of range", "localhost:65536/x", "", "localhost:65536/x:latest"},
		{"port with leading zero", "localhost:05000/x", "", "localhost:05000/x:latest"},
		{"underscore in registry", "my_reg.io/x", "", "my_reg.io/x:latest"},
		{"ipv6", "[::1]:5000/x", "", "[::1]:5000/x:latest"},
		{"dot dot component", "ghcr.io/o/../r", "", "ghcr.io/o/../r:latest"},
		{"leading separator", "ghcr.io/-o/r", "", "ghcr.io/-o/r:latest"},
		{"tag with leading dot", "nginx:.x", "", "index.docker.io/library/nginx:.x"},
		{"sha384", "ghcr.io/o/r@sha384:" + strings.Repeat("ab", 48), "", "ghcr.io/o/r@sha384:" + strings.Repeat("ab", 48)},
		{"too long after library", strings.Repeat("a", MaxRepositoryLength-len("docker.io/")), "", "index.docker.io/library/" + strings.Repeat("a", MaxRepositoryLength-len("docker.io/")) + ":latest"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ours string
			if r, err := ParseReference(tt.in); err == nil {
				ours = r.String()
			}
			if ours != tt.ours {
				t.Errorf("ParseReference(%q) = %q, want %q", tt.in, ours, tt.ours)
			}
			var theirs string
			if r, err := name.ParseReference(tt.in); err == nil {
				theirs = r.Name()
			}
			if theirs != tt.theirs {
				t.Errorf("go-containerregistry reads %q as %q, the documented difference says %q", tt.in, theirs, tt.theirs)
			}
		})
	}
}
