package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestImagesCommand runs `pullgate images` over files and standard input and checks what it prints and its exit
// status.
func TestImagesCommand(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	web := write("web.yaml", `---
# Source: web/templates/deployment.yaml
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    spec:
      initContainers: [{name: init, image: busybox}]
      containers:
        - {name: web, image: "nginx:1.25"}
        - {name: proxy, image: "ghcr.io/o/envoy@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}
---
# Source: web/templates/configmap.yaml
apiVersion: v1
kind: ConfigMap
metadata: {name: web}
data: {image: "not-listed:1"}
`)
	jobs := write("jobs.json", `{"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "report"},
 "spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [
   {"name": "a", "image": "docker.io/library/nginx:1.25"},
   {"name": "b", "image": "busybox:latest"},
   {"name": "c", "image": "registry.k8s.io/kubectl:v1.31.0"}]}}}}}}
`)
	empty := write("empty.yaml", "# nothing rendered\n---\n")
	broken := write("broken.yaml", "kind: ConfigMap\n---\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{image: 'Nginx'}]\n")
	invalid := write("invalid.yaml", "kind: Pod\n---\nkind: Pod\nspec: [\n")

	tests := []struct {
		name       string
		args       []string
		stdin      string
		wantCode   int
		wantOut    string
		wantErrHas []string
	}{
		{
			name:    "one file",
			args:    []string{web},
			wantOut: "busybox\nnginx:1.25\nghcr.io/o/envoy@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n",
		},
		{
			name:    "standard input without arguments",
			stdin:   "kind: Pod\nspec: {containers: [{image: 'nginx:1.25'}, {image: 'nginx:1.25'}]}\n",
			wantOut: "nginx:1.25\n",
		},
		{
			// Duplicates across files and standard input ("-") are printed once, where first seen.
			name:    "files and standard input, as written",
			args:    []string{web, "-", jobs, empty, web},
			stdin:   `{"kind": "Pod", "spec": {"containers": [{"image": "nginx:1.25"}, {"image": "quay.io/o/stdin:1"}]}}`,
			wantOut: "busybox\nnginx:1.25\nghcr.io/o/envoy@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\nquay.io/o/stdin:1\ndocker.io/library/nginx:1.25\nbusybox:latest\nregistry.k8s.io/kubectl:v1.31.0\n",
		},
		{
			// Normalised, "busybox" and "busybox:latest" are one image, and so are the two nginx spellings.
			name:    "normalize",
			args:    []string{"--normalize", web, jobs},
			wantOut: "docker.io/library/busybox:latest\ndocker.io/library/nginx:1.25\nghcr.io/o/envoy@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\nregistry.k8s.io/kubectl:v1.31.0\n",
		},
		{
			name:    "nothing found",
			args:    []string{empty},
			wantOut: "",
		},
		{
			// Nothing is printed, not even web.yaml's images, so that a pipe never passes on half a list.
			name:       "an invalid reference",
			args:       []string{web, broken},
			wantCode:   1,
			wantErrHas: []string{"broken.yaml", "document 2", "Pod/p", "spec.containers[0].image", `"Nginx"`},
		},
		{
			name:       "invalid YAML",
			args:       []string{invalid},
			wantCode:   1,
			wantErrHas: []string{"invalid.yaml", "document 2", "line 4"},
		},
		{
			name:       "invalid YAML on standard input",
			args:       []string{"-"},
			stdin:      "a: [\n",
			wantCode:   1,
			wantErrHas: []string{"standard input", "document 1"},
		},
		{
			name:       "missing file",
			args:       []string{filepath.Join(dir, "nope.yaml")},
			wantCode:   1,
			wantErrHas: []string{"nope.yaml"},
		},
		{
			name:       "help",
			args:       []string{"-h"},
			wantCode:   0,
			wantErrHas: []string{"usage: pullgate images", "-normalize"},
		},
		{
			name:       "unknown flag",
			args:       []string{"--sorted", web},
			wantCode:   2,
			wantErrHas: []string{"usage: pullgate images"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := runImages(tt.args, strings.NewReader(tt.stdin), &stdout, &stderr)
			if code != tt.wantCode {
				t.Errorf("exit status %d, want %d (stderr %q)", code, tt.wantCode, stderr.String())
			}
			if stdout.String() != tt.wantOut {
				t.Errorf("stdout:\n%s\nwant:\n%s", stdout.String(), tt.wantOut)
			}
			for _, s := range tt.wantErrHas {
				if !strings.Contains(stderr.String(), s) {
					t.Errorf("stderr %q does not say %q", stderr.String(), s)
				}
			}
			if tt.wantCode == 0 && len(tt.wantErrHas) == 0 && stderr.Len() > 0 {
				t.Errorf("stderr %q on success", stderr.String())
			}
		})
	}
}

// TestImagesCommandDispatch holds that `pullgate images` reaches the command from main's run.
func TestImagesCommandDispatch(t *testing.T) {
	p := filepath.Join(t.TempDir(), "pod.yaml")
	if err := os.WriteFile(p, []byte("kind: Pod\nspec: {containers: [{image: 'nginx:1.25'}]}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"images", "--normalize", p}, nil, &stdout, &stderr); code != 0 {
		t.Fatalf("exit status %d: %s", code, stderr.String())
	}
	if got := stdout.String(); got != "docker.io/library/nginx:1.25\n" {
		t.Errorf("stdout %q", got)
	}
}

// TestImagesCommandWriteError holds that a failed write is exit status 1, not a silent short list.
func TestImagesCommandWriteError(t *testing.T) {
	var stderr bytes.Buffer
	code := runImages(nil, strings.NewReader("containers: [{image: x}]\n"), failingWriter{}, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "writing") {
		t.Errorf("exit status %d, stderr %q; want 1 and the write error", code, stderr.String())
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }
