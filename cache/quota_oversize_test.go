package cache

import (
	"errors"
	"testing"
	"time"
)

// TestOversizeWriterEvictsNothing: content larger than the quota can never be stored; asking for room for it
// must be refused at once, not after an eviction round has removed everything that is not pinned (a client
// pulling one blob larger than the quota, or a hostile upstream announcing one, would empty the cache for
// nothing, as often as it asks).
func TestOversizeWriterEvictsNothing(t *testing.T) {
	clk := newClock()
	c, rm := openQuota(t, clk, Options{MaxBytes: 100, QuotaWait: 5 * time.Second})
	kept := put(t, c, randomBytes(t, 50))

	big := randomBytes(t, 200)
	w, err := c.NewWriter(sha256Of(big), "", int64(len(big)))
	if err == nil {
		w.Abort(nil)
	}
	if !errors.Is(err, ErrQuota) {
		t.Errorf("NewWriter of 200 bytes under a quota of 100 = %v, want ErrQuota", err)
	}
	if n := rm.count(ReasonQuota); n > 0 {
		t.Errorf("asking for room that can never exist evicted %d objects", n)
	}
	if _, err := c.Stat(kept.Digest); err != nil {
		t.Errorf("Stat of the stored object after the refused writer: %v", err)
	}
}

// TestOversizeUnknownSizeEvictsNothing: the same for content of unknown size: once what one writer wrote
// passes the quota, no eviction can make room for it.
func TestOversizeUnknownSizeEvictsNothing(t *testing.T) {
	clk := newClock()
	c, rm := openQuota(t, clk, Options{MaxBytes: 100, QuotaWait: 5 * time.Second})
	kept := put(t, c, randomBytes(t, 30))

	// The first 60 bytes fit beside the 30 stored; with the next 60 the writer alone passes the quota.
	big := randomBytes(t, 180)
	w, err := c.NewWriter(sha256Of(big), "", -1)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort(nil)
	var werr error
	for i := 0; i < len(big) && werr == nil; i += 60 {
		_, werr = w.Write(big[i : i+60])
	}
	if !errors.Is(werr, ErrQuota) {
		t.Errorf("writing 180 bytes of unknown size under a quota of 100 = %v, want ErrQuota", werr)
	}
	if n := rm.count(ReasonQuota); n > 0 {
		t.Errorf("asking for room that can never exist evicted %d objects", n)
	}
	if _, err := c.Stat(kept.Digest); err != nil {
		t.Errorf("Stat of the stored object after the refused writer: %v", err)
	}
}
