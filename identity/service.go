package identity

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/sync/singleflight"

	"github.com/pullgate/pullgate/names"
	"github.com/pullgate/pullgate/watch"
)

// The errors Authenticate and Authorize return. Each says what the client must do, never why a secret was
// wrong: an unknown robot, a wrong secret, an expired, disabled or deleted robot and a rotated-out secret are
// all ErrBadCredentials.
var (
	// ErrUnauthenticated: the request carries no credentials and anonymous clients may not pull this. The
	// client should be challenged to log in.
	ErrUnauthenticated = errors.New("authentication required")
	// ErrBadCredentials: the credentials are not valid (or no longer).
	ErrBadCredentials = errors.New("invalid credentials")
	// ErrInsufficientScope: a valid token that does not cover this repository, for an identity that may pull
	// it: the client should get a token for it.
	ErrInsufficientScope = errors.New("the token does not grant access to this repository")
	// ErrDenied: the identity may not pull this repository (whether or not it exists).
	ErrDenied = errors.New("requested access to the resource is denied")
	// ErrUnavailable: the upstream could not be asked whether it accepts passed-through credentials.
	ErrUnavailable = errors.New("the upstream could not be asked whether it accepts these credentials")
)

// UpstreamChecker asks an upstream whether credentials may pull a repository there. It returns nil when they
// may, an error wrapping ErrDenied when the upstream refused them, and any other error when it could not ask.
type UpstreamChecker interface {
	CheckPull(ctx context.Context, upstream, repo, username, password string) error
}

// Options configures New. Each field's comment says what its zero value means.
type Options struct {
	// RobotsFile is the robots file's path; empty means no robots and no client-certificate mappings.
	RobotsFile string
	// RobotPrefix is a further login prefix for robots besides "robot$" and "robot_"; empty means none.
	RobotPrefix string
	// Anonymous holds patterns over "<upstream>/<repository>" that anyone may pull, with or without
	// credentials. Empty means nothing is anonymous.
	Anonymous []names.Pattern
	// Passthrough holds patterns over "<upstream>/<repository>" where credentials that are not pullgate's own
	// are checked against the upstream (through Checker). Empty means such credentials are refused.
	Passthrough []names.Pattern
	// PassthroughTTL is how long an upstream's answer about passed-through credentials is remembered (by a hash
	// of the credentials, the upstream and the repository), and how long a token issued on it lives. Zero
	// means 1 minute; less than a minute is raised to a minute.
	PassthroughTTL time.Duration
	// Checker asks upstreams about passed-through credentials; required when Passthrough is set.
	Checker UpstreamChecker
	// Signer signs and verifies the tokens of the token service; required.
	Signer *Signer
	// TokenTTL is how long an access token lives. Zero means 5 minutes; less than a minute is raised to a
	// minute.
	TokenTTL time.Duration
	// RefreshTTL is how long a refresh token (grant_type=refresh_token) lives; it dies earlier with the robot
	// or the secret that obtained it. Zero means 24 hours.
	RefreshTTL time.Duration
	// FailureBurst failed logins from one source address, or for one user name, are allowed at once; then one
	// more every FailureDrain. Zero means 10 and 6 seconds.
	FailureBurst int
	FailureDrain time.Duration
	// OnReload hears of every reload of the robots file: nil when it was read, else why not (the last good file
	// stays in force). Nil means no hook.
	OnReload func(error)
	// Open makes every client anonymous and lets anonymous clients pull everything, as when no identity is
	// configured: credentials are not checked, except scanner tokens (ScanToken), which still identify the
	// scanner so that its pulls bypass the gate. A bearer that is not a valid scanner token is anonymous.
	Open bool
	// OnLogin hears of every login attempt: its method and result ("ok", "bad_credentials", "rate_limited",
	// "refused", "unavailable"). It must be quick. Nil means no hook.
	OnLogin func(m Method, result string)
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (o Options) withDefaults() Options {
	if o.PassthroughTTL <= 0 {
		o.PassthroughTTL = time.Minute
	}
	o.PassthroughTTL = max(o.PassthroughTTL, time.Minute)
	if o.TokenTTL <= 0 {
		o.TokenTTL = 5 * time.Minute
	}
	o.TokenTTL = max(o.TokenTTL, time.Minute)
	if o.RefreshTTL <= 0 {
		o.RefreshTTL = 24 * time.Hour
	}
	if o.FailureBurst <= 0 {
		o.FailureBurst = 10
	}
	if o.FailureDrain <= 0 {
		o.FailureDrain = 6 * time.Second
	}
	if o.OnLogin == nil {
		o.OnLogin = func(Method, string) {}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

const (
	maxVerified         = 10000 // secrets verified recently, by SHA-256
	verifiedFor         = 10 * time.Minute
	maxDecisions        = 10000 // passthrough decisions
	maxFailureKeys      = 10000
	maxPassthroughCreds = 10000 // credentials of passthrough tokens, in memory only
	lastUseGranularity  = time.Minute
	maxNameInLog        = 128 // bytes of a client-chosen user name kept in logs and failure counts
)

// Service authenticates clients and decides what they may pull. It is safe for concurrent use.
type Service struct {
	opts   Options
	robots *watch.File[*robotSet] // nil without a robots file

	verified  *memo[[32]byte, verifiedSecret]
	decisions *memo[[32]byte, error]
	passCreds *memo[string, credential] // by token ID
	checks    singleflight.Group
	fails     *failures
	hashing   chan struct{} // bounds the bcrypt comparisons running at once

	mu      sync.Mutex
	lastUse map[string]time.Time
}

type verifiedSecret struct {
	id   string
	hash string
}

type credential struct{ username, password string }

// New opens the robots file (when one is configured) and returns the Service.
func New(opts Options) (*Service, error) {
	opts = opts.withDefaults()
	if opts.Signer == nil {
		return nil, errors.New("identity: Options.Signer is required")
	}
	if len(opts.Passthrough) > 0 && opts.Checker == nil {
		return nil, errors.New("identity: Options.Checker is required with Passthrough")
	}
	s := &Service{
		opts:      opts,
		verified:  newMemo[[32]byte, verifiedSecret](maxVerified),
		decisions: newMemo[[32]byte, error](maxDecisions),
		passCreds: newMemo[string, credential](maxPassthroughCreds),
		fails:     newFailures(opts.FailureBurst, opts.FailureDrain, maxFailureKeys),
		hashing:   make(chan struct{}, runtime.GOMAXPROCS(0)),
		lastUse:   map[string]time.Time{},
	}
	if opts.RobotsFile != "" {
		rf, err := openRobotsFile(opts.RobotsFile, opts.Now, opts.OnReload)
		if err != nil {
			return nil, fmt.Errorf("robots file: %w", err)
		}
		s.robots = rf
	}
	return s, nil
}

func (s *Service) set() *robotSet {
	if s.robots == nil {
		return &robotSet{}
	}
	return s.robots.Current()
}

// Principal is who sent a request. Its zero value is no one; an anonymous client is Method MethodAnonymous.
// It never prints a credential.
type Principal struct {
	// Name is what the pull log says: "robot$ci", "cert:node-1", the passed-through user name; empty for
	// anonymous clients.
	Name string
	// Method says how it was established.
	Method Method
	// Via says how it was presented: "basic", "token", "refresh", "certificate", or empty.
	Via string
	// Artifact is, for a scanner (MethodScanner), the one manifest digest it may pull, in the one repository
	// its token names; its pull of that digest bypasses the gate. Empty for every other principal.
	Artifact string

	robot  string          // robot principals, and certificates mapped to a robot
	credID string          // the robot secret that logged in; empty for certificates
	certs  []string        // certificate principals: the names the certificate holds
	token  bool            // access is the token's grant
	access map[string]bool // canonical names the token grants
	cred   *credential     // passthrough: the credentials, in memory only
	remote string          // source address, for failure counting
}

// LogValue keeps credentials out of logs.
func (p Principal) LogValue() slog.Value {
	return slog.GroupValue(slog.String("name", p.Name), slog.String("method", string(p.Method)))
}

// String returns the principal's name and method.
func (p Principal) String() string { return fmt.Sprintf("%s (%s)", p.Name, p.Method) }

// GoString is String, so that %#v prints no credential either.
func (p Principal) GoString() string { return p.String() }

// UpstreamCredentials returns the credentials to fetch upstream/repo with for p: the ones a passthrough
// principal presented, where the upstream decides who may pull (a Passthrough pattern matches, and anonymous
// clients may not pull it anyway). ok is false for every other case, where pullgate's own credentials are
// used: a passthrough client that pulls what anyone may pull never has its credentials sent upstream, right or
// wrong.
func (s *Service) UpstreamCredentials(p Principal, upstream, repo string) (username, password string, ok bool) {
	name := upstream + "/" + repo
	if p.cred == nil || !names.MatchAny(s.opts.Passthrough, name) || names.MatchAny(s.opts.Anonymous, name) {
		return "", "", false
	}
	return p.cred.username, p.cred.password, true
}

// Anonymous is the principal of a request without credentials.
func Anonymous() Principal { return Principal{Method: MethodAnonymous} }

// Authenticate establishes who sent r: a bearer token pullgate issued, Basic credentials (a robot's, or
// credentials for passthrough), a client certificate verified by the TLS layer, or no one (anonymous). A
// request with credentials that are not valid is an error (ErrBadCredentials, *RateLimitedError); one without
// any is anonymous.
func (s *Service) Authenticate(r *http.Request) (Principal, error) {
	h := r.Header.Get("Authorization")
	if s.opts.Open {
		scheme, rest, _ := strings.Cut(h, " ")
		if strings.EqualFold(scheme, "bearer") {
			if p, err := s.bearer(strings.TrimSpace(rest)); err == nil && p.Method == MethodScanner {
				return p, nil
			}
		}
		return Anonymous(), nil
	}
	if h == "" {
		if p, ok := s.certificate(r); ok {
			return p, nil
		}
		return Anonymous(), nil
	}
	scheme, rest, _ := strings.Cut(h, " ")
	switch strings.ToLower(scheme) {
	case "bearer":
		return s.bearer(strings.TrimSpace(rest))
	case "basic":
		user, pass, ok := r.BasicAuth()
		if !ok {
			s.opts.OnLogin(MethodRobot, "bad_credentials")
			return Principal{}, ErrBadCredentials
		}
		return s.Login(r.Context(), RemoteHost(r), user, pass)
	}
	s.opts.OnLogin(MethodRobot, "bad_credentials")
	return Principal{}, ErrBadCredentials
}

// RemoteHost is the source address of r without its port: the key failed logins are counted by.
func RemoteHost(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// Login checks a user name and secret presented by remote: a robot's (the secret is compared with the stored
// bcrypt hashes, in constant time, once; then its SHA-256 is remembered for a while so that later requests
// cost no bcrypt), or, with passthrough configured, credentials for an upstream, which Authorize checks
// against the upstream per repository. Too many failures from remote or for the user name give a
// *RateLimitedError without checking anything.
func (s *Service) Login(ctx context.Context, remote, user, secret string) (Principal, error) {
	now := s.opts.Now()
	name, isRobot := loginName(user, s.opts.RobotPrefix)
	if !isRobot && len(s.opts.Passthrough) > 0 && user != "" && secret != "" {
		return Principal{Name: truncate(user, maxNameInLog), Method: MethodPassthrough, Via: "basic", remote: remote,
			cred: &credential{username: user, password: secret}}, nil
	}
	set := s.set()
	key := sha256.Sum256([]byte(name + "\x00" + secret))
	if isRobot {
		if v, ok := s.verified.get(key, now); ok {
			if r := set.robots[name]; r.usable(now) {
				if sec := r.secret(v.id, now); sec != nil && sec.Hash == v.hash {
					s.used(name, now)
					s.opts.OnLogin(MethodRobot, "ok")
					return robotPrincipal(name, v.id, "basic"), nil
				}
			}
			s.verified.drop(key)
		}
	}
	userKey := "user " + truncate(user, maxNameInLog)
	if w := max(s.fails.wait("addr "+remote, now), s.fails.wait(userKey, now)); w > 0 {
		s.opts.OnLogin(MethodRobot, "rate_limited")
		return Principal{}, &RateLimitedError{RetryAfter: w}
	}
	id, hash, err := s.compare(ctx, set, name, isRobot, secret, now)
	if err != nil {
		return Principal{}, err
	}
	if id == "" {
		s.fails.fail("addr "+remote, now)
		s.fails.fail(userKey, now)
		s.opts.OnLogin(MethodRobot, "bad_credentials")
		return Principal{}, ErrBadCredentials
	}
	s.verified.put(key, verifiedSecret{id: id, hash: hash}, now.Add(verifiedFor), now)
	s.used(name, now)
	s.opts.OnLogin(MethodRobot, "ok")
	return robotPrincipal(name, id, "basic"), nil
}

// compare checks secret against the robot's valid secrets and returns the matching one's ID and hash, or
// "" when none matches or the robot may not log in. It always runs two bcrypt comparisons (against a dummy
// hash where the robot has fewer secrets, or does not exist), so that its time says nothing about the robot.
func (s *Service) compare(ctx context.Context, set *robotSet, name string, isRobot bool, secret string, now time.Time) (id, hash string, err error) {
	select {
	case s.hashing <- struct{}{}:
		defer func() { <-s.hashing }()
	case <-ctx.Done():
		return "", "", ctx.Err()
	}
	var candidates []*Secret
	r := set.robots[name]
	if isRobot && r != nil {
		for i := range r.Secrets {
			if sec := &r.Secrets[i]; sec.Expires == nil || now.Before(*sec.Expires) {
				candidates = append(candidates, sec)
			}
		}
	}
	var match *Secret
	for i := 0; i < max(2, len(candidates)); i++ {
		hash := set.dummy
		if i < len(candidates) {
			hash = []byte(candidates[i].Hash)
		}
		if hash == nil {
			continue
		}
		if bcrypt.CompareHashAndPassword(hash, []byte(secret)) == nil && i < len(candidates) && match == nil {
			match = candidates[i]
		}
	}
	if match == nil || !r.usable(now) {
		return "", "", nil
	}
	return match.ID, match.Hash, nil
}

func robotPrincipal(name, credID, via string) Principal {
	return Principal{Name: "robot$" + name, Method: MethodRobot, Via: via, robot: name, credID: credID}
}

// used records that robot name authenticated at now, at most once a minute.
func (s *Service) used(name string, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if last, ok := s.lastUse[name]; !ok || now.Sub(last) >= lastUseGranularity {
		s.lastUse[name] = now
	}
}

// LastUse returns when each robot last authenticated (to the minute) since this Service started.
func (s *Service) LastUse() map[string]time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[string]time.Time, len(s.lastUse))
	for k, v := range s.lastUse {
		m[k] = v
	}
	return m
}

// certificate returns the principal of a client certificate that the TLS layer verified: the first mapping in
// the robots file whose subject pattern matches the certificate's common name or one of its DNS names. A
// verified certificate that no mapping names is a principal without permissions.
func (s *Service) certificate(r *http.Request) (Principal, bool) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return Principal{}, false
	}
	leaf := r.TLS.VerifiedChains[0][0]
	certs := append([]string{leaf.Subject.CommonName}, leaf.DNSNames...)
	p := Principal{Method: MethodMTLS, Via: "certificate", certs: certs, Name: "cert:" + cmp.Or(leaf.Subject.CommonName, firstOf(leaf.DNSNames))}
	if c := s.set().client(certs); c != nil {
		p.robot = c.Robot
	}
	s.opts.OnLogin(MethodMTLS, "ok")
	return p, true
}

// client returns the first client mapping that matches one of names.
func (set *robotSet) client(names []string) *client {
	for i := range set.clients {
		for _, n := range names {
			if n != "" && set.clients[i].subject.Match(n) {
				return &set.clients[i]
			}
		}
	}
	return nil
}

// bearer verifies a token pullgate issued and checks that whatever it was issued to is still valid.
func (s *Service) bearer(raw string) (Principal, error) {
	c, err := s.opts.Signer.Verify(raw, false)
	if err != nil {
		s.opts.OnLogin(MethodRobot, "bad_credentials")
		return Principal{}, ErrBadCredentials
	}
	p := Principal{Name: c.Subject, Method: c.Method, Via: "token", robot: c.Robot, credID: c.CredID, token: true,
		access: make(map[string]bool, len(c.Access))}
	for _, a := range c.Access {
		p.access[a] = true
	}
	now := s.opts.Now()
	switch c.Method {
	case MethodRobot:
		if !s.robotValid(c.Robot, c.CredID, now) {
			s.opts.OnLogin(MethodRobot, "bad_credentials")
			return Principal{}, ErrBadCredentials
		}
		s.used(c.Robot, now)
	case MethodMTLS:
		p.certs = []string{strings.TrimPrefix(c.Subject, "cert:")}
		if c.Robot != "" && !s.robotValid(c.Robot, "", now) {
			return Principal{}, ErrBadCredentials
		}
	case MethodPassthrough:
		if cred, ok := s.passCreds.get(c.ID, now); ok {
			p.cred = &cred
		}
	case MethodScanner:
		if c.Artifact == "" || len(c.Access) != 1 {
			return Principal{}, ErrBadCredentials
		}
		p.Artifact = c.Artifact
	case MethodAnonymous:
	default:
		return Principal{}, ErrBadCredentials
	}
	return p, nil
}

// robotValid reports whether robot name exists, is enabled and not expired and, when credID is set, still
// has that secret.
func (s *Service) robotValid(name, credID string, now time.Time) bool {
	r := s.set().robots[name]
	if !r.usable(now) {
		return false
	}
	return credID == "" || r.secret(credID, now) != nil
}

// Authorize decides whether p may pull repo from upstream. Anything anonymous clients may pull, every
// principal may. It returns nil, or one of ErrUnauthenticated, ErrBadCredentials, ErrInsufficientScope,
// ErrDenied and ErrUnavailable; the answer depends on the principal and the name only, never on what exists.
func (s *Service) Authorize(ctx context.Context, p Principal, upstream, repo string) error {
	name := upstream + "/" + repo
	if p.Method == MethodScanner {
		if p.access[name] {
			return nil
		}
		return ErrDenied // a scanner token is for one repository, whatever anonymous clients may pull
	}
	if s.opts.Open || names.MatchAny(s.opts.Anonymous, name) {
		return nil
	}
	if p.token && !p.access[name] {
		switch {
		case p.Method == MethodAnonymous:
			return ErrUnauthenticated
		case p.Method != MethodPassthrough && s.permits(p, name):
			return ErrInsufficientScope
		case p.Method == MethodPassthrough && names.MatchAny(s.opts.Passthrough, name):
			return ErrInsufficientScope
		}
		return ErrDenied
	}
	switch p.Method {
	case MethodRobot, MethodMTLS:
		if s.permits(p, name) {
			return nil
		}
		if p.Method == MethodRobot && !s.robotValid(p.robot, p.credID, s.opts.Now()) {
			return ErrBadCredentials
		}
		return ErrDenied
	case MethodPassthrough:
		if p.token {
			return nil // granted when the token was issued, within PassthroughTTL
		}
		return s.passthrough(ctx, p, upstream, repo)
	}
	return ErrUnauthenticated
}

// Admin reports whether p may use pullgate's admin API now: a robot with admin: true (still valid, with the
// secret it logged in with), or a client certificate mapped to such a robot or marked admin itself. Tokens of
// the token service never carry admin rights: the admin API takes Basic credentials or a certificate.
func (s *Service) Admin(p Principal) bool {
	if p.token {
		return false
	}
	now := s.opts.Now()
	set := s.set()
	switch p.Method {
	case MethodRobot:
		r := set.robots[p.robot]
		return r.usable(now) && r.secret(p.credID, now) != nil && r.Admin
	case MethodMTLS:
		c := set.client(p.certs)
		if c == nil {
			return false
		}
		if c.Robot != "" {
			r := set.robots[c.Robot]
			return r.usable(now) && r.Admin
		}
		return c.Admin
	}
	return false
}

// permits reports whether a robot or certificate principal may pull name now, by the robots file in force.
func (s *Service) permits(p Principal, name string) bool {
	now := s.opts.Now()
	set := s.set()
	switch p.Method {
	case MethodRobot:
		r := set.robots[p.robot]
		return r.usable(now) && r.secret(p.credID, now) != nil && names.MatchAny(r.pull, name)
	case MethodMTLS:
		c := set.client(p.certs)
		if c == nil {
			return false
		}
		if c.Robot != "" {
			r := set.robots[c.Robot]
			return r.usable(now) && names.MatchAny(r.pull, name)
		}
		return names.MatchAny(c.pull, name)
	}
	return false
}

// passthrough asks the upstream whether p's credentials may pull repo, or recalls its answer.
func (s *Service) passthrough(ctx context.Context, p Principal, upstream, repo string) error {
	if p.cred == nil || !names.MatchAny(s.opts.Passthrough, upstream+"/"+repo) {
		return ErrBadCredentials
	}
	now := s.opts.Now()
	key := sha256.Sum256([]byte(p.cred.username + "\x00" + p.cred.password + "\x00" + upstream + "\x00" + repo))
	if err, ok := s.decisions.get(key, now); ok {
		return err
	}
	if w := s.fails.wait("addr "+p.remote, now); w > 0 {
		s.opts.OnLogin(MethodPassthrough, "rate_limited")
		return &RateLimitedError{RetryAfter: w}
	}
	_, err, _ := s.checks.Do(string(key[:]), func() (any, error) {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		return nil, s.opts.Checker.CheckPull(cctx, upstream, repo, p.cred.username, p.cred.password)
	})
	switch {
	case err == nil:
		s.opts.OnLogin(MethodPassthrough, "ok")
	case errors.Is(err, ErrDenied):
		err = ErrDenied
		s.fails.fail("addr "+p.remote, now)
		s.opts.OnLogin(MethodPassthrough, "refused")
	default:
		s.opts.OnLogin(MethodPassthrough, "unavailable")
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	s.decisions.put(key, err, now.Add(s.opts.PassthroughTTL), now)
	return err
}

// Refresh checks a refresh token and returns the robot principal it was issued to, if that robot and its
// secret are still valid.
func (s *Service) Refresh(raw string) (Principal, error) {
	c, err := s.opts.Signer.Verify(raw, true)
	if err != nil || c.Method != MethodRobot || !s.robotValid(c.Robot, c.CredID, s.opts.Now()) {
		s.opts.OnLogin(MethodRobot, "bad_credentials")
		return Principal{}, ErrBadCredentials
	}
	s.opts.OnLogin(MethodRobot, "ok")
	return robotPrincipal(c.Robot, c.CredID, "refresh"), nil
}

// ScanToken signs the token a vulnerability scanner pulls one artifact with: it may pull upstream/repository,
// only the manifest digest (the proxy holds it to that digest and the blobs it names), its pull of that digest
// bypasses the gate, and it lives ttl (at least a minute).
func (s *Service) ScanToken(upstream, repository, digest string, ttl time.Duration) (string, error) {
	if _, err := names.ParseDigest(digest); err != nil {
		return "", fmt.Errorf("scan token: %q is not a digest", digest)
	}
	now := s.opts.Now()
	return s.opts.Signer.Sign(TokenClaims{Subject: "scanner", Method: MethodScanner, Artifact: digest,
		Access: []string{upstream + "/" + repository}, IssuedAt: now, Expiry: now.Add(max(ttl, time.Minute))})
}

// Grant is what the token service answers.
type Grant struct {
	Token        string
	RefreshToken string // only when asked for (offline access) and only for robots
	IssuedAt     time.Time
	ExpiresIn    time.Duration
}

// Issue signs a token for p granting pull on access (canonical "<upstream>/<repository>" names that Authorize
// allowed), and a refresh token when refresh is set and p is a robot.
func (s *Service) Issue(p Principal, access []string, refresh bool) (Grant, error) {
	now := s.opts.Now()
	ttl := s.opts.TokenTTL
	if p.Method == MethodPassthrough {
		ttl = s.opts.PassthroughTTL
	}
	c := TokenClaims{Subject: p.Name, Method: p.Method, Robot: p.robot, CredID: p.credID, Access: access,
		IssuedAt: now, Expiry: now.Add(ttl)}
	if p.Method == MethodPassthrough {
		c.ID = randomID()
	}
	tok, err := s.opts.Signer.Sign(c)
	if err != nil {
		return Grant{}, err
	}
	if p.cred != nil {
		s.passCreds.put(c.ID, *p.cred, c.Expiry, now)
	}
	g := Grant{Token: tok, IssuedAt: now, ExpiresIn: ttl}
	if refresh && p.Method == MethodRobot {
		rc := TokenClaims{Subject: p.Name, Method: p.Method, Robot: p.robot, CredID: p.credID, Refresh: true,
			IssuedAt: now, Expiry: now.Add(s.opts.RefreshTTL)}
		if g.RefreshToken, err = s.opts.Signer.Sign(rc); err != nil {
			return Grant{}, err
		}
	}
	return g, nil
}

func firstOf(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

// randomID returns 16 random bytes in hex, for token IDs.
func randomID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
