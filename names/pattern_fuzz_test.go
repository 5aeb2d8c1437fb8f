package names

import (
	"path"
	"strings"
	"testing"
)

// FuzzPattern holds the glob language to path.Match's where they overlap, and "**" to a superset of '*'.
func FuzzPattern(f *testing.F) {
	for _, s := range [][2]string{
		{"docker.io/library/*", "docker.io/library/nginx"}, {"ghcr.io/myorg/**", "ghcr.io/myorg/a/b"}, {"v*", "v1.2"},
		{"*.*.*", "1.2.3"}, {"**", "x"}, {"a?c", "abc"}, {"a.c", "abc"}, {"a[b]c", "abc"}, {`a\`, `a\`}, {"(", "("},
		{"a+", "aa"}, {"***", "a/b"}, {"?", "é"}, {"", ""}, {"a b", "a b"}, {"café", "café"}, {"v*-ü", "v1-ü"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, glob, s string) {
		p, err := CompilePattern(glob)
		if err != nil {
			if glob != "" && !strings.ContainsFunc(glob, func(r rune) bool { return r <= ' ' || r >= 0x7f }) {
				t.Fatalf("%q does not compile: %v", glob, err)
			}
			return
		}
		if !strings.ContainsAny(glob, "*?") {
			if !p.Match(glob) {
				t.Fatalf("%q does not match itself", glob)
			}
			if s != glob && p.Match(s) {
				t.Fatalf("%q matches %q", glob, s)
			}
			return
		}
		// Without "**" a glob is path.Match's pattern language minus classes and escapes.
		if !strings.Contains(glob, "**") && !strings.ContainsAny(glob, `[]\`) {
			want, err := path.Match(glob, s)
			if err == nil && p.Match(s) != want {
				t.Fatalf("%q on %q: CompilePattern says %v, path.Match %v", glob, s, !want, want)
			}
		}
		// "**" matches whatever '*' and '?' match, and more: replacing each '*' by "**" never loses a match. (Not
		// across a newline: "**" is ".*", '*' is "[^/]*"; names and tags never hold one.)
		if p.Match(s) && !strings.Contains(s, "\n") {
			wide, err := CompilePattern(strings.ReplaceAll(glob, "*", "**"))
			if err != nil || !wide.Match(s) {
				t.Fatalf("%q matches %q but its ** form does not (%v)", glob, s, err)
			}
		}
	})
}
