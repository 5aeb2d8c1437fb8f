package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/cmd/crane/cmd"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// authOptions configures startAuthPullgate.
type authOptions struct {
	// robots are made with `pullgate robot create` (Bin and File are filled in; Servers default to pullgate's
	// address and the upstream's).
	robots []RobotOptions
	// clients are appended to the robots file as certificate mappings.
	clients []ClientMapping
	// clientCA is PULLGATE_CLIENT_CA_FILE; anonymous is PULLGATE_ANONYMOUS.
	clientCA  string
	anonymous []string
}

// authPG is a pullgate with client identities on, in front of the shared upstream, and the robots it knows.
type authPG struct {
	*Pullgate
	robots map[string]Robot
}

// user is a robot's login name ("robot$NAME") and secret.
func (a *authPG) user(robot string) (string, string) {
	r := a.robots[robot]
	return r.Username, r.Secret
}

// secrets are the secrets of every robot of a.
func (a *authPG) secrets() []string {
	var s []string
	for _, r := range a.robots {
		s = append(s, r.Secret)
	}
	return s
}

// startAuthPullgate starts a second pullgate in front of e's upstream with a robots file made by the real CLI
// and the identity settings of o. When t ends it checks that no robot secret reached pullgate's log.
func startAuthPullgate(t *testing.T, e *env, o authOptions) *authPG {
	t.Helper()
	if e.pg == nil {
		t.Skip("direct mode: the upstream has no client identities")
	}
	ctx := ctxFor(t, time.Minute)
	dir := t.TempDir()
	addr, err := FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	a := &authPG{robots: map[string]Robot{}}
	robotsFile := filepath.Join(dir, "robots.yaml")
	for _, ro := range o.robots {
		ro.Bin, ro.File = e.pg.Opts.Bin, robotsFile
		if ro.Servers == nil {
			ro.Servers = []string{addr, e.upHost()}
		}
		r, err := CreateRobot(ctx, ro)
		if err != nil {
			t.Fatalf("robot %s: %v", ro.Name, err)
		}
		a.robots[ro.Name] = r
	}
	if stored, err := os.ReadFile(robotsFile); err != nil || len(o.robots) > 0 && len(stored) == 0 {
		t.Fatalf("the robots file: %d bytes, %v", len(stored), err)
	} else if redact(string(stored), a.secrets()...) != string(stored) {
		t.Errorf("the robots file holds a robot's secret in clear")
	}
	if len(o.clients) > 0 {
		if err := AddClientMappings(robotsFile, o.clients...); err != nil {
			t.Fatal(err)
		}
	}
	po := PullgateOptions{Bin: e.pg.Opts.Bin, Name: "pullgate-auth", DataDir: filepath.Join(dir, "data"), LogDir: dir,
		Addr: addr, CertFile: e.certFile, KeyFile: e.keyFile, CA: e.ca,
		Upstreams: "local=" + e.proxy.URL, Default: "local", UpstreamCAFile: e.ca.CertFile,
		Env: []string{"PULLGATE_ROBOTS_FILE=" + robotsFile}, V2Status: http.StatusUnauthorized}
	if o.clientCA != "" {
		po.Env = append(po.Env, "PULLGATE_CLIENT_CA_FILE="+o.clientCA)
	}
	if len(o.anonymous) > 0 {
		po.Env = append(po.Env, "PULLGATE_ANONYMOUS="+strings.Join(o.anonymous, ","))
		po.V2Status = http.StatusOK
	}
	if a.Pullgate, err = StartPullgate(ctx, po); err != nil {
		t.Fatalf("pullgate with identities: %v", err)
	}
	t.Cleanup(func() {
		if err := a.Stop(10 * time.Second); err != nil {
			t.Log(err)
		}
		log, err := os.ReadFile(a.LogPath)
		if err != nil {
			t.Error(err)
		}
		for _, s := range a.secrets() {
			if strings.Contains(string(log), s) {
				t.Errorf("pullgate's log holds a robot's secret")
			}
		}
		if t.Failed() {
			t.Logf("---- %s (tail)\n%s", a.Spec.Name, redact(a.Tail(60), a.secrets()...))
		}
	})
	return a
}

// redact replaces every secret in s.
func redact(s string, secrets ...string) string {
	for _, sec := range secrets {
		if sec != "" {
			s = strings.ReplaceAll(s, sec, "<secret>")
		}
	}
	return s
}

// redactErr is err with every secret replaced (a command line that failed is in its text).
func redactErr(err error, secrets ...string) error {
	if err == nil {
		return nil
	}
	return errors.New(redact(err.Error(), secrets...))
}

// countLines counts the lines of pg's pull log that match.
func countLines(pg *Pullgate, match func(PullLine) bool) int {
	n := 0
	for _, l := range pg.PullLines() {
		if match(l) {
			n++
		}
	}
	return n
}

// servedTo counts the successful (2xx) requests for repo (in its upstream) that pullgate's pull log
// attributes to identity with the auth method.
func servedTo(pg *Pullgate, repo, identity, auth string) int {
	return countLines(pg, func(l PullLine) bool {
		return l.Repository == repo && l.Identity == identity && l.Auth == auth && l.Status >= 200 && l.Status < 300
	})
}

// servedToAnyone counts the successful requests for repo that pullgate's pull log records.
func servedToAnyone(pg *Pullgate, repo string) int {
	return countLines(pg, func(l PullLine) bool { return l.Repository == repo && l.Status >= 200 && l.Status < 300 })
}

// challenged counts the requests for repo that pullgate answered with 401 for want of credentials.
func challenged(pg *Pullgate, repo string) int {
	return countLines(pg, func(l PullLine) bool { return l.Repository == repo && l.Status == 401 && l.Auth == "anonymous" })
}

// registryError returns the HTTP status and the first OCI error code of a go-containerregistry error.
func registryError(err error) (int, string) {
	var te *transport.Error
	if !errors.As(err, &te) {
		return 0, ""
	}
	if len(te.Errors) == 0 {
		return te.StatusCode, ""
	}
	return te.StatusCode, string(te.Errors[0].Code)
}

// craneLogin runs `crane auth login HOST -u USER -p PASSWORD` with DOCKER_CONFIG set to a directory of t's own
// (for the rest of t); user "" logs in no one.
func craneLogin(ctx context.Context, t *testing.T, host, user, password string) {
	t.Helper()
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	if user == "" {
		return
	}
	login := cmd.NewCmdAuthLogin("crane", "auth")
	login.SetArgs([]string{host, "-u", user, "-p", password})
	login.SetOut(io.Discard)
	login.SetErr(io.Discard)
	if err := login.ExecuteContext(ctx); err != nil {
		t.Fatalf("crane auth login %s: %v", host, redactErr(err, password))
	}
}

// keychainTransport is rt authenticated as `crane pull` is after `crane auth login`: with what
// authn.DefaultKeychain (DOCKER_CONFIG) holds for ref's registry, through the registry's token service, for
// pulls of ref's repository.
func keychainTransport(ctx context.Context, ref string, rt http.RoundTripper) (http.RoundTripper, error) {
	r, err := name.ParseReference(ref, name.StrictValidation)
	if err != nil {
		return nil, err
	}
	auth, err := authn.DefaultKeychain.Resolve(r.Context().Registry)
	if err != nil {
		return nil, err
	}
	return transport.NewWithContext(ctx, r.Context().Registry, auth, rt, []string{r.Context().Scope(transport.PullScope)})
}

// TestAuthCrane logs robots in with `crane auth login` and pulls through pullgate with go-containerregistry
// and the default keychain; checks the challenge pullgate answers clients without credentials, Basic
// credentials on registry requests and the token service's OAuth2 form.
func TestAuthCrane(t *testing.T) {
	e := sharedEnv(t)
	pg := startAuthPullgate(t, e, authOptions{robots: []RobotOptions{
		{Name: "puller", Allow: []string{"local/e2e/layers10", "local/e2e/single"}},
		{Name: "other", Allow: []string{"local/e2e/multi"}},
	}})
	ctx := ctxFor(t, time.Minute)
	puller, secret := pg.user("puller")
	other, otherSecret := pg.user("other")
	l10, multi := e.fix.Layers10, e.fix.Multi

	t.Run("pull", func(t *testing.T) {
		tests := []struct {
			name, user, password, ref string
			want                      string // digest; empty when the pull must fail
			wantStatus                int
			wantCode                  string
		}{
			{name: "path prefix", user: puller, password: secret, ref: l10.Ref(pg.Addr + "/local"), want: l10.Digest.String()},
			{name: "default upstream", user: puller, password: secret, ref: l10.Ref(pg.Addr), want: l10.Digest.String()},
			{name: "by digest", user: puller, password: secret, ref: e.fix.Single.DigestRef(pg.Addr + "/local"), want: e.fix.Single.Digest.String()},
			{name: "robot_ user name", user: "robot_puller", password: secret, ref: l10.Ref(pg.Addr + "/local"), want: l10.Digest.String()},
			{name: "other robot, its repository", user: other, password: otherSecret, ref: multi.Ref(pg.Addr + "/local"), want: multi.Digest.String()},
			{name: "wrong password", user: puller, password: secret + "x", ref: l10.Ref(pg.Addr + "/local"), wantStatus: 401, wantCode: "UNAUTHORIZED"},
			{name: "unknown robot", user: "robot$nobody", password: secret, ref: l10.Ref(pg.Addr + "/local"), wantStatus: 401, wantCode: "UNAUTHORIZED"},
			{name: "not logged in", ref: l10.Ref(pg.Addr + "/local"), wantStatus: 401, wantCode: "UNAUTHORIZED"},
			{name: "robot not allowed the repository", user: other, password: otherSecret, ref: l10.Ref(pg.Addr + "/local"), wantStatus: 403, wantCode: "DENIED"},
			{name: "robot not allowed, by digest", user: puller, password: secret, ref: multi.DigestRef(pg.Addr + "/local"), wantStatus: 403, wantCode: "DENIED"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				craneLogin(ctx, t, pg.Addr, tt.user, tt.password)
				rt, err := keychainTransport(ctx, tt.ref, e.transport())
				var got pulled
				if err == nil {
					got, err = pullAll(ctx, tt.ref, rt)
				}
				if tt.want != "" {
					if err != nil {
						t.Fatalf("pull %s as %q: %v", tt.ref, tt.user, redactErr(err, pg.secrets()...))
					}
					if got.digest.String() != tt.want {
						t.Errorf("pull %s: digest %s, want %s", tt.ref, got.digest, tt.want)
					}
					return
				}
				if err == nil {
					t.Fatalf("pull %s as %q succeeded; want %d %s", tt.ref, tt.user, tt.wantStatus, tt.wantCode)
				}
				if status, code := registryError(err); status != tt.wantStatus || code != tt.wantCode {
					t.Errorf("pull %s as %q: %d %q, want %d %s (%v)", tt.ref, tt.user, status, code, tt.wantStatus, tt.wantCode,
						redactErr(err, pg.secrets()...))
				}
			})
		}
		if n := servedTo(pg.Pullgate, l10.Repo, "robot$puller", "robot"); n == 0 {
			t.Errorf("the pull log has no successful request for %s by robot$puller (auth robot)", l10.Repo)
		}
		if n := servedTo(pg.Pullgate, l10.Repo, "robot$other", "robot"); n != 0 {
			t.Errorf("the pull log has %d successful requests for %s by robot$other, which may not pull it", n, l10.Repo)
		}
	})

	t.Run("challenge", func(t *testing.T) {
		client := &http.Client{Transport: e.transport(), Timeout: 10 * time.Second}
		realm := "https://" + pg.Addr + "/token"
		tests := []struct{ name, path, want string }{
			{"base", "/v2/", fmt.Sprintf(`Bearer realm=%q,service="pullgate"`, realm)},
			{"default upstream", "/v2/e2e/layers10/manifests/v1",
				fmt.Sprintf(`Bearer realm=%q,service="pullgate",scope="repository:e2e/layers10:pull"`, realm)},
			{"path prefix", "/v2/local/e2e/layers10/manifests/v1",
				fmt.Sprintf(`Bearer realm=%q,service="pullgate",scope="repository:local/e2e/layers10:pull"`, realm)},
			{"mirror", "/v2/e2e/layers10/blobs/" + l10.Blobs[1].String() + "?ns=" + e.upHost(),
				fmt.Sprintf(`Bearer realm=%q,service="pullgate",scope="repository:e2e/layers10:pull"`, realm+"?ns="+e.upHost())},
			{"a repository that does not exist", "/v2/local/e2e/nothing/manifests/v1",
				fmt.Sprintf(`Bearer realm=%q,service="pullgate",scope="repository:local/e2e/nothing:pull"`, realm)},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				resp, body, err := get(ctx, client, pg.URL+tt.path, nil)
				if err != nil {
					t.Fatal(err)
				}
				if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") != tt.want {
					t.Errorf("GET %s without credentials: %s, WWW-Authenticate %q; want 401 and %q\n%s", tt.path, resp.Status,
						resp.Header.Get("WWW-Authenticate"), tt.want, body)
				}
			})
		}
	})

	t.Run("basic credentials on registry requests", func(t *testing.T) {
		client := &http.Client{Transport: e.transport(), Timeout: 10 * time.Second}
		tests := []struct {
			name, user, password string
			wantStatus           int
			wantCode             string
		}{
			{"allowed", puller, secret, 200, ""},
			{"not allowed", other, otherSecret, 403, "DENIED"},
			{"wrong password", puller, otherSecret, 401, "UNAUTHORIZED"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				resp, body, err := get(ctx, client, pg.URL+"/v2/local/"+l10.Repo+"/manifests/"+l10.Digest.String(), func(r *http.Request) {
					r.SetBasicAuth(tt.user, tt.password)
					r.Header.Set("Accept", string(l10.MediaType))
				})
				if err != nil {
					t.Fatal(err)
				}
				if resp.StatusCode != tt.wantStatus || errorCode(body) != tt.wantCode {
					t.Fatalf("GET the manifest with Basic %s: %s %q, want %d %q", tt.user, resp.Status, errorCode(body), tt.wantStatus, tt.wantCode)
				}
				if tt.wantStatus == 200 && resp.Header.Get("Docker-Content-Digest") != l10.Digest.String() {
					t.Errorf("Docker-Content-Digest %q, want %s", resp.Header.Get("Docker-Content-Digest"), l10.Digest)
				}
			})
		}
	})

	t.Run("oauth2 password grant", func(t *testing.T) {
		client := &http.Client{Transport: e.transport(), Timeout: 10 * time.Second}
		form := url.Values{"grant_type": {"password"}, "username": {puller}, "password": {secret}, "service": {"pullgate"},
			"client_id": {"e2e"}, "scope": {"repository:local/e2e/layers10:pull repository:local/e2e/multi:pull"}}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, pg.URL+"/token", strings.NewReader(form.Encode()))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("POST /token: %s %v", resp.Status, err)
		}
		var tok struct {
			AccessToken string `json:"access_token"`
		}
		if err := json.Unmarshal(body, &tok); err != nil || tok.AccessToken == "" {
			t.Fatalf("POST /token answered no access_token: %v", err)
		}
		// The token covers what was asked for and may be pulled: not single (allowed, not asked for: 401
		// insufficient_scope, so the client asks again) and not multi (asked for, not allowed: 403).
		tests := []struct {
			repo, wantCode string
			wantStatus     int
			wantChallenge  string
		}{
			{l10.Repo, "", 200, ""},
			{e.fix.Single.Repo, "UNAUTHORIZED", 401, `error="insufficient_scope"`},
			{multi.Repo, "DENIED", 403, ""},
		}
		for _, c := range tests {
			resp, body, err := get(ctx, client, pg.URL+"/v2/local/"+c.repo+"/manifests/v1", func(r *http.Request) {
				r.Header.Set("Authorization", "Bearer "+tok.AccessToken)
				r.Header.Set("Accept", string(l10.MediaType)+","+string(multi.MediaType)+","+string(e.fix.Single.MediaType))
			})
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != c.wantStatus || errorCode(body) != c.wantCode ||
				!strings.Contains(resp.Header.Get("WWW-Authenticate"), c.wantChallenge) {
				t.Errorf("GET %s with the token: %s %q (WWW-Authenticate %q), want %d %q (%s)", c.repo, resp.Status, errorCode(body),
					resp.Header.Get("WWW-Authenticate"), c.wantStatus, c.wantCode, c.wantChallenge)
			}
		}
	})
}

// get sends a GET with edit applied and returns the answer and up to 64 KiB of its body.
func get(ctx context.Context, client *http.Client, u string, edit func(*http.Request)) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, nil, err
	}
	if edit != nil {
		edit(req)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp, body, err
}

// errorCode is the first OCI error code of an error body, or "".
func errorCode(body []byte) string {
	var e struct {
		Errors []struct {
			Code string `json:"code"`
		} `json:"errors"`
	}
	if json.Unmarshal(body, &e) != nil || len(e.Errors) == 0 {
		return ""
	}
	return e.Errors[0].Code
}

// TestAuthAnonymousPatterns checks PULLGATE_ANONYMOUS: with robots configured, clients without credentials
// may pull what the patterns name and nothing else.
func TestAuthAnonymousPatterns(t *testing.T) {
	e := sharedEnv(t)
	pg := startAuthPullgate(t, e, authOptions{
		robots:    []RobotOptions{{Name: "puller", Allow: []string{"local/e2e/**"}}},
		anonymous: []string{"local/e2e/single"},
	})
	ctx := ctxFor(t, time.Minute)
	tests := []struct {
		name     string
		im       Image
		wantCode string
	}{
		{"open repository", e.fix.Single, ""},
		{"closed repository", e.fix.Layers10, "UNAUTHORIZED"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			craneLogin(ctx, t, pg.Addr, "", "")
			ref := tt.im.Ref(pg.Addr + "/local")
			rt, err := keychainTransport(ctx, ref, e.transport())
			var got pulled
			if err == nil {
				got, err = pullAll(ctx, ref, rt)
			}
			if tt.wantCode == "" {
				if err != nil || got.digest != tt.im.Digest {
					t.Fatalf("anonymous pull of %s: %s, %v", ref, got.digest, err)
				}
				if servedTo(pg.Pullgate, tt.im.Repo, "", "anonymous") == 0 {
					t.Errorf("the pull log has no successful anonymous request for %s", tt.im.Repo)
				}
				return
			}
			if _, code := registryError(err); code != tt.wantCode {
				t.Errorf("anonymous pull of %s: %v, want %s", ref, err, tt.wantCode)
			}
		})
	}
}

// TestAuthSkopeo copies an image through pullgate with `skopeo copy --src-creds`.
func TestAuthSkopeo(t *testing.T) {
	skopeo := requireTool(t, "skopeo")
	e := sharedEnv(t)
	pg := startAuthPullgate(t, e, authOptions{robots: []RobotOptions{
		{Name: "puller", Allow: []string{"local/e2e/layers10"}},
		{Name: "other", Allow: []string{"local/e2e/multi"}},
	}})
	ctx := ctxFor(t, time.Minute)
	certDir := t.TempDir()
	if err := os.Symlink(e.caFile(), filepath.Join(certDir, "ca.crt")); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(t.TempDir(), "registries.conf")
	if err := os.WriteFile(conf, []byte("unqualified-search-registries = []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	puller, secret := pg.user("puller")
	other, otherSecret := pg.user("other")
	im := e.fix.Layers10
	tests := []struct {
		name  string
		creds []string // skopeo flags
		want  string   // what the error output must say; empty for success
	}{
		{"robot", []string{"--src-creds", puller + ":" + secret}, ""},
		{"wrong password", []string{"--src-creds", puller + ":" + otherSecret}, "unauthorized"},
		{"no credentials", []string{"--src-no-creds"}, "unauthorized"},
		{"robot not allowed", []string{"--src-creds", other + ":" + otherSecret}, "denied"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			home := t.TempDir()
			out := filepath.Join(home, "out")
			args := append([]string{"--registries-conf", conf, "--insecure-policy", "copy", "--retry-times", "0",
				"--src-cert-dir", certDir}, tt.creds...)
			args = append(args, "docker://"+im.Ref(pg.Addr+"/local"), "dir:"+out)
			output, err := Run(ctx, time.Minute, []string{"HOME=" + home, "REGISTRY_AUTH_FILE=" + filepath.Join(home, "auth.json")}, skopeo, args...)
			if tt.want == "" {
				if err != nil {
					t.Fatal(redactErr(err, pg.secrets()...))
				}
				checkDirCopy(t, out, im)
				return
			}
			if err == nil {
				t.Fatalf("skopeo copy with %s succeeded", tt.name)
			}
			if !strings.Contains(strings.ToLower(output), tt.want) {
				t.Errorf("skopeo copy with %s failed without saying %q:\n%s", tt.name, tt.want, redact(output, pg.secrets()...))
			}
		})
	}
	if servedTo(pg.Pullgate, im.Repo, "robot$puller", "robot") == 0 {
		t.Errorf("the pull log has no successful request for %s by robot$puller", im.Repo)
	}
	if n := servedToAnyone(pg.Pullgate, im.Repo) - servedTo(pg.Pullgate, im.Repo, "robot$puller", "robot"); n != 0 {
		t.Errorf("the pull log has %d successful requests for %s by others than robot$puller", n, im.Repo)
	}
}

// TestAuthCtr pulls with `ctr image pull --user robot$NAME:SECRET --hosts-dir` from a containerd daemon, by
// pullgate's name and through pullgate as the upstream's mirror.
func TestAuthCtr(t *testing.T) {
	ctr := requireTool(t, "ctr")
	containerd := requireTool(t, "containerd")
	requireRoot(t)
	e := sharedEnv(t)
	pg := startAuthPullgate(t, e, authOptions{robots: []RobotOptions{
		{Name: "puller", Allow: []string{"local/e2e/layers10"}},
		{Name: "other", Allow: []string{"local/e2e/multi"}},
	}})
	ctx := ctxFor(t, 2*time.Minute)
	sock := startContainerd(ctx, t, containerd, ctr)
	hostsDir := t.TempDir()
	writeHostsFile(t, hostsDir, e.upHost(), hostsTOML("https://"+refusedHost, pg.URL, e.caFile()))
	writeHostsFile(t, hostsDir, pg.Addr, hostsTOML(pg.URL, pg.URL, e.caFile()))
	puller, secret := pg.user("puller")
	other, otherSecret := pg.user("other")
	im := e.fix.Layers10
	tests := []struct {
		name, host, user string
		want             string // what the error must say; empty for success
	}{
		{"prefix", pg.Addr + "/local", puller + ":" + secret, ""},
		{"mirror", e.upHost(), puller + ":" + secret, ""},
		{"prefix, wrong password", pg.Addr + "/local", puller + ":" + otherSecret, "401 Unauthorized"},
		{"mirror, no credentials", e.upHost(), "", "401 Unauthorized"},
		{"prefix, robot not allowed", pg.Addr + "/local", other + ":" + otherSecret, "403 Forbidden"},
		{"mirror, robot not allowed", e.upHost(), other + ":" + otherSecret, "403 Forbidden"},
	}
	ctrArgs := func(args ...string) []string {
		return append([]string{"--address", sock, "--namespace", "e2e"}, args...)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ref := im.Ref(tt.host)
			args := ctrArgs("image", "pull", "--hosts-dir", hostsDir, "--snapshotter", "native")
			if tt.user != "" {
				args = append(args, "--user", tt.user)
			}
			_, err := Run(ctx, time.Minute, nil, ctr, append(args, ref)...)
			if tt.want != "" {
				if err == nil {
					t.Fatalf("ctr image pull %s (%s) succeeded", ref, tt.name)
				}
				if !strings.Contains(err.Error(), tt.want) {
					t.Errorf("ctr image pull %s failed without %q: %v", ref, tt.want, redactErr(err, pg.secrets()...))
				}
				return
			}
			if err != nil {
				t.Fatal(redactErr(err, pg.secrets()...))
			}
			out, err := Run(ctx, 30*time.Second, nil, ctr, ctrArgs("image", "ls")...)
			if err != nil {
				t.Fatal(err)
			}
			if got := imageDigest(out, ref); got != im.Digest.String() {
				t.Errorf("containerd has %s as %q, want %s", ref, got, im.Digest)
			}
			// Content is shared between names: remove it, so that the next pull fetches everything again.
			if _, err := Run(ctx, 30*time.Second, nil, ctr, ctrArgs("image", "rm", "--sync", ref)...); err != nil {
				t.Fatal(err)
			}
		})
	}
	if servedTo(pg.Pullgate, im.Repo, "robot$puller", "robot") == 0 {
		t.Errorf("the pull log has no successful request for %s by robot$puller", im.Repo)
	}
	if n := servedToAnyone(pg.Pullgate, im.Repo) - servedTo(pg.Pullgate, im.Repo, "robot$puller", "robot"); n != 0 {
		t.Errorf("the pull log has %d successful requests for %s by others than robot$puller", n, im.Repo)
	}
}

// TestAuthCRI pulls through containerd's CRI plugin as the kubelet does for a pod with an image pull secret:
// the AuthConfig comes from the secret's entry for the image's registry. By pullgate's name (the secret keyed
// by pullgate's host) and with pullgate as the upstream's hosts.toml mirror (the secret keyed by the upstream's
// host: containerd's first request carries nothing, its retry after pullgate's challenge the credentials).
func TestAuthCRI(t *testing.T) {
	containerd := requireTool(t, "containerd")
	requireRoot(t)
	e := sharedEnv(t)
	pg := startAuthPullgate(t, e, authOptions{robots: []RobotOptions{
		{Name: "puller", Allow: []string{"local/e2e/layers10", "local/e2e/multi"}},
		{Name: "other", Allow: []string{"local/e2e/single"}},
	}})
	ctx := ctxFor(t, 2*time.Minute)
	hostsDir := t.TempDir()
	writeHostsFile(t, hostsDir, e.upHost(), hostsTOML("https://"+refusedHost, pg.URL, e.caFile()))
	writeHostsFile(t, hostsDir, pg.Addr, hostsTOML(pg.URL, pg.URL, e.caFile()))
	images := startCRIContainerd(ctx, t, containerd, hostsDir)
	puller, secret := pg.user("puller")
	other, otherSecret := pg.user("other")
	keyring := func(t *testing.T, dockerConfigJSON []byte) *Keyring {
		k, err := ParseDockerConfigJSON(dockerConfigJSON)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	kubectlSecret := func(server, user, password string) func(t *testing.T) *Keyring {
		return func(t *testing.T) *Keyring { return keyring(t, pullSecret(ctx, t, server, user, password)) }
	}
	cliSecret := func(t *testing.T) *Keyring { return keyring(t, pg.robots["puller"].DockerConfigJSON) }
	noSecret := func(*testing.T) *Keyring { return nil }
	prefix, mirror := pg.Addr+"/local", e.upHost()
	tests := []struct {
		name   string
		host   string
		im     Image
		secret func(t *testing.T) *Keyring
		want   string // what the error must say; empty for success
	}{
		{"prefix", prefix, e.fix.Layers10, kubectlSecret(pg.Addr, puller, secret), ""},
		{"prefix, index", prefix, e.fix.Multi, kubectlSecret(pg.Addr, puller, secret), ""},
		{"prefix, secret from pullgate robot create", prefix, e.fix.Layers10, cliSecret, ""},
		{"mirror", mirror, e.fix.Layers10, kubectlSecret(e.upHost(), puller, secret), ""},
		{"mirror, index", mirror, e.fix.Multi, kubectlSecret(e.upHost(), puller, secret), ""},
		{"mirror, secret from pullgate robot create", mirror, e.fix.Layers10, cliSecret, ""},
		{"prefix, no secret", prefix, e.fix.Layers10, noSecret, "401 Unauthorized"},
		{"mirror, no secret", mirror, e.fix.Layers10, noSecret, "401 Unauthorized"},
		// The kubelet picks credentials by the image's registry, not by its mirror.
		{"mirror, secret for pullgate's host", mirror, e.fix.Layers10, kubectlSecret(pg.Addr, puller, secret), "401 Unauthorized"},
		{"prefix, wrong password", prefix, e.fix.Layers10, kubectlSecret(pg.Addr, puller, otherSecret), "401 Unauthorized"},
		{"mirror, wrong password", mirror, e.fix.Layers10, kubectlSecret(e.upHost(), puller, otherSecret), "401 Unauthorized"},
		{"prefix, robot not allowed", prefix, e.fix.Layers10, kubectlSecret(pg.Addr, other, otherSecret), "403 Forbidden"},
		{"mirror, robot not allowed", mirror, e.fix.Layers10, kubectlSecret(e.upHost(), other, otherSecret), "403 Forbidden"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ref := tt.im.Ref(tt.host)
			challenges, served := challenged(pg.Pullgate, tt.im.Repo), servedTo(pg.Pullgate, tt.im.Repo, "robot$puller", "robot")
			id, err := kubeletPull(ctx, images, ref, tt.secret(t))
			if tt.want != "" {
				if err == nil {
					removeCRIImage(ctx, t, images, ref)
					t.Fatalf("CRI pull of %s (%s) succeeded", ref, tt.name)
				}
				if !strings.Contains(err.Error(), tt.want) {
					t.Errorf("CRI pull of %s failed without %q: %v", ref, tt.want, redactErr(err, pg.secrets()...))
				}
				st, err := images.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
				if err != nil || st.GetImage() != nil {
					t.Errorf("after a failed pull, ImageStatus %s: %v, %v", ref, st.GetImage(), err)
				}
				return
			}
			if err != nil {
				t.Fatal(redactErr(err, pg.secrets()...))
			}
			checkCRIImage(ctx, t, images, ref, id, tt.im)
			removeCRIImage(ctx, t, images, ref)
			// containerd's first request carries nothing; its retry after pullgate's challenge the credentials.
			if challenged(pg.Pullgate, tt.im.Repo) == challenges {
				t.Errorf("pullgate logged no 401 for %s: containerd sent credentials unasked, or pullgate did not ask", tt.im.Repo)
			}
			if servedTo(pg.Pullgate, tt.im.Repo, "robot$puller", "robot") == served {
				t.Errorf("the pull log has no new successful request for %s by robot$puller (auth robot)", tt.im.Repo)
			}
		})
	}
	for _, im := range []Image{e.fix.Layers10, e.fix.Multi} {
		if n := servedToAnyone(pg.Pullgate, im.Repo) - servedTo(pg.Pullgate, im.Repo, "robot$puller", "robot"); n != 0 {
			t.Errorf("the pull log has %d successful requests for %s by others than robot$puller", n, im.Repo)
		}
	}
}

// TestAuthMTLS pulls through containerd's CRI plugin with no pull secret, the node identified by a client
// certificate (hosts.toml `client`) from PULLGATE_CLIENT_CA_FILE's CA that the robots file maps to a robot or
// to patterns; a certificate from another CA is no identity.
func TestAuthMTLS(t *testing.T) {
	containerd := requireTool(t, "containerd")
	requireRoot(t)
	e := sharedEnv(t)
	certs := t.TempDir()
	clientCA, err := NewCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	otherCA, err := NewCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	type pair struct{ cert, key string }
	issue := func(ca *CA, dir, cn string) pair {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		c, k, err := ca.IssueClient(dir, cn)
		if err != nil {
			t.Fatal(err)
		}
		return pair{c, k}
	}
	node1 := issue(clientCA, filepath.Join(certs, "ours"), "node-1")
	node2 := issue(clientCA, filepath.Join(certs, "ours"), "node-2")
	stranger := issue(clientCA, filepath.Join(certs, "ours"), "stranger")
	forged := issue(otherCA, filepath.Join(certs, "other"), "node-1")
	pg := startAuthPullgate(t, e, authOptions{
		robots: []RobotOptions{{Name: "node", Allow: []string{"local/e2e/layers10"}}},
		clients: []ClientMapping{
			{Subject: "node-1", Robot: "node"},
			{Subject: "node-2", Pull: []string{"local/e2e/multi"}},
		},
		clientCA: clientCA.CertFile,
	})
	ctx := ctxFor(t, 2*time.Minute)
	hostsDir := t.TempDir()
	images := startCRIContainerd(ctx, t, containerd, hostsDir)
	prefix, mirror := pg.Addr+"/local", e.upHost()
	tests := []struct {
		name   string
		host   string
		im     Image
		client *pair
		wantID string // the identity in the pull log for a success
		want   string // what the error must say; empty for success
	}{
		{"mirror, node mapped to a robot", mirror, e.fix.Layers10, &node1, "cert:node-1", ""},
		{"prefix, node mapped to a robot", prefix, e.fix.Layers10, &node1, "cert:node-1", ""},
		{"mirror, node with patterns", mirror, e.fix.Multi, &node2, "cert:node-2", ""},
		{"mirror, node not allowed", mirror, e.fix.Multi, &node1, "", "403 Forbidden"},
		{"mirror, node with patterns, not allowed", mirror, e.fix.Layers10, &node2, "", "403 Forbidden"},
		{"mirror, certificate nobody maps", mirror, e.fix.Layers10, &stranger, "", "403 Forbidden"},
		{"mirror, no certificate", mirror, e.fix.Layers10, nil, "", "401 Unauthorized"},
		// pullgate refuses the handshake (it verifies a certificate that is given).
		{"mirror, certificate from another CA", mirror, e.fix.Layers10, &forged, "", "tls: unknown certificate authority"},
		{"prefix, certificate from another CA", prefix, e.fix.Layers10, &forged, "", "tls: unknown certificate authority"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var client []string
			if tt.client != nil {
				client = []string{tt.client.cert, tt.client.key}
			}
			// containerd reads the hosts directory at every pull.
			writeHostsFile(t, hostsDir, e.upHost(), hostsTOML("https://"+refusedHost, pg.URL, e.caFile(), client...))
			writeHostsFile(t, hostsDir, pg.Addr, hostsTOML(pg.URL, pg.URL, e.caFile(), client...))
			ref := tt.im.Ref(tt.host)
			before := servedTo(pg.Pullgate, tt.im.Repo, tt.wantID, "mtls")
			id, err := kubeletPull(ctx, images, ref, nil)
			if tt.want != "" {
				if err == nil {
					removeCRIImage(ctx, t, images, ref)
					t.Fatalf("CRI pull of %s (%s) succeeded", ref, tt.name)
				}
				if !strings.Contains(err.Error(), tt.want) {
					t.Errorf("CRI pull of %s failed without %q: %v", ref, tt.want, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			checkCRIImage(ctx, t, images, ref, id, tt.im)
			removeCRIImage(ctx, t, images, ref)
			if servedTo(pg.Pullgate, tt.im.Repo, tt.wantID, "mtls") == before {
				t.Errorf("the pull log has no new successful request for %s by %s (auth mtls)", tt.im.Repo, tt.wantID)
			}
		})
	}
	for _, l := range pg.PullLines() {
		if l.Auth == "mtls" && l.Identity != "cert:node-1" && l.Identity != "cert:node-2" && l.Status < 300 {
			t.Errorf("pullgate served %s to %q (mtls)", l.Path, l.Identity)
		}
	}
}
