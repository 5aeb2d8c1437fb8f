package identity

import (
	"sync"
	"time"
)

// memo is a bounded map whose entries expire. When it is full, an insert drops the expired entries, then the
// entry that expires soonest. It is safe for concurrent use.
type memo[K comparable, V any] struct {
	max int
	mu  sync.Mutex
	m   map[K]memoEntry[V]
}

type memoEntry[V any] struct {
	v     V
	until time.Time
}

func newMemo[K comparable, V any](max int) *memo[K, V] {
	return &memo[K, V]{max: max, m: make(map[K]memoEntry[V])}
}

// get returns the value for k when it has not expired at now.
func (c *memo[K, V]) get(k K, now time.Time) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[k]
	if !ok || !now.Before(e.until) {
		var zero V
		return zero, false
	}
	return e.v, true
}

// put keeps v for k until until.
func (c *memo[K, V]) put(k K, v V, until, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[k]; !ok && len(c.m) >= c.max {
		var soonest K
		var soonestAt time.Time
		for old, e := range c.m {
			if !now.Before(e.until) {
				delete(c.m, old)
				continue
			}
			if soonestAt.IsZero() || e.until.Before(soonestAt) {
				soonest, soonestAt = old, e.until
			}
		}
		if len(c.m) >= c.max {
			delete(c.m, soonest)
		}
	}
	c.m[k] = memoEntry[V]{v: v, until: until}
}

// drop forgets k.
func (c *memo[K, V]) drop(k K) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, k)
}

// len returns the number of entries, expired ones included.
func (c *memo[K, V]) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
