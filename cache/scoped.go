package cache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Keys of this file (see index.go for the layout):
//
//	u 0 <upstream>                          upstream identity: the string BindUpstream was given
//	r 0 <upstream> 0 <repo> 0 <alg:hex>     referrers answer: 8 bytes fetched time, then the index bytes
const (
	kindUpstream  = 'u'
	kindReferrers = 'r'
)

// upstreamScoped are the key kinds whose entries belong to one upstream and die with its identity.
var upstreamScoped = [...]byte{kindTag, kindLink, kindMissing, kindReferrers}

// LinkDescriptor records, like Link, that repository repo of upstream contains d, and that a manifest of the
// repository declared d's size. A fill of d can then refuse content of any other size. size < 0 means unknown.
func (c *Cache) LinkDescriptor(upstream, repo string, d v1.Hash, size int64) error {
	if err := checkDigest(d); err != nil {
		return err
	}
	k, err := key(kindLink, upstream, repo, d.String())
	if err != nil {
		return err
	}
	if size < 0 {
		return c.linkKeep(k)
	}
	return c.set(badger.NewEntry(k, binary.BigEndian.AppendUint64(nil, uint64(size))))
}

// linkKeep writes an empty link unless one exists already, so that a declared size is not forgotten.
func (c *Cache) linkKeep(k []byte) error {
	return c.update(func(txn *badger.Txn) error {
		if _, err := txn.Get(k); err == nil || !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		return txn.Set(k, nil)
	})
}

// LinkedSize returns the size a manifest of the repository declared for d: ok is false when d is not linked
// to the repository, size is -1 when it is linked but no size was declared.
func (c *Cache) LinkedSize(upstream, repo string, d v1.Hash) (size int64, ok bool, err error) {
	if err := checkDigest(d); err != nil {
		return 0, false, err
	}
	k, err := key(kindLink, upstream, repo, d.String())
	if err != nil {
		return 0, false, err
	}
	v, err := c.get(k)
	if errors.Is(err, ErrNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	if len(v) != 8 {
		return -1, true, nil
	}
	return int64(binary.BigEndian.Uint64(v)), true, nil
}

// SetImmutableTag points a tag at e.Digest unless the tag already points at another digest, deciding and
// writing in one step, so that an immutable tag is never re-pointed, not even for a moment. It returns the entry
// in force afterwards: e, or the existing entry with its Fetched time set to e.Fetched.
func (c *Cache) SetImmutableTag(upstream, repo, tag string, e TagEntry) (TagEntry, error) {
	k, err := key(kindTag, upstream, repo, tag)
	if err != nil {
		return TagEntry{}, err
	}
	if err := checkDigest(e.Digest); err != nil {
		return TagEntry{}, err
	}
	// The index does not detect conflicts between transactions: a lock per key makes read-then-write atomic.
	l := c.keyLock(k)
	l.Lock()
	defer l.Unlock()
	cur := e
	err = c.update(func(txn *badger.Txn) error {
		item, err := txn.Get(k)
		switch {
		case errors.Is(err, badger.ErrKeyNotFound):
		case err != nil:
			return err
		default:
			var old TagEntry
			if err := item.Value(func(v []byte) error { return decodeTag(v, &old) }); err != nil {
				return err
			}
			if old.Digest != e.Digest {
				old.Fetched = e.Fetched
				cur = old
			}
		}
		return txn.Set(k, encodeTag(cur))
	})
	if err != nil {
		return TagEntry{}, err
	}
	return cur, nil
}

// keyLock returns one of the striped locks for an index key.
func (c *Cache) keyLock(k []byte) *sync.Mutex {
	h := fnv.New32a()
	_, _ = h.Write(k)
	return &c.locks[h.Sum32()%uint32(len(c.locks))]
}

// BindUpstream records that the upstream called name is identity (its URL, say). When name was bound to
// another identity before, every tag, repository link, negative-cache entry and referrers answer of name is
// dropped first, since they described another registry, and changed is true. Content stays: it is addressed by
// digest and is served only under repositories linked again by the new registry. A first binding keeps what is
// there.
func (c *Cache) BindUpstream(name, identity string) (changed bool, previous string, err error) {
	k, err := key(kindUpstream, name)
	if err != nil {
		return false, "", err
	}
	v, err := c.get(k)
	switch {
	case errors.Is(err, ErrNotFound):
		return false, "", c.set(badger.NewEntry(k, []byte(identity)))
	case err != nil:
		return false, "", err
	case string(v) == identity:
		return false, identity, nil
	}
	previous = string(v)
	var dropped int
	for _, kind := range upstreamScoped {
		prefix, err := key(kind, name)
		if err != nil {
			return false, previous, err
		}
		n, err := c.deletePrefix(append(prefix, sep))
		if err != nil {
			return false, previous, err
		}
		dropped += n
	}
	c.log.Warn("cache: upstream now names another registry; dropped its tags, links and referrers",
		"upstream", name, "was", previous, "now", identity, "entries", dropped)
	return true, previous, c.set(badger.NewEntry(k, []byte(identity)))
}

// deletePrefix deletes every key that starts with prefix and returns how many there were.
func (c *Cache) deletePrefix(prefix []byte) (int, error) {
	var keys [][]byte
	err := c.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			keys = append(keys, it.Item().KeyCopy(nil))
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("cache: read index: %w", err)
	}
	if err := c.indexRoom(); err != nil {
		return 0, err
	}
	wb := c.db.NewWriteBatch()
	defer wb.Cancel()
	for _, k := range keys {
		if err := wb.Delete(k); err != nil {
			return 0, fmt.Errorf("cache: write index: %w", err)
		}
	}
	if err := wb.Flush(); err != nil {
		return 0, fmt.Errorf("cache: write index: %w", err)
	}
	return len(keys), nil
}

// SetReferrers stores the referrers index an upstream answered for subject, as fetched at the given time, for
// up to ttl (zero: until replaced or the upstream is re-bound). The caller bounds the size of index.
func (c *Cache) SetReferrers(upstream, repo string, subject v1.Hash, index []byte, fetched time.Time, ttl time.Duration) error {
	if err := checkDigest(subject); err != nil {
		return err
	}
	k, err := key(kindReferrers, upstream, repo, subject.String())
	if err != nil {
		return err
	}
	e := badger.NewEntry(k, append(encodeTime(fetched), index...))
	if ttl > 0 {
		e = e.WithTTL(ttl)
	}
	return c.set(e)
}

// Referrers returns the referrers index stored for subject and when it was fetched, or ErrNotFound.
func (c *Cache) Referrers(upstream, repo string, subject v1.Hash) ([]byte, time.Time, error) {
	if err := checkDigest(subject); err != nil {
		return nil, time.Time{}, err
	}
	k, err := key(kindReferrers, upstream, repo, subject.String())
	if err != nil {
		return nil, time.Time{}, err
	}
	v, err := c.get(k)
	if err != nil {
		return nil, time.Time{}, err
	}
	if len(v) < 8 {
		return nil, time.Time{}, fmt.Errorf("cache: referrers entry of %d bytes", len(v))
	}
	fetched, err := decodeTime(v[:8])
	if err != nil {
		return nil, time.Time{}, err
	}
	return v[8:], fetched, nil
}
