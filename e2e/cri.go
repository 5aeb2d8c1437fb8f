package e2e

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// PullCredential is one username and password of a pull secret, as the kubelet hands it to the container
// runtime (CRI AuthConfig Username and Password; the kubelet leaves ServerAddress empty).
type PullCredential struct {
	Username, Password string
}

// String names the user and never the password.
func (c PullCredential) String() string { return "user " + c.Username }

// GoString is String, so that %#v does not print the password either.
func (c PullCredential) GoString() string { return c.String() }

// Keyring holds the entries of one kubernetes.io/dockerconfigjson pull secret and finds the ones for an image
// the way the kubelet's credential provider keyring does: a key ("host[:port][/path]", with or without a
// scheme; "/v1/" and "/v2/" count as no path) matches an image when the ports are equal, the hosts have as
// many dot-separated parts and each part of the key's host matches the image's as a glob ("*.example.com"),
// and the key's path is a prefix of the image's repository path. Keys are tried in reverse lexical order (a
// longer path before its prefix); credentials keyed by index.docker.io also serve Docker Hub images.
type Keyring struct {
	index []string // keys, reverse sorted
	creds map[string][]PullCredential
}

// defaultRegistryKey is the key the kubelet files Docker Hub credentials under ("https://index.docker.io/v1/").
const defaultRegistryKey = "index.docker.io"

// ParseDockerConfigJSON reads a .dockerconfigjson ({"auths": {KEY: {username, password, auth}}}) into a
// Keyring. As in the kubelet, a non-empty auth ("base64(user:password)") replaces username and password.
func ParseDockerConfigJSON(data []byte) (*Keyring, error) {
	var cfg struct {
		Auths map[string]struct {
			Username string `json:"username"`
			Password string `json:"password"`
			Auth     string `json:"auth"`
		} `json:"auths"`
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		return nil, fmt.Errorf("dockerconfigjson: %w", err)
	}
	k := &Keyring{creds: map[string][]PullCredential{}}
	for loc, e := range cfg.Auths {
		c := PullCredential{Username: e.Username, Password: e.Password}
		if e.Auth != "" {
			dec, err := base64.StdEncoding.DecodeString(e.Auth)
			if err != nil {
				return nil, fmt.Errorf("dockerconfigjson: the auth field of %q is not base64", loc)
			}
			user, pass, ok := strings.Cut(string(dec), ":")
			if !ok {
				return nil, fmt.Errorf("dockerconfigjson: the auth field of %q is not base64(username:password)", loc)
			}
			c = PullCredential{Username: user, Password: pass}
		}
		key, err := keyringKey(loc)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(k.creds[key], c) {
			k.creds[key] = append(k.creds[key], c)
		}
		if !slices.Contains(k.index, key) {
			k.index = append(k.index, key)
		}
	}
	slices.Sort(k.index)
	slices.Reverse(k.index)
	return k, nil
}

// keyringKey turns a dockerconfigjson key into "host[:port][/path]".
func keyringKey(loc string) (string, error) {
	v := loc
	if !strings.HasPrefix(v, "https://") && !strings.HasPrefix(v, "http://") {
		v = "https://" + v
	}
	u, err := url.Parse(v)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("dockerconfigjson: key %q is not a registry address", loc)
	}
	p := u.Path
	if strings.HasPrefix(p, "/v1/") || strings.HasPrefix(p, "/v2/") {
		p = p[3:]
	}
	if p == "" || p == "/" {
		return u.Host, nil
	}
	return u.Host + p, nil
}

// Lookup returns the credentials for image (a reference with or without tag or digest), in the order the
// kubelet tries them, and whether there were any.
func (k *Keyring) Lookup(image string) ([]PullCredential, bool) {
	repo, err := kubeletRepo(image)
	if err != nil {
		return nil, false
	}
	var out []PullCredential
	for _, key := range k.index {
		if keyMatches(key, repo) {
			out = append(out, k.creds[key]...)
		}
	}
	if len(out) == 0 && isDockerHub(repo) {
		out = append(out, k.creds[defaultRegistryKey]...)
	}
	return out, len(out) > 0
}

// kubeletRepo is the repository the kubelet looks credentials up for: the normalized name without tag or
// digest ("docker.io/library/busybox", "127.0.0.1:5000/e2e/single").
func kubeletRepo(image string) (string, error) {
	ref, err := name.ParseReference(image, name.WeakValidation)
	if err != nil {
		return "", err
	}
	repo := ref.Context()
	host := repo.RegistryStr()
	if host == name.DefaultRegistry {
		host = "docker.io"
	}
	return host + "/" + repo.RepositoryStr(), nil
}

// isDockerHub says whether a normalized repository is on Docker Hub.
func isDockerHub(repo string) bool {
	host, _, _ := strings.Cut(repo, "/")
	return host == "docker.io" || host == defaultRegistryKey
}

// keyMatches says whether the keyring key (a glob over host parts, a port, a path prefix) matches repo.
func keyMatches(key, repo string) bool {
	k, err1 := url.Parse("https://" + key)
	r, err2 := url.Parse("https://" + repo)
	if err := errors.Join(err1, err2); err != nil {
		return false
	}
	kParts, kPort := splitHost(k.Host)
	rParts, rPort := splitHost(r.Host)
	if kPort != rPort || len(kParts) != len(rParts) {
		return false
	}
	for i := range kParts {
		if ok, err := path.Match(kParts[i], rParts[i]); err != nil || !ok {
			return false
		}
	}
	return strings.HasPrefix(r.Path, k.Path)
}

// splitHost splits "host[:port]" into the host's dot-separated parts and the port.
func splitHost(hostport string) ([]string, string) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		host, port = hostport, ""
	}
	return strings.Split(host, "."), port
}
