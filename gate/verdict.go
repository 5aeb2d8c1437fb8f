package gate

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Store keeps verdicts by manifest digest. The cache's index is the implementation (wired in cmd).
type Store interface {
	// Verdict returns the stored record of digest, or an error wrapping ErrNotFound.
	Verdict(digest string) ([]byte, error)
	// SetVerdict stores the record of digest, replacing the one before.
	SetVerdict(digest string, record []byte) error
}

// Record is a stored verdict: what a scanner found in one manifest, and when. It is judged under the policy
// in force at every use, so that a policy change needs no rescan.
type Record struct {
	Digest string `json:"digest"`
	// Upstream and Repository are where it was last scanned from; a background rescan pulls it from there.
	Upstream   string      `json:"upstream"`
	Repository string      `json:"repository"`
	Tag        string      `json:"tag,omitempty"`
	MediaType  string      `json:"media_type,omitempty"`
	Scanner    ScannerInfo `json:"scanner"`
	ScannedAt  time.Time   `json:"scanned_at"`
	Findings   []Finding   `json:"findings,omitempty"`
}

// DecodeRecord reads a stored record.
func DecodeRecord(b []byte) (*Record, error) {
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("stored verdict: %w", err)
	}
	return &r, nil
}

// Counts returns how many findings there are of each severity, highest first, as "2 Critical, 5 High".
func Counts(fs []Finding) string {
	var n [len(severityNames)]int
	for _, f := range fs {
		if f.Severity >= 0 && int(f.Severity) < len(n) {
			n[f.Severity]++
		}
	}
	var parts []string
	for s := SeverityCritical; s > SeverityNone; s-- {
		if n[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n[s], s))
		}
	}
	if len(parts) == 0 {
		return "no findings"
	}
	return strings.Join(parts, ", ")
}

// Verdict is what the gate decided about one request, as the pull log and the metrics name it.
type Verdict string

// The verdicts.
const (
	// VerdictPass: the manifest passed (a verdict within the policy, and a signature where one is asked for).
	VerdictPass Verdict = "pass"
	// VerdictBlocked: refused, 412 with the reason.
	VerdictBlocked Verdict = "blocked"
	// VerdictPending: no verdict yet and the policy does not serve unscanned images: 503 with Retry-After.
	VerdictPending Verdict = "pending"
	// VerdictUnscanned: served without a verdict because the policy lets unscanned or scan-failed images pass.
	VerdictUnscanned Verdict = "unscanned"
	// VerdictBypass: the scanner's own pull of the artifact it scans.
	VerdictBypass Verdict = "bypass"
	// VerdictExempt: not gated: an index (each platform manifest is gated when it is pulled) or an artifact
	// that nothing runs (a signature, an SBOM, a chart).
	VerdictExempt Verdict = "exempt"
)

// Decision is the gate's answer for one manifest.
type Decision struct {
	Verdict Verdict
	// Message is what the client is told when it is refused (Blocked, Pending), and a note otherwise.
	Message string
	// RetryAfter is, for Pending, when to ask again.
	RetryAfter time.Duration
	// Rule names the policy rule that decided.
	Rule string
}

// Allowed reports whether the manifest may be served.
func (d Decision) Allowed() bool { return d.Verdict != VerdictBlocked && d.Verdict != VerdictPending }

// maxNamedFindings is how many findings a refusal names.
const maxNamedFindings = 5

// judge decides on rec under rule at now: pass, or blocked naming the digest, the rule, the counts by
// severity and up to five findings with their fixed versions.
func judge(rule *CompiledRule, rec *Record, ref string, now time.Time) Decision {
	var blocking []Finding
	for _, f := range rec.Findings {
		if f.Severity >= rule.Severity && !rule.allowed(f.ID, now) {
			blocking = append(blocking, f)
		}
	}
	if len(blocking) == 0 {
		return Decision{Verdict: VerdictPass, Rule: rule.Name}
	}
	slices.SortStableFunc(blocking, func(a, b Finding) int {
		return cmp.Or(cmp.Compare(b.Severity, a.Severity), cmp.Compare(a.ID, b.ID))
	})
	var named []string
	for _, f := range blocking[:min(len(blocking), maxNamedFindings)] {
		s := f.ID + " (" + f.Severity.String()
		if f.Package != "" {
			s += ", " + f.Package + " " + f.Version
		}
		if f.FixVersion != "" {
			s += ", fixed in " + f.FixVersion
		} else {
			s += ", no fix yet"
		}
		named = append(named, s+")")
	}
	more := ""
	if len(blocking) > maxNamedFindings {
		more = fmt.Sprintf(" and %d more", len(blocking)-maxNamedFindings)
	}
	return Decision{Verdict: VerdictBlocked, Rule: rule.Name, Message: fmt.Sprintf(
		"blocked by pullgate policy (rule %s: %s or higher is not served): %s has %s: %s%s (scanned by %s at %s)",
		rule.Name, rule.Severity, ref, Counts(blocking), strings.Join(named, ", "), more,
		cmp.Or(rec.Scanner.String(), "the scanner"), rec.ScannedAt.UTC().Format(time.RFC3339))}
}
