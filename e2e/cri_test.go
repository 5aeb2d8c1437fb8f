package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// requireRoot skips t unless it runs as root (containerd needs it), except under CI=true, where that is a
// failure.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("containerd needs root")
	}
	t.Skip("containerd needs root")
}

// startCRIContainerd runs a containerd with its own root, state and socket and the CRI plugin on (native
// snapshotter, registry hosts from hostsDir, CNI pointed at empty directories: pulls need no network plugin),
// and returns a CRI image service client once the plugin answers.
func startCRIContainerd(ctx context.Context, t *testing.T, containerd, hostsDir string) runtimeapi.ImageServiceClient {
	t.Helper()
	sock, p := launchContainerd(t, "containerd-cri", containerd, func(dir string) string {
		return fmt.Sprintf(`[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = %q
`, filepath.Join(dir, "cni-bin"), filepath.Join(dir, "cni-conf"), hostsDir)
	})
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	images := runtimeapi.NewImageServiceClient(conn)
	err = Poll(ctx, 30*time.Second, "containerd's CRI plugin", p.Exited(), func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_, err := images.ListImages(ctx, &runtimeapi.ListImagesRequest{})
		return err
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, p.Tail(40))
	}
	return images
}

// hostsTOML is one registry's hosts.toml: host is tried first for pull and resolve, then server, the registry's
// own location; both trust caFile. client, when given, is a client certificate and key presented to both.
// containerd 1.6 cannot parse a hosts.toml without a [host] table (it falls back to plain HTTP for a loopback
// registry), so for pullgate in front of itself host and server are the same.
func hostsTOML(server, host, caFile string, client ...string) string {
	var clientLine string
	if len(client) == 2 {
		clientLine = fmt.Sprintf("client = [[%q, %q]]\n", client[0], client[1])
	}
	return fmt.Sprintf("server = %q\nca = %q\n%s\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = %q\n  %s",
		server, caFile, clientLine, host, caFile, clientLine)
}

// writeHostsFile writes dir/registry/hosts.toml.
func writeHostsFile(t *testing.T, dir, registry, body string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, registry), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, registry, "hosts.toml"), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// pullSecret returns the .dockerconfigjson of an image pull secret for server, user and password: made by
// `kubectl create secret docker-registry --dry-run=client` when kubectl is installed (required under CI=true),
// else built the same way here.
func pullSecret(ctx context.Context, t *testing.T, server, user, password string) []byte {
	t.Helper()
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("kubectl is required under CI=true: %v (apt-get install -y kubernetes-client)", err)
		}
		entry := map[string]string{"username": user, "password": password,
			"auth": base64.StdEncoding.EncodeToString([]byte(user + ":" + password))}
		b, err := json.Marshal(map[string]any{"auths": map[string]any{server: entry}})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	out, err := Run(ctx, 30*time.Second, nil, kubectl, "create", "secret", "docker-registry", "pull-secret",
		"--docker-server="+server, "--docker-username="+user, "--docker-password="+password, "--dry-run=client", "-o", "json")
	if err != nil {
		// Run's error repeats the command line, which holds the password.
		t.Fatalf("kubectl create secret docker-registry: %s", strings.ReplaceAll(err.Error(), password, "<password>"))
	}
	var secret struct {
		Type string            `json:"type"`
		Data map[string][]byte `json:"data"`
	}
	if err := json.Unmarshal([]byte(out), &secret); err != nil {
		t.Fatalf("kubectl's secret: %v", err)
	}
	if secret.Type != "kubernetes.io/dockerconfigjson" || len(secret.Data[".dockerconfigjson"]) == 0 {
		t.Fatalf("kubectl made a secret of type %q without .dockerconfigjson", secret.Type)
	}
	return secret.Data[".dockerconfigjson"]
}

// kubeletPull pulls image through the CRI the way the kubelet does for a pod with the given pull secret (nil
// for none): it looks the image up in the secret's keyring and tries each matching credential in turn as an
// AuthConfig with Username and Password (ServerAddress left empty); without a match it sends no AuthConfig. It
// returns the image reference containerd answers (the image ID).
func kubeletPull(ctx context.Context, images runtimeapi.ImageServiceClient, image string, secret *Keyring) (string, error) {
	spec := &runtimeapi.ImageSpec{Image: image}
	var creds []PullCredential
	if secret != nil {
		creds, _ = secret.Lookup(image)
	}
	if len(creds) == 0 {
		resp, err := images.PullImage(ctx, &runtimeapi.PullImageRequest{Image: spec})
		if err != nil {
			return "", fmt.Errorf("CRI pull of %s without credentials: %w", image, err)
		}
		return resp.ImageRef, nil
	}
	var errs []error
	for _, c := range creds {
		auth := &runtimeapi.AuthConfig{Username: c.Username, Password: c.Password}
		resp, err := images.PullImage(ctx, &runtimeapi.PullImageRequest{Image: spec, Auth: auth})
		if err == nil {
			return resp.ImageRef, nil
		}
		errs = append(errs, fmt.Errorf("CRI pull of %s as %s: %w", image, c, err))
	}
	return "", errors.Join(errs...)
}

// checkCRIImage checks what the CRI says about ref after a pull of im that answered imageRef: ImageStatus's ID
// is imageRef and the config digest (one of the index's configs for an index), its repo digests name im's
// top manifest, its tags ref, and ListImages lists it.
func checkCRIImage(ctx context.Context, t *testing.T, images runtimeapi.ImageServiceClient, ref, imageRef string, im Image) {
	t.Helper()
	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		t.Fatal(err)
	}
	st, err := images.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
	if err != nil {
		t.Fatalf("ImageStatus %s: %v", ref, err)
	}
	img := st.GetImage()
	if img == nil {
		t.Fatalf("ImageStatus %s: containerd has no such image", ref)
	}
	if img.Id != imageRef {
		t.Errorf("ImageStatus %s: id %s, the pull answered %s", ref, img.Id, imageRef)
	}
	if im.MediaType.IsIndex() {
		if !slices.Contains(hashes(im.Blobs), img.Id) {
			t.Errorf("ImageStatus %s: id %s is none of the index's configs and layers %v", ref, img.Id, im.Blobs)
		}
	} else if img.Id != im.Blobs[0].String() {
		t.Errorf("ImageStatus %s: id %s, want the config digest %s", ref, img.Id, im.Blobs[0])
	}
	if want := tag.Context().Name() + "@" + im.Digest.String(); !slices.Contains(img.RepoDigests, want) {
		t.Errorf("ImageStatus %s: repo digests %q lack %s", ref, img.RepoDigests, want)
	}
	if !slices.Contains(img.RepoTags, ref) {
		t.Errorf("ImageStatus %s: repo tags %q lack it", ref, img.RepoTags)
	}
	list, err := images.ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil {
		t.Fatalf("ListImages: %v", err)
	}
	listed := slices.ContainsFunc(list.Images, func(i *runtimeapi.Image) bool {
		return i.Id == img.Id && slices.Contains(i.RepoTags, ref)
	})
	if !listed {
		t.Errorf("ListImages does not list %s as %s", ref, img.Id)
	}
}

// removeCRIImage removes ref from containerd, so that the next pull of it starts from nothing.
func removeCRIImage(ctx context.Context, t *testing.T, images runtimeapi.ImageServiceClient, ref string) {
	t.Helper()
	if _, err := images.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
		t.Fatalf("RemoveImage %s: %v", ref, err)
	}
}

// TestCRIPull pulls images through containerd's CRI plugin, as the kubelet asks for them, with pullgate open
// to anonymous clients: by pullgate's own name with the upstream as path prefix, and by the upstream's name with
// a hosts.toml that names pullgate as its mirror (and nothing listening as the server, so that nothing gets
// around pullgate).
func TestCRIPull(t *testing.T) {
	containerd := requireTool(t, "containerd")
	requireRoot(t)
	e := sharedEnv(t)
	ctx := ctxFor(t, 2*time.Minute)
	hostsDir := t.TempDir()
	writeHostsFile(t, hostsDir, e.upHost(), hostsTOML("https://"+refusedHost, "https://"+e.pgHost(), e.caFile()))
	writeHostsFile(t, hostsDir, e.pgHost(), hostsTOML("https://"+e.pgHost(), "https://"+e.pgHost(), e.caFile()))
	images := startCRIContainerd(ctx, t, containerd, hostsDir)
	modes := []struct{ name, host string }{
		{"mirror", e.upHost()},
		{"prefix", e.pgHost() + "/local"},
	}
	if e.pg == nil {
		modes = modes[:1]
	}
	for _, m := range modes {
		for _, im := range []Image{e.fix.Layers10, e.fix.Multi} {
			t.Run(m.name+"/"+im.Repo, func(t *testing.T) {
				ref := im.Ref(m.host)
				id, err := kubeletPull(ctx, images, ref, nil)
				if err != nil {
					t.Fatal(err)
				}
				checkCRIImage(ctx, t, images, ref, id, im)
				// Content is shared between names: without this, the next mode would find every blob.
				removeCRIImage(ctx, t, images, ref)
			})
		}
	}
}

// TestKeyring checks that pull-secret credentials are found for an image as the kubelet finds them.
func TestKeyring(t *testing.T) {
	secret := func(entries map[string]string) []byte {
		auths := map[string]any{}
		for k, v := range entries {
			user, pass, _ := strings.Cut(v, ":")
			auths[k] = map[string]string{"username": user, "password": pass}
		}
		b, err := json.Marshal(map[string]any{"auths": auths})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	tests := []struct {
		name    string
		secret  []byte
		image   string
		want    []string // usernames, in order
		wantErr bool
	}{
		{name: "host and port", secret: secret(map[string]string{"127.0.0.1:5443": "a:p"}), image: "127.0.0.1:5443/local/e2e/x:v1", want: []string{"a"}},
		{name: "by digest", secret: secret(map[string]string{"127.0.0.1:5443": "a:p"}), image: "127.0.0.1:5443/e2e/x@sha256:" + strings.Repeat("a", 64), want: []string{"a"}},
		{name: "other port", secret: secret(map[string]string{"127.0.0.1:5443": "a:p"}), image: "127.0.0.1:5444/e2e/x:v1"},
		{name: "no port in key", secret: secret(map[string]string{"127.0.0.1": "a:p"}), image: "127.0.0.1:5443/e2e/x:v1"},
		{name: "scheme and /v2/ ignored", secret: secret(map[string]string{"https://reg.example.com/v2/": "a:p"}), image: "reg.example.com/e2e/x", want: []string{"a"}},
		{name: "glob host part", secret: secret(map[string]string{"*.example.com": "a:p"}), image: "reg.example.com/e2e/x", want: []string{"a"}},
		{name: "glob needs as many parts", secret: secret(map[string]string{"*.example.com": "a:p"}), image: "a.reg.example.com/e2e/x"},
		{name: "path prefix", secret: secret(map[string]string{"reg.example.com/team": "a:p"}), image: "reg.example.com/team/x", want: []string{"a"}},
		{name: "path not a prefix", secret: secret(map[string]string{"reg.example.com/team": "a:p"}), image: "reg.example.com/other/x"},
		{name: "longer key first", secret: secret(map[string]string{"reg.example.com": "host:p", "reg.example.com/team": "team:p"}),
			image: "reg.example.com/team/x", want: []string{"team", "host"}},
		{name: "docker hub by index key", secret: secret(map[string]string{"https://index.docker.io/v1/": "hub:p"}), image: "busybox", want: []string{"hub"}},
		{name: "docker hub by docker.io", secret: secret(map[string]string{"docker.io": "hub:p"}), image: "library/busybox:1", want: []string{"hub"}},
		{name: "auth field wins", secret: []byte(`{"auths":{"reg.example.com":{"username":"u","password":"p","auth":"` +
			base64.StdEncoding.EncodeToString([]byte("robot$ci:s:e:c")) + `"}}}`), image: "reg.example.com/x", want: []string{"robot$ci"}},
		{name: "auth field without colon", secret: []byte(`{"auths":{"reg.example.com":{"auth":"` + base64.StdEncoding.EncodeToString([]byte("nocolon")) + `"}}}`), wantErr: true},
		{name: "not json", secret: []byte(`{`), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := ParseDockerConfigJSON(tt.secret)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseDockerConfigJSON: %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			creds, ok := k.Lookup(tt.image)
			var got []string
			for _, c := range creds {
				got = append(got, c.Username)
			}
			if !slices.Equal(got, tt.want) || ok != (len(tt.want) > 0) {
				t.Errorf("Lookup(%s) = %q, %v; want %q", tt.image, got, ok, tt.want)
			}
		})
	}
	t.Run("password in auth field", func(t *testing.T) {
		k, err := ParseDockerConfigJSON([]byte(`{"auths":{"r.example.com":{"auth":"` + base64.StdEncoding.EncodeToString([]byte("u:pa:ss")) + `"}}}`))
		if err != nil {
			t.Fatal(err)
		}
		creds, _ := k.Lookup("r.example.com/x")
		if len(creds) != 1 || creds[0].Password != "pa:ss" {
			t.Errorf("got %d credentials; want one with the password after the first colon", len(creds))
		}
		if s := fmt.Sprintf("%v %#v %s", creds, creds, creds); strings.Contains(s, "pa:ss") {
			t.Errorf("a credential prints its password: %s", s)
		}
	})
}
