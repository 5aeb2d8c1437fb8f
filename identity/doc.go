// Package identity decides who a client is and what it may pull: robot accounts from the robots file, the
// tokens pullgate issues for them, client certificates, credentials passed through to an upstream, and
// anonymous access by pattern.
//
// It knows nothing about serving content, the cache or how upstreams are reached: it reads the Authorization
// header and the TLS state of a request, and asks an UpstreamChecker (provided by its caller) whether an
// upstream accepts credentials that are not pullgate's own. Secrets are kept only as bcrypt hashes on disk and
// as SHA-256 digests in memory; nothing in this package logs or returns one.
package identity
