package upstream

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRateLimit(t *testing.T) {
	tests := []struct {
		name           string
		header         map[string]string
		wantRetryAfter time.Duration
	}{
		{"Retry-After seconds", map[string]string{"Retry-After": "120"}, 120 * time.Second},
		{"Retry-After date", map[string]string{"Retry-After": newClock().Now().Add(90 * time.Second).Format(http.TimeFormat)}, 90 * time.Second},
		{"no Retry-After", nil, defaultRetryAfter},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var f faults
			u := newUpstream(t, f.wrap)
			clk := newClock()
			c := newTestClient(t, u.srv, Options{Now: clk.Now})
			header := map[string]string{"Content-Type": "application/json"}
			for k, v := range tt.header {
				header[k] = v
			}
			f.set(status(429, header, `{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit."}]}`))

			_, err := c.Fetch(context.Background(), manifestReq(u.img))
			se := want429(t, err, tt.wantRetryAfter)
			if se.Code != "TOOMANYREQUESTS" || !strings.Contains(se.Error(), "upstream test: 429 Too Many Requests: TOOMANYREQUESTS: You have reached") {
				t.Errorf("err = %q", se)
			}
			f.clear()
			seen := u.hits.get("")

			// Until Retry-After has passed: answered without a request, the wait counting down.
			clk.Advance(tt.wantRetryAfter - 10*time.Second)
			_, err = c.Fetch(context.Background(), Request{Repo: u.img.repo, Kind: "blobs", Ref: u.img.layer.String()})
			want429(t, err, 10*time.Second)
			if n := u.hits.get(""); n != seen {
				t.Errorf("upstream saw %d requests while rate limited", n-seen)
			}

			clk.Advance(10 * time.Second)
			if _, _, err := fetchBody(t, c, manifestReq(u.img)); err != nil {
				t.Fatalf("after Retry-After: %v", err)
			}
		})
	}
}

func want429(t *testing.T, err error, retryAfter time.Duration) *StatusError {
	t.Helper()
	var se *StatusError
	if !errors.As(err, &se) || se.Status != 429 || se.RetryAfter != retryAfter {
		t.Fatalf("err = %#v, want a 429 StatusError with RetryAfter %s", err, retryAfter)
	}
	return se
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", defaultRetryAfter},
		{"30", 30 * time.Second},
		{"0", time.Second},
		{"-5", time.Second},
		{"999999999999", maxRetryAfter},
		{now.Add(2 * time.Minute).Format(http.TimeFormat), 2 * time.Minute},
		{now.Add(-time.Minute).Format(http.TimeFormat), time.Second},
		{now.Add(48 * time.Hour).Format(http.TimeFormat), maxRetryAfter},
		{"soon", defaultRetryAfter},
	}
	for _, tt := range tests {
		if got := parseRetryAfter(tt.in, now); got != tt.want {
			t.Errorf("parseRetryAfter(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func TestParseRateLimitRemaining(t *testing.T) {
	for in, want := range map[string]int{"": -1, "100;w=21600": 100, " 7 ": 7, "x": -1, "-3": -1, "0;w=60": 0} {
		h := http.Header{}
		if in != "" {
			h.Set("RateLimit-Remaining", in)
		}
		if got := parseRateLimitRemaining(h); got != want {
			t.Errorf("%q: got %d, want %d", in, got, want)
		}
	}
}

func TestCircuitBreakerDeadUpstream(t *testing.T) {
	// A closed listener: every dial is refused.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	u := newUpstream(t, nil) // for its images and certificate
	dials := &countingDialer{}
	tr := transport(u.srv)
	tr.DialContext = dials.DialContext
	clk := newClock()
	c := newTestClient(t, u.srv, Options{URL: "https://" + addr, Transport: tr, Now: clk.Now,
		FailureThreshold: 3, CoolDown: time.Minute})
	fetch := func() error {
		resp, err := c.Fetch(context.Background(), manifestReq(u.img))
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	wantUnavailable := func(step string, err error, wantDials int64, wantOpen bool) {
		t.Helper()
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("%s: err = %v, want ErrUnavailable", step, err)
		}
		if open := strings.Contains(err.Error(), "circuit open"); open != wantOpen {
			t.Errorf("%s: err = %q, want circuit open: %v", step, err, wantOpen)
		}
		if n := dials.n.Load(); n != wantDials {
			t.Errorf("%s: dials = %d, want %d", step, n, wantDials)
		}
	}
	for i := range 3 {
		wantUnavailable("failure", fetch(), int64(i+1), false)
	}
	err = fetch()
	wantUnavailable("open", err, 3, true)
	if !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("err = %q, want the cause kept", err)
	}
	clk.Advance(59 * time.Second)
	wantUnavailable("still open", fetch(), 3, true)

	// After the cool-down one probe goes out; it fails and the circuit opens again.
	clk.Advance(time.Second)
	wantUnavailable("failed probe", fetch(), 4, false)
	wantUnavailable("reopened", fetch(), 4, true)

	// The upstream comes back on the same address: the next probe closes the circuit.
	ln, err = net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot listen on %s again: %v", addr, err)
	}
	back := httptest.NewUnstartedServer(u.push.Config.Handler)
	back.Listener.Close()
	back.Listener = ln
	back.StartTLS()
	defer back.Close()
	clk.Advance(time.Minute)
	if err := fetch(); err != nil {
		t.Fatalf("probe after recovery: %v", err)
	}
	if err := fetch(); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
}

func TestCircuitBreakerOneProbe(t *testing.T) {
	var f faults
	u := newUpstream(t, f.wrap)
	clk := newClock()
	c := newTestClient(t, u.srv, Options{Now: clk.Now, FailureThreshold: 2, CoolDown: time.Minute})
	ctx := context.Background()
	if _, _, err := fetchBody(t, c, manifestReq(u.img)); err != nil {
		t.Fatal(err)
	}

	// HTTP answers, 5xx included, do not open the circuit.
	f.set(status(503, nil, "down for maintenance"))
	for range 3 {
		_, err := c.Fetch(ctx, manifestReq(u.img))
		var se *StatusError
		if !errors.As(err, &se) || se.Status != 503 || errors.Is(err, ErrUnavailable) {
			t.Fatalf("err = %v, want a 503 StatusError", err)
		}
	}

	// Dropped connections do.
	f.set(closeConn)
	for range 2 {
		if _, err := c.Fetch(ctx, manifestReq(u.img)); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("err = %v, want ErrUnavailable", err)
		}
	}
	seen := u.hits.get("")
	if _, err := c.Fetch(ctx, manifestReq(u.img)); err == nil || !strings.Contains(err.Error(), "circuit open") {
		t.Fatalf("err = %v, want circuit open", err)
	}
	if n := u.hits.get(""); n != seen {
		t.Errorf("an open circuit sent %d requests", n-seen)
	}

	// After the cool-down, one probe is let through; the others fail fast while it is in flight.
	clk.Advance(time.Minute)
	arrived, release := make(chan struct{}), make(chan struct{})
	f.set(hang(arrived, release))
	probe := make(chan error, 1)
	go func() {
		_, _, err := fetchBody(t, c, manifestReq(u.img))
		probe <- err
	}()
	<-arrived
	for range 3 {
		if _, err := c.Fetch(ctx, manifestReq(u.img)); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("during the probe: err = %v, want ErrUnavailable", err)
		}
	}
	f.clear()
	close(release)
	if err := <-probe; err != nil {
		t.Fatalf("probe: %v", err)
	}
	if _, _, err := fetchBody(t, c, manifestReq(u.img)); err != nil {
		t.Fatalf("closed again: %v", err)
	}
}

func TestCanceledProbeReleasesTheCircuit(t *testing.T) {
	var f faults
	u := newUpstream(t, f.wrap)
	clk := newClock()
	c := newTestClient(t, u.srv, Options{Now: clk.Now, FailureThreshold: 1, CoolDown: time.Minute})
	if _, _, err := fetchBody(t, c, manifestReq(u.img)); err != nil { // learn the challenge
		t.Fatal(err)
	}
	f.set(closeConn)
	if _, err := c.Fetch(context.Background(), manifestReq(u.img)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("err = %v", err)
	}
	clk.Advance(time.Minute)
	arrived := make(chan struct{})
	f.set(hang(arrived, nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := c.Fetch(ctx, manifestReq(u.img))
		done <- err
	}()
	<-arrived
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) || errors.Is(err, ErrUnavailable) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	f.clear()
	if _, _, err := fetchBody(t, c, manifestReq(u.img)); err != nil {
		t.Fatalf("next probe: %v", err)
	}
}

func TestConcurrencyLimit(t *testing.T) {
	const limit, n = 3, 10
	var f faults
	u := newUpstream(t, f.wrap)
	c := newTestClient(t, u.srv, Options{Concurrency: limit})
	if _, _, err := fetchBody(t, c, manifestReq(u.img)); err != nil { // learn the challenge
		t.Fatal(err)
	}
	arrived, release := make(chan struct{}), make(chan struct{})
	f.set(func(w http.ResponseWriter, r *http.Request) bool {
		arrived <- struct{}{}
		<-release
		return false
	})
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			_, _, err := fetchBody(t, c, manifestReq(u.img))
			errs <- err
		})
	}
	// Let the requests through one at a time, once `limit` of them are held.
	for range limit {
		<-arrived
	}
	for range n - limit {
		release <- struct{}{}
		<-arrived
	}
	for range limit {
		release <- struct{}{}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if m := u.hits.maxInFlight(); m != limit {
		t.Errorf("most requests in flight = %d, want %d", m, limit)
	}
}

func TestConcurrencyWaitRespectsContext(t *testing.T) {
	var f faults
	u := newUpstream(t, f.wrap)
	c := newTestClient(t, u.srv, Options{Concurrency: 1})
	if _, _, err := fetchBody(t, c, manifestReq(u.img)); err != nil {
		t.Fatal(err)
	}
	arrived, release := make(chan struct{}), make(chan struct{})
	f.set(hang(arrived, release))
	done := make(chan error, 1)
	go func() {
		_, _, err := fetchBody(t, c, manifestReq(u.img))
		done <- err
	}()
	<-arrived
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Fetch(ctx, manifestReq(u.img)); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
	f.clear()
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestHeaderTimeout(t *testing.T) {
	var f faults
	u := newUpstream(t, f.wrap)
	c := newTestClient(t, u.srv, Options{Timeout: 100 * time.Millisecond})
	if _, _, err := fetchBody(t, c, manifestReq(u.img)); err != nil {
		t.Fatal(err)
	}
	f.set(hang(nil, nil))
	_, err := c.Fetch(context.Background(), manifestReq(u.img))
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "no response headers within 100ms") {
		t.Fatalf("err = %v, want ErrUnavailable naming the timeout", err)
	}

	// A body that streams for longer than Timeout after the headers is not cut.
	more := make(chan struct{})
	f.set(func(w http.ResponseWriter, r *http.Request) bool {
		w.WriteHeader(200)
		io.WriteString(w, "first ")
		w.(http.Flusher).Flush()
		<-more
		io.WriteString(w, "second")
		return true
	})
	resp, err := c.Fetch(context.Background(), manifestReq(u.img))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 6)
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		t.Fatal(err)
	}
	<-time.After(300 * time.Millisecond) // the scenario is time passing, not an event
	close(more)
	rest, err := io.ReadAll(resp.Body)
	if err != nil || string(buf)+string(rest) != "first second" {
		t.Errorf("body = %q, %v", string(buf)+string(rest), err)
	}
}

func TestBodyReadCanceledByContext(t *testing.T) {
	var f faults
	u := newUpstream(t, f.wrap)
	c := newTestClient(t, u.srv, Options{})
	if _, _, err := fetchBody(t, c, manifestReq(u.img)); err != nil { // learn the challenge
		t.Fatal(err)
	}
	never := make(chan struct{})
	defer close(never)
	f.set(func(w http.ResponseWriter, r *http.Request) bool {
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		select {
		case <-never:
		case <-r.Context().Done():
		}
		return true
	})
	ctx, cancel := context.WithCancel(context.Background())
	resp, err := c.Fetch(ctx, manifestReq(u.img))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	cancel()
	if _, err := io.ReadAll(resp.Body); !errors.Is(err, context.Canceled) {
		t.Errorf("read err = %v, want context.Canceled", err)
	}
}
