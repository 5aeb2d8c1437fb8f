package proxy

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/pullgate/pullgate/upstream"
)

// manualTimers replaces Options.afterFunc: timers fire only when a test fires them, by duration.
type manualTimers struct {
	mu     sync.Mutex
	timers []*manualTimer
}

type manualTimer struct {
	d       time.Duration
	f       func()
	stopped bool
	fired   bool
}

func (m *manualTimers) afterFunc(d time.Duration, f func()) func() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := &manualTimer{d: d, f: f}
	m.timers = append(m.timers, t)
	return func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		was := !t.stopped && !t.fired
		t.stopped = true
		return was
	}
}

// pending counts the armed timers of duration d.
func (m *manualTimers) pending(d time.Duration) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, t := range m.timers {
		if t.d == d && !t.stopped && !t.fired {
			n++
		}
	}
	return n
}

// fire runs every armed timer of duration d and returns how many it ran.
func (m *manualTimers) fire(d time.Duration) int {
	m.mu.Lock()
	var run []func()
	for _, t := range m.timers {
		if t.d == d && !t.stopped && !t.fired {
			t.fired = true
			run = append(run, t.f)
		}
	}
	m.mu.Unlock()
	for _, f := range run {
		f()
	}
	return len(run)
}

// Distinct durations, so that tests can tell the timers apart.
const (
	testFillWait     = 101 * time.Second
	testAbandonGrace = 102 * time.Second
	testRangeWait    = 103 * time.Second
)

// newTimedEnv is newEnv with manual timers for FillWait, AbandonGrace and RangeWait.
func newTimedEnv(t *testing.T, tweak ...func(*Options)) (*env, *manualTimers) {
	t.Helper()
	timers := &manualTimers{}
	e := newEnv(t, append([]func(*Options){func(o *Options) {
		o.afterFunc = timers.afterFunc
		o.FillWait, o.AbandonGrace, o.RangeWait = testFillWait, testAbandonGrace, testRangeWait
	}}, tweak...)...)
	return e, timers
}

// fillClients returns how many clients read the fill of d in progress (0 when there is none).
func fillClients(h *Handler, d v1.Hash) int {
	h.fills.mu.Lock()
	defer h.fills.mu.Unlock()
	if f := h.fills.m[d]; f != nil {
		return f.waiters
	}
	return 0
}

// holdBlobGETs makes the upstream send no answer to blob GETs until release is called (or the request ends),
// then 503. Call release before the test ends; calling it again does nothing.
func holdBlobGETs(u *fakeUpstream) (release func()) {
	hold := make(chan struct{})
	u.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && routeKind(r.URL.Path) == "blobs" {
			select {
			case <-hold:
			case <-r.Context().Done():
			}
			w.WriteHeader(http.StatusServiceUnavailable)
			return true
		}
		return false
	})
	return sync.OnceFunc(func() { close(hold) })
}

// randomDigest is the sha256 of random bytes: a blob no upstream holds.
func randomDigest(t testing.TB) v1.Hash {
	t.Helper()
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	sum := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

// asyncGet sends a GET from a goroutine; the response (body read) arrives on the channel.
type result struct {
	resp    *http.Response
	body    []byte
	err     error
	readErr error
}

func (e *env) asyncGet(ctx context.Context, path string, hdr ...string) <-chan result {
	ch := make(chan result, 1)
	go func() {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.srv.URL+path, nil)
		if err != nil {
			ch <- result{err: err}
			return
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := e.srv.Client().Do(req)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer resp.Body.Close()
		body, rerr := io.ReadAll(resp.Body)
		ch <- result{resp: resp, body: body, readErr: rerr}
	}()
	return ch
}

// await waits for a result; the deadline only turns a hang into a failure.
func await(t *testing.T, what string, ch <-chan result) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: no answer", what)
		return result{}
	}
}

// slowBlob makes the upstream send body for blob GETs under repo: the first cut bytes at once, the rest
// once release is closed.
func slowBlob(e *env, repo string, body []byte, cut int, release <-chan struct{}) {
	e.up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || !strings.HasPrefix(r.URL.Path, "/v2/"+repo+"/blobs/") {
			return false
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(body[:cut])
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return true
		}
		_, _ = w.Write(body[cut:])
		return true
	})
}

// TestRangeDuringFill: a Range that does not reach the blob's end never gets bytes of a fill before the
// digest is verified: it waits for the fill (and gets the verified bytes, or the fill's error), or gets a 503
// with Retry-After once RangeWait runs out.
func TestRangeDuringFill(t *testing.T) {
	const size = 256 << 10
	tests := []struct {
		name       string
		wrong      bool // the upstream flips a byte in the first part
		rng        string
		expire     bool // RangeWait runs out before the fill ends
		wantStatus int
		wantBody   func(blob []byte) []byte
	}{
		{name: "wrong bytes, range inside", wrong: true, rng: "bytes=0-99", wantStatus: 502},
		{name: "wrong bytes, range within the written part", wrong: true, rng: "bytes=1000-1999", wantStatus: 502},
		{name: "right bytes, range inside", rng: "bytes=10-19", wantStatus: 206, wantBody: func(b []byte) []byte { return b[10:20] }},
		{name: "wait runs out", wrong: true, rng: "bytes=0-99", expire: true, wantStatus: 503},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, timers := newTimedEnv(t)
			blob, d := layerBlob(t, size)
			sent := bytes.Clone(blob)
			if tt.wrong {
				sent[50] ^= 0xff
			}
			release := make(chan struct{})
			slowBlob(e, "team/rng", sent, size/2, release)
			if err := e.cache.Link("local", "team/rng", d); err != nil {
				t.Fatal(err)
			}
			path := "/v2/local/team/rng/blobs/" + d.String()
			// A first client starts the fill and reads what the upstream sent so far.
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			first := e.asyncGet(ctx, path)
			var f *fill
			waitFor(t, "the fill", func() bool {
				e.h.fills.mu.Lock()
				defer e.h.fills.mu.Unlock()
				f = e.h.fills.m[d]
				return f != nil
			})
			<-f.ready
			waitFor(t, "the fill's first half", func() bool { return f.w.Written() == size/2 })
			ranged := e.asyncGet(context.Background(), path, "Range", tt.rng)
			var early *result
			waitFor(t, "the ranged client to join", func() bool {
				select {
				case r := <-ranged:
					early = &r
					return true
				default:
					return fillClients(e.h, d) == 2
				}
			})
			if early != nil {
				close(release)
				if early.err != nil {
					t.Fatal(early.err)
				}
				t.Fatalf("answered before the fill was verified: status %d, body %.40q", early.resp.StatusCode, early.body)
			}
			if tt.expire {
				waitFor(t, "the range wait", func() bool { return timers.pending(testRangeWait) == 1 })
				timers.fire(testRangeWait)
			} else {
				close(release)
			}
			r := await(t, "ranged GET", ranged)
			if r.err != nil {
				t.Fatal(r.err)
			}
			if r.resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d, want %d (body %.100q)", r.resp.StatusCode, tt.wantStatus, r.body)
			}
			if tt.wantBody != nil {
				if want := tt.wantBody(blob); !bytes.Equal(r.body, want) {
					t.Fatalf("body %q, want %q", r.body, want)
				}
				return
			}
			if ociError(t, r.body).Code == "" {
				t.Fatal("no OCI error")
			}
			if tt.expire && r.resp.Header.Get("Retry-After") == "" {
				t.Error("503 without Retry-After")
			}
			if tt.expire {
				close(release)
			}
			<-first
		})
	}
}

// TestRangeToTheEndDuringFillIsCut: a range that reaches the blob's end streams, with the last byte held back
// until verification: wrong bytes end in a cut stream, never in a clean 206.
func TestRangeToTheEndDuringFillIsCut(t *testing.T) {
	e, _ := newTimedEnv(t)
	blob, d := layerBlob(t, 256<<10)
	sent := bytes.Clone(blob)
	sent[len(sent)-10] ^= 0xff
	release := make(chan struct{})
	slowBlob(e, "team/tail", sent, 1000, release)
	if err := e.cache.Link("local", "team/tail", d); err != nil {
		t.Fatal(err)
	}
	ch := e.asyncGet(context.Background(), "/v2/local/team/tail/blobs/"+d.String(), "Range", "bytes=100-")
	waitFor(t, "the fill", func() bool { return fillClients(e.h, d) == 1 })
	close(release)
	r := await(t, "ranged GET", ch)
	if r.err == nil && r.resp.StatusCode/100 == 2 && r.readErr == nil && int64(len(r.body)) == r.resp.ContentLength {
		t.Fatalf("status %d with a clean body of %d bytes from wrong upstream bytes", r.resp.StatusCode, len(r.body))
	}
}

// TestCachedBlobServeContent: cache hits answer conditional requests, several ranges and HEAD as
// http.ServeContent does, with the digest as ETag and Docker-Content-Digest.
func TestCachedBlobServeContent(t *testing.T) {
	e := newEnv(t)
	blob, d := layerBlob(t, 1000)
	e.up.pushBlob(t, "team/sc", blob, d)
	path := "/v2/local/team/sc/blobs/" + d.String()
	if resp, _ := e.get(path); resp.StatusCode != http.StatusOK {
		t.Fatalf("warm-up: %d", resp.StatusCode)
	}
	waitFor(t, "the blob in the cache", func() bool { _, err := e.cache.Stat(d); return err == nil })
	etag := `"` + d.String() + `"`
	tests := []struct {
		name   string
		method string
		hdr    []string
		status int
		check  func(t *testing.T, resp *http.Response, body []byte)
	}{
		{name: "If-None-Match with the digest", hdr: []string{"If-None-Match", etag}, status: 304},
		{name: "If-None-Match with another tag", hdr: []string{"If-None-Match", `"sha256:x"`}, status: 200},
		{name: "If-Range with the digest", hdr: []string{"Range", "bytes=0-9", "If-Range", etag}, status: 206,
			check: func(t *testing.T, _ *http.Response, body []byte) {
				if !bytes.Equal(body, blob[:10]) {
					t.Errorf("body %q", body)
				}
			}},
		{name: "If-Range with another tag", hdr: []string{"Range", "bytes=0-9", "If-Range", `"sha256:x"`}, status: 200,
			check: func(t *testing.T, _ *http.Response, body []byte) {
				if !bytes.Equal(body, blob) {
					t.Errorf("body of %d bytes, want the whole blob", len(body))
				}
			}},
		{name: "two ranges", hdr: []string{"Range", "bytes=0-9,990-999"}, status: 206,
			check: func(t *testing.T, resp *http.Response, body []byte) {
				mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
				if err != nil || mt != "multipart/byteranges" {
					t.Fatalf("Content-Type %q", resp.Header.Get("Content-Type"))
				}
				mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
				for _, want := range [][]byte{blob[:10], blob[990:]} {
					p, err := mr.NextPart()
					if err != nil {
						t.Fatal(err)
					}
					got, _ := io.ReadAll(p)
					if !bytes.Equal(got, want) {
						t.Errorf("part %q, want %q", got, want)
					}
				}
			}},
		{name: "two ranges past the end", hdr: []string{"Range", "bytes=2000-2001,3000-3001"}, status: 416,
			check: func(t *testing.T, resp *http.Response, body []byte) {
				ociError(t, body)
				if got := resp.Header.Get("Content-Range"); got != "bytes */1000" {
					t.Errorf("Content-Range %q", got)
				}
			}},
		{name: "HEAD", method: http.MethodHead, status: 200,
			check: func(t *testing.T, resp *http.Response, body []byte) {
				if resp.ContentLength != 1000 || len(body) != 0 {
					t.Errorf("Content-Length %d, body %d bytes", resp.ContentLength, len(body))
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := e.do(cmp.Or(tt.method, http.MethodGet), path, tt.hdr...)
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %.200q", resp.StatusCode, tt.status, body)
			}
			if tt.status != 416 {
				if got := resp.Header.Get("Etag"); got != etag {
					t.Errorf("ETag %q, want %q", got, etag)
				}
				if got := resp.Header.Get("Docker-Content-Digest"); got != d.String() {
					t.Errorf("Docker-Content-Digest %q", got)
				}
			}
			if tt.check != nil {
				tt.check(t, resp, body)
			}
		})
	}
}

// TestFillSlots: fills are bounded per upstream; a request that needs one more waits for a slot and gets a
// 503 with Retry-After when FillWait runs out, and only the bounded number of upstream GETs is made.
func TestFillSlots(t *testing.T) {
	e, timers := newTimedEnv(t, func(o *Options) { o.MaxFillsPerUpstream = 2 })
	defer holdBlobGETs(e.up)()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for range 2 {
		e.asyncGet(ctx, "/v2/local/team/slots/blobs/"+randomDigest(t).String())
	}
	waitFor(t, "two upstream GETs", func() bool { return e.up.count("GET blobs") == 2 })
	third := e.asyncGet(context.Background(), "/v2/local/team/slots/blobs/"+randomDigest(t).String())
	waitFor(t, "the third request to wait for a slot", func() bool { return timers.pending(testFillWait) == 1 })
	timers.fire(testFillWait)
	r := await(t, "third GET", third)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.resp.StatusCode != http.StatusServiceUnavailable || r.resp.Header.Get("Retry-After") == "" {
		t.Fatalf("status %d, Retry-After %q; want 503 with Retry-After", r.resp.StatusCode, r.resp.Header.Get("Retry-After"))
	}
	if got := ociError(t, r.body).Code; got != codeUnavailable {
		t.Errorf("code %s", got)
	}
	if n := e.up.count("GET blobs"); n != 2 {
		t.Errorf("upstream blob GETs = %d, want 2", n)
	}
	if got := e.counter(e.m.FillsBusy.WithLabelValues("local")); got != 1 {
		t.Errorf("busy refusals = %v, want 1", got)
	}
}

// TestAbandonedFill: a fill every client left stops after the grace, leaving nothing; a client that asks
// within the grace keeps it alive and gets the blob.
func TestAbandonedFill(t *testing.T) {
	for _, rejoin := range []bool{false, true} {
		t.Run("rejoin="+strconv.FormatBool(rejoin), func(t *testing.T) {
			e, timers := newTimedEnv(t)
			blob, d := layerBlob(t, 256<<10)
			release := make(chan struct{})
			slowBlob(e, "team/gone", blob, 1000, release)
			if err := e.cache.Link("local", "team/gone", d); err != nil {
				t.Fatal(err)
			}
			path := "/v2/local/team/gone/blobs/" + d.String()
			ctx, cancel := context.WithCancel(context.Background())
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.srv.URL+path, nil)
			resp, err := e.srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(resp.Body, make([]byte, 100)); err != nil {
				t.Fatal(err)
			}
			cancel()
			resp.Body.Close()
			waitFor(t, "the grace timer", func() bool { return timers.pending(testAbandonGrace) == 1 })
			if !rejoin {
				timers.fire(testAbandonGrace)
				waitFor(t, "the fill to stop", func() bool { return e.counter(e.m.FillsInFlight) == 0 })
				if got := e.counter(e.m.FillsAbandoned); got != 1 {
					t.Errorf("abandoned fills = %v, want 1", got)
				}
				if content, temp := e.storedFiles(); len(content)+len(temp) != 0 {
					t.Errorf("files left: %v %v", content, temp)
				}
				close(release)
				return
			}
			second := e.asyncGet(context.Background(), path)
			waitFor(t, "the second client to join", func() bool { return fillClients(e.h, d) == 1 })
			if n := timers.fire(testAbandonGrace); n != 0 {
				t.Errorf("%d grace timers still armed with a client reading", n)
			}
			close(release)
			r := await(t, "second GET", second)
			if r.err != nil || r.readErr != nil || !bytes.Equal(r.body, blob) {
				t.Fatalf("second client: %v %v, %d bytes", r.err, r.readErr, len(r.body))
			}
			if n := e.up.count("GET blobs"); n != 1 {
				t.Errorf("upstream blob GETs = %d, want 1", n)
			}
		})
	}
}

// TestBlobNegativeCache: an upstream 404 for a blob is remembered per repository for NegativeTTL, so random
// digests cost one upstream request each; another repository is not affected.
func TestBlobNegativeCache(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.NegativeTTL = time.Minute })
	d := randomDigest(t)
	for i := range 3 {
		if resp, body := e.get("/v2/local/team/neg/blobs/" + d.String()); resp.StatusCode != 404 || ociError(t, body).Code != codeBlobUnknown {
			t.Fatalf("GET %d: %d %s", i, resp.StatusCode, body)
		}
	}
	resp := e.do(http.MethodHead, "/v2/local/team/neg/blobs/"+d.String())
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Fatalf("HEAD: %d", resp.StatusCode)
	}
	if n := e.up.count("GET blobs") + e.up.count("HEAD blobs"); n != 1 {
		t.Fatalf("upstream blob requests = %d, want 1", n)
	}
	// Another repository is asked about on its own.
	if resp, _ := e.get("/v2/local/team/other/blobs/" + d.String()); resp.StatusCode != 404 {
		t.Fatalf("GET under team/other: %d", resp.StatusCode)
	}
	if n := e.up.count("GET blobs"); n != 2 {
		t.Fatalf("upstream GETs = %d, want 2 (one per repository)", n)
	}
	e.clock.advance(2 * time.Minute)
	if resp, _ := e.get("/v2/local/team/neg/blobs/" + d.String()); resp.StatusCode != 404 {
		t.Fatalf("after the TTL: %d", resp.StatusCode)
	}
	if n := e.up.count("GET blobs"); n != 3 {
		t.Fatalf("upstream GETs after the TTL = %d, want 3", n)
	}
}

// limitedFetcher is the upstream client, saying its concurrency as a client that exposes it would.
type limitedFetcher struct {
	*upstream.Client
	n int
}

func (f limitedFetcher) Concurrency() int { return f.n }

// TestManifestsNotStarvedByFills: fills hanging on a slow upstream never hold every slot of the upstream
// client, so a manifest request still gets through: with MaxFillsPerUpstream below the client's concurrency,
// or with a larger one lowered to half the concurrency of a client that says it.
func TestManifestsNotStarvedByFills(t *testing.T) {
	tests := []struct {
		name        string
		maxFills    int
		sayConc     bool
		wantHanging int
	}{
		{name: "MaxFillsPerUpstream below the client's concurrency", maxFills: 4, wantHanging: 4},
		{name: "MaxFillsPerUpstream lowered to half the concurrency", maxFills: 100, sayConc: true, wantHanging: 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, timers := newTimedEnv(t, func(o *Options) { o.MaxFillsPerUpstream = tt.maxFills })
			// The upstream client's own bound: 8 requests waiting for response headers at once.
			client, err := upstream.New(upstream.Options{Name: "local", URL: e.up.srv.URL, Transport: e.up.srv.Client().Transport,
				Now: e.clock.Now, Concurrency: 8, Timeout: time.Hour, FailureThreshold: 1000})
			if err != nil {
				t.Fatal(err)
			}
			e.opts.Upstreams[0].Fetcher = client
			if tt.sayConc {
				e.opts.Upstreams[0].Fetcher = limitedFetcher{client, 8}
			}
			e.restart()
			up := e.up
			img := randomImage(t, 1)
			up.push(t, "team/starve:v1", img)
			defer holdBlobGETs(up)() // no response headers until the test ends
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			const clients = 12
			for range clients {
				e.asyncGet(ctx, "/v2/local/team/starve/blobs/"+randomDigest(t).String())
			}
			// Every request is either in a fill or waiting for a fill slot.
			waitFor(t, "the fills to hang", func() bool {
				return up.count("GET blobs") >= tt.wantHanging && int(e.counter(e.m.FillsInFlight))+timers.pending(testFillWait) == clients
			})
			r := await(t, "manifest GET", e.asyncGet(context.Background(), "/v2/local/team/starve/manifests/v1"))
			if r.err != nil {
				t.Fatal(r.err)
			}
			if r.resp.StatusCode != http.StatusOK {
				t.Fatalf("manifest: %d %.200s", r.resp.StatusCode, r.body)
			}
			if n := up.count("GET blobs"); n != tt.wantHanging {
				t.Errorf("upstream blob GETs = %d, want %d", n, tt.wantHanging)
			}
		})
	}
}

// TestJoinerRetriesOwnFill: a client that joined a fill started under a repository that lacks the blob (an
// attacker's) starts its own fill when that one fails for the other repository's reasons (its 404 or 403, or
// a size only its manifest declared), and gets the blob; the attacker never does.
func TestJoinerRetriesOwnFill(t *testing.T) {
	tests := []struct {
		name       string
		status     int  // what the upstream answers the attacker's repository; 0: the blob
		declare    bool // the attacker's repository declares another size for the blob
		wantStatus int
	}{
		{name: "404 for the attacker", status: http.StatusNotFound, wantStatus: 404},
		{name: "403 for the attacker", status: http.StatusForbidden, wantStatus: 403},
		{name: "size declared by the attacker", declare: true, wantStatus: 502},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			blob, d := layerBlob(t, 64<<10)
			e.up.pushBlob(t, "team/good", blob, d)
			release := make(chan struct{})
			e.up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
				if !strings.HasPrefix(r.URL.Path, "/v2/evil/app/blobs/") {
					return false
				}
				if r.Method == http.MethodGet {
					<-release
				}
				if tt.status == 0 && r.Method == http.MethodGet {
					return false
				}
				w.WriteHeader(cmp.Or(tt.status, http.StatusNotFound)) // the test registry would serve it anywhere
				return true
			})
			if err := e.cache.Link("local", "team/good", d); err != nil {
				t.Fatal(err)
			}
			if tt.declare {
				if err := e.cache.LinkDescriptor("local", "evil/app", d, int64(len(blob)+1)); err != nil {
					t.Fatal(err)
				}
			}
			evil := e.asyncGet(context.Background(), "/v2/local/evil/app/blobs/"+d.String())
			waitFor(t, "the attacker's fill", func() bool { return fillClients(e.h, d) == 1 })
			good := e.asyncGet(context.Background(), "/v2/local/team/good/blobs/"+d.String())
			waitFor(t, "the victim to join", func() bool { return fillClients(e.h, d) == 2 })
			close(release)
			r := await(t, "attacker", evil)
			if r.err != nil {
				t.Fatal(r.err)
			}
			if r.resp.StatusCode != tt.wantStatus {
				t.Fatalf("attacker: status %d, want %d", r.resp.StatusCode, tt.wantStatus)
			}
			r = await(t, "victim", good)
			if r.err != nil {
				t.Fatal(r.err)
			}
			if r.resp.StatusCode != 200 || !bytes.Equal(r.body, blob) {
				t.Fatalf("victim: status %d, %d bytes: %.200s", r.resp.StatusCode, len(r.body), r.body)
			}
			// The blob is cached now, and still not served to a repository that lacks it.
			if tt.declare {
				return // a manifest of the attacker's repository references it: it is served there
			}
			if resp, _ := e.get("/v2/local/evil/app/blobs/" + d.String()); resp.StatusCode == 200 {
				t.Fatalf("attacker again: %d", resp.StatusCode)
			}
		})
	}
}

// TestDeclaredBlobSize: when a manifest of the repository declared a blob's size, a fill refuses an upstream
// Content-Length that differs (502, nothing stored), and a body without one is held to the declared size.
func TestDeclaredBlobSize(t *testing.T) {
	tests := []struct {
		name     string
		declared func(n int) int64
		chunked  bool
	}{
		{name: "Content-Length larger than declared", declared: func(n int) int64 { return int64(n - 1) }},
		{name: "Content-Length smaller than declared", declared: func(n int) int64 { return int64(n + 1) }},
		{name: "no Content-Length, body longer than declared", declared: func(n int) int64 { return int64(n - 1) }, chunked: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			blob, d := layerBlob(t, 4096)
			e.up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
				if r.Method != http.MethodGet || routeKind(r.URL.Path) != "blobs" {
					return false
				}
				if !tt.chunked {
					w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
				}
				w.WriteHeader(http.StatusOK)
				_, _ = w.Write(blob[:100])
				w.(http.Flusher).Flush()
				_, _ = w.Write(blob[100:])
				return true
			})
			if err := e.cache.LinkDescriptor("local", "team/size", d, tt.declared(len(blob))); err != nil {
				t.Fatal(err)
			}
			resp, body, readErr := e.raw(http.MethodGet, "/v2/local/team/size/blobs/"+d.String())
			if resp != nil && resp.StatusCode == 200 && readErr == nil && bytes.Equal(body, blob) {
				t.Fatal("served a blob whose size differs from the declared one")
			}
			if !tt.chunked && (resp == nil || resp.StatusCode != http.StatusBadGateway) {
				t.Fatalf("response %v, want 502", resp)
			}
			waitFor(t, "the fill", func() bool { return e.counter(e.m.FillsInFlight) == 0 })
			if content, temp := e.storedFiles(); len(content)+len(temp) != 0 {
				t.Errorf("files left: %v %v", content, temp)
			}
		})
	}
}

// TestPrefetch: an image manifest fetched from the upstream starts fills of its config and layers before any
// client asks; a client then gets them with no second upstream GET. An index prefetches nothing, and a failed
// prefetch leaves nothing behind.
func TestPrefetch(t *testing.T) {
	t.Run("image", func(t *testing.T) {
		e := newEnv(t)
		img := randomImage(t, 3)
		e.up.push(t, "team/pre:v1", img)
		e.up.resetCounts()
		if resp, body := e.get("/v2/local/team/pre/manifests/v1"); resp.StatusCode != 200 {
			t.Fatalf("manifest: %d %s", resp.StatusCode, body)
		}
		waitFor(t, "the prefetches", func() bool {
			return e.up.count("GET blobs") == 4 && e.counter(e.m.FillsInFlight) == 0
		})
		layers, _ := img.Layers()
		var digests []v1.Hash
		cfg, _ := img.ConfigName()
		digests = append(digests, cfg)
		for _, l := range layers {
			ld := mustDigest(t, l)
			digests = append(digests, ld)
			size, _ := l.Size()
			if got, ok, err := e.cache.LinkedSize("local", "team/pre", ld); err != nil || !ok || got != size {
				t.Errorf("declared size of %s: %d %v %v, want %d", ld, got, ok, err, size)
			}
		}
		for _, d := range digests {
			resp, body := e.get("/v2/local/team/pre/blobs/" + d.String())
			if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != d.String() {
				t.Fatalf("blob %s: %d", d, resp.StatusCode)
			}
			if got := sha256.Sum256(body); hex.EncodeToString(got[:]) != d.Hex {
				t.Fatalf("blob %s: wrong bytes", d)
			}
		}
		if n := e.up.count("GET blobs"); n != 4 {
			t.Errorf("upstream blob GETs = %d, want 4", n)
		}
	})
	t.Run("index", func(t *testing.T) {
		e := newEnv(t)
		idx := mutate.AppendManifests(empty.Index,
			mutate.IndexAddendum{Add: randomImage(t, 1), Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
			mutate.IndexAddendum{Add: randomImage(t, 1), Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}})
		e.up.push(t, "team/idx:v1", idx)
		if resp, _ := e.get("/v2/local/team/idx/manifests/v1"); resp.StatusCode != 200 {
			t.Fatalf("index: %d", resp.StatusCode)
		}
		if got := e.counter(e.m.Prefetches.WithLabelValues("local")); got != 0 {
			t.Errorf("prefetches for an index = %v, want 0", got)
		}
	})
	t.Run("upstream fails", func(t *testing.T) {
		e := newEnv(t)
		img := randomImage(t, 2)
		e.up.push(t, "team/fail:v1", img)
		e.up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
			if r.Method == http.MethodGet && routeKind(r.URL.Path) == "blobs" {
				w.WriteHeader(http.StatusInternalServerError)
				return true
			}
			return false
		})
		if resp, _ := e.get("/v2/local/team/fail/manifests/v1"); resp.StatusCode != 200 {
			t.Fatalf("manifest: %d", resp.StatusCode)
		}
		waitFor(t, "the failed prefetches", func() bool {
			return e.up.count("GET blobs") == 3 && e.counter(e.m.FillsInFlight) == 0
		})
		if _, temp := e.storedFiles(); len(temp) != 0 {
			t.Errorf("temp files left: %v", temp)
		}
		e.up.setFault(nil)
		layers, _ := img.Layers()
		ld := mustDigest(t, layers[0])
		if _, err := e.cache.Stat(ld); err == nil {
			t.Fatal("a failed prefetch stored the layer")
		}
		resp, body := e.get("/v2/local/team/fail/blobs/" + ld.String())
		if resp.StatusCode != 200 {
			t.Fatalf("layer after the failed prefetch: %d %s", resp.StatusCode, body)
		}
	})
	t.Run("client joins a prefetch in flight", func(t *testing.T) {
		e, timers := newTimedEnv(t)
		img := randomImage(t, 1)
		e.up.push(t, "team/join:v1", img)
		layers, _ := img.Layers()
		ld := mustDigest(t, layers[0])
		want, _ := layers[0].Compressed()
		wantBody, _ := io.ReadAll(want)
		release := make(chan struct{})
		e.up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
			if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+ld.String()) {
				<-release // the registry answers once released
			}
			return false
		})
		if resp, _ := e.get("/v2/local/team/join/manifests/v1"); resp.StatusCode != 200 {
			t.Fatalf("manifest: %d", resp.StatusCode)
		}
		// The prefetch has no client yet: its grace runs from its start.
		if n := timers.pending(testAbandonGrace); n < 1 { // the config's fill may be done already
			t.Fatalf("grace timers = %d, want one for the held layer's prefetch", n)
		}
		ch := e.asyncGet(context.Background(), "/v2/local/team/join/blobs/"+ld.String())
		waitFor(t, "the client to join the prefetch", func() bool { return fillClients(e.h, ld) == 1 })
		close(release)
		r := await(t, "layer GET", ch)
		if r.err != nil || r.readErr != nil || !bytes.Equal(r.body, wantBody) {
			t.Fatalf("layer: %v %v, %d bytes", r.err, r.readErr, len(r.body))
		}
		if n := e.up.count("GET blobs"); n != 2 {
			t.Errorf("upstream blob GETs = %d, want 2 (config and layer, once each)", n)
		}
	})
	t.Run("bounded", func(t *testing.T) {
		e := newEnv(t, func(o *Options) { o.PrefetchConcurrency = 2 })
		img := randomImage(t, 5)
		e.up.push(t, "team/many:v1", img)
		release := holdBlobGETs(e.up)
		defer release()
		if resp, _ := e.get("/v2/local/team/many/manifests/v1"); resp.StatusCode != 200 {
			t.Fatalf("manifest: %d", resp.StatusCode)
		}
		prefetches := func() float64 { return e.counter(e.m.Prefetches.WithLabelValues("local")) }
		waitFor(t, "two prefetches", func() bool { return prefetches() >= 2 })
		if got := e.up.count("GET blobs"); got > 2 {
			t.Errorf("%d blob GETs in flight, want at most PrefetchConcurrency (2)", got)
		}
		if got := prefetches(); got != 2 {
			t.Errorf("prefetches = %v while two are held, want 2", got)
		}
		// As slots free up, the rest of the image's blobs (config and five layers) are prefetched too.
		release()
		waitFor(t, "every blob of the image prefetched", func() bool { return prefetches() == 6 })
	})
}
