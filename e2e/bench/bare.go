package main

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"
)

// http1Transport returns a transport that trusts pool and speaks only HTTP/1.1 (as GODEBUG=http2client=0 would),
// so that each request in flight has a connection of its own.
func http1Transport(pool *x509.CertPool) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = &tls.Config{RootCAs: pool}
	t.ForceAttemptHTTP2 = false
	t.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	t.MaxIdleConnsPerHost = 128
	t.DisableCompression = true
	return t
}

// bareProxy starts a TLS reverse proxy with no cache in front of target (https), speaking HTTP/1.1 to it: the
// floor for any caching proxy. It serves HTTP/2 and HTTP/1.1 with certFile/keyFile, and returns its URL and a
// function that stops it.
func bareProxy(target string, pool *x509.CertPool, certFile, keyFile string) (string, func(), error) {
	u, err := url.Parse(target)
	if err != nil {
		return "", nil, err
	}
	rt := http1Transport(pool)
	rp := &httputil.ReverseProxy{
		Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(u) },
		Transport: rt,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			http.Error(w, `{"errors":[{"code":"UNAVAILABLE","message":"bare proxy: upstream failed"}]}`, http.StatusBadGateway)
		},
	}
	base, stop, err := serveTLS(rp, certFile, keyFile)
	if err != nil {
		return "", nil, err
	}
	return base, func() {
		stop()
		rt.CloseIdleConnections()
	}, nil
}

// serveTLS serves h on a loopback port over TLS (HTTP/2 and HTTP/1.1) with certFile/keyFile, and returns its URL
// and a function that stops it.
func serveTLS(h http.Handler, certFile, keyFile string) (string, func(), error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return "", nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{
		Handler:           h,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}},
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() { _ = srv.ServeTLS(l, "", "") }()
	return "https://" + l.Addr().String(), func() { _ = srv.Close() }, nil
}
