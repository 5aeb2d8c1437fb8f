package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pullgate/pullgate/rewrite"
)

// rewriteUpstream is the e2e upstream's name at the pullgate of TestRewriteCRI: a registry host without a
// port, as images name registries in manifests (an upstream whose host has a port cannot be written after a
// path prefix).
const rewriteUpstream = "e2e-upstream.pullgate.test"

// rewriteDeployment is a Deployment as a chart writes it, naming image by its upstream name.
const rewriteDeployment = `# Source: shop/templates/deployment.yaml
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
spec:
  replicas: 1
  selector:
    matchLabels: {app: shop}
  template:
    metadata:
      labels: {app: shop}
    spec:
      containers:
        - name: shop
          image: "%s"   # from values.yaml
`

// TestRewriteCRI is the kubelet path in prefix mode: a Deployment names a fixture image by its upstream name;
// the built `pullgate rewrite --registry <pullgate> --pull-secret pullgate` turns it, on standard input as helm
// gives it, into pullgate's path prefix with the pull secret added; containerd's CRI then pulls the image the
// output names with the AuthConfig the kubelet takes from that pull secret (a robot's, as `kubectl create
// secret docker-registry` makes it), and without it is refused.
func TestRewriteCRI(t *testing.T) {
	containerd := requireTool(t, "containerd")
	requireRoot(t)
	e := sharedEnv(t)
	if e.pg == nil {
		t.Skip("direct mode: no pullgate to rewrite to")
	}
	ctx := ctxFor(t, 2*time.Minute)
	dir := t.TempDir()
	addr, err := FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	robotsFile := filepath.Join(dir, "robots.yaml")
	robot, err := CreateRobot(ctx, RobotOptions{Bin: e.pg.Opts.Bin, File: robotsFile, Name: "deployer",
		Allow: []string{rewriteUpstream + "/" + e.fix.Layers10.Repo}, Servers: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	pg, err := StartPullgate(ctx, PullgateOptions{Bin: e.pg.Opts.Bin, Name: "pullgate-rewrite", DataDir: filepath.Join(dir, "data"),
		LogDir: dir, Addr: addr, CertFile: e.certFile, KeyFile: e.keyFile, CA: e.ca,
		Upstreams: rewriteUpstream + "=" + e.proxy.URL, Default: rewriteUpstream, UpstreamCAFile: e.ca.CertFile,
		Env: []string{"PULLGATE_ROBOTS_FILE=" + robotsFile}, V2Status: http.StatusUnauthorized})
	if err != nil {
		t.Fatalf("pullgate: %v", err)
	}
	t.Cleanup(func() {
		if err := pg.Stop(10 * time.Second); err != nil {
			t.Log(err)
		}
		if t.Failed() {
			t.Logf("---- %s (tail)\n%s", pg.Spec.Name, redact(pg.Tail(60), robot.Secret))
		}
	})
	hostsDir := t.TempDir()
	writeHostsFile(t, hostsDir, pg.Addr, hostsTOML(pg.URL, pg.URL, e.caFile()))
	images := startCRIContainerd(ctx, t, containerd, hostsDir)

	im := e.fix.Layers10
	upstreamRef := im.Ref(rewriteUpstream)
	cmd := exec.CommandContext(ctx, e.pg.Opts.Bin, "rewrite", "--registry", pg.Addr, "--pull-secret", "pullgate")
	cmd.Stdin = strings.NewReader(fmt.Sprintf(rewriteDeployment, upstreamRef))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("pullgate rewrite: %v\n%s", err, stderr.String())
	}
	got, err := rewrite.Images(bytes.NewReader(stdout.Bytes()))
	if err != nil {
		t.Fatalf("the rewritten Deployment: %v\n%s", err, stdout.String())
	}
	ref := im.Ref(pg.Addr + "/" + rewriteUpstream)
	if !slices.Equal(got, []string{ref}) {
		t.Fatalf("the rewritten Deployment names %q, want %s", got, ref)
	}
	if !strings.Contains(stdout.String(), "      imagePullSecrets:\n        - name: pullgate\n      containers:\n") ||
		!strings.Contains(stdout.String(), "# from values.yaml") {
		t.Errorf("the rewritten Deployment lacks the pull secret or its comment:\n%s", stdout.String())
	}

	if _, err := kubeletPull(ctx, images, ref, nil); err == nil || !strings.Contains(err.Error(), "401 Unauthorized") {
		removeCRIImage(ctx, t, images, ref)
		t.Errorf("CRI pull of %s without the pull secret: %v, want 401 Unauthorized", ref, redactErr(err, robot.Secret))
	}
	keyring, err := ParseDockerConfigJSON(pullSecret(ctx, t, pg.Addr, robot.Username, robot.Secret))
	if err != nil {
		t.Fatal(err)
	}
	id, err := kubeletPull(ctx, images, ref, keyring)
	if err != nil {
		t.Fatal(redactErr(err, robot.Secret))
	}
	checkCRIImage(ctx, t, images, ref, id, im)
	removeCRIImage(ctx, t, images, ref)
	if n := servedTo(pg, im.Repo, robot.Username, "robot"); n == 0 {
		t.Errorf("pullgate's pull log has no request for %s by %s", im.Repo, robot.Username)
	}

	// The output is a fixed point: rewriting it again changes nothing.
	again := exec.CommandContext(context.WithoutCancel(ctx), e.pg.Opts.Bin, "rewrite", "--registry", pg.Addr, "--pull-secret", "pullgate")
	again.Stdin = bytes.NewReader(stdout.Bytes())
	out, err := again.Output()
	if err != nil || !bytes.Equal(out, stdout.Bytes()) {
		t.Errorf("rewriting the output again: %v, changed: %v", err, !bytes.Equal(out, stdout.Bytes()))
	}
}
