package cache

import (
	"context"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// purgeFixture: nginx:1.25 and nginx:1.26 share a base layer; redis:7 (another repository) links that base
// layer too; ghcr.io holds one more image.
type purgeFixture struct {
	c                  *Cache
	clk                *clock
	m125, m126, mRedis v1.Hash
	base, l125, l126   v1.Hash
	mGhcr              v1.Hash
	ghcrBlobs          []v1.Hash
}

func newPurgeFixture(t *testing.T) *purgeFixture {
	t.Helper()
	clk := newClock()
	c, _ := openQuota(t, clk, Options{})
	f := &purgeFixture{c: c, clk: clk}
	var b125, b126, bRedis []v1.Hash
	f.m125, b125 = image(t, c, "nginx", 100, 2000, 3000)
	f.m126, b126 = image(t, c, "nginx", 100, 2000, 3500) // same config and base layer
	f.base, f.l125, f.l126 = b125[1], b125[2], b126[2]
	f.mRedis, bRedis = image(t, c, "nginx", 100, 2000, 4000) // shares the base with nginx
	clk.Advance(48 * time.Hour)
	f.mGhcr, f.ghcrBlobs = image(t, c, "app", 150, 2500)
	link := func(up, repo, tag string, m v1.Hash, blobs []v1.Hash) {
		for _, d := range append([]v1.Hash{m}, blobs...) {
			if err := c.Link(up, repo, d); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.SetTag(up, repo, tag, TagEntry{Digest: m}); err != nil {
			t.Fatal(err)
		}
	}
	link("docker.io", "library/nginx", "1.25", f.m125, b125)
	link("docker.io", "library/nginx", "1.26", f.m126, b126)
	link("docker.io", "library/redis", "7", f.mRedis, bRedis)
	link("ghcr.io", "acme/app", "v1", f.mGhcr, f.ghcrBlobs)
	return f
}

func planned(p PurgePlan) map[v1.Hash]bool {
	m := map[v1.Hash]bool{}
	for _, o := range p.Objects {
		m[o.Digest] = true
	}
	return m
}

func TestPurge(t *testing.T) {
	tests := []struct {
		name   string
		filter func(f *purgeFixture) PurgeFilter
		gone   func(f *purgeFixture) []v1.Hash
	}{
		{
			name: "one image keeps what other tags and repositories share",
			filter: func(f *purgeFixture) PurgeFilter {
				return PurgeFilter{Image: &Pin{Upstream: "docker.io", Repository: "library/nginx", Tag: "1.25"}}
			},
			gone: func(f *purgeFixture) []v1.Hash { return []v1.Hash{f.m125, f.l125} },
		},
		{
			name: "a repository keeps what another repository links",
			filter: func(f *purgeFixture) PurgeFilter {
				return PurgeFilter{Upstream: "docker.io", Repository: "library/nginx"}
			},
			gone: func(f *purgeFixture) []v1.Hash { return []v1.Hash{f.m125, f.l125, f.m126, f.l126} },
		},
		{
			name:   "an upstream",
			filter: func(f *purgeFixture) PurgeFilter { return PurgeFilter{Upstream: "ghcr.io"} },
			gone:   func(f *purgeFixture) []v1.Hash { return append([]v1.Hash{f.mGhcr}, f.ghcrBlobs...) },
		},
		{
			name:   "older than a day",
			filter: func(f *purgeFixture) PurgeFilter { return PurgeFilter{OlderThan: f.clk.Now().Add(-24 * time.Hour)} },
			gone: func(f *purgeFixture) []v1.Hash {
				// Everything stored before the ghcr.io image but nginx:1.26's manifest, used just now.
				return nil
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newPurgeFixture(t)
			f.c.Touch(f.m126)
			plan, err := f.c.PlanPurge(context.Background(), tt.filter(f))
			if err != nil {
				t.Fatal(err)
			}
			want := tt.gone(f)
			if want == nil { // by age: every object but the recent ones
				for _, d := range []v1.Hash{f.m126, f.mGhcr, f.ghcrBlobs[0], f.ghcrBlobs[1]} {
					if planned(plan)[d] {
						t.Errorf("plan removes %s, used or stored within the day", d)
					}
				}
				if !planned(plan)[f.m125] || !planned(plan)[f.base] {
					t.Error("plan keeps objects unused for two days")
				}
			} else {
				got := planned(plan)
				if len(got) != len(want) {
					t.Errorf("plan removes %d objects, want %d", len(got), len(want))
				}
				var bytes int64
				for _, d := range want {
					if !got[d] {
						t.Errorf("plan keeps %s", d)
					}
					o, _ := f.c.Stat(d)
					bytes += o.Size
				}
				if plan.Bytes != bytes {
					t.Errorf("plan bytes = %d, want %d", plan.Bytes, bytes)
				}
			}
			// A plan removes nothing.
			for _, o := range plan.Objects {
				if !stored(f.c, o.Digest) {
					t.Fatalf("planning removed %s", o.Digest)
				}
			}
			if _, err := f.c.Purge(context.Background(), plan); err != nil {
				t.Fatal(err)
			}
			for _, o := range plan.Objects {
				if stored(f.c, o.Digest) {
					t.Errorf("%s still stored after Purge", o.Digest)
				}
			}
			if !stored(f.c, f.base) && want != nil {
				t.Error("the base layer another repository holds was purged")
			}
		})
	}

	t.Run("tags of a purged repository go, other repositories stay", func(t *testing.T) {
		f := newPurgeFixture(t)
		plan, _ := f.c.PlanPurge(context.Background(), PurgeFilter{Upstream: "docker.io", Repository: "library/ngi*"})
		if _, err := f.c.Purge(context.Background(), plan); err != nil {
			t.Fatal(err)
		}
		if tags, _ := f.c.Tags("docker.io", "library/nginx"); len(tags) != 0 {
			t.Errorf("tags left: %v", tags)
		}
		if linked, _ := f.c.Linked("docker.io", "library/nginx", f.base); linked {
			t.Error("a link of the purged repository is left")
		}
		if _, err := f.c.Tag("docker.io", "library/redis", "7"); err != nil {
			t.Errorf("redis:7 after purging nginx: %v", err)
		}
	})

	t.Run("pinned content stays and is counted", func(t *testing.T) {
		f := newPurgeFixture(t)
		if err := f.c.AddPin(Pin{Upstream: "ghcr.io", Repository: "acme/app"}); err != nil {
			t.Fatal(err)
		}
		plan, err := f.c.PlanPurge(context.Background(), PurgeFilter{Upstream: "ghcr.io"})
		if err != nil {
			t.Fatal(err)
		}
		if len(plan.Objects) != 0 || plan.Pinned != 3 {
			t.Errorf("plan = %d objects, %d pinned; want 0 and 3", len(plan.Objects), plan.Pinned)
		}
	})
}
