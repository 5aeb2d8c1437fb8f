package upstream

import (
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestParseErrorBody(t *testing.T) {
	long := strings.Repeat("é", 400)
	tests := []struct {
		name, contentType, body string
		wantCode, wantMsg       string
	}{
		{"OCI error", "application/json", `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}`, "MANIFEST_UNKNOWN", "manifest unknown"},
		{"first of several", "application/json", `{"errors":[{"code":"DENIED","message":"a"},{"code":"X","message":"b"}]}`, "DENIED", "a"},
		{"token service details", "application/json", `{"details":"incorrect username or password"}`, "", "incorrect username or password"},
		{"control characters", "application/json", "{\"errors\":[{\"code\":\"X\",\"message\":\"a\\nb\\u0000c\"}]}", "X", "a b c"},
		{"plain text", "text/plain; charset=utf-8", "  service\nunavailable ", "", "service unavailable"},
		{"html ignored", "text/html", "<html>oops</html>", "", ""},
		{"empty", "", "", "", ""},
		{"long message trimmed on a rune boundary", "text/plain", long, "", long[:maxMessage] + "..."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, msg := parseErrorBody(tt.contentType, []byte(tt.body), nil)
			if code != tt.wantCode || msg != tt.wantMsg {
				t.Errorf("got %q, %q; want %q, %q", code, msg, tt.wantCode, tt.wantMsg)
			}
		})
	}
}

func TestStatusErrorString(t *testing.T) {
	tests := []struct {
		err  StatusError
		want string
	}{
		{StatusError{Upstream: "docker.io", Status: 429, Code: "TOOMANYREQUESTS", Message: "slow down", RetryAfter: time.Minute},
			"upstream docker.io: 429 Too Many Requests: TOOMANYREQUESTS: slow down (retry after 1m0s)"},
		{StatusError{Upstream: "ghcr.io", Status: 404}, "upstream ghcr.io: 404 Not Found"},
		{StatusError{Upstream: "q", Status: 503, Message: "maintenance"}, "upstream q: 503 Service Unavailable: maintenance"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("got %q, want %q", got, tt.want)
		}
	}
}

// TestDependencies holds the design's dependency direction: upstream knows nothing of the cache,
// badger, metrics or the proxy.
func TestDependencies(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command")
	}
	out, err := exec.Command(goBin, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{
			"github.com/pullgate/pullgate/cache", "github.com/pullgate/pullgate/proxy",
			"github.com/pullgate/pullgate/metrics", "github.com/dgraph-io/badger", "github.com/prometheus/",
		} {
			if strings.HasPrefix(dep, banned) {
				t.Errorf("upstream depends on %s", dep)
			}
		}
	}
}
