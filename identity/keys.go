package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Key files are named "<UTC time>-<kid>.pem", the time in keyTimeLayout: fixed width, so that the names sort
// as the times do and the newest key is the last name.
const (
	keyTimeLayout = "20060102T150405.000000000Z"
	keyKIDLength  = 43 // base64url, unpadded, of a SHA-256 thumbprint
	keyFileSuffix = ".pem"
	keyPEMType    = "PRIVATE KEY"
	keyTempPrefix = ".pullgate-key-"
	maxKeyFile    = 16 << 10
	keyDirMode    = 0o700
)

// signingKey is one key of a Signer's set.
type signingKey struct {
	kid    string
	file   string
	pub    *ecdsa.PublicKey
	signer jose.Signer
}

// keySet is the keys found in a key directory at one time. It is never changed once made; a reload makes a
// new one.
type keySet struct {
	newestFirst []*signingKey
	byKID       map[string]*signingKey
}

// keyFileName is the name of the file that holds the key kid made at t.
func keyFileName(t time.Time, kid string) string {
	return t.UTC().Format(keyTimeLayout) + "-" + kid + keyFileSuffix
}

// parseKeyFileName splits a key file's name into its time and kid; ok is false for any other file.
func parseKeyFileName(name string) (t time.Time, kid string, ok bool) {
	rest, found := strings.CutSuffix(name, keyFileSuffix)
	if !found || len(rest) != len(keyTimeLayout)+1+keyKIDLength || rest[len(keyTimeLayout)] != '-' {
		return time.Time{}, "", false
	}
	t, err := time.Parse(keyTimeLayout, rest[:len(keyTimeLayout)])
	if err != nil {
		return time.Time{}, "", false
	}
	kid = rest[len(keyTimeLayout)+1:]
	for _, c := range kid {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return time.Time{}, "", false
		}
	}
	return t, kid, true
}

// keyID is the RFC 7638 JWK thumbprint (SHA-256, base64url) of pub.
func keyID(pub *ecdsa.PublicKey) (string, error) {
	jwk := jose.JSONWebKey{Key: pub}
	sum, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(sum), nil
}

// listKeyFiles returns the names of the key files in dir, newest first. Other files are left out.
func listKeyFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var keys []string
	for _, e := range entries {
		if _, _, ok := parseKeyFileName(e.Name()); ok {
			keys = append(keys, e.Name())
		}
	}
	slices.Sort(keys)
	slices.Reverse(keys)
	return keys, nil
}

// dirStamp describes the key files in dir by name, size and modification time, so that a change to any of
// them, a new one or a removed one changes the stamp. It follows symbolic links (a Kubernetes Secret's files
// are links whose targets change).
func dirStamp(dir string) (string, error) {
	keys, err := listKeyFiles(dir)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, name := range keys {
		fi, err := os.Stat(filepath.Join(dir, name))
		if errors.Is(err, os.ErrNotExist) {
			continue // removed by a rotation since the listing
		}
		if err != nil {
			return "", err
		}
		b.WriteString(name)
		b.WriteByte(0)
		b.WriteString(strconv.FormatInt(fi.Size(), 10))
		b.WriteByte(0)
		b.WriteString(strconv.FormatInt(fi.ModTime().UnixNano(), 10))
		b.WriteByte('\n')
	}
	return b.String(), nil
}

// loadKeys reads every key file in dir. Any key file that cannot be used is an error naming it (one removed
// since the listing is left out); a directory without key files gives an empty set.
func loadKeys(dir string) (*keySet, error) {
	names, err := listKeyFiles(dir)
	if err != nil {
		return nil, fmt.Errorf("key directory %s: %w", dir, err)
	}
	set := &keySet{byKID: make(map[string]*signingKey, len(names))}
	for _, name := range names {
		k, err := loadKeyFile(filepath.Join(dir, name))
		if errors.Is(err, os.ErrNotExist) {
			continue // removed by a rotation since the listing: not a key any more, not an error
		}
		if err != nil {
			return nil, err
		}
		if _, dup := set.byKID[k.kid]; dup {
			continue // the same key under an older name: the newer name already holds it
		}
		set.byKID[k.kid] = k
		set.newestFirst = append(set.newestFirst, k)
	}
	return set, nil
}

// loadKeyFile reads one key file: a PEM "PRIVATE KEY" (PKCS #8) holding an ECDSA P-256 key whose kid is the
// one in the file's name.
func loadKeyFile(path string) (*signingKey, error) {
	fail := func(format string, args ...any) (*signingKey, error) {
		return nil, fmt.Errorf("key file %s: %s", path, fmt.Sprintf(format, args...))
	}
	_, nameKID, _ := parseKeyFileName(filepath.Base(path))
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, maxKeyFile+1))
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	if len(data) > maxKeyFile {
		return fail("larger than %d bytes", maxKeyFile)
	}
	block, rest := pem.Decode(data)
	if block == nil || block.Type != keyPEMType {
		return fail("not a PEM %q block", keyPEMType)
	}
	if len(strings.TrimSpace(string(rest))) != 0 {
		return fail("more than one PEM block")
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return fail("not a PKCS #8 private key")
	}
	priv, ok := parsed.(*ecdsa.PrivateKey)
	if !ok || priv.Curve != elliptic.P256() {
		return fail("not an ECDSA P-256 key (pullgate signs with ES256 only)")
	}
	kid, err := keyID(&priv.PublicKey)
	if err != nil {
		return fail("thumbprint: %v", err)
	}
	if kid != nameKID {
		return fail("the key's thumbprint is %s, not the key ID in the file's name", kid)
	}
	return newSigningKey(priv, kid, path)
}

func newSigningKey(priv *ecdsa.PrivateKey, kid, path string) (*signingKey, error) {
	signer, err := jose.NewSigner(
		jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: priv, KeyID: kid}},
		(&jose.SignerOptions{}).WithType("JWT"),
	)
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	return &signingKey{kid: kid, file: path, pub: &priv.PublicKey, signer: signer}, nil
}

// RotateKey writes a new signing key into dir and keeps only the keep newest keys (keep >= 1; the previous
// key is normally kept so that tokens it signed stay valid until they expire). It returns the new key's ID.
//
// The new key is named after now, or just after the newest key's time when that is later (a clock set back),
// so that the key written last is always the newest. A running Signer on dir sees the change within its
// reload interval. RotateKey refuses to touch a directory holding a key file it cannot read, so that a corrupt
// file never counts as a key to keep.
func RotateKey(dir string, now time.Time, keep int) (string, error) {
	if keep < 1 {
		return "", fmt.Errorf("rotate key: keep %d keys: at least the new one must be kept", keep)
	}
	if err := os.MkdirAll(dir, keyDirMode); err != nil {
		return "", fmt.Errorf("key directory %s: %w", dir, err)
	}
	if _, err := loadKeys(dir); err != nil {
		return "", fmt.Errorf("rotate key: %w", err)
	}
	name, kid, err := writeNewKey(dir, now)
	if err != nil {
		return "", err
	}
	names, err := listKeyFiles(dir)
	if err != nil {
		return "", fmt.Errorf("key directory %s: %w", dir, err)
	}
	if len(names) == 0 || names[0] != name {
		return "", fmt.Errorf("rotate key: %s is not the newest key file in %s (another rotation at the same time?)", name, dir)
	}
	var errs []error
	for _, old := range names[min(keep, len(names)):] {
		if err := os.Remove(filepath.Join(dir, old)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("rotate key: remove old key: %w", err))
		}
	}
	return kid, errors.Join(errs...)
}

// writeNewKey makes a P-256 key and writes it into dir atomically, readable by its owner only. It returns the
// file's name and the key's ID.
func writeNewKey(dir string, now time.Time) (name, kid string, err error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("new key: %w", err)
	}
	kid, err = keyID(&priv.PublicKey)
	if err != nil {
		return "", "", fmt.Errorf("new key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return "", "", fmt.Errorf("new key: %w", err)
	}
	t := now.UTC()
	existing, err := listKeyFiles(dir)
	if err != nil {
		return "", "", fmt.Errorf("key directory %s: %w", dir, err)
	}
	if len(existing) > 0 {
		newest, _, _ := parseKeyFileName(existing[0])
		if !t.After(newest) {
			t = newest.Add(time.Nanosecond)
		}
	}
	name = keyFileName(t, kid)
	if err := writeFileAtomic(dir, name, keyTempPrefix, pem.EncodeToMemory(&pem.Block{Type: keyPEMType, Bytes: der})); err != nil {
		return "", "", fmt.Errorf("write key %s: %w", filepath.Join(dir, name), err)
	}
	return name, kid, nil
}

// writeFileAtomic writes data to dir/name, readable by its owner only, through a temporary file named
// tempPrefix* that is synced and renamed into place, so that a reader sees the whole file or none, and a crash
// leaves the old file or the new one.
func writeFileAtomic(dir, name, tempPrefix string, data []byte) error {
	tmp, err := os.CreateTemp(dir, tempPrefix+"*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
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
	if err := os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // the rename survives a crash; not every file system can sync a directory
		d.Close()
	}
	return nil
}
