package names

import (
	"errors"
	"testing"
)

// FuzzParseReference holds that ParseReference never panics, refuses with one of the package's errors, and
// that what it accepts is canonical: String() parses back to the same Reference, every part is valid, and a
// reference through pullgate's prefix parses back to itself too.
func FuzzParseReference(f *testing.F) {
	for _, s := range []string{
		"nginx",
		"nginx:1.25",
		"docker.io/nginx",
		"index.docker.io/library/nginx",
		"ghcr.io/o/r@sha256:" + hex64,
		"ghcr.io/o/r:v1@sha256:" + hex64,
		"localhost:5000/x:tag",
		"[::1]:5000/x",
		"GHCR.io/O/r",
		"a/../b",
		"nginx@sha384:" + hex64,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseReference(s)
		if err != nil {
			if !errors.Is(err, ErrNameInvalid) && !errors.Is(err, ErrTagInvalid) && !errors.Is(err, ErrDigestInvalid) {
				t.Fatalf("ParseReference(%q): error %v wraps none of the package's errors", s, err)
			}
			return
		}
		if err := ValidateRegistry(r.Registry); err != nil {
			t.Errorf("ParseReference(%q) = %#v: registry: %v", s, r, err)
		}
		if err := ValidateRepository(r.Repository); err != nil {
			t.Errorf("ParseReference(%q) = %#v: repository: %v", s, r, err)
		}
		if err := ValidateRepositoryWithHost(r.Registry + "/" + r.Repository); err != nil {
			t.Errorf("ParseReference(%q) = %#v: not a valid path name: %v", s, r, err)
		}
		if r.Tag != "" {
			if err := ValidateTag(r.Tag); err != nil {
				t.Errorf("ParseReference(%q) = %#v: tag: %v", s, r, err)
			}
		}
		if r.Tag == "" && r.Digest.Hex == "" {
			t.Errorf("ParseReference(%q) = %#v: neither tag nor digest", s, r)
		}
		if IsDockerHub(r.Registry) && r.Registry != DefaultRegistry {
			t.Errorf("ParseReference(%q) = %#v: Docker Hub not normalised", s, r)
		}
		again, err := ParseReference(r.String())
		if err != nil {
			t.Fatalf("ParseReference(%q) = %q, which does not parse: %v", s, r.String(), err)
		}
		if again != r {
			t.Fatalf("ParseReference(%q) = %#v; its String %q parses to %#v", s, r, r.String(), again)
		}
		through, err := r.Through("pullgate.example.com")
		if err != nil {
			if !errors.Is(err, ErrNameInvalid) {
				t.Fatalf("Through(%q): %v does not wrap ErrNameInvalid", r.String(), err)
			}
			return
		}
		back, err := ParseReference(through.String())
		if err != nil || back != through {
			t.Fatalf("%q through pullgate is %q, which parses to %#v, %v", r.String(), through.String(), back, err)
		}
	})
}
