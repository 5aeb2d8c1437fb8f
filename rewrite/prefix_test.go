package rewrite

import (
	"errors"
	"testing"
)

func TestPrefixImage(t *testing.T) {
	p, err := NewPrefix("pullgate.example.com:5443", []string{"registry.k8s.io/**"})
	if err != nil {
		t.Fatal(err)
	}
	const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for _, tc := range []struct {
		name, in, want string
		changed        bool
	}{
		{"short name", "nginx:1.25", "pullgate.example.com:5443/docker.io/library/nginx:1.25", true},
		{"no tag is latest", "nginx", "pullgate.example.com:5443/docker.io/library/nginx:latest", true},
		{"Docker Hub alias", "index.docker.io/bitnami/redis:7", "pullgate.example.com:5443/docker.io/bitnami/redis:7", true},
		{"other registry", "ghcr.io/o/r:v1", "pullgate.example.com:5443/ghcr.io/o/r:v1", true},
		{"digest kept", "ghcr.io/o/r@" + digest, "pullgate.example.com:5443/ghcr.io/o/r@" + digest, true},
		{"tag and digest kept", "nginx:1.25@" + digest, "pullgate.example.com:5443/docker.io/library/nginx:1.25@" + digest, true},
		{"already through pullgate", "pullgate.example.com:5443/docker.io/library/nginx:1.25", "pullgate.example.com:5443/docker.io/library/nginx:1.25", false},
		{"excluded", "registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, changed, err := p.Image(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want || changed != tc.changed {
				t.Fatalf("Image(%q) = %q, %v; want %q, %v", tc.in, got, changed, tc.want, tc.changed)
			}
			again, changed, err := p.Image(got)
			if err != nil || again != got || changed {
				t.Fatalf("Image(Image(%q)) = %q, %v, %v; want it unchanged", tc.in, again, changed, err)
			}
			if err := p.Check(got); err != nil {
				t.Fatalf("Check(%q): %v", got, err)
			}
		})
	}
	for _, bad := range []string{"localhost:5000/x:1", "Nginx", ""} {
		if _, _, err := p.Image(bad); err == nil {
			t.Errorf("Image(%q): no error", bad)
		}
	}
	if err := p.Check("nginx:1.25"); !errors.Is(err, ErrNotThrough) {
		t.Errorf("Check(nginx:1.25) = %v, want ErrNotThrough", err)
	}
	for _, bad := range []string{"docker.io", "pullgate", "pull gate.example.com"} {
		if _, err := NewPrefix(bad, nil); err == nil {
			t.Errorf("NewPrefix(%q): no error", bad)
		}
	}
}
