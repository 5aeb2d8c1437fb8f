package cache

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// maxFaults bounds the faults Verify lists.
const maxFaults = 10_000

// Verify re-hashes every content file and checks that the index and the files agree: an entry without its
// file, a file without an entry, a wrong size or digest, a tag pointing at a missing object, a stray or
// leftover temp file. It repairs nothing. It can run while the cache is in use; it reads every byte, so it
// takes as long as reading the whole cache, and stops with ctx's error when ctx is done. It first waits for the
// repair that Open may have started, so that it reports what the repair left, not what it is fixing. It lists at most
// maxFaults faults, then one that counts the others.
func (c *Cache) Verify(ctx context.Context) ([]Fault, error) {
	select {
	case <-c.repaired:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	var faults []Fault
	unlisted := 0
	add := func(d, path, format string, a ...any) {
		if len(faults) >= c.faultLimit {
			unlisted++
			return
		}
		faults = append(faults, Fault{Digest: d, Path: path, Problem: fmt.Sprintf(format, a...)})
	}

	err := c.db.View(func(txn *badger.Txn) error {
		return c.scanObjects(txn, func(o Object) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			p := c.Path(o.Digest)
			size, got, err := hashFile(ctx, p, o.Digest.Algorithm)
			switch {
			case errors.Is(err, fs.ErrNotExist):
				add(o.Digest.String(), p, "index entry without file")
				return nil
			case ctx.Err() != nil:
				return ctx.Err()
			case err != nil:
				add(o.Digest.String(), p, "cannot read: %v", err)
				return nil
			}
			if size != o.Size {
				add(o.Digest.String(), p, "file has %d bytes, index says %d", size, o.Size)
			} else if got != o.Digest {
				add(o.Digest.String(), p, "content hashes to %s", got)
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("cache: scan objects: %w", err)
	}

	err = c.walkBlobs(func(path string, d v1.Hash, ok bool) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if !ok {
			add("", path, "unexpected file in the blobs directory")
			return nil
		}
		if _, err := c.Stat(d); !errors.Is(err, ErrNotFound) {
			return err
		}
		// It may be being committed: ask again, after any install of d ended.
		l := c.lock(d)
		l.Lock()
		_, err := c.Stat(d)
		l.Unlock()
		if errors.Is(err, ErrNotFound) {
			add(d.String(), path, "file without index entry")
			return nil
		}
		return err
	})
	if err != nil {
		return nil, err
	}

	err = c.db.View(func(txn *badger.Txn) error {
		prefix := []byte{kindTag, sep}
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: true, PrefetchSize: 100})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var e TagEntry
			if err := it.Item().Value(func(v []byte) error { return decodeTag(v, &e) }); err != nil {
				return err
			}
			if _, err := txn.Get(objectKey(e.Digest)); errors.Is(err, badger.ErrKeyNotFound) {
				parts := bytes.Split(it.Item().Key()[len(prefix):], []byte{sep})
				add(e.Digest.String(), "", "tag %q points at a missing object", bytes.Join(parts, []byte(" ")))
			} else if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cache: scan tags: %w", err)
	}

	entries, err := os.ReadDir(c.tmp)
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	for _, e := range entries {
		p := filepath.Join(c.tmp, e.Name())
		c.mu.Lock()
		_, active := c.active[p]
		c.mu.Unlock()
		if active {
			continue
		}
		if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
			continue // its writer ended since the listing
		}
		add("", p, "leftover temp file")
	}
	if unlisted > 0 {
		faults = append(faults, Fault{Problem: fmt.Sprintf("%d more faults not listed", unlisted)})
	}
	return faults, nil
}

// hashFile returns the size and digest of the file at path.
func hashFile(ctx context.Context, path, alg string) (int64, v1.Hash, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, v1.Hash{}, err
	}
	defer f.Close()
	h := newHash(alg)
	n, err := io.Copy(h, ctxReader{ctx, f})
	if err != nil {
		return n, v1.Hash{}, err
	}
	return n, v1.Hash{Algorithm: alg, Hex: hex.EncodeToString(h.Sum(nil))}, nil
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}
