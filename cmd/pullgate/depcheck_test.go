package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestDependencyDirection holds the direction cmd -> proxy -> {cache, upstream, metrics, identity} (docs/design.md):
// cache and upstream never import each other or proxy, cache does not speak HTTP, upstream does not know badger,
// identity knows neither the cache nor how upstreams are reached (it asks through an interface), and names (the
// OCI grammar) depends on none of them.
func TestDependencyDirection(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("the go command is not on PATH")
	}
	const mod = "github.com/pullgate/pullgate/"
	list := func(format, pkg string) []string {
		out, err := exec.Command("go", "list", "-f", format, mod+pkg).Output()
		if err != nil {
			t.Fatalf("go list %s: %v", pkg, err)
		}
		return strings.Fields(strings.Trim(strings.TrimSpace(string(out)), "[]"))
	}
	tests := []struct {
		pkg       string
		forbidden []string // packages that must not appear in the transitive deps (ours) or direct imports
		direct    []string
	}{
		{"cache", []string{mod + "proxy", mod + "upstream", mod + "metrics", mod + "identity", mod + "cmd/pullgate"}, []string{"net/http"}},
		{"upstream", []string{mod + "proxy", mod + "cache", mod + "metrics", mod + "identity", "github.com/dgraph-io/badger/v4"}, nil},
		{"identity", []string{mod + "proxy", mod + "cache", mod + "upstream", mod + "metrics", mod + "certs", mod + "cmd/pullgate", "github.com/dgraph-io/badger/v4"}, nil},
		{"metrics", []string{mod + "proxy", mod + "cache", mod + "upstream"}, nil},
		{"proxy", []string{mod + "cmd/pullgate", mod + "certs"}, nil},
		{"certs", []string{mod + "proxy", mod + "cache", mod + "upstream", mod + "metrics"}, []string{"net/http"}},
		// names is the one grammar every other package uses: it uses none of them.
		{"names", []string{mod + "proxy", mod + "cache", mod + "upstream", mod + "metrics", mod + "certs", mod + "identity", mod + "cmd/pullgate"}, []string{"net/http"}},
	}
	for _, tt := range tests {
		t.Run(tt.pkg, func(t *testing.T) {
			deps := list("{{.Deps}}", tt.pkg)
			for _, f := range tt.forbidden {
				if slices.Contains(deps, f) {
					t.Errorf("%s depends on %s", tt.pkg, f)
				}
			}
			imports := list("{{.Imports}}", tt.pkg)
			for _, f := range tt.direct {
				if slices.Contains(imports, f) {
					t.Errorf("%s imports %s", tt.pkg, f)
				}
			}
		})
	}
}
