package e2e

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// GateOptions says how a pullgate gates the manifests it serves: the values of PULLGATE_GATE_POLICY and the
// PULLGATE_SCANNER_* and PULLGATE_SCAN_* variables. Env turns them into PullgateOptions.Env entries.
type GateOptions struct {
	// PolicyFile is PULLGATE_GATE_POLICY, the policy's path; required.
	PolicyFile string
	// ScannerURL is PULLGATE_SCANNER_URL; empty means no scanner.
	ScannerURL string
	// ScannerAPI is PULLGATE_SCANNER_API ("harbor" or "webhook"); empty means pullgate's default, harbor.
	ScannerAPI string
	// ScannerCAFile is PULLGATE_SCANNER_CA_FILE, the CA pullgate trusts for ScannerURL; empty means the
	// system's.
	ScannerCAFile string
	// RegistryURL is PULLGATE_SCANNER_REGISTRY_URL, where the scanner reaches pullgate; empty means pullgate's
	// default (https://localhost:<port>, which the loopback certificates cover).
	RegistryURL string
	// ScanTimeout is PULLGATE_SCAN_TIMEOUT; zero means pullgate's default.
	ScanTimeout time.Duration
	// ScanConcurrency is PULLGATE_SCAN_CONCURRENCY; zero means pullgate's default.
	ScanConcurrency int
}

// Env returns the settings as PULLGATE_* environment entries, leaving out what is zero.
func (o GateOptions) Env() []string {
	env := []string{"PULLGATE_GATE_POLICY=" + o.PolicyFile}
	add := func(name, v string) {
		if v != "" {
			env = append(env, "PULLGATE_"+name+"="+v)
		}
	}
	add("SCANNER_URL", o.ScannerURL)
	add("SCANNER_API", o.ScannerAPI)
	add("SCANNER_CA_FILE", o.ScannerCAFile)
	add("SCANNER_REGISTRY_URL", o.RegistryURL)
	if o.ScanTimeout > 0 {
		add("SCAN_TIMEOUT", o.ScanTimeout.String())
	}
	if o.ScanConcurrency > 0 {
		add("SCAN_CONCURRENCY", strconv.Itoa(o.ScanConcurrency))
	}
	return env
}

// WritePolicy writes a gate policy file whole: to a temporary file in the same directory, then renamed over
// file, so that a pullgate that reads it again at any moment sees the old policy or the new one, never a part.
func WritePolicy(file, policy string) error {
	tmp, err := os.CreateTemp(filepath.Dir(file), ".policy-*")
	if err != nil {
		return err
	}
	_, err = tmp.WriteString(policy)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), file)
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
	}
	return err
}

// WriteCertFile writes certs to file as PEM, for a variable that names a CA file (PULLGATE_SCANNER_CA_FILE for
// a test server's self-signed certificate).
func WriteCertFile(file string, certs ...*x509.Certificate) error {
	if len(certs) == 0 {
		return errors.New("WriteCertFile: no certificate")
	}
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return os.WriteFile(file, b, 0o644)
}

// GateLine is one line of pullgate's pull log with what the gate decided: the fields the gate tests read.
type GateLine struct {
	Method     string `json:"method"`
	Path       string `json:"path"`
	Repository string `json:"repository"`
	Digest     string `json:"digest"`
	Auth       string `json:"auth"`
	Status     int    `json:"status"`
	ErrorCode  string `json:"error_code"`
	Error      string `json:"error"`
	UserAgent  string `json:"user_agent"`
	// Gate is the gate's verdict ("pass", "blocked", "pending", "unscanned", "bypass", "exempt"); empty
	// for a request the gate did not see (a blob, a manifest that failed before).
	Gate string `json:"gate"`
}

// GateLines parses the pull log written so far into GateLines, the manifest requests only.
func (p *Pullgate) GateLines() []GateLine {
	var out []GateLine
	for _, l := range p.PullLog() {
		var gl GateLine
		if json.Unmarshal([]byte(l), &gl) == nil && strings.Contains(gl.Path, "/manifests/") {
			out = append(out, gl)
		}
	}
	return out
}
