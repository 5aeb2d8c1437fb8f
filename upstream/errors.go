package upstream

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// ErrUnavailable is wrapped by the errors Fetch returns when the upstream could not be reached: a
// connection error, no response headers within Options.Timeout, or an open circuit. The message keeps
// the cause.
var ErrUnavailable = errors.New("upstream unavailable")

// ErrOffline is wrapped by the error Fetch returns when Options.Offline is set.
var ErrOffline = errors.New("upstream is offline")

// ErrInvalidRequest is wrapped by the error Fetch returns, without contacting the upstream, for a request
// whose repository, tag or digest does not follow the OCI grammar.
var ErrInvalidRequest = errors.New("invalid request")

// StatusError is an HTTP answer from the upstream (or from its token service) that is not a success,
// or a 429 remembered from earlier and answered without contacting the upstream.
type StatusError struct {
	Upstream string // Options.Name of the upstream that answered
	Status   int    // HTTP status code
	Code     string // OCI error code from the body ("MANIFEST_UNKNOWN"), may be empty
	Message  string // message from the body, may be empty, trimmed to maxMessage bytes
	// RetryAfter is, for a 429, how long this Client will answer 429 without contacting the upstream:
	// the upstream's Retry-After (seconds or HTTP date), or defaultRetryAfter when it sent none,
	// capped at maxRetryAfter. It is 0 for other statuses.
	RetryAfter time.Duration

	fromTokenService bool // the answer came from the token service, not the registry
}

// Error returns e.g. `upstream docker.io: 429 Too Many Requests: TOOMANYREQUESTS: ... (retry after 1m0s)`.
func (e *StatusError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "upstream %s: %d %s", e.Upstream, e.Status, http.StatusText(e.Status))
	if e.Code != "" {
		b.WriteString(": ")
		b.WriteString(e.Code)
	}
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	if e.RetryAfter > 0 {
		fmt.Fprintf(&b, " (retry after %s)", e.RetryAfter)
	}
	return b.String()
}

const (
	maxErrorBody      = 64 << 10 // bytes of an error body read to find the OCI error
	maxMessage        = 512      // bytes of a message kept in a StatusError
	maxCode           = 64       // bytes of an OCI error code kept in a StatusError
	defaultRetryAfter = 60 * time.Second
	maxRetryAfter     = 10 * time.Minute
)

// newStatusError reads (with a limit) and closes resp.Body and builds the StatusError for resp,
// without the password of cred (nil for pullgate's own).
func newStatusError(upstream string, resp *http.Response, now time.Time, cred *Credentials) *StatusError {
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	e := &StatusError{Upstream: upstream, Status: resp.StatusCode}
	e.Code, e.Message = parseErrorBody(resp.Header.Get("Content-Type"), body, cred)
	if resp.StatusCode == http.StatusTooManyRequests {
		e.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), now)
	}
	return e
}

// parseErrorBody finds the first OCI error ({"errors":[{"code","message","detail"}]}) in body. A
// text/plain body becomes the message; anything else gives nothing. The password of cred (nil for
// none), should the body echo it, is redacted before the code and message are cleaned and trimmed,
// so no part of it is kept.
func parseErrorBody(contentType string, body []byte, cred *Credentials) (code, message string) {
	code, message = errorBodyFields(contentType, body)
	return clean(cred.redact(code), maxCode), clean(cred.redact(message), maxMessage)
}

// errorBodyFields is parseErrorBody before redaction and cleaning.
func errorBodyFields(contentType string, body []byte) (code, message string) {
	var oci struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
		// Some token services answer {"details": "..."} (Docker Hub) or {"error": "..."}.
		Details string `json:"details"`
		Error   string `json:"error"`
	}
	if err := json.Unmarshal(body, &oci); err == nil {
		if len(oci.Errors) > 0 {
			return oci.Errors[0].Code, oci.Errors[0].Message
		}
		if oci.Details != "" {
			return "", oci.Details
		}
		return "", oci.Error
	}
	if mt, _, _ := mime.ParseMediaType(contentType); mt == "text/plain" {
		return "", string(body)
	}
	return "", ""
}

// clean keeps s printable, on one line and at most n bytes long.
func clean(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == unicode.ReplacementChar {
			return ' '
		}
		return r
	}, s)
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		cut := n
		for cut > 0 && !isRuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "..."
	}
	return s
}

func isRuneStart(b byte) bool { return b&0xC0 != 0x80 }

// parseRetryAfter parses a Retry-After value (delay seconds or an HTTP date) relative to now. Absent or
// unparsable values give defaultRetryAfter; the result is capped at maxRetryAfter and is at least 1s.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	d := defaultRetryAfter
	if v != "" {
		if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
			d = time.Duration(min(max(secs, 0), int64(maxRetryAfter/time.Second))) * time.Second
		} else if t, err := http.ParseTime(v); err == nil {
			d = t.Sub(now)
		}
	}
	return min(max(d, time.Second), maxRetryAfter)
}

// parseRateLimitRemaining parses "RateLimit-Remaining: 100;w=21600" into 100; -1 when absent or bad.
func parseRateLimitRemaining(h http.Header) int {
	v := h.Get("RateLimit-Remaining")
	if v == "" {
		return -1
	}
	v, _, _ = strings.Cut(v, ";")
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 0 {
		return -1
	}
	return n
}
