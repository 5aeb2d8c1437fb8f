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
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	jsonpatch "github.com/evanphx/json-patch/v5"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

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
	pemCA, err := os.ReadFile(local.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemCA) {
		t.Fatal("no CA")
	}
	args := append([]string{"--registry", "pullgate.example.com", "--addr", "127.0.0.1:0",
		"--tls-cert", local.CertFile, "--tls-key", local.KeyFile}, extra...)
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
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "pullgate-webhook.pullgate.svc"}, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &runningWebhook{addr: addr.String(), client: &http.Client{Transport: tr, Timeout: 10 * time.Second},
		caPool: pool, tlsDir: dir, stdout: stdout, stop: stop}
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
