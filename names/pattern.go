package names

import (
	"fmt"
	"regexp"
	"strings"
)

// Pattern is a glob over slash-separated names: "<upstream>/<repository>" in allow-lists and permissions,
// tags in immutability rules. '*' matches within one path element, "**" across elements, '?' one character
// other than '/'; everything else matches itself. The zero Pattern matches nothing.
type Pattern struct {
	glob string
	re   *regexp.Regexp
}

// CompilePattern compiles a glob. Patterns are printable ASCII, as repository names and tags are.
func CompilePattern(glob string) (Pattern, error) {
	if glob == "" || strings.IndexFunc(glob, func(r rune) bool { return r <= ' ' || r >= 0x7f }) >= 0 {
		return Pattern{}, fmt.Errorf("invalid pattern %q: patterns are printable ASCII, as repository names and tags are", glob)
	}
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(glob); i++ {
		switch c := glob[i]; {
		case c == '*' && i+1 < len(glob) && glob[i+1] == '*':
			b.WriteString("(?s:.*)")
			i++
		case c == '*':
			b.WriteString("[^/]*")
		case c == '?':
			b.WriteString("[^/]")
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	b.WriteString("$")
	re, err := regexp.Compile(b.String())
	if err != nil {
		return Pattern{}, fmt.Errorf("invalid pattern %q: %w", glob, err)
	}
	return Pattern{glob: glob, re: re}, nil
}

// CompilePatterns compiles each glob; the first that does not compile is the error.
func CompilePatterns(globs []string) ([]Pattern, error) {
	ps := make([]Pattern, 0, len(globs))
	for _, g := range globs {
		p, err := CompilePattern(g)
		if err != nil {
			return nil, err
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// Match reports whether s matches the whole pattern.
func (p Pattern) Match(s string) bool { return p.re != nil && p.re.MatchString(s) }

// String returns the glob as written.
func (p Pattern) String() string { return p.glob }

// MatchAny reports whether any of ps matches s.
func MatchAny(ps []Pattern, s string) bool {
	for _, p := range ps {
		if p.Match(s) {
			return true
		}
	}
	return false
}
