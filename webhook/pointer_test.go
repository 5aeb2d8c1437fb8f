package webhook

import "testing"

func TestPointer(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tokens []string
		want   string
	}{
		{"plain", []string{"spec", "containers", "0", "image"}, "/spec/containers/0/image"},
		{"append", []string{"spec", "imagePullSecrets", "-"}, "/spec/imagePullSecrets/-"},
		{"slash escaped", []string{"metadata", "annotations", "pullgate.dev/rewritten"}, "/metadata/annotations/pullgate.dev~1rewritten"},
		{"tilde escaped first", []string{"a~/b"}, "/a~0~1b"},
		{"tilde before one", []string{"~1"}, "/~01"},
		{"empty token", []string{""}, "/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := pointer(tc.tokens...); got != tc.want {
				t.Fatalf("pointer(%q) = %q; want %q", tc.tokens, got, tc.want)
			}
		})
	}
}
