package upstream

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// Credentials are a client's own username and password (or token) for an upstream, given with one
// Request in place of the Client's keychain: a client that pulls with its own pull secret
// (passthrough). The Client does not keep them beyond the requests made with them (a token request
// shared by concurrent callers may outlast a caller that gave up, by at most twice Options.Timeout);
// the bearer tokens it gets with them are cached under a SHA-256 of them, so they are only ever sent
// again for the same Credentials.
//
// Every way of printing Credentials (fmt with any verb, log/slog, encoding/json) shows the username
// and a placeholder instead of the password.
type Credentials struct {
	Username string
	Password string
}

// redacted stands for a secret in printed Credentials and in messages from the upstream.
const redacted = "[REDACTED]"

// String returns the quoted username and a placeholder for the password: `"alice":[REDACTED]`.
func (c Credentials) String() string { return strconv.Quote(c.Username) + ":" + redacted }

// GoString returns `upstream.Credentials{Username:"alice", Password:"[REDACTED]"}`, for %#v.
func (c Credentials) GoString() string {
	return fmt.Sprintf("upstream.Credentials{Username:%q, Password:%q}", c.Username, redacted)
}

// Format prints GoString for %#v and String for every other verb, so that no verb (%x, %d, %+v...)
// reaches the password, also when Credentials are a field of something printed.
func (c Credentials) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		io.WriteString(f, c.GoString())
		return
	}
	io.WriteString(f, c.String())
}

// LogValue gives log/slog the username and a placeholder for the password.
func (c Credentials) LogValue() slog.Value {
	return slog.GroupValue(slog.String("username", c.Username), slog.String("password", redacted))
}

// MarshalJSON gives encoding/json the username and a placeholder for the password.
func (c Credentials) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Username string `json:"username"`
		Password string `json:"password"`
	}{c.Username, redacted})
}

// validate reports Credentials that cannot be told apart from others by their cache key.
func (c *Credentials) validate() error {
	if c != nil && strings.IndexByte(c.Username, 0) >= 0 {
		return errors.New("credentials: username holds a NUL byte")
	}
	return nil
}

// cacheKey returns the hex SHA-256 of the username, a NUL byte and the password (a username holds
// no NUL, so no two Credentials share it), or "" for nil: pullgate's own credentials. It is part of
// the cache key and of the shared-fetch key of every bearer token, so that a token obtained with one
// client's Credentials is never used for another client or for pullgate's own requests, and the
// other way round.
func (c *Credentials) cacheKey() string {
	if c == nil {
		return ""
	}
	h := sha256.New()
	io.WriteString(h, c.Username)
	h.Write([]byte{0})
	io.WriteString(h, c.Password)
	return hex.EncodeToString(h.Sum(nil))
}

// redact replaces the password, in the forms an upstream might echo it in (as it is, URL-escaped, in
// a Basic header), with a placeholder.
func (c *Credentials) redact(s string) string {
	if c == nil || c.Password == "" {
		return s
	}
	for _, secret := range []string{
		// Unpadded: the padded form starts with it.
		base64.RawStdEncoding.EncodeToString([]byte(c.Username + ":" + c.Password)),
		c.Password,
		url.QueryEscape(c.Password),
		url.PathEscape(c.Password),
	} {
		s = strings.ReplaceAll(s, secret, redacted)
	}
	return s
}

// ErrRefused is wrapped by the error CheckPull returns when the upstream answered that the credentials
// may not pull the repository: the registry's 401, 403 or 404, or the token service's 401 or 403.
// Errors that say the upstream could not be asked (5xx, 429, unreachable, an open circuit, Offline, a
// token service that answers something else) never wrap it.
var ErrRefused = errors.New("pull refused by the upstream")

// CheckPull asks the upstream whether cred may pull repo: it sends GET /v2/<repo>/tags/list?n=1 with
// cred through Fetch (the challenge, a token for repository:<repo>:pull obtained with cred and cached
// for cred alone, the retry after a 401), reads at most a little of the answer and drops it. It
// returns nil when the upstream answers 2xx, an error wrapping ErrRefused (and the *StatusError) when
// it refuses, and Fetch's error otherwise, so the caller can tell "refused" from "could not ask".
//
// An upstream that asks for no authentication for repo lets everyone pull it: CheckPull then answers
// nil whatever cred holds, since the Client only sends credentials that the upstream asks for.
func (c *Client) CheckPull(ctx context.Context, repo string, cred Credentials) error {
	resp, err := c.Fetch(ctx, Request{Repo: repo, Kind: "tags/list", Query: url.Values{"n": {"1"}}, Credentials: &cred})
	if err != nil {
		var se *StatusError
		if errors.As(err, &se) && refusal(se) {
			return fmt.Errorf("%w: %s: %w", ErrRefused, repo, err)
		}
		return err
	}
	c.drain(resp)
	return nil
}

// refusal reports whether se says "these credentials may not pull this", not "could not answer".
func refusal(se *StatusError) bool {
	switch se.Status {
	case http.StatusUnauthorized, http.StatusForbidden:
		return true
	case http.StatusNotFound:
		// Registries answer 404 for a repository one may not see; a token service that answers 404
		// is at the wrong address.
		return !se.fromTokenService
	}
	return false
}
