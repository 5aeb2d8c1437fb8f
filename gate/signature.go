package gate

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/dsse"
	"github.com/sigstore/sigstore/pkg/signature/options"
	"github.com/sigstore/sigstore/pkg/signature/payload"
)

// ErrNotFound is what a SignatureSource returns (or wraps) for a manifest, blob or referrers answer that does not
// exist.
var ErrNotFound = errors.New("not found")

// SignatureSource fetches, from the repository of the artifact being judged, through pullgate's cache, what
// signature verification needs. The proxy implements it.
type SignatureSource interface {
	// Manifest returns the manifest ref (a tag such as "sha256-<hex>.sig", or a digest) of the repository, and
	// its media type.
	Manifest(ctx context.Context, ref string) (body []byte, mediaType string, err error)
	// Blob returns the blob dgst of the repository; more than max bytes is an error.
	Blob(ctx context.Context, dgst string, max int64) ([]byte, error)
	// Referrers returns the OCI image index JSON listing the referrers of dgst (an empty index when none). A
	// source that cannot ask a referrers API returns ErrNotFound: VerifySignature then reads the referrers tag
	// ("sha256-<hex>") itself.
	Referrers(ctx context.Context, dgst string) ([]byte, error)
}

// Bounds on what one verification reads, so that a hostile registry costs a bounded amount of work.
const (
	// maxSignatureManifest is the largest signature manifest or referrers index read.
	maxSignatureManifest = 4 << 20
	// maxSignaturePayload is the largest simple signing payload or sigstore bundle read.
	maxSignaturePayload = 1 << 20
	// maxSignatures is the most signatures (simple signing layers, bundles, unreadable signature manifests)
	// examined for one digest.
	maxSignatures = 32
	// maxReferrers is the most referrer manifests fetched for one digest.
	maxReferrers = 32
)

// What cosign writes, as its specifications (specs/SIGNATURE_SPEC.md, specs/BUNDLE_SPEC.md) name it.
const (
	simpleSigningMediaType = "application/vnd.dev.cosign.simplesigning.v1+json"
	signatureAnnotation    = "dev.cosignproject.cosign/signature"
	// bundleMediaTypePrefix starts every sigstore bundle media type ("application/vnd.dev.sigstore.bundle.v0.3+json").
	bundleMediaTypePrefix = "application/vnd.dev.sigstore.bundle"
	// cosignSignPredicate is the in-toto predicate type of the statement cosign signs in a bundle for
	// "cosign sign"; attestations ("cosign attest") carry other predicate types and are not signatures.
	cosignSignPredicate = "https://sigstore.dev/cosign/sign/v1"
	// predicateTypeAnnotation is the (unsigned) hint cosign puts on a bundle's referrer manifest.
	predicateTypeAnnotation = "dev.sigstore.bundle.predicateType"
	// cosignSigArtifactType is the artifact type of a simple signing manifest attached as a referrer
	// (cosign's experimental "--registry-referrers-mode=oci-1-1").
	cosignSigArtifactType = "application/vnd.dev.cosign.artifact.sig.v1+json"
	emptyArtifactType     = "application/vnd.oci.empty.v1+json"
)

// PublicKey is a named key that signatures are verified with. Make one with ParsePublicKey.
type PublicKey struct {
	// Name is how the policy names the key; VerifySignature returns it and error messages show it.
	Name string

	// verifiers are the signature schemes the key may sign with: one, or for Ed25519 two (cosign signs with
	// Ed25519ph by default, older cosign with pure Ed25519).
	verifiers []signature.Verifier
}

// ParsePublicKey reads a PEM public key as cosign writes it (cosign.pub: a PKIX "PUBLIC KEY" block; a PKCS #1
// "RSA PUBLIC KEY" block is accepted too): ECDSA P-256, P-384 or P-521, RSA 2048, 3072 or 4096 bits, or Ed25519.
// Each is verified with the hash cosign signs with for it (SHA-256, SHA-384, SHA-512 by curve; SHA-256 for RSA
// PKCS #1 v1.5).
func ParsePublicKey(name string, pemBytes []byte) (PublicKey, error) {
	if name == "" {
		return PublicKey{}, errors.New("public key: empty name")
	}
	pub, err := cryptoutils.UnmarshalPEMToPublicKey(pemBytes)
	if err != nil {
		return PublicKey{}, fmt.Errorf("public key %s: %w", name, err)
	}
	var loads [][]signature.LoadOption
	switch pub.(type) {
	case *ecdsa.PublicKey, *rsa.PublicKey:
		loads = [][]signature.LoadOption{nil}
	case ed25519.PublicKey:
		loads = [][]signature.LoadOption{{options.WithED25519ph()}, nil}
	default:
		return PublicKey{}, fmt.Errorf("public key %s: unsupported key type %T", name, pub)
	}
	k := PublicKey{Name: name}
	for _, opts := range loads {
		v, err := signature.LoadDefaultVerifier(pub, opts...)
		if err != nil {
			return PublicKey{}, fmt.Errorf("public key %s: %w", name, err)
		}
		k.verifiers = append(k.verifiers, v)
	}
	return k, nil
}

// SignatureError says that no signature of a digest verified with the keys asked for. Its message is fit for a
// client; Reasons, for the log, say why each signature examined was refused.
type SignatureError struct {
	// Digest is the manifest digest that was judged.
	Digest string
	// Keys names the keys a signature was looked for by.
	Keys []string
	// Checked is how many signatures were examined; 0 means none was found.
	Checked int
	// Reasons say why each signature examined was refused, and what was left unexamined.
	Reasons []string
}

// Error says what was looked for and how many signatures were checked: "no signature found for sha256:…", or
// "no valid signature by keys a, b for sha256:… (2 signatures checked)".
func (e *SignatureError) Error() string {
	if e.Checked == 0 {
		return "no signature found for " + e.Digest
	}
	keys, sigs := "keys", "signatures"
	if len(e.Keys) == 1 {
		keys = "key"
	}
	if e.Checked == 1 {
		sigs = "signature"
	}
	return fmt.Sprintf("no valid signature by %s %s for %s (%d %s checked)",
		keys, strings.Join(e.Keys, ", "), e.Digest, e.Checked, sigs)
}

// VerifySignature looks for a signature of the manifest digest dgst ("sha256:<hex>") by any of keys, in every
// form cosign writes, and returns the name of the key whose signature verified. The forms, in the order read:
//
//   - the "sha256-<hex>.sig" tag: an image manifest whose simple signing layers carry the signature in the
//     "dev.cosignproject.cosign/signature" annotation ("cosign sign --new-bundle-format=false");
//   - the referrers of dgst (from src.Referrers, or the "sha256-<hex>" referrers tag when src has no referrers
//     API): image manifests whose layer is a sigstore bundle holding a DSSE envelope of an in-toto statement
//     with predicate type "https://sigstore.dev/cosign/sign/v1" ("cosign sign", the default of cosign 3), or
//     whose layers are simple signing layers (cosign's experimental OCI 1.1 mode).
//
// A signature counts only if the signed content names exactly dgst: critical.image.docker-manifest-digest of a
// simple signing payload, the sha256 digest of a subject of a bundle's statement. The
// docker-reference a simple signing payload names is not checked, nor the repository a bundle was made for:
// pullgate serves images under other names than their signers used. Every blob is checked against its
// descriptor's size and sha256 digest, every manifest fetched by digest against that digest. Bundles are
// verified offline, with the key alone: no transparency log entry or timestamp is required or checked.
//
// When no signature verifies it returns a *SignatureError. An error of src other than ErrNotFound is returned
// as it is (wrapped), not as a missing signature: the caller decides. Hostile or malformed signature data is a
// refused signature, never a panic; what one call reads is bounded (4 MiB per manifest or index, 1 MiB per
// payload or bundle, 32 signatures, 32 referrers).
func VerifySignature(ctx context.Context, src SignatureSource, dgst string, keys []PublicKey) (string, error) {
	h, err := v1.NewHash(dgst)
	if err != nil || h.Algorithm != "sha256" {
		return "", fmt.Errorf("verify signature: %q is not a sha256 digest", dgst)
	}
	if len(keys) == 0 {
		return "", errors.New("verify signature: no keys")
	}
	names := make([]string, len(keys))
	for i, k := range keys {
		if len(k.verifiers) == 0 {
			return "", fmt.Errorf("verify signature: key %q was not made by ParsePublicKey", k.Name)
		}
		names[i] = k.Name
	}
	raw, _ := hex.DecodeString(h.Hex) // v1.NewHash checked it is hex
	c := &checker{src: src, digest: h.String(), raw: raw, keys: keys}
	tag := h.Algorithm + "-" + h.Hex

	signer, err := c.signatureTag(ctx, tag+".sig")
	if signer != "" || err != nil {
		return signer, err
	}
	signer, err = c.referrers(ctx, tag)
	if signer != "" || err != nil {
		return signer, err
	}
	return "", &SignatureError{Digest: c.digest, Keys: names, Checked: c.checked, Reasons: c.reasons}
}

// checker is one verification's state: what was examined and why it was refused.
type checker struct {
	src    SignatureSource
	digest string // "sha256:<hex>"
	raw    []byte // the digest's 32 bytes
	keys   []PublicKey

	checked int
	reasons []string
}

// refuse counts one examined signature as refused, for reason.
func (c *checker) refuse(format string, args ...any) {
	c.checked++
	c.note(format, args...)
}

// note keeps a reason, without counting a signature.
func (c *checker) note(format string, args ...any) {
	if len(c.reasons) < maxSignatures+maxReferrers {
		c.reasons = append(c.reasons, fmt.Sprintf(format, args...))
	}
}

// full says whether as many signatures as may be examined have been.
func (c *checker) full() bool { return c.checked >= maxSignatures }

// signatureTag reads the simple signing manifest under tag.
func (c *checker) signatureTag(ctx context.Context, tag string) (string, error) {
	body, _, err := c.src.Manifest(ctx, tag)
	if errors.Is(err, ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("signature tag %s: %w", tag, err)
	}
	return c.signatureManifest(ctx, "tag "+tag, body)
}

// referrers reads the signature manifests among the referrers of the digest; fallbackTag is the referrers tag.
func (c *checker) referrers(ctx context.Context, fallbackTag string) (string, error) {
	where := "referrers"
	body, err := c.src.Referrers(ctx, c.digest)
	if errors.Is(err, ErrNotFound) {
		where = "referrers tag " + fallbackTag
		body, _, err = c.src.Manifest(ctx, fallbackTag)
		if errors.Is(err, ErrNotFound) {
			return "", nil
		}
	}
	if err != nil {
		return "", fmt.Errorf("%s of %s: %w", where, c.digest, err)
	}
	if len(body) > maxSignatureManifest {
		c.note("%s: index of %d bytes is over the limit", where, len(body))
		return "", nil
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(body))
	if err != nil {
		c.note("%s: %v", where, err)
		return "", nil
	}
	fetched := 0
	for _, d := range idx.Manifests {
		if !maybeSignatureManifest(d) {
			continue
		}
		if fetched == maxReferrers || c.full() {
			c.note("%s: more referrers than examined", where)
			break
		}
		fetched++
		ref := d.Digest.String()
		if d.Digest.Algorithm != "sha256" {
			c.refuse("referrer %s: not a sha256 digest", ref)
			continue
		}
		mb, _, err := c.src.Manifest(ctx, ref)
		if errors.Is(err, ErrNotFound) {
			c.note("referrer %s: not found", ref)
			continue
		}
		if err != nil {
			return "", fmt.Errorf("referrer %s of %s: %w", ref, c.digest, err)
		}
		if sum := sha256.Sum256(mb); hex.EncodeToString(sum[:]) != d.Digest.Hex {
			c.refuse("referrer %s: manifest does not match its digest", ref)
			continue
		}
		signer, err := c.signatureManifest(ctx, "referrer "+ref, mb)
		if signer != "" || err != nil {
			return signer, err
		}
	}
	return "", nil
}

// maybeSignatureManifest says whether a referrer may hold a signature, by what the index says of it: an image
// manifest whose artifact type, if told, is a signature's (registries disagree on whether the artifact type
// of a manifest with an empty config is its own or the config's), and that does not say it is an attestation.
// These are hints: skipping on them can only lose a signature, never accept one.
func maybeSignatureManifest(d v1.Descriptor) bool {
	switch d.MediaType {
	case "", types.OCIManifestSchema1, types.DockerManifestSchema2:
	default:
		return false
	}
	switch {
	case d.ArtifactType == "", d.ArtifactType == cosignSigArtifactType, d.ArtifactType == emptyArtifactType,
		strings.HasPrefix(d.ArtifactType, bundleMediaTypePrefix):
	default:
		return false
	}
	if p, ok := d.Annotations[predicateTypeAnnotation]; ok && p != cosignSignPredicate {
		return false
	}
	return true
}

// signatureManifest examines the signature layers of a signature manifest (a .sig tag's or a referrer's).
func (c *checker) signatureManifest(ctx context.Context, where string, body []byte) (string, error) {
	if len(body) > maxSignatureManifest {
		c.refuse("%s: manifest of %d bytes is over the limit", where, len(body))
		return "", nil
	}
	m, err := v1.ParseManifest(bytes.NewReader(body))
	if err != nil {
		c.refuse("%s: %v", where, err)
		return "", nil
	}
	for i, l := range m.Layers {
		var kind string
		switch {
		case l.MediaType == simpleSigningMediaType:
			kind = "simple signing"
		case strings.HasPrefix(string(l.MediaType), bundleMediaTypePrefix):
			kind = "bundle"
		default:
			continue
		}
		if c.full() {
			c.note("%s: more signatures than examined", where)
			return "", nil
		}
		at := fmt.Sprintf("%s layer %d (%s)", where, i, kind)
		var signer string
		if kind == "bundle" {
			signer, err = c.bundle(ctx, at, l)
		} else {
			signer, err = c.simpleSigning(ctx, at, l)
		}
		if signer != "" || err != nil {
			return signer, err
		}
	}
	return "", nil
}

// blob fetches the blob d and checks it against d; nil, nil when it is refused (the reason is kept).
func (c *checker) blob(ctx context.Context, at string, d v1.Descriptor) ([]byte, error) {
	if d.Digest.Algorithm != "sha256" {
		c.refuse("%s: blob digest %s is not sha256", at, d.Digest)
		return nil, nil
	}
	if d.Size <= 0 || d.Size > maxSignaturePayload {
		c.refuse("%s: blob size %d is out of bounds (1 to %d bytes)", at, d.Size, maxSignaturePayload)
		return nil, nil
	}
	b, err := c.src.Blob(ctx, d.Digest.String(), d.Size)
	if errors.Is(err, ErrNotFound) {
		c.refuse("%s: blob %s not found", at, d.Digest)
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("signature blob %s of %s: %w", d.Digest, c.digest, err)
	}
	if sum := sha256.Sum256(b); int64(len(b)) != d.Size || hex.EncodeToString(sum[:]) != d.Digest.Hex {
		c.refuse("%s: blob does not match its descriptor", at)
		return nil, nil
	}
	return b, nil
}

// simpleSigning examines one simple signing layer.
func (c *checker) simpleSigning(ctx context.Context, at string, l v1.Descriptor) (string, error) {
	sig, err := base64.StdEncoding.DecodeString(l.Annotations[signatureAnnotation])
	if err != nil || len(sig) == 0 {
		c.refuse("%s: no readable %s annotation", at, signatureAnnotation)
		return "", nil
	}
	body, err := c.blob(ctx, at, l)
	if body == nil || err != nil {
		return "", err
	}
	signer := ""
	for _, k := range c.keys {
		for _, v := range k.verifiers {
			if v.VerifySignature(bytes.NewReader(sig), bytes.NewReader(body)) == nil {
				signer = k.Name
				break
			}
		}
		if signer != "" {
			break
		}
	}
	if signer == "" {
		c.refuse("%s: signature does not verify with any key", at)
		return "", nil
	}
	var p payload.SimpleContainerImage
	if err := json.Unmarshal(body, &p); err != nil {
		c.refuse("%s: payload signed by %s: %v", at, signer, err)
		return "", nil
	}
	if p.Critical.Type != payload.CosignSignatureType {
		c.refuse("%s: payload signed by %s is of type %q", at, signer, p.Critical.Type)
		return "", nil
	}
	if got := p.Critical.Image.DockerManifestDigest; got != c.digest {
		c.refuse("%s: payload signed by %s names %q", at, signer, got)
		return "", nil
	}
	return signer, nil
}

// bundle examines one sigstore bundle layer. Only what a key-signed "cosign sign" bundle needs is read: its DSSE
// envelope, verified with sigstore's DSSE verifier (the key hint and any certificate, transparency log entry or
// timestamp in the bundle are not used), and the in-toto statement it signs.
func (c *checker) bundle(ctx context.Context, at string, l v1.Descriptor) (string, error) {
	body, err := c.blob(ctx, at, l)
	if body == nil || err != nil {
		return "", err
	}
	var b sigstoreBundle
	if err := json.Unmarshal(body, &b); err != nil {
		c.refuse("%s: %v", at, err)
		return "", nil
	}
	if !strings.HasPrefix(b.MediaType, bundleMediaTypePrefix) {
		c.refuse("%s: bundle media type %q", at, b.MediaType)
		return "", nil
	}
	if len(b.DSSEEnvelope) == 0 {
		c.refuse("%s: bundle holds no DSSE envelope", at)
		return "", nil
	}
	var env struct {
		Signatures []json.RawMessage `json:"signatures"`
	}
	if err := json.Unmarshal(b.DSSEEnvelope, &env); err != nil || len(env.Signatures) != 1 {
		// A sigstore bundle's envelope holds exactly one signature.
		c.refuse("%s: bundle envelope does not hold exactly one signature", at)
		return "", nil
	}
	signer := ""
	var stmt []byte
	for _, k := range c.keys {
		for _, v := range k.verifiers {
			var decoded []byte
			dv := dsse.WrapVerifier(v, dsse.WithExpectedPayloadType(inTotoPayloadType), dsse.WithDecodedPayload(&decoded))
			if dv.VerifySignature(bytes.NewReader(b.DSSEEnvelope), nil) == nil {
				signer, stmt = k.Name, decoded
				break
			}
		}
		if signer != "" {
			break
		}
	}
	if signer == "" {
		c.refuse("%s: bundle signature does not verify with any key", at)
		return "", nil
	}
	var st inTotoStatement
	if err := json.Unmarshal(stmt, &st); err != nil {
		c.refuse("%s: statement signed by %s: %v", at, signer, err)
		return "", nil
	}
	if !inTotoStatementTypes[st.Type] {
		c.refuse("%s: statement signed by %s is of type %q", at, signer, st.Type)
		return "", nil
	}
	if st.PredicateType != cosignSignPredicate {
		c.refuse("%s: statement signed by %s is an attestation (%q), not a signature", at, signer, st.PredicateType)
		return "", nil
	}
	for _, sub := range st.Subject {
		if d, err := hex.DecodeString(sub.Digest["sha256"]); err == nil && bytes.Equal(d, c.raw) {
			return signer, nil
		}
	}
	c.refuse("%s: statement signed by %s does not name %s", at, signer, c.digest)
	return "", nil
}

// inTotoPayloadType is the DSSE payload type of an in-toto statement.
const inTotoPayloadType = "application/vnd.in-toto+json"

// inTotoStatementTypes are the in-toto statement types read.
var inTotoStatementTypes = map[string]bool{
	"https://in-toto.io/Statement/v1":   true,
	"https://in-toto.io/Statement/v0.1": true,
}

// sigstoreBundle is what is read of a sigstore bundle (protobuf-specs' Bundle, in its JSON form).
type sigstoreBundle struct {
	MediaType    string          `json:"mediaType"`
	DSSEEnvelope json.RawMessage `json:"dsseEnvelope"`
}

// inTotoStatement is what is read of an in-toto statement.
type inTotoStatement struct {
	Type    string `json:"_type"`
	Subject []struct {
		Digest map[string]string `json:"digest"`
	} `json:"subject"`
	PredicateType string `json:"predicateType"`
}
