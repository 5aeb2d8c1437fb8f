package main

import (
	"fmt"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullgate/pullgate/cache"
	"github.com/pullgate/pullgate/lifecycle"
	"github.com/pullgate/pullgate/names"
)

// nameResolver maps image names as users write them to the upstream and repository pullgate keeps them under:
// the name is read as Docker reads it ("nginx" is docker.io/library/nginx; a first element with a '.' or ':',
// or "localhost", is a registry), and the registry is the upstream of that name (Docker Hub also by its URL).
// This is the path a client such as `pullgate seed` or containerd asks pullgate for. A registry pullgate is not
// configured with is an error.
type nameResolver struct {
	specs []upstreamSpec
	def   string
}

// cachedImage is an image (or, with globs, a set of them) at one upstream.
type cachedImage struct {
	upstream, repo string
	tag            string // may be empty, or a glob in pins
	digest         v1.Hash
}

// String writes the cachedImage as "<upstream>/<repository>[:tag][@digest]".
func (t cachedImage) String() string {
	s := t.upstream + "/" + t.repo
	if t.tag != "" {
		s += ":" + t.tag
	}
	if t.digest != (v1.Hash{}) {
		s += "@" + t.digest.String()
	}
	return s
}

// split reads "name[:tag][@digest]" without checking the name.
func splitReference(s string) (name, tag string, d v1.Hash, err error) {
	name = s
	if n, dg, ok := strings.Cut(s, "@"); ok {
		if d, err = names.ParseDigest(dg); err != nil {
			return "", "", d, fmt.Errorf("%q: %w", s, err)
		}
		name = n
	}
	if i := strings.LastIndexByte(name, ':'); i >= 0 && !strings.Contains(name[i+1:], "/") {
		name, tag = name[:i], name[i+1:]
		if tag == "" {
			return "", "", d, fmt.Errorf("%q: empty tag", s)
		}
	}
	return name, tag, d, nil
}

// resolve maps a reference such as "nginx:1.25", "docker.io/library/nginx@sha256:…" or, with glob set,
// "ghcr.io/acme/**" (every tag of every repository under acme) to where pullgate keeps it. Without glob, a
// missing tag is "latest" unless a digest is given, and names are checked against the OCI grammar.
func (r nameResolver) resolve(s string, glob bool) (cachedImage, error) {
	name, tag, d, err := splitReference(strings.TrimSpace(s))
	if err != nil {
		return cachedImage{}, err
	}
	registry, repo := names.DefaultRegistry, name
	if first, rest, ok := strings.Cut(name, "/"); ok && (strings.ContainsAny(first, ".:") || first == "localhost" || r.spec(first) != nil) {
		registry, repo = strings.ToLower(first), rest
	}
	spec := r.spec(registry)
	if spec == nil && names.IsDockerHub(registry) {
		for i := range r.specs {
			if names.IsDockerHub(r.specs[i].url.Hostname()) {
				spec = &r.specs[i]
				break
			}
		}
	}
	if spec == nil {
		return cachedImage{}, fmt.Errorf("%q: %s is not an upstream pullgate is configured with (PULLGATE_UPSTREAMS)", s, registry)
	}
	if names.IsDockerHub(registry) || names.IsDockerHub(spec.url.Hostname()) {
		repo = names.DockerHubRepository(repo)
	}
	t := cachedImage{upstream: spec.name, repo: repo, tag: tag, digest: d}
	if glob {
		return t, nil
	}
	if err := names.ValidateRepository(repo); err != nil {
		return cachedImage{}, fmt.Errorf("%q: %w", s, err)
	}
	if t.tag != "" {
		if err := names.ValidateTag(t.tag); err != nil {
			return cachedImage{}, fmt.Errorf("%q: %w", s, err)
		}
	}
	if t.tag == "" && t.digest == (v1.Hash{}) {
		t.tag = names.DefaultTag
	}
	return t, nil
}

// spec returns the upstream of that name, or whose URL has that host, nil if there is none.
func (r nameResolver) spec(name string) *upstreamSpec {
	for i := range r.specs {
		if r.specs[i].name == name {
			return &r.specs[i]
		}
	}
	for i := range r.specs {
		if strings.EqualFold(r.specs[i].url.Host, name) {
			return &r.specs[i]
		}
	}
	return nil
}

// pin reads a pin as users write it (PULLGATE_PIN, pullgate pin): an image, or a pattern of repositories and
// tags. A pin without tag or digest holds every tag of the repositories.
func (r nameResolver) pin(s string) (cache.Pin, error) {
	t, err := r.resolve(s, true)
	if err != nil {
		return cache.Pin{}, err
	}
	if t.digest != (v1.Hash{}) {
		t.tag = ""
	}
	return cache.ParsePin(t.String())
}

// image is resolve for export and import: the image's Name is canonical, the upstream's name (docker.io for
// Docker Hub, whatever its name) and the repository, tag and digest, so that a pullgate configured with the
// same upstream names files it in the same place.
func (r nameResolver) image(ref string) (lifecycle.Image, error) {
	t, err := r.resolve(ref, false)
	if err != nil {
		return lifecycle.Image{}, err
	}
	host := t.upstream
	if s := r.spec(t.upstream); s != nil && names.IsDockerHub(s.url.Hostname()) {
		host = names.DefaultRegistry
	}
	name := cachedImage{upstream: host, repo: t.repo, tag: t.tag, digest: t.digest}.String()
	return lifecycle.Image{Name: name, Upstream: t.upstream, Repository: t.repo, Tag: t.tag, Digest: t.digest}, nil
}

// admin is the resolver of the admin API and the lifecycle commands: images by canonical name, patterns as
// written.
func (r nameResolver) admin(name string, glob bool) (lifecycle.Image, error) {
	if glob {
		return r.lifecycle(name, true)
	}
	return r.image(name)
}

// lifecycle is resolve for the lifecycle package: it keeps the name as written.
func (r nameResolver) lifecycle(name string, glob bool) (lifecycle.Image, error) {
	t, err := r.resolve(name, glob)
	if err != nil {
		return lifecycle.Image{}, err
	}
	return lifecycle.Image{Name: name, Upstream: t.upstream, Repository: t.repo, Tag: t.tag, Digest: t.digest}, nil
}
