package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullgate/pullgate/cache"
)

// The operations of this file are what `pullgate pin`, `pullgate purge` and the seed status do, on a stopped
// data directory (called from cmd) or on a running pullgate (through the admin API, Admin).

// Resolver maps a name as users write it ("nginx:1.25", "ghcr.io/acme/**") to its upstream and repository, by
// the proxy's rules. With glob, the repository and tag may be globs and a missing tag means every tag;
// without, a missing tag is "latest" unless a digest is given.
type Resolver func(name string, glob bool) (Image, error)

// ErrPinsOverQuota says that a new pin would make the pins hold more than the cache quota.
var ErrPinsOverQuota = errors.New("pins over the cache quota")

// PinInfo is one pin in force.
type PinInfo struct {
	Pin   string    `json:"pin"`
	Fixed bool      `json:"fixed,omitempty"` // from PULLGATE_PIN
	Added time.Time `json:"added,omitzero"`
}

// PinState is the pins in force and what they hold.
type PinState struct {
	Pins     []PinInfo `json:"pins"`
	Objects  int       `json:"objects"`
	Bytes    int64     `json:"bytes"`
	MaxBytes int64     `json:"max_bytes"` // the quota; 0 when there is none
}

func pinOf(r Resolver, name string) (cache.Pin, error) {
	img, err := r(name, true)
	if err != nil {
		return cache.Pin{}, err
	}
	p := cache.Pin{Upstream: img.Upstream, Repository: img.Repository, Tag: img.Tag, Digest: img.Digest}
	if p.Digest != (v1.Hash{}) {
		p.Tag = ""
	}
	return cache.ParsePin(p.String())
}

// Pins returns the pins in force and what they hold now.
func Pins(ctx context.Context, c *cache.Cache) (PinState, error) {
	pins, err := c.Pins()
	if err != nil {
		return PinState{}, err
	}
	held, err := c.Pinned(ctx, pins)
	if err != nil {
		return PinState{}, err
	}
	st := PinState{Pins: []PinInfo{}, Objects: len(held), MaxBytes: c.MaxBytes()}
	for _, p := range pins {
		st.Pins = append(st.Pins, PinInfo{Pin: p.String(), Fixed: p.Fixed, Added: p.Added})
	}
	for _, size := range held {
		st.Bytes += size
	}
	return st, nil
}

// AddPin pins name. It refuses (ErrPinsOverQuota) when the pins would then hold more than the quota, rather
// than leave eviction nothing it may take.
func AddPin(ctx context.Context, c *cache.Cache, r Resolver, name string) (PinState, error) {
	p, err := pinOf(r, name)
	if err != nil {
		return PinState{}, err
	}
	pins, err := c.Pins()
	if err != nil {
		return PinState{}, err
	}
	held, err := c.Pinned(ctx, append(pins, p))
	if err != nil {
		return PinState{}, err
	}
	var bytes int64
	for _, size := range held {
		bytes += size
	}
	if q := c.MaxBytes(); q > 0 && bytes > q {
		return PinState{}, fmt.Errorf("%w: with %s the pins would hold %d bytes, the quota (PULLGATE_MAX_BYTES) is %d", ErrPinsOverQuota, p, bytes, q)
	}
	if err := c.AddPin(p); err != nil {
		return PinState{}, err
	}
	return Pins(ctx, c)
}

// ErrNoSuchPin says that RemovePin found no such pin.
var ErrNoSuchPin = errors.New("no such pin")

// RemovePin removes a pin AddPin added. Pins of PULLGATE_PIN cannot be removed at run time.
func RemovePin(ctx context.Context, c *cache.Cache, r Resolver, name string) (PinState, error) {
	p, err := pinOf(r, name)
	if err != nil {
		return PinState{}, err
	}
	removed, err := c.RemovePin(p)
	if err != nil {
		return PinState{}, err
	}
	if !removed {
		pins, _ := c.Pins()
		for _, q := range pins {
			if q.Fixed && q.String() == p.String() {
				return PinState{}, fmt.Errorf("%w: %s is set by PULLGATE_PIN; change the configuration to remove it", ErrNoSuchPin, p)
			}
		}
		return PinState{}, fmt.Errorf("%w: %s", ErrNoSuchPin, p)
	}
	return Pins(ctx, c)
}

// PurgeRequest says what to purge; the fields set must all hold. Without Apply nothing is removed: the answer
// says what would be.
type PurgeRequest struct {
	Image      string `json:"image,omitempty"`      // one image, "nginx:1.25"
	Repository string `json:"repository,omitempty"` // a repository pattern, "docker.io/library/**"
	Upstream   string `json:"upstream,omitempty"`   // an upstream name
	OlderThan  string `json:"older_than,omitempty"` // "30d", "12h": not used for that long
	Apply      bool   `json:"apply,omitempty"`
}

// PurgeResult says what a purge removed, or would.
type PurgeResult struct {
	Applied bool     `json:"applied"`
	Objects int      `json:"objects"`
	Bytes   int64    `json:"bytes"`
	Tags    []string `json:"tags,omitempty"` // tags removed besides those of removed manifests
	Pinned  int      `json:"pinned"`         // objects selected that pins keep
	// Sample lists up to maxSample of the objects, in digest order.
	Sample []string `json:"sample,omitempty"`
}

const maxSample = 20

// Purge works out, and with req.Apply removes, what req selects.
func Purge(ctx context.Context, c *cache.Cache, r Resolver, req PurgeRequest, now time.Time) (PurgeResult, error) {
	var f cache.PurgeFilter
	if req.Image != "" {
		if req.Repository != "" || req.Upstream != "" {
			return PurgeResult{}, errors.New("purge: an image names its repository and upstream; give it alone (with --older-than at most)")
		}
		img, err := r(req.Image, false)
		if err != nil {
			return PurgeResult{}, err
		}
		f.Image = &cache.Pin{Upstream: img.Upstream, Repository: img.Repository, Tag: img.Tag, Digest: img.Digest}
		if f.Image.Tag != "" {
			f.Image.Digest = v1.Hash{} // the tag decides; its digest is checked by the cache's tag
		}
	}
	if req.Repository != "" {
		img, err := r(req.Repository, true)
		if err != nil {
			return PurgeResult{}, err
		}
		if img.Tag != "" || img.Digest != (v1.Hash{}) {
			return PurgeResult{}, fmt.Errorf("purge --repository %q: a repository pattern has no tag or digest", req.Repository)
		}
		if req.Upstream != "" && req.Upstream != img.Upstream {
			return PurgeResult{}, fmt.Errorf("purge: repository %q is at upstream %s, not %s", req.Repository, img.Upstream, req.Upstream)
		}
		f.Upstream, f.Repository = img.Upstream, img.Repository
	} else if req.Upstream != "" {
		f.Upstream = req.Upstream
	}
	if req.OlderThan != "" {
		age, err := ParseAge(req.OlderThan)
		if err != nil {
			return PurgeResult{}, err
		}
		f.OlderThan = now.Add(-age)
	}
	if f.Image == nil && f.Upstream == "" && f.OlderThan.IsZero() {
		return PurgeResult{}, errors.New("purge: say what to purge: an image, --repository, --upstream or --older-than")
	}
	plan, err := c.PlanPurge(ctx, f)
	if err != nil {
		return PurgeResult{}, err
	}
	res := PurgeResult{Objects: len(plan.Objects), Bytes: plan.Bytes, Tags: plan.Tags, Pinned: plan.Pinned}
	for _, o := range plan.Objects[:min(len(plan.Objects), maxSample)] {
		res.Sample = append(res.Sample, o.Digest.String())
	}
	if !req.Apply {
		return res, nil
	}
	if _, err := c.Purge(ctx, plan); err != nil {
		return res, err
	}
	res.Applied = true
	return res, nil
}

// ParseAge reads an age such as "30d", "12h" or "90m".
func ParseAge(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n <= 0 || n > 100*365 {
			return 0, fmt.Errorf("age %q: want a number of days such as 30d, or a duration such as 12h", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("age %q: want a number of days such as 30d, or a duration such as 12h", s)
	}
	return d, nil
}

// ImageStatus is how much of an image a cache holds: what `pullgate seed --status` prints.
type ImageStatus struct {
	Image    string   `json:"image"`
	Digest   string   `json:"digest,omitempty"`
	Cached   bool     `json:"cached"`   // its manifest is there
	Complete bool     `json:"complete"` // and everything it references, every platform
	Objects  int      `json:"objects"`
	Bytes    int64    `json:"bytes"`
	Missing  []string `json:"missing,omitempty"` // up to maxSample problems
	Pinned   bool     `json:"pinned"`
}

// Status says how much of img c holds, looking only at c.
func Status(ctx context.Context, c *cache.Cache, img Image) (ImageStatus, error) {
	st := ImageStatus{Image: img.Name}
	d, err := exportDigest(c, img)
	if err != nil {
		st.Missing = []string{err.Error()}
		return st, nil
	}
	st.Digest = d.String()
	src := exportSource(c, img.Upstream, img.Repository)
	root, err := rootDescriptor(src, d)
	if err != nil {
		st.Missing = []string{fmt.Sprintf("%s: %v", d, err)}
		return st, nil
	}
	st.Cached = true
	cl := src.walk(root)
	for _, o := range cl.objects {
		st.Objects++
		st.Bytes += o.size
	}
	st.Complete = len(cl.problems) == 0
	st.Missing = cl.problems[:min(len(cl.problems), maxSample)]
	pins, err := c.Pins()
	if err != nil {
		return st, err
	}
	held, err := c.Pinned(ctx, pins)
	if err != nil {
		return st, err
	}
	_, st.Pinned = held[d]
	return st, nil
}
