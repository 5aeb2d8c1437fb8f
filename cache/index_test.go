package cache

import (
	"errors"
	"slices"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func TestTags(t *testing.T) {
	clk := newClock()
	c := open(t, t.TempDir(), clk.Now)
	d1, d2 := sha256Of([]byte("one")), sha256Of([]byte("two"))
	sets := []struct {
		upstream, repo, tag string
		d                   v1.Hash
	}{
		{"docker.io", "library/nginx", "1.25", d1},
		{"docker.io", "library/nginx", "latest", d1},
		{"docker.io", "library/nginx", "1.24-alpine", d2},
		{"docker.io", "library/nginx", "1.25", d2}, // moved
		{"docker.io", "library/nginx/sub", "x", d1},
		{"docker.io", "library", "nginx", d1},
		{"ghcr.io", "library/nginx", "only-here", d1},
	}
	for _, s := range sets {
		e := TagEntry{Digest: s.d, MediaType: "application/vnd.oci.image.index.v1+json", Size: 321, Fetched: clk.Now()}
		if err := c.SetTag(s.upstream, s.repo, s.tag, e); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name, upstream, repo string
		want                 []string
	}{
		{name: "sorted", upstream: "docker.io", repo: "library/nginx", want: []string{"1.24-alpine", "1.25", "latest"}},
		{name: "nested repo", upstream: "docker.io", repo: "library/nginx/sub", want: []string{"x"}},
		{name: "parent repo", upstream: "docker.io", repo: "library", want: []string{"nginx"}},
		{name: "other upstream", upstream: "ghcr.io", repo: "library/nginx", want: []string{"only-here"}},
		{name: "none", upstream: "quay.io", repo: "library/nginx", want: []string{}},
		{name: "prefix of a repo", upstream: "docker.io", repo: "library/ngin", want: []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := c.Tags(tt.upstream, tt.repo)
			if err != nil {
				t.Fatal(err)
			}
			if got == nil || !slices.Equal(got, tt.want) {
				t.Errorf("Tags = %#v, want %#v", got, tt.want)
			}
		})
	}

	e, err := c.Tag("docker.io", "library/nginx", "1.25")
	if err != nil {
		t.Fatal(err)
	}
	if e.Digest != d2 || e.Size != 321 || e.MediaType != "application/vnd.oci.image.index.v1+json" || !e.Fetched.Equal(clk.Now()) {
		t.Errorf("Tag = %+v", e)
	}
	if err := c.SetTag("docker.io", "library/nginx", "zero", TagEntry{Digest: d1}); err != nil {
		t.Fatal(err)
	}
	if e, err := c.Tag("docker.io", "library/nginx", "zero"); err != nil || !e.Fetched.IsZero() {
		t.Errorf("Tag with a zero Fetched time = %+v, %v; want a zero time back", e, err)
	}
	if _, err := c.Tag("docker.io", "library/nginx", "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Tag of unknown tag = %v, want ErrNotFound", err)
	}
	if _, err := c.Tag("quay.io", "library/nginx", "1.25"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Tag under another upstream = %v, want ErrNotFound", err)
	}
	if err := c.SetTag("docker.io", "library/nginx\x00latest", "x", TagEntry{Digest: d1}); err == nil {
		t.Error("SetTag accepted a NUL byte in a repository name")
	}
}

func TestLinks(t *testing.T) {
	c := open(t, t.TempDir(), nil)
	d := sha256Of([]byte("layer"))
	other := sha256Of([]byte("other layer"))
	if err := c.Link("docker.io", "library/a", d); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, upstream, repo string
		d                    v1.Hash
		want                 bool
	}{
		{"linked", "docker.io", "library/a", d, true},
		{"other repository", "docker.io", "library/b", d, false},
		{"same repository of another upstream", "ghcr.io", "library/a", d, false},
		{"repository prefix", "docker.io", "library", d, false},
		{"other digest", "docker.io", "library/a", other, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := c.Linked(tt.upstream, tt.repo, tt.d)
			if err != nil || got != tt.want {
				t.Errorf("Linked = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestMissing(t *testing.T) {
	clk := newClock()
	c := open(t, t.TempDir(), clk.Now)
	if err := c.SetMissing("docker.io", "library/nginx", "nope", clk.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	check := func(upstream, repo, ref string, want bool) {
		t.Helper()
		got, err := c.Missing(upstream, repo, ref)
		if err != nil || got != want {
			t.Errorf("Missing(%s, %s, %s) = %v, %v; want %v", upstream, repo, ref, got, err, want)
		}
	}
	check("docker.io", "library/nginx", "nope", true)
	check("docker.io", "library/nginx", "other", false)
	check("docker.io", "library/redis", "nope", false)
	check("ghcr.io", "library/nginx", "nope", false)

	clk.Advance(59 * time.Minute)
	check("docker.io", "library/nginx", "nope", true)
	clk.Advance(time.Minute)
	check("docker.io", "library/nginx", "nope", false)

	// A time in the past forgets, a new time renews.
	if err := c.SetMissing("docker.io", "library/nginx", "nope", clk.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	check("docker.io", "library/nginx", "nope", true)
	if err := c.SetMissing("docker.io", "library/nginx", "nope", clk.Now().Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	check("docker.io", "library/nginx", "nope", false)
}

func TestTouch(t *testing.T) {
	clk := newClock()
	dir := t.TempDir()
	c := open(t, dir, clk.Now)
	d := put(t, c, []byte("hot")).Digest
	if _, err := c.Accessed(d); !errors.Is(err, ErrNotFound) {
		t.Errorf("Accessed before Touch = %v, want ErrNotFound", err)
	}
	first := clk.Now()
	c.Touch(d)
	steps := []struct {
		advance time.Duration
		want    time.Time
	}{
		{0, first},
		{30 * time.Second, first},                  // within a minute: not recorded
		{29 * time.Second, first},                  // still within
		{time.Second, first.Add(time.Minute)},      // a minute after the last record
		{10 * time.Second, first.Add(time.Minute)}, // within a minute of that
		{2 * time.Hour, first.Add(2*time.Hour + 70*time.Second)},
	}
	for i, s := range steps {
		clk.Advance(s.advance)
		c.Touch(d)
		got, err := c.Accessed(d)
		if err != nil || !got.Equal(s.want) {
			t.Errorf("step %d: Accessed = %v, %v; want %v", i, got, err, s.want)
		}
	}
	c.Touch(v1.Hash{Algorithm: "md5", Hex: "00"}) // ignored, no panic

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c = open(t, dir, clk.Now)
	if got, err := c.Accessed(d); err != nil || !got.Equal(first.Add(2*time.Hour+70*time.Second)) {
		t.Errorf("Accessed after reopen = %v, %v", got, err)
	}
}

func TestTouchBounded(t *testing.T) {
	tests := []struct {
		name    string
		advance time.Duration // between touches
	}{
		{name: "all recent", advance: 0},
		{name: "old ones pruned", advance: time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			c := open(t, t.TempDir(), clk.Now)
			c.touchLimit = 64
			for i := range 1000 {
				clk.Advance(tt.advance)
				c.Touch(sha256Of([]byte{byte(i), byte(i >> 8)}))
				c.mu.Lock()
				n := len(c.touched)
				c.mu.Unlock()
				if n > c.touchLimit {
					t.Fatalf("after %d digests Touch remembers %d, over the limit of %d", i+1, n, c.touchLimit)
				}
			}
			// A digest touched right now is still not written twice within the interval.
			d := sha256Of([]byte("last"))
			c.Touch(d)
			first, err := c.Accessed(d)
			if err != nil {
				t.Fatal(err)
			}
			clk.Advance(time.Second)
			c.Touch(d)
			if got, err := c.Accessed(d); err != nil || !got.Equal(first) {
				t.Errorf("Accessed = %v, %v; want %v (not written again within the interval)", got, err, first)
			}
		})
	}
}

func TestTagPage(t *testing.T) {
	c := open(t, t.TempDir(), nil)
	d := put(t, c, []byte("m")).Digest
	for _, tag := range []string{"v3", "v1", "v2", "latest", "v10"} {
		if err := c.SetTag("docker.io", "library/app", tag, TagEntry{Digest: d}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.SetTag("docker.io", "library/app2", "other", TagEntry{Digest: d}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		last string
		n    int
		want []string
		more bool
	}{
		{name: "first page", n: 2, want: []string{"latest", "v1"}, more: true},
		{name: "next page", last: "v1", n: 2, want: []string{"v10", "v2"}, more: true},
		{name: "last page", last: "v2", n: 2, want: []string{"v3"}},
		{name: "exact fit", last: "v10", n: 2, want: []string{"v2", "v3"}},
		{name: "after the end", last: "zzz", n: 2, want: []string{}},
		{name: "last not a tag", last: "v0", n: 10, want: []string{"v1", "v10", "v2", "v3"}},
		{name: "zero", n: 0, want: []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, more, err := c.TagPage("docker.io", "library/app", tt.last, tt.n)
			if err != nil || !slices.Equal(got, tt.want) || more != tt.more {
				t.Errorf("TagPage(%q, %d) = %v, %v, %v; want %v, %v", tt.last, tt.n, got, more, err, tt.want, tt.more)
			}
		})
	}
}
