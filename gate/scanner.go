package gate

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// Severity is how bad a finding is, in the order of the Harbor pluggable scanner API: Unknown < Negligible <
// Low < Medium < High < Critical. None sorts below all of them and is only used as a policy threshold
// ("block nothing on severity").
type Severity int

// The severities, lowest first.
const (
	SeverityNone Severity = iota
	SeverityUnknown
	SeverityNegligible
	SeverityLow
	SeverityMedium
	SeverityHigh
	SeverityCritical
)

var severityNames = [...]string{"None", "Unknown", "Negligible", "Low", "Medium", "High", "Critical"}

// String returns the severity as the scanner API spells it ("High").
func (s Severity) String() string {
	if s < 0 || int(s) >= len(severityNames) {
		return fmt.Sprintf("Severity(%d)", int(s))
	}
	return severityNames[s]
}

// ParseSeverity reads a severity name, in any letter case. An empty string is an error.
func ParseSeverity(s string) (Severity, error) {
	for i, n := range severityNames {
		if strings.EqualFold(s, n) {
			return Severity(i), nil
		}
	}
	return 0, fmt.Errorf("unknown severity %q (one of %s)", s, strings.Join(severityNames[:], ", "))
}

// MarshalText writes the name.
func (s Severity) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads a name with ParseSeverity.
func (s *Severity) UnmarshalText(b []byte) error {
	v, err := ParseSeverity(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// ScanRequest asks a scanner to scan one artifact. The scanner pulls it from RegistryURL (pullgate itself)
// with Authorization, as the Harbor pluggable scanner API's scan request says.
type ScanRequest struct {
	// RegistryURL is where the scanner pulls from: "https://pullgate.example.com:5000".
	RegistryURL string
	// Authorization is the full Authorization header value the scanner pulls with: "Bearer <token>".
	Authorization string
	// Repository is the repository as addressed at RegistryURL: "docker.io/library/nginx".
	Repository string
	// Digest is the manifest's digest: "sha256:…".
	Digest string
	// Tag is the tag the manifest was first pulled by, when there was one; informative only.
	Tag string
	// MediaType is the manifest's media type.
	MediaType string
}

// ScannerInfo names a scanner, as its reports and metadata do.
type ScannerInfo struct {
	Name    string `json:"name"`
	Vendor  string `json:"vendor"`
	Version string `json:"version"`
}

// String returns "Name Version".
func (s ScannerInfo) String() string { return strings.TrimSpace(s.Name + " " + s.Version) }

// Finding is one vulnerability a scanner found.
type Finding struct {
	ID         string   `json:"id"`
	Severity   Severity `json:"severity"`
	Package    string   `json:"package,omitempty"`
	Version    string   `json:"version,omitempty"`
	FixVersion string   `json:"fix_version,omitempty"`
}

// Report is what a scanner found in one artifact.
type Report struct {
	Scanner     ScannerInfo
	GeneratedAt time.Time
	Findings    []Finding
}

// Scanner scans artifacts. Scan blocks until the report is ready, the scan failed, or ctx is done; an
// implementation bounds every answer it reads. *Harbor and *Webhook are the implementations.
type Scanner interface {
	Scan(ctx context.Context, r ScanRequest) (Report, error)
}

// MaxFindings is the most findings a report may hold; a scanner that sends more fails the scan, so that a
// verdict's size is bounded.
const MaxFindings = 50_000
