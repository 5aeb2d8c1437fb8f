package cache

import (
	"fmt"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// maxVerdict bounds one stored verdict.
const maxVerdict = 16 << 20

func verdictKey(d v1.Hash) []byte { return append([]byte{kindVerdict, sep}, d.String()...) }

// Verdict returns the gate verdict stored for manifest d, or ErrNotFound. The cache does not read it: the gate
// encodes and judges it.
func (c *Cache) Verdict(d v1.Hash) ([]byte, error) { return c.get(verdictKey(d)) }

// SetVerdict stores the gate verdict of manifest d, replacing the one before. It may be stored before d is, and
// goes when d is removed (evicted, purged or found corrupt), so that verdicts do not outgrow the cache.
func (c *Cache) SetVerdict(d v1.Hash, v []byte) error {
	if len(v) > maxVerdict {
		return fmt.Errorf("cache: a verdict of %d bytes is over the %d byte limit", len(v), maxVerdict)
	}
	return c.set(badger.NewEntry(verdictKey(d), v))
}

// Verdicts calls fn with every stored verdict, in digest order, until fn returns an error, which it returns.
func (c *Cache) Verdicts(fn func(d v1.Hash, v []byte) error) error {
	return c.db.View(func(txn *badger.Txn) error {
		prefix := []byte{kindVerdict, sep}
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: true, PrefetchSize: 100})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			d, err := v1.NewHash(string(it.Item().Key()[len(prefix):]))
			if err != nil {
				continue // not a key this version writes
			}
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return fmt.Errorf("cache: read index: %w", err)
			}
			if err := fn(d, v); err != nil {
				return err
			}
		}
		return nil
	})
}
