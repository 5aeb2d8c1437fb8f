package certs

import (
	"bytes"
	"crypto/x509"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func TestEnsureLocalReusesAndCovers(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l1, err := EnsureLocal(dir, []string{"pullgate.example.com"}, now)
	if err != nil {
		t.Fatal(err)
	}
	ca1, _ := os.ReadFile(l1.CAFile)
	leaf1, _ := os.ReadFile(l1.CertFile)

	l2, err := EnsureLocal(dir, []string{"pullgate.example.com"}, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	ca2, _ := os.ReadFile(l2.CAFile)
	leaf2, _ := os.ReadFile(l2.CertFile)
	if !bytes.Equal(ca1, ca2) || !bytes.Equal(leaf1, leaf2) {
		t.Fatal("a second start replaced a valid CA or certificate")
	}

	// A new host name renews the serving certificate under the same CA.
	l3, err := EnsureLocal(dir, []string{"pullgate.example.com", "10.1.2.3"}, now.Add(2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	ca3, _ := os.ReadFile(l3.CAFile)
	if !bytes.Equal(ca1, ca3) {
		t.Fatal("the CA changed when only the host list did")
	}
	leaf, _, err := loadPair(l3.CertFile, l3.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	ca, _, _ := loadPair(l3.CAFile, filepath.Join(dir, "ca.key"))
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	for _, h := range []string{"localhost", "127.0.0.1", "::1", "pullgate.example.com", "10.1.2.3"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: h, Roots: pool, CurrentTime: now.Add(3 * time.Hour)}); err != nil {
			t.Errorf("certificate does not verify for %s: %v", h, err)
		}
	}
	// Near expiry, the serving certificate is renewed.
	if _, err := EnsureLocal(dir, []string{"pullgate.example.com", "10.1.2.3"}, leaf.NotAfter.Add(-24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	renewed, _, _ := loadPair(l3.CertFile, l3.KeyFile)
	if !renewed.NotAfter.After(leaf.NotAfter) {
		t.Fatal("a certificate about to expire was not renewed")
	}
}

func TestReloaderPicksUpRotation(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	la, err := EnsureLocal(a, nil, now)
	if err != nil {
		t.Fatal(err)
	}
	lb, err := EnsureLocal(b, nil, now)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	clock := now
	var reloads []error
	r, err := NewReloader(la.CertFile, la.KeyFile, func() time.Time { mu.Lock(); defer mu.Unlock(); return clock },
		func(err error) { reloads = append(reloads, err) })
	if err != nil {
		t.Fatal(err)
	}
	first, _ := r.GetCertificate(nil)

	// Rotate: copy b's pair over a's files (a different size or mtime marks the change).
	for src, dst := range map[string]string{lb.CertFile: la.CertFile, lb.KeyFile: la.KeyFile} {
		data, _ := os.ReadFile(src)
		if err := os.WriteFile(dst, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(dst, now.Add(time.Minute), now.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	clock = clock.Add(2 * time.Second)
	mu.Unlock()
	second, _ := r.GetCertificate(nil)
	if bytes.Equal(first.Certificate[0], second.Certificate[0]) {
		t.Fatal("rotated certificate was not picked up")
	}
	// A broken rotation keeps the last good pair.
	if err := os.WriteFile(la.CertFile, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	clock = clock.Add(2 * time.Second)
	mu.Unlock()
	third, err := r.GetCertificate(nil)
	if err != nil || !bytes.Equal(third.Certificate[0], second.Certificate[0]) {
		t.Fatalf("a half-written rotation replaced the good certificate (%v)", err)
	}
	// Each reload is reported once: the good one with nil, the broken one with its error, and the broken
	// files are not reported again every second.
	mu.Lock()
	clock = clock.Add(2 * time.Second)
	mu.Unlock()
	_, _ = r.GetCertificate(nil)
	if len(reloads) != 2 || reloads[0] != nil || reloads[1] == nil {
		t.Fatalf("reload reports %v, want [nil, <error>]", reloads)
	}
}
