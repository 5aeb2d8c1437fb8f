package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Image is one pushed fixture: where it is and what it is made of.
type Image struct {
	// Repo is the repository path in the upstream ("e2e/single"); Tag its tag.
	Repo, Tag string
	// Digest and MediaType are those of the top manifest (an index for multi-platform images).
	Digest    v1.Hash
	MediaType types.MediaType
	// Manifests are all manifest digests, the top one first, then an index's children.
	Manifests []v1.Hash
	// Blobs are all config and layer digests, for every platform.
	Blobs []v1.Hash
	// Bytes is the sum of the blob sizes.
	Bytes int64
}

// Ref is repo:tag under host (a registry address, or one with a path prefix: "127.0.0.1:5443/local").
func (i Image) Ref(host string) string { return host + "/" + i.Repo + ":" + i.Tag }

// DigestRef is repo@digest under host.
func (i Image) DigestRef(host string) string { return host + "/" + i.Repo + "@" + i.Digest.String() }

// Fixtures are the images the upstream is filled with.
type Fixtures struct {
	// Single is a one-platform Docker schema 2 image with 3 layers.
	Single Image
	// Multi is an OCI index of linux/amd64 and linux/arm64 images.
	Multi Image
	// Layers10 is an image of 10 gzip layers for this machine's platform, which containerd can unpack.
	Layers10 Image
	// Big is an OCI image whose one layer is a tar of about 50 MB (BigSize).
	Big Image
	// Subject is a small OCI image that Referrer refers to.
	Subject Image
	// Referrer is an OCI artifact manifest (artifactType ArtifactType) whose subject is Subject, pushed by digest.
	Referrer Image
	// ReferrersTag is the tag fallback "sha256-<hex of Subject>", an OCI index listing Referrer, as ORAS and
	// go-containerregistry write it for registries without the referrers API (distribution 2.8).
	ReferrersTag Image
}

// All lists every fixture.
func (f *Fixtures) All() []Image {
	return []Image{f.Single, f.Multi, f.Layers10, f.Big, f.Subject, f.Referrer, f.ReferrersTag}
}

// ArtifactType is the artifactType of the referrer fixture.
const ArtifactType = "application/vnd.pullgate.e2e.sbom.v1+json"

// SeedOptions configures Seed.
type SeedOptions struct {
	// Prefix is the first path element of every repository; empty means "e2e".
	Prefix string
	// BigSize is the size of Big's layer; zero means 50 MB.
	BigSize int64
	// Transport reaches the registry (trusting its CA); required.
	Transport http.RoundTripper
}

// Seed pushes the fixtures to the registry at host (host:port).
func Seed(ctx context.Context, host string, o SeedOptions) (*Fixtures, error) {
	if o.Prefix == "" {
		o.Prefix = "e2e"
	}
	if o.BigSize == 0 {
		o.BigSize = 50 << 20
	}
	opts := []remote.Option{remote.WithContext(ctx), remote.WithTransport(o.Transport)}
	f := &Fixtures{}
	var err error

	single, err := random.Image(4<<10, 3)
	if err != nil {
		return nil, err
	}
	if f.Single, err = PushImage(host, o.Prefix+"/single", "v1", single, opts...); err != nil {
		return nil, err
	}

	multi, err := MultiPlatformIndex()
	if err != nil {
		return nil, err
	}
	if f.Multi, err = PushIndex(host, o.Prefix+"/multi", "v1", multi, opts...); err != nil {
		return nil, err
	}

	layers10, err := TenLayerImage()
	if err != nil {
		return nil, err
	}
	if f.Layers10, err = PushImage(host, o.Prefix+"/layers10", "v1", layers10, opts...); err != nil {
		return nil, err
	}

	big, err := BigImage(o.BigSize, uint64(time.Now().UnixNano()))
	if err != nil {
		return nil, err
	}
	if f.Big, err = PushImage(host, o.Prefix+"/big", "v1", big, opts...); err != nil {
		return nil, err
	}

	if err := seedReferrer(host, o.Prefix+"/artifact", f, opts); err != nil {
		return nil, fmt.Errorf("referrer fixture: %w", err)
	}
	return f, nil
}

// PushImage writes img to host/repo:tag and describes it.
func PushImage(host, repo, tag string, img v1.Image, opts ...remote.Option) (Image, error) {
	ref, err := name.NewTag(host+"/"+repo+":"+tag, name.StrictValidation)
	if err != nil {
		return Image{}, err
	}
	if err := remote.Write(ref, img, opts...); err != nil {
		return Image{}, fmt.Errorf("push %s: %w", ref, err)
	}
	im := Image{Repo: repo, Tag: tag}
	if err := describeImage(&im, img); err != nil {
		return Image{}, err
	}
	im.Digest, im.MediaType = im.Manifests[0], mustMediaType(img)
	return im, nil
}

// PushIndex writes idx and its images to host/repo:tag and describes it.
func PushIndex(host, repo, tag string, idx v1.ImageIndex, opts ...remote.Option) (Image, error) {
	ref, err := name.NewTag(host+"/"+repo+":"+tag, name.StrictValidation)
	if err != nil {
		return Image{}, err
	}
	if err := remote.WriteIndex(ref, idx, opts...); err != nil {
		return Image{}, fmt.Errorf("push %s: %w", ref, err)
	}
	im := Image{Repo: repo, Tag: tag}
	if im.Digest, err = idx.Digest(); err != nil {
		return Image{}, err
	}
	if im.MediaType, err = idx.MediaType(); err != nil {
		return Image{}, err
	}
	im.Manifests = []v1.Hash{im.Digest}
	manifest, err := idx.IndexManifest()
	if err != nil {
		return Image{}, err
	}
	for _, d := range manifest.Manifests {
		img, err := idx.Image(d.Digest)
		if err != nil {
			return Image{}, err
		}
		if err := describeImage(&im, img); err != nil {
			return Image{}, err
		}
	}
	return im, nil
}

func describeImage(im *Image, img v1.Image) error {
	d, err := img.Digest()
	if err != nil {
		return err
	}
	m, err := img.Manifest()
	if err != nil {
		return err
	}
	im.Manifests = append(im.Manifests, d)
	for _, desc := range append([]v1.Descriptor{m.Config}, m.Layers...) {
		im.Blobs = append(im.Blobs, desc.Digest)
		im.Bytes += desc.Size
	}
	return nil
}

func mustMediaType(img v1.Image) types.MediaType {
	mt, err := img.MediaType()
	if err != nil {
		return ""
	}
	return mt
}

// platformImage makes a small OCI image whose config names the platform.
func PlatformImage(layers int64, size int64, p v1.Platform) (v1.Image, error) {
	img, err := random.Image(size, layers)
	if err != nil {
		return nil, err
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	cf.Config.Cmd = []string{"/bin/true"}
	return mutate.ConfigFile(img, cf)
}

// MultiPlatformIndex makes an OCI index of a linux/amd64 and a linux/arm64 image.
func MultiPlatformIndex() (v1.ImageIndex, error) {
	var adds []mutate.IndexAddendum
	for _, p := range []v1.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64", Variant: "v8"}} {
		img, err := PlatformImage(2, 4<<10, p)
		if err != nil {
			return nil, err
		}
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}})
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	return mutate.AppendManifests(idx, adds...), nil
}

// TenLayerImage makes a fresh image of 10 gzip tar layers (64 KiB of random data each) for this machine's
// platform, so containerd can pull and unpack it.
func TenLayerImage() (v1.Image, error) {
	return PlatformImage(10, 64<<10, v1.Platform{OS: "linux", Architecture: runtime.GOARCH})
}

// BigLayer makes an uncompressed tar layer holding one file of size random bytes from seed.
func BigLayer(size int64, seed uint64) (v1.Layer, error) {
	var b bytes.Buffer
	b.Grow(int(size) + 2048)
	tw := tar.NewWriter(&b)
	if err := tw.WriteHeader(&tar.Header{Name: "big.bin", Size: size, Mode: 0o644, Typeflag: tar.TypeReg}); err != nil {
		return nil, err
	}
	data := make([]byte, size)
	var key [32]byte
	for i := range 4 {
		key[i*8] = byte(seed >> (8 * i))
	}
	rng := rand.NewChaCha8(key)
	_, _ = rng.Read(data)
	if _, err := tw.Write(data); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return static.NewLayer(b.Bytes(), types.OCIUncompressedLayer), nil
}

// BigImage makes an OCI image whose only layer is BigLayer(size, seed).
func BigImage(size int64, seed uint64) (v1.Image, error) { return LayeredImage(1, size, seed) }

// LayeredImage makes an OCI image for this machine's platform of n uncompressed layers, BigLayer(size, seed),
// BigLayer(size, seed+1), and so on.
func LayeredImage(n int, size int64, seed uint64) (v1.Image, error) {
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	for i := range n {
		l, err := BigLayer(size, seed+uint64(i))
		if err != nil {
			return nil, err
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			return nil, err
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	return mutate.ConfigFile(img, cf)
}

// rawManifest is a manifest given as bytes, for remote.Put.
type rawManifest struct {
	raw []byte
	mt  types.MediaType
}

func (r rawManifest) RawManifest() ([]byte, error)        { return r.raw, nil }
func (r rawManifest) MediaType() (types.MediaType, error) { return r.mt, nil }

// seedReferrer pushes Subject, then an artifact manifest that names it as subject. go-containerregistry, like
// ORAS, finds that the registry has no referrers API and maintains the sha256-<hex> fallback tag itself.
func seedReferrer(host, repo string, f *Fixtures, opts []remote.Option) error {
	subject, err := PlatformImage(1, 1<<10, v1.Platform{OS: "linux", Architecture: runtime.GOARCH})
	if err != nil {
		return err
	}
	if f.Subject, err = PushImage(host, repo, "subject", subject, opts...); err != nil {
		return err
	}
	repository, err := name.NewRepository(host+"/"+repo, name.StrictValidation)
	if err != nil {
		return err
	}
	emptyConfig := static.NewLayer([]byte("{}"), "application/vnd.oci.empty.v1+json")
	sbom := static.NewLayer([]byte(`{"spdxVersion":"SPDX-2.3","name":"pullgate-e2e"}`), types.MediaType(ArtifactType))
	descs := make([]v1.Descriptor, 0, 2)
	for _, l := range []v1.Layer{emptyConfig, sbom} {
		if err := remote.WriteLayer(repository, l, opts...); err != nil {
			return err
		}
		d, err := l.Digest()
		if err != nil {
			return err
		}
		size, _ := l.Size()
		mt, _ := l.MediaType()
		descs = append(descs, v1.Descriptor{MediaType: mt, Digest: d, Size: size})
	}
	subjectSize, err := subject.Size()
	if err != nil {
		return err
	}
	manifest := map[string]any{
		"schemaVersion": 2,
		"mediaType":     types.OCIManifestSchema1,
		"artifactType":  ArtifactType,
		"config":        descs[0],
		"layers":        descs[1:],
		"subject":       v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: f.Subject.Digest, Size: subjectSize},
		"annotations":   map[string]string{"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
	}
	raw, err := json.Marshal(manifest)
	if err != nil {
		return err
	}
	digest, _, err := v1.SHA256(bytes.NewReader(raw))
	if err != nil {
		return err
	}
	if err := remote.Put(repository.Digest(digest.String()), rawManifest{raw, types.OCIManifestSchema1}, opts...); err != nil {
		return err
	}
	f.Referrer = Image{Repo: repo, Tag: "", Digest: digest, MediaType: types.OCIManifestSchema1,
		Manifests: []v1.Hash{digest}, Blobs: []v1.Hash{descs[0].Digest, descs[1].Digest}, Bytes: descs[0].Size + descs[1].Size}

	fallback := repository.Tag(f.Subject.Digest.Algorithm + "-" + f.Subject.Digest.Hex)
	desc, err := remote.Get(fallback, opts...)
	if err != nil {
		return fmt.Errorf("the referrers fallback tag was not written: %w", err)
	}
	f.ReferrersTag = Image{Repo: repo, Tag: fallback.TagStr(), Digest: desc.Digest, MediaType: desc.MediaType,
		Manifests: []v1.Hash{desc.Digest}}
	var idx v1.IndexManifest
	if err := json.Unmarshal(desc.Manifest, &idx); err != nil {
		return err
	}
	if len(idx.Manifests) != 1 || idx.Manifests[0].Digest != digest || idx.Manifests[0].ArtifactType != ArtifactType {
		return fmt.Errorf("fallback tag %s does not list the referrer %s: %s", fallback, digest, desc.Manifest)
	}
	return nil
}
