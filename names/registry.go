package names

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

const (
	// DefaultRegistry is the registry of a reference that names none, and the one name ParseReference gives
	// every Docker Hub host.
	DefaultRegistry = "docker.io"
	// DockerHubRegistry is the host that serves Docker Hub's registry API.
	DockerHubRegistry = "registry-1.docker.io"
	// DefaultTag is the tag of a reference that names neither a tag nor a digest.
	DefaultTag = "latest"
	// dockerHubNamespace is where Docker Hub keeps one-component repositories ("nginx").
	dockerHubNamespace = "library"
)

// DockerHubHosts returns the host names of Docker Hub, a fresh slice each time: "docker.io", the name users
// write; "registry-1.docker.io", the registry API; "index.docker.io", the name of older clients and of
// go-containerregistry; and "registry.hub.docker.com", found in old credential files.
func DockerHubHosts() []string {
	return []string{DefaultRegistry, DockerHubRegistry, "index.docker.io", "registry.hub.docker.com"}
}

// IsDockerHub reports whether host is one of DockerHubHosts, ignoring ASCII case. A host with a port is not
// Docker Hub, nor is one whose letters only fold to those names under Unicode rules.
func IsDockerHub(host string) bool {
	switch asciiLower(host) {
	case DefaultRegistry, DockerHubRegistry, "index.docker.io", "registry.hub.docker.com":
		return true
	}
	return false
}

// DockerHubRepository returns the repository Docker Hub serves for repo: one-component names live under
// "library/" ("nginx" becomes "library/nginx"); others are returned unchanged.
func DockerHubRepository(repo string) string {
	if repo == "" || strings.Contains(repo, "/") {
		return repo
	}
	return dockerHubNamespace + "/" + repo
}

// hostPattern is a lowercase DNS name: labels of up to 63 letters, digits and inner hyphens, joined by dots.
var hostPattern = regexp.MustCompile(`^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$`)

// ValidateRegistry checks a registry as references write it: a lowercase DNS name with an optional port from
// 1 to 65535 written without leading zeros ("ghcr.io", "localhost:5000"). IPv6 literals are refused, as they
// cannot be a path component. The error wraps ErrNameInvalid.
func ValidateRegistry(host string) error {
	name, port, hasPort := strings.Cut(host, ":")
	switch {
	case strings.HasPrefix(host, "["):
		return fmt.Errorf("%w: registry %s: IPv6 hosts are not supported", ErrNameInvalid, quote(host))
	case len(name) > 253 || !hostPattern.MatchString(name):
		return fmt.Errorf("%w: registry %s: want a lowercase DNS name with an optional :port", ErrNameInvalid, quote(host))
	case hasPort && !validPort(port):
		return fmt.Errorf("%w: registry %s: the port must be 1 to 65535 without leading zeros", ErrNameInvalid, quote(host))
	}
	return nil
}

func validPort(p string) bool {
	if p == "" || p[0] == '0' || len(p) > 5 || strings.Trim(p, "0123456789") != "" {
		return false
	}
	n, err := strconv.Atoi(p)
	return err == nil && n <= 65535
}

// asciiLower lowercases A-Z only, so that no non-ASCII letter (the Kelvin sign, say) becomes an ASCII one.
func asciiLower(s string) string {
	if strings.IndexFunc(s, func(r rune) bool { return 'A' <= r && r <= 'Z' }) < 0 {
		return s
	}
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + ('a' - 'A')
		}
	}
	return string(b)
}
