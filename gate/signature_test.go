package gate_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/dsse"

	"github.com/pullgate/pullgate/gate"
)

// What cosign writes, as the tests build and check it.
const (
	sigSimpleSigning   = "application/vnd.dev.cosign.simplesigning.v1+json"
	sigAnnotation      = "dev.cosignproject.cosign/signature"
	sigBundleMediaType = "application/vnd.dev.sigstore.bundle.v0.3+json"
	sigSignPredicate   = "https://sigstore.dev/cosign/sign/v1"
)

// TestVerifySignature signs images with the real cosign (key-based, offline) in go-containerregistry's registry
// and verifies them through a SignatureSource that reads that registry over HTTP, as the proxy does.
func TestVerifySignature(t *testing.T) {
	cosignBin := sigCosignBinary(t)
	reg := newSigRegistry(t, true)    // has the referrers API
	noRef := newSigRegistry(t, false) // has not: cosign falls back to the referrers tag
	cs := newSigCosign(t, cosignBin, reg, noRef)

	alice := cs.generate(t, "alice")
	bob := cs.generate(t, "bob")
	p384Key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p521Key, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p384 := cs.importKey(t, "p384", p384Key)
	p521 := cs.importKey(t, "p521", p521Key)
	ed := cs.importKey(t, "ed25519", edKey)
	rsa2048 := cs.importKey(t, "rsa2048", rsaKey)

	legacy := []string{"--new-bundle-format=false"} // the .sig tag with simple signing layers
	const repo = "team/app"

	signedLegacy := reg.push(t, repo)
	cs.sign(t, "alice", reg.ref(repo, signedLegacy), legacy...)
	signedBundle := reg.push(t, repo)
	cs.sign(t, "alice", reg.ref(repo, signedBundle)) // cosign 3's default: a bundle as an OCI 1.1 referrer
	signedExperimental := reg.push(t, repo)
	cs.run(t, []string{"COSIGN_EXPERIMENTAL=1"}, cs.signArgs("alice", reg.ref(repo, signedExperimental),
		"--new-bundle-format=false", "--registry-referrers-mode=oci-1-1")...)
	signedFallback := noRef.push(t, repo)
	cs.sign(t, "alice", noRef.ref(repo, signedFallback))
	unsigned := reg.push(t, repo)
	bobLegacy := reg.push(t, repo)
	cs.sign(t, "bob", reg.ref(repo, bobLegacy), legacy...)
	bobBundle := reg.push(t, repo)
	cs.sign(t, "bob", reg.ref(repo, bobBundle))

	keyTypes := map[string]string{} // key name -> digests signed by it, legacy then bundle
	for _, k := range []string{"p384", "p521", "ed25519", "rsa2048"} {
		l := reg.push(t, repo)
		cs.sign(t, k, reg.ref(repo, l), legacy...)
		b := reg.push(t, repo)
		cs.sign(t, k, reg.ref(repo, b))
		keyTypes[k+" legacy"], keyTypes[k+" bundle"] = l, b
	}

	// An attestation by alice is not a signature. Through the referrers API the index's predicate type hint skips
	// it; through the referrers tag (no hint) its signed statement is read and refused.
	pred := filepath.Join(cs.dir, "predicate.json")
	if err := os.WriteFile(pred, []byte(`{"approved":true}`), 0o600); err != nil {
		t.Fatal(err)
	}
	attested := reg.push(t, repo)
	cs.run(t, nil, cs.attestArgs("alice", reg.ref(repo, attested), pred)...)
	attestedFallback := noRef.push(t, repo)
	cs.run(t, nil, cs.attestArgs("alice", noRef.ref(repo, attestedFallback), pred)...)

	// Image B gets image A's signature manifest as its own .sig tag.
	copiedLegacy := reg.push(t, repo)
	reg.putManifest(t, repo, sigTag(copiedLegacy)+".sig", reg.manifest(t, repo, sigTag(signedLegacy)+".sig"), types.OCIManifestSchema1)
	// Image B gets image A's bundle referrer, with B as its subject.
	copiedBundle := reg.push(t, repo)
	reg.putManifest(t, repo, "", sigWithSubject(t, reg.referrerManifests(t, repo, signedBundle)[0], reg.descriptor(t, repo, copiedBundle)), types.OCIManifestSchema1)

	// A payload changed after signing: the .sig tag rewritten to point to the changed payload.
	tamperedLegacy := reg.push(t, repo)
	cs.sign(t, "alice", reg.ref(repo, tamperedLegacy), legacy...)
	sigTamperLegacy(t, reg, repo, tamperedLegacy)
	// A statement changed after signing: the referrers tag rewritten to list only the changed bundle.
	tamperedBundle := noRef.push(t, repo)
	cs.sign(t, "alice", noRef.ref(repo, tamperedBundle))
	sigTamperBundle(t, noRef, repo, tamperedBundle)

	// The registry fails (500) reading blobs of flaky/blobs and manifests of flaky/manifests.
	flakyBlobs := reg.push(t, "flaky/blobs")
	cs.sign(t, "alice", reg.ref("flaky/blobs", flakyBlobs), legacy...)
	flakyManifests := reg.push(t, "flaky/manifests")

	src, srcNoRef := reg.source(repo), noRef.source(repo)
	type result struct {
		key     string // the key that verified
		message string // else the SignatureError's message, with DIGEST for the digest
		checked int
		other   bool // else an error that is not a SignatureError
	}
	tests := []struct {
		name string
		src  gate.SignatureSource
		dgst string
		keys []gate.PublicKey
		want result
	}{
		{"legacy .sig tag", src, signedLegacy, []gate.PublicKey{alice}, result{key: "alice"}},
		{"bundle referrer", src, signedBundle, []gate.PublicKey{alice}, result{key: "alice"}},
		{"bundle in the referrers tag", srcNoRef, signedFallback, []gate.PublicKey{alice}, result{key: "alice"}},
		{"experimental simple signing referrer", src, signedExperimental, []gate.PublicKey{alice}, result{key: "alice"}},
		{"unsigned", src, unsigned, []gate.PublicKey{alice},
			result{message: "no signature found for DIGEST"}},
		{"legacy by another key", src, bobLegacy, []gate.PublicKey{alice},
			result{message: "no valid signature by key alice for DIGEST (1 signature checked)", checked: 1}},
		{"bundle by another key", src, bobBundle, []gate.PublicKey{alice},
			result{message: "no valid signature by key alice for DIGEST (1 signature checked)", checked: 1}},
		{"legacy by another key, two keys named", src, bobLegacy, []gate.PublicKey{alice, p384},
			result{message: "no valid signature by keys alice, p384 for DIGEST (1 signature checked)", checked: 1}},
		{"legacy by the second key", src, bobLegacy, []gate.PublicKey{alice, bob}, result{key: "bob"}},
		{"bundle by the second key", src, bobBundle, []gate.PublicKey{alice, bob}, result{key: "bob"}},
		{"legacy signature copied from another image", src, copiedLegacy, []gate.PublicKey{alice},
			result{message: "no valid signature by key alice for DIGEST (1 signature checked)", checked: 1}},
		{"bundle copied from another image", src, copiedBundle, []gate.PublicKey{alice},
			result{message: "no valid signature by key alice for DIGEST (1 signature checked)", checked: 1}},
		{"legacy payload tampered", src, tamperedLegacy, []gate.PublicKey{alice},
			result{message: "no valid signature by key alice for DIGEST (1 signature checked)", checked: 1}},
		{"bundle statement tampered", srcNoRef, tamperedBundle, []gate.PublicKey{alice},
			result{message: "no valid signature by key alice for DIGEST (1 signature checked)", checked: 1}},
		{"attestation referrer skipped by its hint", src, attested, []gate.PublicKey{alice},
			result{message: "no signature found for DIGEST"}},
		{"attestation in the referrers tag refused", srcNoRef, attestedFallback, []gate.PublicKey{alice},
			result{message: "no valid signature by key alice for DIGEST (1 signature checked)", checked: 1}},
		{"registry fails on the signature blob", reg.source("flaky/blobs"), flakyBlobs, []gate.PublicKey{alice},
			result{other: true}},
		{"registry fails on the .sig tag", reg.source("flaky/manifests"), flakyManifests, []gate.PublicKey{alice},
			result{other: true}},
	}
	for _, k := range []gate.PublicKey{p384, p521, ed, rsa2048} {
		for _, form := range []string{"legacy", "bundle"} {
			tests = append(tests, struct {
				name string
				src  gate.SignatureSource
				dgst string
				keys []gate.PublicKey
				want result
			}{k.Name + " " + form, src, keyTypes[k.Name+" "+form], []gate.PublicKey{alice, k}, result{key: k.Name}})
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, err := gate.VerifySignature(t.Context(), tt.src, tt.dgst, tt.keys)
			var se *gate.SignatureError
			isSigErr := errors.As(err, &se)
			switch {
			case tt.want.key != "":
				if err != nil || key != tt.want.key {
					t.Fatalf("VerifySignature = %q, %v; want %q", key, err, tt.want.key)
				}
			case tt.want.other:
				if err == nil || isSigErr {
					t.Fatalf("VerifySignature = %q, %v; want an error that is not a SignatureError", key, err)
				}
			default:
				if !isSigErr || key != "" {
					t.Fatalf("VerifySignature = %q, %v; want a SignatureError", key, err)
				}
				if want := strings.ReplaceAll(tt.want.message, "DIGEST", tt.dgst); err.Error() != want {
					t.Errorf("message %q, want %q", err.Error(), want)
				}
				if se.Checked != tt.want.checked || se.Digest != tt.dgst {
					t.Errorf("Checked %d, Digest %s; want %d, %s", se.Checked, se.Digest, tt.want.checked, tt.dgst)
				}
				t.Logf("reasons: %q", se.Reasons)
			}
		})
	}
}

// sigCosignBinary finds cosign on PATH or where go install puts it. Without it the test skips, except under
// CI=true, where it fails.
func sigCosignBinary(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("cosign"); err == nil {
		return p
	}
	if home, err := os.UserHomeDir(); err == nil {
		if p := filepath.Join(home, "go", "bin", "cosign"); sigIsExecutable(p) {
			return p
		}
	}
	if p := "/root/go/bin/cosign"; sigIsExecutable(p) {
		return p
	}
	const why = "cosign is not installed (go install github.com/sigstore/cosign/v3/cmd/cosign@v3.1.3)"
	if os.Getenv("CI") == "true" {
		t.Fatal(why)
	}
	t.Skip(why)
	return ""
}

func sigIsExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// sigCosign runs the real cosign, key-based and offline: no signing config, no transparency log.
type sigCosign struct {
	bin string
	dir string // keys, HOME, the registries' CA
	env []string
}

func newSigCosign(t *testing.T, bin string, regs ...*sigRegistry) *sigCosign {
	t.Helper()
	dir := t.TempDir()
	var ca []byte
	for _, r := range regs {
		ca = append(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.srv.Certificate().Raw})...)
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca, 0o600); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "COSIGN_PASSWORD=", "HOME="+dir, "SSL_CERT_FILE="+caFile)
	return &sigCosign{bin: bin, dir: dir, env: env}
}

func (c *sigCosign) run(t *testing.T, env []string, args ...string) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), c.bin, args...)
	cmd.Dir = c.dir
	cmd.Env = append(slices.Clip(c.env), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cosign %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// generate makes a key pair with cosign generate-key-pair.
func (c *sigCosign) generate(t *testing.T, key string) gate.PublicKey {
	t.Helper()
	c.run(t, nil, "generate-key-pair", "--output-key-prefix", key)
	return c.publicKey(t, key)
}

// importKey gives cosign a private key (PKCS #8) with cosign import-key-pair.
func (c *sigCosign) importKey(t *testing.T, key string, priv crypto.PrivateKey) gate.PublicKey {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.dir, key+".pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	c.run(t, nil, "import-key-pair", "--key", key+".pem", "--output-key-prefix", key, "--yes")
	return c.publicKey(t, key)
}

// publicKey parses the key.pub cosign wrote.
func (c *sigCosign) publicKey(t *testing.T, key string) gate.PublicKey {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.dir, key+".pub"))
	if err != nil {
		t.Fatal(err)
	}
	k, err := gate.ParsePublicKey(key, b)
	if err != nil {
		t.Fatalf("ParsePublicKey(%s): %v", key, err)
	}
	return k
}

func (c *sigCosign) signArgs(key, ref string, flags ...string) []string {
	args := []string{"sign", "--key", key + ".key", "--use-signing-config=false", "--tlog-upload=false", "--yes"}
	return append(append(args, flags...), ref)
}

func (c *sigCosign) sign(t *testing.T, key, ref string, flags ...string) {
	t.Helper()
	c.run(t, nil, c.signArgs(key, ref, flags...)...)
}

func (c *sigCosign) attestArgs(key, ref, predicate string) []string {
	return []string{"attest", "--key", key + ".key", "--use-signing-config=false", "--tlog-upload=false", "--yes",
		"--predicate", predicate, "--type", "https://example.com/approval/v1", ref}
}

// sigRegistry is go-containerregistry's registry on TLS. It fails (500) GETs of blobs in flaky/blobs and of
// manifests in flaky/manifests.
type sigRegistry struct {
	srv  *httptest.Server
	host string
}

func newSigRegistry(t *testing.T, referrers bool) *sigRegistry {
	t.Helper()
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)), registry.WithReferrersSupport(referrers))
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && (strings.HasPrefix(r.URL.Path, "/v2/flaky/blobs/blobs/") ||
			strings.HasPrefix(r.URL.Path, "/v2/flaky/manifests/manifests/")) {
			http.Error(w, "injected failure", http.StatusInternalServerError)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return &sigRegistry{srv: srv, host: strings.TrimPrefix(srv.URL, "https://")}
}

func (r *sigRegistry) options(ctx context.Context) []remote.Option {
	return []remote.Option{remote.WithTransport(r.srv.Client().Transport), remote.WithContext(ctx)}
}

// push writes a random image to repo and returns its digest.
func (r *sigRegistry) push(t *testing.T, repo string) string {
	t.Helper()
	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(sigParse(t, r.host+"/"+repo+":latest"), img, r.options(t.Context())...); err != nil {
		t.Fatal(err)
	}
	return d.String()
}

func (r *sigRegistry) ref(repo, dgst string) string { return r.host + "/" + repo + "@" + dgst }

func (r *sigRegistry) source(repo string) *sigSource {
	return &sigSource{client: r.srv.Client(), base: r.srv.URL + "/v2/" + repo}
}

// manifest reads a manifest of repo.
func (r *sigRegistry) manifest(t *testing.T, repo, ref string) []byte {
	t.Helper()
	b, _, err := r.source(repo).Manifest(t.Context(), ref)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// descriptor describes the manifest dgst of repo, to be a subject.
func (r *sigRegistry) descriptor(t *testing.T, repo, dgst string) v1.Descriptor {
	t.Helper()
	b, mt, err := r.source(repo).Manifest(t.Context(), dgst)
	if err != nil {
		t.Fatal(err)
	}
	return v1.Descriptor{MediaType: types.MediaType(mt), Size: int64(len(b)), Digest: v1.Hash{Algorithm: "sha256", Hex: strings.TrimPrefix(dgst, "sha256:")}}
}

// referrerManifests reads the manifests that refer to dgst, through the referrers API or tag.
func (r *sigRegistry) referrerManifests(t *testing.T, repo, dgst string) [][]byte {
	t.Helper()
	src := r.source(repo)
	b, err := src.Referrers(t.Context(), dgst)
	if errors.Is(err, gate.ErrNotFound) {
		b, _, err = src.Manifest(t.Context(), sigTag(dgst))
	}
	if err != nil {
		t.Fatal(err)
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, d := range idx.Manifests {
		out = append(out, r.manifest(t, repo, d.Digest.String()))
	}
	if len(out) == 0 {
		t.Fatalf("no referrers of %s", dgst)
	}
	return out
}

// putBlob writes b to repo and returns its descriptor.
func (r *sigRegistry) putBlob(t *testing.T, repo string, b []byte, mt types.MediaType) v1.Descriptor {
	t.Helper()
	if err := remote.WriteLayer(sigParse(t, r.host+"/"+repo+":x").Context(), static.NewLayer(b, mt), r.options(t.Context())...); err != nil {
		t.Fatal(err)
	}
	return v1.Descriptor{MediaType: mt, Size: int64(len(b)), Digest: sigHash(b)}
}

// putManifest writes body to repo under tag, or under its digest when tag is "".
func (r *sigRegistry) putManifest(t *testing.T, repo, tag string, body []byte, mt types.MediaType) {
	t.Helper()
	ref := r.host + "/" + repo + "@" + sigHash(body).String()
	if tag != "" {
		ref = r.host + "/" + repo + ":" + tag
	}
	if err := remote.Put(sigParse(t, ref), sigRawManifest{body, mt}, r.options(t.Context())...); err != nil {
		t.Fatal(err)
	}
}

func sigParse(t *testing.T, ref string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

type sigRawManifest struct {
	body []byte
	mt   types.MediaType
}

func (m sigRawManifest) RawManifest() ([]byte, error)        { return m.body, nil }
func (m sigRawManifest) MediaType() (types.MediaType, error) { return m.mt, nil }

// sigSource is a SignatureSource over a registry's HTTP API, for one repository, as the proxy's is over its
// cache: 404 is ErrNotFound, any other failure an error; every answer is read under a cap.
type sigSource struct {
	client *http.Client
	base   string // https://host/v2/<repository>
}

func (s *sigSource) get(ctx context.Context, path, accept string, limit int64) ([]byte, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.base+path, nil)
	if err != nil {
		return nil, "", err
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return nil, "", fmt.Errorf("GET %s: %w", path, gate.ErrNotFound)
	default:
		return nil, "", fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, "", err
	}
	if int64(len(b)) > limit {
		return nil, "", fmt.Errorf("GET %s: more than %d bytes", path, limit)
	}
	return b, resp.Header.Get("Content-Type"), nil
}

func (s *sigSource) Manifest(ctx context.Context, ref string) ([]byte, string, error) {
	accept := strings.Join([]string{string(types.OCIManifestSchema1), string(types.OCIImageIndex),
		string(types.DockerManifestSchema2), string(types.DockerManifestList)}, ",")
	return s.get(ctx, "/manifests/"+ref, accept, 4<<20)
}

func (s *sigSource) Blob(ctx context.Context, dgst string, limit int64) ([]byte, error) {
	b, _, err := s.get(ctx, "/blobs/"+dgst, "", limit)
	return b, err
}

func (s *sigSource) Referrers(ctx context.Context, dgst string) ([]byte, error) {
	b, _, err := s.get(ctx, "/referrers/"+dgst, "", 4<<20)
	return b, err
}

// sigTag is the tag schema's name for dgst: "sha256-<hex>".
func sigTag(dgst string) string { return strings.Replace(dgst, ":", "-", 1) }

func sigHash(b []byte) v1.Hash {
	sum := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

// sigWithSubject returns the manifest body with subject as its subject.
func sigWithSubject(t *testing.T, body []byte, subject v1.Descriptor) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	m["subject"] = subject
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sigTamperLegacy changes the signed payload of dgst's .sig tag (its docker-reference, which is not checked) and
// points the signature layer to the changed payload.
func sigTamperLegacy(t *testing.T, r *sigRegistry, repo, dgst string) {
	t.Helper()
	tag := sigTag(dgst) + ".sig"
	m, err := v1.ParseManifest(bytes.NewReader(r.manifest(t, repo, tag)))
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Layers) != 1 {
		t.Fatalf("%d layers in %s", len(m.Layers), tag)
	}
	payload, err := r.source(repo).Blob(t.Context(), m.Layers[0].Digest.String(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	changed := bytes.Replace(payload, []byte(`"docker-reference":"`), []byte(`"docker-reference":"evil.example/`), 1)
	if bytes.Equal(changed, payload) {
		t.Fatalf("payload has no docker-reference: %s", payload)
	}
	d := r.putBlob(t, repo, changed, sigSimpleSigning)
	d.Annotations = m.Layers[0].Annotations
	m.Layers[0] = d
	body, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	r.putManifest(t, repo, tag, body, types.OCIManifestSchema1)
}

// sigTamperBundle changes the statement signed in dgst's bundle (adds an annotation to its subject, which still
// names dgst) and makes the referrers tag list only a referrer holding the changed bundle.
func sigTamperBundle(t *testing.T, r *sigRegistry, repo, dgst string) {
	t.Helper()
	var m v1.Manifest
	if err := json.Unmarshal(r.referrerManifests(t, repo, dgst)[0], &m); err != nil {
		t.Fatal(err)
	}
	bundle, err := r.source(repo).Blob(t.Context(), m.Layers[0].Digest.String(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	var b map[string]any
	if err := json.Unmarshal(bundle, &b); err != nil {
		t.Fatal(err)
	}
	env := b["dsseEnvelope"].(map[string]any)
	stmt, err := base64.StdEncoding.DecodeString(env["payload"].(string))
	if err != nil {
		t.Fatal(err)
	}
	changed := bytes.Replace(stmt, []byte(`"annotations":{}`), []byte(`"annotations":{"approved":"yes"}`), 1)
	if bytes.Equal(changed, stmt) {
		t.Fatalf("statement has no empty annotations: %s", stmt)
	}
	env["payload"] = base64.StdEncoding.EncodeToString(changed)
	bundle, err = json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	m.Layers[0] = r.putBlob(t, repo, bundle, sigBundleMediaType)
	m.Subject = nil // so that the registry client does not add it to the referrers tag itself
	body, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	r.putManifest(t, repo, "", body, types.OCIManifestSchema1)
	idx, err := json.Marshal(v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: []v1.Descriptor{
		{MediaType: types.OCIManifestSchema1, Size: int64(len(body)), Digest: sigHash(body), ArtifactType: sigBundleMediaType},
	}})
	if err != nil {
		t.Fatal(err)
	}
	r.putManifest(t, repo, sigTag(dgst), idx, types.OCIImageIndex)
}

// sigSigner signs as cosign does, in process, with sigstore's signer: for the tests of limits and hostile
// input, which need signatures over what cosign would not write.
type sigSigner struct {
	sv  signature.SignerVerifier
	key gate.PublicKey
}

// newSigSigner signs with a new ECDSA P-256 key and SHA-256, as cosign's generated keys do.
func newSigSigner(t testing.TB, keyName string) *sigSigner {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sv, err := signature.LoadECDSASignerVerifier(priv, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	return sigSignerWith(t, keyName, priv.Public(), sv)
}

// newSigSignerPureEd25519 signs with a new Ed25519 key without prehashing, as cosign did before it signed
// with Ed25519ph.
func newSigSignerPureEd25519(t testing.TB, keyName string) *sigSigner {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sv, err := signature.LoadED25519SignerVerifier(priv)
	if err != nil {
		t.Fatal(err)
	}
	return sigSignerWith(t, keyName, pub, sv)
}

func sigSignerWith(t testing.TB, keyName string, pub crypto.PublicKey, sv signature.SignerVerifier) *sigSigner {
	t.Helper()
	b, err := cryptoutils.MarshalPublicKeyToPEM(pub)
	if err != nil {
		t.Fatal(err)
	}
	k, err := gate.ParsePublicKey(keyName, b)
	if err != nil {
		t.Fatal(err)
	}
	return &sigSigner{sv: sv, key: k}
}

// sigPayload is a simple signing payload for dgst, padded with an optional field to at least size bytes.
func sigPayload(dgst string, size int) []byte {
	p := fmt.Sprintf(`{"critical":{"identity":{"docker-reference":"example.com/app"},"image":{"docker-manifest-digest":%q},"type":"cosign container image signature"},"optional":{"pad":"`, dgst)
	if n := size - len(p) - 3; n > 0 {
		p += strings.Repeat("x", n)
	}
	return []byte(p + `"}}`)
}

// simpleSigningLayer signs payload and describes it as a layer of a .sig manifest.
func (s *sigSigner) simpleSigningLayer(t testing.TB, payload []byte) v1.Descriptor {
	t.Helper()
	sig, err := s.sv.SignMessage(bytes.NewReader(payload))
	if err != nil {
		t.Fatal(err)
	}
	return v1.Descriptor{MediaType: sigSimpleSigning, Size: int64(len(payload)), Digest: sigHash(payload),
		Annotations: map[string]string{sigAnnotation: base64.StdEncoding.EncodeToString(sig)}}
}

// sigStatement is the in-toto statement cosign signs for dgst, with predicate type pred.
func sigStatement(dgst, pred string) []byte {
	return fmt.Appendf(nil, `{"_type":"https://in-toto.io/Statement/v1","subject":[{"digest":{"sha256":%q},"annotations":{}}],"predicateType":%q,"predicate":{}}`,
		strings.TrimPrefix(dgst, "sha256:"), pred)
}

// bundle signs statement in a DSSE envelope and wraps it in a sigstore bundle as cosign writes it.
func (s *sigSigner) bundle(t testing.TB, statement []byte) []byte {
	t.Helper()
	env, err := dsse.WrapSigner(s.sv, "application/vnd.in-toto+json").SignMessage(bytes.NewReader(statement))
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Appendf(nil, `{"mediaType":%q,"verificationMaterial":{"publicKey":{"hint":"aGludA=="}},"dsseEnvelope":%s}`, sigBundleMediaType, env)
}

// sigMemSource is a SignatureSource over maps. It stands for a source that serves what a registry would refuse
// to hold (bytes under another digest, oversize manifests) or fails on purpose, which go-containerregistry's
// registry cannot be made to do.
type sigMemSource struct {
	manifests map[string][]byte // by tag or digest
	blobs     map[string][]byte // by digest
	referrers map[string][]byte // by subject digest; nil: no referrers API (ErrNotFound)
	fail      string            // "manifest", "blob" or "referrers": that call fails, not with ErrNotFound
}

func newSigMemSource() *sigMemSource {
	return &sigMemSource{manifests: map[string][]byte{}, blobs: map[string][]byte{}}
}

var errSigMemSource = errors.New("source unavailable")

func (s *sigMemSource) Manifest(_ context.Context, ref string) ([]byte, string, error) {
	if s.fail == "manifest" {
		return nil, "", errSigMemSource
	}
	b, ok := s.manifests[ref]
	if !ok {
		return nil, "", gate.ErrNotFound
	}
	return b, string(types.OCIManifestSchema1), nil
}

func (s *sigMemSource) Blob(_ context.Context, dgst string, limit int64) ([]byte, error) {
	if s.fail == "blob" {
		return nil, errSigMemSource
	}
	b, ok := s.blobs[dgst]
	if !ok {
		return nil, gate.ErrNotFound
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("blob %s: more than %d bytes", dgst, limit)
	}
	return b, nil
}

func (s *sigMemSource) Referrers(_ context.Context, dgst string) ([]byte, error) {
	if s.fail == "referrers" {
		return nil, errSigMemSource
	}
	if s.referrers == nil {
		return nil, gate.ErrNotFound
	}
	if b, ok := s.referrers[dgst]; ok {
		return b, nil
	}
	return []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`), nil
}

// blob keeps b and describes it.
func (s *sigMemSource) blob(b []byte, mt types.MediaType) v1.Descriptor {
	d := v1.Descriptor{MediaType: mt, Size: int64(len(b)), Digest: sigHash(b)}
	s.blobs[d.Digest.String()] = b
	return d
}

// sigManifest is an image manifest with layers, as cosign writes signature manifests.
func sigManifest(t testing.TB, layers ...v1.Descriptor) []byte {
	t.Helper()
	b, err := json.Marshal(v1.Manifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1,
		Config: v1.Descriptor{MediaType: "application/vnd.oci.empty.v1+json", Size: 2, Digest: sigHash([]byte("{}"))},
		Layers: layers})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// referrer keeps a manifest with layers and describes it for a referrers index.
func (s *sigMemSource) referrer(t testing.TB, layers ...v1.Descriptor) v1.Descriptor {
	t.Helper()
	body := sigManifest(t, layers...)
	d := v1.Descriptor{MediaType: types.OCIManifestSchema1, Size: int64(len(body)), Digest: sigHash(body)}
	s.manifests[d.Digest.String()] = body
	return d
}

// sigIndex is a referrers index listing ds.
func sigIndex(t testing.TB, ds ...v1.Descriptor) []byte {
	t.Helper()
	b, err := json.Marshal(v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: ds})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sigRandomDigest(t testing.TB) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return sigHash(b).String()
}

// TestVerifySignatureLimits holds what VerifySignature refuses that cosign does not write: signatures of
// another digest, bytes that do not match their descriptors, oversize and too many signatures, attestations,
// malformed and hostile signature data, and failures of the source. Each refusal has a passing neighbour, so
// that it is the limit or the check that refuses.
func TestVerifySignatureLimits(t *testing.T) {
	s := newSigSigner(t, "ci")
	other := newSigSigner(t, "other")
	pureEd := newSigSignerPureEd25519(t, "ed")
	dgst := sigRandomDigest(t)
	otherDgst := sigRandomDigest(t)
	sigTagOf := sigTag(dgst) + ".sig"

	// legacy serves one .sig manifest holding layers.
	legacy := func(layers ...func(*sigMemSource) v1.Descriptor) *sigMemSource {
		src := newSigMemSource()
		var ds []v1.Descriptor
		for _, l := range layers {
			ds = append(ds, l(src))
		}
		src.manifests[sigTagOf] = sigManifest(t, ds...)
		return src
	}
	signed := func(by *sigSigner, payload []byte) func(*sigMemSource) v1.Descriptor {
		return func(src *sigMemSource) v1.Descriptor {
			d := by.simpleSigningLayer(t, payload)
			src.blobs[d.Digest.String()] = payload
			return d
		}
	}
	good := signed(s, sigPayload(dgst, 0))
	// withReferrers serves bundles, each in its own referrer manifest, through the referrers API.
	withReferrers := func(src *sigMemSource, extra []v1.Descriptor, bundles ...[]byte) *sigMemSource {
		if src == nil {
			src = newSigMemSource()
		}
		ds := slices.Clone(extra)
		for _, b := range bundles {
			ds = append(ds, src.referrer(t, src.blob(b, sigBundleMediaType)))
		}
		src.referrers = map[string][]byte{dgst: sigIndex(t, ds...)}
		return src
	}
	goodBundle := s.bundle(t, sigStatement(dgst, sigSignPredicate))
	// badLayers are n signatures by the key of another digest.
	badLayers := func(n int) []func(*sigMemSource) v1.Descriptor {
		var ls []func(*sigMemSource) v1.Descriptor
		for i := range n {
			ls = append(ls, signed(s, sigPayload(otherDgst, i)))
		}
		return ls
	}
	// nonSignatures are n referrers that hold no signature (an SBOM each).
	nonSignatures := func(src *sigMemSource, n int) []v1.Descriptor {
		var ds []v1.Descriptor
		for i := range n {
			ds = append(ds, src.referrer(t, src.blob(fmt.Appendf(nil, `{"sbom":%d}`, i), "application/spdx+json")))
		}
		return ds
	}

	type want struct {
		key     string
		checked int  // else a SignatureError with this many signatures checked
		other   bool // else an error that is not a SignatureError
	}
	tests := []struct {
		name string
		src  func() *sigMemSource
		keys []gate.PublicKey
		want want
	}{
		{"legacy", func() *sigMemSource { return legacy(good) }, nil, want{key: "ci"}},
		{"bundle", func() *sigMemSource { return withReferrers(nil, nil, goodBundle) }, nil, want{key: "ci"}},
		{"bundle in the referrers tag", func() *sigMemSource {
			src := newSigMemSource()
			src.manifests[sigTag(dgst)] = sigIndex(t, src.referrer(t, src.blob(goodBundle, sigBundleMediaType)))
			return src
		}, nil, want{key: "ci"}},
		{"no referrers API and no referrers tag", func() *sigMemSource { return newSigMemSource() }, nil, want{checked: 0}},
		{"second key", func() *sigMemSource { return legacy(signed(other, sigPayload(dgst, 0))) },
			[]gate.PublicKey{s.key, other.key}, want{key: "other"}},
		{"pure Ed25519, legacy", func() *sigMemSource { return legacy(signed(pureEd, sigPayload(dgst, 0))) },
			[]gate.PublicKey{pureEd.key}, want{key: "ed"}},
		{"pure Ed25519, bundle", func() *sigMemSource {
			return withReferrers(nil, nil, pureEd.bundle(t, sigStatement(dgst, sigSignPredicate)))
		}, []gate.PublicKey{pureEd.key}, want{key: "ed"}},

		// The signed content must name the digest.
		{"legacy payload of another digest", func() *sigMemSource { return legacy(signed(s, sigPayload(otherDgst, 0))) }, nil, want{checked: 1}},
		{"legacy payload of another type", func() *sigMemSource {
			return legacy(signed(s, bytes.Replace(sigPayload(dgst, 0), []byte("cosign container image signature"), []byte("atomic container signature"), 1)))
		}, nil, want{checked: 1}},
		{"legacy payload digest in upper case", func() *sigMemSource {
			return legacy(signed(s, sigPayload("sha256:"+strings.ToUpper(strings.TrimPrefix(dgst, "sha256:")), 0)))
		}, nil, want{checked: 1}},
		{"bundle of another digest", func() *sigMemSource {
			return withReferrers(nil, nil, s.bundle(t, sigStatement(otherDgst, sigSignPredicate)))
		}, nil, want{checked: 1}},
		{"bundle of an attestation", func() *sigMemSource {
			return withReferrers(nil, nil, s.bundle(t, sigStatement(dgst, "https://slsa.dev/provenance/v1")))
		}, nil, want{checked: 1}},
		{"bundle of another statement type", func() *sigMemSource {
			return withReferrers(nil, nil, s.bundle(t, bytes.Replace(sigStatement(dgst, sigSignPredicate), []byte("in-toto.io/Statement/v1"), []byte("example.com/Statement/v1"), 1)))
		}, nil, want{checked: 1}},
		{"bundle of another payload type", func() *sigMemSource {
			env, err := dsse.WrapSigner(s.sv, "text/plain").SignMessage(bytes.NewReader(sigStatement(dgst, sigSignPredicate)))
			if err != nil {
				t.Fatal(err)
			}
			return withReferrers(nil, nil, fmt.Appendf(nil, `{"mediaType":%q,"dsseEnvelope":%s}`, sigBundleMediaType, env))
		}, nil, want{checked: 1}},
		{"bundle envelope with two signatures", func() *sigMemSource {
			var b map[string]any
			if err := json.Unmarshal(goodBundle, &b); err != nil {
				t.Fatal(err)
			}
			env := b["dsseEnvelope"].(map[string]any)
			sigs := env["signatures"].([]any)
			env["signatures"] = append(sigs, sigs[0])
			two, err := json.Marshal(b)
			if err != nil {
				t.Fatal(err)
			}
			return withReferrers(nil, nil, two)
		}, nil, want{checked: 1}},
		{"bundle with another media type", func() *sigMemSource {
			return withReferrers(nil, nil, bytes.Replace(goodBundle, []byte(sigBundleMediaType), []byte("application/json"), 1))
		}, nil, want{checked: 1}},
		{"bundle by another key", func() *sigMemSource {
			return withReferrers(nil, nil, other.bundle(t, sigStatement(dgst, sigSignPredicate)))
		}, nil, want{checked: 1}},

		// Bytes are checked against their descriptors.
		{"payload served for another digest", func() *sigMemSource {
			return legacy(func(src *sigMemSource) v1.Descriptor {
				d := good(src)
				d.Digest = sigHash([]byte("something else"))
				src.blobs[d.Digest.String()] = sigPayload(dgst, 0)
				return d
			})
		}, nil, want{checked: 1}},
		{"payload size not the descriptor's", func() *sigMemSource {
			return legacy(func(src *sigMemSource) v1.Descriptor { d := good(src); d.Size++; return d })
		}, nil, want{checked: 1}},
		{"payload missing", func() *sigMemSource {
			return legacy(func(src *sigMemSource) v1.Descriptor { d := good(src); clear(src.blobs); return d })
		}, nil, want{checked: 1}},
		{"referrer manifest not matching its digest", func() *sigMemSource {
			src := withReferrers(nil, nil, goodBundle)
			var idx v1.IndexManifest
			if err := json.Unmarshal(src.referrers[dgst], &idx); err != nil {
				t.Fatal(err)
			}
			src.manifests[idx.Manifests[0].Digest.String()] = append(src.manifests[idx.Manifests[0].Digest.String()], ' ')
			return src
		}, nil, want{checked: 1}},

		// Sizes and counts are bounded.
		{"payload of 1 MiB", func() *sigMemSource { return legacy(signed(s, sigPayload(dgst, 1<<20))) }, nil, want{key: "ci"}},
		{"payload over 1 MiB", func() *sigMemSource { return legacy(signed(s, sigPayload(dgst, 1<<20+1))) }, nil, want{checked: 1}},
		{"signature manifest of 4 MiB", func() *sigMemSource {
			src := legacy(good)
			src.manifests[sigTagOf] = append(src.manifests[sigTagOf], bytes.Repeat([]byte(" "), 4<<20-len(src.manifests[sigTagOf]))...)
			return src
		}, nil, want{key: "ci"}},
		{"signature manifest over 4 MiB", func() *sigMemSource {
			src := legacy(good)
			src.manifests[sigTagOf] = append(src.manifests[sigTagOf], bytes.Repeat([]byte(" "), 4<<20+1-len(src.manifests[sigTagOf]))...)
			return src
		}, nil, want{checked: 1}},
		{"referrers index of 4 MiB", func() *sigMemSource {
			src := withReferrers(nil, nil, goodBundle)
			src.referrers[dgst] = append(src.referrers[dgst], bytes.Repeat([]byte(" "), 4<<20-len(src.referrers[dgst]))...)
			return src
		}, nil, want{key: "ci"}},
		{"referrers index over 4 MiB", func() *sigMemSource {
			src := withReferrers(nil, nil, goodBundle)
			src.referrers[dgst] = append(src.referrers[dgst], bytes.Repeat([]byte(" "), 4<<20+1-len(src.referrers[dgst]))...)
			return src
		}, nil, want{checked: 0}},
		{"the 32nd signature", func() *sigMemSource { return legacy(append(badLayers(31), good)...) }, nil, want{key: "ci"}},
		{"the 33rd signature", func() *sigMemSource { return legacy(append(badLayers(32), good)...) }, nil, want{checked: 32}},
		{"the 32nd referrer", func() *sigMemSource {
			src := newSigMemSource()
			return withReferrers(src, nonSignatures(src, 31), goodBundle)
		}, nil, want{key: "ci"}},
		{"the 33rd referrer", func() *sigMemSource {
			src := newSigMemSource()
			return withReferrers(src, nonSignatures(src, 32), goodBundle)
		}, nil, want{checked: 0}},
		{"attestations skipped by their hint, not counted", func() *sigMemSource {
			src := newSigMemSource()
			var ds []v1.Descriptor
			for range 40 {
				d := src.referrer(t, src.blob(s.bundle(t, sigStatement(dgst, "https://slsa.dev/provenance/v1")), sigBundleMediaType))
				d.Annotations = map[string]string{"dev.sigstore.bundle.predicateType": "https://slsa.dev/provenance/v1"}
				ds = append(ds, d)
			}
			return withReferrers(src, ds, goodBundle)
		}, nil, want{key: "ci"}},

		// Failures of the source are errors, not missing signatures.
		{"source fails on manifests", func() *sigMemSource { src := legacy(good); src.fail = "manifest"; return src }, nil, want{other: true}},
		{"source fails on blobs", func() *sigMemSource { src := legacy(good); src.fail = "blob"; return src }, nil, want{other: true}},
		{"source fails on referrers", func() *sigMemSource { src := newSigMemSource(); src.fail = "referrers"; return src }, nil, want{other: true}},
		{"source refuses an oversize blob", func() *sigMemSource {
			return legacy(func(src *sigMemSource) v1.Descriptor { d := good(src); d.Size--; return d })
		}, nil, want{other: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keys := tt.keys
			if keys == nil {
				keys = []gate.PublicKey{s.key}
			}
			key, err := gate.VerifySignature(t.Context(), tt.src(), dgst, keys)
			var se *gate.SignatureError
			switch {
			case tt.want.key != "":
				if err != nil || key != tt.want.key {
					t.Fatalf("VerifySignature = %q, %v; want %q", key, err, tt.want.key)
				}
			case tt.want.other:
				if err == nil || errors.As(err, &se) {
					t.Fatalf("VerifySignature = %q, %v; want an error that is not a SignatureError", key, err)
				}
			default:
				if !errors.As(err, &se) || key != "" {
					t.Fatalf("VerifySignature = %q, %v; want a SignatureError", key, err)
				}
				if se.Checked != tt.want.checked {
					t.Errorf("Checked = %d, want %d (%v; reasons %q)", se.Checked, tt.want.checked, err, se.Reasons)
				}
			}
		})
	}
}

// TestVerifySignatureHostile feeds malformed signature data to VerifySignature: each is refused with a
// SignatureError, none panics.
func TestVerifySignatureHostile(t *testing.T) {
	s := newSigSigner(t, "ci")
	dgst := sigRandomDigest(t)
	blob := []byte(`{"critical":{}}`)
	blobDigest := sigHash(blob).String()
	// A layer description as JSON, pointing to blob unless told otherwise.
	layer := func(mt, extra string) string {
		return fmt.Sprintf(`{"mediaType":%q,"size":%d,"digest":%q%s}`, mt, len(blob), blobDigest, extra)
	}
	signedStatement := func(stmt string) string {
		env, err := dsse.WrapSigner(s.sv, "application/vnd.in-toto+json").SignMessage(strings.NewReader(stmt))
		if err != nil {
			t.Fatal(err)
		}
		return string(env)
	}
	signedPayload := func(p string) string {
		sig, err := s.sv.SignMessage(strings.NewReader(p))
		if err != nil {
			t.Fatal(err)
		}
		return base64.StdEncoding.EncodeToString(sig)
	}
	manifests := []string{
		``, `null`, `[]`, `{`, `"x"`, `{"layers":null}`, `{"layers":[null]}`, `{"layers":{}}`,
		`{"layers":[{"mediaType":"` + sigSimpleSigning + `","digest":"sha256:zz"}]}`,
		`{"layers":[{"mediaType":"` + sigSimpleSigning + `","digest":"md5:00"}]}`,
		`{"layers":[` + layer(sigSimpleSigning, ``) + `]}`,
		`{"layers":[` + layer(sigSimpleSigning, `,"annotations":{"`+sigAnnotation+`":"%%%"}`) + `]}`,
		`{"layers":[` + layer(sigSimpleSigning, `,"annotations":{"`+sigAnnotation+`":""}`) + `]}`,
		`{"layers":[` + layer(sigSimpleSigning, `,"annotations":{"`+sigAnnotation+`":"AAAA"}`) + `]}`,
		`{"layers":[` + layer(sigSimpleSigning, `,"annotations":{"`+sigAnnotation+`":"`+signedPayload(string(blob))+`"}`) + `]}`,
		`{"layers":[` + strings.Replace(layer(sigSimpleSigning, ``), fmt.Sprint(len(blob)), "-1", 1) + `]}`,
		`{"layers":[` + strings.Replace(layer(sigSimpleSigning, ``), fmt.Sprint(len(blob)), "9223372036854775807", 1) + `]}`,
		`{"layers":[` + layer(sigBundleMediaType, ``) + `]}`,
		`{"layers":[` + layer(sigBundleMediaType+"x", ``) + `,` + layer("application/octet-stream", ``) + `]}`,
	}
	bundles := []string{
		``, `null`, `{}`, `{"mediaType":"` + sigBundleMediaType + `"}`,
		`{"mediaType":"` + sigBundleMediaType + `","dsseEnvelope":"x"}`,
		`{"mediaType":"` + sigBundleMediaType + `","dsseEnvelope":null}`,
		`{"mediaType":"` + sigBundleMediaType + `","dsseEnvelope":{"signatures":null}}`,
		`{"mediaType":"` + sigBundleMediaType + `","dsseEnvelope":{"payload":"%%","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"AAAA"}]}}`,
		`{"mediaType":"` + sigBundleMediaType + `","dsseEnvelope":{"payload":"","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"%%"}]}}`,
		`{"mediaType":"` + sigBundleMediaType + `","dsseEnvelope":` + signedStatement(`not json`) + `}`,
		`{"mediaType":"` + sigBundleMediaType + `","dsseEnvelope":` + signedStatement(`{}`) + `}`,
		`{"mediaType":"` + sigBundleMediaType + `","dsseEnvelope":` + signedStatement(`{"_type":"https://in-toto.io/Statement/v1","predicateType":"`+sigSignPredicate+`","subject":null}`) + `}`,
		`{"mediaType":"` + sigBundleMediaType + `","dsseEnvelope":` + signedStatement(`{"_type":"https://in-toto.io/Statement/v1","predicateType":"`+sigSignPredicate+`","subject":[{"digest":{"sha256":"zz"}},{"digest":null},{}]}`) + `}`,
		`{"mediaType":"` + sigBundleMediaType + `","messageSignature":{"messageDigest":{"algorithm":"SHA2_256","digest":"AAAA"},"signature":"AAAA"}}`,
	}
	indexes := []string{
		``, `null`, `{`, `{"manifests":null}`, `{"manifests":[null]}`, `{"manifests":[{}]}`,
		`{"manifests":[{"digest":"sha256:"}]}`, `{"manifests":[{"digest":"sha512:` + strings.Repeat("0", 128) + `"}]}`,
		`{"manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"` + dgst + `"}]}`,
		`{"manifests":[{"digest":"` + dgst + `"}]}`,
	}
	type input struct {
		name   string
		sigTag string // the .sig manifest
		index  string // the referrers answer
		blob   string // served for blobDigest
		bundle string // served under its digest
	}
	var inputs []input
	for i, m := range manifests {
		inputs = append(inputs, input{name: fmt.Sprintf("manifest %d", i), sigTag: m, blob: string(blob)})
	}
	for i, b := range bundles {
		// The bundle under its own digest, in a .sig manifest (where VerifySignature reads it like a referrer's).
		d := fmt.Sprintf(`{"mediaType":%q,"size":%d,"digest":%q}`, sigBundleMediaType, len(b), sigHash([]byte(b)))
		inputs = append(inputs, input{name: fmt.Sprintf("bundle %d", i), sigTag: `{"layers":[` + d + `]}`, bundle: b})
	}
	for i, idx := range indexes {
		inputs = append(inputs, input{name: fmt.Sprintf("index %d", i), index: idx})
	}
	for _, in := range inputs {
		t.Run(in.name, func(t *testing.T) {
			src := newSigMemSource()
			if in.sigTag != "" {
				src.manifests[sigTag(dgst)+".sig"] = []byte(in.sigTag)
				src.manifests[dgst] = []byte(in.sigTag) // for an index that lists the subject itself
			}
			if in.index != "" {
				src.referrers = map[string][]byte{dgst: []byte(in.index)}
			}
			// The blob is kept under blobDigest even when it is not its digest: a source that lies.
			src.blobs[blobDigest] = []byte(in.blob)
			src.blobs[sigHash([]byte(in.bundle)).String()] = []byte(in.bundle)
			key, err := gate.VerifySignature(t.Context(), src, dgst, []gate.PublicKey{s.key})
			var se *gate.SignatureError
			if key != "" || !errors.As(err, &se) {
				t.Fatalf("VerifySignature = %q, %v; want a SignatureError", key, err)
			}
		})
	}
}

// TestSignatureArguments: what VerifySignature and ParsePublicKey refuse of their caller.
func TestSignatureArguments(t *testing.T) {
	s := newSigSigner(t, "ci")
	dgst := sigRandomDigest(t)
	for _, tt := range []struct {
		name string
		dgst string
		keys []gate.PublicKey
	}{
		{"no keys", dgst, nil},
		{"a key not parsed", dgst, []gate.PublicKey{{Name: "raw"}}},
		{"a tag, not a digest", "latest", []gate.PublicKey{s.key}},
		{"a sha512 digest", "sha512:" + strings.Repeat("0", 128), []gate.PublicKey{s.key}},
		{"a short digest", "sha256:00", []gate.PublicKey{s.key}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := gate.VerifySignature(t.Context(), newSigMemSource(), tt.dgst, tt.keys)
			var se *gate.SignatureError
			if err == nil || errors.As(err, &se) {
				t.Fatalf("VerifySignature = %v; want an error that is not a SignatureError", err)
			}
		})
	}

	ecPEM := func(c elliptic.Curve) []byte {
		k, err := ecdsa.GenerateKey(c, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		b, err := cryptoutils.MarshalPublicKeyToPEM(k.Public())
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	rsa1024, err := cryptoutils.MarshalPublicKeyToPEM(rsaKey.Public())
	if err != nil {
		t.Fatal(err)
	}
	pkcs1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&rsaKey.PublicKey)})
	rsa2048Key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pkcs1RSA2048 := pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&rsa2048Key.PublicKey)})
	for _, tt := range []struct {
		name, key string
		pem       []byte
		ok        bool
	}{
		{"P-256", "k", ecPEM(elliptic.P256()), true},
		{"P-384", "k", ecPEM(elliptic.P384()), true},
		{"P-521", "k", ecPEM(elliptic.P521()), true},
		{"P-224", "k", ecPEM(elliptic.P224()), false},
		{"RSA 1024", "k", rsa1024, false},
		{"RSA 1024 in PKCS #1", "k", pkcs1, false},
		{"RSA 2048 in PKCS #1", "k", pkcs1RSA2048, true},
		{"no name", "", ecPEM(elliptic.P256()), false},
		{"not PEM", "k", []byte("ssh-ed25519 AAAA"), false},
		{"a private key", "k", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{0}}), false},
		{"garbage in the block", "k", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1, 2, 3}}), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			k, err := gate.ParsePublicKey(tt.key, tt.pem)
			if (err == nil) != tt.ok {
				t.Fatalf("ParsePublicKey = %v, want ok %v", err, tt.ok)
			}
			if tt.ok && k.Name != tt.key {
				t.Errorf("Name %q", k.Name)
			}
		})
	}
}

// FuzzVerifySignature: whatever the .sig manifest, the referrers index and the signed payload and statement
// (signed, so that their parsing is reached), VerifySignature does not panic, answers with a key only when the
// signed content names the digest, and otherwise with a SignatureError.
func FuzzVerifySignature(f *testing.F) {
	s := newSigSigner(f, "ci")
	const dgst = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
	f.Add([]byte(`{"layers":[]}`), []byte(`{"manifests":[]}`), sigPayload(dgst, 0), sigStatement(dgst, sigSignPredicate))
	f.Add([]byte(`{`), []byte(`{"manifests":[{"digest":"`+dgst+`"}]}`), []byte(`{"critical":{"image":{"docker-manifest-digest":"`+dgst+`"}}}`), []byte(`{"subject":[{"digest":{"sha256":"00"}}]}`))
	f.Fuzz(func(t *testing.T, sigRawManifest, rawIndex, payload, statement []byte) {
		check := func(src *sigMemSource, signed ...[]byte) {
			key, err := gate.VerifySignature(context.Background(), src, dgst, []gate.PublicKey{s.key})
			var se *gate.SignatureError
			if key != "" {
				hexDigest := []byte(strings.TrimPrefix(dgst, "sha256:"))
				if !slices.ContainsFunc(signed, func(b []byte) bool { return bytes.Contains(b, hexDigest) }) {
					t.Fatalf("verified, but no signed content names the digest")
				}
				return
			}
			if !errors.As(err, &se) {
				t.Fatalf("VerifySignature = %v; want a SignatureError", err)
			}
		}

		// Raw: the .sig manifest, any referrer manifest and the referrers index as given.
		raw := newSigMemSource()
		raw.manifests[sigTag(dgst)+".sig"] = sigRawManifest
		raw.referrers = map[string][]byte{dgst: rawIndex}
		var idx v1.IndexManifest
		if json.Unmarshal(rawIndex, &idx) == nil {
			for _, d := range idx.Manifests {
				raw.manifests[d.Digest.String()] = sigRawManifest
			}
		}
		check(raw)

		// Signed: payload as a simple signing layer, statement in a bundle referrer, both signed by the key.
		if len(payload) == 0 || len(statement) == 0 || len(payload) > 1<<16 || len(statement) > 1<<16 {
			return
		}
		src := newSigMemSource()
		l := s.simpleSigningLayer(t, payload)
		src.blobs[l.Digest.String()] = payload
		src.manifests[sigTag(dgst)+".sig"] = sigManifest(t, l)
		src.referrers = map[string][]byte{dgst: sigIndex(t, src.referrer(t, src.blob(s.bundle(t, statement), sigBundleMediaType)))}
		check(src, payload, statement)
	})
}
