package rewrite

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"

	yaml "gopkg.in/yaml.v3"

	"github.com/pullgate/pullgate/names"
)

const (
	testRegistry = "pullgate.example.com"
	testSecret   = "pullgate-creds"
)

// testPrefix is pullgate at pullgate.example.com, with registry.k8s.io left alone.
func testPrefix(t testing.TB) *Prefix {
	t.Helper()
	p, err := NewPrefix(testRegistry, []string{"registry.k8s.io/**"})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// fakeDigest is what testResolve pins every tag to: a digest made of the reference's length, so that
// different references get different digests.
func fakeDigest(image string) string {
	return fmt.Sprintf("sha256:%064x", len(image))
}

// testResolve resolves every reference to fakeDigest, counting the calls by reference.
func testResolve(calls map[string]int) func(context.Context, string) (string, error) {
	return func(_ context.Context, image string) (string, error) {
		calls[image]++
		return fakeDigest(image), nil
	}
}

func rewriteString(t testing.TB, in string, o Options) (string, Report, error) {
	t.Helper()
	var out bytes.Buffer
	rep, err := Limits{}.Rewrite(context.Background(), strings.NewReader(in), &out, o)
	if err != nil && out.Len() > 0 {
		t.Fatalf("Rewrite wrote %d bytes with its error %v", out.Len(), err)
	}
	return out.String(), rep, err
}

// TestRewriteGolden rewrites a `helm template` output (comments, an anchor used twice, odd quoting, a tag,
// flow mappings, a CronJob, a CRD whose schema looks like a pod spec, a custom resource with a pod template,
// a List, documents without images) with a prefix, an exclude, a pull secret and digest pins, and compares
// it with the golden file. PULLGATE_UPDATE_GOLDEN=1 writes the golden file instead.
func TestRewriteGolden(t *testing.T) {
	tests := []struct {
		name, in, out string
		o             func(calls map[string]int) Options
	}{
		{"prefix", "rewrite/helm-template.yaml", "helm-template.prefix.yaml", func(map[string]int) Options {
			return Options{Prefix: testPrefix(t)}
		}},
		{"pull secret and pins", "rewrite/helm-template.yaml", "helm-template.all.yaml", func(calls map[string]int) Options {
			return Options{Prefix: testPrefix(t), PullSecret: testSecret, Resolve: testResolve(calls)}
		}},
		{"JSON", "kubectl-get.json", "kubectl-get.all.json", func(calls map[string]int) Options {
			p, err := NewPrefix(testRegistry, []string{"localhost:5000/**", "registry.example.com:8443/**"})
			if err != nil {
				t.Fatal(err)
			}
			return Options{Prefix: p, PullSecret: testSecret, Resolve: testResolve(calls)}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := readFixture(t, tt.in)
			calls := map[string]int{}
			got, rep, err := rewriteString(t, in, tt.o(calls))
			if err != nil {
				t.Fatalf("Rewrite: %v", err)
			}
			golden := "testdata/rewrite/" + tt.out
			if os.Getenv("PULLGATE_UPDATE_GOLDEN") == "1" {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if want := readFixture(t, "rewrite/"+tt.out); got != want {
				t.Errorf("Rewrite differs from %s:\n%s", golden, got)
			}
			for ref, n := range calls {
				if n != 1 {
					t.Errorf("Resolve(%q) called %d times, want once", ref, n)
				}
			}
			checkPreserved(t, in, got, rep, testSecret)
			if strings.HasSuffix(tt.in, ".json") && !json.Valid([]byte(got)) {
				t.Errorf("the rewritten JSON is not valid JSON")
			}
		})
	}
}

// checkPreserved holds that out is in with only the report's images replaced (on their own lines, the rest
// of each line equal) and pull-secret lines inserted: every other byte is equal.
func checkPreserved(t *testing.T, in, out string, rep Report, secret string) {
	t.Helper()
	inLines, outLines := strings.SplitAfter(in, "\n"), strings.SplitAfter(out, "\n")
	changed, inserted := 0, 0
	i, j := 0, 0
	for i < len(inLines) && j < len(outLines) {
		a, b := inLines[i], outLines[j]
		switch {
		case a == b:
			i, j = i+1, j+1
		case replacedImage(a, b, rep, secret):
			changed++
			i, j = i+1, j+1
		case isSecretLine(b, secret):
			inserted++
			j++
		default:
			t.Fatalf("line %d of the input %q became %q", i+1, a, b)
		}
	}
	for ; j < len(outLines) && isSecretLine(outLines[j], secret); j++ {
		inserted++
	}
	if i != len(inLines) || j != len(outLines) {
		t.Fatalf("the output has %d lines left over, the input %d", len(outLines)-j, len(inLines)-i)
	}
	if changed < len(rep.Images) && !strings.HasPrefix(strings.TrimSpace(in), "{") {
		t.Errorf("%d lines changed for %d images", changed, len(rep.Images))
	}
	if len(rep.PullSecrets) > 0 && inserted == 0 && !strings.HasPrefix(strings.TrimSpace(in), "{") {
		t.Errorf("no pull secret lines inserted for %d pod specs", len(rep.PullSecrets))
	}
}

// replacedImage reports whether line b is line a with some of rep's images replaced and pull secrets
// inserted in flow style.
func replacedImage(a, b string, rep Report, secret string) bool {
	for _, ins := range []string{`"imagePullSecrets": [{"name": "` + secret + `"}], `, `{"name": "` + secret + `"}, `, `{"name": "` + secret + `"}`} {
		b = strings.Replace(b, ins, "", 1)
	}
	for _, c := range rep.Images {
		if replaceWhole(a, c.From, c.To) == b {
			return true
		}
	}
	return a == b
}

// replaceWhole replaces the occurrences of image in line that are not part of a longer reference.
func replaceWhole(line, image, with string) string {
	var out strings.Builder
	for {
		i := strings.Index(line, image)
		if i < 0 {
			out.WriteString(line)
			return out.String()
		}
		end := i + len(image)
		whole := end == len(line) || !strings.ContainsRune("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/:@", rune(line[end]))
		if i > 0 && strings.ContainsRune("abcdefghijklmnopqrstuvwxyz0123456789._-/:@", rune(line[i-1])) {
			whole = false
		}
		out.WriteString(line[:i])
		if whole {
			out.WriteString(with)
		} else {
			out.WriteString(image)
		}
		line = line[end:]
	}
}

// isSecretLine reports whether line is one Rewrite inserts for a pull secret.
func isSecretLine(line, secret string) bool {
	s := strings.TrimSpace(line)
	return s == "imagePullSecrets:" || s == "- name: "+secret || s == `"imagePullSecrets": [{"name": "`+secret+`"}],` || s == `{"name": "`+secret+`"},`
}

// TestRewrite holds, on small inputs, exactly what Rewrite writes: quoting kept, properties skipped, line
// ends and byte order marks kept, pull secrets in each place a pod spec can be written.
func TestRewrite(t *testing.T) {
	const d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	tests := []struct {
		name, in, want string
		secret         string
	}{
		{
			name: "plain, single and double quotes kept",
			in:   "kind: Pod\nspec:\n  containers:\n  - image: nginx\n  - image: 'nginx:1'\n  - image: \"nginx:2\"\n",
			want: "kind: Pod\nspec:\n  containers:\n  - image: pullgate.example.com/docker.io/library/nginx:latest\n  - image: 'pullgate.example.com/docker.io/library/nginx:1'\n  - image: \"pullgate.example.com/docker.io/library/nginx:2\"\n",
		},
		{
			name: "escapes in double quotes are rewritten whole",
			in:   "containers:\n- image: \"ngin\\x78:1\" # c\n",
			want: "containers:\n- image: \"pullgate.example.com/docker.io/library/nginx:1\" # c\n",
		},
		{
			name: "a double-quoted image over two lines",
			in:   "containers:\n- image: \"nginx\\\n    :1\"\n  name: a\n",
			want: "containers:\n- image: \"pullgate.example.com/docker.io/library/nginx:1\"\n  name: a\n",
		},
		{
			name: "anchor, tag and comment before the image",
			in:   "containers:\n- image: &i !!str # the image\n    nginx:1\n- image: *i\n",
			want: "containers:\n- image: &i !!str # the image\n    pullgate.example.com/docker.io/library/nginx:1\n- image: *i\n",
		},
		{
			name: "merge key",
			in:   "x-base: &b {image: \"nginx:1\", imagePullPolicy: Always}\ncontainers:\n- <<: *b\n  name: a\n",
			want: "x-base: &b {image: \"pullgate.example.com/docker.io/library/nginx:1\", imagePullPolicy: Always}\ncontainers:\n- <<: *b\n  name: a\n",
		},
		{
			name:   "CRLF and a byte order mark",
			in:     "\ufeffkind: Pod\r\nspec:\r\n  containers:\r\n  - image: nginx:1\r\n",
			want:   "\ufeffkind: Pod\r\nspec:\r\n  imagePullSecrets:\r\n    - name: s\r\n  containers:\r\n  - image: pullgate.example.com/docker.io/library/nginx:1\r\n",
			secret: "s",
		},
		{
			name: "multi-byte characters before the image on its line",
			in:   "containers: [{name: \"é€𝄞\", image: nginx:1}]\n",
			want: "containers: [{name: \"é€𝄞\", image: pullgate.example.com/docker.io/library/nginx:1}]\n",
		},
		{
			name: "digest and excluded kept, already through pullgate unchanged",
			in:   "containers:\n- image: ghcr.io/o/r@" + d + "\n- image: registry.k8s.io/pause:3.9\n- image: pullgate.example.com/ghcr.io/o/r:1\n",
			want: "containers:\n- image: pullgate.example.com/ghcr.io/o/r@" + d + "\n- image: registry.k8s.io/pause:3.9\n- image: pullgate.example.com/ghcr.io/o/r:1\n",
		},
		{
			name:   "pull secret: a pod spec that is a list entry",
			in:     "specs:\n- containers:\n  - image: nginx:1\n",
			want:   "specs:\n- imagePullSecrets:\n    - name: s\n  containers:\n  - image: pullgate.example.com/docker.io/library/nginx:1\n",
			secret: "s",
		},
		{
			name:   "pull secret: a flow pod spec",
			in:     "spec: {containers: [{image: nginx:1}]}\n",
			want:   "spec: {\"imagePullSecrets\": [{\"name\": \"s\"}], containers: [{image: pullgate.example.com/docker.io/library/nginx:1}]}\n",
			secret: "s",
		},
		{
			name:   "pull secret: JSON on one line",
			in:     `{"kind":"Pod","spec":{"containers":[{"image":"nginx:1"}]}}`,
			want:   `{"kind":"Pod","spec":{"imagePullSecrets": [{"name": "s"}], "containers":[{"image":"pullgate.example.com/docker.io/library/nginx:1"}]}}`,
			secret: "s",
		},
		{
			name:   "pull secret: an existing block list gets the entry first",
			in:     "spec:\n  imagePullSecrets:\n    - name: other\n  containers:\n  - image: nginx:1\n",
			want:   "spec:\n  imagePullSecrets:\n    - name: s\n    - name: other\n  containers:\n  - image: pullgate.example.com/docker.io/library/nginx:1\n",
			secret: "s",
		},
		{
			name:   "pull secret: an existing empty flow list",
			in:     "spec:\n  imagePullSecrets: []\n  containers:\n  - image: nginx:1\n",
			want:   "spec:\n  imagePullSecrets: [{\"name\": \"s\"}]\n  containers:\n  - image: pullgate.example.com/docker.io/library/nginx:1\n",
			secret: "s",
		},
		{
			name:   "pull secret: already listed",
			in:     "spec:\n  imagePullSecrets: [{name: s}]\n  containers:\n  - image: nginx:1\n",
			want:   "spec:\n  imagePullSecrets: [{name: s}]\n  containers:\n  - image: pullgate.example.com/docker.io/library/nginx:1\n",
			secret: "s",
		},
		{
			name:   "pull secret: not for a pod spec that pulls nothing through pullgate",
			in:     "spec:\n  containers:\n  - image: registry.k8s.io/pause:3.9\n",
			want:   "spec:\n  containers:\n  - image: registry.k8s.io/pause:3.9\n",
			secret: "s",
		},
		{
			name:   "pull secret: a pod spec already through pullgate gets it too",
			in:     "spec:\n  containers:\n  - image: pullgate.example.com/ghcr.io/o/r:1\n",
			want:   "spec:\n  imagePullSecrets:\n    - name: s\n  containers:\n  - image: pullgate.example.com/ghcr.io/o/r:1\n",
			secret: "s",
		},
		{
			// Kubernetes reads YAML 1.1: a plain y is a boolean, and 0o17 a number: neither is an image.
			name: "YAML 1.1 scalars",
			in:   "containers:\n- image: y\n- image: 0o17\n- image: 'y'\n",
			want: "containers:\n- image: y\n- image: 0o17\n- image: 'pullgate.example.com/docker.io/library/y:latest'\n",
		},
		{
			name: "no images: byte for byte, odd spacing and all",
			in:   "# c\n---   \n--- !!map\nkind:    ConfigMap   # x\ndata: {a: 'b'}\n...\n---\n",
			want: "# c\n---   \n--- !!map\nkind:    ConfigMap   # x\ndata: {a: 'b'}\n...\n---\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := Options{Prefix: testPrefix(t), PullSecret: tt.secret}
			got, _, err := rewriteString(t, tt.in, o)
			if err != nil {
				t.Fatalf("Rewrite: %v", err)
			}
			if got != tt.want {
				t.Errorf("Rewrite =\n%s\nwant\n%s", got, tt.want)
			}
			again, rep, err := rewriteString(t, got, o)
			if err != nil || again != got || len(rep.Images)+len(rep.PullSecrets) != 0 {
				t.Errorf("Rewrite of the output = %q, %+v, %v; want it unchanged", again, rep, err)
			}
		})
	}
}

// TestRewriteIdempotent holds that rewriting an output again, with the same options, changes nothing and
// resolves nothing.
func TestRewriteIdempotent(t *testing.T) {
	for _, name := range []string{"rewrite/helm-template.yaml", "kubectl-get.json", "helm-template.yaml"} {
		t.Run(name, func(t *testing.T) {
			p, err := NewPrefix(testRegistry, []string{"localhost:5000/**", "registry.example.com:8443/**", "registry.k8s.io/**"})
			if err != nil {
				t.Fatal(err)
			}
			calls := map[string]int{}
			o := Options{Prefix: p, PullSecret: testSecret, Resolve: testResolve(calls)}
			once, _, err := rewriteString(t, readFixture(t, name), o)
			if err != nil {
				t.Fatal(err)
			}
			clear(calls)
			twice, rep, err := rewriteString(t, once, o)
			if err != nil {
				t.Fatal(err)
			}
			if twice != once || len(rep.Images) != 0 || len(rep.PullSecrets) != 0 || len(calls) != 0 {
				t.Errorf("the second run changed %d images, %d pod specs, resolved %v", len(rep.Images), len(rep.PullSecrets), calls)
			}
		})
	}
}

// TestRewriteReport holds what the report says for the golden input: where each change is.
func TestRewriteReport(t *testing.T) {
	_, rep, err := rewriteString(t, readFixture(t, "rewrite/helm-template.yaml"), Options{Prefix: testPrefix(t), PullSecret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range rep.Images {
		got = append(got, fmt.Sprintf("%d %s %s %s", c.Document, c.Object, c.Path, c.From))
	}
	want := []string{
		"3 Deployment/shop-web spec.template.spec.initContainers[0].image ghcr.io/shop/migrate:2.4.1",
		"3 Deployment/shop-web spec.template.spec.containers[0].image nginx:1.25",
		"3 Deployment/shop-web spec.template.spec.containers[1].image ghcr.io/shop/envoy@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
		"3 Deployment/shop-web spec.template.spec.containers[2].image busybox:1.36",
		"4 CronJob/shop-report spec.jobTemplate.spec.template.spec.containers[0].image ghcr.io/shop/report:v1",
		"6 Worker/shop-worker spec.pool.template.spec.containers[0].image quay.io/shop/worker:3.0",
		"6 Worker/shop-worker spec.pool.template.spec.initContainers[0].image quay.io/shop/warmup:1",
		"7 Pod/shop-debug items[0].spec.containers[0].image ghcr.io/shop/migrate:2.4.1",
		"7 Pod/shop-debug items[0].spec.ephemeralContainers[0].image busybox",
		"7 StatefulSet/shop-db items[1].spec.template.spec.containers[0].image docker.io/library/postgres:16",
	}
	if !slices.Equal(got, want) {
		t.Errorf("report images\n  %q\nwant\n  %q", got, want)
	}
	wantSecrets := []string{
		"document 3 (Deployment/shop-web) spec.template.spec",
		"document 4 (CronJob/shop-report) spec.jobTemplate.spec.template.spec",
		"document 6 (Worker/shop-worker) spec.pool.template.spec",
		"document 7 (Pod/shop-debug) items[0].spec",
	}
	if !slices.Equal(rep.PullSecrets, wantSecrets) {
		t.Errorf("report pull secrets\n  %q\nwant\n  %q", rep.PullSecrets, wantSecrets)
	}
}

// TestRewriteErrors holds what Rewrite refuses, that its errors say where, and that it writes nothing then.
func TestRewriteErrors(t *testing.T) {
	boom := errors.New("manifest unknown")
	tests := []struct {
		name    string
		limits  Limits
		in      string
		o       Options
		is      error
		says    []string
		resolve func(context.Context, string) (string, error)
	}{
		{
			name: "invalid image",
			in:   "kind: Pod\n---\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    spec:\n      containers:\n      - image: Nginx\n",
			is:   names.ErrNameInvalid,
			says: []string{"document 2 (Deployment/web) spec.template.spec.containers[0].image"},
		},
		{
			name: "a registry with a port cannot take a prefix",
			in:   "kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - image: localhost:5000/x:1\n",
			is:   names.ErrNameInvalid,
			says: []string{"document 1 (Pod/p) spec.containers[0].image", "has a port"},
		},
		{
			name: "an image as a block scalar",
			in:   "kind: Pod\nspec:\n  containers:\n  - image: |-\n      nginx:1\n",
			is:   ErrUnsupported,
			says: []string{"document 1 (Pod) spec.containers[0].image", "block scalar"},
		},
		{
			name: "imagePullSecrets that is not a list",
			in:   "kind: Pod\nspec:\n  imagePullSecrets: s\n  containers:\n  - image: nginx:1\n",
			o:    Options{PullSecret: "s"},
			is:   ErrUnsupported,
			says: []string{"document 1 (Pod) spec", "not a list"},
		},
		{
			name: "a pull secret that is no Secret name",
			in:   "kind: Pod\n",
			o:    Options{PullSecret: "Bad_Name"},
			says: []string{`"Bad_Name"`},
		},
		{
			name: "resolving fails",
			in:   "kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - image: nginx:1\n",
			resolve: func(context.Context, string) (string, error) {
				return "", boom
			},
			is:   boom,
			says: []string{"document 1 (Pod/p) spec.containers[0].image", "resolving a digest of pullgate.example.com/docker.io/library/nginx:1", "manifest unknown"},
		},
		{
			name: "resolving answers no digest",
			in:   "containers:\n- image: nginx:1\n",
			resolve: func(context.Context, string) (string, error) {
				return "sha256:abc", nil
			},
			is:   ErrResolve,
			says: []string{`"sha256:abc" is no digest`},
		},
		{
			name:   "one byte over the size limit",
			limits: Limits{MaxBytes: 10},
			in:     "kind: Pod\n#",
			is:     ErrTooLarge,
		},
		{
			name: "UTF-16",
			in:   "\xff\xfek\x00:\x00 \x00v\x00",
			is:   ErrUnsupported,
			says: []string{"UTF-16"},
		},
		{
			name: "alias bomb",
			in:   aliasBomb(),
			says: []string{"aliasing"},
		},
		{
			name:   "too deep",
			limits: Limits{MaxDepth: 3},
			in:     "a: {b: {c: {containers: [{image: x}]}}}\n",
			is:     ErrTooDeep,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := tt.o
			if o.Prefix == nil {
				o.Prefix = testPrefix(t)
			}
			o.Resolve = tt.resolve
			var out bytes.Buffer
			_, err := tt.limits.Rewrite(context.Background(), strings.NewReader(tt.in), &out, o)
			if err == nil {
				t.Fatalf("Rewrite = %q, want an error", out.String())
			}
			if out.Len() != 0 {
				t.Errorf("Rewrite wrote %q with its error", out.String())
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v does not wrap %v", err, tt.is)
			}
			for _, s := range tt.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
			if strings.Contains(err.Error(), "a bug") {
				t.Errorf("error %q blames a bug: the input should have been refused before rewriting", err)
			}
		})
	}
}

// TestRewriteResolvesOnce holds that each reference through pullgate is resolved once, however it is spelled
// in the input, and that excluded images are not resolved, not even on pullgate's own registry.
func TestRewriteResolvesOnce(t *testing.T) {
	p, err := NewPrefix(testRegistry, []string{testRegistry + "/internal/**"})
	if err != nil {
		t.Fatal(err)
	}
	calls := map[string]int{}
	in := "containers:\n- image: nginx:1\n- image: docker.io/library/nginx:1\n- image: index.docker.io/library/nginx:1\n- image: " + testRegistry + "/internal/tool:2\n"
	got, _, err := rewriteString(t, in, Options{Prefix: p, Resolve: testResolve(calls)})
	if err != nil {
		t.Fatal(err)
	}
	const pinned = testRegistry + "/docker.io/library/nginx:1"
	want := map[string]int{pinned: 1}
	if !maps.Equal(calls, want) {
		t.Errorf("Resolve calls %v, want %v", calls, want)
	}
	if n := strings.Count(got, pinned+"@"+fakeDigest(pinned)); n != 3 || !strings.Contains(got, testRegistry+"/internal/tool:2\n") {
		t.Errorf("output:\n%s", got)
	}
}

// TestRewriteCheck holds that the check of an output refuses one that lists other images than the rewrite
// made, or that a second rewrite would change: a splicing mistake fails the run instead of being written.
func TestRewriteCheck(t *testing.T) {
	in := "kind: Pod\nspec:\n  containers:\n  - image: nginx:1\n"
	o := Options{Prefix: testPrefix(t), PullSecret: "s"}
	l := Limits{}.withDefaults()
	rw, out, err := l.rewrite(context.Background(), []byte(in), o)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.check(out, rw, o); err != nil {
		t.Fatalf("check of the right output: %v", err)
	}
	for name, bad := range map[string]string{
		"an image left out":            in,
		"an image cut short":           strings.Replace(string(out), "nginx:1", "nginx:", 1),
		"a pull secret left out":       strings.Replace(string(out), "  imagePullSecrets:\n    - name: s\n", "", 1),
		"a pull secret misplaced":      strings.Replace(string(out), "  imagePullSecrets:\n    - name: s\n", "", 1) + "imagePullSecrets:\n- name: s\n",
		"a stream that does not parse": string(out) + "  bad: [\n",
	} {
		if err := l.check([]byte(bad), rw, o); err == nil {
			t.Errorf("%s: check passed", name)
		}
	}
}

// TestLineStarts holds that lines are counted as the YAML parser counts them.
func TestLineStarts(t *testing.T) {
	got := lineStarts([]byte("\ufeffa\r\nb\rc\nd\u0085e\u2028f\u2029g"))
	want := []int{3, 6, 8, 10, 13, 17, 21}
	if !slices.Equal(got, want) {
		t.Errorf("lineStarts = %v, want %v", got, want)
	}
}

// TestPlainSafe holds when a rewritten plain scalar must be quoted.
func TestPlainSafe(t *testing.T) {
	for s, want := range map[string]bool{
		"pullgate.example.com/docker.io/library/nginx:1.25": true,
		"nginx@sha256:" + hexA:                              true,
		"true":                                              false,
		"null":                                              false,
		"1.5":                                               false,
		"0x10":                                              false,
		"a:":                                                false,
		"-a":                                                false,
		"a b":                                               false,
		"a,b":                                               false,
		"":                                                  false,
	} {
		if got := plainSafe(s); got != want {
			t.Errorf("plainSafe(%q) = %v, want %v", s, got, want)
		}
	}
	n := &yaml.Node{Kind: yaml.ScalarNode}
	if got := quoteLike(n, "true"); got != `"true"` {
		t.Errorf("quoteLike(plain, true) = %s", got)
	}
}

// FuzzRewrite holds that Rewrite never panics, and that when it succeeds its output parses, lists exactly
// the input's images as Prefix.Image rewrites them, and is rewritten to itself.
func FuzzRewrite(f *testing.F) {
	f.Add(readFixture(f, "rewrite/helm-template.yaml"))
	f.Add(readFixture(f, "helm-template.yaml"))
	f.Add(readFixture(f, "kubectl-get.json"))
	f.Add("spec: {containers: [{image: nginx}]}\n---\n- [{initContainers: [{image: 'a:1'}]}]\n")
	f.Add("x: &b {image: \"n\\x78\"}\ncontainers:\n- <<: *b\n- image: *b\n")
	f.Add("\ufeffspec:\r\n  containers:\r\n  - image: !!str &a a\r\n")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := NewPrefix(testRegistry, []string{"registry.k8s.io/**"})
		if err != nil {
			t.Fatal(err)
		}
		l := Limits{MaxBytes: 1 << 16, MaxDepth: 20}
		o := Options{Prefix: p, PullSecret: "s"}
		var out bytes.Buffer
		_, err = l.Rewrite(context.Background(), strings.NewReader(s), &out, o)
		if err != nil {
			if out.Len() != 0 {
				t.Fatalf("Rewrite wrote %q with error %v", out.String(), err)
			}
			return
		}
		before, err := l.Images(strings.NewReader(s))
		if err != nil {
			t.Fatalf("Rewrite took what Images refuses: %v", err)
		}
		var want []string
		for _, img := range before {
			to, _, err := p.Image(img)
			if err != nil {
				t.Fatalf("Rewrite took %q that Prefix refuses: %v", img, err)
			}
			if !slices.Contains(want, to) {
				want = append(want, to)
			}
		}
		after, err := l.Images(bytes.NewReader(out.Bytes()))
		if err != nil {
			t.Fatalf("the output does not parse: %v\n%s", err, out.String())
		}
		if !slices.Equal(after, want) {
			t.Fatalf("the output's images are %q, want %q", after, want)
		}
		var again bytes.Buffer
		if _, err := l.Rewrite(context.Background(), bytes.NewReader(out.Bytes()), &again, o); err != nil || again.String() != out.String() {
			t.Fatalf("rewriting the output again: %v\n%s\nbecame\n%s", err, out.String(), again.String())
		}
	})
}
