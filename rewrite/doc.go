// Package rewrite reads Kubernetes manifests (YAML or JSON, as `helm template` or `kubectl get -o yaml` write
// them) and finds the container images they name: Images lists them, and Limits.Rewrite rewrites them in
// place to pull through pullgate (Prefix, the one rule for that), keeping every other byte of the input.
//
// It knows nothing of serving: not HTTP, not the cache, not upstream registries, credentials or the gate. It
// reads bytes and answers with image references, validated by the one grammar in package names. Every
// function is pure; the package holds no mutable state.
//
// Input is bounded: Limits caps the bytes read and how deeply a document may nest, so hostile input is
// refused with an error rather than by exhausting memory or the stack.
package rewrite
