package upstream

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/pullgate/pullgate/names"
)

// AuthFile is an authn.Keychain backed by a .dockerconfigjson file: the format of a Kubernetes
// kubernetes.io/dockerconfigjson Secret (and of ~/.docker/config.json without credential helpers).
// The file is read again, at most every 2 seconds and only when credentials are asked for, so a
// rotated Secret takes effect without a restart. A file that cannot be read or parsed on
// reload keeps the last good credentials in use; Err reports the problem until a good file is read,
// and the OnReload hook hears of every reload attempt. It is safe for concurrent use.
type AuthFile struct {
	// OnReload, when not nil, is called after every attempt to read the file again (at most every 2
	// seconds, when credentials are asked for): with nil when the file was read and parsed (or is
	// unchanged and good), else with the error that Err reports, so that the caller can log and count
	// failed reloads. It is called without locks held, from the goroutine that resolves credentials;
	// it must be quick and safe for concurrent use. Set it before the AuthFile is used. Nil means no
	// hook.
	OnReload func(err error)

	path string
	now  func() time.Time

	mu      sync.Mutex
	auths   map[string]authn.AuthConfig // by normalised registry host
	raw     []byte                      // the content last read, good or bad
	checked time.Time
	err     error
}

var _ authn.Keychain = (*AuthFile)(nil)

const (
	authFileCheckInterval = 2 * time.Second
	maxAuthFileSize       = 4 << 20
)

// NewAuthFile reads and parses the credentials file at path. now is the clock for the reload
// interval; nil means time.Now. A file that cannot be read or parsed is an error.
func NewAuthFile(path string, now func() time.Time) (*AuthFile, error) {
	if now == nil {
		now = time.Now
	}
	f := &AuthFile{path: path, now: now}
	data, err := readLimited(path)
	if err != nil {
		return nil, fmt.Errorf("credentials file: %w", err)
	}
	auths, err := ParseDockerConfig(data)
	if err != nil {
		return nil, fmt.Errorf("credentials file %s: %w", path, err)
	}
	f.auths, f.raw, f.checked = auths, data, now()
	return f, nil
}

// Resolve returns the credentials for the registry host of r (see ParseDockerConfig for how hosts
// match), or authn.Anonymous when the file has none.
func (f *AuthFile) Resolve(r authn.Resource) (authn.Authenticator, error) {
	host, err := normalizeRegistry(r.RegistryStr())
	if err != nil {
		return authn.Anonymous, nil
	}
	f.mu.Lock()
	attempted, reloadErr := f.reloadLocked()
	cfg, ok := f.auths[host]
	f.mu.Unlock()
	if attempted && f.OnReload != nil {
		f.OnReload(reloadErr)
	}
	if !ok {
		return authn.Anonymous, nil
	}
	return authn.FromConfig(cfg), nil
}

// Err returns why the last reload failed (the last good credentials are still in use), or nil.
func (f *AuthFile) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// reloadLocked reads the file again when the check interval has passed. It reports whether it tried,
// and the error that Err reports after the attempt.
func (f *AuthFile) reloadLocked() (attempted bool, err error) {
	now := f.now()
	if now.Sub(f.checked) < authFileCheckInterval && !now.Before(f.checked) {
		return false, nil
	}
	f.checked = now
	data, err := readLimited(f.path)
	if err != nil {
		f.err = fmt.Errorf("credentials file: %w (keeping the last good credentials)", err)
		return true, f.err
	}
	if bytes.Equal(data, f.raw) {
		return true, f.err // unchanged: still good, or still the same bad content
	}
	f.raw = data
	auths, err := ParseDockerConfig(data)
	if err != nil {
		f.err = fmt.Errorf("credentials file %s: %w (keeping the last good credentials)", f.path, err)
		return true, f.err
	}
	f.auths, f.err = auths, nil
	return true, nil
}

func readLimited(path string) ([]byte, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	data, err := io.ReadAll(io.LimitReader(file, maxAuthFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxAuthFileSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxAuthFileSize)
	}
	return data, nil
}

// ParseDockerConfig parses a .dockerconfigjson document and returns the credentials by registry host.
//
// The document is {"auths":{"<key>":{...}}}, or the legacy ~/.dockercfg shape with the keys at the top
// level. An entry has "auth" (base64 of user:password, which wins over the next two), "username" and
// "password", "identitytoken" (an OAuth2 refresh token) or "registrytoken" (a bearer token sent as it
// is); entries with none of them are skipped, as are credential helpers ("credsStore", "credHelpers").
// A key is a host[:port] or a URL ("https://index.docker.io/v1/"); it is lowercased and reduced to its
// host[:port], and Docker Hub's names (docker.io, index.docker.io, registry-1.docker.io,
// registry.hub.docker.com) all become "docker.io". When two keys name the same host, the one written as
// the bare host wins, else the first in sorted order. Errors name the entry, never a secret.
func ParseDockerConfig(data []byte) (map[string]authn.AuthConfig, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, jsonError(err)
	}
	if top == nil {
		return nil, errors.New("not a JSON object")
	}
	entries := map[string]json.RawMessage{}
	if raw, ok := top["auths"]; ok {
		if err := json.Unmarshal(raw, &entries); err != nil {
			return nil, errors.New(`"auths" is not an object`)
		}
	} else {
		for k, v := range top {
			if looksLikeRegistry(k) && bytes.HasPrefix(bytes.TrimSpace(v), []byte("{")) {
				entries[k] = v
			}
		}
	}
	keys := make([]string, 0, len(entries))
	for k := range entries {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := map[string]authn.AuthConfig{}
	bare := map[string]bool{}
	for _, key := range keys {
		var e struct {
			Auth          string `json:"auth"`
			Username      string `json:"username"`
			Password      string `json:"password"`
			IdentityToken string `json:"identitytoken"`
			RegistryToken string `json:"registrytoken"`
		}
		if err := json.Unmarshal(entries[key], &e); err != nil {
			var te *json.UnmarshalTypeError
			if errors.As(err, &te) && te.Field != "" {
				return nil, fmt.Errorf("entry %q: %q is not a string", key, te.Field)
			}
			return nil, fmt.Errorf("entry %q: not an object", key)
		}
		cfg := authn.AuthConfig{
			Username:      e.Username,
			Password:      e.Password,
			IdentityToken: e.IdentityToken,
			RegistryToken: e.RegistryToken,
		}
		if e.Auth != "" {
			user, pass, err := decodeAuth(e.Auth)
			if err != nil {
				return nil, fmt.Errorf("entry %q: %w", key, err)
			}
			cfg.Username, cfg.Password = user, pass
		}
		if cfg == (authn.AuthConfig{}) {
			continue
		}
		host, err := normalizeRegistry(key)
		if err != nil {
			return nil, fmt.Errorf("entry %q: %w", key, err)
		}
		isBare := strings.EqualFold(strings.TrimSpace(key), host)
		if _, dup := out[host]; dup && (bare[host] || !isBare) {
			continue
		}
		out[host], bare[host] = cfg, isBare
	}
	return out, nil
}

// jsonError describes a JSON error without quoting the input (which holds secrets).
func jsonError(err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("invalid JSON at byte %d", se.Offset)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Errorf("not a JSON object (found %s)", te.Value)
	}
	return errors.New("invalid JSON")
}

// normalizeRegistry reduces a docker config key or a registry host to a lowercase host[:port], with
// Docker Hub's names folded into "docker.io".
func normalizeRegistry(key string) (string, error) {
	s := strings.ToLower(strings.TrimSpace(key))
	if _, rest, ok := strings.Cut(s, "://"); ok {
		s = rest
	}
	s, _, _ = strings.Cut(s, "/")
	if s == "" || strings.ContainsFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || strings.ContainsRune(".-:[]_", r))
	}) {
		return "", errors.New("not a registry host")
	}
	if names.IsDockerHub(s) {
		return names.DefaultRegistry, nil
	}
	return s, nil
}

func looksLikeRegistry(key string) bool {
	return strings.ContainsAny(key, ".:") || strings.EqualFold(key, "localhost")
}
