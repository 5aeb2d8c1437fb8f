package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"
)

// statusClientClosed is what the pull log and the metrics record for a client that went away before its answer
// was complete (nginx's 499). Nothing is sent: there is no one to send it to.
const statusClientClosed = 499

// recorder remembers what was sent, for the pull log and for writeError, and holds every write to a deadline
// that moves on with each write, so that a client that stops reading frees its connection and goroutine after
// WriteTimeout while a slow but moving download goes on.
type recorder struct {
	http.ResponseWriter
	start        time.Time
	status       int
	bytes        int64
	writeTimeout time.Duration // 0: no deadline; net/http lifts it when the request ends
}

func (w *recorder) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *recorder) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if w.writeTimeout > 0 {
		// Real time on purpose: deadlines are for the network, not for the injected clock.
		_ = http.NewResponseController(w.ResponseWriter).SetWriteDeadline(time.Now().Add(w.writeTimeout))
	}
	n, err := w.ResponseWriter.Write(p)
	w.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *recorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// finish is the access log layer, the first and last of every request: it turns the error that ended the
// layers, if any, into the client's answer (the one place that does), writes the pull log line and counts the
// request. A client that went away is recorded as 499 at info level: it is not a server error.
func (h *Handler) finish(w *recorder, r *http.Request, req *request, err error) {
	started := w.status != 0 // headers went out before the error: it cannot be reported in a body
	var ae *apiError
	status := w.status
	gone := err != nil && r.Context().Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || started)
	switch {
	case gone:
		ae = &apiError{code: codeUnknown, message: "client went away", cause: err}
		status = statusClientClosed
	case err != nil:
		ae = toAPIError(err, req.kind)
		writeError(w, r, ae)
		if !started {
			status = w.status
		}
	}
	if status == 0 {
		status = http.StatusOK
	}
	h.logPull(r, req, w, ae, status)
	if err != nil && started {
		// The response had started: the only honest thing left is to cut the stream so the client sees an error.
		panic(http.ErrAbortHandler)
	}
}

// logPull writes the pull log line and counts the request.
func (h *Handler) logPull(r *http.Request, req *request, w *recorder, ae *apiError, status int) {
	d := h.opts.Now().Sub(w.start)
	up := ""
	if req.up != nil {
		up = req.up.Name
	}
	kindLabel := string(req.kind)
	if kindLabel == "" {
		kindLabel = "invalid"
	}
	h.opts.Metrics.Requests.WithLabelValues(kindLabel, strconv.Itoa(status), req.cache).Inc()
	h.opts.Metrics.RequestDuration.WithLabelValues(kindLabel).Observe(d.Seconds())
	attrs := []slog.Attr{
		slog.String("remote", r.RemoteAddr),
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.String("upstream", up),
		slog.String("repository", req.repo),
		slog.String("reference", req.ref),
		slog.String("digest", req.digest),
		slog.String("media_type", req.mediaType),
		slog.String("identity", req.identity.Name),
		slog.String("auth", string(req.identity.Method)),
		slog.Int("status", status),
		slog.Int64("bytes", w.bytes),
		slog.String("cache", req.cache),
		slog.Float64("duration_ms", float64(d.Microseconds())/1000),
		slog.String("user_agent", r.UserAgent()),
	}
	if req.gate != "" {
		attrs = append(attrs, slog.String("gate", string(req.gate)))
	}
	if req.note != "" {
		attrs = append(attrs, slog.String("event", req.note))
	}
	level := slog.LevelInfo
	if ae != nil {
		attrs = append(attrs, slog.String("error_code", string(ae.code)), slog.String("error", ae.Error()))
		if status >= 500 {
			level = slog.LevelWarn
		}
	}
	h.opts.Log.LogAttrs(r.Context(), level, "pull", attrs...)
}
