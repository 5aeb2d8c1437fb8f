package rewrite

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/pullgate/pullgate/names"
)

const (
	hexA = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	hexB = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
)

func readFixture(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestImages lists the images of whole inputs: every place a pod spec can be, in the order written, each once,
// and nothing from text that only looks like a pod spec.
func TestImages(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  []string
	}{
		{
			// Deployment (init containers first, as written), CronJob, a custom resource with a pod
			// template, a List with a Pod's ephemeral container and a StatefulSet. The ConfigMap's text and
			// the CRD's schema default are not images; the empty document and a container without an
			// image are passed over; nginx:1.25 and the migrate image appear twice and are listed once.
			name:  "helm template output",
			input: readFixture(t, "helm-template.yaml"),
			want: []string{
				"ghcr.io/shop/migrate:2.4.1",
				"nginx:1.25",
				"ghcr.io/shop/envoy@sha256:" + hexA,
				"registry.k8s.io/kubectl:v1.31.0",
				"quay.io/shop/worker:3.0@sha256:" + hexB,
				"busybox",
				"docker.io/library/postgres:16",
			},
		},
		{
			// kubectl get -o json: a List, indented with tabs; DaemonSet, ReplicaSet, Job, PodTemplate and
			// ReplicationController. The DaemonSet writes containers before initContainers.
			name:  "JSON list",
			input: readFixture(t, "kubectl-get.json"),
			want: []string{
				"gcr.io/agent/node:1.0",
				"busybox:1.36",
				"nginx:1.25",
				"localhost:5000/tools/once:v2",
				"registry.example.com:8443/team/app:1.0",
				"quay.io/legacy/app",
			},
		},
		{
			name:  "JSON on one line",
			input: `{"kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"a","image":"nginx"}]}}`,
			want:  []string{"nginx"},
		},
		{
			// Order is the order written, not the order of the field names.
			name: "containers written before initContainers",
			input: `kind: Pod
spec:
  containers: [{name: a, image: "b.example.com/main:1"}]
  initContainers: [{name: b, image: "a.example.com/init:1"}]
`,
			want: []string{"b.example.com/main:1", "a.example.com/init:1"},
		},
		{
			name: "spellings of one image are listed as written",
			input: `kind: Pod
spec:
  containers:
    - {name: a, image: nginx}
    - {name: b, image: "nginx:latest"}
    - {name: c, image: docker.io/library/nginx:latest}
    - {name: d, image: nginx}
`,
			want: []string{"nginx", "nginx:latest", "docker.io/library/nginx:latest"},
		},
		{
			// An anchor and a merge key, as hand-written manifests use them.
			name: "anchors and merge keys",
			input: `kind: Pod
x-base: &base
  image: ghcr.io/o/base:1
  imagePullPolicy: Always
spec:
  containers:
    - <<: *base
      name: a
    - name: b
      image: &img ghcr.io/o/other:2
  initContainers:
    - name: c
      image: *img
`,
			want: []string{"ghcr.io/o/base:1", "ghcr.io/o/other:2"},
		},
		{
			// Only string images in lists of objects count.
			name: "what is not a container",
			input: `kind: Thing
spec:
  containers: [nginx, "busybox"]
  initContainers: {name: a, image: "not-a-list:1"}
  ephemeralContainers:
    - {name: a, image: 42}
    - {name: b, image: null}
    - {name: c, image: [x]}
    - [{image: nested-list:1}]
  image: "not-in-a-container:1"
`,
			want: nil,
		},
		{
			// A top-level sequence and mappings with keys that are not strings are walked like the rest.
			name: "a sequence document and odd keys",
			input: `- kind: Pod
  spec:
    containers: [{name: a, image: "one:1"}]
- 7: {containers: [{image: "two:2"}]}
  true:
    containers: [{image: "three:3"}]
`,
			want: []string{"one:1", "two:2", "three:3"},
		},
		{
			// A sequence of mappings with the keys "key" and "value" is no mapping as written: its order holds.
			name: "a sequence of key and value mappings",
			input: `- key: a
  value: {kind: Pod, spec: {initContainers: [{image: "b:1"}], containers: [{image: "a:1"}]}}
`,
			want: []string{"b:1", "a:1"},
		},
		{
			name:  "empty input",
			input: "",
			want:  nil,
		},
		{
			name:  "comments only",
			input: "# nothing here\n\n# at all\n",
			want:  nil,
		},
		{
			name:  "empty documents and scalars",
			input: "---\n---\n# c\n---\nnull\n---\njust a string\n---\n42\n...\n",
			want:  nil,
		},
		{
			name:  "byte order mark and CRLF",
			input: "\ufeffkind: Pod\r\nspec:\r\n  containers:\r\n  - image: nginx:1.25\r\n",
			want:  []string{"nginx:1.25"},
		},
		{
			name:  "content on the document start line",
			input: "kind: Pod\n--- {kind: Pod, spec: {containers: [{image: 'inline:1'}]}}\n",
			want:  []string{"inline:1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Images(strings.NewReader(tt.input))
			if err != nil {
				t.Fatalf("Images: %v", err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("Images =\n  %q\nwant\n  %q", got, tt.want)
			}
		})
	}
}

// TestImagesErrors holds what Images refuses and what its errors say.
func TestImagesErrors(t *testing.T) {
	tests := []struct {
		name   string
		limits Limits
		input  string
		is     error  // the error wraps this
		doc    int    // DocumentError.Document, 0 when the error is not a DocumentError
		object string // DocumentError.Object
		path   string // DocumentError.Path
		says   []string
	}{
		{
			name:  "invalid YAML in the third document",
			input: "kind: A\n---\n# comment\nkind: B\n---\nkind: C\n  bad: [\n---\nkind: D\n",
			doc:   3,
			says:  []string{"document 3", "line 7"},
		},
		{
			name:  "a tab as indentation",
			input: "kind: A\n---\nkind: B\nspec:\n\tcontainers: []\n",
			doc:   2,
			says:  []string{"document 2", "line 5"},
		},
		{
			name:  "two JSON values without a separator",
			input: `{"kind": "A"}` + "\n" + `{"kind": "B"}` + "\n",
			doc:   2,
			says:  []string{"document 2", "line 1"},
		},
		{
			name: "invalid reference",
			input: readFixture(t, "helm-template.yaml") + `---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: broken
spec:
  template:
    spec:
      containers:
        - name: ok
          image: nginx:1.25
        - name: bad
          image: "Registry.Example.com:99999/App:1"
`,
			is:     names.ErrNameInvalid,
			doc:    8,
			object: "Deployment/broken",
			path:   "spec.template.spec.containers[1].image",
			says:   []string{"document 8 (Deployment/broken) spec.template.spec.containers[1].image", `"Registry.Example.com:99999/App:1"`},
		},
		{
			name:   "invalid tag inside a List item",
			input:  "kind: List\nitems:\n- kind: Pod\n  metadata: {name: p}\n  spec:\n    initContainers:\n    - image: nginx:-bad\n",
			is:     names.ErrTagInvalid,
			doc:    1,
			object: "Pod/p",
			path:   "items[0].spec.initContainers[0].image",
			says:   []string{`"nginx:-bad"`},
		},
		{
			name:   "invalid digest",
			input:  "kind: Job\nspec:\n  template:\n    spec:\n      containers:\n      - image: nginx@sha256:abc\n",
			is:     names.ErrDigestInvalid,
			doc:    1,
			object: "Job",
			path:   "spec.template.spec.containers[0].image",
		},
		{
			// An image left empty by a template is a mistake to report, not to pass over.
			name:   "empty image",
			input:  "kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - image: ''\n",
			is:     names.ErrNameInvalid,
			doc:    1,
			object: "Pod/p",
			path:   "spec.containers[0].image",
			says:   []string{"empty image reference"},
		},
		{
			name:   "nested one level too deep",
			limits: Limits{MaxDepth: 5},
			input:  "a: {b: {c: {d: [{e: 1}]}}}\n",
			is:     ErrTooDeep,
			doc:    1,
			path:   "a.b.c.d[0]",
			says:   []string{"more than 5 levels"},
		},
		{
			name:  "depth bomb of sequences",
			input: "kind: ConfigMap\n---\n" + strings.Repeat("[", 101) + strings.Repeat("]", 101) + "\n",
			is:    ErrTooDeep,
			doc:   2,
			says:  []string{"more than 100 levels"},
		},
		{
			// As for kubectl, a mapping or a sequence is no key.
			name:  "a mapping as a key",
			input: "kind: A\n---\n? " + strings.Repeat("{a: ", 150) + "x" + strings.Repeat("}", 150) + "\n: v\n",
			doc:   2,
			says:  []string{"invalid map key"},
		},
		{
			// Deeper than the YAML library goes: its own limit answers, still as an error in document 1.
			name:  "depth bomb beyond the parser's limit",
			input: strings.Repeat("[", 1<<20),
			doc:   1,
			says:  []string{"depth"},
		},
		{
			name:  "alias bomb",
			input: aliasBomb(),
			doc:   1,
			says:  []string{"aliasing"},
		},
		{
			name:   "one byte over the size limit",
			limits: Limits{MaxBytes: 20},
			input:  "kind: Pod\n# 21 bytes\n",
			is:     ErrTooLarge,
			says:   []string{"more than 20 bytes"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.limits.Images(strings.NewReader(tt.input))
			if err == nil {
				t.Fatalf("Images = %q, want an error", got)
			}
			if got != nil {
				t.Errorf("Images returned %q with its error", got)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v does not wrap %v", err, tt.is)
			}
			var de *DocumentError
			if errors.As(err, &de) != (tt.doc != 0) {
				t.Fatalf("error %T %v: DocumentError is %v, want %v", err, err, de != nil, tt.doc != 0)
			}
			if de != nil && (de.Document != tt.doc || de.Object != tt.object || (tt.path != "" && de.Path != tt.path)) {
				t.Errorf("error in document %d, object %q, path %q; want %d, %q, %q", de.Document, de.Object, de.Path, tt.doc, tt.object, tt.path)
			}
			for _, s := range tt.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
			if len(err.Error()) > 1000 {
				t.Errorf("error is %d bytes long", len(err.Error()))
			}
		})
	}
}

// aliasBomb returns a "billion laughs" document: nine levels of nine aliases each.
func aliasBomb() string {
	var b strings.Builder
	b.WriteString("a: &a [\"lol\"]\n")
	prev := "a"
	for _, c := range "bcdefghij" {
		b.WriteString(string(c) + ": &" + string(c) + " [")
		for i := range 9 {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString("*" + prev)
		}
		b.WriteString("]\n")
		prev = string(c)
	}
	return b.String()
}

// TestImagesLimitsBoundaries holds that the limits are inclusive: input of exactly MaxBytes and a document of
// exactly MaxDepth levels are read.
func TestImagesLimitsBoundaries(t *testing.T) {
	tests := []struct {
		name   string
		limits Limits
		input  string
		want   []string
	}{
		{
			name:   "exactly MaxBytes",
			limits: Limits{MaxBytes: int64(len("containers: [{image: x}]\n"))},
			input:  "containers: [{image: x}]\n",
			want:   []string{"x"},
		},
		{
			// Levels: the document, containers, the container.
			name:   "exactly MaxDepth",
			limits: Limits{MaxDepth: 3},
			input:  "containers: [{image: x}]\n",
			want:   []string{"x"},
		},
		{
			name:  "100 levels by default",
			input: strings.Repeat("[", 100) + strings.Repeat("]", 100) + "\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.limits.Images(strings.NewReader(tt.input))
			if err != nil {
				t.Fatalf("Images: %v", err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("Images = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestImagesErrorCutsLongNames holds that an error repeats at most a few hundred bytes of a name or path from
// the input, however long they are.
func TestImagesErrorCutsLongNames(t *testing.T) {
	long := strings.Repeat("n", 100000)
	// Implicit keys are at most 1024 bytes in YAML; explicit ones ("? key") are not bounded.
	input := "kind: Pod\nmetadata: {name: " + long + "}\nspec:\n  ? " + long + "\n  :\n    containers: [{image: 'Bad'}]\n"
	_, err := Images(strings.NewReader(input))
	var de *DocumentError
	if !errors.As(err, &de) || !errors.Is(err, names.ErrNameInvalid) {
		t.Fatalf("error %v, want a DocumentError about the image", err)
	}
	if !strings.HasPrefix(de.Object, "Pod/nnn") || !strings.HasPrefix(de.Path, "spec.nnn") {
		t.Errorf("object %.20q..., path %.20q...", de.Object, de.Path)
	}
	if len(de.Object) > maxShown+3 || len(de.Path) > maxShown+3 || len(err.Error()) > 1000 {
		t.Errorf("object %d bytes, path %d bytes, message %d bytes", len(de.Object), len(de.Path), len(err.Error()))
	}
}

// TestImagesReadError holds that a failing reader is an error, not a short list.
func TestImagesReadError(t *testing.T) {
	boom := errors.New("boom")
	got, err := Images(iotest.ErrReader(boom))
	if !errors.Is(err, boom) || got != nil {
		t.Errorf("Images = %q, %v; want the reader's error", got, err)
	}
}

// FuzzImages holds that Images never panics, and that what it returns is a list of distinct references that
// names.ParseReference accepts.
func FuzzImages(f *testing.F) {
	f.Add(readFixture(f, "helm-template.yaml"))
	f.Add(readFixture(f, "kubectl-get.json"))
	f.Add("containers: [{image: nginx}]\n---\n- [{initContainers: [{image: 'a:1'}]}]\n")
	f.Add("? [a]\n: {containers: [{image: x}]}\n")
	f.Add(aliasBomb())
	f.Fuzz(func(t *testing.T, s string) {
		got, err := Limits{MaxBytes: 1 << 16, MaxDepth: 20}.Images(strings.NewReader(s))
		if err != nil {
			if got != nil {
				t.Fatalf("Images returned %q with error %v", got, err)
			}
			return
		}
		seen := map[string]bool{}
		for _, img := range got {
			if seen[img] {
				t.Fatalf("%q listed twice", img)
			}
			seen[img] = true
			if _, err := names.ParseReference(img); err != nil {
				t.Fatalf("Images listed %q: %v", img, err)
			}
		}
	})
}
