package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	jsonpatch "github.com/evanphx/json-patch/v5"
	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"

	"github.com/pullgate/pullgate/certs"
)

// runningWebhook is `pullgate webhook` running on 127.0.0.1 with a certificate from a local CA.
type runningWebhook struct {
	addr   string
	client *http.Client
	caPool *x509.CertPool
	tlsDir string
	stdout *syncBuffer
	stop   func() int // cancels the command's context and returns its exit status
}

// syncBuffer is a bytes.Buffer that the command's logger and the test may use at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startWebhook(t *testing.T, extra ...string) *runningWebhook {
	t.Helper()
	dir := t.TempDir()
	local, err := certs.EnsureLocal(dir, []string{"pullgate-webhook.pullgate.svc"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"--registry", "pullgate.example.com", "--addr", "127.0.0.1:0",
		"--tls-cert", local.CertFile, "--tls-key", local.KeyFile}, extra...)
	w := startWebhookWith(t, args, local.CAFile, "pullgate-webhook.pullgate.svc")
	w.tlsDir = dir
	return w
}

// startWebhookWith runs `pullgate webhook` with args; its client trusts caFile and checks serverName, as the
// API server checks a webhook Service's name against the caBundle.
func startWebhookWith(t *testing.T, args []string, caFile, serverName string) *runningWebhook {
	t.Helper()
	pemCA, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemCA) {
		t.Fatal("no CA")
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan net.Addr, 1)
	done := make(chan int, 1)
	stdout, stderr := &syncBuffer{}, &syncBuffer{}
	go func() {
		done <- runWebhook(ctx, args, stdout, stderr, webhookOptions{Ready: func(a net.Addr) { ready <- a }})
	}()
	var addr net.Addr
	select {
	case addr = <-ready:
	case code := <-done:
		cancel()
		t.Fatalf("pullgate webhook exited %d: %s", code, stderr)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatal("pullgate webhook did not start")
	}
	stopped := false
	stop := func() int {
		cancel()
		stopped = true
		select {
		case code := <-done:
			return code
		case <-time.After(15 * time.Second):
			t.Fatal("pullgate webhook did not stop")
			return -1
		}
	}
	t.Cleanup(func() {
		if !stopped {
			stop()
		}
	})
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: serverName}, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &runningWebhook{addr: addr.String(), client: &http.Client{Transport: tr, Timeout: 10 * time.Second},
		caPool: pool, stdout: stdout, stop: stop}
}

// review posts a CREATE review of p to path and returns the response.
func (w *runningWebhook) review(t *testing.T, path string, p *corev1.Pod) *admissionv1.AdmissionResponse {
	t.Helper()
	raw, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: "uid-review", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Namespace: "shop", Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: raw},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := w.client.Post("https://"+w.addr+path, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out admissionv1.AdmissionReview
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &out) != nil || out.Response == nil || out.Response.UID != "uid-review" {
		t.Fatalf("POST %s: %d %s", path, resp.StatusCode, b)
	}
	return out.Response
}

// TestWebhookCommand drives `pullgate webhook` as the API server does: an AdmissionReview v1 over TLS, the
// JSONPatch applied to the Pod, then the validating path, and SIGTERM's graceful stop.
func TestWebhookCommand(t *testing.T) {
	w := startWebhook(t, "--exclude", "registry.k8s.io/**", "--pull-secret", "pullgate-pull")
	p := corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{GenerateName: "web-", Namespace: "shop"},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: "pause", Image: "registry.k8s.io/pause:3.9"}},
			Containers:     []corev1.Container{{Name: "web", Image: "nginx:1.25"}},
		},
	}
	raw, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	review := func(uid string, obj []byte) []byte {
		b, err := json.Marshal(admissionv1.AdmissionReview{
			TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
			Request: &admissionv1.AdmissionRequest{
				UID: types.UID("uid-" + uid), Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
				Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
				Namespace: "shop", Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: obj},
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	post := func(path string, body []byte) *admissionv1.AdmissionResponse {
		t.Helper()
		resp, err := w.client.Post("https://"+w.addr+path+"?timeout=10s", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("POST %s: %d %s", path, resp.StatusCode, b)
		}
		if resp.ProtoMajor != 2 {
			t.Errorf("POST %s spoke %s; the API server speaks HTTP/2 when offered", path, resp.Proto)
		}
		var out admissionv1.AdmissionReview
		if err := json.Unmarshal(b, &out); err != nil || out.Response == nil {
			t.Fatalf("response %s: %v", b, err)
		}
		return out.Response
	}

	resp := post("/mutate", review("1", raw))
	if resp.UID != "uid-1" || !resp.Allowed || resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
		t.Fatalf("mutate: %+v", resp)
	}
	patch, err := jsonpatch.DecodePatch(resp.Patch)
	if err != nil {
		t.Fatal(err)
	}
	patched, err := patch.Apply(raw)
	if err != nil {
		t.Fatal(err)
	}
	var got corev1.Pod
	if err := json.Unmarshal(patched, &got); err != nil {
		t.Fatal(err)
	}
	if img := got.Spec.Containers[0].Image; img != "pullgate.example.com/docker.io/library/nginx:1.25" {
		t.Errorf("container image %q", img)
	}
	if img := got.Spec.InitContainers[0].Image; img != "registry.k8s.io/pause:3.9" {
		t.Errorf("excluded init container image %q", img)
	}
	if len(got.Spec.ImagePullSecrets) != 1 || got.Spec.ImagePullSecrets[0].Name != "pullgate-pull" {
		t.Errorf("imagePullSecrets %v", got.Spec.ImagePullSecrets)
	}

	if resp := post("/validate", review("2", raw)); resp.Allowed || resp.Result == nil || !strings.Contains(resp.Result.Message, `container "web"`) ||
		!strings.Contains(resp.Result.Message, `"nginx:1.25"`) {
		t.Fatalf("validate of the Pod as written: %+v", resp)
	}
	if resp := post("/validate", review("3", patched)); !resp.Allowed {
		t.Fatalf("validate of the mutated Pod: %+v", resp.Result)
	}
	if !strings.Contains(w.stdout.String(), `"uid":"uid-1"`) {
		t.Errorf("no log line for the review:\n%s", w.stdout)
	}

	if code := w.stop(); code != 0 {
		t.Fatalf("exit status %d after SIGTERM; want 0", code)
	}
	if _, err := net.DialTimeout("tcp", w.addr, time.Second); err == nil {
		t.Fatal("the listener still accepts connections after shutdown")
	}
}

// TestWebhookTLS: TLS 1.2 at least, and a renewed key pair is served without a restart.
func TestWebhookTLS(t *testing.T) {
	w := startWebhook(t)
	t.Run("TLS 1.1 refused", func(t *testing.T) {
		c, err := tls.Dial("tcp", w.addr, &tls.Config{RootCAs: w.caPool, ServerName: "localhost", MaxVersion: tls.VersionTLS11})
		if err == nil {
			c.Close()
			t.Fatal("a TLS 1.1 handshake succeeded")
		}
	})
	t.Run("renewed certificate served", func(t *testing.T) {
		const newName = "pullgate-webhook.other.svc"
		if c, err := tls.Dial("tcp", w.addr, &tls.Config{RootCAs: w.caPool, ServerName: newName}); err == nil {
			c.Close()
			t.Fatalf("the first certificate already covers %s", newName)
		}
		if _, err := certs.EnsureLocal(w.tlsDir, []string{"pullgate-webhook.pullgate.svc", newName}, time.Now()); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			c, err := tls.Dial("tcp", w.addr, &tls.Config{RootCAs: w.caPool, ServerName: newName})
			if err == nil {
				c.Close()
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the renewed certificate (for %s) was not served within 10s: %v", newName, err)
			}
			<-time.After(50 * time.Millisecond) // poll, within the deadline
		}
	})
}

func TestWebhookFlags(t *testing.T) {
	dir := t.TempDir()
	local, err := certs.EnsureLocal(dir, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tlsArgs := []string{"--tls-cert", local.CertFile, "--tls-key", local.KeyFile}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no registry", tlsArgs, "--registry is required"},
		{"no key pair", []string{"--registry", "pg.example.com"}, "--tls-cert and --tls-key are required"},
		{"bad registry", append([]string{"--registry", "pg example"}, tlsArgs...), "registry"},
		{"bad exclude", append([]string{"--registry", "pg.example.com", "--exclude", "caf\u00e9/**"}, tlsArgs...), "exclude"},
		{"bad pull secret", append([]string{"--registry", "pg.example.com", "--pull-secret", "Not/A/Name"}, tlsArgs...), "pull secret"},
		{"missing key file", []string{"--registry", "pg.example.com", "--tls-cert", local.CertFile, "--tls-key", filepath.Join(dir, "nope")}, "nope"},
		{"arguments", append([]string{"--registry", "pg.example.com", "extra"}, tlsArgs...), "unexpected arguments"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			// Were the flags taken, the command would stop at once: its context is done.
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			args := append([]string{"--addr", "127.0.0.1:0"}, tc.args...)
			if code := runWebhook(ctx, args, &stdout, &stderr, webhookOptions{}); code != 2 {
				t.Fatalf("exit %d; want 2 (%s)", code, stderr.String())
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Fatalf("stderr %q lacks %q", stderr.String(), tc.want)
			}
		})
	}
}

// readmeBlocks returns the fenced sh blocks of README.md's "Admission webhook" section.
func readmeBlocks(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n## Admission webhook\n")
	if !ok {
		t.Fatal(`README.md has no section "Admission webhook"`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var blocks []string
	for _, part := range strings.Split(section, "```sh\n")[1:] {
		body, _, ok := strings.Cut(part, "```")
		if !ok {
			t.Fatal("unclosed code block in README.md's Admission webhook section")
		}
		blocks = append(blocks, body)
	}
	return blocks
}

// heredocs returns the YAML documents the blocks apply with kubectl apply -f - <<EOF, variables substituted.
func heredocs(t *testing.T, blocks []string, vars map[string]string) []string {
	t.Helper()
	var docs []string
	for _, b := range blocks {
		for _, part := range strings.Split(b, "<<EOF\n")[1:] {
			body, _, ok := strings.Cut(part, "\nEOF\n")
			if !ok {
				t.Fatal("unterminated heredoc")
			}
			for k, v := range vars {
				body = strings.ReplaceAll(body, "$"+k, v)
			}
			if strings.Contains(body, "$") {
				t.Fatalf("unsubstituted variable in\n%s", body)
			}
			docs = append(docs, strings.Split(body, "\n---\n")...)
		}
	}
	return docs
}

// TestWebhookReadme holds README.md's "Admission webhook" to the code: its certificate recipe (run with openssl) makes a
// key pair that the command serves and that a client checking the Service's name against the CA accepts, as the
// API server does; its manifests decode strictly into k8s.io/api types; the Deployment's args are flags the
// command takes; the configurations' paths are the ones it serves, with the labels, policies and rules that the
// README's text promises.
func TestWebhookReadme(t *testing.T) {
	blocks := readmeBlocks(t)
	if len(blocks) < 4 {
		t.Fatalf("%d sh blocks in the README section; want the certificate, deployment, configuration and label ones", len(blocks))
	}
	dir := t.TempDir()
	certFile, keyFile, caFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), filepath.Join(dir, "ca.crt")
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Log("openssl is not on PATH: using a local CA instead of the README's recipe")
		local, err := certs.EnsureLocal(dir, []string{"pullgate-webhook.pullgate.svc"}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		certFile, keyFile, caFile = local.CertFile, local.KeyFile, local.CAFile
	} else {
		var script []string
		for _, line := range strings.Split(blocks[0], "\n") {
			if !strings.HasPrefix(line, "kubectl") {
				script = append(script, line)
			}
		}
		cmd := exec.Command("sh", "-e", "-c", strings.Join(script, "\n"))
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("the README's certificate recipe: %v\n%s", err, out)
		}
	}

	var (
		mutating   admissionregistrationv1.MutatingWebhookConfiguration
		validating admissionregistrationv1.ValidatingWebhookConfiguration
		deploy     appsv1.Deployment
		svc        corev1.Service
	)
	for _, doc := range heredocs(t, blocks, map[string]string{"IMAGE": "pullgate.example.com/pullgate/pullgate:1", "CA_BUNDLE": "Y2E="}) {
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("%v\n%s", err, doc)
		}
		var into any
		switch meta.Kind {
		case "MutatingWebhookConfiguration":
			into = &mutating
		case "ValidatingWebhookConfiguration":
			into = &validating
		case "Deployment":
			into = &deploy
		case "Service":
			into = &svc
		default:
			t.Fatalf("unexpected kind %q in the README", meta.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), into); err != nil {
			t.Fatalf("%s: %v\n%s", meta.Kind, err, doc)
		}
	}
	if len(mutating.Webhooks) != 1 || len(validating.Webhooks) != 1 || len(deploy.Spec.Template.Spec.Containers) != 1 || len(svc.Spec.Ports) != 1 {
		t.Fatal("the README lacks a configuration, the Deployment or the Service")
	}

	// The Deployment's args, with the Secret's mount replaced by the files made above, run the command.
	c := deploy.Spec.Template.Spec.Containers[0]
	if c.Args[0] != "webhook" {
		t.Fatalf("args %q do not start with the webhook command", c.Args)
	}
	var args []string
	for _, a := range c.Args[1:] {
		a = strings.NewReplacer("/tls/tls.crt", certFile, "/tls/tls.key", keyFile, ":8443", "127.0.0.1:0").Replace(a)
		args = append(args, a)
	}
	if c.Ports[0].ContainerPort != 8443 || svc.Spec.Ports[0].Port != 443 || svc.Spec.Ports[0].TargetPort.String() != c.Ports[0].Name {
		t.Errorf("ports: container %d %q, Service %d -> %s; want 8443, Service 443 -> the container's port",
			c.Ports[0].ContainerPort, c.Ports[0].Name, svc.Spec.Ports[0].Port, svc.Spec.Ports[0].TargetPort.String())
	}
	w := startWebhookWith(t, args, caFile, svc.Name+"."+svc.Namespace+".svc")

	type hook struct {
		name, label   string
		client        admissionregistrationv1.WebhookClientConfig
		failure       *admissionregistrationv1.FailurePolicyType
		sideEffects   *admissionregistrationv1.SideEffectClass
		versions      []string
		selector      *metav1.LabelSelector
		rules         []admissionregistrationv1.RuleWithOperations
		wantFailure   admissionregistrationv1.FailurePolicyType
		wantPath      string
		wantAllowedOf bool // what the path answers for a Pod with nginx:1.25
	}
	m, v := mutating.Webhooks[0], validating.Webhooks[0]
	if m.ReinvocationPolicy == nil || *m.ReinvocationPolicy != admissionregistrationv1.IfNeededReinvocationPolicy {
		t.Error("the mutating webhook is not reinvoked when another one adds a container")
	}
	for _, h := range []hook{
		{m.Name, "pullgate.dev/rewrite", m.ClientConfig, m.FailurePolicy, m.SideEffects, m.AdmissionReviewVersions, m.NamespaceSelector, m.Rules, admissionregistrationv1.Ignore, "/mutate", true},
		{v.Name, "pullgate.dev/enforce", v.ClientConfig, v.FailurePolicy, v.SideEffects, v.AdmissionReviewVersions, v.NamespaceSelector, v.Rules, admissionregistrationv1.Fail, "/validate", false},
	} {
		t.Run(h.name, func(t *testing.T) {
			if h.failure == nil || *h.failure != h.wantFailure {
				t.Errorf("failurePolicy %v; want %s", h.failure, h.wantFailure)
			}
			if h.sideEffects == nil || *h.sideEffects != admissionregistrationv1.SideEffectClassNone {
				t.Errorf("sideEffects %v; want None (dry runs are answered as any other)", h.sideEffects)
			}
			if len(h.versions) != 1 || h.versions[0] != "v1" {
				t.Errorf("admissionReviewVersions %q; want [v1]", h.versions)
			}
			s := h.client.Service
			if s == nil || s.Path == nil || *s.Path != h.wantPath || s.Name != svc.Name || s.Namespace != svc.Namespace ||
				s.Port == nil || *s.Port != svc.Spec.Ports[0].Port {
				t.Fatalf("clientConfig.service %+v; want %s on the Service %s/%s port %d", s, h.wantPath, svc.Namespace, svc.Name, svc.Spec.Ports[0].Port)
			}
			if h.selector == nil || h.selector.MatchLabels[h.label] != "enabled" {
				t.Errorf("namespaceSelector %+v; want the opt-in label %s: enabled", h.selector, h.label)
			}
			excludesOwn := false
			for _, e := range h.selector.MatchExpressions {
				if e.Key == "kubernetes.io/metadata.name" && e.Operator == metav1.LabelSelectorOpNotIn && slices.Contains(e.Values, svc.Namespace) {
					excludesOwn = true
				}
			}
			if !excludesOwn {
				t.Errorf("namespaceSelector does not exclude pullgate's own namespace %q", svc.Namespace)
			}
			want := map[string]admissionregistrationv1.OperationType{"pods": admissionregistrationv1.Create, "pods/ephemeralcontainers": admissionregistrationv1.Update}
			for _, r := range h.rules {
				for _, res := range r.Resources {
					if op, ok := want[res]; ok && slices.Contains(r.Operations, op) && slices.Equal(r.APIGroups, []string{""}) {
						delete(want, res)
					}
				}
			}
			if len(want) > 0 {
				t.Errorf("rules %+v miss %v", h.rules, want)
			}
			// The path is served, and does what the configuration is for.
			p := corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "nginx:1.25"}}}}
			resp := w.review(t, *s.Path, &p)
			if resp.Allowed != h.wantAllowedOf || (h.wantPath == "/mutate") != (resp.Patch != nil) {
				t.Errorf("%s answered allowed %v patch %s", *s.Path, resp.Allowed, resp.Patch)
			}
		})
	}
}
