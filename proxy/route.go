package proxy

import (
	"fmt"
	"net/http"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullgate/pullgate/names"
)

// kind is the route family of a registry API request.
type kind string

const (
	kindBase      kind = "base"
	kindManifests kind = "manifests"
	kindBlobs     kind = "blobs"
	kindTags      kind = "tags"
	kindReferrers kind = "referrers"
	kindToken     kind = "token"
	kindAdmin     kind = "admin"
)

// route is a parsed /v2/<name>/<kind>/<ref> path. It is parsed once per request.
type route struct {
	kind kind
	// name is the repository as the client wrote it, path prefix included ("docker.io/library/nginx").
	name string
	// ref is the tag or digest (manifests), the digest (blobs, referrers) or empty.
	ref string
}

const (
	maxNameLength = names.MaxRepositoryLength
	maxTagLength  = names.MaxTagLength
)

// parseRoute parses the escaped path of a registry API request. It refuses encoded characters, dot segments
// and anything that is not a valid repository name, tag or digest, with an OCI error saying which.
func parseRoute(escapedPath string) (route, error) {
	if escapedPath == "/v2" || escapedPath == "/v2/" {
		return route{kind: kindBase}, nil
	}
	rest, ok := strings.CutPrefix(escapedPath, "/v2/")
	if !ok {
		return route{}, errorf(codeNotFound, "not a registry API path: %q", escapedPath)
	}
	if strings.ContainsAny(rest, "%\x00\\") {
		return route{}, errorf(codeNameInvalid, "encoded or control characters are not allowed in registry paths")
	}
	var r route
	switch {
	case strings.HasSuffix(rest, "/tags/list"):
		r.kind, r.name = kindTags, strings.TrimSuffix(rest, "/tags/list")
	default:
		i := strings.LastIndexByte(rest, '/')
		j := -1
		if i > 0 {
			j = strings.LastIndexByte(rest[:i], '/')
		}
		if j < 0 {
			return route{}, errorf(codeNotFound, "not a registry API path: %q", escapedPath)
		}
		r.name, r.ref = rest[:j], rest[i+1:]
		switch kind(rest[j+1 : i]) {
		case kindManifests:
			r.kind = kindManifests
		case kindBlobs:
			r.kind = kindBlobs
		case kindReferrers:
			r.kind = kindReferrers
		default:
			return route{}, errorf(codeNotFound, "not a registry API path: %q", escapedPath)
		}
	}
	if err := validateName(r.name); err != nil {
		return route{}, err
	}
	switch r.kind {
	case kindManifests:
		if strings.Contains(r.ref, ":") {
			if _, err := parseDigest(r.ref); err != nil {
				return route{}, err
			}
		} else if err := names.ValidateTag(r.ref); err != nil {
			return route{}, errorf(codeManifestInvalid, "%v", err)
		}
	case kindBlobs, kindReferrers:
		if _, err := parseDigest(r.ref); err != nil {
			return route{}, err
		}
	}
	return r, nil
}

// validateName checks a repository name (with any upstream prefix, whose first component may be a registry
// host[:port]) against the OCI grammar.
func validateName(name string) error {
	if err := names.ValidateRepositoryWithHost(name); err != nil {
		return errorf(codeNameInvalid, "%v", err)
	}
	return nil
}

// parseDigest parses "<algorithm>:<encoded>" and accepts the algorithms pullgate can verify.
func parseDigest(s string) (v1.Hash, error) {
	d, err := names.ParseDigest(s)
	if err != nil {
		return v1.Hash{}, errorf(codeDigestInvalid, "%v", err)
	}
	return d, nil
}

// isDigest reports whether a manifest reference is a digest rather than a tag.
func isDigest(ref string) bool { return names.IsDigest(ref) }

// routeRequest is the routing layer: it refuses methods other than GET and HEAD (and POST for /token), parses
// the path once and picks the upstream.
func (h *Handler) routeRequest(r *http.Request, req *request) error {
	if r.URL.Path == "/token" {
		req.kind = kindToken
		if r.Method != http.MethodGet && r.Method != http.MethodPost {
			return &apiError{code: codeUnsupported, message: fmt.Sprintf("the token service answers GET and POST, not %s", r.Method)}
		}
		req.ns = r.URL.Query().Get("ns")
		return nil
	}
	if name, ok := adminRoute(r.URL.Path); ok {
		req.kind, req.name = kindAdmin, name
		return nil // the method is checked once the client proved it may use the admin API (serveAdmin)
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		// Checked before parsing, so that push routes (blobs/uploads/...) are answered as such.
		return &apiError{code: codeUnsupported, message: fmt.Sprintf("pullgate is a read-only pull-through cache: %s is not supported", r.Method)}
	}
	rt, err := parseRoute(r.URL.EscapedPath())
	req.route = rt
	if err != nil || rt.kind == kindBase {
		return err
	}
	req.ns = r.URL.Query().Get("ns")
	req.up, req.repo, err = h.resolve(req.ns, rt.name)
	return err
}

// resolve picks the upstream of a repository name as a client wrote it, and the repository at that upstream:
// ns (containerd's mirror parameter) when set, else a first path element that names an upstream, else the
// default upstream.
func (h *Handler) resolve(ns, name string) (*Upstream, string, error) {
	var up *Upstream
	repo := name
	if ns != "" {
		up = h.upstreams[ns]
		if up == nil {
			return nil, "", errorf(codeNameUnknown, "ns=%q names no upstream configured in pullgate%s", ns, h.configured())
		}
	} else if first, rest, ok := strings.Cut(name, "/"); ok && h.upstreams[first] != nil {
		up, repo = h.upstreams[first], rest
	} else if ok && strings.Contains(first, ":") {
		return nil, "", errorf(codeNameUnknown, "%q names no upstream configured in pullgate%s", first, h.configured())
	} else if h.opts.Default != "" {
		up = h.upstreams[h.opts.Default]
	} else {
		return nil, "", errorf(codeNameUnknown, "%q names no configured upstream and no default upstream is set", name)
	}
	if up.DockerHub {
		repo = names.DockerHubRepository(repo)
	}
	if len(repo) > maxNameLength {
		return nil, "", errorf(codeNameInvalid, "repository name %q at upstream %s is %d characters, the limit is %d", repo, up.Name, len(repo), maxNameLength)
	}
	return up, repo, nil
}

// configured lists the upstream names for error messages, unless clients must authenticate: then nothing about
// the configuration is told to a client before it did.
func (h *Handler) configured() string {
	if h.opts.Authenticator != nil {
		return ""
	}
	return " (configured: " + strings.Join(h.names(), ", ") + ")"
}
