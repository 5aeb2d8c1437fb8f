package cache

import (
	"errors"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func TestVerdicts(t *testing.T) {
	c := open(t, t.TempDir(), newClock().Now)
	a := sha256Of([]byte("a"))
	b := sha256Of([]byte("b"))
	if _, err := c.Verdict(a); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Verdict of nothing stored: %v, want ErrNotFound", err)
	}
	for _, step := range []struct {
		d v1.Hash
		v string
	}{{a, "one"}, {b, "two"}, {a, "three"}} {
		if err := c.SetVerdict(step.d, []byte(step.v)); err != nil {
			t.Fatal(err)
		}
	}
	if v, err := c.Verdict(a); err != nil || string(v) != "three" {
		t.Fatalf("Verdict(a) = %q, %v; want the last one stored", v, err)
	}
	var seen []string
	if err := c.Verdicts(func(d v1.Hash, v []byte) error { seen = append(seen, d.String()+"="+string(v)); return nil }); err != nil {
		t.Fatal(err)
	}
	if want := sortedPair(a.String()+"=three", b.String()+"=two"); len(seen) != 2 || seen[0] != want[0] || seen[1] != want[1] {
		t.Fatalf("Verdicts listed %v", seen)
	}
	if err := c.SetVerdict(a, make([]byte, maxVerdict+1)); err == nil {
		t.Fatal("a verdict over the limit was stored")
	}
}

func sortedPair(x, y string) [2]string {
	if x < y {
		return [2]string{x, y}
	}
	return [2]string{y, x}
}
