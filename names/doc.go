// Package names is pullgate's one grammar for OCI names and registry identity: repository names, tags and
// digests as the OCI distribution spec writes them, Docker Hub's several host names and its implicit
// "library/" namespace, and image references as users write them in manifests ("nginx:1.25",
// "ghcr.io/o/r@sha256:...").
//
// It knows nothing about HTTP, upstream configuration, caching or credentials: it answers "is this a valid
// name", "which registry does this reference name" and "how is this reference written through pullgate's
// path prefix", nothing more. Every function is pure; the package holds no mutable state.
//
// # Where it deliberately differs from Docker and go-containerregistry
//
// ParseReference follows Docker's rules for which part of a reference is the registry (the first component is
// a registry when it contains '.' or ':' or is "localhost"), for the default registry (Docker Hub) and for the
// default tag ("latest"). It is stricter in the ways a proxy that keys caches and policies by name needs:
//
//   - The registry host is lowercased (ASCII only) and must be a DNS name (no '_') with an optional port from
//     1 to 65535 without leading zeros, so one registry has one spelling. Docker and go-containerregistry keep
//     the case as written and accept any digits as a port.
//   - An upper-case first component without '.' or ':' is not a registry (Docker treats "Foo/bar" as registry
//     "Foo"); it is an invalid repository component.
//   - IPv6 registry hosts ("[::1]:5000/x") are refused: they cannot be written as a path prefix.
//   - Every Docker Hub host name (see DockerHubHosts) normalises to "docker.io", and one-component
//     repositories on it get "library/". Docker normalises only "docker.io" and "index.docker.io";
//     go-containerregistry only "docker.io", to "index.docker.io".
//   - Repository components follow the OCI grammar ("a..b", "-a", "a-" are refused) and tags may not start
//     with '.' or '-'; go-containerregistry only checks the characters used.
//   - Only sha256 and sha512 digests are accepted, as pullgate verifies only those; other well-formed
//     algorithms are ErrDigestUnsupported.
//   - A reference with both a tag and a digest keeps both (go-containerregistry drops the tag).
//   - The length limit of 255 applies to "registry/repository" after normalisation, as Docker's does.
package names
