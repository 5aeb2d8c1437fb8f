package main

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pullgate/pullgate/metrics"
)

// TestReloadReporter holds that a failed reload of a configuration file is logged and counted, once per change
// of outcome, and never dropped.
func TestReloadReporter(t *testing.T) {
	var logs bytes.Buffer
	a := &app{log: slog.New(slog.NewJSONHandler(&logs, nil)), metrics: metrics.New(prometheus.NewRegistry(), nil)}
	report := a.reloadReporter("upstream_auth")
	broken := errors.New("credentials file: invalid character")
	for _, err := range []error{nil, broken, broken, nil, nil} {
		report(err)
	}
	if got := testutil.ToFloat64(a.metrics.ConfigReloads.WithLabelValues("upstream_auth", "error")); got != 1 {
		t.Errorf("errors counted %v, want 1", got)
	}
	if got := testutil.ToFloat64(a.metrics.ConfigReloads.WithLabelValues("upstream_auth", "ok")); got != 1 {
		t.Errorf("recoveries counted %v, want 1", got)
	}
	if n := strings.Count(logs.String(), "invalid character"); n != 1 {
		t.Errorf("the failure was logged %d times, want once:\n%s", n, logs.String())
	}
}
