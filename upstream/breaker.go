package upstream

import (
	"fmt"
	"sync"
	"time"
)

// breaker is a circuit breaker over the failures to reach an upstream: connection errors and header
// timeouts count; any HTTP answer, 5xx included, proves the upstream reachable and resets the count
// (failing fast on a 503 would save nothing: the 503 itself arrives fast). A request that the caller
// cancels counts neither way.
//
// Closed: requests go through. After threshold consecutive failures it opens: requests fail fast for
// coolDown; then exactly one probe request is let through while the others keep failing fast. The
// probe's success closes the circuit, its failure opens it for another coolDown.
type breaker struct {
	threshold int
	coolDown  time.Duration

	mu        sync.Mutex
	failures  int       // consecutive
	openUntil time.Time // zero when closed
	probing   bool      // a probe is in flight
	lastErr   error     // the failure that opened the circuit
}

// allow reports whether a request may be sent, and whether it is the probe.
func (b *breaker) allow(now time.Time, name string) (probe bool, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.openUntil.IsZero() {
		return false, nil
	}
	if now.Before(b.openUntil) || b.probing {
		return false, fmt.Errorf("upstream %s: %w: circuit open until %s after %d consecutive failures: %v",
			name, ErrUnavailable, b.openUntil.UTC().Format(time.RFC3339), b.failures, b.lastErr)
	}
	b.probing = true
	return true, nil
}

// success records an HTTP answer.
func (b *breaker) success(probe bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.failures, b.openUntil, b.lastErr = 0, time.Time{}, nil
	if probe {
		b.probing = false
	}
}

// failure records a failure to reach the upstream.
func (b *breaker) failure(probe bool, now time.Time, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.failures++
	if probe {
		b.probing = false
	}
	if probe || (b.openUntil.IsZero() && b.failures >= b.threshold) {
		b.openUntil = now.Add(b.coolDown)
		b.lastErr = err
	}
}

// abandon records a request that ended without telling anything (the caller went away).
func (b *breaker) abandon(probe bool) {
	if !probe {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.probing = false
}
