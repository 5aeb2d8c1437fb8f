package proxy

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/crypto/bcrypt"

	"github.com/pullgate/pullgate/identity"
	"github.com/pullgate/pullgate/names"
	"github.com/pullgate/pullgate/upstream"
)

// The cross-tenant leak matrix. Its invariant: content is served only to an identity allowed to pull that
// upstream and repository; a digest asked under a repository needs that repository to be known to hold it; and
// content fetched with upstream credentials never reaches an identity not allowed that repository. Every
// identity is tried with every way it can present itself, every route, every way of naming the upstream and
// every state of the content; refused requests must say the same for a repository that exists and one that
// does not, and must not reach the upstream for content.

// ---- The upstream: a registry that keeps blobs per repository and checks Basic credentials per repository.

// repoBlobs is a blob store for go-containerregistry's registry that keeps blobs per repository, as registries
// do: a blob is found only under a repository that holds it. A held blob is sent up to its middle, then
// nothing more until the hold is released (or the request ends).
type repoBlobs struct {
	mu       sync.Mutex
	blobs    map[string]map[v1.Hash][]byte // by repository, then digest
	holds    map[v1.Hash]chan struct{}
	releases map[v1.Hash]func()
}

// newRepoBlobs returns an empty store.
func newRepoBlobs() *repoBlobs {
	return &repoBlobs{blobs: map[string]map[v1.Hash][]byte{}, holds: map[v1.Hash]chan struct{}{}, releases: map[v1.Hash]func(){}}
}

// lookup returns repo's blob d and its hold (nil when it is not held).
func (b *repoBlobs) lookup(repo string, d v1.Hash) ([]byte, chan struct{}, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	data, ok := b.blobs[repo][d]
	if !ok {
		return nil, nil, registry.ErrNotFound
	}
	return data, b.holds[d], nil
}

// Stat implements registry.BlobStatHandler.
func (b *repoBlobs) Stat(_ context.Context, repo string, d v1.Hash) (int64, error) {
	data, _, err := b.lookup(repo, d)
	return int64(len(data)), err
}

// Get implements registry.BlobHandler.
func (b *repoBlobs) Get(ctx context.Context, repo string, d v1.Hash) (io.ReadCloser, error) {
	data, hold, err := b.lookup(repo, d)
	if err != nil {
		return nil, err
	}
	cut := len(data)
	if hold != nil {
		cut = len(data) / 2
	}
	return &heldReader{ctx: ctx, data: data, cut: cut, release: hold}, nil
}

// Put implements registry.BlobPutHandler.
func (b *repoBlobs) Put(_ context.Context, repo string, _ v1.Hash, rc io.ReadCloser) error {
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return err
	}
	b.add(repo, data)
	return nil
}

// add stores data in repo and returns its digest.
func (b *repoBlobs) add(repo string, data []byte) v1.Hash {
	sum := sha256.Sum256(data)
	d := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.blobs[repo] == nil {
		b.blobs[repo] = map[v1.Hash][]byte{}
	}
	b.blobs[repo][d] = data
	return d
}

// hold makes GETs of d stop in the middle of the body until release (or releaseAll) is called.
func (b *repoBlobs) hold(d v1.Hash) (release func()) {
	ch := make(chan struct{})
	release = sync.OnceFunc(func() {
		b.mu.Lock()
		delete(b.holds, d)
		delete(b.releases, d)
		b.mu.Unlock()
		close(ch)
	})
	b.mu.Lock()
	b.holds[d], b.releases[d] = ch, release
	b.mu.Unlock()
	return release
}

// releaseAll lets every held blob go.
func (b *repoBlobs) releaseAll() {
	b.mu.Lock()
	var all []func()
	for _, r := range b.releases {
		all = append(all, r)
	}
	b.mu.Unlock()
	for _, r := range all {
		r()
	}
}

// heldReader sends data up to cut, then the rest once release is closed (nil: at once).
type heldReader struct {
	ctx     context.Context
	data    []byte
	cut     int
	off     int
	release <-chan struct{}
}

// Read implements io.Reader.
func (r *heldReader) Read(p []byte) (int, error) {
	if r.off >= len(r.data) {
		return 0, io.EOF
	}
	end := len(r.data)
	if r.off < r.cut {
		end = r.cut
	} else if r.release != nil {
		select {
		case <-r.release:
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
	n := copy(p, r.data[r.off:end])
	r.off += n
	return n, nil
}

// Close implements io.Closer.
func (r *heldReader) Close() error { return nil }

// The accounts of the leak-test upstreams. pullgate's own may pull every private repository; alice only
// priv/one; anyone else's credentials are wrong.
const (
	leakPullgateUser     = "pullgate"
	leakPullgatePassword = "pullgate-upstream-pw"
	leakAliceUser        = "alice"
	leakAlicePassword    = "alice-upstream-pw"
)

// leakUser is an account at a leak-test upstream: its password and the private repositories it may pull (a
// name, or a prefix ending in "/").
type leakUser struct {
	password string
	private  []string
}

// may says whether the user may pull the private repository repo.
func (u leakUser) may(repo string) bool {
	for _, p := range u.private {
		if p == repo || strings.HasSuffix(p, "/") && strings.HasPrefix(repo, p) {
			return true
		}
	}
	return false
}

// leakUpstream is one upstream of the leak tests: go-containerregistry's registry with blobs kept per
// repository, behind Basic authentication. Repositories under "pub/" may be pulled by anyone, those under
// "priv/" only by the users allowed them; credentials, when sent, must be right whatever the repository. It
// records every request for content (all but /v2/ and the credential checks, GET tags/list?n=1) and whose
// credentials came with it.
type leakUpstream struct {
	fake  *fakeUpstream
	blobs *repoBlobs
	users map[string]leakUser

	mu      sync.Mutex
	content []leakUpstreamRequest
}

// leakUpstreamRequest is one request for content an upstream got.
type leakUpstreamRequest struct {
	method, path, user string
}

// newLeakUpstream starts a leak-test upstream.
func newLeakUpstream(t *testing.T) *leakUpstream {
	t.Helper()
	u := &leakUpstream{blobs: newRepoBlobs(), users: map[string]leakUser{
		leakPullgateUser: {password: leakPullgatePassword, private: []string{"priv/"}},
		leakAliceUser:    {password: leakAlicePassword, private: []string{"priv/one"}},
	}}
	u.fake = newFakeUpstream(t, registry.WithBlobHandler(u.blobs))
	u.fake.setFault(u.authenticate)
	return u
}

// authenticate is the upstream's authentication, in front of the registry.
func (u *leakUpstream) authenticate(w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false // the test's own pushes
	}
	user, pass, sent := r.BasicAuth()
	acct, known := u.users[user]
	valid := sent && known && acct.password == pass
	refuse := func() bool {
		w.Header().Set("WWW-Authenticate", `Basic realm="leak-upstream"`)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
		return true
	}
	if r.URL.Path == "/v2/" || r.URL.Path == "/v2" {
		if !valid {
			return refuse()
		}
		return false
	}
	if !(strings.HasSuffix(r.URL.Path, "/tags/list") && r.URL.Query().Get("n") == "1") {
		u.mu.Lock()
		u.content = append(u.content, leakUpstreamRequest{method: r.Method, path: r.URL.Path, user: user})
		u.mu.Unlock()
	}
	if sent && !valid {
		return refuse()
	}
	if repo := leakRepoOf(r.URL.Path); strings.HasPrefix(repo, "priv/") && !(valid && acct.may(repo)) {
		return refuse()
	}
	return false
}

// leakRepoOf returns the repository of an upstream request path.
func leakRepoOf(p string) string {
	rest := strings.TrimPrefix(p, "/v2/")
	for _, sep := range []string{"/manifests/", "/blobs/", "/referrers/", "/tags/list"} {
		if i := strings.LastIndex(rest, sep); i >= 0 {
			return rest[:i]
		}
	}
	return rest
}

// contentCount is how many requests for content the upstream got so far.
func (u *leakUpstream) contentCount() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.content)
}

// contentSince returns the requests for content after the first n.
func (u *leakUpstream) contentSince(n int) []leakUpstreamRequest {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.content[n:])
}

// leakArtifactType is the artifact type of the referrer every item lists for itself.
const leakArtifactType = "application/vnd.pullgate.leak-test"

// leakItem is one image in one repository of an upstream: a config and a layer, the manifest that names them
// under its own tag and, when asked for, a referrers list (the fallback tag) naming the manifest itself.
type leakItem struct {
	repo, tag   string
	manifest    []byte
	digest      v1.Hash // the manifest's
	layer       []byte
	layerDigest v1.Hash
}

// item pushes a new item of a layer of layerSize random bytes to repo.
func (u *leakUpstream) item(t *testing.T, repo, tag string, layerSize int, referrers bool) *leakItem {
	t.Helper()
	it := &leakItem{repo: repo, tag: tag, layer: make([]byte, layerSize)}
	if _, err := rand.Read(it.layer); err != nil {
		t.Fatal(err)
	}
	it.layerDigest = u.blobs.add(repo, it.layer)
	config := []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","config":{"Labels":{"item":%q}},"rootfs":{"type":"layers","diff_ids":[%q]}}`,
		repo+":"+tag, it.layerDigest))
	configDigest := u.blobs.add(repo, config)
	it.manifest = []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},`+
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d}]}`,
		mediaOCIManifest, configDigest, len(config), it.layerDigest, len(it.layer)))
	it.digest = u.fake.putManifest(t, repo, tag, mediaOCIManifest, it.manifest)
	if referrers {
		idx := fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"manifests":[{"mediaType":%q,"digest":%q,"size":%d,"artifactType":%q}]}`,
			indexMediaType, mediaOCIManifest, it.digest, len(it.manifest), leakArtifactType)
		u.fake.putManifest(t, repo, "sha256-"+it.digest.Hex, indexMediaType, []byte(idx))
	}
	return it
}

// ---- pullgate with identities, in front of two such upstreams.

// The robots of every leak environment. robot$root warms the cache and starts fills; the others are the
// matrix's and the token tests' identities.
var leakRobots = []identity.Robot{
	{Name: "root", Pull: []string{"**"}},
	{Name: "a", Pull: []string{"local/pub/**"}},
	{Name: "b", Pull: []string{"local/priv/one"}},
	{Name: "c", Pull: []string{"local/priv/**"}},
	{Name: "both", Pull: []string{"local/priv/**", "other/priv/**"}},
	{Name: "old", Pull: []string{"**"}}, // expires a minute after the start
	{Name: "rot", Pull: []string{"**"}}, // its first secret (the one its clients use) is rotated out a minute after the start
}

// leakNodeName is the name in the client certificate of the mTLS node, which the robots file maps to pull
// local/priv/two.
const leakNodeName = "node-1.cluster.local"

// leakEnv is pullgate with robots, client certificates, passthrough and the token service, in front of two
// leak-test upstreams, "local" (the default) and "other", with pullgate's own credentials for both. Its server
// asks for client certificates, as pullgate does with a client CA.
type leakEnv struct {
	*env
	local, other *leakUpstream
	keyDir       string
	signer       *identity.Signer
	secrets      map[string]string // robot name: the secret its clients use
	plain, cert  *http.Client      // without and with the node's client certificate
}

// newLeakEnv starts a leak environment at 2026-11-26 12:00 UTC on its clock; tweak changes pullgate's options.
func newLeakEnv(t *testing.T, tweak ...func(*Options)) *leakEnv {
	t.Helper()
	clk := &clock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	le := &leakEnv{local: newLeakUpstream(t), other: newLeakUpstream(t), secrets: map[string]string{}}
	dir := t.TempDir()

	// pullgate's own credentials for both upstreams.
	auths := map[string]any{}
	for _, u := range []*leakUpstream{le.local, le.other} {
		auths[u.fake.host()] = map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(leakPullgateUser + ":" + leakPullgatePassword))}
	}
	authJSON, err := json.Marshal(map[string]any{"auths": auths})
	if err != nil {
		t.Fatal(err)
	}
	authFile := filepath.Join(dir, "upstream-auth.json")
	if err := os.WriteFile(authFile, authJSON, 0o600); err != nil {
		t.Fatal(err)
	}
	kc, err := upstream.NewAuthFile(authFile, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	checker := leakChecker{}
	var ups []Upstream
	for _, x := range []struct {
		name string
		u    *leakUpstream
	}{{"local", le.local}, {"other", le.other}} {
		c, err := upstream.New(upstream.Options{Name: x.name, URL: x.u.fake.srv.URL, Transport: x.u.fake.srv.Client().Transport,
			Keychain: kc, Now: clk.Now, Timeout: 5 * time.Second, FailureThreshold: 1000})
		if err != nil {
			t.Fatal(err)
		}
		checker[x.name] = c
		ups = append(ups, Upstream{Name: x.name, Hosts: []string{"registry." + x.name + ".test"}, Fetcher: c})
	}

	// The robots file: secrets at bcrypt's lowest cost, so that logins are quick.
	now := clk.Now()
	file := &identity.File{Clients: []identity.Client{{Subject: "node-*.cluster.local", Pull: []string{"local/priv/two"}}}}
	for _, r := range leakRobots {
		secret, s, err := identity.NewSecret(now, bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		r.Created, r.Secrets = now, []identity.Secret{s}
		switch r.Name {
		case "old":
			exp := now.Add(time.Minute)
			r.Expires = &exp
		case "rot":
			_, next, err := identity.NewSecret(now, bcrypt.MinCost)
			if err != nil {
				t.Fatal(err)
			}
			grace := now.Add(time.Minute)
			r.Secrets[0].Expires = &grace
			r.Secrets = append(r.Secrets, next)
		}
		le.secrets[r.Name] = secret
		file.Robots = append(file.Robots, r)
	}
	robotsFile := filepath.Join(dir, "robots.yaml")
	if err := file.Write(robotsFile); err != nil {
		t.Fatal(err)
	}
	le.keyDir = filepath.Join(dir, "token-keys")
	if le.signer, err = identity.NewSigner(identity.SignerOptions{Dir: le.keyDir, Now: clk.Now}); err != nil {
		t.Fatal(err)
	}
	svc, err := identity.New(identity.Options{
		RobotsFile:     robotsFile,
		Anonymous:      leakPatterns(t, "local/pub/**"),
		Passthrough:    leakPatterns(t, "local/priv/**"),
		PassthroughTTL: time.Hour,
		Checker:        checker,
		Signer:         le.signer,
		TokenTTL:       time.Hour,
		FailureBurst:   1 << 20, // the matrix fails many logins from one address on purpose
		Now:            clk.Now,
	})
	if err != nil {
		t.Fatal(err)
	}

	e := &env{t: t, up: le.local.fake, dir: filepath.Join(dir, "data"), clock: clk, logs: &syncBuffer{}}
	e.opts = Options{
		Upstreams:     ups,
		Default:       "local",
		TagTTL:        time.Minute,
		Authenticator: svc,
		Authorizer:    svc,
		Tokens:        svc,
		// No prefetching: background fills would blur which request caused which upstream request.
		PrefetchConcurrency: -1,
		Now:                 clk.Now,
		Log:                 slog.New(slog.NewJSONHandler(e.logs, nil)),
	}
	for _, f := range tweak {
		f(&e.opts)
	}
	e.start()
	t.Cleanup(e.stop)
	// Held blobs are let go before pullgate stops (cleanups run last first).
	t.Cleanup(le.local.blobs.releaseAll)
	t.Cleanup(le.other.blobs.releaseAll)

	// Serve on a server that verifies client certificates when they are presented, as pullgate does with
	// PULLGATE_CLIENT_CA_FILE, so that r.TLS.VerifiedChains is the TLS layer's.
	pool, cert := leakClientCertificate(t)
	e.srv.Close()
	srv := httptest.NewUnstartedServer(e.h)
	srv.EnableHTTP2 = true
	srv.TLS = &tls.Config{ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: pool}
	srv.StartTLS()
	e.srv = srv
	le.env = e
	le.plain = srv.Client()
	tr := srv.Client().Transport.(*http.Transport).Clone()
	tr.TLSClientConfig.Certificates = []tls.Certificate{cert}
	le.cert = &http.Client{Transport: tr}
	t.Cleanup(tr.CloseIdleConnections)
	return le
}

// leakPatterns compiles globs.
func leakPatterns(t *testing.T, globs ...string) []names.Pattern {
	t.Helper()
	ps, err := names.CompilePatterns(globs)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// leakChecker asks the upstream clients whether credentials may pull a repository, as cmd/pullgate's
// upstreamChecker does: with upstream.Client.CheckPull, a refusal being identity.ErrDenied.
type leakChecker map[string]*upstream.Client

// CheckPull implements identity.UpstreamChecker.
func (c leakChecker) CheckPull(ctx context.Context, up, repo, username, password string) error {
	client, ok := c[up]
	if !ok {
		return fmt.Errorf("upstream %s cannot check credentials", up)
	}
	err := client.CheckPull(ctx, repo, upstream.Credentials{Username: username, Password: password})
	if errors.Is(err, upstream.ErrRefused) {
		return fmt.Errorf("%w: %v", identity.ErrDenied, err)
	}
	return err
}

// leakClientCertificate makes a CA and a client certificate it signed for leakNodeName.
func leakClientCertificate(t *testing.T) (*x509.CertPool, tls.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	notBefore, notAfter := time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "leak-test client CA"},
		NotBefore: notBefore, NotAfter: notAfter, IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: leakNodeName}, DNSNames: []string{leakNodeName},
		NotBefore: notBefore, NotAfter: notAfter, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pool, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// leakAnswer is pullgate's answer to one request, and how many requests for content the upstream "local" got
// while pullgate answered.
type leakAnswer struct {
	status   int
	header   http.Header
	body     []byte
	upstream int
	err      error
}

// send sends one request with auth as its Authorization (none when empty) and reads the whole answer.
func (le *leakEnv) send(c *http.Client, auth, method, path string, body io.Reader, hdr ...string) leakAnswer {
	before := le.local.contentCount()
	// A deadline turns a request that hangs (one that joined a held fill) into an error.
	ctx, cancel := context.WithTimeout(context.Background(), leakRequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, le.srv.URL+path, body)
	if err != nil {
		return leakAnswer{err: err}
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		return leakAnswer{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return leakAnswer{status: resp.StatusCode, header: resp.Header, body: b, err: err, upstream: le.local.contentCount() - before}
}

// leakRequestTimeout bounds one request of the leak tests; pullgate answers each in milliseconds.
const leakRequestTimeout = 10 * time.Second

// sendAsync is send from a goroutine; done is called when the answer is read.
func (le *leakEnv) sendAsync(c *http.Client, auth, method, path string, done func(), hdr ...string) <-chan leakAnswer {
	ch := make(chan leakAnswer, 1)
	go func() {
		a := le.send(c, auth, method, path, nil, hdr...)
		done()
		ch <- a
	}()
	return ch
}

// basicAuth is the Authorization value of Basic credentials.
func basicAuth(user, secret string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+secret))
}

// warm makes pullgate cache it (manifest by tag and by digest, layer, tag list, referrers), pulled as
// robot$root under the default upstream, and waits until the layer is stored.
func (le *leakEnv) warm(t *testing.T, it *leakItem) {
	t.Helper()
	root := basicAuth("robot$root", le.secrets["root"])
	for _, p := range []string{"/manifests/" + it.tag, "/manifests/" + it.digest.String(), "/blobs/" + it.layerDigest.String(),
		"/tags/list", "/referrers/" + it.digest.String()} {
		if a := le.send(le.plain, root, http.MethodGet, "/v2/"+it.repo+p, nil); a.err != nil || a.status != http.StatusOK {
			t.Fatalf("warming %s%s: %d %v %s", it.repo, p, a.status, a.err, a.body)
		}
	}
	waitFor(t, "the layer in the cache", func() bool { _, err := le.cache.Stat(it.layerDigest); return err == nil })
}

// startFill has robot$root start the fill of the item's layer, the upstream holding the body in its middle, and
// waits until the fill streams. release lets the upstream send the rest; done receives root's answer.
func (le *leakEnv) startFill(t *testing.T, it *leakItem) (release func(), done <-chan leakAnswer) {
	t.Helper()
	release = le.local.blobs.hold(it.layerDigest)
	done = le.sendAsync(le.plain, basicAuth("robot$root", le.secrets["root"]), http.MethodGet, "/v2/"+it.repo+"/blobs/"+it.layerDigest.String(), func() {})
	waitFor(t, "the fill to stream", func() bool {
		le.h.fills.mu.Lock()
		f := le.h.fills.m[it.layerDigest]
		le.h.fills.mu.Unlock()
		if f == nil {
			return false
		}
		select {
		case <-f.ready:
			return f.w != nil && f.w.Written() > 0
		default:
			return false
		}
	})
	return release, done
}

// ---- The matrix's dimensions.

// The repositories of the matrix at upstream "local": one public (PULLGATE_ANONYMOUS-like "local/pub/**"), two
// private ones. Refused requests are compared with the same request for a repository that does not exist,
// beside the one asked for.
var leakRepos = []string{"pub/app", "priv/one", "priv/two"}

// leakGhost is the repository beside repo that does not exist: "priv/ghost" beside "priv/one".
func leakGhost(repo string) string {
	ns, _, _ := strings.Cut(repo, "/")
	return ns + "/ghost"
}

// leakPres is how a client presents its identity.
type leakPres string

const (
	presNone      leakPres = "none"        // no credentials
	presCert      leakPres = "certificate" // the TLS client certificate
	presBasic     leakPres = "basic"       // Basic credentials on every /v2/ request
	presTokenGET  leakPres = "token-get"   // a bearer token from GET /token (with Basic, the certificate, or nothing)
	presTokenPOST leakPres = "token-post"  // a bearer token from POST /token, grant_type=password
)

// leakAddr is a way of naming the upstream: its name in ns, its name or another of its names (Hosts) before
// the repository, or nothing (the default upstream).
type leakAddr struct {
	name   string
	prefix string // before the repository in the path
	ns     string // the ns query parameter
}

var leakAddrs = []leakAddr{
	{name: "ns", ns: "local"},
	{name: "prefix", prefix: "local/"},
	{name: "default"},
	{name: "host-prefix", prefix: "registry.local.test/"},
}

// path is the request path of ref ("/manifests/v1") in repo, named this way.
func (a leakAddr) path(repo, ref string) string {
	p := "/v2/" + a.prefix + repo + ref
	if a.ns != "" {
		p += "?ns=" + a.ns
	}
	return p
}

// tokenPath is the token service's path as challenges name it for this addressing.
func (a leakAddr) tokenPath() string {
	if a.ns != "" {
		return "/token?ns=" + a.ns
	}
	return "/token"
}

// leakRoute is one request of the pull API on an item.
type leakRoute struct {
	name   string
	method string
	blob   bool // a blob route: asked while the blob is being filled too
	ref    func(it *leakItem) string
	header []string
	// check says what is wrong with an allowed answer for it, in the repository named name.
	check func(it *leakItem, name string, a leakAnswer) error
}

const leakRange = "bytes=100-1099"

var leakRoutes = []leakRoute{
	{name: "manifest-tag", method: http.MethodGet, ref: func(it *leakItem) string { return "/manifests/" + it.tag }, check: checkLeakManifest},
	{name: "manifest-digest", method: http.MethodGet, ref: func(it *leakItem) string { return "/manifests/" + it.digest.String() }, check: checkLeakManifest},
	{name: "manifest-head", method: http.MethodHead, ref: func(it *leakItem) string { return "/manifests/" + it.tag }, check: func(it *leakItem, _ string, a leakAnswer) error {
		if a.status != http.StatusOK || a.header.Get("Content-Length") != fmt.Sprint(len(it.manifest)) || len(a.body) != 0 ||
			a.header.Get("Docker-Content-Digest") != it.digest.String() {
			return fmt.Errorf("status %d, Content-Length %q, digest %q, want 200, %d, %s", a.status, a.header.Get("Content-Length"),
				a.header.Get("Docker-Content-Digest"), len(it.manifest), it.digest)
		}
		return nil
	}},
	{name: "blob", method: http.MethodGet, blob: true, ref: leakBlobRef, check: func(it *leakItem, _ string, a leakAnswer) error {
		if a.status != http.StatusOK || !bytes.Equal(a.body, it.layer) || a.header.Get("Docker-Content-Digest") != it.layerDigest.String() {
			return fmt.Errorf("status %d, %d bytes (digest header %q), want 200 with the layer's %d bytes", a.status, len(a.body), a.header.Get("Docker-Content-Digest"), len(it.layer))
		}
		return nil
	}},
	{name: "blob-head", method: http.MethodHead, blob: true, ref: leakBlobRef, check: func(it *leakItem, _ string, a leakAnswer) error {
		if a.status != http.StatusOK || a.header.Get("Content-Length") != fmt.Sprint(len(it.layer)) || len(a.body) != 0 ||
			a.header.Get("Docker-Content-Digest") != it.layerDigest.String() {
			return fmt.Errorf("status %d, Content-Length %q, digest %q, want 200, %d, %s", a.status, a.header.Get("Content-Length"),
				a.header.Get("Docker-Content-Digest"), len(it.layer), it.layerDigest)
		}
		return nil
	}},
	{name: "blob-range", method: http.MethodGet, blob: true, ref: leakBlobRef, header: []string{"Range", leakRange}, check: func(it *leakItem, _ string, a leakAnswer) error {
		want := fmt.Sprintf("bytes 100-1099/%d", len(it.layer))
		if a.status != http.StatusPartialContent || !bytes.Equal(a.body, it.layer[100:1100]) || a.header.Get("Content-Range") != want {
			return fmt.Errorf("status %d, %d bytes, Content-Range %q, want 206 with bytes 100-1099 of the layer, %q", a.status, len(a.body), a.header.Get("Content-Range"), want)
		}
		return nil
	}},
	{name: "tags", method: http.MethodGet, ref: func(*leakItem) string { return "/tags/list" }, check: func(it *leakItem, name string, a leakAnswer) error {
		var tl tagList
		if a.status != http.StatusOK || json.Unmarshal(a.body, &tl) != nil || tl.Name != name || !slices.Contains(tl.Tags, it.tag) {
			return fmt.Errorf("status %d: %.300s; want 200 listing %s with tag %s", a.status, a.body, name, it.tag)
		}
		return nil
	}},
	{name: "referrers", method: http.MethodGet, ref: func(it *leakItem) string { return "/referrers/" + it.digest.String() }, check: func(it *leakItem, _ string, a leakAnswer) error {
		var idx referrersIndex
		if a.status != http.StatusOK || a.header.Get("Content-Type") != indexMediaType || json.Unmarshal(a.body, &idx) != nil ||
			len(idx.Manifests) != 1 || idx.Manifests[0].Digest != it.digest.String() || idx.Manifests[0].ArtifactType != leakArtifactType {
			return fmt.Errorf("status %d: %.300s; want 200 with an index listing %s", a.status, a.body, it.digest)
		}
		return nil
	}},
}

// leakBlobRef is the path of the item's layer after the repository name.
func leakBlobRef(it *leakItem) string { return "/blobs/" + it.layerDigest.String() }

// checkLeakManifest says what is wrong with an allowed answer for the item's manifest.
func checkLeakManifest(it *leakItem, _ string, a leakAnswer) error {
	if a.status != http.StatusOK || !bytes.Equal(a.body, it.manifest) || a.header.Get("Docker-Content-Digest") != it.digest.String() {
		return fmt.Errorf("status %d (digest header %q): %.200s; want 200 with manifest %s", a.status, a.header.Get("Docker-Content-Digest"), a.body, it.digest)
	}
	return nil
}

// The states of the content a cell asks for.
const (
	stateCached  = "cached"
	stateFilling = "filling"
	stateCold    = "not-cached"
)

// leakRefusal is what a refused request gets.
type leakRefusal int

const (
	refusedLogin       leakRefusal = iota + 1 // 401, a challenge to log in
	refusedCredentials                        // 401, error="invalid_token": the credentials are not valid
	refusedScope                              // 401, error="insufficient_scope": get a token for this repository
	refusedDenied                             // 403 DENIED
)

// leakIdentity is one identity of the matrix: how it presents itself and what it may pull.
type leakIdentity struct {
	name string
	// robot is the robot it logs in as; user and password are its passthrough credentials; cert says it
	// presents the node's client certificate.
	robot, user, password string
	cert                  bool
	pres                  []leakPres
	// allowed are the repositories of leakRepos it may pull.
	allowed []string
	// refusal is what it gets, by presentation, for the others.
	refusal map[leakPres]leakRefusal
	// invalidate, when set, makes its credentials invalid once its tokens were obtained.
	invalidate func(le *leakEnv)
}

// credentials returns the user name and secret it logs in with, if any.
func (id leakIdentity) credentials(le *leakEnv) (user, secret string, ok bool) {
	switch {
	case id.robot != "":
		return "robot$" + id.robot, le.secrets[id.robot], true
	case id.user != "":
		return id.user, id.password, true
	}
	return "", "", false
}

var presWithLogin = []leakPres{presBasic, presTokenGET, presTokenPOST}

// refuseAll says that every presentation in pres is refused with r.
func refuseAll(r leakRefusal, pres ...leakPres) map[leakPres]leakRefusal {
	m := map[leakPres]leakRefusal{}
	for _, p := range pres {
		m[p] = r
	}
	return m
}

// leakIdentities are the matrix's rows.
func leakIdentities() []leakIdentity {
	pastExpiry := func(le *leakEnv) { le.clock.advance(2 * time.Minute) }
	// A passthrough client is refused a repository the upstream refused its credentials for (403); with a
	// token, it is sent to the token service to ask for the repository (which asks the upstream).
	passthroughRefusal := map[leakPres]leakRefusal{presBasic: refusedDenied, presTokenGET: refusedScope, presTokenPOST: refusedScope}
	return []leakIdentity{
		{name: "anonymous", pres: []leakPres{presNone, presTokenGET}, allowed: []string{"pub/app"},
			refusal: refuseAll(refusedLogin, presNone, presTokenGET)},
		{name: "robot-a-public", robot: "a", pres: presWithLogin, allowed: []string{"pub/app"},
			refusal: refuseAll(refusedDenied, presWithLogin...)},
		{name: "robot-b-one-private", robot: "b", pres: presWithLogin, allowed: []string{"pub/app", "priv/one"},
			refusal: refuseAll(refusedDenied, presWithLogin...)},
		{name: "robot-c-all-private", robot: "c", pres: presWithLogin, allowed: []string{"pub/app", "priv/one", "priv/two"}},
		{name: "robot-expired", robot: "old", pres: presWithLogin, invalidate: pastExpiry,
			refusal: refuseAll(refusedCredentials, presWithLogin...)},
		{name: "secret-rotated-out", robot: "rot", pres: presWithLogin, invalidate: pastExpiry,
			refusal: refuseAll(refusedCredentials, presWithLogin...)},
		{name: "mtls-node", cert: true, pres: []leakPres{presCert, presTokenGET}, allowed: []string{"pub/app", "priv/two"},
			refusal: refuseAll(refusedDenied, presCert, presTokenGET)},
		{name: "passthrough-accepted", user: leakAliceUser, password: leakAlicePassword, pres: presWithLogin,
			allowed: []string{"pub/app", "priv/one"}, refusal: passthroughRefusal},
		{name: "passthrough-refused", user: "mallory", password: "guessed", pres: presWithLogin,
			allowed: []string{"pub/app"}, refusal: passthroughRefusal},
	}
}

// leakClient is one identity presented one way, for one way of naming the upstream.
type leakClient struct {
	pres leakPres
	addr leakAddr
	http *http.Client
	auth string
}

// clients returns id's clients: one per presentation and addressing, with their tokens obtained.
func (le *leakEnv) clients(t *testing.T, id leakIdentity) []leakClient {
	t.Helper()
	var out []leakClient
	for _, p := range id.pres {
		for _, a := range leakAddrs {
			c := leakClient{pres: p, addr: a, http: le.plain}
			switch p {
			case presCert:
				c.http = le.cert
			case presBasic:
				user, secret, _ := id.credentials(le)
				c.auth = basicAuth(user, secret)
			case presTokenGET, presTokenPOST:
				c.auth = "Bearer " + le.obtainToken(t, id, p, a)
			}
			out = append(out, c)
		}
	}
	return out
}

// tokenAnswerOf decodes a token service answer.
func tokenAnswerOf(a leakAnswer) (tokenAnswer, error) {
	var ta tokenAnswer
	if a.err != nil || a.status != http.StatusOK {
		return ta, fmt.Errorf("status %d %v: %.300s", a.status, a.err, a.body)
	}
	if err := json.Unmarshal(a.body, &ta); err != nil || ta.Token == "" {
		return ta, fmt.Errorf("not a token answer: %.300s (%v)", a.body, err)
	}
	return ta, nil
}

// obtainToken asks the token service, as id presented with p, for a token for every repository of the matrix
// (and their non-existing neighbours), named as a.
func (le *leakEnv) obtainToken(t *testing.T, id leakIdentity, p leakPres, a leakAddr) string {
	t.Helper()
	var scopes []string
	for _, repo := range leakRepos {
		scopes = append(scopes, "repository:"+a.prefix+repo+":pull", "repository:"+a.prefix+leakGhost(repo)+":pull")
	}
	user, secret, login := id.credentials(le)
	var ans leakAnswer
	switch p {
	case presTokenGET:
		q := url.Values{"service": {tokenService}, "scope": scopes}
		path := a.tokenPath()
		if strings.Contains(path, "?") {
			path += "&" + q.Encode()
		} else {
			path += "?" + q.Encode()
		}
		c, auth := le.plain, ""
		if id.cert {
			c = le.cert
		}
		if login {
			auth = basicAuth(user, secret)
		}
		ans = le.send(c, auth, http.MethodGet, path, nil)
	case presTokenPOST:
		form := url.Values{"grant_type": {"password"}, "username": {user}, "password": {secret}, "service": {tokenService},
			"client_id": {"leak-test"}, "scope": {strings.Join(scopes, " ")}}
		ans = le.send(le.plain, "", http.MethodPost, a.tokenPath(), strings.NewReader(form.Encode()),
			"Content-Type", "application/x-www-form-urlencoded")
	}
	ta, err := tokenAnswerOf(ans)
	if err != nil {
		t.Fatalf("%s: token (%s, %s): %v", id.name, p, a.name, err)
	}
	return ta.Token
}

// leakCell is one cell of the matrix: a client asks for an item of a repository by a route.
type leakCell struct {
	id    *leakIdentity
	c     leakClient
	repo  string
	route leakRoute
	state string
	item  *leakItem
}

// name names the cell's subtest: presentation, addressing, repository, route and state.
func (c leakCell) name() string {
	return strings.Join([]string{string(c.c.pres), c.c.addr.name, strings.ReplaceAll(c.repo, "/", "-"), c.route.name, c.state}, ",")
}

// allowed says whether the cell's identity may pull the cell's repository.
func (c leakCell) allowed() bool { return slices.Contains(c.id.allowed, c.repo) }

// send asks for the cell's item in repo (the cell's, or its non-existing neighbour).
func (c leakCell) send(le *leakEnv, repo string) leakAnswer {
	return le.send(c.c.http, c.c.auth, c.route.method, c.c.addr.path(repo, c.route.ref(c.item)), nil, c.route.header...)
}

// challenge is the WWW-Authenticate a 401 for the repository named name must carry.
func (le *leakEnv) challenge(a leakAddr, name string, r leakRefusal) string {
	c := fmt.Sprintf(`Bearer realm="https://%s%s",service="pullgate",scope="repository:%s:pull"`, le.host(), a.tokenPath(), name)
	switch r {
	case refusedCredentials:
		c += `,error="invalid_token"`
	case refusedScope:
		c += `,error="insufficient_scope"`
	}
	return c
}

// comparable is an answer as a string in which the repository name as addressed is replaced, without Date:
// what must be the same for a repository that exists and one that does not.
func (a leakAnswer) comparable(name string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d %v\n", a.status, a.err)
	var keys []string
	for k := range a.header {
		if k != "Date" {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		v := strings.Join(a.header[k], ", ")
		v = strings.ReplaceAll(v, "repository:"+name+":pull", "repository:<name>:pull")
		fmt.Fprintf(&b, "%s: %s\n", k, v)
	}
	b.Write(a.body)
	return b.String()
}

// checkRefused holds what a refused cell must get: the refusal its identity gets, the same answer as for a
// repository that does not exist, and no request for content upstream.
func checkRefused(t *testing.T, le *leakEnv, c leakCell, a, ghost leakAnswer) {
	t.Helper()
	name, ghostName := c.c.addr.prefix+c.repo, c.c.addr.prefix+leakGhost(c.repo)
	r := c.id.refusal[c.c.pres]
	wantStatus, wantCode, wantChallenge := http.StatusUnauthorized, codeUnauthorized, le.challenge(c.c.addr, name, r)
	if r == refusedDenied {
		wantStatus, wantCode, wantChallenge = http.StatusForbidden, codeDenied, ""
	}
	if a.err != nil || a.status != wantStatus {
		t.Errorf("status %d %v, want %d: %.300s", a.status, a.err, wantStatus, a.body)
	}
	if got := a.header.Get("WWW-Authenticate"); got != wantChallenge {
		t.Errorf("WWW-Authenticate %q, want %q", got, wantChallenge)
	}
	if c.route.method == http.MethodGet && a.status == wantStatus && ociError(t, a.body).Code != wantCode {
		t.Errorf("code %s, want %s", ociError(t, a.body).Code, wantCode)
	}
	if a.upstream != 0 || ghost.upstream != 0 {
		t.Errorf("%d (and %d for the non-existing repository) requests for content reached the upstream", a.upstream, ghost.upstream)
	}
	if got, want := a.comparable(name), ghost.comparable(ghostName); got != want {
		t.Errorf("the answer differs from the one for a repository that does not exist:\n%s\n---- vs %s:\n%s", got, ghostName, want)
	}
}

// checkAllowed holds what an allowed cell must get: the item, from the cache without asking the upstream when
// it is cached, from the upstream when it is not.
func checkAllowed(t *testing.T, c leakCell, a leakAnswer) {
	t.Helper()
	if a.err != nil {
		t.Fatalf("%v (status %d)", a.err, a.status)
	}
	if err := c.route.check(c.item, c.c.addr.prefix+c.repo, a); err != nil {
		t.Error(err)
	}
	switch {
	case c.state == stateCached && a.upstream != 0:
		t.Errorf("served cached content after %d requests for content upstream, want none", a.upstream)
	case c.state == stateCold && a.upstream == 0:
		t.Errorf("content that is not cached was served without asking the upstream")
	}
}

// leakColdKey names the item one cell asks for in the state "not cached": every cell has its own, so that
// no other cell cached it before.
type leakColdKey struct {
	pres        leakPres
	addr, route string
	repo        string
}

// TestLeakMatrix asserts the cross-tenant invariant for every identity, presentation, addressing, repository,
// route and content state (see the top of this file), and counts the cells.
func TestLeakMatrix(t *testing.T) {
	var cells atomic.Int64
	want := 0
	ids := leakIdentities()
	for _, id := range ids {
		routesByState := 0
		for _, r := range leakRoutes {
			routesByState += 2 // cached, not cached
			if r.blob {
				routesByState++ // filling
			}
		}
		want += len(id.pres) * len(leakAddrs) * len(leakRepos) * routesByState
	}
	t.Cleanup(func() {
		t.Logf("%d matrix cells asserted (%d identities)", cells.Load(), len(ids))
		if !t.Failed() && cells.Load() != int64(want) {
			t.Errorf("%d cells asserted, want %d", cells.Load(), want)
		}
	})
	for _, id := range ids {
		t.Run(id.name, func(t *testing.T) {
			t.Parallel()
			runLeakMatrix(t, &id, &cells)
		})
	}
}

// runLeakMatrix asserts id's cells, in its own environment: content cached, then being filled, then not cached.
func runLeakMatrix(t *testing.T, id *leakIdentity, cells *atomic.Int64) {
	le := newLeakEnv(t)
	warm, fill := map[string]*leakItem{}, map[string]*leakItem{}
	cold := map[leakColdKey]*leakItem{}
	for _, repo := range leakRepos {
		warm[repo] = le.local.item(t, repo, "warm", 4<<10, true)
		fill[repo] = le.local.item(t, repo, "fill", 64<<10, false)
		for _, p := range id.pres {
			for _, a := range leakAddrs {
				for _, r := range leakRoutes {
					tag := fmt.Sprintf("cold-%s-%s-%s", p, a.name, r.name)
					cold[leakColdKey{p, a.name, r.name, repo}] = le.local.item(t, repo, tag, 4<<10, r.name == "referrers")
				}
			}
		}
	}
	clients := le.clients(t, *id)
	if user, secret, ok := id.credentials(le); ok {
		// The credentials work before they are made invalid.
		if a := le.send(le.plain, basicAuth(user, secret), http.MethodGet, "/v2/", nil); a.status != http.StatusOK {
			t.Fatalf("GET /v2/ with %s's credentials: %d %s", id.name, a.status, a.body)
		}
	}
	if id.invalidate != nil {
		id.invalidate(le)
	}

	// runSync sends cells one by one (a refused one with its twin for a repository that does not exist), so
	// that the upstream's requests are counted per request; check asserts each in a subtest of its own.
	type sent struct {
		cell    leakCell
		answer  <-chan leakAnswer
		ghost   leakAnswer // the same request for a repository that does not exist, when refused
		refused bool
	}
	var allowedN, refusedN int
	defer func() { t.Logf("%s: %d cells allowed, %d refused", id.name, allowedN, refusedN) }()
	check := func(all []sent) {
		for _, s := range all {
			a := <-s.answer
			t.Run(s.cell.name(), func(t *testing.T) {
				if s.refused {
					checkRefused(t, le, s.cell, a, s.ghost)
				} else {
					checkAllowed(t, s.cell, a)
				}
			})
			if s.refused {
				refusedN++
			} else {
				allowedN++
			}
			cells.Add(1)
		}
	}
	ready := func(a leakAnswer) <-chan leakAnswer {
		ch := make(chan leakAnswer, 1)
		ch <- a
		return ch
	}
	runSync := func(cs []leakCell) []sent {
		var out []sent
		for _, c := range cs {
			if c.allowed() {
				out = append(out, sent{cell: c, answer: ready(c.send(le, c.repo))})
				continue
			}
			a := c.send(le, c.repo)
			out = append(out, sent{cell: c, answer: ready(a), ghost: c.send(le, leakGhost(c.repo)), refused: true})
		}
		return out
	}
	cellsOf := func(state string, item func(c leakClient, repo string, r leakRoute) *leakItem, blobOnly bool) []leakCell {
		var out []leakCell
		for _, c := range clients {
			for _, repo := range leakRepos {
				for _, r := range leakRoutes {
					if blobOnly && !r.blob {
						continue
					}
					out = append(out, leakCell{id: id, c: c, repo: repo, route: r, state: state, item: item(c, repo, r)})
				}
			}
		}
		return out
	}

	// Cached: robot$root pulled everything before.
	for _, repo := range leakRepos {
		le.warm(t, warm[repo])
	}
	check(runSync(cellsOf(stateCached, func(_ leakClient, repo string, _ leakRoute) *leakItem { return warm[repo] }, false)))

	// Being filled: robot$root's GET started the fill and the upstream holds the rest of the body. Refused
	// cells are answered at once; allowed GETs join the fill and are answered once it is let go.
	releases := map[string]func(){}
	rootDone := map[string]<-chan leakAnswer{}
	for _, repo := range leakRepos {
		releases[repo], rootDone[repo] = le.startFill(t, fill[repo])
	}
	filling := cellsOf(stateFilling, func(_ leakClient, repo string, _ leakRoute) *leakItem { return fill[repo] }, true)
	var refusedOrHead, joining []leakCell
	for _, c := range filling {
		if !c.allowed() || c.route.method == http.MethodHead {
			refusedOrHead = append(refusedOrHead, c)
		} else {
			joining = append(joining, c)
		}
	}
	var results []sent
	for _, c := range refusedOrHead {
		r := runSync([]leakCell{c})[0]
		if a := <-r.answer; a.err != nil {
			// It hangs on the held fill: it was served, not refused. Stop before every other cell hangs too.
			t.Fatalf("%s: no answer while the fill is held (%v): it joined the fill", c.name(), a.err)
		} else {
			r.answer = ready(a)
		}
		results = append(results, r)
	}
	launched, finished := map[string]int{}, map[string]*atomic.Int64{}
	for _, repo := range leakRepos {
		finished[repo] = &atomic.Int64{}
	}
	for _, c := range joining {
		launched[c.repo]++
		results = append(results, sent{cell: c, answer: le.sendAsync(c.c.http, c.c.auth, c.route.method,
			c.c.addr.path(c.repo, c.route.ref(c.item)), func() { finished[c.repo].Add(1) }, c.route.header...)})
	}
	for _, repo := range leakRepos {
		// Every allowed GET joined the fill (or was answered: then its check says how) before it is let go.
		waitFor(t, "the allowed requests to join the fill of "+repo, func() bool {
			return fillClients(le.h, fill[repo].layerDigest)+int(finished[repo].Load()) == 1+launched[repo]
		})
	}
	for _, repo := range leakRepos {
		releases[repo]()
		if a := <-rootDone[repo]; a.status != http.StatusOK || !bytes.Equal(a.body, fill[repo].layer) {
			t.Errorf("robot$root's fill of %s: %d, %d bytes", repo, a.status, len(a.body))
		}
	}
	check(results)

	// Not cached: every cell asks for an item of its own; the tag lists read before are older than TagTTL.
	for _, c := range clients {
		le.clock.advance(le.opts.TagTTL)
		var cs []leakCell
		for _, repo := range leakRepos {
			for _, r := range leakRoutes {
				cs = append(cs, leakCell{id: id, c: c, repo: repo, route: r, state: stateCold, item: cold[leakColdKey{c.pres, c.addr.name, r.name, repo}]})
			}
		}
		check(runSync(cs))
	}
}

// TestLeakDigestOfAnotherRepository holds that a digest of a repository P, asked under a repository Q by an
// identity allowed Q, is not served (404) unless the upstream says Q holds it: whether P's content is cached,
// being filled or not cached, and however the upstream is named. The upstream is asked about Q only.
func TestLeakDigestOfAnotherRepository(t *testing.T) {
	le := newLeakEnv(t)
	type asker struct {
		name string
		auth string
		q, p string // asks under q for p's content
	}
	askers := []asker{
		{name: "anonymous", q: "pub/app", p: "priv/one"},
		{name: "robot-a", auth: basicAuth("robot$a", le.secrets["a"]), q: "pub/app", p: "priv/two"},
		{name: "robot-b", auth: basicAuth("robot$b", le.secrets["b"]), q: "priv/one", p: "priv/two"},
		{name: "passthrough-accepted", auth: basicAuth(leakAliceUser, leakAlicePassword), q: "priv/one", p: "priv/two"},
	}
	routes := []struct {
		name, method string
		hdr          []string
		ref          func(it *leakItem) string
		code         code
	}{
		{"blob", http.MethodGet, nil, leakBlobRef, codeBlobUnknown},
		{"blob-head", http.MethodHead, nil, leakBlobRef, codeBlobUnknown},
		{"blob-range", http.MethodGet, []string{"Range", leakRange}, leakBlobRef, codeBlobUnknown},
		{"manifest-digest", http.MethodGet, nil, func(it *leakItem) string { return "/manifests/" + it.digest.String() }, codeManifestUnknown},
	}
	// Q holds an item of its own, so that it exists upstream.
	for _, repo := range leakRepos {
		le.local.item(t, repo, "v1", 1<<10, false)
	}
	for _, state := range []string{stateCached, stateFilling, stateCold} {
		for _, ak := range askers {
			for _, a := range leakAddrs {
				for _, r := range routes {
					name := strings.Join([]string{state, ak.name, a.name, r.name}, ",")
					t.Run(name, func(t *testing.T) {
						it := le.local.item(t, ak.p, fmt.Sprintf("p-%s-%s-%s-%s", state, ak.name, a.name, r.name), 64<<10, false)
						switch state {
						case stateCached:
							le.warm(t, it)
						case stateFilling:
							release, done := le.startFill(t, it)
							defer func() { release(); <-done }()
						}
						before := le.local.contentCount()
						ans := le.send(le.plain, ak.auth, r.method, a.path(ak.q, r.ref(it)), nil, r.hdr...)
						if ans.err != nil || ans.status != http.StatusNotFound {
							t.Fatalf("%s of %s asked under %s: status %d %v (%d bytes), want 404", r.name, ak.p, ak.q, ans.status, ans.err, len(ans.body))
						}
						if r.method == http.MethodGet && ociError(t, ans.body).Code != r.code {
							t.Errorf("code %s, want %s", ociError(t, ans.body).Code, r.code)
						}
						for _, u := range le.local.contentSince(before) {
							if leakRepoOf(u.path) != ak.q {
								t.Errorf("the upstream was asked %s %s, not about %s", u.method, u.path, ak.q)
							}
						}
					})
				}
			}
		}
	}
}

// TestLeakPassthroughUsesItsOwnCredentials holds that the upstream requests a passthrough client causes carry
// its own credentials, never pullgate's, which reach further (every private repository) than the client's:
// for every route, and for the blobs prefetched after its manifest.
func TestLeakPassthroughUsesItsOwnCredentials(t *testing.T) {
	auth := basicAuth(leakAliceUser, leakAlicePassword)
	onlyAlice := func(t *testing.T, reqs []leakUpstreamRequest) {
		t.Helper()
		if len(reqs) == 0 {
			t.Fatal("nothing was asked upstream")
		}
		for _, u := range reqs {
			if u.user != leakAliceUser {
				t.Errorf("%s %s went upstream with %q's credentials, want the client's own (%s)", u.method, u.path, u.user, leakAliceUser)
			}
		}
	}
	le := newLeakEnv(t)
	for _, r := range leakRoutes {
		t.Run(r.name, func(t *testing.T) {
			it := le.local.item(t, "priv/one", "own-"+r.name, 4<<10, r.name == "referrers")
			before := le.local.contentCount()
			if err := r.check(it, "priv/one", le.send(le.plain, auth, r.method, "/v2/priv/one"+r.ref(it), nil, r.header...)); err != nil {
				t.Fatal(err)
			}
			onlyAlice(t, le.local.contentSince(before))
		})
	}
	t.Run("prefetch", func(t *testing.T) {
		le := newLeakEnv(t, func(o *Options) { o.PrefetchConcurrency = 8 })
		it := le.local.item(t, "priv/one", "prefetched", 4<<10, false)
		if err := checkLeakManifest(it, "", le.send(le.plain, auth, http.MethodGet, "/v2/priv/one/manifests/"+it.tag, nil)); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the prefetched layer", func() bool { _, err := le.cache.Stat(it.layerDigest); return err == nil })
		onlyAlice(t, le.local.contentSince(0))
	})
}
