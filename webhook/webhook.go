// Package webhook is pullgate's Kubernetes admission webhook for Pods: AdmissionReview v1 over HTTP.
//
// POST /mutate answers with a JSONPatch (RFC 6902) that rewrites every container, initContainer and
// ephemeralContainer image to come through pullgate, and optionally adds an imagePullSecret; POST /validate
// denies a Pod with an image that does not come through pullgate, naming each such image and its container.
// The rule is the caller's (Images, which *rewrite.Prefix satisfies); this package only speaks admission.
//
// The webhook has no side effects (sideEffects: None), so a dryRun review is answered exactly as any other. It
// holds no state between reviews. Bodies are capped; what cannot be read as an AdmissionReview v1 gets HTTP
// 400, so that the webhook configuration's failurePolicy decides, as for an outage.
package webhook

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pullgate/pullgate/names"
)

// Images is the image rule the webhook applies; *rewrite.Prefix satisfies it.
type Images interface {
	// Image returns image as pulled through pullgate and whether that differs from image; an error leaves
	// the image as written.
	Image(image string) (string, bool, error)
	// Check returns nil for an image that comes through pullgate (or is exempt), else why not, naming it.
	Check(image string) error
	// Registry is pullgate's host[:port] as written in image references.
	Registry() string
}

// DefaultMaxBodyBytes is the largest review body read when Options.MaxBodyBytes is zero. The API server
// refuses requests over 3 MiB, and a review of an UPDATE carries the object twice (object and oldObject).
const DefaultMaxBodyBytes = 8 << 20

// Review limits: how many denials and warnings one answer names before it says "and N more".
const (
	maxListed     = 10
	maxWarningLen = 256
)

// Options configures New. Each field's comment says what its zero value means.
type Options struct {
	// Images is the rule; it is required.
	Images Images
	// PullSecret is the name of a Secret added to a created Pod's imagePullSecrets when the Pod pulls an
	// image through pullgate; empty means none is added.
	PullSecret string
	// Logger gets one line per review; nil means no logging.
	Logger *slog.Logger
	// MaxBodyBytes caps a request body; zero means DefaultMaxBodyBytes.
	MaxBodyBytes int64
}

// Handler serves POST /mutate, POST /validate and GET /healthz. It is safe for concurrent use.
type Handler struct {
	images     Images
	pullSecret string
	log        *slog.Logger
	maxBody    int64
	mux        *http.ServeMux
}

// New returns the webhook's handler.
func New(o Options) (*Handler, error) {
	if o.Images == nil {
		return nil, errors.New("webhook: Options.Images is required")
	}
	if o.PullSecret != "" {
		if err := validSecretName(o.PullSecret); err != nil {
			return nil, fmt.Errorf("webhook: pull secret: %w", err)
		}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = DefaultMaxBodyBytes
	}
	h := &Handler{images: o.Images, pullSecret: o.PullSecret, log: o.Logger, maxBody: o.MaxBodyBytes, mux: http.NewServeMux()}
	h.mux.HandleFunc("POST /mutate", func(w http.ResponseWriter, r *http.Request) { h.review(w, r, h.mutate) })
	h.mux.HandleFunc("POST /validate", func(w http.ResponseWriter, r *http.Request) { h.review(w, r, h.validate) })
	h.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	return h, nil
}

// ServeHTTP routes to /mutate, /validate and /healthz.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// validSecretName accepts a Kubernetes object name (an RFC 1123 subdomain), which a Secret's name is.
func validSecretName(s string) error {
	if len(s) > 253 {
		return fmt.Errorf("%q is longer than 253 characters", s)
	}
	for _, label := range strings.Split(s, ".") {
		ok := label != "" && label[0] != '-' && label[len(label)-1] != '-'
		for i := 0; ok && i < len(label); i++ {
			c := label[i]
			ok = c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-'
		}
		if !ok {
			return fmt.Errorf("%q is not a valid Secret name (lower-case letters, digits, '-' and '.')", s)
		}
	}
	return nil
}

// answer is a review's outcome before it is written as an AdmissionResponse.
type answer struct {
	denied   string // non-empty: allowed=false with this message
	patch    []patchOp
	warnings []string
	note     string // why the Pod was not judged (not a Pod, a DELETE), for the log
}

// review reads an AdmissionReview v1, judges it with judge and writes the response.
func (h *Handler) review(w http.ResponseWriter, r *http.Request, judge func(*admissionv1.AdmissionRequest, *corev1.Pod, *corev1.Pod) answer) {
	path := r.URL.Path
	req, status, err := h.read(w, r)
	if err != nil {
		h.log.Warn("admission review refused", "path", path, "status", status, "error", err)
		http.Error(w, "pullgate webhook: "+err.Error(), status)
		return
	}
	var a answer
	pod, old, err := pods(req)
	switch {
	case err != nil:
		h.log.Warn("admission review refused", "path", path, "uid", string(req.UID), "status", http.StatusBadRequest, "error", err)
		http.Error(w, "pullgate webhook: "+err.Error(), http.StatusBadRequest)
		return
	case pod == nil:
		a.note = fmt.Sprintf("%s of %s/%s %s is not judged", req.Operation, req.Kind.Version, req.Kind.Kind, subresource(req))
	default:
		a = judge(req, pod, old)
	}
	resp := &admissionv1.AdmissionResponse{UID: req.UID, Allowed: a.denied == "", Warnings: a.warnings}
	if a.denied != "" {
		resp.Result = &metav1.Status{
			Status:  metav1.StatusFailure,
			Code:    http.StatusForbidden,
			Reason:  metav1.StatusReasonForbidden,
			Message: a.denied,
		}
	}
	if len(a.patch) > 0 {
		p, err := json.Marshal(a.patch)
		if err != nil { // strings and small structs only: cannot happen
			http.Error(w, "pullgate webhook: encoding the patch: "+err.Error(), http.StatusInternalServerError)
			return
		}
		pt := admissionv1.PatchTypeJSONPatch
		resp.Patch, resp.PatchType = p, &pt
	}
	out := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: admissionv1.SchemeGroupVersion.String(), Kind: "AdmissionReview"},
		Response: resp,
	}
	body, err := json.Marshal(out)
	if err != nil {
		http.Error(w, "pullgate webhook: encoding the response: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(body)
	attrs := []any{"path", path, "uid", string(req.UID), "namespace", req.Namespace, "name", podName(req, pod),
		"operation", string(req.Operation), "dryRun", req.DryRun != nil && *req.DryRun, "allowed", resp.Allowed,
		"patched", countImageOps(a.patch)}
	if a.note != "" {
		attrs = append(attrs, "note", a.note)
	}
	h.log.Info("admission review", attrs...)
}

// read decodes the body as an AdmissionReview v1 with a request; the status is for the error.
func (h *Handler) read(w http.ResponseWriter, r *http.Request) (*admissionv1.AdmissionRequest, int, error) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" {
			return nil, http.StatusUnsupportedMediaType, fmt.Errorf("content type %q: an AdmissionReview is application/json", ct)
		}
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.maxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, http.StatusRequestEntityTooLarge, fmt.Errorf("the body is larger than %d bytes", h.maxBody)
		}
		return nil, http.StatusBadRequest, fmt.Errorf("reading the body: %w", err)
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(data, &review); err != nil {
		return nil, http.StatusBadRequest, fmt.Errorf("the body is not an AdmissionReview: %w", err)
	}
	if review.APIVersion != admissionv1.SchemeGroupVersion.String() || review.Kind != "AdmissionReview" {
		return nil, http.StatusBadRequest, fmt.Errorf("apiVersion %q kind %q: only admission.k8s.io/v1 AdmissionReview is served (admissionReviewVersions: [v1])",
			review.APIVersion, review.Kind)
	}
	if review.Request == nil {
		return nil, http.StatusBadRequest, errors.New("the AdmissionReview has no request")
	}
	if review.Request.UID == "" {
		return nil, http.StatusBadRequest, errors.New("the AdmissionReview's request has no uid")
	}
	return review.Request, 0, nil
}

// pods returns the Pod under review and, for an UPDATE, the Pod before it; a nil Pod is a request that is not
// judged: another kind, or an operation other than CREATE and UPDATE. A Pod that does not decode is an error.
func pods(req *admissionv1.AdmissionRequest) (pod, old *corev1.Pod, err error) {
	if req.Kind.Group != "" || req.Kind.Version != "v1" || req.Kind.Kind != "Pod" {
		return nil, nil, nil
	}
	if req.Operation != admissionv1.Create && req.Operation != admissionv1.Update {
		return nil, nil, nil
	}
	decode := func(field string, raw []byte) (*corev1.Pod, error) {
		if len(raw) == 0 {
			return nil, fmt.Errorf("request.%s is empty", field)
		}
		var p corev1.Pod
		if err := json.Unmarshal(raw, &p); err != nil {
			return nil, fmt.Errorf("request.%s is not a Pod: %w", field, err)
		}
		return &p, nil
	}
	if pod, err = decode("object", req.Object.Raw); err != nil {
		return nil, nil, err
	}
	if req.Operation == admissionv1.Update {
		if old, err = decode("oldObject", req.OldObject.Raw); err != nil {
			return nil, nil, err
		}
	}
	return pod, old, nil
}

// container is one image-bearing entry of a Pod spec.
type container struct {
	list  string // the PodSpec field: containers, initContainers or ephemeralContainers
	index int
	name  string
	image string
}

// kind names the container for a person: "container", "initContainer" or "ephemeralContainer".
func (c container) kind() string { return strings.TrimSuffix(c.list, "s") }

// containers lists every container of spec, in the three lists' order.
func containers(spec *corev1.PodSpec) []container {
	var cs []container
	for i, c := range spec.Containers {
		cs = append(cs, container{"containers", i, c.Name, c.Image})
	}
	for i, c := range spec.InitContainers {
		cs = append(cs, container{"initContainers", i, c.Name, c.Image})
	}
	for i, c := range spec.EphemeralContainers {
		cs = append(cs, container{"ephemeralContainers", i, c.Name, c.Image})
	}
	return cs
}

// changed lists the containers of pod that an UPDATE brings: on CREATE (old nil) all of them; on UPDATE
// those whose image differs from the same-named container's before, or that are new. A running container
// is never rewritten (a new image restarts it) nor judged again.
func changed(pod, old *corev1.Pod) []container {
	cs := containers(&pod.Spec)
	if old == nil {
		return cs
	}
	before := map[[2]string]string{}
	for _, c := range containers(&old.Spec) {
		before[[2]string{c.list, c.name}] = c.image
	}
	var out []container
	for _, c := range cs {
		if img, ok := before[[2]string{c.list, c.name}]; !ok || img != c.image {
			out = append(out, c)
		}
	}
	return out
}

// mutate rewrites the images that come in with this request; on CREATE it also adds the pull secret.
func (h *Handler) mutate(req *admissionv1.AdmissionRequest, pod, old *corev1.Pod) answer {
	var a answer
	through := false
	for _, c := range changed(pod, old) {
		if c.image == "" {
			continue // the API server refuses it; nothing to rewrite
		}
		out, diff, err := h.images.Image(c.image)
		if err != nil {
			a.warnings = append(a.warnings, fmt.Sprintf("pullgate: %s %q: image left as written: %v", c.kind(), c.name, err))
			continue
		}
		if h.onPullgate(out) {
			through = true
		}
		if diff {
			a.patch = append(a.patch, patchOp{Op: "replace", Path: pointer("spec", c.list, strconv.Itoa(c.index), "image"), Value: out})
		}
	}
	// imagePullSecrets cannot change on an UPDATE: only a created Pod gets the secret.
	if h.pullSecret != "" && req.Operation == admissionv1.Create && through && !hasSecret(pod, h.pullSecret) {
		ref := corev1.LocalObjectReference{Name: h.pullSecret}
		if len(pod.Spec.ImagePullSecrets) == 0 {
			a.patch = append(a.patch, patchOp{Op: "add", Path: pointer("spec", "imagePullSecrets"), Value: []corev1.LocalObjectReference{ref}})
		} else {
			a.patch = append(a.patch, patchOp{Op: "add", Path: pointer("spec", "imagePullSecrets", "-"), Value: ref})
		}
	}
	a.warnings = capList(a.warnings)
	return a
}

// validate denies a Pod with an image, brought by this request, that does not come through pullgate.
func (h *Handler) validate(_ *admissionv1.AdmissionRequest, pod, old *corev1.Pod) answer {
	var bad []string
	for _, c := range changed(pod, old) {
		if c.image == "" {
			continue // the API server refuses it with its own message
		}
		if err := h.images.Check(c.image); err != nil {
			bad = append(bad, fmt.Sprintf("%s %q: %v", c.kind(), c.name, err))
		}
	}
	if len(bad) == 0 {
		return answer{}
	}
	n := len(bad)
	if n > maxListed {
		bad = append(bad[:maxListed], fmt.Sprintf("and %d more", n-maxListed))
	}
	return answer{denied: fmt.Sprintf("pullgate: images must be pulled through %s: %s", h.images.Registry(), strings.Join(bad, "; "))}
}

// onPullgate reports whether image is pulled from pullgate's registry.
func (h *Handler) onPullgate(image string) bool {
	ref, err := names.ParseReference(image)
	return err == nil && ref.Registry == h.images.Registry()
}

func hasSecret(pod *corev1.Pod, name string) bool {
	for _, s := range pod.Spec.ImagePullSecrets {
		if s.Name == name {
			return true
		}
	}
	return false
}

// capList keeps at most maxListed warnings, each at most maxWarningLen bytes (the API server truncates
// longer ones and may drop many).
func capList(ws []string) []string {
	n := len(ws)
	if n > maxListed {
		ws = append(ws[:maxListed], fmt.Sprintf("pullgate: and %d more images left as written", n-maxListed))
	}
	for i, w := range ws {
		if len(w) > maxWarningLen {
			ws[i] = strings.ToValidUTF8(w[:maxWarningLen-3], "") + "..."
		}
	}
	return ws
}

// patchOp is one RFC 6902 operation.
type patchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}

// countImageOps counts the operations that rewrite an image.
func countImageOps(ops []patchOp) int {
	n := 0
	for _, op := range ops {
		if strings.HasSuffix(op.Path, "/image") {
			n++
		}
	}
	return n
}

// pointer is the RFC 6901 JSON Pointer to the member named by tokens, each escaped ("~" as "~0", "/" as "~1").
func pointer(tokens ...string) string {
	var b strings.Builder
	for _, t := range tokens {
		b.WriteByte('/')
		b.WriteString(strings.ReplaceAll(strings.ReplaceAll(t, "~", "~0"), "/", "~1"))
	}
	return b.String()
}

func subresource(req *admissionv1.AdmissionRequest) string {
	if req.SubResource == "" {
		return req.Resource.Resource
	}
	return req.Resource.Resource + "/" + req.SubResource
}

// podName is the Pod's name for the log: its name, or its generateName prefix before the API server names it.
func podName(req *admissionv1.AdmissionRequest, pod *corev1.Pod) string {
	switch {
	case req.Name != "":
		return req.Name
	case pod != nil && pod.Name != "":
		return pod.Name
	case pod != nil && pod.GenerateName != "":
		return pod.GenerateName + "*"
	}
	return ""
}
