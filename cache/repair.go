package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// repairTimeout bounds the background repair; one that did not finish runs again at the next Open.
const repairTimeout = time.Hour

// maxCleanMark caps the read of the clean-stop mark.
const maxCleanMark = 4 << 10

// cleanMark is what Close leaves in Dir/clean: the usage it counted, so that Open needs no scan.
type cleanMark struct {
	Bytes   int64 `json:"bytes"`
	Objects int64 `json:"objects"`
}

func (c *Cache) cleanMarkPath() string { return filepath.Join(c.dir, "clean") }

// consumeCleanMark reads and removes the clean-stop mark, durably, so that a crash from now on is seen as one.
// It returns nil when there was no usable mark. Removing needs no free space, unlike a write to the index.
func (c *Cache) consumeCleanMark() (*cleanMark, error) {
	p := c.cleanMarkPath()
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	var m cleanMark
	b := make([]byte, maxCleanMark)
	n, _ := f.Read(b)
	_ = f.Close()
	derr := json.Unmarshal(b[:n], &m)
	if err := os.Remove(p); err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	if err := syncDir(c.dir); err != nil {
		return nil, err
	}
	if derr != nil || m.Bytes < 0 || m.Objects < 0 {
		c.log.Warn("cache: ignoring an unreadable clean-stop mark", "path", p)
		return nil, nil
	}
	return &m, nil
}

// writeCleanMark records the usage after the index was closed.
func (c *Cache) writeCleanMark() error {
	b, _ := json.Marshal(cleanMark{Bytes: c.bytes.Load(), Objects: c.objects.Load()})
	p := c.cleanMarkPath()
	tmp := p + ".new"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return syncDir(c.dir)
}

// Repairing reports whether the repair that Open started after a crash is still running. Until it has read the
// index (the first thing it does, quickly), Usage is short of what is stored, and writers that need room under
// the quota wait for it; until it ends, Usage counts the entries it has yet to find broken.
func (c *Cache) Repairing() bool { return c.repairing.Load() }

// countDone records that the usage counts every object of the index.
func (c *Cache) countDone() { c.countOnce.Do(func() { close(c.counted) }) }

// startRepair starts the background repair on a snapshot of the index taken now, before any write: every
// object of the snapshot is counted by the repair, every later change by the writer that makes it.
func (c *Cache) startRepair() {
	txn := c.db.NewTransaction(false)
	ctx, cancel := context.WithTimeout(context.Background(), repairTimeout)
	c.stopRepair = cancel
	c.repairing.Store(true)
	c.bg.Go(func() {
		defer cancel()
		defer close(c.repaired)
		defer c.countDone() // a repair that stopped early: what it counted is what there is
		defer c.repairing.Store(false)
		start := time.Now()
		st, err := c.repair(ctx, txn)
		txn.Discard()
		if errors.Is(err, context.Canceled) {
			c.log.Info("cache repair stopped by Close; it runs again at the next start")
			return
		}
		if err != nil {
			c.log.Error("cache repair stopped; it runs again at the next start", "err", err)
			return
		}
		c.exact.Store(true)
		bytes, objects := c.Usage()
		c.log.Info("cache repair finished", "objects", objects, "bytes", bytes, "entries_removed", st.entries,
			"files_removed", st.files, "duration", time.Since(start).Round(time.Millisecond))
	})
}

type repairStats struct{ entries, files int }

// repair makes the index and the content files agree after a crash, and counts the usage, holding no more in
// memory than one object at a time: it counts the objects of the snapshot txn (so that the quota holds from
// then on; an entry found broken next is subtracted when it is dropped), checks their files, then every
// content file (looked up in the index), then the tags and access times of objects that are gone.
func (c *Cache) repair(ctx context.Context, txn *badger.Txn) (repairStats, error) {
	var st repairStats
	err := c.scanObjects(txn, func(o Object) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		c.bytes.Add(o.Size)
		c.objects.Add(1)
		return nil
	})
	if err != nil {
		return st, err
	}
	c.countDone()
	err = c.scanObjects(txn, func(o Object) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		fi, err := os.Lstat(c.Path(o.Digest))
		if err == nil && fi.Mode().IsRegular() && fi.Size() == o.Size {
			return nil
		}
		dropped, err := c.dropBroken(o.Digest)
		if dropped {
			st.entries++
		}
		return err
	})
	if err != nil {
		return st, err
	}

	// Content files with no index entry: a crash between the rename and the index write.
	err = c.walkBlobs(func(path string, d v1.Hash, ok bool) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if !ok {
			c.log.Warn("cache repair: leaving unexpected file in the blobs directory", "path", path)
			return nil
		}
		if _, err := c.Stat(d); !errors.Is(err, ErrNotFound) {
			return err
		}
		l := c.lock(d)
		l.Lock()
		defer l.Unlock()
		if _, err := c.Stat(d); !errors.Is(err, ErrNotFound) {
			return err // installed meanwhile
		}
		c.log.Warn("cache repair: removing content file that has no index entry", "path", path)
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("cache: %w", err)
		}
		st.files++
		return nil
	})
	if err != nil {
		return st, err
	}

	// Tags and access times (as they were at Open: later ones are their writers' business) of objects that are
	// gone.
	for _, kind := range []byte{kindTag, kindAccess} {
		n, err := c.dropDangling(ctx, txn, kind)
		st.entries += n
		if err != nil {
			return st, err
		}
	}
	return st, nil
}

// dropDangling removes the entries of one kind (tags or access times) of the snapshot txn that name an object
// not in the index now. A tag written again since is left alone.
func (c *Cache) dropDangling(ctx context.Context, txn *badger.Txn, kind byte) (int, error) {
	n := 0
	err := func() error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{kind, sep}, PrefetchValues: kind == kindTag, PrefetchSize: 100})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			item := it.Item()
			var d v1.Hash
			var val []byte
			if kind == kindTag {
				var e TagEntry
				v, err := item.ValueCopy(nil)
				if err == nil {
					err = decodeTag(v, &e)
				}
				if err != nil {
					return err
				}
				d, val = e.Digest, v
			} else {
				d, _ = v1.NewHash(string(item.Key()[2:]))
			}
			if checkDigest(d) == nil {
				if _, err := c.Stat(d); !errors.Is(err, ErrNotFound) {
					if err != nil {
						return err
					}
					continue
				}
			}
			k := item.KeyCopy(nil)
			if kind == kindTag {
				c.log.Warn("cache repair: removing tag whose manifest is gone", "key", printableKey(k), "digest", d.String())
			}
			err := c.update(func(txn *badger.Txn) error {
				if val != nil {
					cur, err := txn.Get(k)
					if err != nil {
						return nil // gone meanwhile
					}
					if same, err := cur.ValueCopy(nil); err != nil || !bytes.Equal(same, val) {
						return err // written again meanwhile
					}
				}
				return txn.Delete(k)
			})
			if errors.Is(err, ErrFull) {
				return nil // a dangling tag is only a future miss
			}
			if err != nil {
				return err
			}
			n++
		}
		return nil
	}()
	if err != nil {
		return n, fmt.Errorf("cache: repair index: %w", err)
	}
	return n, nil
}

// scanObjects calls fn for every object in the index as txn sees it, streaming: it holds one object at a time.
func (c *Cache) scanObjects(txn *badger.Txn, fn func(Object) error) error {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{kindObject, sep}, PrefetchValues: true, PrefetchSize: 100})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		item := it.Item()
		d, err := v1.NewHash(string(item.Key()[2:]))
		if err != nil {
			return fmt.Errorf("cache: bad object key %q: %w", item.Key(), err)
		}
		var o Object
		if err := item.Value(func(v []byte) (err error) { o, err = decodeObject(d, v); return err }); err != nil {
			return err
		}
		if err := fn(o); err != nil {
			return err
		}
	}
	return nil
}

// dropBroken removes d's index entry (and its file, when it has the wrong size) if the file is missing or not
// of the indexed size, and reports whether it did. When the index has no room the entry stays: it is only a
// miss each time it is asked for.
func (c *Cache) dropBroken(d v1.Hash) (bool, error) {
	l := c.lock(d)
	l.Lock()
	defer l.Unlock()
	o, err := c.Stat(d)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	p := c.Path(d)
	fi, err := os.Lstat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		c.log.Warn("cache: removing index entry whose file is missing", "digest", d.String())
	case err != nil:
		return false, fmt.Errorf("cache: %w", err)
	case fi.Mode().IsRegular() && fi.Size() == o.Size:
		return false, nil // put back meanwhile
	case !fi.Mode().IsRegular():
		c.log.Warn("cache: removing index entry whose file is not a regular file", "digest", d.String(), "path", p)
	default:
		// Files are renamed into place only when complete, so this is damage from outside: do not serve it.
		c.log.Warn("cache: removing content file of the wrong size", "digest", d.String(), "size", fi.Size(), "want", o.Size)
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return false, fmt.Errorf("cache: %w", err)
		}
	}
	err = c.update(func(txn *badger.Txn) error { return txn.Delete(objectKey(d)) })
	if errors.Is(err, ErrFull) {
		c.log.Warn("cache: index entry of a missing file stays until the disk has room", "digest", d.String())
		return false, nil
	}
	if err != nil {
		return false, err
	}
	c.bytes.Add(-o.Size)
	c.objects.Add(-1)
	return true, nil
}
