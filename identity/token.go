package identity

import (
	"container/list"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/pullgate/pullgate/names"
)

// Method says how a principal was established.
type Method string

// The ways a principal is established.
const (
	MethodAnonymous   Method = "anonymous"
	MethodRobot       Method = "robot"
	MethodMTLS        Method = "mtls"
	MethodPassthrough Method = "passthrough"
	// MethodScanner is a vulnerability scanner pulling the one artifact it was asked to scan (ScanToken).
	MethodScanner Method = "scanner"
)

// valid reports whether m is one of the Methods above.
func (m Method) valid() bool {
	switch m {
	case MethodAnonymous, MethodRobot, MethodMTLS, MethodPassthrough, MethodScanner:
		return true
	}
	return false
}

// ErrInvalidToken is wrapped by every verification failure (bad signature, unknown kid, wrong alg, expired,
// not yet valid, wrong iss/aud, malformed, refresh token used as access token or the reverse).
var ErrInvalidToken = errors.New("invalid token")

const (
	// maxTokenSize is the longest token Verify reads and Sign makes, in bytes.
	maxTokenSize = 8 << 10
	// reloadInterval is how often, at most, a Signer looks for changes in its key directory.
	reloadInterval = 2 * time.Second
	// verifyCacheSize bounds the tokens a Signer remembers as verified.
	verifyCacheSize = 10_000
	refreshSuffix   = "-refresh"
	jtiBytes        = 16
)

// TokenClaims is what a pullgate token says.
type TokenClaims struct {
	// ID is the token's "jti"; Sign fills in a random one when it is empty.
	ID string
	// Subject is the principal's name: "robot$ci", "passthrough:alice@docker.io".
	Subject string
	Method  Method
	// Robot is the robot's name for robot principals (and certificate principals mapped to one).
	Robot string
	// CredID is the ID of the robot secret that logged in (Secret.ID); it is checked again at every use.
	CredID string
	// Access holds the canonical "<upstream>/<repository>" names the token may pull.
	Access []string
	// Artifact is, for scanner tokens, the one manifest digest the token may pull (and whose gate it bypasses).
	Artifact string
	// Refresh marks a refresh token: only Verify(raw, true) accepts it.
	Refresh  bool
	IssuedAt time.Time
	Expiry   time.Time
}

func (c TokenClaims) clone() TokenClaims {
	c.Access = slices.Clone(c.Access)
	return c
}

// SignerOptions configure a Signer.
type SignerOptions struct {
	// Dir is the key directory, created with mode 0700 when missing. It is required.
	Dir string
	// Issuer is the tokens' "iss"; zero means "pullgate".
	Issuer string
	// Audience is the "aud" of access tokens; zero means "pullgate". Refresh tokens use Audience+"-refresh".
	Audience string
	// Leeway is the clock skew allowed on exp, nbf and iat; zero means 30s.
	Leeway time.Duration
	// Now tells the time; nil means time.Now.
	Now func() time.Time
}

func (o SignerOptions) withDefaults() SignerOptions {
	if o.Issuer == "" {
		o.Issuer = "pullgate"
	}
	if o.Audience == "" {
		o.Audience = "pullgate"
	}
	if o.Leeway == 0 {
		o.Leeway = 30 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Signer signs and verifies pullgate's tokens with the ES256 keys of a key directory. Sign and Verify look
// at the directory again when two seconds have passed since the last look, so that keys added or removed by
// another process (a rotation by the CLI) take effect in a running server. It is safe for concurrent use.
type Signer struct {
	o SignerOptions

	keys atomic.Pointer[keySet]
	// lastCheck is when the key directory was last looked at (Unix nanoseconds of o.Now).
	lastCheck atomic.Int64

	reloadMu sync.Mutex
	stamp    string // the key directory as the current key set was read from it; reloadMu
	err      error  // the last reload's error; reloadMu

	cacheMu sync.Mutex
	cache   verifyCache // cacheMu
}

// NewSigner loads every key in o.Dir, making the directory and a first key when there is none. A key file
// that cannot be used is an error that names it.
func NewSigner(o SignerOptions) (*Signer, error) {
	o = o.withDefaults()
	if o.Dir == "" {
		return nil, errors.New("token signer: a key directory is required")
	}
	if o.Leeway < 0 {
		return nil, fmt.Errorf("token signer: leeway %v is negative", o.Leeway)
	}
	if err := os.MkdirAll(o.Dir, keyDirMode); err != nil {
		return nil, fmt.Errorf("key directory: %w", err)
	}
	s := &Signer{o: o, cache: newVerifyCache(verifyCacheSize)}
	now := o.Now()
	stamp, err := dirStamp(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("key directory %s: %w", o.Dir, err)
	}
	set, err := loadKeys(o.Dir)
	if err != nil {
		return nil, err
	}
	if len(set.newestFirst) == 0 {
		if _, _, err := writeNewKey(o.Dir, now); err != nil {
			return nil, err
		}
		if stamp, err = dirStamp(o.Dir); err != nil {
			return nil, fmt.Errorf("key directory %s: %w", o.Dir, err)
		}
		if set, err = loadKeys(o.Dir); err != nil {
			return nil, err
		}
		if len(set.newestFirst) == 0 {
			return nil, fmt.Errorf("key directory %s: the key just written is not there", o.Dir)
		}
	}
	s.keys.Store(set)
	s.stamp = stamp
	s.lastCheck.Store(now.UnixNano())
	return s, nil
}

// KeyIDs lists the IDs of the keys in use, newest (the one Sign uses) first.
func (s *Signer) KeyIDs() []string {
	set := s.keys.Load()
	ids := make([]string, len(set.newestFirst))
	for i, k := range set.newestFirst {
		ids[i] = k.kid
	}
	return ids
}

// Err returns why the last look at the key directory failed (a corrupt key file, no key left, an unreadable
// directory), or nil. While it is not nil the Signer keeps using the keys it had; the caller logs it.
func (s *Signer) Err() error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	return s.err
}

// maybeReload re-reads the key directory when the clock moved by reloadInterval since the last look
// (forward, or back: a clock set back must not stop the looks) and the key files changed.
func (s *Signer) maybeReload(now time.Time) {
	due := func() bool {
		d := now.UnixNano() - s.lastCheck.Load()
		return d >= int64(reloadInterval) || d <= -int64(reloadInterval)
	}
	if !due() {
		return
	}
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	if !due() {
		return
	}
	s.lastCheck.Store(now.UnixNano())
	stamp, err := dirStamp(s.o.Dir)
	if err != nil {
		s.err = fmt.Errorf("key directory %s: %w (the keys read before stay in use)", s.o.Dir, err)
		return
	}
	if stamp == s.stamp {
		s.err = nil
		return
	}
	set, err := loadKeys(s.o.Dir)
	if err != nil {
		s.err = fmt.Errorf("%w (the keys read before stay in use)", err)
		return
	}
	if len(set.newestFirst) == 0 {
		s.err = fmt.Errorf("key directory %s: no key files (the keys read before stay in use)", s.o.Dir)
		return
	}
	s.keys.Store(set)
	s.stamp = stamp
	s.err = nil
}

// The claims as they are written in a token. Besides the registered claims, "access" follows the Docker
// registry token specification and "pullgate" holds pullgate's own.
type (
	tokenBody struct {
		Access   []accessEntry `json:"access"`
		Pullgate privateClaims `json:"pullgate"`
	}
	accessEntry struct {
		Type    string   `json:"type"`
		Name    string   `json:"name"`
		Actions []string `json:"actions"`
	}
	privateClaims struct {
		Method  Method `json:"method,omitempty"`
		Robot   string `json:"robot,omitempty"`
		CredID  string `json:"cid,omitempty"`
		Refresh bool   `json:"refresh,omitempty"`
		// Artifact is the digest a scanner token is for.
		Artifact string `json:"artifact,omitempty"`
	}
)

// Sign returns the compact JWS of c, signed with the newest key, with a "kid" header. c needs a Method and an
// Expiry after its IssuedAt (zero means now); its Access names must be valid repository names.
func (s *Signer) Sign(c TokenClaims) (string, error) {
	now := s.o.Now()
	s.maybeReload(now)
	if !c.Method.valid() {
		return "", fmt.Errorf("sign token: unknown method %q", c.Method)
	}
	if c.IssuedAt.IsZero() {
		c.IssuedAt = now
	}
	if c.Expiry.IsZero() {
		return "", errors.New("sign token: no expiry")
	}
	if c.Expiry.Unix() <= c.IssuedAt.Unix() {
		return "", errors.New("sign token: the expiry is not after the issue time")
	}
	body := tokenBody{
		Access:   make([]accessEntry, 0, len(c.Access)),
		Pullgate: privateClaims{Method: c.Method, Robot: c.Robot, CredID: c.CredID, Refresh: c.Refresh, Artifact: c.Artifact},
	}
	for _, name := range c.Access {
		if err := names.ValidateRepositoryWithHost(name); err != nil {
			return "", fmt.Errorf("sign token: access: %w", err)
		}
		body.Access = append(body.Access, accessEntry{Type: "repository", Name: name, Actions: []string{"pull"}})
	}
	if c.ID == "" {
		id := make([]byte, jtiBytes)
		if _, err := rand.Read(id); err != nil {
			return "", fmt.Errorf("sign token: %w", err)
		}
		c.ID = base64.RawURLEncoding.EncodeToString(id)
	}
	aud := s.o.Audience
	if c.Refresh {
		aud += refreshSuffix
	}
	issued := jwt.NewNumericDate(c.IssuedAt)
	std := jwt.Claims{
		Issuer:    s.o.Issuer,
		Subject:   c.Subject,
		Audience:  jwt.Audience{aud},
		Expiry:    jwt.NewNumericDate(c.Expiry),
		NotBefore: issued,
		IssuedAt:  issued,
		ID:        c.ID,
	}
	key := s.keys.Load().newestFirst[0]
	raw, err := jwt.Signed(key.signer).Claims(std).Claims(body).Serialize()
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	if len(raw) > maxTokenSize {
		return "", fmt.Errorf("sign token: %d bytes, more than the %d a token may have (too many repositories?)", len(raw), maxTokenSize)
	}
	return raw, nil
}

// Verify checks raw and returns its claims; refresh says whether a refresh token or an access token is
// expected. Every failure wraps ErrInvalidToken and never includes the token. Tokens verified before are
// answered from memory until they expire, as long as the key that signed them is still in use.
func (s *Signer) Verify(raw string, refresh bool) (TokenClaims, error) {
	if len(raw) > maxTokenSize {
		return TokenClaims{}, invalid("longer than %d bytes", maxTokenSize)
	}
	now := s.o.Now()
	s.maybeReload(now)
	set := s.keys.Load()
	sum := sha256.Sum256([]byte(raw))

	s.cacheMu.Lock()
	var (
		cached TokenClaims
		hit    bool
	)
	if e, ok := s.cache.get(sum); ok {
		switch {
		case now.After(e.until) || set.byKID[e.kid] == nil:
			s.cache.remove(e)
		case e.claims.Refresh == refresh:
			cached, hit = e.claims.clone(), true
		}
	}
	s.cacheMu.Unlock()
	if hit {
		return cached, nil
	}

	claims, kid, err := s.verify(raw, refresh, now, set)
	if err != nil {
		return TokenClaims{}, err
	}
	s.cacheMu.Lock()
	s.cache.put(sum, claims.clone(), kid, claims.Expiry.Add(s.o.Leeway), now)
	s.cacheMu.Unlock()
	return claims, nil
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidToken, fmt.Sprintf(format, args...))
}

// verify checks raw fully: its one algorithm, its signature by the key its kid names in set (and by no key
// the token carries itself), and its claims at now. It returns the claims and the kid.
func (s *Signer) verify(raw string, refresh bool, now time.Time, set *keySet) (TokenClaims, string, error) {
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		// go-jose's words may repeat parts of the token (an algorithm's name); they are left out.
		return TokenClaims{}, "", invalid("not a compact ES256 JWS")
	}
	if len(tok.Headers) != 1 || tok.Headers[0].Algorithm != string(jose.ES256) {
		return TokenClaims{}, "", invalid("not a compact ES256 JWS")
	}
	// Only the kid chooses the key, and only among the Signer's own; "jwk", "x5c", "x5u" and "jku" are never
	// looked at.
	key := set.byKID[tok.Headers[0].KeyID]
	if key == nil {
		return TokenClaims{}, "", invalid("unknown key ID")
	}
	var (
		std  jwt.Claims
		body tokenBody
	)
	if err := tok.Claims(key.pub, &std, &body); err != nil {
		if errors.Is(err, jose.ErrCryptoFailure) {
			return TokenClaims{}, "", invalid("bad signature")
		}
		return TokenClaims{}, "", invalid("malformed claims")
	}

	if std.Issuer != s.o.Issuer {
		return TokenClaims{}, "", invalid("wrong issuer")
	}
	accessAud, refreshAud := s.o.Audience, s.o.Audience+refreshSuffix
	if len(std.Audience) != 1 || (std.Audience[0] != accessAud && std.Audience[0] != refreshAud) {
		return TokenClaims{}, "", invalid("wrong audience")
	}
	isRefresh := std.Audience[0] == refreshAud
	if isRefresh != body.Pullgate.Refresh {
		return TokenClaims{}, "", invalid("audience and refresh claim disagree")
	}
	switch {
	case refresh && !isRefresh:
		return TokenClaims{}, "", invalid("an access token is not a refresh token")
	case !refresh && isRefresh:
		return TokenClaims{}, "", invalid("a refresh token is not an access token")
	}
	if std.Expiry == nil {
		return TokenClaims{}, "", invalid("no expiry")
	}
	expiry := std.Expiry.Time()
	if now.Add(-s.o.Leeway).After(expiry) {
		return TokenClaims{}, "", invalid("expired")
	}
	if std.NotBefore != nil && now.Add(s.o.Leeway).Before(std.NotBefore.Time()) {
		return TokenClaims{}, "", invalid("not valid yet")
	}
	if std.IssuedAt != nil && now.Add(s.o.Leeway).Before(std.IssuedAt.Time()) {
		return TokenClaims{}, "", invalid("issued in the future")
	}
	if !body.Pullgate.Method.valid() {
		return TokenClaims{}, "", invalid("unknown method")
	}

	c := TokenClaims{
		ID:       std.ID,
		Subject:  std.Subject,
		Method:   body.Pullgate.Method,
		Robot:    body.Pullgate.Robot,
		CredID:   body.Pullgate.CredID,
		Artifact: body.Pullgate.Artifact,
		Refresh:  isRefresh,
		Expiry:   expiry.UTC(),
	}
	if std.IssuedAt != nil {
		c.IssuedAt = std.IssuedAt.Time().UTC()
	}
	for _, a := range body.Access {
		if a.Type == "repository" && slices.Contains(a.Actions, "pull") {
			c.Access = append(c.Access, a.Name)
		}
	}
	return c, key.kid, nil
}

// verifyCache remembers verified tokens by the SHA-256 of their text, at most max of them.
type verifyCache struct {
	max     int
	entries map[[sha256.Size]byte]*cacheEntry
	order   *list.List // of *cacheEntry, oldest first
	// soonest is no later than the earliest until of the entries: before it, none has expired.
	soonest time.Time
}

type cacheEntry struct {
	sum    [sha256.Size]byte
	claims TokenClaims
	kid    string    // the key that signed the token: the entry dies with it
	until  time.Time // the token's expiry plus the leeway
	elem   *list.Element
}

func newVerifyCache(max int) verifyCache {
	return verifyCache{max: max, entries: map[[sha256.Size]byte]*cacheEntry{}, order: list.New()}
}

func (c *verifyCache) get(sum [sha256.Size]byte) (*cacheEntry, bool) {
	e, ok := c.entries[sum]
	return e, ok
}

func (c *verifyCache) remove(e *cacheEntry) {
	delete(c.entries, e.sum)
	c.order.Remove(e.elem)
}

// put remembers a verified token. When the cache is full it drops the expired entries, or else the oldest.
func (c *verifyCache) put(sum [sha256.Size]byte, claims TokenClaims, kid string, until, now time.Time) {
	if c.max <= 0 {
		return
	}
	if _, ok := c.entries[sum]; ok {
		return
	}
	if len(c.entries) >= c.max && now.After(c.soonest) {
		c.dropExpired(now)
	}
	for len(c.entries) >= c.max {
		c.remove(c.order.Front().Value.(*cacheEntry))
	}
	e := &cacheEntry{sum: sum, claims: claims, kid: kid, until: until}
	e.elem = c.order.PushBack(e)
	c.entries[sum] = e
	if len(c.entries) == 1 || until.Before(c.soonest) {
		c.soonest = until
	}
}

func (c *verifyCache) dropExpired(now time.Time) {
	var soonest time.Time
	for el := c.order.Front(); el != nil; {
		next := el.Next()
		e := el.Value.(*cacheEntry)
		if now.After(e.until) {
			c.remove(e)
		} else if soonest.IsZero() || e.until.Before(soonest) {
			soonest = e.until
		}
		el = next
	}
	c.soonest = soonest
}
