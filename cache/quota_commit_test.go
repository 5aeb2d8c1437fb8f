package cache

import (
	"errors"
	"testing"
	"time"
)

// pollUntil polls cond until it holds, failing the test after a generous deadline.
func pollUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestQuotaCommitWindowDoesNotRaiseLimit: a writer that starts waiting for room while another writer's Commit
// has counted its object as stored but not yet given back its reservation must not take that double count as
// "the level the cache was already over the quota at": the cache was never over its quota, so stored and
// in-flight bytes must stay within it.
func TestQuotaCommitWindowDoesNotRaiseLimit(t *testing.T) {
	clk := newClock()
	a := randomBytes(t, 60)
	b := randomBytes(t, 60)
	// a is pinned, so that eviction cannot make room by removing it: the only question is the limit.
	c, _ := openQuota(t, clk, Options{MaxBytes: 100, QuotaWait: 5 * time.Second,
		Pins: []Pin{{Upstream: "u", Repository: "r", Digest: sha256Of(a), Fixed: true}}})

	wa, err := c.NewWriter(sha256Of(a), "", int64(len(a)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wa.Write(a); err != nil {
		t.Fatal(err)
	}
	// Hold c.mu: wa's Commit installs (stored += 60) and then blocks in release before inflight -= 60.
	c.mu.Lock()
	committed := make(chan error, 1)
	go func() { _, err := wa.Commit(); committed <- err }()
	pollUntil(t, "install of a", func() bool { return c.bytes.Load() == 60 })

	gotB := make(chan error, 1)
	var wb *Writer
	go func() {
		var err error
		wb, err = c.NewWriter(sha256Of(b), "", int64(len(b)))
		gotB <- err
	}()
	pollUntil(t, "b to wait for room", func() bool { return c.asking.Load() == 60 })
	c.mu.Unlock()
	if err := <-committed; err != nil {
		t.Fatal(err)
	}
	select {
	case err = <-gotB:
	case <-time.After(20 * time.Second):
		t.Fatal("NewWriter of b did not return")
	}
	if err == nil {
		defer wb.Abort(nil)
	}
	stored, inflight := c.bytes.Load(), c.inflight.Load()
	if stored+inflight > 100 {
		t.Errorf("stored %d + in flight %d = %d bytes > quota 100, and the cache was never over its quota (NewWriter b: %v)",
			stored, inflight, stored+inflight, err)
	}
	if err != nil && !errors.Is(err, ErrQuota) {
		t.Errorf("NewWriter b = %v, want ErrQuota", err)
	}
}
