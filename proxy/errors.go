package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/pullgate/pullgate/cache"
	"github.com/pullgate/pullgate/upstream"
)

// code is an OCI distribution error code. Every code pullgate answers with is a constant here.
type code string

const (
	codeBlobUnknown       code = "BLOB_UNKNOWN"
	codeDigestInvalid     code = "DIGEST_INVALID"
	codeManifestInvalid   code = "MANIFEST_INVALID"
	codeManifestUnknown   code = "MANIFEST_UNKNOWN"
	codeNameInvalid       code = "NAME_INVALID"
	codeNameUnknown       code = "NAME_UNKNOWN"
	codeSizeInvalid       code = "SIZE_INVALID"
	codeUnauthorized      code = "UNAUTHORIZED"
	codeDenied            code = "DENIED"
	codeUnsupported       code = "UNSUPPORTED"
	codeTooManyRequests   code = "TOOMANYREQUESTS"
	codeRangeInvalid      code = "RANGE_INVALID"
	codePaginationInvalid code = "PAGINATION_NUMBER_INVALID"
	codeUnavailable       code = "UNAVAILABLE"
	codeUnknown           code = "UNKNOWN"
	// codeNotFound is used for paths that are not part of the registry API at all.
	codeNotFound code = "NOT_FOUND"
)

// status is the HTTP status each code is answered with, unless an error says otherwise.
var status = map[code]int{
	codeBlobUnknown:       http.StatusNotFound,
	codeDigestInvalid:     http.StatusBadRequest,
	codeManifestInvalid:   http.StatusBadRequest,
	codeManifestUnknown:   http.StatusNotFound,
	codeNameInvalid:       http.StatusBadRequest,
	codeNameUnknown:       http.StatusNotFound,
	codeSizeInvalid:       http.StatusBadRequest,
	codeUnauthorized:      http.StatusUnauthorized,
	codeDenied:            http.StatusForbidden,
	codeUnsupported:       http.StatusMethodNotAllowed,
	codeTooManyRequests:   http.StatusTooManyRequests,
	codeRangeInvalid:      http.StatusRequestedRangeNotSatisfiable,
	codePaginationInvalid: http.StatusBadRequest,
	codeUnavailable:       http.StatusServiceUnavailable,
	codeUnknown:           http.StatusInternalServerError,
	codeNotFound:          http.StatusNotFound,
}

// apiError is an error with the OCI code, status and message the client sees. The message must not carry
// secrets or local paths; the cause, if any, is only logged.
type apiError struct {
	code       code
	status     int // 0: the code's status
	message    string
	retryAfter time.Duration
	challenge  string // WWW-Authenticate of a 401
	cause      error
}

func (e *apiError) Error() string {
	if e.cause != nil {
		return fmt.Sprintf("%s: %s: %v", e.code, e.message, e.cause)
	}
	return fmt.Sprintf("%s: %s", e.code, e.message)
}

func (e *apiError) Unwrap() error { return e.cause }

func errorf(c code, format string, args ...any) *apiError {
	return &apiError{code: c, message: fmt.Sprintf(format, args...)}
}

// unknownCode is the "not found" code of a route family.
func unknownCode(k kind) code {
	if k == kindBlobs {
		return codeBlobUnknown
	}
	if k == kindTags {
		return codeNameUnknown
	}
	return codeManifestUnknown
}

// toAPIError decides what the client sees for err. Only the returned apiError's message reaches the client.
func toAPIError(err error, k kind) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	var se *upstream.StatusError
	var dm *cache.DigestMismatchError
	var sm *cache.SizeMismatchError
	switch {
	case errors.As(err, &se):
		msg := fmt.Sprintf("upstream %s answered %d", se.Upstream, se.Status)
		if se.Code != "" || se.Message != "" {
			msg += fmt.Sprintf(" (%s %s)", se.Code, se.Message)
		}
		switch {
		case se.Status == http.StatusNotFound:
			return &apiError{code: unknownCode(k), message: msg, cause: err}
		case se.Status == http.StatusUnauthorized:
			return &apiError{code: codeUnauthorized, message: msg + ": pullgate's credentials for this upstream were refused", cause: err}
		case se.Status == http.StatusForbidden:
			return &apiError{code: codeDenied, message: msg + ": access denied by the upstream", cause: err}
		case se.Status == http.StatusTooManyRequests:
			return &apiError{code: codeTooManyRequests, message: msg + ": rate limited, and this content is not cached", retryAfter: se.RetryAfter, cause: err}
		case se.Status >= 500:
			return &apiError{code: codeUnavailable, message: msg + ", and this content is not cached", cause: err}
		default:
			return &apiError{code: codeUnknown, status: http.StatusBadGateway, message: msg, cause: err}
		}
	case errors.Is(err, upstream.ErrInvalidRequest):
		return &apiError{code: codeNameInvalid, message: err.Error(), cause: err}
	case errors.Is(err, upstream.ErrOffline):
		return &apiError{code: unknownCode(k), message: "not cached, and the upstream is offline: " + err.Error(), cause: err}
	case errors.Is(err, upstream.ErrUnavailable):
		return &apiError{code: codeUnavailable, message: "not cached, and the upstream cannot be reached: " + err.Error(), cause: err}
	case errors.Is(err, cache.ErrQuota):
		return &apiError{code: codeUnavailable, retryAfter: time.Minute, message: "cache quota reached: pullgate cannot store this until its cache quota (PULLGATE_MAX_BYTES) has room; what is cached is still served", cause: err}
	case errors.Is(err, cache.ErrFull):
		return &apiError{code: codeUnavailable, retryAfter: time.Minute, message: "cache full: pullgate's disk has no room for new content until space is freed; what is cached is still served", cause: err}
	case errors.As(err, &dm), errors.As(err, &sm):
		return &apiError{code: codeDigestInvalid, status: http.StatusBadGateway, message: "the upstream sent content that does not match its digest; nothing was kept", cause: err}
	case errors.Is(err, context.DeadlineExceeded):
		return &apiError{code: codeUnavailable, message: "timed out waiting for the upstream", cause: err}
	}
	return &apiError{code: codeUnknown, message: "internal error", cause: err}
}

type errorBody struct {
	Errors []errorEntry `json:"errors"`
}

type errorEntry struct {
	Code    code   `json:"code"`
	Message string `json:"message"`
	Detail  any    `json:"detail"`
}

// writeError is the one place an error becomes a response. It writes nothing when the response already started
// (the handler then aborts the stream instead) and returns the status the client was sent.
func writeError(w *recorder, r *http.Request, ae *apiError) {
	if w.status != 0 {
		return
	}
	st := ae.status
	if st == 0 {
		st = status[ae.code]
	}
	h := w.Header()
	for _, k := range []string{"Content-Length", "Docker-Content-Digest", "Etag", "Accept-Ranges"} {
		h.Del(k)
	}
	h.Set("Content-Type", "application/json")
	if ae.challenge != "" {
		h.Set("WWW-Authenticate", ae.challenge)
	}
	if ae.retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(int((ae.retryAfter+time.Second-1)/time.Second)))
	}
	body, _ := json.Marshal(errorBody{Errors: []errorEntry{{Code: ae.code, Message: ae.message, Detail: map[string]string{}}}})
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(st)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}
