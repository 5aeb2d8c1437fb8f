package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullgate/pullgate/names"
)

// PurgeFilter selects what Purge removes. The filters that are set must all hold.
type PurgeFilter struct {
	// Image removes one image: its tag (or, given by digest, the manifest), and the manifests and blobs it
	// references that no other tag of the repository and no other repository holds. Set: Upstream,
	// Repository and Tag or Digest, with no globs.
	Image *Pin
	// Repository removes every tag, link and referrers answer of the repositories of Upstream it matches
	// (names.Pattern), and the content only they hold. Empty means any repository of Upstream.
	Repository string
	// Upstream limits Repository, or alone removes everything of one upstream.
	Upstream string
	// OlderThan keeps objects used (or, never used, stored) at or after it; alone, it removes every object
	// not used since. Zero means no age limit.
	OlderThan time.Time
}

// PurgePlan is what Purge removes, or would.
type PurgePlan struct {
	Objects []Object
	Bytes   int64
	// Tags are the tags removed besides those of removed manifests ("<upstream>/<repository>:<tag>").
	Tags []string
	// Pinned counts objects the filter selects that pins hold: they stay.
	Pinned int
	scopes [][]byte // key prefixes (upstream and repository) whose tags, links and referrers go
	// keep holds the pinned objects: their tags and links stay in a purged repository.
	keep func(v1.Hash) bool
}

// PlanPurge works out what Purge would remove, removing nothing.
func (c *Cache) PlanPurge(ctx context.Context, f PurgeFilter) (PurgePlan, error) {
	var plan PurgePlan
	keep, _, err := c.pinned(ctx, nil)
	if err != nil {
		return plan, err
	}
	plan.keep = keep
	selected := map[v1.Hash]struct{}{}
	switch {
	case f.Image != nil:
		err = c.planImage(ctx, *f.Image, selected, &plan)
	case f.Upstream != "" || f.Repository != "":
		err = c.planScope(ctx, f, selected, &plan)
	case !f.OlderThan.IsZero():
		selected = nil // every object, by age
	default:
		return plan, errors.New("cache: purge: no filter given")
	}
	if err != nil {
		return plan, err
	}
	err = c.Walk(ctx, func(o Object, at time.Time) error {
		if selected != nil {
			if _, ok := selected[o.Digest]; !ok {
				return nil
			}
		}
		if !f.OlderThan.IsZero() && !later(at, o.Stored).Before(f.OlderThan) {
			return nil
		}
		if keep != nil && keep(o.Digest) {
			plan.Pinned++
			return nil
		}
		plan.Objects = append(plan.Objects, o)
		plan.Bytes += o.Size
		return nil
	})
	return plan, err
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// Purge removes what plan names (see PlanPurge): its objects with what refers to them, and the tags, links
// and referrers answers of the repositories it empties.
func (c *Cache) Purge(ctx context.Context, plan PurgePlan) (RemoveStats, error) {
	ds := make([]v1.Hash, len(plan.Objects))
	for i, o := range plan.Objects {
		ds[i] = o.Digest
	}
	st, err := c.Remove(ctx, ds, ReasonPurge)
	if err != nil {
		return st, err
	}
	for _, k := range plan.tagKeys() {
		if v, err := c.get(k); err == nil && plan.keep != nil {
			var e TagEntry
			if decodeTag(v, &e) == nil && plan.keep(e.Digest) {
				continue // a pinned image keeps its tag
			}
		}
		if err := c.update(func(txn *badger.Txn) error { return txn.Delete(k) }); err != nil {
			return st, err
		}
		st.Tags++
	}
	for _, p := range plan.scopes {
		tags, links, err := c.dropScope(ctx, p, plan.keep)
		st.Tags += tags
		st.Links += links
		if err != nil {
			return st, err
		}
	}
	return st, nil
}

// dropScope removes the tags, links, negative entries and referrers answers under one repository's key suffix
// "0 <upstream> 0 <repository> 0", but for the tags and links of objects keep holds.
func (c *Cache) dropScope(ctx context.Context, scope []byte, keep func(v1.Hash) bool) (tags, links int, err error) {
	var ks [][]byte
	err = c.db.View(func(txn *badger.Txn) error {
		for _, kind := range upstreamScoped {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: append([]byte{kind}, scope...), PrefetchValues: kind == kindTag})
			for it.Rewind(); it.Valid(); it.Next() {
				if err := ctx.Err(); err != nil {
					it.Close()
					return err
				}
				k := it.Item().Key()
				var d v1.Hash
				switch kind {
				case kindTag:
					var e TagEntry
					if err := it.Item().Value(func(v []byte) error { return decodeTag(v, &e) }); err == nil {
						d = e.Digest
					}
				case kindLink, kindReferrers:
					d, _ = v1.NewHash(string(k[bytes.LastIndexByte(k, sep)+1:]))
				}
				if keep != nil && d != (v1.Hash{}) && keep(d) {
					continue
				}
				ks = append(ks, it.Item().KeyCopy(nil))
				if kind == kindTag {
					tags++
				} else {
					links++
				}
			}
			it.Close()
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	wb := c.db.NewWriteBatch()
	for _, k := range ks {
		if err := wb.Delete(k); err != nil {
			wb.Cancel()
			return 0, 0, err
		}
	}
	return tags, links, wb.Flush()
}

// tagKeys are the index keys of plan.Tags.
func (p PurgePlan) tagKeys() [][]byte {
	var ks [][]byte
	for _, t := range p.Tags {
		pin, err := ParsePin(t)
		if err != nil || pin.Tag == "" {
			continue
		}
		if k, err := key(kindTag, pin.Upstream, pin.Repository, pin.Tag); err == nil {
			ks = append(ks, k)
		}
	}
	return ks
}

// planImage selects an image's manifests and blobs that no other tag of its repository and no other
// repository holds, and its tag.
func (c *Cache) planImage(ctx context.Context, img Pin, selected map[v1.Hash]struct{}, plan *PurgePlan) error {
	root := img.Digest
	if root == (v1.Hash{}) {
		e, err := c.Tag(img.Upstream, img.Repository, img.Tag)
		if err != nil {
			return fmt.Errorf("cache: purge %s: %w", img.String(), err)
		}
		root = e.Digest
		plan.Tags = append(plan.Tags, img.String())
	}
	mine, err := c.Pinned(ctx, []Pin{{Upstream: img.Upstream, Repository: img.Repository, Digest: root}})
	if err != nil {
		return err
	}
	// What the repository's other tags hold stays.
	var others []Pin
	tags, err := c.Tags(img.Upstream, img.Repository)
	if err != nil {
		return err
	}
	for _, t := range tags {
		if t == img.Tag {
			continue
		}
		e, err := c.Tag(img.Upstream, img.Repository, t)
		if err != nil || e.Digest == root && img.Tag == "" {
			continue
		}
		others = append(others, Pin{Upstream: img.Upstream, Repository: img.Repository, Digest: e.Digest})
	}
	theirs, err := c.Pinned(ctx, others)
	if err != nil {
		return err
	}
	scope, err := key(kindLink, img.Upstream, img.Repository)
	if err != nil {
		return err
	}
	elsewhere, err := c.linkedOutside(ctx, scope[1:], mine)
	if err != nil {
		return err
	}
	for d := range mine {
		if _, ok := theirs[d]; ok {
			continue
		}
		if _, ok := elsewhere[d]; ok {
			continue
		}
		selected[d] = struct{}{}
	}
	return nil
}

// planScope selects the content only the repositories matched by f hold, and those repositories' entries.
func (c *Cache) planScope(ctx context.Context, f PurgeFilter, selected map[v1.Hash]struct{}, plan *PurgePlan) error {
	var repo names.Pattern
	if f.Repository != "" {
		var err error
		if repo, err = names.CompilePattern(f.Repository); err != nil {
			return err
		}
	}
	inScope := func(up, r string) bool {
		return (f.Upstream == "" || up == f.Upstream) && (f.Repository == "" || repo.Match(r))
	}
	seen := map[string]bool{}
	inside := map[v1.Hash]struct{}{}
	err := c.db.View(func(txn *badger.Txn) error {
		for _, kind := range upstreamScoped {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{kind, sep}})
			for it.Rewind(); it.Valid(); it.Next() {
				if err := ctx.Err(); err != nil {
					it.Close()
					return err
				}
				parts := bytes.Split(it.Item().Key()[2:], []byte{sep})
				if len(parts) < 2 || !inScope(string(parts[0]), string(parts[1])) {
					continue
				}
				if s := string(parts[0]) + "\x00" + string(parts[1]); !seen[s] {
					seen[s] = true
					k, _ := key(0, string(parts[0]), string(parts[1]))
					plan.scopes = append(plan.scopes, append(k[1:], sep))
				}
				if kind == kindLink && len(parts) == 3 {
					if d, err := v1.NewHash(string(parts[2])); err == nil {
						inside[d] = struct{}{}
					}
				}
			}
			it.Close()
		}
		return nil
	})
	if err != nil {
		return err
	}
	outside, err := c.linkedWhere(ctx, inside, func(up, r string) bool { return !inScope(up, r) })
	if err != nil {
		return err
	}
	for d := range inside {
		if _, ok := outside[d]; !ok {
			selected[d] = struct{}{}
		}
	}
	return nil
}

// linkedOutside returns the digests of ds linked to a repository other than the one of scope (a key suffix
// "0 <upstream> 0 <repository>").
func (c *Cache) linkedOutside(ctx context.Context, scope []byte, ds map[v1.Hash]int64) (map[v1.Hash]struct{}, error) {
	set := make(map[v1.Hash]struct{}, len(ds))
	for d := range ds {
		set[d] = struct{}{}
	}
	return c.linkedWhere(ctx, set, func(up, r string) bool {
		return !bytes.Equal(scope, append(append([]byte{sep}, up...), append([]byte{sep}, r...)...))
	})
}

// linkedWhere returns the digests of ds with a link to a repository where holds.
func (c *Cache) linkedWhere(ctx context.Context, ds map[v1.Hash]struct{}, where func(up, repo string) bool) (map[v1.Hash]struct{}, error) {
	out := map[v1.Hash]struct{}{}
	if len(ds) == 0 {
		return out, nil
	}
	err := c.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{kindLink, sep}})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			parts := bytes.Split(it.Item().Key()[2:], []byte{sep})
			if len(parts) != 3 {
				continue
			}
			d, err := v1.NewHash(string(parts[2]))
			if err != nil {
				continue
			}
			if _, ok := ds[d]; ok && where(string(parts[0]), string(parts[1])) {
				out[d] = struct{}{}
			}
		}
		return nil
	})
	return out, err
}
