package cache

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"syscall"
	"time"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// The scrub keeps its state in the index under its own kind (same layout as the keys listed in index.go):
//
//	s 0 cursor                              scrub: the object key suffix (<alg:hex>) of the last object the
//	                                        pass in progress checked; absent when no pass is in progress
//	s 0 last                                scrub: 8 bytes, big-endian Unix nanoseconds of the end of the last
//	                                        complete pass
const kindScrub = 's'

const (
	// scrubBatch is how many object entries a pass reads from the index in one short transaction.
	scrubBatch = 256
	// scrubChunk is the most a pass reads of a file at once, and so the largest burst of the rate limit.
	scrubChunk = 1 << 20
	// minScrubChunk is the smallest read when the rate is lower than scrubChunk per second.
	minScrubChunk = 64 << 10
	// defaultScrubInterval is RunScrub's time from the end of one complete pass to the next when
	// ScrubOptions.Interval is 0.
	defaultScrubInterval = 24 * time.Hour
	// scrubRetry is how long RunScrub waits after a pass failed (at most the interval) before it resumes.
	scrubRetry = 10 * time.Minute
	// maxScrubCursor caps the stored cursor that a pass accepts; a longer one is ignored.
	maxScrubCursor = 256
)

// ScrubOptions configures Scrub and RunScrub.
type ScrubOptions struct {
	// Rate is the most bytes of content read per second; zero or negative means no limit.
	Rate int64
	// Interval is, for RunScrub, the time from the end of one complete pass (see LastScrub) to the start of the
	// next; zero means 24 hours.
	Interval time.Duration
	// OnCorrupt is called, after the removal, once for each object a pass removed, with what was wrong with
	// it; nil means nothing is called.
	OnCorrupt func(o Object, problem string)

	// sleep waits d or until ctx is done, and then returns ctx.Err(); nil means a real timer. Tests replace it
	// to check the rate and the interval without waiting.
	sleep func(ctx context.Context, d time.Duration) error
	// batch is how many object entries are read at once; zero means scrubBatch.
	batch int
}

// ScrubStats says what one call of Scrub did.
type ScrubStats struct {
	Objects  int64 // objects checked to the end (removed ones included)
	Bytes    int64 // bytes of content read
	Removed  int   // objects removed as corrupt or missing
	Complete bool  // the pass reached the last object; the next one starts from the first
}

func scrubCursorKey() []byte { return append([]byte{kindScrub, sep}, "cursor"...) }
func scrubLastKey() []byte   { return append([]byte{kindScrub, sep}, "last"...) }

// Scrub re-hashes the stored objects in digest order, reading at most opts.Rate bytes per second, and removes
// each object whose file does not have the indexed size or does not hash to its digest (and the index entry of
// one whose file is gone), so that the next pull fetches it again. It resumes after the last object an
// earlier pass checked, saving its place in the index after every batch, and returns when it reached the last
// object (Complete: it then records the time, see LastScrub) or when ctx is done, with ctx's error. It holds no
// index transaction while it reads files. It first waits for the repair that Open may have started. An index
// too full to take its place is not an error: the pass goes on without saving it.
func (c *Cache) Scrub(ctx context.Context, opts ScrubOptions) (ScrubStats, error) {
	select {
	case <-c.repaired:
	case <-ctx.Done():
		return ScrubStats{}, ctx.Err()
	}
	cursor, err := c.scrubCursor()
	if err != nil {
		return ScrubStats{}, err
	}
	st, _, _, err := c.scrubPass(ctx, opts, cursor)
	return st, err
}

// RunScrub runs Scrub over and over until ctx is done, and then returns ctx's error. A new pass starts
// opts.Interval after the end of the last complete one (LastScrub, so that the schedule survives restarts), but
// never waits more than opts.Interval (the clock may have been set back); a pass that was interrupted resumes
// at once. A pass that fails is logged and resumed after a while (at most the interval).
func (c *Cache) RunScrub(ctx context.Context, opts ScrubOptions) error {
	select {
	case <-c.repaired:
	case <-ctx.Done():
		return ctx.Err()
	}
	interval := opts.Interval
	if interval <= 0 {
		interval = defaultScrubInterval
	}
	sleep := opts.scrubSleep()
	// The place and the last end are kept here too: while the index is full they cannot be saved there.
	last, err := c.LastScrub()
	if err != nil {
		return err
	}
	cursor, err := c.scrubCursor()
	if err != nil {
		return err
	}
	for {
		if cursor == "" && !last.IsZero() {
			// Never more than one interval: a clock set back must not stop the scrub for long.
			if d := min(last.Add(interval).Sub(c.now()), interval); d > 0 {
				if err := sleep(ctx, d); err != nil {
					return err
				}
			}
		}
		st, next, end, err := c.scrubPass(ctx, opts, cursor)
		cursor = next
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			c.log.Error("cache scrub stopped; it resumes later", "err", err, "objects", st.Objects, "removed", st.Removed)
			if err := sleep(ctx, min(scrubRetry, interval)); err != nil {
				return err
			}
			continue
		}
		if st.Complete {
			last = end
		}
	}
}

// LastScrub returns when the last complete pass of Scrub ended, or the zero time if none did.
func (c *Cache) LastScrub() (time.Time, error) {
	v, err := c.get(scrubLastKey())
	if errors.Is(err, ErrNotFound) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, err
	}
	return decodeTime(v)
}

// scrubCursor returns the saved place of the pass in progress, "" when none is in progress.
func (c *Cache) scrubCursor() (string, error) {
	v, err := c.get(scrubCursorKey())
	if errors.Is(err, ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	if len(v) > maxScrubCursor {
		c.log.Warn("cache scrub: ignoring an oversized cursor; the pass starts again", "bytes", len(v))
		return "", nil
	}
	return string(v), nil
}

func (o ScrubOptions) scrubSleep() func(context.Context, time.Duration) error {
	if o.sleep != nil {
		return o.sleep
	}
	return sleepCtx
}

// sleepCtx waits d or until ctx is done, and returns ctx.Err().
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	return ctx.Err()
}

// scrubPass runs a pass from cursor (after that key suffix; "" is the start) and returns its stats, the place
// it stopped at ("" after a complete pass) and, for a complete pass, the time it ended.
func (c *Cache) scrubPass(ctx context.Context, opts ScrubOptions, cursor string) (ScrubStats, string, time.Time, error) {
	var st ScrubStats
	batch := opts.batch
	if batch <= 0 {
		batch = scrubBatch
	}
	chunk := scrubChunk
	if opts.Rate > 0 && opts.Rate < scrubChunk {
		chunk = int(max(opts.Rate, minScrubChunk))
	}
	s := scrubber{
		c:     c,
		opts:  opts,
		st:    &st,
		buf:   make([]byte, chunk),
		rate:  opts.Rate,
		sleep: opts.scrubSleep(),
		last:  c.now(),
	}
	saved := cursor
	save := func() error {
		if cursor == saved {
			return nil
		}
		err := c.update(func(txn *badger.Txn) error { return txn.Set(scrubCursorKey(), []byte(cursor)) })
		if errors.Is(err, ErrFull) {
			c.log.Debug("cache scrub: index full, cursor not saved", "err", err)
			return nil
		}
		if err != nil {
			return err
		}
		saved = cursor
		return nil
	}
	for {
		objs, next, err := c.objectsAfter(cursor, batch)
		if err != nil {
			return st, cursor, time.Time{}, err
		}
		if next == "" {
			break
		}
		for _, o := range objs {
			if err := s.check(ctx, o); err != nil {
				if serr := save(); serr != nil {
					err = errors.Join(err, serr)
				}
				return st, cursor, time.Time{}, err
			}
			cursor = o.Digest.String()
		}
		cursor = next // past entries that are not objects of this version too
		if err := save(); err != nil {
			return st, cursor, time.Time{}, err
		}
		if err := ctx.Err(); err != nil {
			return st, cursor, time.Time{}, err
		}
	}
	end := c.now()
	st.Complete = true
	err := c.update(func(txn *badger.Txn) error {
		if err := txn.Delete(scrubCursorKey()); err != nil {
			return err
		}
		return txn.Set(scrubLastKey(), encodeTime(end))
	})
	if errors.Is(err, ErrFull) {
		c.log.Warn("cache scrub: index full, the end of the pass is not recorded", "err", err)
		err = nil
	}
	c.log.Info("cache scrub pass complete", "objects", st.Objects, "bytes", st.Bytes, "removed", st.Removed)
	return st, "", end, err
}

// objectsAfter returns up to n objects whose key suffix comes after cursor, in key order, and the key suffix of
// the last entry it looked at ("" when there was none: the pass is complete). Entries that are not well-formed
// objects are logged and skipped.
func (c *Cache) objectsAfter(cursor string, n int) ([]Object, string, error) {
	prefix := []byte{kindObject, sep}
	start := append(append([]byte(nil), prefix...), cursor...)
	var objs []Object
	next := ""
	err := c.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: true, PrefetchSize: n})
		defer it.Close()
		seen := 0
		for it.Seek(start); it.Valid() && seen < n; it.Next() {
			item := it.Item()
			k := item.Key()
			if bytes.Equal(k, start) {
				continue
			}
			seen++
			next = string(k[len(prefix):])
			d, err := v1.NewHash(next)
			if err == nil {
				err = checkDigest(d)
			}
			if err != nil {
				c.log.Warn("cache scrub: skipping a malformed object key", "key", printableKey(k), "err", err)
				continue
			}
			var o Object
			if err := item.Value(func(v []byte) (err error) { o, err = decodeObject(d, v); return err }); err != nil {
				c.log.Warn("cache scrub: skipping an unreadable object entry", "digest", d.String(), "err", err)
				continue
			}
			objs = append(objs, o)
		}
		return nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("cache: scrub: read index: %w", err)
	}
	return objs, next, nil
}

// scrubber checks objects for one pass, with the pass's token bucket.
type scrubber struct {
	c     *Cache
	opts  ScrubOptions
	st    *ScrubStats
	buf   []byte
	rate  int64
	sleep func(context.Context, time.Duration) error

	tokens float64   // bytes that may be read now; negative: owed
	last   time.Time // when tokens was last refilled
}

// pay counts n bytes read and waits until the rate allows them. The bucket holds at most one chunk, so a
// pass never reads faster than the rate by more than one chunk.
func (s *scrubber) pay(ctx context.Context, n int) error {
	if s.rate <= 0 {
		return ctx.Err()
	}
	now := s.c.now()
	if el := now.Sub(s.last); el > 0 {
		s.tokens = min(s.tokens+el.Seconds()*float64(s.rate), float64(len(s.buf)))
	}
	s.last = now
	s.tokens -= float64(n)
	if s.tokens >= 0 {
		return ctx.Err()
	}
	d := time.Duration(math.Ceil(-s.tokens / float64(s.rate) * float64(time.Second)))
	return s.sleep(ctx, d)
}

// check re-hashes one object and removes it when it is damaged. It returns an error only when the pass must
// stop: ctx is done, or the index or the filesystem failed.
func (s *scrubber) check(ctx context.Context, o Object) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c := s.c
	p := c.Path(o.Digest)
	problem, err := s.hash(ctx, p, o)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var removed bool
	switch {
	case errors.Is(err, fs.ErrNotExist) || errors.Is(err, errNotRegular):
		removed, err = c.dropBroken(o.Digest) // logs; a removal by someone else is not ours
		problem = "index entry without a regular file"
	case err != nil:
		// Not proof of damage (a permission, a transient fault): leave it, and say so.
		c.log.Error("cache scrub: cannot read content file", "digest", o.Digest.String(), "path", p, "err", err)
		return nil
	case problem == "":
		s.st.Objects++
		return nil
	default:
		removed, err = c.dropCorrupt(o, problem)
	}
	if err != nil {
		return err
	}
	s.st.Objects++
	if removed {
		s.st.Removed++
		if s.opts.OnCorrupt != nil {
			s.opts.OnCorrupt(o, problem)
		}
	}
	return nil
}

// errNotRegular says that a content path is not a regular file.
var errNotRegular = errors.New("not a regular file")

// hash reads the file of o at the pass's rate and returns what is wrong with it, "" when nothing is. It reads
// at most one byte more than the indexed size.
func (s *scrubber) hash(ctx context.Context, p string, o Object) (string, error) {
	// O_NOFOLLOW and O_NONBLOCK: a symbolic link or a FIFO put there is not followed or waited for.
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, syscall.ELOOP) {
		return "", errNotRegular
	}
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() {
		return "", errNotRegular
	}
	if fi.Size() != o.Size {
		return fmt.Sprintf("file has %d bytes, index says %d", fi.Size(), o.Size), nil
	}
	h := newHash(o.Digest.Algorithm)
	var n int64
	for limit := o.Size + 1; n < limit; {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		m, err := io.ReadFull(f, s.buf[:min(int64(len(s.buf)), limit-n)])
		h.Write(s.buf[:m])
		n += int64(m)
		s.st.Bytes += int64(m)
		if perr := s.pay(ctx, m); perr != nil {
			return "", perr
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return "", err
		}
	}
	if n != o.Size {
		return fmt.Sprintf("file has %d bytes, index says %d", n, o.Size), nil
	}
	if got := (v1.Hash{Algorithm: o.Digest.Algorithm, Hex: hex.EncodeToString(h.Sum(nil))}); got != o.Digest {
		return fmt.Sprintf("content hashes to %s", got), nil
	}
	return "", nil
}

// dropCorrupt removes the file and the index entry of o, which a check found damaged, and reports whether it
// did. It does nothing when the entry changed since o was read (the object was removed, or installed again with
// a file of its own). The file is removed first, so that it is never served again; when the index has no room
// for the deletion the entry stays, a miss that the next Commit of the digest fills.
func (c *Cache) dropCorrupt(o Object, problem string) (bool, error) {
	c.log.Warn("cache scrub: removing corrupt object", "digest", o.Digest.String(), "path", c.Path(o.Digest), "problem", problem)
	st, err := c.remove(context.Background(), []v1.Hash{o.Digest}, ReasonCorrupt, func(cur Object) bool {
		return cur.Stored.Equal(o.Stored) // not installed again meanwhile
	})
	if err != nil {
		return st.Objects > 0, fmt.Errorf("cache: scrub: %w", err)
	}
	return st.Objects > 0, nil
}
