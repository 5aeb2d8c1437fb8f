package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullgate/pullgate/names"
)

// Keys of this file (see index.go for the layout):
//
//	p 0 <pin>                               a pin added at run time: JSON pinValue
const kindPin = 'p'

const (
	// maxPinned bounds the objects pins may hold, so that working them out has a bounded cost.
	maxPinned = 2_000_000
	// maxManifest bounds the read of one manifest while following what it references.
	maxManifest = 4 << 20
	// maxPinDepth bounds how deep indexes may nest under a pinned image.
	maxPinDepth = 8
)

// Pin names images that eviction keeps: the manifests its tags (or its digest) point at, every manifest an index
// of them lists, every blob those reference, and their signatures and other referrers (the `sha256-<hex>.sig`
// style tags and the stored referrers answers) in the same repository.
type Pin struct {
	// Upstream is the upstream's name, as the cache's tags and links are scoped.
	Upstream string
	// Repository is a glob over the repository at the upstream (names.Pattern: '*' within a path element,
	// "**" across elements).
	Repository string
	// Tag is a glob over the tags of the repositories; empty means every tag, unless Digest is set.
	Tag string
	// Digest pins one manifest (and what it references); set, it replaces the tag.
	Digest v1.Hash
	// Fixed says that the pin comes from the configuration (Options.Pins), not from AddPin.
	Fixed bool
	// Added is when AddPin added it; zero for fixed pins.
	Added time.Time
}

// String writes the pin as ParsePin reads it: "<upstream>/<repository>[:<tag>|@<digest>]".
func (p Pin) String() string {
	s := p.Upstream + "/" + p.Repository
	switch {
	case p.Digest != (v1.Hash{}):
		s += "@" + p.Digest.String()
	case p.Tag != "":
		s += ":" + p.Tag
	}
	return s
}

// ParsePin reads "<upstream>/<repository glob>[:<tag glob>|@<digest>]", such as "docker.io/library/nginx:1.25",
// "ghcr.io/acme/**" (every tag of every repository under acme) or "docker.io/library/redis@sha256:...".
func ParsePin(s string) (Pin, error) {
	up, rest, ok := strings.Cut(s, "/")
	if !ok || up == "" || rest == "" {
		return Pin{}, fmt.Errorf("pin %q: want <upstream>/<repository>[:<tag>|@<digest>]", s)
	}
	p := Pin{Upstream: up, Repository: rest}
	if name, dg, ok := strings.Cut(rest, "@"); ok {
		d, err := names.ParseDigest(dg)
		if err != nil {
			return Pin{}, fmt.Errorf("pin %q: %w", s, err)
		}
		p.Repository, p.Digest = name, d
	} else if i := strings.LastIndexByte(rest, ':'); i >= 0 && !strings.Contains(rest[i+1:], "/") {
		p.Repository, p.Tag = rest[:i], rest[i+1:]
		if p.Tag == "" {
			return Pin{}, fmt.Errorf("pin %q: empty tag", s)
		}
	}
	if _, _, err := p.compile(); err != nil {
		return Pin{}, err
	}
	return p, nil
}

// compile checks the pin and compiles its globs.
func (p Pin) compile() (repo, tag names.Pattern, err error) {
	if p.Upstream == "" || strings.IndexByte(p.Upstream, sep) >= 0 || p.Repository == "" {
		return repo, tag, fmt.Errorf("pin %q: upstream and repository are required", p.String())
	}
	if p.Digest != (v1.Hash{}) {
		if err := checkDigest(p.Digest); err != nil {
			return repo, tag, fmt.Errorf("pin %q: %w", p.String(), err)
		}
	}
	if repo, err = names.CompilePattern(p.Repository); err != nil {
		return repo, tag, fmt.Errorf("pin %q: %w", p.String(), err)
	}
	if tag, err = names.CompilePattern(cmpOr(p.Tag, "*")); err != nil {
		return repo, tag, fmt.Errorf("pin %q: %w", p.String(), err)
	}
	return repo, tag, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

type pinValue struct {
	Added int64 `json:"t"` // Unix nanoseconds
}

// AddPin adds a pin, kept across restarts until RemovePin. Adding one that exists changes nothing.
func (c *Cache) AddPin(p Pin) error {
	if _, _, err := p.compile(); err != nil {
		return err
	}
	k, err := key(kindPin, p.String())
	if err != nil {
		return err
	}
	if _, err := c.get(k); err == nil {
		return nil
	}
	b, _ := json.Marshal(pinValue{Added: nanos(c.now())})
	return c.set(badger.NewEntry(k, b))
}

// RemovePin removes a pin AddPin added, and reports whether there was one. Fixed pins cannot be removed.
func (c *Cache) RemovePin(p Pin) (bool, error) {
	k, err := key(kindPin, p.String())
	if err != nil {
		return false, err
	}
	if _, err := c.get(k); errors.Is(err, ErrNotFound) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	return true, c.update(func(txn *badger.Txn) error { return txn.Delete(k) })
}

// Pins returns the pins in force: the fixed ones of Options.Pins, then those AddPin added, in key order.
func (c *Cache) Pins() ([]Pin, error) {
	pins := make([]Pin, 0, len(c.fixedPins))
	for _, p := range c.fixedPins {
		p.Fixed = true
		pins = append(pins, p)
	}
	err := c.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{kindPin, sep}, PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			p, err := ParsePin(string(it.Item().Key()[2:]))
			if err != nil {
				c.log.Warn("cache: ignoring an unreadable pin", "key", printableKey(it.Item().Key()), "err", err)
				continue
			}
			var v pinValue
			if err := it.Item().Value(func(b []byte) error { return json.Unmarshal(b, &v) }); err == nil {
				p.Added = fromNanos(v.Added)
			}
			pins = append(pins, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cache: list pins: %w", err)
	}
	return pins, nil
}

// pinned works out what the pins in force hold, at p's pace (nil: full speed): a membership test and the
// bytes. With no pins it holds nothing.
func (c *Cache) pinned(ctx context.Context, p *pacer) (func(v1.Hash) bool, int64, error) {
	pins, err := c.Pins()
	if err != nil {
		return nil, 0, err
	}
	if len(pins) == 0 {
		return nil, 0, nil
	}
	set, err := c.pinnedSet(ctx, pins, p)
	if err != nil {
		return nil, 0, err
	}
	var total int64
	for _, size := range set {
		total += size
	}
	return func(d v1.Hash) bool { _, ok := set[d]; return ok }, total, nil
}

// Pinned returns the stored objects pins hold, with their sizes. It reads the manifests it follows from the
// cache (each at most 4 MiB) and holds at most maxPinned objects; more is an error.
func (c *Cache) Pinned(ctx context.Context, pins []Pin) (map[v1.Hash]int64, error) {
	return c.pinnedSet(ctx, pins, nil)
}

// pinnedSet is Pinned, reading the tags at pace's pace (nil: full speed).
func (c *Cache) pinnedSet(ctx context.Context, pins []Pin, pace *pacer) (map[v1.Hash]int64, error) {
	type compiled struct {
		pin       Pin
		repo, tag names.Pattern
	}
	var byTag []compiled
	w := &pinWalk{c: c, ctx: ctx, set: map[v1.Hash]int64{}}
	for _, p := range pins {
		repo, tag, err := p.compile()
		if err != nil {
			return nil, err
		}
		if p.Digest != (v1.Hash{}) {
			if err := w.walk(p.Upstream, p.Repository, p.Digest, 0); err != nil {
				return nil, err
			}
			continue
		}
		byTag = append(byTag, compiled{p, repo, tag})
	}
	if len(byTag) == 0 {
		return w.set, nil
	}
	type root struct {
		up, repo string
		d        v1.Hash
	}
	var roots []root
	err := c.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{kindTag, sep}, PrefetchValues: true, PrefetchSize: 100})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := pace.step(ctx); err != nil {
				return err
			}
			parts := bytes.Split(it.Item().Key()[2:], []byte{sep})
			if len(parts) != 3 {
				continue
			}
			up, repo, tag := string(parts[0]), string(parts[1]), string(parts[2])
			for _, p := range byTag {
				if p.pin.Upstream != up || !p.repo.Match(repo) || !p.tag.Match(tag) {
					continue
				}
				var e TagEntry
				if err := it.Item().Value(func(v []byte) error { return decodeTag(v, &e) }); err != nil {
					return err
				}
				roots = append(roots, root{up, repo, e.Digest})
				if len(roots) > maxPinned {
					return fmt.Errorf("cache: pins name more than %d tags", maxPinned)
				}
				break
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, r := range roots {
		if err := w.walk(r.up, r.repo, r.d, 0); err != nil {
			return nil, err
		}
	}
	return w.set, nil
}

// pinWalk follows what pinned manifests reference.
type pinWalk struct {
	c   *Cache
	ctx context.Context
	set map[v1.Hash]int64
}

// walk adds d, what it references and its referrers in repository repo of upstream up.
func (w *pinWalk) walk(up, repo string, d v1.Hash, depth int) error {
	if _, ok := w.set[d]; ok {
		return nil
	}
	if err := w.ctx.Err(); err != nil {
		return err
	}
	o, err := w.c.Stat(d)
	if errors.Is(err, ErrNotFound) {
		return nil // not cached: nothing to keep
	}
	if err != nil {
		return err
	}
	if len(w.set) >= maxPinned {
		return fmt.Errorf("cache: pins hold more than %d objects", maxPinned)
	}
	w.set[d] = o.Size
	if o.MediaType == "" || depth >= maxPinDepth {
		return nil // a blob
	}
	refs, err := w.c.references(d)
	if err != nil {
		w.c.log.Warn("cache: cannot follow a pinned manifest", "digest", d.String(), "err", err)
	}
	// Signatures, attestations and SBOMs by cosign's tag scheme, and the referrers answer stored for d.
	for _, suffix := range []string{".sig", ".att", ".sbom"} {
		if e, err := w.c.Tag(up, repo, d.Algorithm+"-"+d.Hex+suffix); err == nil {
			refs = append(refs, e.Digest)
		}
	}
	if idx, _, err := w.c.Referrers(up, repo, d); err == nil {
		refs = append(refs, manifestReferences(idx)...)
	}
	for _, r := range refs {
		if err := w.walk(up, repo, r, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// references returns the digests a stored manifest references: the manifests of an index, the config and
// layers of an image manifest, the layers of a schema 1 manifest.
func (c *Cache) references(d v1.Hash) ([]v1.Hash, error) {
	f, o, err := c.Content(d)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if o.Size > maxManifest {
		return nil, fmt.Errorf("manifest %s is %d bytes, over %d", d, o.Size, maxManifest)
	}
	body, err := io.ReadAll(io.LimitReader(f, maxManifest))
	if err != nil {
		return nil, err
	}
	return manifestReferences(body), nil
}

// manifestReferences returns the digests a manifest or index body names; nothing for what does not parse.
func manifestReferences(body []byte) []v1.Hash {
	type desc struct {
		Digest string `json:"digest"`
	}
	var m struct {
		Manifests []desc `json:"manifests"`
		Config    *desc  `json:"config"`
		Layers    []desc `json:"layers"`
		FSLayers  []struct {
			BlobSum string `json:"blobSum"`
		} `json:"fsLayers"`
	}
	if json.Unmarshal(body, &m) != nil {
		return nil
	}
	var out []v1.Hash
	add := func(s string) {
		if d, err := v1.NewHash(s); err == nil && checkDigest(d) == nil {
			out = append(out, d)
		}
	}
	for _, x := range m.Manifests {
		add(x.Digest)
	}
	if m.Config != nil {
		add(m.Config.Digest)
	}
	for _, x := range m.Layers {
		add(x.Digest)
	}
	for _, x := range m.FSLayers {
		add(x.BlobSum)
	}
	return out
}
