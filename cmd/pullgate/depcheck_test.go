package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestDependencyDirection holds the direction cmd -> proxy -> {cache, upstream, metrics, identity} (docs/design.md):
// cache and upstream never import each other or proxy, cache does not speak HTTP, upstream does not know badger,
// identity knows neither the cache nor how upstreams are reached (it asks through an interface), names (the
// OCI grammar) depends on none of them, gate decides through interfaces (its verdict store, signature source and
// token minter are others'), rewrite (image references in Kubernetes YAML) knows nothing of serving
// (TestRewriteImports holds the rest of its list), and webhook (admission reviews) knows nothing of pulling.
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
		// gate judges through interfaces: verdicts are stored, signatures fetched and scanner tokens minted by
		// others, so it knows neither the cache nor the proxy nor identities.
		{"gate", []string{mod + "proxy", mod + "cache", mod + "upstream", mod + "identity", mod + "metrics", mod + "certs", mod + "cmd/pullgate", "github.com/dgraph-io/badger/v4"}, nil},
		// watch only reads files.
		{"watch", []string{mod + "proxy", mod + "cache", mod + "upstream", mod + "identity", mod + "gate", mod + "metrics", mod + "names"}, []string{"net/http"}},
		// lifecycle moves images between the cache and OCI layouts, and plans pins and purges: no HTTP, no upstreams.
		{"lifecycle", []string{mod + "proxy", mod + "upstream", mod + "identity", mod + "gate", mod + "metrics", mod + "cmd/pullgate"}, []string{"net/http"}},
		// webhook speaks admission (k8s.io/api) and applies rewrite's rule: it serves HTTP, but knows nothing of
		// pulling, caching, credentials or the gate.
		{"webhook", []string{mod + "proxy", mod + "cache", mod + "upstream", mod + "identity", mod + "gate", mod + "lifecycle", mod + "certs", mod + "cmd/pullgate", "github.com/dgraph-io/badger/v4"}, nil},
		{"rewrite", []string{mod + "proxy", mod + "cache", mod + "upstream", mod + "identity", mod + "gate", mod + "metrics", mod + "certs", mod + "cmd/pullgate", "github.com/dgraph-io/badger/v4"}, []string{"net/http"}},
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

// TestRewriteImports holds rewrite's imports outside the standard library to names and a YAML library
// (sigs.k8s.io/yaml, or go.yaml.in/yaml/v2 beneath it, and gopkg.in/yaml.v3 for its Node API) or k8s.io/api,
// so that it can serve a helm post-renderer or an admission webhook without bringing pullgate's serving parts
// along.
func TestRewriteImports(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("the go command is not on PATH")
	}
	allowed := []string{"github.com/pullgate/pullgate/names", "sigs.k8s.io/yaml", "go.yaml.in/yaml/v2", "gopkg.in/yaml.v3", "k8s.io/api"}
	out, err := exec.Command("go", "list", "-f", "{{.Imports}}", "github.com/pullgate/pullgate/rewrite").Output()
	if err != nil {
		t.Fatalf("go list rewrite: %v", err)
	}
	for _, imp := range strings.Fields(strings.Trim(strings.TrimSpace(string(out)), "[]")) {
		if first, _, _ := strings.Cut(imp, "/"); !strings.Contains(first, ".") {
			continue // the standard library
		}
		if !slices.ContainsFunc(allowed, func(p string) bool { return imp == p || strings.HasPrefix(imp, p+"/") }) {
			t.Errorf("rewrite imports %s; besides the standard library it may import only %v", imp, allowed)
		}
	}
}
