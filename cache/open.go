package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
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

// touchLimit bounds the digests Touch remembers (about 100 bytes each): when full, it forgets those recorded
// more than touchInterval ago, and all of them if that is not enough.
const touchLimit = 1 << 16

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
	space  *space

	// locks serialize the installation of one digest (check the index, rename, write the index), striped by
	// the first byte of the digest so that unrelated commits do not wait for each other's fsyncs.
	locks [256]sync.Mutex

	bytes   atomic.Int64
	objects atomic.Int64
	// exact is set once bytes and objects are exact: at Open after a clean stop, or when repair finished.
	exact     atomic.Bool
	repairing atomic.Bool
	repaired  chan struct{} // closed when no repair runs any more
	// counted is closed once bytes and objects count every object of the index: at Open after a clean stop,
	// or once the repair has read the index (before it checks the files); countOnce closes it.
	counted   chan struct{}
	countOnce sync.Once
	// stopRepair cancels the background repair; nil when none was started.
	stopRepair context.CancelFunc
	// bg counts background tasks (repair, ballast); Close waits for them. Started under mu, never after Close.
	bg sync.WaitGroup

	mu         sync.Mutex
	active     map[string]struct{}   // temp file names of writers in progress
	touched    map[v1.Hash]time.Time // last access time noted per digest, at most touchLimit entries
	pending    map[v1.Hash]time.Time // access times noted and not yet written, at most touchLimit entries
	touchLimit int
	faultLimit int // maxFaults; smaller in tests

	// flushNow asks the access-time task to write its batch; flushMu serializes those writes.
	flushNow chan struct{}
	flushMu  sync.Mutex
	// stop is closed by Close: the background tasks end.
	stop chan struct{}

	// Quota and eviction (evict.go).
	maxBytes       int64
	minFree        int64
	minFreePercent float64
	quotaWait      time.Duration
	fixedPins      []Pin
	onRemove       func(reason string, objects int, bytes int64)
	inflight       atomic.Int64 // bytes reserved by writers in progress
	asking         atomic.Int64 // bytes writers wait to reserve
	pinnedBytes    atomic.Int64 // what the pins held at the last eviction round
	evictWake      chan struct{}
	evictMu        sync.Mutex
	roundDone      chan struct{}       // closed when the next eviction round ends
	batchDone      chan struct{}       // closed when the next removal batch ends
	askWake        chan struct{}       // a writer waits for room: a resting round goes on
	removeBatch    int                 // objects one removal batch takes (removeBatch but in tests)
	rested         func(time.Duration) // tests: called with each rest a paced round decides on (0: none)

	// quotaMu makes a reservation's check, and the move of a committed writer's reservation to the stored
	// bytes, one step each: a reservation never sees the committed bytes twice, or not at all.
	quotaMu sync.Mutex
}

// Open opens (creating if needed) the cache in opts.Dir. It removes temp files. After a clean stop (Close) it
// does nothing more, so that it takes the same time whatever the size of the cache. After a crash it returns
// at once and repairs in the background (see Repairing) what the crash may have left: index entries whose
// file is gone or has the wrong size (and tags that point at them), and content files that have no index
// entry; until the repair ends, Usage counts only what it has checked. It does not re-hash content (Verify
// does). When the disk is full it gives back its ballast, so that the index can open and cached content is
// served.
func Open(opts Options) (*Cache, error) {
	if opts.Dir == "" {
		return nil, errors.New("cache: Options.Dir is required")
	}
	opts = opts.withDefaults()
	c := &Cache{
		dir:            opts.Dir,
		blobs:          filepath.Join(opts.Dir, "blobs"),
		tmp:            filepath.Join(opts.Dir, "tmp"),
		now:            opts.Now,
		log:            opts.Logger,
		active:         make(map[string]struct{}),
		touched:        make(map[v1.Hash]time.Time),
		pending:        make(map[v1.Hash]time.Time),
		touchLimit:     touchLimit,
		flushNow:       make(chan struct{}, 1),
		stop:           make(chan struct{}),
		evictWake:      make(chan struct{}, 1),
		roundDone:      make(chan struct{}),
		batchDone:      make(chan struct{}),
		askWake:        make(chan struct{}, 1),
		maxBytes:       opts.MaxBytes,
		minFree:        opts.MinFree,
		quotaWait:      opts.QuotaWait,
		onRemove:       opts.OnRemove,
		removeBatch:    opts.removeBatch,
		minFreePercent: opts.MinFreePercent,
		faultLimit:     maxFaults,
		repaired:       make(chan struct{}),
		counted:        make(chan struct{}),
		space:          newSpace(opts.Dir, opts.Reserve, opts.Now, opts.Logger),
	}
	for _, p := range opts.Pins {
		if _, _, err := p.compile(); err != nil {
			return nil, err
		}
		c.fixedPins = append(c.fixedPins, p)
	}
	index := filepath.Join(opts.Dir, "index")
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	// Give the ballast back first if the disk is nearly full: creating a directory and opening the index need
	// room.
	more, err := c.space.refresh()
	if err != nil {
		return nil, err
	}
	if err := c.makePrivateDirs(index); err != nil {
		return nil, err
	}
	fresh, err := c.isNew(index)
	if err != nil {
		return nil, err
	}
	// The index's directory lock is what keeps a second process off a data directory in use: nothing in it is
	// touched before the lock is held.
	db, err := badger.Open(badgerOptions(index, c.log))
	if err != nil {
		return nil, fmt.Errorf("cache: open index %s: %w", index, err)
	}
	c.db = db
	if err := c.removeTemp(); err != nil {
		_ = db.Close()
		return nil, err
	}
	clean, err := c.consumeCleanMark()
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	if clean == nil && fresh {
		clean = &cleanMark{} // a new cache has nothing to repair
	}
	if clean != nil {
		c.bytes.Store(clean.Bytes)
		c.objects.Store(clean.Objects)
		c.exact.Store(true)
		close(c.repaired)
		c.countDone()
	} else {
		c.startRepair()
	}
	if more {
		c.refillBallast()
	}
	c.bg.Go(func() { c.accessLoop(c.stop) })
	if c.maxBytes > 0 || c.minFree > 0 || c.minFreePercent > 0 {
		c.bg.Go(func() { c.evictLoop(c.stop) })
	}
	c.log.Info("cache opened", "dir", c.dir, "objects", c.objects.Load(), "bytes", c.bytes.Load(), "repair", clean == nil)
	return c, nil
}

// makePrivateDirs creates the cache's directories readable by their owner only, and takes the other users'
// access away from existing ones (content fetched with upstream credentials is not for every local user).
// The per-algorithm directories are created when content needs them (0700 too).
func (c *Cache) makePrivateDirs(index string) error {
	for _, d := range []string{c.blobs, c.tmp, index} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("cache: %w", err)
		}
	}
	for _, d := range []string{c.blobs, filepath.Join(c.blobs, "sha256"), filepath.Join(c.blobs, "sha512"), c.tmp, index} {
		if err := os.Chmod(d, 0o700); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("cache: %w", err)
		}
	}
	return nil
}

func (o Options) withDefaults() Options {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.QuotaWait == 0 {
		o.QuotaWait = 15 * time.Second
	}
	if o.removeBatch <= 0 {
		o.removeBatch = removeBatch
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

// Close stops the background repair (if one runs) and closes the index. After a clean stop it records the
// usage, so that the next Open needs no repair. Content files need no closing.
func (c *Cache) Close() error {
	c.mu.Lock()
	first := c.closed.CompareAndSwap(false, true)
	c.mu.Unlock()
	if !first {
		return nil
	}
	if c.stopRepair != nil {
		c.stopRepair()
	}
	close(c.stop)
	c.bg.Wait()
	// Closing flushes the index's memtable: give it the ballast if the disk filled up since the last check.
	if _, err := c.space.refresh(); err != nil {
		c.log.Warn("cache: free space unknown at close", "err", err)
	}
	if err := c.db.Close(); err != nil {
		return fmt.Errorf("cache: close index: %w", err)
	}
	if c.exact.Load() {
		if err := c.writeCleanMark(); err != nil {
			c.log.Warn("cache: could not mark the stop as clean; the next start repairs", "err", err)
		}
	}
	return nil
}

// isNew reports whether the cache has neither an index nor content files.
func (c *Cache) isNew(index string) (bool, error) {
	for _, d := range []string{index, filepath.Join(c.blobs, "sha256"), filepath.Join(c.blobs, "sha512")} {
		empty, err := emptyDir(d)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil || !empty {
			return false, err
		}
	}
	return true, nil
}

// emptyDir reports whether dir has no entries.
func emptyDir(dir string) (bool, error) {
	f, err := os.Open(dir)
	if err != nil {
		return false, fmt.Errorf("cache: %w", err)
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if errors.Is(err, io.EOF) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("cache: %w", err)
	}
	return len(names) == 0, nil
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
