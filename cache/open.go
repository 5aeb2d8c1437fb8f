package cache

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// touchInterval is how often Touch records an access time for one digest.
const touchInterval = time.Minute

// Cache is the on-disk content store and its index. It is safe for concurrent use. Callers stop using it
// (and finish or abort every Writer) before Close.
type Cache struct {
	dir    string
	blobs  string
	tmp    string
	now    func() time.Time
	log    *slog.Logger
	db     *badger.DB
	closed atomic.Bool

	// locks serialize the installation of one digest (check the index, rename, write the index), striped by
	// the first byte of the digest so that unrelated commits do not wait for each other's fsyncs.
	locks [256]sync.Mutex

	bytes   atomic.Int64
	objects atomic.Int64

	mu      sync.Mutex
	active  map[string]struct{}   // temp file names of writers in progress
	touched map[v1.Hash]time.Time // last access time recorded per digest
}

// Open opens (creating if needed) the cache in opts.Dir and repairs what a crash may have left: temp files,
// index entries whose file is gone or has the wrong size (and tags that point at them), and content files that
// have no index entry. It does not re-hash content (Verify does).
func Open(opts Options) (*Cache, error) {
	if opts.Dir == "" {
		return nil, errors.New("cache: Options.Dir is required")
	}
	opts = opts.withDefaults()
	c := &Cache{
		dir:     opts.Dir,
		blobs:   filepath.Join(opts.Dir, "blobs"),
		tmp:     filepath.Join(opts.Dir, "tmp"),
		now:     opts.Now,
		log:     opts.Logger,
		active:  make(map[string]struct{}),
		touched: make(map[v1.Hash]time.Time),
	}
	index := filepath.Join(opts.Dir, "index")
	for _, d := range []string{c.blobs, c.tmp, index} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("cache: %w", err)
		}
	}
	if err := c.removeTemp(); err != nil {
		return nil, err
	}
	db, err := badger.Open(badgerOptions(index, c.log))
	if err != nil {
		return nil, fmt.Errorf("cache: open index %s: %w", index, err)
	}
	c.db = db
	if err := c.repair(); err != nil {
		_ = db.Close()
		return nil, err
	}
	return c, nil
}

func (o Options) withDefaults() Options {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// badgerOptions keeps badger small (this runs on small nodes) and quiet.
//
// Writes are not synced: an index entry is written only after its file and directory were fsynced, and
// badger's write-ahead log loses at most a suffix of writes in a power loss. A lost object entry leaves a file
// without an entry, which Open removes; a lost tag or link is only a future cache miss.
func badgerOptions(dir string, log *slog.Logger) badger.Options {
	return badger.DefaultOptions(dir).
		WithLogger(badgerLogger{log.With("component", "badger")}).
		WithSyncWrites(false).
		WithMetricsEnabled(false).
		WithDetectConflicts(false).
		WithMemTableSize(8 << 20).
		WithNumMemtables(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(8).
		WithBlockCacheSize(8 << 20).
		WithValueLogFileSize(64 << 20).
		WithNumCompactors(2).
		WithNumGoroutines(2)
}

// badgerLogger routes badger's messages to slog: its informational chatter at debug level.
type badgerLogger struct{ log *slog.Logger }

func (l badgerLogger) Errorf(f string, a ...any)   { l.log.Error(msg(f, a)) }
func (l badgerLogger) Warningf(f string, a ...any) { l.log.Warn(msg(f, a)) }
func (l badgerLogger) Infof(f string, a ...any)    { l.log.Debug(msg(f, a)) }
func (l badgerLogger) Debugf(f string, a ...any)   { l.log.Debug(msg(f, a)) }

func msg(f string, a []any) string { return strings.TrimSpace(fmt.Sprintf(f, a...)) }

// Close closes the index. Content files need no closing.
func (c *Cache) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return nil
	}
	if err := c.db.Close(); err != nil {
		return fmt.Errorf("cache: close index: %w", err)
	}
	return nil
}

// removeTemp removes everything in the temp directory; it runs before any writer exists.
func (c *Cache) removeTemp() error {
	entries, err := os.ReadDir(c.tmp)
	if err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	for _, e := range entries {
		p := filepath.Join(c.tmp, e.Name())
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("cache: remove temp file: %w", err)
		}
		c.log.Info("cache repair: removed temp file", "path", p)
	}
	return nil
}

// repair makes the index and the content files agree, then computes the usage.
func (c *Cache) repair() error {
	objs, err := c.objectList()
	if err != nil {
		return err
	}
	live := make(map[v1.Hash]struct{}, len(objs))
	var gone [][]byte
	var bytes, count int64
	for _, o := range objs {
		fi, err := os.Stat(c.Path(o.Digest))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			c.log.Warn("cache repair: removing index entry whose file is missing", "digest", o.Digest.String())
			gone = append(gone, objectKey(o.Digest))
			continue
		case err != nil:
			return fmt.Errorf("cache: %w", err)
		case !fi.Mode().IsRegular():
			return fmt.Errorf("cache: %s is not a regular file", c.Path(o.Digest))
		case fi.Size() != o.Size:
			// Files are renamed into place only when complete, so this is damage from outside: do not serve it.
			c.log.Warn("cache repair: removing content file of the wrong size", "digest", o.Digest.String(), "size", fi.Size(), "want", o.Size)
			if err := os.Remove(c.Path(o.Digest)); err != nil {
				return fmt.Errorf("cache: %w", err)
			}
			gone = append(gone, objectKey(o.Digest))
			continue
		}
		live[o.Digest] = struct{}{}
		bytes += o.Size
		count++
	}

	// Content files with no index entry: a crash between the rename and the index write.
	err = c.walkBlobs(func(path string, d v1.Hash, ok bool) error {
		if !ok {
			c.log.Warn("cache repair: leaving unexpected file in the blobs directory", "path", path)
			return nil
		}
		if _, indexed := live[d]; indexed {
			return nil
		}
		c.log.Warn("cache repair: removing content file that has no index entry", "path", path)
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("cache: %w", err)
		}
		return nil
	})
	if err != nil {
		return err
	}

	// Tags and access times of objects that are gone.
	err = c.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{kindTag, sep}, PrefetchValues: false})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var e TagEntry
			if err := it.Item().Value(func(v []byte) error { return decodeTag(v, &e) }); err != nil {
				return err
			}
			if _, ok := live[e.Digest]; !ok {
				k := it.Item().KeyCopy(nil)
				c.log.Warn("cache repair: removing tag whose manifest is gone", "key", printableKey(k), "digest", e.Digest.String())
				gone = append(gone, k)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cache: scan tags: %w", err)
	}
	err = c.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{kindAccess, sep}})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			d, err := v1.NewHash(string(it.Item().Key()[2:]))
			if _, ok := live[d]; err != nil || !ok {
				gone = append(gone, it.Item().KeyCopy(nil))
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cache: scan access times: %w", err)
	}
	if len(gone) > 0 {
		wb := c.db.NewWriteBatch()
		defer wb.Cancel()
		for _, k := range gone {
			if err := wb.Delete(k); err != nil {
				return fmt.Errorf("cache: repair index: %w", err)
			}
		}
		if err := wb.Flush(); err != nil {
			return fmt.Errorf("cache: repair index: %w", err)
		}
	}
	c.bytes.Store(bytes)
	c.objects.Store(count)
	c.log.Info("cache opened", "dir", c.dir, "objects", count, "bytes", bytes, "index_entries_removed", len(gone))
	return nil
}

// walkBlobs calls fn for every file under Dir/blobs, with the digest the file's path names and whether the
// path is a well-formed content path (Dir/blobs/<alg>/<first two hex>/<hex>).
func (c *Cache) walkBlobs(fn func(path string, d v1.Hash, ok bool) error) error {
	return filepath.WalkDir(c.blobs, func(path string, de fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && path != c.blobs {
				return nil // removed while walking
			}
			return err
		}
		if de.IsDir() {
			return nil
		}
		d, ok := c.parsePath(path)
		if ok && !de.Type().IsRegular() {
			ok = false
		}
		return fn(path, d, ok)
	})
}

// parsePath is the inverse of Path.
func (c *Cache) parsePath(path string) (v1.Hash, bool) {
	rel, err := filepath.Rel(c.blobs, path)
	if err != nil {
		return v1.Hash{}, false
	}
	parts := strings.Split(filepath.ToSlash(rel), "/")
	if len(parts) != 3 {
		return v1.Hash{}, false
	}
	d := v1.Hash{Algorithm: parts[0], Hex: parts[2]}
	if checkDigest(d) != nil || parts[1] != d.Hex[:2] {
		return v1.Hash{}, false
	}
	return d, true
}
