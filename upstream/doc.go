// Package upstream is pullgate's client for the remote registries it proxies: one Client per configured
// upstream (Docker Hub, ghcr.io, a private Harbor...). A Client sends raw distribution-API requests and
// streams the answers back; it owns what is specific to talking to one registry: the authentication
// challenge, bearer tokens cached per scope, redirects to blob CDNs, rate-limit (429) state, a
// concurrency limit and a circuit breaker.
//
// The package knows nothing about the cache, badger, metrics or the proxy's own clients: it never
// verifies digests, never stores anything, and reports what it does only through the Options.Observe
// hook. Credentials come from an authn.Keychain, typically an AuthFile reading a mounted
// kubernetes.io/dockerconfigjson Secret, or, for one request, from a client (Request.Credentials,
// CheckPull): the package does not know who that client is nor whether it may use passthrough; it only
// keeps each client's tokens apart from the others' and from its own.
package upstream
