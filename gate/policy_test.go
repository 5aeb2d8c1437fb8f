package gate

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParsePolicy(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		wantErr string
		check   func(t *testing.T, p *Policy)
	}{
		{name: "empty file: the defaults", yaml: "", check: func(t *testing.T, p *Policy) {
			r := p.Default
			if r.Severity != SeverityCritical || r.Unscanned != Block || r.ScanFailed != Block || p.Wait != 30*time.Second || p.RescanAfter != 24*time.Hour {
				t.Fatalf("defaults: %+v wait %v rescan %v", r, p.Wait, p.RescanAfter)
			}
		}},
		{name: "rules inherit and override", yaml: `
severity: high
wait: 5s
rescan_after: 7d
allowlist: [{id: CVE-1}]
rules:
- match: ["registry.k8s.io/**"]
  severity: Critical
  unscanned: allow
  allowlist: [{id: CVE-2, expires: 2027-01-31}]
- match: ["docker.io/library/*"]
  scan_failed: allow
`, check: func(t *testing.T, p *Policy) {
			if p.Wait != 5*time.Second || p.RescanAfter != 7*24*time.Hour {
				t.Fatalf("wait %v rescan %v", p.Wait, p.RescanAfter)
			}
			k8s := p.Rule("registry.k8s.io/pause")
			if k8s.Severity != SeverityCritical || k8s.Unscanned != Allow || k8s.ScanFailed != Block || len(k8s.allow) != 2 {
				t.Fatalf("registry.k8s.io rule: %+v", k8s)
			}
			if !k8s.allow[1].expires.Equal(time.Date(2027, 1, 31, 0, 0, 0, 0, time.UTC)) {
				t.Fatalf("a date expiry is its midnight UTC: %v", k8s.allow[1].expires)
			}
			hub := p.Rule("docker.io/library/nginx")
			if hub.Severity != SeverityHigh || hub.ScanFailed != Allow || hub.Unscanned != Block {
				t.Fatalf("docker.io rule: %+v", hub)
			}
			if p.Rule("docker.io/bitnami/redis") != p.Default || p.Default.Severity != SeverityHigh {
				t.Fatal("a repository no rule matches gets the default")
			}
		}},
		{name: "severity none asks for no scan", yaml: "severity: None\n", check: func(t *testing.T, p *Policy) {
			if p.NeedsScanner() {
				t.Fatal("NeedsScanner with severity None everywhere")
			}
		}},
		{name: "unknown field", yaml: "severty: High\n", wantErr: "severty"},
		{name: "bad severity", yaml: "severity: Severe\n", wantErr: "unknown severity"},
		{name: "bad action", yaml: "unscanned: maybe\n", wantErr: "neither block nor allow"},
		{name: "rule without patterns", yaml: "rules: [{severity: Low}]\n", wantErr: "match needs at least one pattern"},
		{name: "bad pattern", yaml: "rules: [{match: [\"a b\"]}]\n", wantErr: "invalid pattern"},
		{name: "top-level match", yaml: "match: [\"**\"]\n", wantErr: "only rules have patterns"},
		{name: "unknown key", yaml: "signed_by: [release]\n", wantErr: `no key named "release"`},
		{name: "bad duration", yaml: "wait: soon\n", wantErr: "invalid duration"},
		{name: "wait too long", yaml: "wait: 1h\n", wantErr: "longer than 10m"},
		{name: "rescan too often", yaml: "rescan_after: 1s\n", wantErr: "shorter than a minute"},
		{name: "bad expiry", yaml: "allowlist: [{id: CVE-1, expires: tomorrow}]\n", wantErr: "neither RFC 3339"},
		{name: "allowlist entry without id", yaml: "allowlist: [{reason: x}]\n", wantErr: "id is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParsePolicy([]byte(tt.yaml), t.TempDir())
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, p)
		})
	}
}

func TestPolicyErrorNamesTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte("severity: Sometimes\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Options{PolicyFile: path, Store: &memStore{m: map[string][]byte{}}}); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("New's error %v does not name the policy file", err)
	}
}

func TestJudge(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	p, err := ParsePolicy([]byte(`
severity: High
allowlist:
- {id: CVE-ALLOWED}
- {id: CVE-EXPIRED, expires: "2026-11-01T00:00:00Z"}
- {id: CVE-LATER, expires: "2027-01-01"}
rules:
- match: ["registry.k8s.io/**"]
  severity: Critical
`), "")
	if err != nil {
		t.Fatal(err)
	}
	f := func(id string, s Severity, fix string) Finding {
		return Finding{ID: id, Severity: s, Package: "openssl", Version: "3.0.1", FixVersion: fix}
	}
	tests := []struct {
		name     string
		repo     string
		findings []Finding
		want     Verdict
		contains []string
		absent   []string
	}{
		{name: "nothing found", repo: "docker.io/library/nginx", want: VerdictPass},
		{name: "below the threshold", repo: "docker.io/library/nginx", findings: []Finding{f("CVE-M", SeverityMedium, "")}, want: VerdictPass},
		{name: "at the threshold", repo: "docker.io/library/nginx", findings: []Finding{f("CVE-H", SeverityHigh, "3.0.2")}, want: VerdictBlocked,
			contains: []string{"sha256:abc", "rule default", "1 High", "CVE-H (High, openssl 3.0.1, fixed in 3.0.2)"}},
		{name: "allowlisted", repo: "docker.io/library/nginx", findings: []Finding{f("CVE-ALLOWED", SeverityCritical, "")}, want: VerdictPass},
		{name: "allowlist entry not yet expired", repo: "docker.io/library/nginx", findings: []Finding{f("CVE-LATER", SeverityCritical, "")}, want: VerdictPass},
		{name: "expired allowlist entry counts again", repo: "docker.io/library/nginx", findings: []Finding{f("CVE-EXPIRED", SeverityCritical, "")}, want: VerdictBlocked,
			contains: []string{"CVE-EXPIRED (Critical, openssl 3.0.1, no fix yet)"}},
		{name: "a rule's own threshold", repo: "registry.k8s.io/pause", findings: []Finding{f("CVE-H", SeverityHigh, "")}, want: VerdictPass},
		{name: "counts and five names, worst first", repo: "docker.io/library/nginx", findings: []Finding{
			f("CVE-7", SeverityHigh, ""), f("CVE-6", SeverityHigh, ""), f("CVE-5", SeverityHigh, ""), f("CVE-4", SeverityHigh, ""),
			f("CVE-3", SeverityHigh, ""), f("CVE-2", SeverityCritical, ""), f("CVE-1", SeverityLow, ""),
		}, want: VerdictBlocked, contains: []string{"1 Critical, 5 High", "CVE-2 (Critical", "CVE-6 (High", "and 1 more"},
			absent: []string{"CVE-7", "CVE-1 "}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &Record{Digest: "sha256:abc", Findings: tt.findings, Scanner: ScannerInfo{Name: "Trivy", Version: "0.50"}, ScannedAt: now}
			d := judge(p.Rule(tt.repo), rec, tt.repo+"@sha256:abc", now)
			if d.Verdict != tt.want {
				t.Fatalf("verdict %s, want %s (%s)", d.Verdict, tt.want, d.Message)
			}
			for _, s := range tt.contains {
				if !strings.Contains(d.Message, s) {
					t.Errorf("message %q lacks %q", d.Message, s)
				}
			}
			for _, s := range tt.absent {
				if strings.Contains(d.Message, s) {
					t.Errorf("message %q names %q", d.Message, s)
				}
			}
		})
	}
}

func TestRunnable(t *testing.T) {
	tests := []struct {
		name, mediaType, body string
		want                  bool
	}{
		{"image", "application/vnd.oci.image.manifest.v1+json", `{"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip"}]}`, true},
		{"docker image", "application/vnd.docker.distribution.manifest.v2+json", `{"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip"}]}`, true},
		{"index", "application/vnd.oci.image.index.v1+json", `{"manifests":[]}`, false},
		{"cosign signature", "application/vnd.oci.image.manifest.v1+json", `{"layers":[{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json"}]}`, false},
		{"schema 1", "application/vnd.docker.distribution.manifest.v1+prettyjws", `{}`, true},
		{"unreadable is gated", "application/vnd.oci.image.manifest.v1+json", `{`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Runnable(tt.mediaType, []byte(tt.body)); got != tt.want {
				t.Fatalf("Runnable = %v, want %v", got, tt.want)
			}
		})
	}
}
