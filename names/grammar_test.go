package names

import (
	"errors"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

var (
	hex64  = strings.Repeat("a1", 32)
	hex128 = strings.Repeat("0f", 64)
)

func TestValidateRepository(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		valid bool
	}{
		{"one component", "nginx", true},
		{"namespace", "library/nginx", true},
		{"deep", "a/b/c/d/e", true},
		{"separators", "a.b/c_d/e__f/g-h/i--j/k---l", true},
		{"digits", "0/1x/x1", true},
		{"host name is a component", "docker.io/library/nginx", true},
		{"longest", strings.Repeat("a", MaxRepositoryLength), true},
		{"longest with slashes", strings.Repeat("ab/", 84) + "abc", true},
		{"empty", "", false},
		{"too long", strings.Repeat("a", MaxRepositoryLength+1), false},
		{"too long with slashes", strings.Repeat("ab/", 85) + "a", false},
		{"upper case", "Library/nginx", false},
		{"dot dot", "library/../nginx", false},
		{"dot dot alone", "..", false},
		{"dot", "./nginx", false},
		{"double dot separator", "a..b", false},
		{"triple underscore", "a___b", false},
		{"mixed separators", "a._b", false},
		{"leading separator", "-a", false},
		{"trailing separator", "a-", false},
		{"leading slash", "/a", false},
		{"trailing slash", "a/", false},
		{"empty component", "a//b", false},
		{"encoded slash", "a%2Fb", false},
		{"NUL", "a\x00b", false},
		{"newline", "a\nb", false},
		{"space", "a b", false},
		{"backslash", `a\b`, false},
		{"port", "localhost:5000/x", false},
		{"tag", "nginx:latest", false},
		{"fullwidth letters", "ｎｇｉｎｘ", false},
		{"cyrillic a", "ngіnx", false},
		{"kelvin sign", "\u212a8s", false},
		{"invalid UTF-8", "a\xffb", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateRepository(tt.in)
			checkValid(t, err, tt.valid, ErrNameInvalid)
		})
	}
}

func TestValidateRepositoryWithHost(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		valid bool
	}{
		{"plain", "library/nginx", true},
		{"one component", "nginx", true},
		{"host", "docker.io/library/nginx", true},
		{"alias", "hub/library/nginx", true},
		{"host and port", "localhost:5000/x", true},
		{"dotted host and port", "registry.example.com:443/team/app", true},
		{"highest port", "localhost:65535/x", true},
		{"host alone", "docker.io", true},
		{"host with port alone", "localhost:5000", false},
		{"host with port and slash", "localhost:5000/", false},
		{"port zero", "localhost:0/x", false},
		{"port out of range", "localhost:65536/x", false},
		{"port far out of range", "localhost:99999999999999999999/x", false},
		{"port with leading zero", "localhost:05000/x", false},
		{"empty port", "localhost:/x", false},
		{"negative port", "localhost:-1/x", false},
		{"port with sign", "localhost:+80/x", false},
		{"port letters", "localhost:http/x", false},
		{"two ports", "localhost:5000:6000/x", false},
		{"empty host", ":5000/x", false},
		{"upper-case host", "LocalHost:5000/x", false},
		{"host with underscore and port", "my_host:5000/x", false},
		{"ipv6", "[::1]:5000/x", false},
		{"ipv6 without port", "[::1]/x", false},
		{"port in second component", "x/localhost:5000/y", false},
		{"dot dot after host", "localhost:5000/../x", false},
		{"too long", "localhost:5000/" + strings.Repeat("a", MaxRepositoryLength), false},
		{"empty", "", false},
		{"leading slash", "/docker.io/x", false},
		{"NUL", "docker.io/x\x00", false},
		{"encoded slash", "docker.io%2Fx", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateRepositoryWithHost(tt.in)
			checkValid(t, err, tt.valid, ErrNameInvalid)
		})
	}
}

func TestValidateTag(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		valid bool
	}{
		{"latest", "latest", true},
		{"version", "1.25.3-alpine", true},
		{"upper case", "V1_RC", true},
		{"leading underscore", "_x", true},
		{"leading digit", "1", true},
		{"longest", strings.Repeat("t", MaxTagLength), true},
		{"too long", strings.Repeat("t", MaxTagLength+1), false},
		{"empty", "", false},
		{"leading dot", ".x", false},
		{"dot dot", "..", false},
		{"leading hyphen", "-x", false},
		{"slash", "a/b", false},
		{"colon", "a:b", false},
		{"at", "a@b", false},
		{"plus", "1.0+build", false},
		{"percent", "a%2Fb", false},
		{"NUL", "a\x00", false},
		{"trailing newline", "latest\n", false},
		{"space", "a b", false},
		{"unicode", "lätest", false},
		{"fullwidth", "ｌａｔｅｓｔ", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkValid(t, ValidateTag(tt.in), tt.valid, ErrTagInvalid)
		})
	}
}

func TestParseDigest(t *testing.T) {
	tests := []struct {
		name        string
		in          string
		want        v1.Hash
		unsupported bool // the error also wraps ErrDigestUnsupported
		valid       bool
	}{
		{name: "sha256", in: "sha256:" + hex64, want: v1.Hash{Algorithm: "sha256", Hex: hex64}, valid: true},
		{name: "sha512", in: "sha512:" + hex128, want: v1.Hash{Algorithm: "sha512", Hex: hex128}, valid: true},
		{name: "sha256 63 hex", in: "sha256:" + hex64[:63]},
		{name: "sha256 65 hex", in: "sha256:" + hex64 + "a"},
		{name: "sha256 with sha512 length", in: "sha256:" + hex128},
		{name: "sha512 with sha256 length", in: "sha512:" + hex64},
		{name: "upper-case hex", in: "sha256:" + strings.ToUpper(hex64)},
		{name: "non-hex", in: "sha256:" + strings.Repeat("g", 64)},
		{name: "upper-case algorithm", in: "SHA256:" + hex64},
		{name: "sha384", in: "sha384:" + strings.Repeat("ab", 48), unsupported: true},
		{name: "md5", in: "md5:" + strings.Repeat("ab", 16), unsupported: true},
		{name: "compound algorithm", in: "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8", unsupported: true},
		{name: "empty", in: ""},
		{name: "no colon", in: "sha256" + hex64},
		{name: "empty algorithm", in: ":" + hex64},
		{name: "empty hex", in: "sha256:"},
		{name: "two colons", in: "sha256:" + hex64 + ":"},
		{name: "leading separator in algorithm", in: "+sha256:" + hex64},
		{name: "NUL", in: "sha256:" + hex64[:63] + "\x00"},
		{name: "trailing newline", in: "sha256:" + hex64 + "\n"},
		{name: "percent", in: "sha256%3A" + hex64},
		{name: "fullwidth digit", in: "sha256:" + hex64[:63] + "１"},
		{name: "path", in: "sha256:../../" + hex64[:58]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseDigest(tt.in)
			checkValid(t, err, tt.valid, ErrDigestInvalid)
			if got != tt.want {
				t.Errorf("ParseDigest(%q) = %v, want %v", tt.in, got, tt.want)
			}
			if errors.Is(err, ErrDigestUnsupported) != tt.unsupported {
				t.Errorf("ParseDigest(%q): errors.Is(%v, ErrDigestUnsupported) != %v", tt.in, err, tt.unsupported)
			}
		})
	}
}

func TestIsDigest(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want bool
	}{
		{"tag", "latest", false},
		{"empty", "", false},
		{"digest", "sha256:" + hex64, true},
		{"bad digest is still a digest", "x:y", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := IsDigest(tt.in); got != tt.want {
				t.Errorf("IsDigest(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

// TestErrorsNameInputBounded holds that an error names the bad input, and repeats only a bounded part of it.
func TestErrorsNameInputBounded(t *testing.T) {
	long := strings.Repeat("X", 1<<20)
	tests := []struct {
		name string
		err  error
	}{
		{"repository", ValidateRepository("Bad/" + long)},
		{"repository with host", ValidateRepositoryWithHost("Bad:1/" + long)},
		{"tag", ValidateTag("-bad" + long)},
		{"digest", func() error { _, err := ParseDigest("bad:" + long); return err }()},
		{"reference", func() error { _, err := ParseReference("Bad/" + long); return err }()},
		{"registry", ValidateRegistry("Bad" + long)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.err == nil {
				t.Fatal("no error")
			}
			msg := tt.err.Error()
			if !strings.Contains(msg, `"Bad`) && !strings.Contains(msg, `"-bad`) && !strings.Contains(msg, `"bad`) {
				t.Errorf("error %q does not name the input", msg)
			}
			if len(msg) > 400 {
				t.Errorf("error is %d bytes: %.200q...", len(msg), msg)
			}
		})
	}
}

// checkValid fails t unless err is nil when valid, or wraps sentinel when not.
func checkValid(t *testing.T, err error, valid bool, sentinel error) {
	t.Helper()
	switch {
	case valid && err != nil:
		t.Errorf("unexpected error: %v", err)
	case !valid && err == nil:
		t.Errorf("no error, want %v", sentinel)
	case !valid && !errors.Is(err, sentinel):
		t.Errorf("error %v does not wrap %v", err, sentinel)
	}
}
