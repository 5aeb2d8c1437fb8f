package main

import (
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/pullgate/pullgate/identity"
)

// runToken is `pullgate token rotate-key [--keep N]`: a new signing key for the token service in the data
// directory. The running server picks it up within seconds and signs with it; the previous keys (keep-1 of
// them) still verify the tokens they signed. --keep 1 drops every older key at once (for a key that leaked):
// tokens it signed stop working.
func runToken(args []string, env map[string]string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "rotate-key" {
		fmt.Fprint(stderr, "usage: pullgate token rotate-key [--keep N]   (PULLGATE_DATA_DIR names the data directory)\n")
		return 2
	}
	set := flag.NewFlagSet("pullgate token rotate-key", flag.ContinueOnError)
	set.SetOutput(stderr)
	keep := set.Int("keep", 2, "how many keys to keep, the new one included (1 drops the previous key: its tokens stop working)")
	if err := set.Parse(args[1:]); err != nil {
		return 2
	}
	if *keep < 1 || set.NArg() > 0 {
		fmt.Fprint(stderr, "pullgate token rotate-key: --keep must be at least 1, and no arguments are taken\n")
		return 2
	}
	cfg, err := loadVerifyConfig(env)
	if err != nil {
		fmt.Fprintf(stderr, "pullgate: configuration: %v\n", err)
		return 2
	}
	kid, err := identity.RotateKey(tokenKeysDir(cfg.DataDir), time.Now(), *keep)
	if err != nil {
		fmt.Fprintf(stderr, "pullgate token rotate-key: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "new token signing key %s in %s; %d key(s) kept\n", kid, tokenKeysDir(cfg.DataDir), *keep)
	return 0
}
