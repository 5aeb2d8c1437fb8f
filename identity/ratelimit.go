package identity

import (
	"fmt"
	"sync"
	"time"
)

// RateLimitedError is returned for a login while its source address or its user name has failed too often:
// the client should wait RetryAfter. No secret is checked while it holds, right or wrong.
type RateLimitedError struct {
	RetryAfter time.Duration
}

func (e *RateLimitedError) Error() string {
	return fmt.Sprintf("too many failed logins: retry after %s", e.RetryAfter.Round(time.Second))
}

// failures counts failed logins per key (a source address, a user name) as a leaky bucket: each failure adds
// one, the bucket drains one every drain period, and a key whose bucket holds burst failures is refused until
// one drains. Keys are bounded: when the map is full, the keys whose buckets drained empty go first, then the
// emptiest.
type failures struct {
	burst int
	drain time.Duration
	max   int

	mu sync.Mutex
	m  map[string]bucket
}

type bucket struct {
	level float64
	at    time.Time
}

func newFailures(burst int, drain time.Duration, max int) *failures {
	return &failures{burst: burst, drain: drain, max: max, m: map[string]bucket{}}
}

// levelAt is the bucket's level at now.
func (f *failures) levelAt(b bucket, now time.Time) float64 {
	l := b.level - float64(now.Sub(b.at))/float64(f.drain)
	return max(l, 0)
}

// wait returns how long key must wait before its next attempt, zero when it may try now.
func (f *failures) wait(key string, now time.Time) time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.m[key]
	if !ok {
		return 0
	}
	over := f.levelAt(b, now) - float64(f.burst-1)
	if over <= 0 {
		return 0
	}
	return time.Duration(over * float64(f.drain))
}

// fail records one failure of key.
func (f *failures) fail(key string, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.m[key]
	if !ok && len(f.m) >= f.max {
		var emptiest string
		lowest := -1.0
		for k, old := range f.m {
			l := f.levelAt(old, now)
			if l == 0 {
				delete(f.m, k)
				continue
			}
			if lowest < 0 || l < lowest {
				emptiest, lowest = k, l
			}
		}
		if len(f.m) >= f.max {
			delete(f.m, emptiest)
		}
	}
	f.m[key] = bucket{level: min(f.levelAt(b, now)+1, float64(f.burst)), at: now}
}
