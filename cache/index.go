package cache

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Index keys are a kind byte followed by parts, each part preceded by a 0x00 separator. No part may contain
// 0x00 (an empty part is allowed), so keys are unambiguous and a prefix of whole parts selects exactly one
// scope:
//
//	o 0 <alg:hex>                           object: JSON objectValue
//	t 0 <upstream> 0 <repo> 0 <tag>         tag: JSON tagValue
//	l 0 <upstream> 0 <repo> 0 <alg:hex>     repository link: empty
//	m 0 <upstream> 0 <repo> 0 <ref>         negative cache: 8 bytes, big-endian Unix nanoseconds of expiry
//	a 0 <alg:hex>                           access time: 8 bytes, big-endian Unix nanoseconds
//	v 0 <alg:hex>                           gate verdict of a manifest: the gate's own encoding
const (
	kindObject  = 'o'
	kindTag     = 't'
	kindLink    = 'l'
	kindMissing = 'm'
	kindAccess  = 'a'
	kindVerdict = 'v'
	sep         = 0x00
)

// missingGrace is how long after its expiry badger keeps a negative-cache entry before dropping it.
const missingGrace = time.Hour

func key(kind byte, parts ...string) ([]byte, error) {
	n := 1
	for _, p := range parts {
		if strings.IndexByte(p, sep) >= 0 {
			return nil, fmt.Errorf("cache: invalid index key part %q", p)
		}
		n += 1 + len(p)
	}
	k := make([]byte, 0, n)
	k = append(k, kind)
	for _, p := range parts {
		k = append(k, sep)
		k = append(k, p...)
	}
	return k, nil
}

func objectKey(d v1.Hash) []byte {
	return append([]byte{kindObject, sep}, d.String()...)
}

func accessKey(d v1.Hash) []byte {
	return append([]byte{kindAccess, sep}, d.String()...)
}

// printableKey shows a key in logs.
func printableKey(k []byte) string {
	return string(bytes.ReplaceAll(k, []byte{sep}, []byte{' '}))
}

type objectValue struct {
	Size      int64  `json:"s"`
	MediaType string `json:"m,omitempty"`
	Stored    int64  `json:"t"` // Unix nanoseconds
}

func encodeObject(o Object) []byte {
	b, _ := json.Marshal(objectValue{Size: o.Size, MediaType: o.MediaType, Stored: nanos(o.Stored)})
	return b
}

func decodeObject(d v1.Hash, v []byte) (Object, error) {
	var ov objectValue
	if err := json.Unmarshal(v, &ov); err != nil {
		return Object{}, fmt.Errorf("cache: index entry for %s: %w", d, err)
	}
	return Object{Digest: d, Size: ov.Size, MediaType: ov.MediaType, Stored: fromNanos(ov.Stored)}, nil
}

type tagValue struct {
	Digest    string `json:"d"`
	MediaType string `json:"m,omitempty"`
	Size      int64  `json:"s"`
	Fetched   int64  `json:"f"` // Unix nanoseconds
}

func encodeTag(e TagEntry) []byte {
	b, _ := json.Marshal(tagValue{Digest: e.Digest.String(), MediaType: e.MediaType, Size: e.Size, Fetched: nanos(e.Fetched)})
	return b
}

func decodeTag(v []byte, e *TagEntry) error {
	var tv tagValue
	if err := json.Unmarshal(v, &tv); err != nil {
		return fmt.Errorf("cache: tag entry: %w", err)
	}
	d, err := v1.NewHash(tv.Digest)
	if err != nil {
		return fmt.Errorf("cache: tag entry: %w", err)
	}
	*e = TagEntry{Digest: d, MediaType: tv.MediaType, Size: tv.Size, Fetched: fromNanos(tv.Fetched)}
	return nil
}

// nanos encodes a time as Unix nanoseconds, the zero time as 0.
func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

func encodeTime(t time.Time) []byte {
	return binary.BigEndian.AppendUint64(nil, uint64(nanos(t)))
}

func decodeTime(v []byte) (time.Time, error) {
	if len(v) != 8 {
		return time.Time{}, fmt.Errorf("cache: bad time value of %d bytes", len(v))
	}
	return fromNanos(int64(binary.BigEndian.Uint64(v))), nil
}

// get returns a copy of the value of k, or ErrNotFound.
func (c *Cache) get(k []byte) ([]byte, error) {
	var v []byte
	err := c.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(k)
		if err != nil {
			return err
		}
		v, err = item.ValueCopy(nil)
		return err
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("cache: read index: %w", err)
	}
	return v, nil
}

func (c *Cache) set(e *badger.Entry) error {
	if err := c.indexRoom(); err != nil {
		return err
	}
	if err := c.db.Update(func(txn *badger.Txn) error { return txn.SetEntry(e) }); err != nil {
		return fmt.Errorf("cache: write index: %w", err)
	}
	return nil
}

// Tag returns what the index knows about one tag, or ErrNotFound.
func (c *Cache) Tag(upstream, repo, tag string) (TagEntry, error) {
	k, err := key(kindTag, upstream, repo, tag)
	if err != nil {
		return TagEntry{}, err
	}
	v, err := c.get(k)
	if err != nil {
		return TagEntry{}, err
	}
	var e TagEntry
	if err := decodeTag(v, &e); err != nil {
		return TagEntry{}, err
	}
	return e, nil
}

// SetTag records (or replaces) the digest a tag points at.
func (c *Cache) SetTag(upstream, repo, tag string, e TagEntry) error {
	k, err := key(kindTag, upstream, repo, tag)
	if err != nil {
		return err
	}
	if err := checkDigest(e.Digest); err != nil {
		return err
	}
	return c.set(badger.NewEntry(k, encodeTag(e)))
}

// Tags returns the tags the index knows for one repository, sorted lexically; an empty slice when there are none.
func (c *Cache) Tags(upstream, repo string) ([]string, error) {
	prefix, err := key(kindTag, upstream, repo)
	if err != nil {
		return nil, err
	}
	prefix = append(prefix, sep)
	tags := []string{}
	err = c.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			tags = append(tags, string(it.Item().Key()[len(prefix):]))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cache: list tags: %w", err)
	}
	return tags, nil // badger iterates in byte order
}

// Link records that repository repo of upstream contains d, so that d may be served under it.
func (c *Cache) Link(upstream, repo string, d v1.Hash) error {
	if err := checkDigest(d); err != nil {
		return err
	}
	k, err := key(kindLink, upstream, repo, d.String())
	if err != nil {
		return err
	}
	return c.linkKeep(k)
}

// Linked reports whether Link was called for this upstream, repository and digest.
func (c *Cache) Linked(upstream, repo string, d v1.Hash) (bool, error) {
	if err := checkDigest(d); err != nil {
		return false, err
	}
	k, err := key(kindLink, upstream, repo, d.String())
	if err != nil {
		return false, err
	}
	_, err = c.get(k)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// SetMissing remembers until the given time that the upstream said ref (a tag or digest) does not exist in repo.
// A time not after now forgets it.
func (c *Cache) SetMissing(upstream, repo, ref string, until time.Time) error {
	k, err := key(kindMissing, upstream, repo, ref)
	if err != nil {
		return err
	}
	ttl := until.Sub(c.now())
	if ttl <= 0 {
		return c.update(func(txn *badger.Txn) error { return txn.Delete(k) })
	}
	// The expiry is decided against c.now in Missing; badger's TTL (on the real clock) only collects the entry.
	return c.set(badger.NewEntry(k, encodeTime(until)).WithTTL(ttl + missingGrace))
}

// Missing reports whether SetMissing was called for ref with a time still in the future.
func (c *Cache) Missing(upstream, repo, ref string) (bool, error) {
	k, err := key(kindMissing, upstream, repo, ref)
	if err != nil {
		return false, err
	}
	v, err := c.get(k)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	until, err := decodeTime(v)
	if err != nil {
		return false, err
	}
	return c.now().Before(until), nil
}
