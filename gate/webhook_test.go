package gate_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pullgate/pullgate/gate"
	"github.com/pullgate/pullgate/gate/scannertest"
)

// webhook returns a Webhook client of the fake; o.URL and o.Client are filled in.
func (e *harborEnv) webhook(t *testing.T, o gate.WebhookOptions) *gate.Webhook {
	t.Helper()
	o.URL = e.fake.WebhookURL()
	o.Client = &http.Client{Transport: e.rec}
	w, err := gate.NewWebhook(o)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// TestWebhookScan runs a scan through the fake's webhook, which pulls the image from the token registry.
func TestWebhookScan(t *testing.T) {
	const secret = "Bearer webhook-secret"
	info := gate.ScannerInfo{Name: "InHouse", Vendor: "Us", Version: "3"}
	e := newHarborEnv(t, scannertest.Options{
		Findings: findingsOf(twoFindings...), Latency: 5 * time.Millisecond, Authorization: secret, Info: info,
		Polls: 3, // not for the webhook
	})
	rep, err := e.webhook(t, gate.WebhookOptions{Authorization: secret}).Scan(t.Context(), e.img.req)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Findings, twoFindings) || rep.Scanner != info || rep.GeneratedAt.IsZero() {
		t.Errorf("report %+v", rep)
	}

	reqs := e.rec.requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1", len(reqs))
	}
	r := reqs[0]
	if r.method != "POST" || r.path != "/webhook" || r.header.Get("Content-Type") != "application/json" ||
		r.header.Get("Accept") != "application/json" || r.header.Get("Authorization") != secret {
		t.Errorf("request %s %s with headers %v", r.method, r.path, r.header)
	}
	var body map[string]any
	if err := json.Unmarshal(r.body, &body); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"registry": map[string]any{"url": e.img.req.RegistryURL, "authorization": e.img.req.Authorization},
		"artifact": map[string]any{
			"repository": e.img.req.Repository, "digest": e.img.req.Digest,
			"tag": e.img.req.Tag, "mime_type": e.img.req.MediaType,
		},
	}
	if fmt.Sprint(body) != fmt.Sprint(want) {
		t.Errorf("request body\n%s\nwant\n%v", r.body, want)
	}
	pulled, refused := e.reg.pulls()
	if len(pulled) != 2 || refused != 0 {
		t.Errorf("registry pulls %v (%d refused), want the manifest and its config", pulled, refused)
	}
	if got := e.fake.Last(); got != e.img.req {
		t.Errorf("fake got %+v, want %+v", got, e.img.req)
	}
}

// TestWebhookScanFails checks that each way a webhook scan can fail is an error that says why.
func TestWebhookScanFails(t *testing.T) {
	tooMany := make([]gate.Finding, gate.MaxFindings+1)
	tests := []struct {
		name      string
		opts      scannertest.Options
		webhook   gate.WebhookOptions
		edit      func(e *harborEnv, r *gate.ScanRequest)
		wantScans int
		status    int // when not 0, a *gate.ScannerError with this status
		contains  string
	}{
		{name: "scan refused", opts: scannertest.Options{Fail: scannertest.FailScan}, wantScans: 1, status: 500, contains: "FailScan"},
		{name: "scan failed", opts: scannertest.Options{Fail: scannertest.FailReport}, wantScans: 1, status: 500, contains: "FailReport"},
		{
			name:      "registry refuses the scanner's token",
			edit:      func(_ *harborEnv, r *gate.ScanRequest) { r.Authorization = "Bearer wrong" },
			wantScans: 1, status: 500, contains: "401 Unauthorized",
		},
		{
			name: "scanner Authorization wrong", opts: scannertest.Options{Authorization: "Bearer hook"},
			webhook: gate.WebhookOptions{Authorization: "Bearer other"}, status: 401,
		},
		{
			name: "report too large", opts: scannertest.Options{Findings: findingsOf(twoFindings...)},
			webhook: gate.WebhookOptions{MaxReportSize: 64}, wantScans: 1, contains: "more than 64 bytes",
		},
		{name: "too many findings", opts: scannertest.Options{Findings: findingsOf(tooMany...)}, wantScans: 1, contains: "more than 50000"},
		{
			name:      "report without vulnerabilities",
			opts:      scannertest.Options{RawReport: func(string, string) []byte { return []byte(`{}`) }},
			wantScans: 1, contains: `no "vulnerabilities"`,
		},
		{name: "unreachable", edit: func(e *harborEnv, _ *gate.ScanRequest) { e.fake.Close() }, contains: "connect"},
		{name: "incomplete request", edit: func(_ *harborEnv, r *gate.ScanRequest) { r.Repository = "" }, contains: "needs a registry URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newHarborEnv(t, tt.opts)
			req := e.img.req
			if tt.edit != nil {
				tt.edit(e, &req)
			}
			rep, err := e.webhook(t, tt.webhook).Scan(t.Context(), req)
			if err == nil {
				t.Fatalf("scan succeeded: %+v", rep)
			}
			t.Log(err)
			if tt.status != 0 {
				var se *gate.ScannerError
				if !errors.As(err, &se) || se.Op != "webhook" || se.StatusCode != tt.status {
					t.Errorf("error %v, want a ScannerError of webhook with status %d", err, tt.status)
				}
			}
			if !strings.Contains(err.Error(), tt.contains) {
				t.Errorf("error %q does not say %q", err, tt.contains)
			}
			if strings.Contains(err.Error(), e.reg.token) {
				t.Errorf("error %q holds the registry token", err)
			}
			if got := e.fake.Scans(); got != tt.wantScans {
				t.Errorf("fake got %d scan requests, want %d", got, tt.wantScans)
			}
		})
	}
}

// TestWebhookWaitsForContext checks that a webhook scan ends with its context and with Timeout.
func TestWebhookWaitsForContext(t *testing.T) {
	t.Run("cancelled", func(t *testing.T) {
		e := newHarborEnv(t, scannertest.Options{Latency: time.Hour})
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() {
			_, err := e.webhook(t, gate.WebhookOptions{}).Scan(ctx, e.img.req)
			done <- err
		}()
		waitUntil(t, func() bool { return len(e.fake.Pulls()) == 1 })
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("error %v, want context.Canceled", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Scan still waiting 5s after its context was cancelled")
		}
	})
	t.Run("Timeout", func(t *testing.T) {
		e := newHarborEnv(t, scannertest.Options{Latency: time.Hour})
		_, err := e.webhook(t, gate.WebhookOptions{Timeout: 100 * time.Millisecond}).Scan(t.Context(), e.img.req)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("error %v, want context.DeadlineExceeded", err)
		}
	})
}

// cancelling is a RoundTripper that cancels a context and then answers 500, as an answer that arrives
// while the context ends.
type cancelling struct{ cancel context.CancelFunc }

func (c cancelling) RoundTrip(r *http.Request) (*http.Response, error) {
	c.cancel()
	rec := httptest.NewRecorder()
	http.Error(rec, "late", http.StatusInternalServerError)
	return rec.Result(), nil
}

// TestAnswerRacingCancellation checks that a scan whose context ended says so, even when an answer came.
func TestAnswerRacingCancellation(t *testing.T) {
	req := gate.ScanRequest{RegistryURL: "https://pullgate.example", Repository: "a/b", Digest: "sha256:ab"}
	tests := []struct {
		name string
		scan func(c *http.Client) (gate.Scanner, error)
	}{
		{"webhook", func(c *http.Client) (gate.Scanner, error) {
			return gate.NewWebhook(gate.WebhookOptions{URL: "https://scanner.example/scan", Client: c})
		}},
		{"harbor", func(c *http.Client) (gate.Scanner, error) {
			return gate.NewHarbor(gate.HarborOptions{URL: "https://adapter.example", Client: c})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			s, err := tt.scan(&http.Client{Transport: cancelling{cancel}})
			if err != nil {
				t.Fatal(err)
			}
			_, err = s.Scan(ctx, req)
			var se *gate.ScannerError
			if !errors.Is(err, context.Canceled) || !errors.As(err, &se) {
				t.Errorf("error %v, want one wrapping context.Canceled and the scanner's answer", err)
			}
		})
	}
}

// TestWebhookMisbehavingScanner runs the client against a scanner that is not the fake.
func TestWebhookMisbehavingScanner(t *testing.T) {
	tests := []struct {
		name     string
		handler  http.HandlerFunc
		contains string
	}{
		{
			name: "redirect",
			handler: func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, "https://elsewhere.invalid/", http.StatusFound)
			},
			contains: "HTTP 302",
		},
		{
			name: "HTML answer",
			handler: func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "text/html")
				fmt.Fprint(w, `{"vulnerabilities":[]}`)
			},
			contains: `answered "text/html"`,
		},
		{
			name: "error echoing the registry token",
			handler: func(w http.ResponseWriter, r *http.Request) {
				var body struct {
					Registry struct{ Authorization string } `json:"registry"`
				}
				_ = json.NewDecoder(r.Body).Decode(&body)
				w.WriteHeader(http.StatusUnprocessableEntity)
				fmt.Fprintf(w, `{"error":{"message":"cannot pull with %s"}}`, body.Registry.Authorization)
			},
			contains: "HTTP 422 Unprocessable Entity: cannot pull with [redacted]",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewTLSServer(tt.handler)
			defer srv.Close()
			w, err := gate.NewWebhook(gate.WebhookOptions{URL: srv.URL + "/scan", Client: srv.Client()})
			if err != nil {
				t.Fatal(err)
			}
			req := gate.ScanRequest{RegistryURL: "https://pullgate.example", Authorization: "Bearer tok-123456", Repository: "a/b", Digest: "sha256:ab"}
			_, err = w.Scan(t.Context(), req)
			if err == nil {
				t.Fatal("scan succeeded")
			}
			if !strings.Contains(err.Error(), tt.contains) || strings.Contains(err.Error(), "tok-123456") {
				t.Errorf("error %q, want one saying %q without the token", err, tt.contains)
			}
		})
	}
}
