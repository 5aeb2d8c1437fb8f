package e2e

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// CountingProxy is a TLS reverse proxy in front of a registry that counts the requests it forwards, by method
// and route kind, and the body bytes it sends back. Set Down to answer every request with 503 without
// forwarding, and BytesPerSecond to throttle response bodies.
type CountingProxy struct {
	// Addr is host:port; URL is https://Addr.
	Addr, URL string
	// Down makes every request fail with 503 (an upstream that answers but is unavailable).
	Down atomic.Bool
	// BytesPerSecond, when positive, slows response bodies to about that rate.
	BytesPerSecond atomic.Int64
	// Bytes counts response body bytes sent to clients.
	Bytes atomic.Int64

	srv    *http.Server
	mu     sync.Mutex
	counts map[string]int
}

// StartCountingProxy listens on a free loopback port with certFile/keyFile and forwards to target (https),
// trusting ca for it.
func StartCountingProxy(target string, ca *CA, certFile, keyFile string) (*CountingProxy, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &CountingProxy{Addr: l.Addr().String(), counts: map[string]int{}}
	p.URL = "https://" + p.Addr
	rp := httputil.NewSingleHostReverseProxy(u)
	rt := Transport(ca.Pool)
	rt.DisableCompression = true
	rp.Transport = rt
	rp.ErrorLog = nil
	rp.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) {
		http.Error(w, "counting proxy: "+err.Error(), http.StatusBadGateway)
	}
	rp.ModifyResponse = func(resp *http.Response) error {
		resp.Body = &countingBody{ReadCloser: resp.Body, p: p, start: time.Now()}
		return nil
	}
	// Keep the upstream's Host so that Location headers name it, as a real upstream's would.
	director := rp.Director
	rp.Director = func(r *http.Request) { director(r); r.Host = u.Host }
	p.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p.mu.Lock()
			p.counts[r.Method+" "+RouteKind(r.URL.Path)]++
			p.counts[r.Method+" "+r.URL.Path]++
			ua, _, _ := strings.Cut(r.UserAgent(), "/")
			p.counts["UA "+ua]++
			p.counts["UA "+ua+" "+r.Method+" "+RouteKind(r.URL.Path)]++
			p.mu.Unlock()
			if p.Down.Load() {
				http.Error(w, `{"errors":[{"code":"UNAVAILABLE","message":"counting proxy is down"}]}`, http.StatusServiceUnavailable)
				return
			}
			rp.ServeHTTP(w, r)
		}),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          nil,
	}
	go func() { _ = p.srv.ServeTLS(l, "", "") }()
	return p, nil
}

// RouteKind is "manifests", "blobs", "tags", "referrers" or "other" for a registry API path.
func RouteKind(path string) string {
	for _, k := range []string{"manifests", "blobs", "tags", "referrers"} {
		if strings.Contains(path, "/"+k+"/") {
			return k
		}
	}
	return "other"
}

// Count returns how many requests matched key: "GET blobs" (method and kind), "GET /v2/repo/blobs/sha256:.."
// (method and path), "UA containerd" (the user agent's product name) or "UA containerd GET blobs" (product,
// method and kind).
func (p *CountingProxy) Count(key string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.counts[key]
}

// Reset zeroes the counts.
func (p *CountingProxy) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.counts = map[string]int{}
	p.Bytes.Store(0)
}

// Counts returns a copy of every count.
func (p *CountingProxy) Counts() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := make(map[string]int, len(p.counts))
	for k, v := range p.counts {
		c[k] = v
	}
	return c
}

// Close stops the proxy.
func (p *CountingProxy) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := p.srv.Shutdown(ctx); err != nil {
		return p.srv.Close()
	}
	return nil
}

type countingBody struct {
	io.ReadCloser
	p     *CountingProxy
	start time.Time
	n     int64
}

func (b *countingBody) Read(buf []byte) (int, error) {
	rate := b.p.BytesPerSecond.Load()
	if rate > 0 && len(buf) > 32<<10 {
		buf = buf[:32<<10]
	}
	n, err := b.ReadCloser.Read(buf)
	b.n += int64(n)
	b.p.Bytes.Add(int64(n))
	if rate > 0 {
		due := b.start.Add(time.Duration(float64(b.n) / float64(rate) * float64(time.Second)))
		if d := time.Until(due); d > 0 {
			time.Sleep(d) // throttling, not waiting for readiness
		}
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return n, fmt.Errorf("upstream body cut: %w", err)
	}
	return n, err
}
