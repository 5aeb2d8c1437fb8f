package cache

import (
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"hash"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// checkDigest returns ErrUnsupportedDigest (wrapped) for an algorithm other than sha256 and sha512, and an error
// for an encoded part that is not lowercase hex of the algorithm's length.
func checkDigest(d v1.Hash) error {
	var n int
	switch d.Algorithm {
	case "sha256":
		n = 64
	case "sha512":
		n = 128
	default:
		return fmt.Errorf("cache: %w: %q", ErrUnsupportedDigest, d.Algorithm)
	}
	if len(d.Hex) != n {
		return fmt.Errorf("cache: invalid digest %q: want %d hex characters", d.String(), n)
	}
	for i := 0; i < len(d.Hex); i++ {
		if b := d.Hex[i]; (b < '0' || b > '9') && (b < 'a' || b > 'f') {
			return fmt.Errorf("cache: invalid digest %q: not lowercase hex", d.String())
		}
	}
	return nil
}

// newHash returns the hash function of a digest that passed checkDigest.
func newHash(alg string) hash.Hash {
	if alg == "sha512" {
		return sha512.New()
	}
	return sha256.New()
}

// Path returns where the content of d is (or would be) stored: Dir/blobs/<alg>/<first two hex>/<hex>. It returns
// "" for a digest the cache cannot store.
func (c *Cache) Path(d v1.Hash) string {
	if checkDigest(d) != nil {
		return ""
	}
	return filepath.Join(c.blobs, d.Algorithm, d.Hex[:2], d.Hex)
}

// lock returns the mutex that serializes changes to d's file and index entry.
func (c *Cache) lock(d v1.Hash) *sync.Mutex {
	return &c.locks[unhex(d.Hex[0])<<4|unhex(d.Hex[1])]
}

func unhex(b byte) byte {
	if b >= 'a' {
		return b - 'a' + 10
	}
	return b - '0'
}

// Stat returns what the index knows about d, or ErrNotFound.
func (c *Cache) Stat(d v1.Hash) (Object, error) {
	if err := checkDigest(d); err != nil {
		return Object{}, err
	}
	v, err := c.get(objectKey(d))
	if err != nil {
		return Object{}, err
	}
	return decodeObject(d, v)
}

// Content opens the content of d for reading; the caller closes the file. It returns ErrNotFound when d is not
// cached. A file that vanished from under its index entry, or that does not have the indexed size, is a miss
// too: the entry is dropped, so that the content can be fetched again.
func (c *Cache) Content(d v1.Hash) (*os.File, Object, error) {
	o, err := c.Stat(d)
	if err != nil {
		return nil, Object{}, err
	}
	f, err := os.Open(c.Path(d))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, Object{}, fmt.Errorf("cache: %w", err)
	}
	if err == nil {
		fi, err := f.Stat()
		if err != nil {
			_ = f.Close()
			return nil, Object{}, fmt.Errorf("cache: %w", err)
		}
		if fi.Mode().IsRegular() && fi.Size() == o.Size {
			return f, o, nil
		}
		_ = f.Close()
	}
	if _, err := c.dropBroken(d); err != nil {
		return nil, Object{}, err
	}
	return nil, Object{}, fmt.Errorf("cache: file of %s is missing or damaged: %w", d, ErrNotFound)
}

// Usage returns the bytes and the number of objects in the index.
func (c *Cache) Usage() (bytes, objects int64) {
	return c.bytes.Load(), c.objects.Load()
}

// install moves the verified, fsynced temp file of w into place and indexes it. It is called by Commit.
func (c *Cache) install(w *Writer) (Object, error) {
	d := w.digest
	final := c.Path(d)
	l := c.lock(d)
	l.Lock()
	defer l.Unlock()

	existing, err := c.Stat(d)
	haveEntry := err == nil
	switch {
	case haveEntry:
		_, serr := os.Stat(final)
		if serr == nil {
			// Another writer won: its file has the same bytes. Keep it, drop ours.
			if err := w.move(final, func() error { return os.Remove(w.tmp) }); err != nil {
				return Object{}, fmt.Errorf("cache: %w", err)
			}
			if existing.MediaType == "" && w.mediaType != "" {
				existing.MediaType = w.mediaType
				if err := c.set(badger.NewEntry(objectKey(d), encodeObject(existing))); err != nil {
					return Object{}, err
				}
			}
			return existing, nil
		}
		if !errors.Is(serr, fs.ErrNotExist) {
			return Object{}, fmt.Errorf("cache: %w", serr)
		}
		// An entry without its file: put the file back and rewrite the entry.
	case !errors.Is(err, ErrNotFound):
		return Object{}, err
	}

	dir := filepath.Dir(final)
	if err := c.ensureDir(dir); err != nil {
		return Object{}, err
	}
	if err := w.move(final, func() error { return os.Rename(w.tmp, final) }); err != nil {
		return Object{}, fmt.Errorf("cache: %w", err)
	}
	obj := Object{Digest: d, Size: w.written, MediaType: w.mediaType, Stored: c.now()}
	err = syncDir(dir)
	if err == nil {
		err = c.set(badger.NewEntry(objectKey(d), encodeObject(obj)))
	}
	if err != nil {
		if rerr := os.Remove(final); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			c.log.Error("cache: remove file after failed commit", "path", final, "err", rerr)
		}
		return Object{}, err
	}
	grow := obj.Size
	if haveEntry {
		grow -= existing.Size
	} else {
		c.objects.Add(1)
	}
	// The writer's reservation becomes stored bytes in one step (see quotaMu).
	c.quotaMu.Lock()
	c.bytes.Add(grow)
	c.unreserve(w.reserved)
	c.quotaMu.Unlock()
	w.reserved = 0
	return obj, nil
}

// ensureDir creates a content directory and makes its creation durable.
func (c *Cache) ensureDir(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	algDir := filepath.Dir(dir)
	for _, p := range []string{algDir, filepath.Dir(algDir)} {
		if err := syncDir(p); err != nil {
			return err
		}
	}
	return nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("cache: sync %s: %w", dir, err)
	}
	return nil
}
