package identity

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/pullgate/pullgate/names"
	"github.com/pullgate/pullgate/watch"
)

// clock is an adjustable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// fixture is a robots file on disk with a Service over it.
type fixture struct {
	t       *testing.T
	clock   *clock
	path    string
	file    *File
	secrets map[string]string // robot name -> its clear secret (the newest)
	svc     *Service
	checker *countingChecker
}

// countingChecker is an UpstreamChecker with fixed answers by user name: "ok" users may pull, "no" users are
// refused, anything else cannot be asked.
type countingChecker struct {
	mu    sync.Mutex
	calls int
}

func (c *countingChecker) CheckPull(_ context.Context, upstream, repo, user, pass string) error {
	c.mu.Lock()
	c.calls++
	c.mu.Unlock()
	switch {
	case strings.HasPrefix(user, "ok") && pass == "right":
		return nil
	case strings.HasPrefix(user, "ok"), strings.HasPrefix(user, "no"):
		return fmt.Errorf("%w: upstream %s refused", ErrDenied, upstream)
	}
	return errors.New("upstream down")
}

func (c *countingChecker) count() int { c.mu.Lock(); defer c.mu.Unlock(); return c.calls }

func newFixture(t *testing.T, opts Options, robots ...Robot) *fixture {
	t.Helper()
	f := &fixture{t: t, clock: &clock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}, secrets: map[string]string{},
		path: filepath.Join(t.TempDir(), "robots.yaml"), file: &File{}, checker: &countingChecker{}}
	for _, r := range robots {
		clear, s, err := NewSecret(f.clock.now(), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		r.Secrets = append(r.Secrets, s)
		r.Created = f.clock.now()
		f.secrets[r.Name] = clear
		f.file.Robots = append(f.file.Robots, r)
	}
	f.write()
	signer, err := NewSigner(SignerOptions{Dir: filepath.Join(t.TempDir(), "keys"), Now: f.clock.now})
	if err != nil {
		t.Fatal(err)
	}
	opts.RobotsFile, opts.Signer, opts.Now = f.path, signer, f.clock.now
	if len(opts.Passthrough) > 0 {
		opts.Checker = f.checker
	}
	if f.svc, err = New(opts); err != nil {
		t.Fatal(err)
	}
	return f
}

// write saves the file; change moves the clock past the reload interval so that the Service reads it again.
func (f *fixture) write() {
	f.t.Helper()
	if err := f.file.Write(f.path); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) change(edit func(*File)) {
	f.t.Helper()
	edit(f.file)
	f.write()
	// A rewrite within the same second of the same size must still be seen: bump the modification time.
	mt := f.clock.now().Add(time.Hour)
	if err := os.Chtimes(f.path, mt, mt); err != nil {
		f.t.Fatal(err)
	}
	f.clock.add(watch.Interval)
}

func (f *fixture) login(user, secret string) (Principal, error) {
	return f.svc.Login(context.Background(), "192.0.2.1", user, secret)
}

func patterns(t *testing.T, globs ...string) []names.Pattern {
	t.Helper()
	ps, err := names.CompilePatterns(globs)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

func TestRobotLogin(t *testing.T) {
	expired := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	f := newFixture(t, Options{RobotPrefix: "bot-"},
		Robot{Name: "ci", Pull: []string{"docker.io/library/**"}},
		Robot{Name: "old", Pull: []string{"**"}, Expires: &expired},
		Robot{Name: "off", Pull: []string{"**"}, Disabled: true},
	)
	tests := []struct {
		name, user, secret string
		want               error
	}{
		{"robot$ prefix", "robot$ci", f.secrets["ci"], nil},
		{"robot_ prefix", "robot_ci", f.secrets["ci"], nil},
		{"configured prefix", "bot-ci", f.secrets["ci"], nil},
		{"no prefix", "ci", f.secrets["ci"], ErrBadCredentials},
		{"wrong secret", "robot$ci", f.secrets["ci"] + "x", ErrBadCredentials},
		{"empty secret", "robot$ci", "", ErrBadCredentials},
		{"unknown robot", "robot$nobody", f.secrets["ci"], ErrBadCredentials},
		{"expired robot", "robot$old", f.secrets["old"], ErrBadCredentials},
		{"disabled robot", "robot$off", f.secrets["off"], ErrBadCredentials},
		{"another robot's secret", "robot$ci", f.secrets["old"], ErrBadCredentials},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := f.login(tt.user, tt.secret)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("Login(%q): %v, want %v", tt.user, err, tt.want)
			}
			if tt.want != nil {
				if err.Error() != ErrBadCredentials.Error() {
					t.Errorf("the answer %q says more than %q", err, ErrBadCredentials)
				}
				return
			}
			if p.Name != "robot$ci" || p.Method != MethodRobot {
				t.Errorf("principal %v, want robot$ci (robot)", p)
			}
		})
	}
}

// TestRobotLosesAccessAtOnce holds that a disabled, expired, rotated-out or deleted robot loses access at once:
// through its secret (even one verified and remembered before), through tokens already issued, and through
// refresh tokens.
func TestRobotLosesAccessAtOnce(t *testing.T) {
	tests := []struct {
		name string
		edit func(f *fixture, r *Robot)
	}{
		{"disabled", func(_ *fixture, r *Robot) { r.Disabled = true }},
		{"expired", func(f *fixture, r *Robot) {
			e := f.clock.now().Add(time.Second)
			r.Expires = &e
			f.clock.add(time.Second)
		}},
		{"secret rotated out", func(f *fixture, r *Robot) {
			_, s, err := NewSecret(f.clock.now(), bcrypt.MinCost)
			if err != nil {
				f.t.Fatal(err)
			}
			end := f.clock.now()
			r.Secrets[0].Expires = &end
			r.Secrets = append(r.Secrets, s)
		}},
		{"deleted", func(_ *fixture, r *Robot) { r.Name = "someone-else" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, Options{}, Robot{Name: "ci", Pull: []string{"docker.io/**"}})
			p, err := f.login("robot$ci", f.secrets["ci"])
			if err != nil {
				t.Fatal(err)
			}
			if err := f.svc.Authorize(context.Background(), p, "docker.io", "library/nginx"); err != nil {
				t.Fatalf("before: %v", err)
			}
			g, err := f.svc.Issue(p, []string{"docker.io/library/nginx"}, true)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.svc.bearer(g.Token); err != nil {
				t.Fatalf("token before: %v", err)
			}
			f.change(func(file *File) { tt.edit(f, &file.Robots[0]) })

			if _, err := f.login("robot$ci", f.secrets["ci"]); !errors.Is(err, ErrBadCredentials) {
				t.Errorf("login after: %v, want ErrBadCredentials", err)
			}
			if _, err := f.svc.bearer(g.Token); !errors.Is(err, ErrBadCredentials) {
				t.Errorf("token after: %v, want ErrBadCredentials", err)
			}
			if _, err := f.svc.Refresh(g.RefreshToken); !errors.Is(err, ErrBadCredentials) {
				t.Errorf("refresh token after: %v, want ErrBadCredentials", err)
			}
			if err := f.svc.Authorize(context.Background(), p, "docker.io", "library/nginx"); err == nil {
				t.Error("a principal authenticated before is still authorized after")
			}
		})
	}
}

// TestRotationGrace holds that after a rotation both secrets work until the grace ends, then only the new one.
func TestRotationGrace(t *testing.T) {
	f := newFixture(t, Options{}, Robot{Name: "ci", Pull: []string{"**"}})
	old := f.secrets["ci"]
	clear, s, err := NewSecret(f.clock.now(), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	f.change(func(file *File) {
		end := f.clock.now().Add(time.Hour)
		file.Robots[0].Secrets[0].Expires = &end
		file.Robots[0].Secrets = append(file.Robots[0].Secrets, s)
	})
	for _, secret := range []string{old, clear} {
		if _, err := f.login("robot$ci", secret); err != nil {
			t.Fatalf("within the grace: %v", err)
		}
	}
	f.clock.add(time.Hour)
	if _, err := f.login("robot$ci", old); !errors.Is(err, ErrBadCredentials) {
		t.Errorf("old secret after the grace: %v", err)
	}
	if _, err := f.login("robot$ci", clear); err != nil {
		t.Errorf("new secret after the grace: %v", err)
	}
}

// TestFailedLoginsRateLimited holds that failures are counted per source address and per user name, that a
// limited login is refused without checking the secret, and that the limit drains.
func TestFailedLoginsRateLimited(t *testing.T) {
	f := newFixture(t, Options{FailureBurst: 3, FailureDrain: 10 * time.Second}, Robot{Name: "ci", Pull: []string{"**"}})
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if _, err := f.svc.Login(ctx, "192.0.2.7", "robot$ci", "wrong"); !errors.Is(err, ErrBadCredentials) {
			t.Fatalf("failure %d: %v", i, err)
		}
	}
	var rl *RateLimitedError
	if _, err := f.svc.Login(ctx, "192.0.2.7", "robot$ci", f.secrets["ci"]); !errors.As(err, &rl) || rl.RetryAfter <= 0 {
		t.Fatalf("right secret while limited: %v, want *RateLimitedError", err)
	}
	// The user name is limited from any address.
	if _, err := f.svc.Login(ctx, "198.51.100.1", "robot$ci", "wrong"); !errors.As(err, &rl) {
		t.Errorf("same user, other address: %v, want *RateLimitedError", err)
	}
	// Another user from another address is not.
	if _, err := f.svc.Login(ctx, "198.51.100.1", "robot$other", "wrong"); !errors.Is(err, ErrBadCredentials) {
		t.Errorf("other user, other address: %v, want ErrBadCredentials", err)
	}
	f.clock.add(rl.RetryAfter)
	if _, err := f.svc.Login(ctx, "192.0.2.7", "robot$ci", f.secrets["ci"]); err != nil {
		t.Errorf("after the drain: %v", err)
	}
}

// TestVerifiedSecretSkipsRateLimit holds that a client whose secret was verified keeps working while an attacker
// fails logins for the same robot name from elsewhere.
func TestVerifiedSecretSkipsRateLimit(t *testing.T) {
	f := newFixture(t, Options{FailureBurst: 2}, Robot{Name: "ci", Pull: []string{"**"}})
	ctx := context.Background()
	if _, err := f.svc.Login(ctx, "192.0.2.7", "robot$ci", f.secrets["ci"]); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		_, _ = f.svc.Login(ctx, "203.0.113.9", "robot$ci", "guess")
	}
	if _, err := f.svc.Login(ctx, "192.0.2.7", "robot$ci", f.secrets["ci"]); err != nil {
		t.Errorf("the verified client after an attack: %v", err)
	}
}

func TestAuthorize(t *testing.T) {
	f := newFixture(t, Options{Anonymous: patterns(t, "docker.io/library/*")},
		Robot{Name: "ci", Pull: []string{"ghcr.io/team/**"}})
	ctx := context.Background()
	robot, err := f.login("robot$ci", f.secrets["ci"])
	if err != nil {
		t.Fatal(err)
	}
	g, err := f.svc.Issue(robot, []string{"ghcr.io/team/app"}, false)
	if err != nil {
		t.Fatal(err)
	}
	token, err := f.svc.bearer(g.Token)
	if err != nil {
		t.Fatal(err)
	}
	anonGrant, err := f.svc.Issue(Anonymous(), nil, false)
	if err != nil {
		t.Fatal(err)
	}
	anonToken, err := f.svc.bearer(anonGrant.Token)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		p        Principal
		up, repo string
		want     error
	}{
		{"anonymous, anonymous pattern", Anonymous(), "docker.io", "library/nginx", nil},
		{"anonymous, deeper than the pattern", Anonymous(), "docker.io", "library/a/b", ErrUnauthenticated},
		{"anonymous, private", Anonymous(), "ghcr.io", "team/app", ErrUnauthenticated},
		{"robot, its pattern", robot, "ghcr.io", "team/app", nil},
		{"robot, anonymous pattern", robot, "docker.io", "library/nginx", nil},
		{"robot, outside", robot, "ghcr.io", "other/app", ErrDenied},
		{"robot, same repository at another upstream", robot, "quay.io", "team/app", ErrDenied},
		{"token, granted", token, "ghcr.io", "team/app", nil},
		{"token, not granted but allowed", token, "ghcr.io", "team/web", ErrInsufficientScope},
		{"token, not allowed", token, "ghcr.io", "other/app", ErrDenied},
		{"token, anonymous pattern", token, "docker.io", "library/nginx", nil},
		{"anonymous token, private", anonToken, "ghcr.io", "team/app", ErrUnauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := f.svc.Authorize(ctx, tt.p, tt.up, tt.repo); !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Errorf("Authorize(%s/%s): %v, want %v", tt.up, tt.repo, err, tt.want)
			}
		})
	}
	// Permissions are read at every use: narrowing them takes effect for a token already issued.
	f.change(func(file *File) { file.Robots[0].Pull = []string{"ghcr.io/team/web"} })
	if err := f.svc.Authorize(ctx, token, "ghcr.io", "team/app"); !errors.Is(err, ErrDenied) {
		t.Errorf("token after its robot lost the repository: %v, want ErrDenied", err)
	}
}

// TestPassthrough holds that passed-through credentials are checked with the upstream per repository, that the
// answer is remembered for PassthroughTTL by credentials, upstream and repository, and that an upstream that
// cannot be asked is not taken for a refusal (nor remembered).
func TestPassthrough(t *testing.T) {
	f := newFixture(t, Options{Passthrough: patterns(t, "docker.io/**"), PassthroughTTL: time.Minute})
	ctx := context.Background()
	login := func(user, pass string) Principal {
		t.Helper()
		p, err := f.login(user, pass)
		if err != nil || p.Method != MethodPassthrough {
			t.Fatalf("Login(%s): %v %v", user, p, err)
		}
		return p
	}
	alice := login("ok-alice", "right")
	if err := f.svc.Authorize(ctx, alice, "docker.io", "alice/private"); err != nil {
		t.Fatalf("accepted: %v", err)
	}
	if err := f.svc.Authorize(ctx, alice, "docker.io", "alice/private"); err != nil || f.checker.count() != 1 {
		t.Fatalf("second ask: %v after %d upstream checks, want nil after 1", err, f.checker.count())
	}
	if err := f.svc.Authorize(ctx, alice, "docker.io", "alice/other"); err != nil || f.checker.count() != 2 {
		t.Errorf("another repository: %v after %d checks, want a check of its own", err, f.checker.count())
	}
	wrong := login("ok-alice", "wrong")
	if err := f.svc.Authorize(ctx, wrong, "docker.io", "alice/private"); !errors.Is(err, ErrDenied) || f.checker.count() != 3 {
		t.Errorf("other password: %v after %d checks, want ErrDenied from a check of its own", err, f.checker.count())
	}
	if err := f.svc.Authorize(ctx, login("no-bob", "x"), "docker.io", "alice/private"); !errors.Is(err, ErrDenied) {
		t.Errorf("refused: %v", err)
	}
	down := login("down-carol", "x")
	for i := 0; i < 2; i++ {
		if err := f.svc.Authorize(ctx, down, "docker.io", "carol/app"); !errors.Is(err, ErrUnavailable) {
			t.Errorf("unavailable: %v", err)
		}
	}
	if n := f.checker.count(); n != 6 {
		t.Errorf("%d upstream checks, want 6 (an unavailable answer is not remembered)", n)
	}
	if err := f.svc.Authorize(ctx, alice, "ghcr.io", "alice/private"); !errors.Is(err, ErrBadCredentials) {
		t.Errorf("an upstream without passthrough: %v, want ErrBadCredentials", err)
	}
	f.clock.add(time.Minute)
	if err := f.svc.Authorize(ctx, alice, "docker.io", "alice/private"); err != nil || f.checker.count() != 7 {
		t.Errorf("after the TTL: %v after %d checks, want a new check", err, f.checker.count())
	}
	if u, p, ok := f.svc.UpstreamCredentials(alice, "docker.io", "alice/private"); !ok || u != "ok-alice" || p != "right" {
		t.Errorf("UpstreamCredentials: %q %q %v", u, p, ok)
	}
	if _, _, ok := f.svc.UpstreamCredentials(alice, "ghcr.io", "alice/private"); ok {
		t.Error("UpstreamCredentials for an upstream without passthrough")
	}
}

// TestPrincipalNeverPrintsSecrets prints a passthrough principal every way a log line might.
func TestPrincipalNeverPrintsSecrets(t *testing.T) {
	f := newFixture(t, Options{Passthrough: patterns(t, "**")})
	p, err := f.login("alice", "hunter2-marker")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "p", p)
	slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "p", p)
	out := buf.String() + fmt.Sprint(p) + fmt.Sprintf("%v %+v %#v %s", p, p, p, p)
	if strings.Contains(out, "hunter2-marker") {
		t.Errorf("the secret was printed: %s", out)
	}
}

// TestClientCertificate maps verified client certificates to a robot or to permissions of their own.
func TestClientCertificate(t *testing.T) {
	f := newFixture(t, Options{}, Robot{Name: "nodes", Pull: []string{"docker.io/**"}})
	f.change(func(file *File) {
		file.Clients = []Client{{Subject: "node-*.cluster.local", Robot: "nodes"}, {Subject: "ci-runner", Pull: []string{"ghcr.io/ci/**"}}}
	})
	tests := []struct {
		name, cn, dns string
		up, repo      string
		want          error
	}{
		{"mapped to a robot by DNS name", "x", "node-1.cluster.local", "docker.io", "library/nginx", nil},
		{"robot's limits", "x", "node-1.cluster.local", "ghcr.io", "ci/tool", ErrDenied},
		{"own permissions by CN", "ci-runner", "", "ghcr.io", "ci/tool", nil},
		{"own limits", "ci-runner", "", "docker.io", "library/nginx", ErrDenied},
		{"unmapped", "stranger", "", "docker.io", "library/nginx", ErrDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "https://pullgate/v2/", nil)
			r.TLS = &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{leaf(t, tt.cn, tt.dns)}}}
			p, err := f.svc.Authenticate(r)
			if err != nil || p.Method != MethodMTLS {
				t.Fatalf("Authenticate: %v %v", p, err)
			}
			if err := f.svc.Authorize(context.Background(), p, tt.up, tt.repo); !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Errorf("Authorize: %v, want %v", err, tt.want)
			}
		})
	}
	// A certificate the TLS layer did not verify is no identity.
	r := httptest.NewRequest(http.MethodGet, "https://pullgate/v2/", nil)
	r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf(t, "ci-runner", "")}}
	if p, err := f.svc.Authenticate(r); err != nil || p.Method != MethodAnonymous {
		t.Errorf("unverified certificate: %v %v, want anonymous", p, err)
	}
}

func leaf(t *testing.T, cn, dns string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	if dns != "" {
		tmpl.DNSNames = []string{dns}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestRobotsFileReload holds that a broken file keeps the last good robots in force and is reported.
func TestRobotsFileReload(t *testing.T) {
	var mu sync.Mutex
	var reports []error
	f := newFixture(t, Options{OnReload: func(err error) { mu.Lock(); reports = append(reports, err); mu.Unlock() }},
		Robot{Name: "ci", Pull: []string{"**"}})
	if err := os.WriteFile(f.path, []byte("robots: [{name: ci, disabld: true}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f.clock.add(watch.Interval)
	if _, err := f.login("robot$ci", f.secrets["ci"]); err != nil {
		t.Errorf("with a broken file the last good one should stay in force: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reports) == 0 || reports[len(reports)-1] == nil || !strings.Contains(reports[len(reports)-1].Error(), "disabld") {
		t.Errorf("reload reports %v, want the unknown field named", reports)
	}
}
