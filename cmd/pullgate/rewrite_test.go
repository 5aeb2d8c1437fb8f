package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"
)

// TestRewritePinDigests runs `pullgate rewrite --pin-digests` against a pullgate in front of a real registry:
// each tag is pinned to the digest the registry has (an image's, an index's), through pullgate with a robot's
// credentials; excluded images and digests are left alone; a tag pullgate cannot find fails the whole run
// with nothing written.
func TestRewritePinDigests(t *testing.T) {
	g := startGated(t, "severity: High\n", nil)
	img, imgDigest := randomImage(t)
	g.push(t, "library/app:1.0", img)
	idx, err := random.Index(256, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	g.push(t, "team/multi:2", idx)
	idxDigest, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(g.url, "https://")
	const other = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	in := `# a Deployment
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  template:
    spec:
      containers:
        - name: app
          image: "app:1.0"   # quoted
        - name: multi
          image: docker.io/team/multi:2
        - name: pinned
          image: ghcr.io/o/r@` + other + `
        - name: kept
          image: registry.k8s.io/pause:3.9
`
	want := `# a Deployment
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  template:
    spec:
      imagePullSecrets:
        - name: pullgate
      containers:
        - name: app
          image: "` + host + `/docker.io/library/app:1.0@` + imgDigest + `"   # quoted
        - name: multi
          image: ` + host + `/docker.io/team/multi:2@` + idxDigest.String() + `
        - name: pinned
          image: ` + host + `/ghcr.io/o/r@` + other + `
        - name: kept
          image: registry.k8s.io/pause:3.9
`
	args := []string{"--registry", host, "--exclude", "registry.k8s.io/**", "--pull-secret", "pullgate", "--pin-digests"}
	var out, errOut bytes.Buffer
	if code := runRewrite(args, g.env(g.ci), strings.NewReader(in), &out, &errOut, rewriteOptions{}); code != 0 {
		t.Fatalf("exit status %d, stderr %s", code, errOut.String())
	}
	if out.String() != want {
		t.Errorf("output\n%s\nwant\n%s", out.String(), want)
	}

	// Again, on its own output: nothing changes, nothing is asked.
	var again bytes.Buffer
	if code := runRewrite(args, g.env(g.ci), bytes.NewReader(out.Bytes()), &again, &errOut, rewriteOptions{}); code != 0 || again.String() != out.String() {
		t.Errorf("second run: exit status %d, output changed: %v; stderr %s", code, again.String() != out.String(), errOut.String())
	}

	var none bytes.Buffer
	if code := runRewrite(args, map[string]string{"PULLGATE_CA_FILE": "/nonexistent"}, strings.NewReader(in), &none, &errOut, rewriteOptions{}); code != 2 || none.Len() != 0 {
		t.Errorf("a missing CA file: exit status %d, want 2 and no output", code)
	}
	for _, tc := range []struct {
		name string
		env  map[string]string
		in   string
		says []string
	}{
		{"unknown tag", g.env(g.ci), "kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - image: app:1.0\n  - image: app:nope\n",
			[]string{"document 1 (Pod/p) spec.containers[1].image", host + "/docker.io/library/app:nope"}},
		{"no credentials", g.env([2]string{}), "kind: Pod\nspec:\n  containers:\n  - image: app:1.0\n",
			[]string{"document 1 (Pod) spec.containers[0].image", "resolving a digest"}},
		{"wrong password", g.env([2]string{g.ci[0], "wrong"}), "kind: Pod\nspec:\n  containers:\n  - image: app:1.0\n",
			[]string{"resolving a digest"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			if code := runRewrite(args, tc.env, strings.NewReader(tc.in), &out, &errOut, rewriteOptions{}); code != 1 {
				t.Fatalf("exit status %d, want 1; stderr %s", code, errOut.String())
			}
			if out.Len() != 0 {
				t.Errorf("wrote %q", out.String())
			}
			for _, s := range tc.says {
				if !strings.Contains(errOut.String(), s) {
					t.Errorf("stderr %q does not say %q", errOut.String(), s)
				}
			}
		})
	}
}

// TestRewriteCommand holds the command line: files and standard input, usage mistakes, and that an error in
// the last file writes nothing of the first.
func TestRewriteCommand(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a := write("a.yaml", "kind: Pod\nspec:\n  containers: [{image: nginx}]")
	b := write("b.yaml", "---\n# b\nkind: Pod\nspec:\n  initContainers:\n  - image: ghcr.io/o/init:1\n")
	bad := write("bad.yaml", "kind: Pod\nmetadata:\n  name: broken\nspec:\n  containers:\n  - image: Nginx\n")
	for _, tc := range []struct {
		name  string
		args  []string
		stdin string
		code  int
		out   string
		says  string
	}{
		{"files", []string{"--registry=pullgate.example.com", a, b}, "", 0,
			"kind: Pod\nspec:\n  containers: [{image: pullgate.example.com/docker.io/library/nginx:latest}]\n---\n---\n# b\nkind: Pod\nspec:\n  initContainers:\n  - image: pullgate.example.com/ghcr.io/o/init:1\n", ""},
		{"standard input", []string{"--registry", "pullgate.example.com:5443", "--pull-secret", "s"}, "containers:\n- image: nginx:1\n", 0,
			"imagePullSecrets:\n  - name: s\ncontainers:\n- image: pullgate.example.com:5443/docker.io/library/nginx:1\n", ""},
		{"error names file, document, object and field", []string{"--registry=pullgate.example.com", a, bad}, "", 1, "",
			bad + ": document 1 (Pod/broken) spec.containers[0].image"},
		{"no --registry", []string{a}, "", 2, "", "--registry is required"},
		{"bad registry", []string{"--registry=docker.io", a}, "", 2, "", `registry "docker.io"`},
		{"bad exclude", []string{"--registry=p.example.com", "--exclude=é", a}, "", 2, "", "exclude"},
		{"bad pull secret", []string{"--registry=p.example.com", "--pull-secret=No", a}, "", 1, "", `pull secret "No"`},
		{"missing file", []string{"--registry=p.example.com", filepath.Join(dir, "none")}, "", 1, "", "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := runRewrite(tc.args, nil, strings.NewReader(tc.stdin), &out, &errOut, rewriteOptions{})
			if code != tc.code || out.String() != tc.out || !strings.Contains(errOut.String(), tc.says) {
				t.Errorf("exit status %d, stdout\n%s\nstderr %q; want %d,\n%s\nand %q", code, out.String(), errOut.String(), tc.code, tc.out, tc.says)
			}
		})
	}
}

// TestHTTPSOnly holds that digest look-ups never fall back to plain http, where a robot's credentials would
// travel in clear.
func TestHTTPSOnly(t *testing.T) {
	resolve, err := digestResolver("", map[string]string{"PULLGATE_USERNAME": "robot$ci", "PULLGATE_PASSWORD": "secret"})
	if err != nil {
		t.Fatal(err)
	}
	// 127.0.0.1:1 refuses connections: https fails, and go-containerregistry would try http next.
	_, err = resolve(context.Background(), "127.0.0.1:1/docker.io/library/nginx:1")
	if err == nil || !strings.Contains(err.Error(), "only over TLS") {
		t.Errorf("resolve over a loopback address: %v, want a refusal of plain http", err)
	}
}
