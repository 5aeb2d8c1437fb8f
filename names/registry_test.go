package names

import (
	"slices"
	"strings"
	"testing"
)

func TestIsDockerHub(t *testing.T) {
	tests := []struct {
		name string
		host string
		want bool
	}{
		{"docker.io", "docker.io", true},
		{"registry API host", "registry-1.docker.io", true},
		{"index", "index.docker.io", true},
		{"old credential key", "registry.hub.docker.com", true},
		{"upper case", "Docker.IO", true},
		{"upper-case API host", "REGISTRY-1.DOCKER.IO", true},
		{"ghcr", "ghcr.io", false},
		{"empty", "", false},
		{"with port", "docker.io:443", false},
		{"trailing dot", "docker.io.", false},
		{"suffix", "evil-docker.io", false},
		{"subdomain", "x.docker.io", false},
		{"superdomain", "docker.io.evil.com", false},
		{"URL", "https://docker.io", false},
		{"kelvin sign folds to k", "doc\u212aer.io", false},
		{"fullwidth", "ｄｏｃｋｅｒ.io", false},
		{"NUL", "docker.io\x00", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := IsDockerHub(tt.host); got != tt.want {
				t.Errorf("IsDockerHub(%q) = %v, want %v", tt.host, got, tt.want)
			}
		})
	}
}

func TestDockerHubHosts(t *testing.T) {
	hosts := DockerHubHosts()
	for _, h := range hosts {
		if !IsDockerHub(h) {
			t.Errorf("IsDockerHub(%q) = false for one of DockerHubHosts", h)
		}
		if err := ValidateRegistry(h); err != nil {
			t.Errorf("ValidateRegistry(%q): %v", h, err)
		}
	}
	for _, h := range []string{DefaultRegistry, DockerHubRegistry} {
		if !slices.Contains(hosts, h) {
			t.Errorf("DockerHubHosts() = %v, want it to contain %q", hosts, h)
		}
	}
	hosts[0] = "evil.example.com"
	if again := DockerHubHosts(); again[0] == "evil.example.com" {
		t.Error("DockerHubHosts returns shared state: a caller's write is seen by the next caller")
	}
}

func TestDockerHubRepository(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string
	}{
		{"one component", "nginx", "library/nginx"},
		{"library", "library/nginx", "library/nginx"},
		{"user", "bitnami/redis", "bitnami/redis"},
		{"deep", "a/b/c", "a/b/c"},
		{"empty", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := DockerHubRepository(tt.in); got != tt.want {
				t.Errorf("DockerHubRepository(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestValidateRegistry(t *testing.T) {
	tests := []struct {
		name  string
		host  string
		valid bool
	}{
		{"domain", "ghcr.io", true},
		{"localhost", "localhost", true},
		{"port", "localhost:5000", true},
		{"port 1", "registry.example.com:1", true},
		{"port 65535", "registry.example.com:65535", true},
		{"hyphens", "my-registry--1.example.com", true},
		{"ipv4", "127.0.0.1:5000", true},
		{"63-byte label", strings.Repeat("a", 63) + ".io", true},
		{"64-byte label", strings.Repeat("a", 64) + ".io", false},
		{"longer than 253", strings.Repeat(strings.Repeat("a", 62)+".", 4) + "io", false},
		{"empty", "", false},
		{"upper case", "GHCR.io", false},
		{"port 0", "localhost:0", false},
		{"port 65536", "localhost:65536", false},
		{"huge port", "localhost:18446744073709551617", false},
		{"leading zero", "localhost:080", false},
		{"empty port", "localhost:", false},
		{"signed port", "localhost:+80", false},
		{"two ports", "localhost:1:2", false},
		{"ipv6", "[::1]:5000", false},
		{"ipv6 without port", "[::1]", false},
		{"bare ipv6", "::1", false},
		{"leading dot", ".example.com", false},
		{"trailing dot", "example.com.", false},
		{"empty label", "a..b", false},
		{"leading hyphen", "-a.io", false},
		{"trailing hyphen", "a-.io", false},
		{"underscore", "my_registry.io", false},
		{"slash", "a.io/b", false},
		{"userinfo", "user@a.io", false},
		{"percent", "a%2Eio", false},
		{"NUL", "a.io\x00", false},
		{"kelvin sign", "\u212a8s.io", false},
		{"punycode is ASCII", "xn--bcher-kva.example", true},
		{"unicode", "bücher.example", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkValid(t, ValidateRegistry(tt.host), tt.valid, ErrNameInvalid)
		})
	}
}
