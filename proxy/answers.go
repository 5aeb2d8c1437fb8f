package proxy

import (
	"container/list"
	"sync"
	"time"
)

// answerLimits bounds an answerCache.
type answerLimits struct {
	entries int   // most entries held
	bytes   int64 // most bytes held, as estimated by the callers of put
}

// answerCache holds recent upstream answers that are not content (tag lists, referrers indexes) in memory, so
// that one upstream answer serves every client for a TTL. It is bounded in entries and in bytes: the least
// recently used entries go first, and an answer larger than the whole byte bound is not kept. The zero value
// is an empty cache; answers are values that must not be modified once put.
type answerCache[V any] struct {
	mu      sync.Mutex
	entries map[string]*list.Element // of *answer[V]
	order   list.List                // most recently used first
	bytes   int64
}

type answer[V any] struct {
	key     string
	val     V
	size    int64
	fetched time.Time
}

// get returns the answer stored under key when it was fetched less than ttl before now. An expired answer is
// dropped.
func (c *answerCache[V]) get(key string, now time.Time, ttl time.Duration) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var zero V
	el, ok := c.entries[key]
	if !ok {
		return zero, false
	}
	a := el.Value.(*answer[V])
	if now.Sub(a.fetched) >= ttl {
		c.remove(el)
		return zero, false
	}
	c.order.MoveToFront(el)
	return a.val, true
}

// put stores val under key, replacing what was there, and evicts the least recently used answers until lim
// holds. size is the caller's estimate of the memory val holds; the key, which clients may choose in part, is
// counted too.
func (c *answerCache[V]) put(key string, val V, size int64, fetched time.Time, lim answerLimits) {
	size += int64(len(key))
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[key]; ok {
		c.remove(el)
	}
	if size > lim.bytes || lim.entries <= 0 {
		return
	}
	if c.entries == nil {
		c.entries = map[string]*list.Element{}
	}
	for c.order.Len() >= lim.entries || c.bytes+size > lim.bytes {
		c.remove(c.order.Back())
	}
	c.entries[key] = c.order.PushFront(&answer[V]{key: key, val: val, size: size, fetched: fetched})
	c.bytes += size
}

// len returns how many answers are held and their estimated size.
func (c *answerCache[V]) len() (entries int, bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len(), c.bytes
}

func (c *answerCache[V]) remove(el *list.Element) {
	a := c.order.Remove(el).(*answer[V])
	delete(c.entries, a.key)
	c.bytes -= a.size
}
