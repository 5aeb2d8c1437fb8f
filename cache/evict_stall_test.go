package cache

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestEvictEndsWhenCandidatesStayUsed: a use Touch noted but whose flush was dropped (flushAccess drops the
// batch when the index has no room: a full disk, exactly when min_free eviction runs) makes the object look
// older in the index than in memory. Eviction then picks it, skips it as used since, and scans again: it must
// end when a pass removes nothing, not loop (a background round's ctx ends only at Close).
func TestEvictEndsWhenCandidatesStayUsed(t *testing.T) {
	clk := newClock()
	c, _ := openQuota(t, clk, Options{})
	a := put(t, c, randomBytes(t, 50))
	clk.Advance(time.Hour)
	// The state a dropped flush leaves: noted in memory, not in the index.
	c.mu.Lock()
	c.touched[a.Digest] = clk.Now()
	c.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	st, err := c.Evict(ctx, 100, nil, ReasonQuota)
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Evict spun until its context ended (removed %d objects): no pass made progress", st.Objects)
	}
	if err != nil {
		t.Fatal(err)
	}
}
