package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/pullgate/pullgate/certs"
	"github.com/pullgate/pullgate/rewrite"
	"github.com/pullgate/pullgate/webhook"
)

const webhookUsage = `usage: pullgate webhook --registry HOST[:PORT] --tls-cert FILE --tls-key FILE [--addr :8443]
                        [--exclude GLOB]... [--pull-secret NAME]

Serves Kubernetes admission webhooks for Pods (AdmissionReview v1) over TLS:

  POST /mutate    rewrites every container image to come through pullgate, as a JSONPatch
  POST /validate  denies a Pod with an image that does not come through pullgate
  GET  /healthz   ok

The key pair is read again when its files change (a renewed Secret takes effect without a restart). SIGTERM
stops accepting connections and lets reviews in flight finish. See the README's "Admission webhook" section
for the webhook configurations and the failure policy.

flags:
`

// webhookShutdownTimeout bounds the wait for reviews in flight at SIGTERM; the API server's own timeout for a
// webhook call is at most 30s and by default 10s.
const webhookShutdownTimeout = 10 * time.Second

// webhookOptions are the test hooks of runWebhook. Each field's comment says what its zero value means.
type webhookOptions struct {
	// Ready is called with the listener's address once it accepts connections; nil means no call.
	Ready func(net.Addr)
}

// runWebhook is `pullgate webhook`: it serves until ctx is done, then shuts down gracefully.
func runWebhook(ctx context.Context, args []string, stdout, stderr io.Writer, o webhookOptions) int {
	set := commandFlags("pullgate webhook", webhookUsage, stderr)
	registry := set.String("registry", "", "pullgate's host[:port] as image references name it (required)")
	addr := set.String("addr", ":8443", "the TLS listener's address")
	certFile := set.String("tls-cert", "", "the serving certificate, PEM (required; read again when it changes)")
	keyFile := set.String("tls-key", "", "the serving certificate's key, PEM (required)")
	pullSecret := set.String("pull-secret", "", "add this Secret to the imagePullSecrets of created Pods that pull through pullgate")
	var exclude multiFlag
	set.Var(&exclude, "exclude", `leave images whose "registry/repository" matches this glob as written, and allow them (repeatable)`)
	if err := set.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "pullgate webhook: "+format+"\n", a...)
		return 2
	}
	switch {
	case set.NArg() > 0:
		return fail("unexpected arguments %q", set.Args())
	case *registry == "":
		return fail("--registry is required")
	case *certFile == "" || *keyFile == "":
		return fail("--tls-cert and --tls-key are required (the API server calls webhooks over TLS only)")
	}
	rule, err := rewrite.NewPrefix(*registry, exclude)
	if err != nil {
		return fail("%v", err)
	}
	log := slog.New(slog.NewJSONHandler(stdout, nil))
	h, err := webhook.New(webhook.Options{Images: rule, PullSecret: *pullSecret, Logger: log})
	if err != nil {
		return fail("%v", err)
	}
	reloader, err := certs.NewReloader(*certFile, *keyFile, nil, func(err error) {
		if err != nil {
			log.Error("TLS key pair changed but was not loaded; the previous one stays in use", "error", err)
			return
		}
		log.Info("TLS key pair reloaded", "cert", *certFile)
	})
	if err != nil {
		return fail("%v", err)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintf(stderr, "pullgate webhook: %v\n", err)
		return 1
	}
	srv := &http.Server{
		Handler: h,
		TLSConfig: &tls.Config{
			MinVersion:     tls.VersionTLS12,
			GetCertificate: reloader.GetCertificate,
			NextProtos:     []string{"h2", "http/1.1"},
		},
		// A review is a few MB at most, sent by the API server, which gives up after its timeoutSeconds
		// (at most 30s): nothing here should wait longer.
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      15 * time.Second,
		IdleTimeout:       90 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(limitListener(ln, 1024), "", "") }()
	log.Info("pullgate webhook listening", "addr", ln.Addr().String(), "registry", *registry,
		"exclude", []string(exclude), "pullSecret", *pullSecret)
	if o.Ready != nil {
		o.Ready(ln.Addr())
	}
	select {
	case err := <-errc:
		log.Error("pullgate webhook stopped", "error", err)
		return 1
	case <-ctx.Done():
	}
	log.Info("shutting down: no new connections; waiting for reviews in flight", "timeout", webhookShutdownTimeout.String())
	sctx, cancel := context.WithTimeout(context.Background(), webhookShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("reviews in flight did not finish in time; closing them", "error", err)
		_ = srv.Close()
	}
	return 0
}
