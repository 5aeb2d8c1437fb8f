package gate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/pullgate/pullgate/names"
)

// PolicyFile is the gate policy as written (YAML). Top-level fields are the defaults; each rule overrides what
// it sets for the repositories its patterns match (the first matching rule wins). Unknown fields are errors.
type PolicyFile struct {
	Rule
	// Wait is how long a pull waits for a verdict that is not there yet; then it is answered 503 with
	// Retry-After. Default 30s.
	Wait Duration `json:"wait,omitempty"`
	// RescanAfter is the age after which a verdict is refreshed in the background (the last one keeps
	// answering meanwhile). Default 24h.
	RescanAfter Duration `json:"rescan_after,omitempty"`
	// Keys are the public keys signatures are checked with, by name: PEM text, or the path of a PEM file
	// (relative to the policy file's directory).
	Keys map[string]string `json:"keys,omitempty"`
	// Rules are per-pattern overrides, in order.
	Rules []Rule `json:"rules,omitempty"`
}

// Rule is what the gate asks of a set of repositories. Zero fields take the top level's values.
type Rule struct {
	// Match holds patterns over "<upstream>/<repository>" (names.Pattern globs). Only rules have it.
	Match []string `json:"match,omitempty"`
	// Severity blocks an image with a finding of this severity or higher that no allowlist entry covers;
	// "None" blocks nothing on findings and asks for no scan. Default Critical.
	Severity string `json:"severity,omitempty"`
	// Unscanned is what an image without a verdict gets once its wait is over: "block" (default) or "allow".
	Unscanned string `json:"unscanned,omitempty"`
	// ScanFailed is what an image gets whose scan failed: "block" (default) or "allow".
	ScanFailed string `json:"scan_failed,omitempty"`
	// Allowlist holds findings that do not count. A rule's entries count in addition to the top level's.
	Allowlist []AllowEntry `json:"allowlist,omitempty"`
	// SignedBy names keys (of Keys); when set, an image is served only with a valid signature by one of them.
	SignedBy []string `json:"signed_by,omitempty"`
}

// AllowEntry is one allowlisted vulnerability.
type AllowEntry struct {
	ID string `json:"id"`
	// Expires is when the entry stops counting (RFC 3339 or a date, 2027-01-31, meaning its midnight UTC);
	// empty means never.
	Expires string `json:"expires,omitempty"`
	// Reason is for people; pullgate does not read it.
	Reason string `json:"reason,omitempty"`
}

// Duration is a time.Duration written as "30s", "24h" or "7d".
type Duration time.Duration

// UnmarshalJSON reads a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("a duration is a string such as \"30s\" or \"24h\"")
	}
	v, err := parseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

func parseDuration(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		var n int
		if _, err := fmt.Sscanf(days, "%d", &n); err == nil && fmt.Sprint(n) == days && n >= 0 && n < 100_000 {
			return time.Duration(n) * 24 * time.Hour, nil
		}
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("invalid duration %q (for example 30s, 10m, 24h, 7d)", s)
	}
	return v, nil
}

// Action is what an image without a usable verdict gets.
type Action bool

// The actions.
const (
	Block Action = false
	Allow Action = true
)

func (a Action) String() string {
	if a == Allow {
		return "allow"
	}
	return "block"
}

// Policy is a parsed, checked policy file.
type Policy struct {
	Wait        time.Duration
	RescanAfter time.Duration
	// Default applies where no rule matches.
	Default *CompiledRule
	Rules   []*CompiledRule
	// keys by name, and the digest of the whole file (a policy's identity in memos).
	keys map[string]PublicKey
}

// CompiledRule is a Rule with the top level's values filled in.
type CompiledRule struct {
	// Name says which rule it is in messages: "default" or its first pattern.
	Name       string
	match      []names.Pattern
	Severity   Severity
	Unscanned  Action
	ScanFailed Action
	allow      []allowEntry
	SignedBy   []string
	keys       []PublicKey
}

type allowEntry struct {
	id      string
	expires time.Time // zero: never
}

// NeedsScan reports whether the rule asks for a vulnerability verdict.
func (r *CompiledRule) NeedsScan() bool { return r.Severity != SeverityNone }

// allowed reports whether finding id is allowlisted at now.
func (r *CompiledRule) allowed(id string, now time.Time) bool {
	for _, e := range r.allow {
		if e.id == id && (e.expires.IsZero() || now.Before(e.expires)) {
			return true
		}
	}
	return false
}

// Rule returns the rule for "<upstream>/<repository>" name: the first rule with a matching pattern, else the
// default.
func (p *Policy) Rule(name string) *CompiledRule {
	for _, r := range p.Rules {
		if names.MatchAny(r.match, name) {
			return r
		}
	}
	return p.Default
}

// NeedsScanner reports whether any rule asks for vulnerability verdicts.
func (p *Policy) NeedsScanner() bool {
	if p.Default.NeedsScan() {
		return true
	}
	return slices.ContainsFunc(p.Rules, (*CompiledRule).NeedsScan)
}

// ParsePolicy reads a policy file. dir is where relative key paths are found.
func ParsePolicy(data []byte, dir string) (*Policy, error) {
	var f PolicyFile
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, err
	}
	return f.compile(dir)
}

func (f *PolicyFile) compile(dir string) (*Policy, error) {
	p := &Policy{Wait: 30 * time.Second, RescanAfter: 24 * time.Hour, keys: map[string]PublicKey{}}
	if f.Wait != 0 {
		p.Wait = time.Duration(f.Wait)
	}
	if f.RescanAfter != 0 {
		p.RescanAfter = time.Duration(f.RescanAfter)
	}
	if p.RescanAfter < time.Minute {
		return nil, fmt.Errorf("rescan_after %v is shorter than a minute", p.RescanAfter)
	}
	if p.Wait > 10*time.Minute {
		return nil, fmt.Errorf("wait %v is longer than 10m: clients give up long before", p.Wait)
	}
	for name, v := range f.Keys {
		if name == "" {
			return nil, errors.New("keys: a key needs a name")
		}
		pemBytes := []byte(v)
		if !bytes.HasPrefix(bytes.TrimSpace(pemBytes), []byte("-----BEGIN")) {
			path := v
			if !filepath.IsAbs(path) {
				path = filepath.Join(dir, path)
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return nil, fmt.Errorf("key %s: %w", name, err)
			}
			pemBytes = b
		}
		k, err := ParsePublicKey(name, pemBytes)
		if err != nil {
			return nil, fmt.Errorf("key %s: %w", name, err)
		}
		p.keys[name] = k
	}
	if len(f.Match) > 0 {
		return nil, errors.New("match: only rules have patterns; the top level applies where no rule matches")
	}
	base := &CompiledRule{Name: "default", Severity: SeverityCritical, Unscanned: Block, ScanFailed: Block}
	def, err := p.compileRule(f.Rule, base, "default")
	if err != nil {
		return nil, err
	}
	p.Default = def
	for i, r := range f.Rules {
		if len(r.Match) == 0 {
			return nil, fmt.Errorf("rules[%d]: match needs at least one pattern", i)
		}
		cr, err := p.compileRule(r, def, r.Match[0])
		if err != nil {
			return nil, fmt.Errorf("rules[%d] (%s): %w", i, r.Match[0], err)
		}
		if cr.match, err = names.CompilePatterns(r.Match); err != nil {
			return nil, fmt.Errorf("rules[%d]: %w", i, err)
		}
		p.Rules = append(p.Rules, cr)
	}
	return p, nil
}

// compileRule fills r's zero fields from base.
func (p *Policy) compileRule(r Rule, base *CompiledRule, name string) (*CompiledRule, error) {
	c := &CompiledRule{Name: name, Severity: base.Severity, Unscanned: base.Unscanned, ScanFailed: base.ScanFailed,
		allow: slices.Clone(base.allow), SignedBy: base.SignedBy, keys: base.keys}
	var err error
	if r.Severity != "" {
		if c.Severity, err = ParseSeverity(r.Severity); err != nil {
			return nil, fmt.Errorf("severity: %w", err)
		}
	}
	if c.Unscanned, err = parseAction("unscanned", r.Unscanned, c.Unscanned); err != nil {
		return nil, err
	}
	if c.ScanFailed, err = parseAction("scan_failed", r.ScanFailed, c.ScanFailed); err != nil {
		return nil, err
	}
	for i, e := range r.Allowlist {
		if strings.TrimSpace(e.ID) == "" {
			return nil, fmt.Errorf("allowlist[%d]: id is required", i)
		}
		ae := allowEntry{id: e.ID}
		if e.Expires != "" {
			if ae.expires, err = parseExpiry(e.Expires); err != nil {
				return nil, fmt.Errorf("allowlist[%d] (%s): %w", i, e.ID, err)
			}
		}
		c.allow = append(c.allow, ae)
	}
	if r.SignedBy != nil {
		c.SignedBy, c.keys = nil, nil
		for _, n := range r.SignedBy {
			k, ok := p.keys[n]
			if !ok {
				return nil, fmt.Errorf("signed_by: no key named %q under keys", n)
			}
			c.SignedBy = append(c.SignedBy, n)
			c.keys = append(c.keys, k)
		}
	}
	return c, nil
}

func parseAction(field, s string, def Action) (Action, error) {
	switch strings.ToLower(s) {
	case "":
		return def, nil
	case "block":
		return Block, nil
	case "allow":
		return Allow, nil
	}
	return Block, fmt.Errorf("%s: %q is neither block nor allow", field, s)
}

// parseExpiry reads RFC 3339 or a date (its midnight UTC).
func parseExpiry(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("expires %q is neither RFC 3339 (2027-01-31T00:00:00Z) nor a date (2027-01-31)", s)
}
