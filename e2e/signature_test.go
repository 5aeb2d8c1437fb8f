package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/crane"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// sigCosign runs the real cosign binary with a home, Docker config and sigstore cache of its own, trusting the
// CA in caFile, and an empty key password.
type sigCosign struct {
	bin, home, caFile string
}

// run runs cosign with args and returns its combined output.
func (c sigCosign) run(ctx context.Context, args ...string) (string, error) {
	env := []string{
		"HOME=" + c.home,
		"DOCKER_CONFIG=" + filepath.Join(c.home, ".docker"),
		"TUF_ROOT=" + filepath.Join(c.home, ".sigstore"),
		"SSL_CERT_FILE=" + c.caFile,
		"COSIGN_PASSWORD=",
		"COSIGN_EXPERIMENTAL=",
	}
	return Run(ctx, 30*time.Second, env, c.bin, args...)
}

// keyPair makes a key pair dir/name.key, dir/name.pub with `cosign generate-key-pair` and returns the key's path.
func (c sigCosign) keyPair(ctx context.Context, dir, name string) (string, error) {
	prefix := filepath.Join(dir, name)
	if _, err := c.run(ctx, "generate-key-pair", "--output-key-prefix", prefix); err != nil {
		return "", err
	}
	return prefix + ".key", nil
}

// sign signs ref (host/repo@digest) with key, as a simple signing payload under the .sig tag (legacy) or as a
// sigstore bundle referrer (cosign 3's default).
func (c sigCosign) sign(ctx context.Context, key, ref string, legacy bool) (string, error) {
	return c.run(ctx, "sign", "--key", key, "--use-signing-config=false", "--tlog-upload=false", "--yes",
		fmt.Sprintf("--new-bundle-format=%t", !legacy), ref)
}

// TestGateSignatures signs images in the upstream with the real cosign, in both of the forms it writes, and
// pulls them through pullgate with crane under a policy that asks a signature by the key "release" of the
// repositories local/signed/**: a signature by that key is served, an image without one or signed by another
// key is refused with 412 and a message that says why, and a repository outside the rule is served unsigned.
func TestGateSignatures(t *testing.T) {
	cosignBin := requireTool(t, "cosign")
	requireTool(t, RegistryBinary)
	pullgateBinary(t)
	ctx := ctxFor(t, 2*time.Minute)

	dir := t.TempDir()
	keysDir := filepath.Join(dir, "keys")
	if err := os.MkdirAll(keysDir, 0o700); err != nil {
		t.Fatal(err)
	}
	// The CA is made by the environment; cosign only needs it to sign, after the environment starts.
	cos := sigCosign{bin: cosignBin, home: filepath.Join(dir, "cosign-home")}
	if err := os.MkdirAll(cos.home, 0o700); err != nil {
		t.Fatal(err)
	}
	releaseKey, err := cos.keyPair(ctx, keysDir, "release")
	if err != nil {
		t.Fatal(err)
	}
	otherKey, err := cos.keyPair(ctx, keysDir, "other")
	if err != nil {
		t.Fatal(err)
	}
	policy := filepath.Join(dir, "policy.yaml")
	policyText := `severity: None
keys:
  release: keys/release.pub
rules:
  - match: ["local/signed/**"]
    signed_by: [release]
`
	if err := os.WriteFile(policy, []byte(policyText), 0o600); err != nil {
		t.Fatal(err)
	}

	e := testEnv(t, envOptions{noSeed: true, pgEnv: []string{"PULLGATE_GATE_POLICY=" + policy}})
	cos.caFile = e.caFile()
	rt := e.transport()
	pushOpts := []remote.Option{remote.WithContext(ctx), remote.WithTransport(rt)}

	tests := []struct {
		name   string
		repo   string // under the upstream and under pullgate's default upstream "local"
		key    string // signing key; empty: unsigned
		legacy bool   // the .sig tag rather than a bundle referrer
		want   int    // 200: served
		says   []string
	}{
		{name: "signed by release, .sig tag", repo: "signed/legacy", key: releaseKey, legacy: true, want: http.StatusOK},
		{name: "signed by release, bundle", repo: "signed/bundle", key: releaseKey, want: http.StatusOK},
		{name: "unsigned", repo: "signed/unsigned", want: http.StatusPreconditionFailed,
			says: []string{"no signature", "release"}},
		{name: "signed by another key, .sig tag", repo: "signed/other-legacy", key: otherKey, legacy: true,
			want: http.StatusPreconditionFailed, says: []string{"release", "1 signature checked"}},
		{name: "signed by another key, bundle", repo: "signed/other-bundle", key: otherKey,
			want: http.StatusPreconditionFailed, says: []string{"release", "1 signature checked"}},
		{name: "outside the rule, unsigned", repo: "open/unsigned", want: http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img, err := random.Image(2<<10, 2)
			if err != nil {
				t.Fatal(err)
			}
			im, err := PushImage(e.upstream.Addr, tt.repo, "v1", img, pushOpts...)
			if err != nil {
				t.Fatal(err)
			}
			if tt.key != "" {
				if out, err := cos.sign(ctx, tt.key, im.DigestRef(e.upstream.Addr), tt.legacy); err != nil {
					t.Fatalf("cosign sign: %v", err)
				} else {
					t.Logf("cosign sign: %s", strings.TrimSpace(out))
				}
				// The case tests the form it names: cosign wrote the .sig tag, or only the referrers tag.
				tags, err := crane.ListTags(e.upstream.Addr+"/"+tt.repo, crane.WithContext(ctx), crane.WithTransport(rt))
				if err != nil {
					t.Fatal(err)
				}
				fallback := strings.Replace(im.Digest.String(), ":", "-", 1)
				if got, want := slices.Contains(tags, fallback+".sig"), tt.legacy; got != want {
					t.Fatalf("upstream tags %v: %s.sig there: %t, want %t", tags, fallback, got, want)
				}
				if got, want := slices.Contains(tags, fallback), !tt.legacy; got != want {
					t.Fatalf("upstream tags %v: referrers tag %s there: %t, want %t", tags, fallback, got, want)
				}
			}
			for _, ref := range []string{im.Ref(e.pg.Addr), im.DigestRef(e.pg.Addr)} {
				pulled, err := crane.Pull(ref, crane.WithContext(ctx), crane.WithTransport(rt))
				if err == nil {
					err = validate.Image(pulled)
				}
				if tt.want == http.StatusOK {
					if err != nil {
						t.Fatalf("crane pull %s: %v", ref, err)
					}
					if d, err := pulled.Digest(); err != nil || d != im.Digest {
						t.Fatalf("crane pull %s: digest %v (%v), pushed %s", ref, d, err, im.Digest)
					}
					continue
				}
				var te *transport.Error
				if !errors.As(err, &te) || te.StatusCode != tt.want {
					t.Fatalf("crane pull %s: %v, want status %d", ref, err, tt.want)
				}
				for _, s := range tt.says {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("crane pull %s: %q does not say %q", ref, err, s)
					}
				}
				t.Logf("crane pull %s: %v", ref, err)
			}
		})
	}
}
