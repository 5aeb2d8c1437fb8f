package cache

import (
	"errors"
	"time"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Access times are what eviction orders objects by. They are coarse and batched, so that a cache hit costs no
// index write: Touch only notes the time in memory, at most once per touchInterval per digest, and a
// background task writes what was noted in one batch every touchInterval (and at Close). A crash loses at most
// the last interval's times, which only makes those objects look older to eviction.

// Touch records that d was served. It is cheap to call on every request: it takes one lock and, but for one
// call in touchLimit/2 distinct digests within an interval, writes nothing; the batch is written in the
// background when it reaches half of touchLimit, and by the caller that finds it full.
func (c *Cache) Touch(d v1.Hash) {
	if checkDigest(d) != nil {
		return
	}
	now := c.now()
	for range 2 {
		c.mu.Lock()
		last, ok := c.touched[d]
		if ok && now.Sub(last) < touchInterval && !now.Before(last) {
			c.mu.Unlock()
			return
		}
		if len(c.pending) >= c.touchLimit {
			c.mu.Unlock()
			c.flushAccess()
			continue
		}
		if !ok && len(c.touched) >= c.touchLimit {
			c.pruneTouched(now)
		}
		c.touched[d] = now
		c.pending[d] = now
		if len(c.pending) >= c.touchLimit/2 {
			c.wakeFlush()
		}
		c.mu.Unlock()
		return
	}
}

// wakeFlush asks the access-time task to write its batch now. c.mu is held.
func (c *Cache) wakeFlush() {
	select {
	case c.flushNow <- struct{}{}:
	default:
	}
}

// pruneTouched makes room in the touched map: it forgets the digests recorded touchInterval ago or more (Touch
// would note them again anyway), and every digest not waiting to be written if that frees less than a quarter
// of the limit. c.mu is held.
func (c *Cache) pruneTouched(now time.Time) {
	for d, t := range c.touched {
		if now.Sub(t) >= touchInterval || now.Before(t) {
			delete(c.touched, d)
		}
	}
	if len(c.touched) > c.touchLimit*3/4 {
		for d := range c.touched {
			if _, ok := c.pending[d]; !ok {
				delete(c.touched, d)
			}
		}
	}
}

// Accessed returns the access time Touch last noted for d (written to the index or not yet), or ErrNotFound.
func (c *Cache) Accessed(d v1.Hash) (time.Time, error) {
	if err := checkDigest(d); err != nil {
		return time.Time{}, err
	}
	c.mu.Lock()
	t, ok := c.pending[d]
	c.mu.Unlock()
	if ok {
		return t, nil
	}
	v, err := c.get(accessKey(d))
	if err != nil {
		return time.Time{}, err
	}
	return decodeTime(v)
}

// flushAccess writes the access times noted since the last flush, in one batch. When the index has no room
// they are dropped (they are hints), and the failure is logged.
func (c *Cache) flushAccess() {
	c.flushMu.Lock()
	defer c.flushMu.Unlock()
	c.mu.Lock()
	batch := c.pending
	c.pending = make(map[v1.Hash]time.Time, len(batch))
	c.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	err := c.indexRoom()
	if err == nil {
		wb := c.db.NewWriteBatch()
		for d, t := range batch {
			if err = wb.Set(accessKey(d), encodeTime(t)); err != nil {
				break
			}
		}
		if err == nil {
			err = wb.Flush()
		} else {
			wb.Cancel()
		}
	}
	if err != nil && !errors.Is(err, badger.ErrDBClosed) {
		c.log.Warn("cache: could not record access times; eviction sees those objects as older", "objects", len(batch), "err", err)
	}
}

// accessLoop writes the noted access times every touchInterval, or sooner when Touch asks, until stop is
// closed; then it writes the last batch.
func (c *Cache) accessLoop(stop <-chan struct{}) {
	t := time.NewTicker(touchInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-c.flushNow:
		case <-stop:
			c.flushAccess()
			return
		}
		c.flushAccess()
	}
}
