package webhook_test

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	admissionv1 "k8s.io/api/admission/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/pullgate/pullgate/rewrite"
	"github.com/pullgate/pullgate/webhook"
)

// The rule the command gives the webhook satisfies its interface.
var _ webhook.Images = (*rewrite.Prefix)(nil)

const (
	pg     = "pullgate.example.com"
	digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
)

// server is the real handler behind an httptest TLS server speaking HTTP/2, as the API server does.
type server struct {
	url    string
	client *http.Client
	logs   *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newServer(t *testing.T, pullSecret string, maxBody int64) *server {
	t.Helper()
	p, err := rewrite.NewPrefix(pg, []string{"registry.k8s.io/**"})
	if err != nil {
		t.Fatal(err)
	}
	logs := &lockedBuffer{}
	h, err := webhook.New(webhook.Options{
		Images:       p,
		PullSecret:   pullSecret,
		Logger:       slog.New(slog.NewJSONHandler(logs, nil)),
		MaxBodyBytes: maxBody,
	})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(h)
	ts.EnableHTTP2 = true
	ts.StartTLS()
	t.Cleanup(ts.Close)
	return &server{url: ts.URL, client: ts.Client(), logs: logs}
}

func pod(containers, initContainers, ephemeral []string, secrets ...string) *corev1.Pod {
	p := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"},
	}
	for i, img := range containers {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "c" + string(rune('0'+i)), Image: img})
	}
	for i, img := range initContainers {
		p.Spec.InitContainers = append(p.Spec.InitContainers, corev1.Container{Name: "i" + string(rune('0'+i)), Image: img})
	}
	for i, img := range ephemeral {
		p.Spec.EphemeralContainers = append(p.Spec.EphemeralContainers, corev1.EphemeralContainer{
			EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "e" + string(rune('0'+i)), Image: img},
		})
	}
	for _, s := range secrets {
		p.Spec.ImagePullSecrets = append(p.Spec.ImagePullSecrets, corev1.LocalObjectReference{Name: s})
	}
	return p
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// reviewOf builds the AdmissionReview v1 the API server sends for a Pod (old non-nil: an UPDATE of
// pods/ephemeralcontainers).
func reviewOf(t *testing.T, uid string, p, old *corev1.Pod, dryRun bool) *admissionv1.AdmissionReview {
	t.Helper()
	req := &admissionv1.AdmissionRequest{
		UID:       types.UID(uid),
		Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
		Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
		Namespace: p.Namespace,
		Name:      p.Name,
		Operation: admissionv1.Create,
		UserInfo:  authenticationv1.UserInfo{Username: "system:serviceaccount:shop:deployer"},
		Object:    runtime.RawExtension{Raw: mustJSON(t, p)},
		DryRun:    &dryRun,
	}
	if old != nil {
		req.Operation, req.SubResource = admissionv1.Update, "ephemeralcontainers"
		req.OldObject = runtime.RawExtension{Raw: mustJSON(t, old)}
	}
	return &admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request:  req,
	}
}

// post sends body to path and returns the status and body.
func (s *server) post(t *testing.T, path, contentType string, body []byte) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.url+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// send posts review and returns the response, after checking what the API server requires of every answer:
// HTTP 200, apiVersion and kind echoed, the request's uid.
func (s *server) send(t *testing.T, path string, review *admissionv1.AdmissionReview) *admissionv1.AdmissionResponse {
	t.Helper()
	status, body := s.post(t, path, "application/json", mustJSON(t, review))
	if status != http.StatusOK {
		t.Fatalf("POST %s: %d %s", path, status, body)
	}
	var out admissionv1.AdmissionReview
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&out); err != nil {
		t.Fatalf("response %s: %v", body, err)
	}
	if out.APIVersion != "admission.k8s.io/v1" || out.Kind != "AdmissionReview" {
		t.Fatalf("response apiVersion %q kind %q; want admission.k8s.io/v1 AdmissionReview", out.APIVersion, out.Kind)
	}
	if out.Request != nil {
		t.Fatalf("response carries the request back: %s", body)
	}
	if out.Response == nil {
		t.Fatalf("no response in %s", body)
	}
	if out.Response.UID != review.Request.UID {
		t.Fatalf("response uid %q; want the request's %q", out.Response.UID, review.Request.UID)
	}
	return out.Response
}

// apply applies resp's JSONPatch to the Pod JSON the review carried, with an RFC 6902 implementation, and
// decodes the result. No patch is the Pod as sent.
func apply(t *testing.T, review *admissionv1.AdmissionReview, resp *admissionv1.AdmissionResponse) *corev1.Pod {
	t.Helper()
	doc := review.Request.Object.Raw
	if resp.Patch != nil || resp.PatchType != nil {
		if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
			t.Fatalf("patchType %v; want JSONPatch", resp.PatchType)
		}
		patch, err := jsonpatch.DecodePatch(resp.Patch)
		if err != nil {
			t.Fatalf("patch %s: %v", resp.Patch, err)
		}
		if doc, err = patch.Apply(doc); err != nil {
			t.Fatalf("applying %s: %v", resp.Patch, err)
		}
	}
	var p corev1.Pod
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		t.Fatalf("patched pod %s: %v", doc, err)
	}
	return &p
}

func images(p *corev1.Pod) (cs, is, es []string) {
	for _, c := range p.Spec.Containers {
		cs = append(cs, c.Image)
	}
	for _, c := range p.Spec.InitContainers {
		is = append(is, c.Image)
	}
	for _, c := range p.Spec.EphemeralContainers {
		es = append(es, c.Image)
	}
	return cs, is, es
}

func secretNames(p *corev1.Pod) []string {
	var out []string
	for _, s := range p.Spec.ImagePullSecrets {
		out = append(out, s.Name)
	}
	return out
}

func TestMutate(t *testing.T) {
	through := func(s string) string { return pg + "/" + s }
	tests := []struct {
		name        string
		secret      string
		pod, old    *corev1.Pod
		want        *corev1.Pod // images and secrets expected after the patch
		wantPatched bool
		warning     string // a substring of a warning
	}{
		{
			name:        "every list rewritten",
			pod:         pod([]string{"nginx:1.25", "ghcr.io/o/app@" + digest}, []string{"busybox"}, []string{"quay.io/q/dbg:1"}),
			want:        pod([]string{through("docker.io/library/nginx:1.25"), through("ghcr.io/o/app@" + digest)}, []string{through("docker.io/library/busybox:latest")}, []string{through("quay.io/q/dbg:1")}),
			wantPatched: true,
		},
		{
			name: "already through pullgate: no patch",
			pod:  pod([]string{through("docker.io/library/nginx:1.25")}, nil, nil),
			want: pod([]string{through("docker.io/library/nginx:1.25")}, nil, nil),
		},
		{
			name: "excluded: no patch",
			pod:  pod([]string{"registry.k8s.io/pause:3.9"}, nil, nil),
			want: pod([]string{"registry.k8s.io/pause:3.9"}, nil, nil),
		},
		{
			name:        "only what differs is replaced",
			pod:         pod([]string{through("docker.io/library/nginx:1.25"), "redis:7", "registry.k8s.io/pause:3.9"}, nil, nil),
			want:        pod([]string{through("docker.io/library/nginx:1.25"), through("docker.io/library/redis:7"), "registry.k8s.io/pause:3.9"}, nil, nil),
			wantPatched: true,
		},
		{
			name:        "a registry with a port is left with a warning",
			pod:         pod([]string{"localhost:5000/app:1", "nginx"}, nil, nil),
			want:        pod([]string{"localhost:5000/app:1", through("docker.io/library/nginx:latest")}, nil, nil),
			wantPatched: true,
			warning:     `container "c0": image left as written`,
		},
		{
			name:        "pull secret added",
			secret:      "pullgate-pull",
			pod:         pod([]string{"nginx"}, nil, nil),
			want:        pod([]string{through("docker.io/library/nginx:latest")}, nil, nil, "pullgate-pull"),
			wantPatched: true,
		},
		{
			name:        "pull secret appended",
			secret:      "pullgate-pull",
			pod:         pod([]string{"nginx"}, nil, nil, "other"),
			want:        pod([]string{through("docker.io/library/nginx:latest")}, nil, nil, "other", "pullgate-pull"),
			wantPatched: true,
		},
		{
			name:   "pull secret added to a Pod already on pullgate",
			secret: "pullgate-pull",
			pod:    pod([]string{through("docker.io/library/nginx:1")}, nil, nil),
			want:   pod([]string{through("docker.io/library/nginx:1")}, nil, nil, "pullgate-pull"),
		},
		{
			name:   "pull secret already there: no patch",
			secret: "pullgate-pull",
			pod:    pod([]string{through("docker.io/library/nginx:1")}, nil, nil, "pullgate-pull"),
			want:   pod([]string{through("docker.io/library/nginx:1")}, nil, nil, "pullgate-pull"),
		},
		{
			name:   "no pull secret for a Pod that pulls nothing through pullgate",
			secret: "pullgate-pull",
			pod:    pod([]string{"registry.k8s.io/pause:3.9"}, nil, nil),
			want:   pod([]string{"registry.k8s.io/pause:3.9"}, nil, nil),
		},
		{
			// kubectl debug: the running containers keep their images (a new image would restart them), the
			// ephemeral container is rewritten, and imagePullSecrets, which an UPDATE cannot change, are left.
			name:        "ephemeral container added by an UPDATE",
			secret:      "pullgate-pull",
			old:         pod([]string{"nginx:1.25"}, []string{"busybox"}, nil),
			pod:         pod([]string{"nginx:1.25"}, []string{"busybox"}, []string{"busybox:1.36"}),
			want:        pod([]string{"nginx:1.25"}, []string{"busybox"}, []string{through("docker.io/library/busybox:1.36")}),
			wantPatched: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newServer(t, tt.secret, 0)
			review := reviewOf(t, "uid-"+tt.name, tt.pod, tt.old, false)
			resp := s.send(t, "/mutate", review)
			if !resp.Allowed || resp.Result != nil {
				t.Fatalf("allowed %v result %+v; want allowed", resp.Allowed, resp.Result)
			}
			wc, wi, we := images(tt.want)
			pc, pi, pe := images(tt.pod)
			same := slices.Equal(pc, wc) && slices.Equal(pi, wi) && slices.Equal(pe, we) && slices.Equal(secretNames(tt.pod), secretNames(tt.want))
			if same && (resp.Patch != nil || resp.PatchType != nil) {
				t.Fatalf("patch %s for a Pod that needs none", resp.Patch)
			}
			got := apply(t, review, resp)
			gc, gi, ge := images(got)
			if !slices.Equal(gc, wc) || !slices.Equal(gi, wi) || !slices.Equal(ge, we) {
				t.Fatalf("after the patch %s:\ncontainers %q init %q ephemeral %q\nwant %q %q %q", resp.Patch, gc, gi, ge, wc, wi, we)
			}
			if g, w := secretNames(got), secretNames(tt.want); !slices.Equal(g, w) {
				t.Fatalf("imagePullSecrets %q; want %q", g, w)
			}
			if tt.warning != "" && !slices.ContainsFunc(resp.Warnings, func(w string) bool { return strings.Contains(w, tt.warning) }) {
				t.Fatalf("warnings %q; want one with %q", resp.Warnings, tt.warning)
			}
			if tt.warning == "" && len(resp.Warnings) > 0 {
				t.Fatalf("warnings %q; want none", resp.Warnings)
			}
			if tt.wantPatched != (countReplaces(t, resp.Patch) > 0) {
				t.Fatalf("patch %s; want an image replaced: %v", resp.Patch, tt.wantPatched)
			}

			// Idempotence: the patched Pod, reviewed again (as reinvocationPolicy IfNeeded does), needs nothing.
			again := reviewOf(t, "uid-again", got, tt.old, false)
			if resp := s.send(t, "/mutate", again); resp.Patch != nil || resp.PatchType != nil {
				t.Fatalf("second review patched again: %s", resp.Patch)
			}
			// And what the mutating webhook wrote, the validating one allows.
			if resp := s.send(t, "/validate", again); !resp.Allowed && tt.warning == "" {
				t.Fatalf("validate denies the mutated Pod: %+v", resp.Result)
			}
		})
	}
}

func countReplaces(t *testing.T, patch []byte) int {
	t.Helper()
	if patch == nil {
		return 0
	}
	var ops []struct{ Op, Path string }
	if err := json.Unmarshal(patch, &ops); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, op := range ops {
		if op.Op == "replace" && strings.HasSuffix(op.Path, "/image") {
			n++
		}
	}
	return n
}

func TestValidate(t *testing.T) {
	through := func(s string) string { return pg + "/" + s }
	tests := []struct {
		name     string
		pod, old *corev1.Pod
		denied   []string // substrings of the message; none: allowed
	}{
		{name: "all through pullgate", pod: pod([]string{through("docker.io/library/nginx:1")}, []string{through("ghcr.io/o/i@" + digest)}, nil)},
		{name: "excluded", pod: pod([]string{"registry.k8s.io/pause:3.9"}, nil, nil)},
		{
			name: "each image not through pullgate is named with its container",
			pod:  pod([]string{through("docker.io/library/nginx:1"), "nginx:1.25"}, []string{"ghcr.io/o/init:2"}, []string{"busybox"}),
			denied: []string{
				`container "c1": `, `"nginx:1.25" is pulled from docker.io`,
				`initContainer "i0": `, `"ghcr.io/o/init:2" is pulled from ghcr.io`,
				`ephemeralContainer "e0": `, `"busybox"`,
				"through " + pg,
			},
		},
		{name: "an invalid reference", pod: pod([]string{"Nginx:1"}, nil, nil), denied: []string{`container "c0": `, `"Nginx:1"`}},
		{name: "pullgate's name inside another registry's path", pod: pod([]string{"ghcr.io/" + pg + "/x:1"}, nil, nil), denied: []string{`"ghcr.io/` + pg + `/x:1" is pulled from ghcr.io`}},
		{
			// An UPDATE judges what it brings: a Pod running from before the webhook is not refused a debug
			// container that comes through pullgate...
			name: "UPDATE: running containers are not judged again",
			old:  pod([]string{"nginx:1.25"}, nil, nil),
			pod:  pod([]string{"nginx:1.25"}, nil, []string{through("docker.io/library/busybox:1")}),
		},
		{
			// ...but the debug container itself must come through pullgate.
			name:   "UPDATE: a new ephemeral container is judged",
			old:    pod([]string{through("docker.io/library/nginx:1")}, nil, nil),
			pod:    pod([]string{through("docker.io/library/nginx:1")}, nil, []string{"busybox:1.36"}),
			denied: []string{`ephemeralContainer "e0": `, `"busybox:1.36"`},
		},
	}
	s := newServer(t, "", 0)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := s.send(t, "/validate", reviewOf(t, "uid-"+tt.name, tt.pod, tt.old, false))
			if resp.Patch != nil || resp.PatchType != nil {
				t.Fatalf("validate answered a patch: %s", resp.Patch)
			}
			if len(tt.denied) == 0 {
				if !resp.Allowed {
					t.Fatalf("denied: %+v", resp.Result)
				}
				return
			}
			if resp.Allowed || resp.Result == nil {
				t.Fatalf("allowed; want denied")
			}
			if resp.Result.Code != http.StatusForbidden || resp.Result.Reason != metav1.StatusReasonForbidden || resp.Result.Status != metav1.StatusFailure {
				t.Fatalf("result %+v; want Failure, 403 Forbidden", resp.Result)
			}
			for _, want := range tt.denied {
				if !strings.Contains(resp.Result.Message, want) {
					t.Errorf("message %q lacks %q", resp.Result.Message, want)
				}
			}
		})
	}
}

func TestValidateMessageIsBounded(t *testing.T) {
	var many []string
	for range 50 {
		many = append(many, "docker.io/library/nginx:1")
	}
	s := newServer(t, "", 0)
	resp := s.send(t, "/validate", reviewOf(t, "uid", pod(many, nil, nil), nil, false))
	if resp.Allowed {
		t.Fatal("allowed")
	}
	if n := strings.Count(resp.Result.Message, "is pulled from"); n != 10 {
		t.Fatalf("the message names %d images; want the first 10", n)
	}
	if !strings.HasSuffix(resp.Result.Message, "and 40 more") {
		t.Fatalf("message %q does not say how many more", resp.Result.Message)
	}
}

// TestDryRun: the webhook has no side effects, so a dry run gets the answer a real request gets.
func TestDryRun(t *testing.T) {
	s := newServer(t, "pullgate-pull", 0)
	p := pod([]string{"nginx:1.25"}, nil, nil)
	for _, path := range []string{"/mutate", "/validate"} {
		t.Run(path, func(t *testing.T) {
			real := s.send(t, path, reviewOf(t, "same", p, nil, false))
			dry := s.send(t, path, reviewOf(t, "same", p, nil, true))
			if a, b := mustJSON(t, real), mustJSON(t, dry); !bytes.Equal(a, b) {
				t.Fatalf("dry run answered %s; a real request %s", b, a)
			}
		})
	}
	if !strings.Contains(s.logs.String(), `"dryRun":true`) {
		t.Fatalf("the log does not say which reviews were dry runs:\n%s", s.logs)
	}
}

// TestNotJudged: what the configuration should not send (another kind, a DELETE) is allowed unchanged, so
// that a too-wide rule never blocks the cluster.
func TestNotJudged(t *testing.T) {
	s := newServer(t, "pullgate-pull", 0)
	deploy := reviewOf(t, "uid-deploy", pod([]string{"nginx"}, nil, nil), nil, false)
	deploy.Request.Kind = metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}
	deploy.Request.Object.Raw = []byte(`{"apiVersion":"apps/v1","kind":"Deployment","spec":{"template":{"spec":{"containers":[{"name":"a","image":"nginx"}]}}}}`)
	del := reviewOf(t, "uid-delete", pod([]string{"nginx"}, nil, nil), nil, false)
	del.Request.Operation, del.Request.OldObject, del.Request.Object = admissionv1.Delete, del.Request.Object, runtime.RawExtension{}
	binding := reviewOf(t, "uid-binding", pod([]string{"nginx"}, nil, nil), nil, false)
	binding.Request.Kind, binding.Request.SubResource = metav1.GroupVersionKind{Version: "v1", Kind: "Binding"}, "binding"
	binding.Request.Object.Raw = []byte(`{"apiVersion":"v1","kind":"Binding","target":{"name":"node1"}}`)
	// A custom resource called Pod, shaped like one, is not a Pod.
	other := reviewOf(t, "uid-other", pod([]string{"nginx"}, nil, nil), nil, false)
	other.Request.Kind = metav1.GroupVersionKind{Group: "example.com", Version: "v1", Kind: "Pod"}
	for _, tc := range []struct {
		name   string
		review *admissionv1.AdmissionReview
	}{{"Deployment", deploy}, {"DELETE", del}, {"pods/binding", binding}, {"example.com Pod", other}} {
		for _, path := range []string{"/mutate", "/validate"} {
			t.Run(tc.name+path, func(t *testing.T) {
				resp := s.send(t, path, tc.review)
				if !resp.Allowed || resp.Patch != nil || resp.PatchType != nil {
					t.Fatalf("allowed %v patch %s; want allowed, unchanged", resp.Allowed, resp.Patch)
				}
			})
		}
	}
}

func TestMalformed(t *testing.T) {
	const max = 64 << 10
	s := newServer(t, "", max)
	good := func(edit func(*admissionv1.AdmissionReview)) []byte {
		r := reviewOf(t, "uid", pod([]string{"nginx"}, nil, nil), nil, false)
		edit(r)
		return mustJSON(t, r)
	}
	huge := pod([]string{"nginx"}, nil, nil)
	huge.Annotations = map[string]string{"big": strings.Repeat("x", max)}
	tests := []struct {
		name, path, contentType string
		body                    []byte
		status                  int
		message                 string
	}{
		{"not JSON", "/mutate", "application/json", []byte("<xml/>"), 400, "not an AdmissionReview"},
		{"empty body", "/validate", "application/json", nil, 400, "not an AdmissionReview"},
		{"JSON, not an object", "/mutate", "application/json", []byte(`[1,2]`), 400, "not an AdmissionReview"},
		{"v1beta1", "/mutate", "application/json", good(func(r *admissionv1.AdmissionReview) { r.APIVersion = "admission.k8s.io/v1beta1" }), 400, "only admission.k8s.io/v1"},
		{"no apiVersion", "/validate", "application/json", good(func(r *admissionv1.AdmissionReview) { r.TypeMeta = metav1.TypeMeta{} }), 400, "only admission.k8s.io/v1"},
		{"wrong kind", "/mutate", "application/json", good(func(r *admissionv1.AdmissionReview) { r.Kind = "TokenReview" }), 400, "only admission.k8s.io/v1"},
		{"no request", "/mutate", "application/json", good(func(r *admissionv1.AdmissionReview) { r.Request = nil }), 400, "no request"},
		{"no uid", "/validate", "application/json", good(func(r *admissionv1.AdmissionReview) { r.Request.UID = "" }), 400, "no uid"},
		{"no object", "/mutate", "application/json", good(func(r *admissionv1.AdmissionReview) { r.Request.Object = runtime.RawExtension{} }), 400, "request.object is empty"},
		{"object not a Pod", "/validate", "application/json", good(func(r *admissionv1.AdmissionReview) {
			r.Request.Object.Raw = []byte(`{"kind":"Pod","spec":{"containers":"nginx"}}`)
		}), 400, "request.object is not a Pod"},
		{"UPDATE without oldObject", "/mutate", "application/json", good(func(r *admissionv1.AdmissionReview) { r.Request.Operation = admissionv1.Update }), 400, "request.oldObject is empty"},
		{"not application/json", "/mutate", "text/plain", good(func(*admissionv1.AdmissionReview) {}), 415, "application/json"},
		{"oversize", "/mutate", "application/json", mustJSON(t, reviewOf(t, "uid", huge, nil, false)), 413, "larger than"},
		{"oversize garbage", "/validate", "application/json", bytes.Repeat([]byte("{"), 10*max), 413, "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := s.post(t, tt.path, tt.contentType, tt.body)
			if status != tt.status || !strings.Contains(string(body), tt.message) {
				t.Fatalf("%d %q; want %d with %q", status, body, tt.status, tt.message)
			}
		})
	}
	t.Run("GET /mutate", func(t *testing.T) {
		resp, err := s.client.Get(s.url + "/mutate")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Fatalf("GET /mutate: %d; want 405", resp.StatusCode)
		}
	})
	t.Run("healthz", func(t *testing.T) {
		resp, err := s.client.Get(s.url + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /healthz: %d", resp.StatusCode)
		}
	})
}

// TestLog: one line per review, with what an operator needs and not the Pod's content.
func TestLog(t *testing.T) {
	s := newServer(t, "pullgate-pull", 0)
	p := pod([]string{"nginx", "redis"}, nil, nil)
	p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "PASSWORD", Value: "hunter2"}}
	s.send(t, "/mutate", reviewOf(t, "uid-log", p, nil, false))
	lines := strings.Split(strings.TrimSpace(s.logs.String()), "\n")
	if len(lines) != 1 {
		t.Fatalf("%d log lines; want 1:\n%s", len(lines), s.logs)
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"uid": "uid-log", "namespace": "shop", "name": "web", "allowed": true, "patched": float64(2), "path": "/mutate"}
	for k, v := range want {
		if rec[k] != v {
			t.Errorf("log %s = %v; want %v (%s)", k, rec[k], v, lines[0])
		}
	}
	if strings.Contains(lines[0], "hunter2") {
		t.Fatalf("the log holds the Pod's content: %s", lines[0])
	}
}

func TestNewRefuses(t *testing.T) {
	p, err := rewrite.NewPrefix(pg, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		o    webhook.Options
	}{
		{"no rule", webhook.Options{}},
		{"secret name with a slash", webhook.Options{Images: p, PullSecret: "ns/secret"}},
		{"secret name upper case", webhook.Options{Images: p, PullSecret: "Pull"}},
		{"secret name ends in a dash", webhook.Options{Images: p, PullSecret: "pull-"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := webhook.New(tc.o); err == nil {
				t.Fatal("New accepted it")
			}
		})
	}
	if _, err := webhook.New(webhook.Options{Images: p, PullSecret: "pullgate.pull-1"}); err != nil {
		t.Fatalf("a valid secret name: %v", err)
	}
}

func TestMutateWarningsAreBounded(t *testing.T) {
	var many []string
	for i := range 12 {
		many = append(many, "localhost:5000/app"+strings.Repeat("x", 300)+string(rune('a'+i)))
	}
	s := newServer(t, "", 0)
	resp := s.send(t, "/mutate", reviewOf(t, "uid", pod(many, nil, nil), nil, false))
	if !resp.Allowed || resp.Patch != nil {
		t.Fatalf("allowed %v patch %s; want allowed, unchanged", resp.Allowed, resp.Patch)
	}
	if len(resp.Warnings) != 11 || !strings.Contains(resp.Warnings[10], "and 2 more") {
		t.Fatalf("%d warnings, the last %q; want 10 and a count of the rest", len(resp.Warnings), resp.Warnings[len(resp.Warnings)-1])
	}
	for _, w := range resp.Warnings {
		if len(w) > 256 {
			t.Fatalf("a warning of %d bytes: %q", len(w), w)
		}
	}
}
