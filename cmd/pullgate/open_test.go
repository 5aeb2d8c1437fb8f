package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestReadyzSaysOpen holds that /readyz tells, in its body, that pullgate is open to everyone when no client
// identity is configured, and says nothing of it otherwise; and which settings count as identities.
func TestReadyzSaysOpen(t *testing.T) {
	var ready atomic.Bool
	ready.Store(true)
	for _, open := range []bool{true, false} {
		rec := httptest.NewRecorder()
		opsMux(prometheus.NewRegistry(), &ready, open).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		body, _ := io.ReadAll(rec.Body)
		if rec.Code != http.StatusOK || strings.Contains(string(body), "OPEN") != open {
			t.Errorf("open=%v: %d %q", open, rec.Code, body)
		}
	}
	tests := []struct {
		name string
		env  map[string]string
		want bool
	}{
		{"nothing", map[string]string{}, false},
		{"robots", map[string]string{"PULLGATE_ROBOTS_FILE": "/x"}, true},
		{"client CA", map[string]string{"PULLGATE_CLIENT_CA_FILE": "/x"}, true},
		{"passthrough", map[string]string{"PULLGATE_PASSTHROUGH": "docker.io/**"}, true},
		{"anonymous", map[string]string{"PULLGATE_ANONYMOUS": "docker.io/library/**"}, true},
	}
	for _, tt := range tests {
		cfg, _, err := loadConfig(tt.env)
		if err != nil {
			t.Fatal(err)
		}
		if got := cfg.identitiesConfigured(); got != tt.want {
			t.Errorf("%s: identities configured %v, want %v", tt.name, got, tt.want)
		}
	}
}
