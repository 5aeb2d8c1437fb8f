package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pullgate/pullgate/identity"
)

// TestTokenRotateKey rotates the token service's key from the command line and checks that a signer over the
// same directory (the running server) signs with the new key and still knows the previous one.
func TestTokenRotateKey(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{"PULLGATE_DATA_DIR": dir}
	signer, err := identity.NewSigner(identity.SignerOptions{Dir: tokenKeysDir(dir)})
	if err != nil {
		t.Fatal(err)
	}
	first := signer.KeyIDs()
	var out, errOut bytes.Buffer
	if code := run([]string{"token", "rotate-key"}, env, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	files, err := os.ReadDir(tokenKeysDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 {
		t.Errorf("%d key files after a rotation that keeps 2", len(files))
	}
	reread, err := identity.NewSigner(identity.SignerOptions{Dir: tokenKeysDir(dir)})
	if err != nil {
		t.Fatal(err)
	}
	ids := reread.KeyIDs()
	if len(ids) != 2 || ids[1] != first[0] || !strings.Contains(out.String(), ids[0]) {
		t.Errorf("keys %v after rotating from %v; output %q", ids, first, out.String())
	}
	if code := run([]string{"token", "rotate-key", "--keep", "1"}, env, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if files, _ := filepath.Glob(filepath.Join(tokenKeysDir(dir), "*.pem")); len(files) != 1 {
		t.Errorf("%d key files after --keep 1", len(files))
	}
	for _, args := range [][]string{{"token"}, {"token", "rotate-key", "--keep", "0"}, {"token", "other"}} {
		if code := run(args, env, &out, &errOut); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
}
