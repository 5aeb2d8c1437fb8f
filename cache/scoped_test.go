package cache

import (
	"errors"
	"sync"
	"testing"
	"time"
)

func TestLinkDescriptorKeepsDeclaredSize(t *testing.T) {
	c := open(t, t.TempDir(), nil)
	d := sha256Of([]byte("layer"))
	if _, ok, err := c.LinkedSize("up", "a/b", d); err != nil || ok {
		t.Fatalf("LinkedSize before any link = ok %v, %v; want not linked", ok, err)
	}
	if err := c.LinkDescriptor("up", "a/b", d, 1234); err != nil {
		t.Fatal(err)
	}
	// A later plain Link (a HEAD confirmation, a fill) must not forget the declared size.
	if err := c.Link("up", "a/b", d); err != nil {
		t.Fatal(err)
	}
	if err := c.LinkDescriptor("up", "a/b", d, -1); err != nil {
		t.Fatal(err)
	}
	size, ok, err := c.LinkedSize("up", "a/b", d)
	if err != nil || !ok || size != 1234 {
		t.Fatalf("LinkedSize = %d, %v, %v; want 1234, true", size, ok, err)
	}
	if linked, err := c.Linked("up", "a/b", d); err != nil || !linked {
		t.Fatalf("Linked = %v, %v", linked, err)
	}
	if err := c.Link("up", "c/d", d); err != nil {
		t.Fatal(err)
	}
	if size, ok, err := c.LinkedSize("up", "c/d", d); err != nil || !ok || size != -1 {
		t.Fatalf("LinkedSize of a link without size = %d, %v, %v; want -1, true", size, ok, err)
	}
}

func TestSetImmutableTagNeverMoves(t *testing.T) {
	c := open(t, t.TempDir(), nil)
	first, second := sha256Of([]byte("one")), sha256Of([]byte("two"))
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	got, err := c.SetImmutableTag("up", "r", "v1", TagEntry{Digest: first, Fetched: t0})
	if err != nil || got.Digest != first {
		t.Fatalf("first SetImmutableTag = %v, %v", got, err)
	}
	got, err = c.SetImmutableTag("up", "r", "v1", TagEntry{Digest: second, Fetched: t0.Add(time.Hour)})
	if err != nil || got.Digest != first || !got.Fetched.Equal(t0.Add(time.Hour)) {
		t.Fatalf("second SetImmutableTag = %+v, %v; want the pinned digest with the new fetch time", got, err)
	}
	if e, err := c.Tag("up", "r", "v1"); err != nil || e.Digest != first {
		t.Fatalf("Tag = %v, %v; want %s", e.Digest, err, first)
	}

	// Concurrent first writers of different digests: exactly one wins, and every caller is told the winner.
	const n = 16
	var wg sync.WaitGroup
	results := make([]TagEntry, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := sha256Of([]byte{byte(i)})
			e, err := c.SetImmutableTag("up", "r", "race", TagEntry{Digest: d, Fetched: t0})
			if err != nil {
				t.Error(err)
			}
			results[i] = e
		}()
	}
	wg.Wait()
	for i := range results {
		if results[i].Digest != results[0].Digest {
			t.Fatalf("caller %d was told %s, caller 0 %s: the pin moved", i, results[i].Digest, results[0].Digest)
		}
	}
	if e, _ := c.Tag("up", "r", "race"); e.Digest != results[0].Digest {
		t.Fatalf("stored %s, callers were told %s", e.Digest, results[0].Digest)
	}
}

func TestBindUpstreamDropsScopedEntries(t *testing.T) {
	clk := newClock()
	c := open(t, t.TempDir(), clk.Now)
	obj := put(t, c, []byte("manifest bytes"))
	d := obj.Digest
	fill := func(up string) {
		t.Helper()
		if err := c.SetTag(up, "r", "latest", TagEntry{Digest: d}); err != nil {
			t.Fatal(err)
		}
		if err := c.Link(up, "r", d); err != nil {
			t.Fatal(err)
		}
		if err := c.SetMissing(up, "r", "gone", clk.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if err := c.SetReferrers(up, "r", d, []byte(`{"manifests":[]}`), clk.Now(), 0); err != nil {
			t.Fatal(err)
		}
	}
	fill("local")
	fill("local2") // a name that shares a prefix must keep its entries

	if changed, _, err := c.BindUpstream("local", "https://a.example"); err != nil || changed {
		t.Fatalf("first bind = %v, %v; want unchanged (adopts what is cached)", changed, err)
	}
	if changed, _, err := c.BindUpstream("local", "https://a.example"); err != nil || changed {
		t.Fatalf("same identity = %v, %v; want unchanged", changed, err)
	}
	if _, err := c.Tag("local", "r", "latest"); err != nil {
		t.Fatalf("tag lost on an unchanged bind: %v", err)
	}

	changed, prev, err := c.BindUpstream("local", "https://b.example")
	if err != nil || !changed || prev != "https://a.example" {
		t.Fatalf("rebind = %v, %q, %v; want changed from https://a.example", changed, prev, err)
	}
	if _, err := c.Tag("local", "r", "latest"); !errors.Is(err, ErrNotFound) {
		t.Errorf("tag of the old registry still there: %v", err)
	}
	if ok, _ := c.Linked("local", "r", d); ok {
		t.Error("link of the old registry still there")
	}
	if m, _ := c.Missing("local", "r", "gone"); m {
		t.Error("negative entry of the old registry still there")
	}
	if _, _, err := c.Referrers("local", "r", d); !errors.Is(err, ErrNotFound) {
		t.Errorf("referrers of the old registry still there: %v", err)
	}
	if _, err := c.Stat(d); err != nil {
		t.Errorf("content must stay (it is addressed by digest): %v", err)
	}
	if _, err := c.Tag("local2", "r", "latest"); err != nil {
		t.Errorf("another upstream's tag was dropped: %v", err)
	}
	if ok, _ := c.Linked("local2", "r", d); !ok {
		t.Error("another upstream's link was dropped")
	}
}

func TestReferrersStore(t *testing.T) {
	clk := newClock()
	c := open(t, t.TempDir(), clk.Now)
	d := sha256Of([]byte("subject"))
	if _, _, err := c.Referrers("up", "r", d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Referrers before Set = %v; want ErrNotFound", err)
	}
	body := []byte(`{"schemaVersion":2,"manifests":[]}`)
	if err := c.SetReferrers("up", "r", d, body, clk.Now(), time.Hour); err != nil {
		t.Fatal(err)
	}
	got, fetched, err := c.Referrers("up", "r", d)
	if err != nil || string(got) != string(body) || !fetched.Equal(clk.Now()) {
		t.Fatalf("Referrers = %q, %v, %v", got, fetched, err)
	}
	if _, _, err := c.Referrers("up", "other", d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("another repository sees the answer: %v", err)
	}
}
