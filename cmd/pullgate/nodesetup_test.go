package main

import (
	"bytes"
	"encoding/pem"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pullgate/pullgate/certs"
)

// nodePKI is a CA file and a certificate and key it signed, as made by pullgate's local CA, in the working
// directory (the tests run in a directory of their own so that the command lines in the headers are fixed).
type nodePKI struct {
	ca, cert, key string
}

// newNodePKI makes a local CA under dir and returns its files' paths relative to dir.
func newNodePKI(t *testing.T, dir, sub string) nodePKI {
	t.Helper()
	local, err := certs.EnsureLocal(filepath.Join(dir, sub), []string{"node.test"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	rel := func(p string) string {
		r, err := filepath.Rel(dir, p)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	return nodePKI{ca: rel(local.CAFile), cert: rel(local.CertFile), key: rel(local.KeyFile)}
}

// runNode runs pullgate with args in dir and returns the exit status, standard output and standard error.
func runNode(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(args, map[string]string{}, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// checkGolden compares got with testdata/nodesetup/name.
func checkGolden(t *testing.T, wd, name, got string) {
	t.Helper()
	want, err := os.ReadFile(filepath.Join(wd, "testdata", "nodesetup", name))
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		if os.Getenv("PULLGATE_UPDATE_GOLDEN") != "" {
			if err := os.WriteFile(filepath.Join(wd, "testdata", "nodesetup", name), []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		t.Errorf("%s differs from the golden file (PULLGATE_UPDATE_GOLDEN=1 rewrites it); got:\n%s", name, got)
	}
}

// checkFile checks that name holds want with mode perm.
func checkFile(t *testing.T, name string, want []byte, perm fs.FileMode) {
	t.Helper()
	st, err := os.Lstat(name)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Mode().IsRegular() || st.Mode().Perm() != perm {
		t.Errorf("%s: mode %v, want a regular file with %v", name, st.Mode(), perm)
	}
	got, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s:\n%s\nwant:\n%s", name, got, want)
	}
}

// readFile reads name or fails t.
func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestHostsTOMLGolden(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	t.Chdir(dir)
	pki := newNodePKI(t, dir, "pki")
	caPEM, certPEM := readFile(t, pki.ca), readFile(t, pki.cert)
	server := []string{"hosts-toml", "--server", "https://PG.example.com:5443/", "--dir", "out", "--node-dir", "/etc/containerd/certs.d/"}
	tests := []struct {
		name   string
		args   []string
		golden map[string]string // registry -> golden file
		client bool
		also   []string // directories written besides the golden ones
	}{
		// Any of Docker Hub's names stands for all of them: an image naming another would go around pullgate.
		{name: "ca", args: []string{"--ca", pki.ca, "index.docker.io", "ghcr.io", "docker.io", "registry-1.docker.io"},
			golden: map[string]string{"docker.io": "hosts-ca-docker.io.toml", "ghcr.io": "hosts-ca-ghcr.io.toml"},
			also:   []string{"index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}},
		{name: "client certificate", args: []string{"--ca", pki.ca, "--client-cert", pki.cert, "--client-key", pki.key, "quay.io"},
			golden: map[string]string{"quay.io": "hosts-client-quay.io.toml"}, client: true},
		{name: "system roots", args: []string{"localhost:5000"},
			golden: map[string]string{"localhost:5000": "hosts-noca-localhost.toml"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := os.RemoveAll("out"); err != nil {
				t.Fatal(err)
			}
			code, stdout, stderr := runNode(t, append(slicesClone(server), tt.args...)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			entries, err := os.ReadDir("out")
			if err != nil {
				t.Fatal(err)
			}
			var got, want []string
			for _, e := range entries {
				got = append(got, e.Name())
			}
			for reg := range tt.golden {
				want = append(want, reg)
			}
			want = append(want, tt.also...)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("out holds %q, want %q (one per registry, each of Docker Hub's names)", got, want)
			}
			for _, reg := range tt.also {
				b := readFile(t, filepath.Join("out", reg, "hosts.toml"))
				if !strings.Contains(string(b), `[host."https://pg.example.com:5443"]`) || !strings.Contains(string(b), `server = "https://pg.example.com:5443"`) {
					t.Errorf("%s/hosts.toml does not send %s's pulls to pullgate only:\n%s", reg, reg, b)
				}
			}
			for reg, golden := range tt.golden {
				d := filepath.Join("out", reg)
				checkGolden(t, wd, golden, string(readFile(t, filepath.Join(d, "hosts.toml"))))
				checkFile(t, filepath.Join(d, "hosts.toml"), readFile(t, filepath.Join(d, "hosts.toml")), 0o644)
				if st, err := os.Stat(d); err != nil || st.Mode().Perm() != 0o755 {
					t.Errorf("%s: %v, %v; want a directory with mode 0755", d, st, err)
				}
				if strings.Contains(golden, "noca") {
					continue
				}
				checkFile(t, filepath.Join(d, hostsCAName), caPEM, 0o644)
				if tt.client {
					checkFile(t, filepath.Join(d, hostsCertName), certPEM, 0o644)
					block, _ := pem.Decode(readFile(t, pki.key))
					checkFile(t, filepath.Join(d, hostsKeyName), pem.EncodeToMemory(block), 0o600)
				}
				if !strings.Contains(stdout, "wrote "+filepath.Join(d, "hosts.toml")+"\n") {
					t.Errorf("stdout does not say it wrote %s:\n%s", filepath.Join(d, "hosts.toml"), stdout)
				}
			}
		})
	}
}

// slicesClone copies s, so that appends to it do not share a backing array.
func slicesClone(s []string) []string { return append([]string(nil), s...) }

func TestHostsTOMLIdempotent(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	pki := newNodePKI(t, dir, "pki")
	args := []string{"hosts-toml", "--server", "https://pg.example.com:5443", "--ca", pki.ca,
		"--client-cert", pki.cert, "--client-key", pki.key, "--dir", "out", "quay.io", "ghcr.io"}
	if code, _, stderr := runNode(t, args...); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	files, err := filepath.Glob(filepath.Join("out", "*", "*"))
	if err != nil || len(files) != 8 {
		t.Fatalf("wrote %q (%v), want 4 files per registry", files, err)
	}
	old := time.Now().Add(-time.Hour).Truncate(time.Second)
	for _, f := range files {
		if err := os.Chtimes(f, old, old); err != nil {
			t.Fatal(err)
		}
	}
	code, stdout, stderr := runNode(t, args...)
	if code != 0 {
		t.Fatalf("second run: exit %d: %s", code, stderr)
	}
	if strings.Contains(stdout, "wrote") || strings.Count(stdout, "unchanged ") != len(files) {
		t.Errorf("second run with the same arguments:\n%s\nwant every file unchanged", stdout)
	}
	for _, f := range files {
		if st, err := os.Stat(f); err != nil || !st.ModTime().Equal(old) {
			t.Errorf("%s was touched by a run that changed nothing (%v)", f, err)
		}
	}
	if leftovers, _ := filepath.Glob(filepath.Join("out", "*", ".*")); len(leftovers) != 0 {
		t.Errorf("temporary files left behind: %q", leftovers)
	}

	t.Run("a key made readable is made private again", func(t *testing.T) {
		key := filepath.Join("out", "ghcr.io", hostsKeyName)
		if err := os.Chmod(key, 0o644); err != nil {
			t.Fatal(err)
		}
		code, stdout, stderr := runNode(t, args...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		if !strings.Contains(stdout, "wrote "+key+"\n") || strings.Count(stdout, "wrote ") != 1 {
			t.Errorf("want only %s rewritten:\n%s", key, stdout)
		}
		if st, err := os.Stat(key); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, %v; want mode 0600", key, st, err)
		}
	})
	t.Run("a symbolic link is replaced, its target untouched", func(t *testing.T) {
		target := filepath.Join(dir, "elsewhere")
		if err := os.WriteFile(target, []byte("keep me\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		hosts := filepath.Join("out", "quay.io", "hosts.toml")
		want := readFile(t, hosts)
		if err := os.Remove(hosts); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, hosts); err != nil {
			t.Fatal(err)
		}
		if code, _, stderr := runNode(t, args...); code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		checkFile(t, hosts, want, 0o644)
		checkFile(t, target, []byte("keep me\n"), 0o644)
	})
	t.Run("a new CA is written", func(t *testing.T) {
		other := newNodePKI(t, dir, "pki2")
		newArgs := slicesClone(args)
		newArgs[4] = other.ca
		code, stdout, stderr := runNode(t, newArgs...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		for _, reg := range []string{"quay.io", "ghcr.io"} {
			checkFile(t, filepath.Join("out", reg, hostsCAName), readFile(t, other.ca), 0o644)
			// The header's command line names the new CA file.
			if !strings.Contains(stdout, "wrote "+filepath.Join("out", reg, "hosts.toml")) {
				t.Errorf("%s/hosts.toml not rewritten with the new command line:\n%s", reg, stdout)
			}
		}
	})
}

func TestHostsTOMLDryRun(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	pki := newNodePKI(t, dir, "pki")
	code, stdout, stderr := runNode(t, "hosts-toml", "--server", "https://pg.example.com:5443", "--ca", pki.ca,
		"--client-cert", pki.cert, "--client-key", pki.key, "--dir", "out", "--dry-run", "ghcr.io")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if _, err := os.Stat("out"); !os.IsNotExist(err) {
		t.Errorf("a dry run made %s: %v", "out", err)
	}
	// Each file that hosts.toml names comes before it, so that containerd never reads a hosts.toml naming a
	// file that is not there yet.
	var order []string
	for _, line := range strings.Split(stdout, "\n") {
		if p, ok := strings.CutPrefix(line, "# ---- "); ok {
			order = append(order, filepath.Base(strings.Fields(p)[0]))
		}
	}
	if want := []string{hostsCAName, hostsCertName, hostsKeyName, "hosts.toml"}; strings.Join(order, " ") != strings.Join(want, " ") {
		t.Errorf("dry run printed %q, want %q in that order", order, want)
	}
	if !strings.Contains(stdout, string(readFile(t, pki.ca))) || !strings.Contains(stdout, `server = "https://pg.example.com:5443"`) {
		t.Errorf("the dry run does not show the files:\n%s", stdout)
	}
	block, _ := pem.Decode(readFile(t, pki.key))
	if strings.Contains(stdout, "PRIVATE KEY") || strings.Contains(stdout, string(pem.EncodeToMemory(block))[40:80]) {
		t.Errorf("the dry run prints the private key:\n%s", stdout)
	}
}

func TestRegistriesConfGolden(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	t.Chdir(dir)
	pki := newNodePKI(t, dir, "pki")
	args := []string{"registries-conf", "--server", "https://pg.example.com:5443", "--ca", pki.ca,
		"--file", "conf.d/50-pullgate.conf", "--certs-dir", "certs.d", "docker.io", "quay.io", "index.docker.io", "ghcr.io"}
	code, stdout, stderr := runNode(t, args...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	checkGolden(t, wd, "registries.conf", string(readFile(t, "conf.d/50-pullgate.conf")))
	checkFile(t, "conf.d/50-pullgate.conf", readFile(t, "conf.d/50-pullgate.conf"), 0o644)
	checkFile(t, filepath.Join("certs.d", "pg.example.com:5443", "ca.crt"), readFile(t, pki.ca), 0o644)
	if want := "wrote certs.d/pg.example.com:5443/ca.crt\nwrote conf.d/50-pullgate.conf\n"; stdout != want {
		t.Errorf("stdout %q, want %q", stdout, want)
	}
	code, stdout, _ = runNode(t, args...)
	if want := "unchanged certs.d/pg.example.com:5443/ca.crt\nunchanged conf.d/50-pullgate.conf\n"; code != 0 || stdout != want {
		t.Errorf("second run: exit %d, stdout %q, want %q", code, stdout, want)
	}
}

func TestNodeSetupBadInput(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	pki := newNodePKI(t, dir, "pki")
	other := newNodePKI(t, dir, "other")
	write := func(name, text string) string {
		if err := os.WriteFile(name, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return name
	}
	notPEM := write("not.pem", "hello\n")
	withKey := write("with-key.pem", string(readFile(t, pki.ca))+string(readFile(t, pki.key)))
	badBlock := write("bad-block.pem", "-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n")
	garbageCert := write("garbage-cert.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("no")})))
	big := write("big.pem", strings.Repeat("x", maxPEMFile+1))
	ok := []string{"--server", "https://pg.example.com:5443", "--dir", "out"}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no server", []string{"hosts-toml", "--dir", "out", "docker.io"}, "--server is required"},
		{"http server", []string{"hosts-toml", "--server", "http://pg.example.com:5443", "--dir", "out", "docker.io"}, "want https://HOST[:PORT]"},
		{"server without scheme", []string{"hosts-toml", "--server", "pg.example.com:5443", "--dir", "out", "docker.io"}, "want https://HOST[:PORT]"},
		{"server with path", []string{"hosts-toml", "--server", "https://pg.example.com:5443/v2/docker.io", "--dir", "out", "docker.io"}, "without a user, path"},
		{"server with user", []string{"hosts-toml", "--server", "https://u:p@pg.example.com", "--dir", "out", "docker.io"}, "without a user, path"},
		{"server with query", []string{"hosts-toml", "--server", "https://pg.example.com/?ns=x", "--dir", "out", "docker.io"}, "without a user, path"},
		{"server without host", []string{"hosts-toml", "--server", "https:///x", "--dir", "out", "docker.io"}, "no host"},
		{"no registry", append([]string{"hosts-toml"}, ok...), "name at least one registry"},
		{"registry with a path", append(append([]string{"hosts-toml"}, ok...), "ghcr.io/team"), "want a lowercase DNS name"},
		{"uppercase registry", append(append([]string{"hosts-toml"}, ok...), "GHCR.io"), "want a lowercase DNS name"},
		{"registry with a quote", append(append([]string{"hosts-toml"}, ok...), `a".io`), "want a lowercase DNS name"},
		{"IPv6 registry", append(append([]string{"hosts-toml"}, ok...), "[::1]:5000"), "IPv6"},
		{"registry with port 0", append(append([]string{"hosts-toml"}, ok...), "r.io:0"), "port"},
		{"relative node dir", append(append([]string{"hosts-toml", "--node-dir", "etc/certs.d"}, ok...), "docker.io"), "absolute path"},
		{"quote in node dir", append(append([]string{"hosts-toml", "--node-dir", `/etc/"x`}, ok...), "docker.io"), "quotes"},
		{"CA not PEM", append(append([]string{"hosts-toml", "--ca", notPEM}, ok...), "docker.io"), "no PEM certificate"},
		{"CA with a private key", append(append([]string{"hosts-toml", "--ca", withKey}, ok...), "docker.io"), `"PRIVATE KEY" PEM block`},
		{"CA block broken", append(append([]string{"hosts-toml", "--ca", badBlock}, ok...), "docker.io"), "does not decode"},
		{"CA not a certificate", append(append([]string{"hosts-toml", "--ca", garbageCert}, ok...), "docker.io"), "x509"},
		{"CA too big", append(append([]string{"hosts-toml", "--ca", big}, ok...), "docker.io"), "larger than"},
		{"CA missing", append(append([]string{"hosts-toml", "--ca", "nope.pem"}, ok...), "docker.io"), "no such file"},
		{"client cert without key", append(append([]string{"hosts-toml", "--client-cert", pki.cert}, ok...), "docker.io"), "go together"},
		{"client key without cert", append(append([]string{"hosts-toml", "--client-key", pki.key}, ok...), "docker.io"), "go together"},
		{"client key not a key", append(append([]string{"hosts-toml", "--client-cert", pki.cert, "--client-key", pki.cert}, ok...), "docker.io"), "no PEM private key"},
		{"client key of another certificate", append(append([]string{"hosts-toml", "--client-cert", pki.cert, "--client-key", other.key}, ok...), "docker.io"), "private key does not match"},
		{"conf: registry with a port", []string{"registries-conf", "--server", "https://pg.example.com:5443", "--file", "out/x.conf", "localhost:5000"}, "has a port"},
		{"conf: registry is pullgate", []string{"registries-conf", "--server", "https://pg.example.com:5443", "--file", "out/x.conf", "pg.example.com:5443"}, "is pullgate itself"},
		{"conf: pullgate host reads as a repository", []string{"registries-conf", "--server", "https://pullgate", "--file", "out/x.conf", "docker.io"}, "would not read as its own registry"},
		{"conf: http server", []string{"registries-conf", "--server", "http://pg.example.com", "--file", "out/x.conf", "docker.io"}, "want https://HOST[:PORT]"},
		{"conf: CA with a private key", []string{"registries-conf", "--server", "https://pg.example.com", "--ca", withKey, "--file", "out/x.conf", "--certs-dir", "out", "docker.io"}, `"PRIVATE KEY" PEM block`},
		{"conf: no registry", []string{"registries-conf", "--server", "https://pg.example.com", "--file", "out/x.conf"}, "name at least one registry"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A case that wrongly writes must not make the next ones fail.
			t.Cleanup(func() { _ = os.RemoveAll("out") })
			code, stdout, stderr := runNode(t, tt.args...)
			if code != 2 || !strings.Contains(stderr, tt.want) {
				t.Errorf("exit %d, stderr %q; want 2 and %q", code, stderr, tt.want)
			}
			if stdout != "" {
				t.Errorf("stdout %q, want nothing", stdout)
			}
			if _, err := os.Stat("out"); !os.IsNotExist(err) {
				t.Errorf("refused input wrote out/: %v", err)
			}
		})
	}
}
