package scannertest

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"net/http"
	"strings"

	"github.com/pullgate/pullgate/gate"
)

const (
	maxManifest = 4 << 20
	maxConfig   = 8 << 20
)

// manifestAccept is the Accept header of a manifest pull: the types a scanner reads.
var manifestAccept = strings.Join([]string{
	MediaTypeOCIManifest,
	MediaTypeDockerManifest,
	"application/vnd.oci.image.index.v1+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
}, ", ")

// pullArtifact pulls the manifest req names by digest and, when it has one, its config blob, sending
// req.Authorization as it is, and checks both against their digests.
func (s *Scanner) pullArtifact(ctx context.Context, req gate.ScanRequest) error {
	base := strings.TrimSuffix(req.RegistryURL, "/") + "/v2/" + req.Repository
	manifest, err := s.fetch(ctx, base+"/manifests/"+req.Digest, manifestAccept, req.Authorization, req.Digest, maxManifest)
	if err != nil {
		return fmt.Errorf("pulling manifest %s: %w", req.Digest, err)
	}
	var m struct {
		Config *struct {
			Digest string `json:"digest"`
		} `json:"config"`
	}
	if err := json.Unmarshal(manifest, &m); err != nil {
		return fmt.Errorf("reading manifest %s: %w", req.Digest, err)
	}
	if m.Config == nil || m.Config.Digest == "" {
		return nil // an index: nothing more to check
	}
	if _, err := s.fetch(ctx, base+"/blobs/"+m.Config.Digest, "*/*", req.Authorization, m.Config.Digest, maxConfig); err != nil {
		return fmt.Errorf("pulling config %s: %w", m.Config.Digest, err)
	}
	return nil
}

// fetch GETs url and checks that the body has the given digest.
func (s *Scanner) fetch(ctx context.Context, url, accept, authorization, digest string, limit int64) ([]byte, error) {
	h, want, err := hasher(digest)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", accept)
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	resp, err := s.pull.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("registry answered %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(body)) > limit {
		return nil, fmt.Errorf("larger than %d bytes", limit)
	}
	h.Write(body)
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return nil, fmt.Errorf("content does not match its digest (got %s)", got)
	}
	return body, nil
}

func hasher(digest string) (hash.Hash, string, error) {
	alg, hexPart, _ := strings.Cut(digest, ":")
	switch alg {
	case "sha256":
		return sha256.New(), hexPart, nil
	case "sha512":
		return sha512.New(), hexPart, nil
	}
	return nil, "", fmt.Errorf("unsupported digest %q", digest)
}
