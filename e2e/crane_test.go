package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// nsTransport adds ?ns=NS to registry API requests, as containerd does for a mirror named in hosts.toml.
type nsTransport struct {
	ns   string
	base http.RoundTripper
}

func (t nsTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if t.ns != "" && strings.HasPrefix(r.URL.Path, "/v2/") && r.URL.Path != "/v2/" {
		r = r.Clone(r.Context())
		q := r.URL.Query()
		q.Set("ns", t.ns)
		r.URL.RawQuery = q.Encode()
	}
	return t.base.RoundTrip(r)
}

// pulled is what a full pull of a reference found.
type pulled struct {
	digest    v1.Hash
	manifests []v1.Hash
	blobs     []v1.Hash
}

// pullAll pulls ref (an image or an index, with every child) with go-containerregistry, reading every blob and
// checking it against its digest, and says what it found.
func pullAll(ctx context.Context, ref string, rt http.RoundTripper) (pulled, error) {
	r, err := name.ParseReference(ref, name.StrictValidation)
	if err != nil {
		return pulled{}, err
	}
	opts := []remote.Option{remote.WithContext(ctx), remote.WithTransport(rt)}
	desc, err := remote.Get(r, opts...)
	if err != nil {
		return pulled{}, fmt.Errorf("get %s: %w", ref, err)
	}
	p := pulled{digest: desc.Digest}
	var imgs []v1.Image
	if desc.MediaType.IsIndex() {
		p.manifests = append(p.manifests, desc.Digest)
		idx, err := desc.ImageIndex()
		if err != nil {
			return p, err
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return p, err
		}
		for _, child := range im.Manifests {
			img, err := remote.Image(r.Context().Digest(child.Digest.String()), opts...)
			if err != nil {
				return p, fmt.Errorf("child %s: %w", child.Digest, err)
			}
			imgs = append(imgs, img)
		}
	} else {
		img, err := desc.Image()
		if err != nil {
			return p, err
		}
		imgs = append(imgs, img)
	}
	for _, img := range imgs {
		d, err := img.Digest()
		if err != nil {
			return p, err
		}
		p.manifests = append(p.manifests, d)
		m, err := img.Manifest()
		if err != nil {
			return p, err
		}
		for _, bd := range append([]v1.Descriptor{m.Config}, m.Layers...) {
			if err := readBlob(ctx, r.Context(), bd, opts); err != nil {
				return p, err
			}
			p.blobs = append(p.blobs, bd.Digest)
		}
	}
	return p, nil
}

// readBlob reads a blob of repo and checks its size and digest itself.
func readBlob(ctx context.Context, repo name.Repository, d v1.Descriptor, opts []remote.Option) error {
	l, err := remote.Layer(repo.Digest(d.Digest.String()), opts...)
	if err != nil {
		return err
	}
	rc, err := l.Compressed()
	if err != nil {
		return fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	defer rc.Close()
	h := sha256.New()
	n, err := io.Copy(h, rc)
	if err != nil {
		return fmt.Errorf("blob %s after %d bytes: %w", d.Digest, n, err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != d.Digest.String() || n != d.Size {
		return fmt.Errorf("blob %s: read %d bytes hashing to %s, want %d bytes", d.Digest, n, got, d.Size)
	}
	return nil
}

// route is one way of naming the upstream to pullgate.
type route struct {
	name string
	host string // registry host, with a path prefix for prefix routing
	ns   string // ?ns= value, if any
}

func routes(e *env) []route {
	if e.pg == nil {
		return []route{{name: "direct", host: e.upHost()}}
	}
	return []route{
		{name: "default upstream", host: e.pgHost()},
		{name: "path prefix", host: e.pgHost() + "/local"},
		{name: "ns upstream name", host: e.pgHost(), ns: "local"},
		{name: "ns upstream host", host: e.pgHost(), ns: e.upHost()},
	}
}

// TestCranePull pulls every fixture through pullgate with go-containerregistry, by tag and by digest, with each
// way of routing, and compares it with a pull straight from the upstream.
func TestCranePull(t *testing.T) {
	e := sharedEnv(t)
	ctx := ctxFor(t, 3*time.Minute)
	rt := e.transport()
	direct := map[string]pulled{}
	for _, im := range e.fix.All() {
		p, err := pullAll(ctx, im.DigestRef(e.upHost()), rt)
		if err != nil {
			t.Fatalf("direct pull from the upstream: %v", err)
		}
		if p.digest != im.Digest {
			t.Fatalf("direct pull of %s: digest %s, pushed %s", im.Repo, p.digest, im.Digest)
		}
		direct[im.Digest.String()] = p
	}
	for _, r := range routes(e) {
		rt := nsTransport{ns: r.ns, base: rt}
		for _, im := range e.fix.All() {
			refs := map[string]string{"digest": im.DigestRef(r.host)}
			if im.Tag != "" {
				refs["tag"] = im.Ref(r.host)
			}
			for _, by := range []string{"tag", "digest"} {
				ref, ok := refs[by]
				if !ok {
					continue
				}
				t.Run(fmt.Sprintf("%s/%s:%s/by %s", r.name, im.Repo, im.Tag, by), func(t *testing.T) {
					got, err := pullAll(ctx, ref, rt)
					if err != nil {
						t.Fatalf("pull %s (ns=%q): %v", ref, r.ns, err)
					}
					want := direct[im.Digest.String()]
					if got.digest != want.digest || !slices.Equal(got.manifests, want.manifests) || !slices.Equal(got.blobs, want.blobs) {
						t.Errorf("pull %s (ns=%q):\n got  %v %v %v\n want %v %v %v", ref, r.ns,
							got.digest, got.manifests, got.blobs, want.digest, want.manifests, want.blobs)
					}
				})
			}
		}
	}
}

// TestWarmPullStaysLocal pulls an image twice by digest and checks that the second pull sent nothing upstream.
func TestWarmPullStaysLocal(t *testing.T) {
	e := sharedEnv(t)
	if e.pg == nil {
		t.Skip("direct mode")
	}
	ctx := ctxFor(t, time.Minute)
	ref := e.fix.Layers10.DigestRef(e.pgHost())
	if _, err := pullAll(ctx, ref, e.transport()); err != nil {
		t.Fatal(err)
	}
	e.proxy.Reset()
	if _, err := pullAll(ctx, ref, e.transport()); err != nil {
		t.Fatal(err)
	}
	if c := e.proxy.Counts(); c["GET blobs"]+c["GET manifests"]+c["HEAD manifests"]+c["HEAD blobs"] != 0 {
		t.Errorf("a warm pull by digest reached the upstream: %v", c)
	}
	hits := 0
	for _, l := range e.pg.PullLog() {
		if strings.Contains(l, `"cache":"hit"`) && strings.Contains(l, e.fix.Layers10.Repo) {
			hits++
		}
	}
	if hits < len(e.fix.Layers10.Blobs)+1 {
		t.Errorf("the pull log has %d cache hits for %s, want at least %d", hits, e.fix.Layers10.Repo, len(e.fix.Layers10.Blobs)+1)
	}
	metrics, err := e.pg.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"pullgate_requests_total", "pullgate_upstream_requests_total", "pullgate_served_bytes_total"} {
		if !strings.Contains(metrics, m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}
}

// TestReferrers asks pullgate's referrers API for the subject's referrers (the upstream, distribution 2.8, has
// only the sha256-<hex> tag fallback) and checks the artifactType filter.
func TestReferrers(t *testing.T) {
	e := sharedEnv(t)
	ctx := ctxFor(t, time.Minute)
	for _, r := range routes(e) {
		t.Run(r.name, func(t *testing.T) {
			if e.pg == nil {
				t.Skip("the upstream has no referrers API")
			}
			subject, err := name.NewDigest(r.host+"/"+e.fix.Subject.Repo+"@"+e.fix.Subject.Digest.String(), name.StrictValidation)
			if err != nil {
				t.Fatal(err)
			}
			for _, filter := range []string{"", ArtifactType, "application/vnd.other"} {
				opts := []remote.Option{remote.WithContext(ctx), remote.WithTransport(nsTransport{r.ns, e.transport()}),
					remote.WithReferrersTagFallback(false)}
				if filter != "" {
					opts = append(opts, remote.WithFilter("artifactType", filter))
				}
				idx, err := remote.Referrers(subject, opts...)
				if err != nil {
					t.Fatalf("referrers of %s (artifactType=%q): %v", subject, filter, err)
				}
				im, err := idx.IndexManifest()
				if err != nil {
					t.Fatal(err)
				}
				var got []string
				for _, d := range im.Manifests {
					got = append(got, d.Digest.String()+" "+d.ArtifactType)
				}
				want := []string{e.fix.Referrer.Digest.String() + " " + ArtifactType}
				if filter == "application/vnd.other" {
					want = nil
				}
				if !slices.Equal(got, want) {
					t.Errorf("referrers of %s (artifactType=%q): got %q, want %q", subject, filter, got, want)
				}
			}
		})
	}
}

// TestTagList lists tags through pullgate.
func TestTagList(t *testing.T) {
	e := sharedEnv(t)
	ctx := ctxFor(t, time.Minute)
	for _, r := range routes(e) {
		t.Run(r.name, func(t *testing.T) {
			repo, err := name.NewRepository(r.host+"/"+e.fix.Subject.Repo, name.StrictValidation)
			if err != nil {
				t.Fatal(err)
			}
			tags, err := remote.List(repo, remote.WithContext(ctx), remote.WithTransport(nsTransport{r.ns, e.transport()}))
			if err != nil {
				t.Fatalf("list %s: %v", repo, err)
			}
			want := []string{e.fix.ReferrersTag.Tag, "subject"}
			slices.Sort(tags)
			if !slices.Equal(tags, want) {
				t.Errorf("tags of %s: got %q, want %q", repo, tags, want)
			}
		})
	}
}

// TestConcurrentColdBlob has 16 clients ask pullgate at once for one blob it has never seen: exactly one GET of
// it may reach the upstream, and every client must get the whole blob.
func TestConcurrentColdBlob(t *testing.T) {
	e := sharedEnv(t)
	if e.pg == nil {
		t.Skip("direct mode")
	}
	ctx := ctxFor(t, 2*time.Minute)
	img, err := BigImage(8<<20, uint64(time.Now().UnixNano()))
	if err != nil {
		t.Fatal(err)
	}
	im, err := PushImage(e.upstream.Addr, "e2e/cold-shared", "v1", img, remote.WithContext(ctx), remote.WithTransport(e.transport()))
	if err != nil {
		t.Fatal(err)
	}
	layer := im.Blobs[1]
	e.proxy.Reset()
	client := &http.Client{Transport: e.transport(), Timeout: time.Minute}
	results := make(chan error, 16)
	for range 16 {
		go func() {
			f, err := rawGet(ctx, client, blobURL(e.pg.URL, im, layer))
			if err == nil && (f.status != http.StatusOK || f.err != nil || f.digest != layer.String()) {
				err = fmt.Errorf("status %d, %d bytes hashing to %s, read error %v", f.status, f.n, f.digest, f.err)
			}
			results <- err
		}()
	}
	for range 16 {
		if err := <-results; err != nil {
			t.Error(err)
		}
	}
	if n := e.proxy.Count("GET /v2/" + im.Repo + "/blobs/" + layer.String()); n != 1 {
		t.Errorf("16 concurrent cold GETs of one blob made %d upstream GETs, want 1 (all upstream requests: %v)", n, e.proxy.Counts())
	}
}

// TestBlobRange asks pullgate for parts of a blob, cold (first request) and warm, and compares them with the
// same ranges from the upstream.
func TestBlobRange(t *testing.T) {
	e := sharedEnv(t)
	if e.pg == nil {
		t.Skip("direct mode")
	}
	ctx := ctxFor(t, time.Minute)
	img, err := BigImage(1<<20, uint64(time.Now().UnixNano()))
	if err != nil {
		t.Fatal(err)
	}
	im, err := PushImage(e.upstream.Addr, "e2e/range", "v1", img, remote.WithContext(ctx), remote.WithTransport(e.transport()))
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: e.transport(), Timeout: time.Minute}
	tests := []struct {
		name, rng string
	}{
		{"cold, open-ended", "bytes=1000-"},
		{"warm, open-ended", "bytes=1000-"},
		{"warm, closed", "bytes=10-1033"},
		{"warm, suffix", "bytes=-500"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			want, wantStatus, err := rangeGet(ctx, client, blobURL(e.proxy.URL, im, im.Blobs[1]), tc.rng)
			if err != nil {
				t.Fatal(err)
			}
			got, status, err := rangeGet(ctx, client, blobURL(e.pg.URL, im, im.Blobs[1]), tc.rng)
			if err != nil {
				t.Fatal(err)
			}
			if status != wantStatus || string(got) != string(want) {
				t.Errorf("Range %s: status %d and %d bytes, the upstream answers %d and %d bytes (same bytes: %v)",
					tc.rng, status, len(got), wantStatus, len(want), string(got) == string(want))
			}
		})
	}
}

func rangeGet(ctx context.Context, client *http.Client, url, rng string) ([]byte, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Range", rng)
	resp, err := client.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return b, resp.StatusCode, err
}
