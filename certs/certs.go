// Package certs provides pullgate's serving certificate: a configured key pair reloaded when its files change,
// or a local CA and a serving certificate made on first start and reused afterwards. It knows nothing about the
// registry API or the cache.
package certs

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
)

// Reloader serves a key pair from files and re-reads them when they change, so a renewed certificate
// (cert-manager, a rotated Secret) takes effect without a restart.
type Reloader struct {
	certFile, keyFile string
	now               func() time.Time
	onReload          func(error)

	mu      sync.Mutex
	cert    *tls.Certificate
	stamp   string    // modification times and sizes of both files when loaded
	checked time.Time // last time the files were stat'ed
}

// NewReloader loads the key pair and returns a Reloader for it. now may be nil (time.Now). onReload, when not
// nil, is called after every reload that a change of the files caused, with nil or with why the new files were
// not taken (the previous pair then stays in use), so that a failed rotation is logged and counted.
func NewReloader(certFile, keyFile string, now func() time.Time, onReload func(error)) (*Reloader, error) {
	if now == nil {
		now = time.Now
	}
	if onReload == nil {
		onReload = func(error) {}
	}
	r := &Reloader{certFile: certFile, keyFile: keyFile, now: now, onReload: onReload}
	if err := r.load(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Reloader) fileStamp() (string, error) {
	var b bytes.Buffer
	for _, f := range []string{r.certFile, r.keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "%d/%d;", fi.ModTime().UnixNano(), fi.Size())
	}
	return b.String(), nil
}

func (r *Reloader) load() error {
	stamp, err := r.fileStamp()
	if err != nil {
		return err
	}
	c, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("loading TLS key pair %s, %s: %w", r.certFile, r.keyFile, err)
	}
	r.cert, r.stamp = &c, stamp
	return nil
}

// GetCertificate is a tls.Config.GetCertificate. It looks at the files at most once a second; a change that
// does not load (a half-written rotation) keeps the previous pair until a good one appears.
func (r *Reloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := r.now(); now.Sub(r.checked) >= time.Second {
		r.checked = now
		stamp, err := r.fileStamp()
		if err != nil {
			stamp = "unreadable: " + err.Error()
		}
		if stamp != r.stamp {
			if err == nil {
				err = r.load() // on failure r.cert is unchanged
			}
			if err != nil {
				r.stamp = stamp // report a bad state once, not every second
			}
			r.onReload(err)
		}
	}
	return r.cert, nil
}

// Local holds the paths of the self-made CA and serving certificate.
type Local struct {
	CAFile, CertFile, KeyFile string
}

// EnsureLocal makes, in dir, a CA and a serving certificate for hosts (plus localhost, 127.0.0.1 and ::1),
// unless they exist already. The CA is reused for as long as its files exist; the serving certificate is
// renewed when it expires within 30 days or does not cover every host asked for.
func EnsureLocal(dir string, hosts []string, now time.Time) (Local, error) {
	l := Local{
		CAFile:   filepath.Join(dir, "ca.crt"),
		CertFile: filepath.Join(dir, "server.crt"),
		KeyFile:  filepath.Join(dir, "server.key"),
	}
	caKeyFile := filepath.Join(dir, "ca.key")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return l, err
	}
	hosts = append([]string{"localhost", "127.0.0.1", "::1"}, hosts...)
	slices.Sort(hosts)
	hosts = slices.Compact(hosts)

	ca, caKey, err := loadPair(l.CAFile, caKeyFile)
	if errors.Is(err, os.ErrNotExist) {
		ca, caKey, err = makeCA(l.CAFile, caKeyFile, now)
	}
	if err != nil {
		return l, fmt.Errorf("local CA in %s: %w", dir, err)
	}
	if leaf, _, err := loadPair(l.CertFile, l.KeyFile); err == nil && covers(leaf, hosts) &&
		leaf.NotAfter.After(now.Add(30*24*time.Hour)) && leaf.CheckSignatureFrom(ca) == nil {
		return l, nil
	}
	return l, makeLeaf(l.CertFile, l.KeyFile, ca, caKey, hosts, now)
}

func covers(c *x509.Certificate, hosts []string) bool {
	for _, h := range hosts {
		if c.VerifyHostname(h) != nil {
			return false
		}
	}
	return true
}

func loadPair(certFile, keyFile string) (*x509.Certificate, crypto.Signer, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		if _, serr := os.Stat(certFile); errors.Is(serr, os.ErrNotExist) {
			return nil, nil, serr
		}
		return nil, nil, err
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("%s: key cannot sign", keyFile)
	}
	c, err := x509.ParseCertificate(pair.Certificate[0])
	return c, signer, err
}

func makeCA(certFile, keyFile string, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "pullgate local CA", Organization: []string{"pullgate"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	if err := writePair(certFile, keyFile, der, key); err != nil {
		return nil, nil, err
	}
	c, err := x509.ParseCertificate(der)
	return c, key, err
}

func makeLeaf(certFile, keyFile string, ca *x509.Certificate, caKey crypto.Signer, hosts []string, now time.Time) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: hosts[0], Organization: []string{"pullgate"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(397 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	return writePair(certFile, keyFile, der, key)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

// writePair writes a certificate and its key, each atomically (temp file and rename), the key first.
func writePair(certFile, keyFile string, der []byte, key *ecdsa.PrivateKey) error {
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := writeAtomic(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return err
	}
	return writeAtomic(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
