package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
	"sigs.k8s.io/yaml"

	"github.com/pullgate/pullgate/identity"
)

// robotT0 is the injected clock's start in these tests.
var robotT0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// robotEnv is a robots file in a temporary directory and the environment that names it.
type robotEnv struct {
	t    *testing.T
	path string
	env  map[string]string
}

func newRobotEnv(t *testing.T) *robotEnv {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "robots.yaml")
	return &robotEnv{t: t, path: path, env: map[string]string{
		"PULLGATE_ROBOTS_FILE": path,
		"PULLGATE_DATA_DIR":    filepath.Join(dir, "data"),
	}}
}

// run runs `pullgate robot args...` at now, with the bcrypt cost lowered to its minimum.
func (e *robotEnv) run(now time.Time, args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = runRobot(args, e.env, &out, &errOut, robotOptions{Now: func() time.Time { return now }, Cost: bcrypt.MinCost})
	return code, out.String(), errOut.String()
}

// must runs a command that must succeed and returns its standard output.
func (e *robotEnv) must(now time.Time, args ...string) string {
	e.t.Helper()
	code, stdout, stderr := e.run(now, args...)
	if code != 0 {
		e.t.Fatalf("pullgate robot %q: exit status %d\nstdout:\n%s\nstderr:\n%s", args, code, stdout, stderr)
	}
	return stdout
}

// file reads the robots file as the server would.
func (e *robotEnv) file() *identity.File {
	e.t.Helper()
	f, err := identity.ReadFile(e.path)
	if err != nil {
		e.t.Fatal(err)
	}
	return f
}

func (e *robotEnv) robot(name string) *identity.Robot {
	e.t.Helper()
	r := e.file().Robot(name)
	if r == nil {
		e.t.Fatalf("no robot %q in the file", name)
	}
	return r
}

// printedSecret is the secret in create's or rotate's text output.
func printedSecret(t *testing.T, out string) string {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		if s, ok := strings.CutPrefix(line, "secret: "); ok {
			if !strings.HasPrefix(s, "pgr_") {
				t.Fatalf("secret %q does not start with pgr_", s)
			}
			return s
		}
	}
	t.Fatalf("no secret line in:\n%s", out)
	return ""
}

// secretDocument is the Secret's YAML in create's or rotate's text output: after "---", up to a blank line.
func secretDocument(t *testing.T, out string) []byte {
	t.Helper()
	_, rest, ok := strings.Cut(out, "\n---\n")
	if !ok {
		t.Fatalf("no --- in:\n%s", out)
	}
	doc, _, ok := strings.Cut(rest, "\n\n")
	if !ok {
		t.Fatalf("the Secret is not followed by a blank line:\n%s", out)
	}
	return []byte(doc + "\n")
}

// verifies reports whether the stored hash is the bcrypt hash of clear.
func verifies(s identity.Secret, clear string) bool {
	return bcrypt.CompareHashAndPassword([]byte(s.Hash), []byte(clear)) == nil
}

func TestRobotCreateThenList(t *testing.T) {
	e := newRobotEnv(t)
	// Flags after the name, repeated and comma-separated --allow.
	out := e.must(robotT0, "create", "ci", "--allow", "docker.io/library/**", "--allow", "ghcr.io/acme/app,ghcr.io/acme/lib",
		"--description", "CI runners")
	secret := printedSecret(t, out)
	for _, want := range []string{"shown only now", "username: robot$ci\n", "kind: Secret", "name: pullgate-robot-ci"} {
		if !strings.Contains(out, want) {
			t.Errorf("create's output lacks %q:\n%s", want, out)
		}
	}

	st, err := os.Stat(e.path)
	if err != nil {
		t.Fatal(err)
	}
	if mode := st.Mode().Perm(); mode != 0o600 {
		t.Errorf("robots file mode %v, want 0600", mode)
	}
	raw, err := os.ReadFile(e.path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), secret) {
		t.Fatal("the robots file holds the secret in clear")
	}

	r := e.robot("ci")
	if want := []string{"docker.io/library/**", "ghcr.io/acme/app", "ghcr.io/acme/lib"}; !slices.Equal(r.Pull, want) {
		t.Errorf("pull %q, want %q", r.Pull, want)
	}
	if r.Description != "CI runners" || r.Admin || r.Disabled || !r.Created.Equal(robotT0) {
		t.Errorf("robot %+v", r)
	}
	if want := robotT0.Add(90 * 24 * time.Hour); r.Expires == nil || !r.Expires.Equal(want) {
		t.Errorf("expires %v, want the default 90 days: %v", r.Expires, want)
	}
	if len(r.Secrets) != 1 || !verifies(r.Secrets[0], secret) || r.Secrets[0].Expires != nil {
		t.Fatalf("secrets %+v do not hold one live hash of the printed secret", r.Secrets)
	}
	if cost, _ := bcrypt.Cost([]byte(r.Secrets[0].Hash)); cost != bcrypt.MinCost {
		t.Errorf("bcrypt cost %d, want the tests' %d", cost, bcrypt.MinCost)
	}

	for _, args := range [][]string{{"list"}, {"list", "--json"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			list := e.must(robotT0.Add(time.Hour), args...)
			if strings.Contains(list, secret) || strings.Contains(list, "$2") || strings.Contains(list, r.Secrets[0].ID) {
				t.Fatalf("list shows a secret, a hash or a secret id:\n%s", list)
			}
			for _, want := range []string{"ci", "docker.io/library/**", "ghcr.io/acme/lib", "2026-05-30T12:00:00Z", "CI runners"} {
				if !strings.Contains(list, want) {
					t.Errorf("list lacks %q:\n%s", want, list)
				}
			}
		})
	}
	lines := strings.Split(strings.TrimSpace(e.must(robotT0, "list")), "\n")
	if len(lines) != 2 {
		t.Fatalf("list: %d lines, want a header and one robot:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	if fields := strings.Fields(lines[1]); len(fields) < 8 || fields[6] != "1" || fields[7] != "never" {
		t.Errorf("list row %q: want 1 secret and last use never", lines[1])
	}
}

func TestRobotCreateFlagsBeforeTheName(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		fileFlag bool // --file PATH at the end instead of PULLGATE_ROBOTS_FILE
	}{
		{"flags first", []string{"create", "--allow", "ghcr.io/acme/**", "--expires", "never", "ci"}, false},
		{"flags around", []string{"create", "--expires", "never", "ci", "--allow", "ghcr.io/acme/**"}, false},
		{"double dash", []string{"create", "--allow", "ghcr.io/acme/**", "--expires", "never", "--", "ci"}, false},
		{"file flag", []string{"create", "ci", "--allow", "ghcr.io/acme/**", "--expires", "never"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newRobotEnv(t)
			args := tt.args
			if tt.fileFlag {
				args = append(slices.Clone(args), "--file", e.path)
				delete(e.env, "PULLGATE_ROBOTS_FILE")
			}
			e.must(robotT0, args...)
			r := e.robot("ci")
			if !slices.Equal(r.Pull, []string{"ghcr.io/acme/**"}) || r.Expires != nil {
				t.Fatalf("robot %+v", r)
			}
		})
	}
}

// issuedJSON is create's and rotate's --json output, decoded strictly.
type issuedJSON struct {
	Name             string   `json:"name"`
	Username         string   `json:"username"`
	Secret           string   `json:"secret"`
	Expires          *string  `json:"expires"`
	Servers          []string `json:"servers"`
	SecretName       string   `json:"secretName"`
	Namespace        string   `json:"namespace"`
	DockerConfigJSON struct {
		Auths map[string]struct {
			Username string `json:"username"`
			Password string `json:"password"`
			Auth     string `json:"auth"`
		} `json:"auths"`
	} `json:"dockerconfigjson"`
}

func decodeIssued(t *testing.T, stdout string) issuedJSON {
	t.Helper()
	var keys map[string]json.RawMessage
	if err := json.Unmarshal([]byte(stdout), &keys); err != nil {
		t.Fatalf("stdout is not one JSON object: %v\n%s", err, stdout)
	}
	got := slices.Sorted(func(yield func(string) bool) {
		for k := range keys {
			if !yield(k) {
				return
			}
		}
	})
	if want := []string{"dockerconfigjson", "expires", "name", "namespace", "secret", "secretName", "servers", "username"}; !slices.Equal(got, want) {
		t.Fatalf("keys %q, want %q", got, want)
	}
	dec := json.NewDecoder(strings.NewReader(stdout))
	dec.DisallowUnknownFields()
	var is issuedJSON
	if err := dec.Decode(&is); err != nil {
		t.Fatal(err)
	}
	if dec.More() {
		t.Fatalf("more than one JSON value on stdout:\n%s", stdout)
	}
	return is
}

func TestRobotJSON(t *testing.T) {
	e := newRobotEnv(t)
	check := func(t *testing.T, is issuedJSON, name, expires string, servers []string) {
		t.Helper()
		if is.Name != name || is.Username != "robot$"+name || is.SecretName != "pullgate-robot-"+strings.ReplaceAll(name, ".", "-") || is.Namespace != "team-a" {
			t.Errorf("output %+v", is)
		}
		if (is.Expires == nil) != (expires == "") || is.Expires != nil && *is.Expires != expires {
			t.Errorf("expires %v, want %q", is.Expires, expires)
		}
		if !slices.Equal(is.Servers, servers) || len(is.DockerConfigJSON.Auths) != len(servers) {
			t.Errorf("servers %q, auths %v, want %q", is.Servers, is.DockerConfigJSON.Auths, servers)
		}
		for _, s := range servers {
			a := is.DockerConfigJSON.Auths[s]
			if a.Username != is.Username || a.Password != is.Secret || a.Auth != base64.StdEncoding.EncodeToString([]byte(is.Username+":"+is.Secret)) {
				t.Errorf("auths[%s] = %+v", s, a)
			}
		}
	}

	t.Run("create", func(t *testing.T) {
		out := e.must(robotT0, "create", "ci.build", "--allow", "docker.io/**", "--expires", "12h", "--json",
			"--server", "pullgate.example:5443", "--server", "docker.io,pullgate.example:5443", "--namespace", "team-a")
		is := decodeIssued(t, out)
		check(t, is, "ci.build", "2026-03-02T00:00:00Z", []string{"pullgate.example:5443", "docker.io"})
		if r := e.robot("ci.build"); len(r.Secrets) != 1 || !verifies(r.Secrets[0], is.Secret) {
			t.Fatal("the printed secret does not verify against the stored hash")
		}
	})
	t.Run("create never expiring", func(t *testing.T) {
		out := e.must(robotT0, "create", "admin", "--admin", "--expires", "never", "--json", "--namespace", "team-a",
			"--server", "localhost:5443")
		check(t, decodeIssued(t, out), "admin", "", []string{"localhost:5443"})
	})
	t.Run("rotate", func(t *testing.T) {
		out := e.must(robotT0.Add(time.Hour), "rotate", "ci.build", "--json", "--namespace", "team-a", "--server", "docker.io")
		is := decodeIssued(t, out)
		check(t, is, "ci.build", "2026-03-02T00:00:00Z", []string{"docker.io"})
		if r := e.robot("ci.build"); len(r.Secrets) != 2 || !verifies(r.Secrets[1], is.Secret) {
			t.Fatal("the rotated secret does not verify against the new hash")
		}
	})
}

func TestPullSecretManifest(t *testing.T) {
	// Written by hand from the Kubernetes API (core/v1 Secret) and the docker config format. The password makes
	// a '+' in the standard base64 of "user:password", which the URL alphabet would write as '-'.
	const auth = "cm9ib3QkY2kuYnVpbGRfeDpwZ3Jffn5+fg=="
	config := `{"auths":{"reg.example:5443":{"username":"robot$ci.build_x","password":"pgr_~~~~","auth":"` + auth + `"}}}`
	want := `apiVersion: v1
data:
  .dockerconfigjson: ` + base64.StdEncoding.EncodeToString([]byte(config)) + `
kind: Secret
metadata:
  name: pullgate-robot-ci-build-x
  namespace: "123"
type: kubernetes.io/dockerconfigjson
`
	got, err := pullSecretManifest("ci.build_x", "123", newDockerConfig([]string{"reg.example:5443"}, "robot$ci.build_x", "pgr_~~~~"))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("manifest:\n%s\nwant:\n%s", got, want)
	}
}

// TestRobotSecretMatchesKubectl holds that the printed Secret is what `kubectl create secret docker-registry`
// makes for the same registry, user and password.
func TestRobotSecretMatchesKubectl(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("kubectl is not on PATH; CI must have it")
		}
		t.Skip("kubectl is not on PATH")
	}
	e := newRobotEnv(t)
	const server, namespace = "pullgate.example:5443", "team-a"
	out := e.must(robotT0, "create", "ci_x.y", "--allow", "docker.io/**", "--server", server, "--namespace", namespace)
	secret := printedSecret(t, out)
	ours, err := yaml.YAMLToJSON(secretDocument(t, out))
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, kubectl, "create", "secret", "docker-registry", "pullgate-robot-ci-x-y",
		"--docker-server="+server, "--docker-username=robot$ci_x.y", "--docker-password="+secret,
		"-n", namespace, "--dry-run=client", "-o", "json")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+filepath.Join(t.TempDir(), "none"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	theirs, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl: %v: %s", err, stderr.String())
	}

	decode := func(what string, data []byte) (map[string]any, any) {
		var obj map[string]any
		if err := json.Unmarshal(data, &obj); err != nil {
			t.Fatalf("%s: %v\n%s", what, err, data)
		}
		if meta, ok := obj["metadata"].(map[string]any); ok {
			delete(meta, "creationTimestamp") // kubectl's null
		}
		data64, _ := obj["data"].(map[string]any)[".dockerconfigjson"].(string)
		raw, err := base64.StdEncoding.DecodeString(data64)
		if err != nil {
			t.Fatalf("%s: .dockerconfigjson: %v", what, err)
		}
		var config any
		if err := json.Unmarshal(raw, &config); err != nil {
			t.Fatalf("%s: .dockerconfigjson: %v", what, err)
		}
		delete(obj, "data")
		return obj, config
	}
	ourObj, ourConfig := decode("ours", ours)
	theirObj, theirConfig := decode("kubectl's", theirs)
	if !reflect.DeepEqual(ourConfig, theirConfig) {
		t.Errorf(".dockerconfigjson differs:\nours    %v\nkubectl %v", ourConfig, theirConfig)
	}
	if !reflect.DeepEqual(ourObj, theirObj) {
		t.Errorf("the Secret differs:\nours    %v\nkubectl %v", ourObj, theirObj)
	}
}

func TestRobotPrintsTheServiceAccountPatch(t *testing.T) {
	e := newRobotEnv(t)
	out := e.must(robotT0, "create", "ci", "--allow", "docker.io/**", "--namespace", "builds", "--service-account", "runner")
	want := `kubectl patch serviceaccount runner -n builds -p '{"imagePullSecrets":[{"name":"pullgate-robot-ci"}]}'` + "\n"
	if !strings.Contains(out, "\n"+want) {
		t.Errorf("no line %q in:\n%s", want, out)
	}
	for _, note := range []string{"# kubectl patch replaces", "# containerd mirror mode", "--server docker.io"} {
		if !strings.Contains(out, note) {
			t.Errorf("no %q in:\n%s", note, out)
		}
	}
	var s struct {
		Metadata struct{ Namespace string } `json:"metadata"`
	}
	if err := yaml.Unmarshal(secretDocument(t, out), &s); err != nil || s.Metadata.Namespace != "builds" {
		t.Errorf("Secret namespace %q (%v), want builds", s.Metadata.Namespace, err)
	}
}

func TestRobotRotate(t *testing.T) {
	e := newRobotEnv(t)
	first := printedSecret(t, e.must(robotT0, "create", "ci", "--allow", "docker.io/**"))

	t1 := robotT0.Add(time.Hour)
	out := e.must(t1, "rotate", "ci", "--grace", "24h")
	second := printedSecret(t, out)
	if !strings.Contains(out, "keep working until 2026-03-02T13:00:00Z") {
		t.Errorf("rotate does not say when the older secret stops:\n%s", out)
	}
	r := e.robot("ci")
	if len(r.Secrets) != 2 {
		t.Fatalf("%d secrets after a rotation with grace, want 2", len(r.Secrets))
	}
	if !verifies(r.Secrets[0], first) || r.Secrets[0].Expires == nil || !r.Secrets[0].Expires.Equal(t1.Add(24*time.Hour)) {
		t.Errorf("old secret %+v: want the first secret, ending at now+grace", r.Secrets[0])
	}
	if !verifies(r.Secrets[1], second) || r.Secrets[1].Expires != nil {
		t.Errorf("new secret %+v: want the printed secret, with no end of its own", r.Secrets[1])
	}

	// A longer grace later never lengthens the life of a secret already rotated out.
	t2 := robotT0.Add(2 * time.Hour)
	third := printedSecret(t, e.must(t2, "rotate", "ci", "--grace", "2d"))
	r = e.robot("ci")
	if len(r.Secrets) != 3 || !r.Secrets[0].Expires.Equal(t1.Add(24*time.Hour)) || !r.Secrets[1].Expires.Equal(t2.Add(48*time.Hour)) ||
		!verifies(r.Secrets[2], third) {
		t.Fatalf("after a second rotation: %+v", r.Secrets)
	}

	// At most three live secrets: a fourth is refused, and the file stays as it was.
	before, _ := os.ReadFile(e.path)
	code, _, stderr := e.run(t2, "rotate", "ci")
	if code != 1 || !strings.Contains(stderr, "--grace 0") {
		t.Fatalf("a fourth live secret: exit status %d, stderr %q", code, stderr)
	}
	if after, _ := os.ReadFile(e.path); !bytes.Equal(before, after) {
		t.Fatal("a refused rotation changed the file")
	}

	// Secrets past their end are dropped by the next rotation.
	t3 := t1.Add(24*time.Hour + time.Second)
	fourth := printedSecret(t, e.must(t3, "rotate", "ci", "--grace", "1h"))
	r = e.robot("ci")
	if len(r.Secrets) != 3 {
		t.Fatalf("%d secrets, want the expired first one dropped: %+v", len(r.Secrets), r.Secrets)
	}
	for _, s := range r.Secrets {
		if verifies(s, first) {
			t.Fatal("the expired first secret is still stored")
		}
	}
	if !r.Secrets[0].Expires.Equal(t3.Add(time.Hour)) || !r.Secrets[1].Expires.Equal(t3.Add(time.Hour)) || !verifies(r.Secrets[2], fourth) {
		t.Fatalf("after the third rotation: %+v", r.Secrets)
	}
}

func TestRobotRotateWithoutGrace(t *testing.T) {
	e := newRobotEnv(t)
	old := printedSecret(t, e.must(robotT0, "create", "ci", "--allow", "docker.io/**"))
	// Also the robot's expiry can change on rotation.
	out := e.must(robotT0.Add(time.Hour), "rotate", "ci", "--grace", "0", "--expires", "never")
	fresh := printedSecret(t, out)
	r := e.robot("ci")
	if len(r.Secrets) != 1 || !verifies(r.Secrets[0], fresh) || verifies(r.Secrets[0], old) || r.Secrets[0].Expires != nil {
		t.Fatalf("secrets after a rotation without grace: %+v, want only the new one", r.Secrets)
	}
	if r.Expires != nil {
		t.Fatalf("expires %v after --expires never", r.Expires)
	}
	if !strings.Contains(out, "stop working now") {
		t.Errorf("rotate does not say the old secret ended:\n%s", out)
	}
}

func TestRobotDelete(t *testing.T) {
	e := newRobotEnv(t)
	e.must(robotT0, "create", "a", "--allow", "docker.io/**")
	e.must(robotT0, "create", "b", "--allow", "docker.io/**")
	out := e.must(robotT0, "delete", "a")
	if !strings.Contains(out, "kubectl delete secret pullgate-robot-a") {
		t.Errorf("delete's output: %s", out)
	}
	if f := e.file(); len(f.Robots) != 1 || f.Robots[0].Name != "b" {
		t.Fatalf("robots after delete: %+v", f.Robots)
	}
	if list := e.must(robotT0, "list"); strings.Contains(list, "\na ") {
		t.Fatalf("list shows the deleted robot:\n%s", list)
	}
	if code, _, stderr := e.run(robotT0, "delete", "a"); code != 1 || !strings.Contains(stderr, `no robot "a"`) {
		t.Fatalf("deleting it again: exit status %d, stderr %q", code, stderr)
	}

	// A robot that client certificates act as stays until they are removed.
	f := e.file()
	f.Clients = []identity.Client{{Subject: "node-*.cluster.local", Robot: "b"}}
	if err := f.Write(e.path); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := e.run(robotT0, "delete", "b"); code != 1 || !strings.Contains(stderr, `client certificates ["node-*.cluster.local"] act as robot "b"`) {
		t.Fatalf("deleting a robot clients map to: exit status %d, stderr %q", code, stderr)
	}
	e.robot("b")
}

// TestRobotSecretNamesDiffer holds that two robots never share a pull Secret name, which '.' and '_' (both
// written as '-') could make: in one namespace, one Secret would replace the other.
func TestRobotSecretNamesDiffer(t *testing.T) {
	e := newRobotEnv(t)
	e.must(robotT0, "create", "ci.build", "--allow", "docker.io/**")
	for _, name := range []string{"ci_build", "ci-build"} {
		code, stdout, stderr := e.run(robotT0, "create", name, "--allow", "docker.io/**")
		if code != 1 || stdout != "" || !strings.Contains(stderr, `robot "ci.build" has the pull Secret name pullgate-robot-ci-build`) {
			t.Errorf("create %s: exit status %d, stderr %q", name, code, stderr)
		}
	}
	if f := e.file(); len(f.Robots) != 1 {
		t.Fatalf("%d robots, want 1", len(f.Robots))
	}

	// One made by hand: delete does not offer to delete the Secret the other robot may use.
	f := e.file()
	twin := f.Robots[0]
	twin.Name, twin.Secrets = "ci_build", nil
	f.Robots = append(f.Robots, twin)
	if err := f.Write(e.path); err != nil {
		t.Fatal(err)
	}
	if out := e.must(robotT0, "delete", "ci_build"); strings.Contains(out, "kubectl delete") || !strings.Contains(out, `robot "ci.build"`) {
		t.Errorf("delete's output: %s", out)
	}
}

func TestRobotDisableEnable(t *testing.T) {
	e := newRobotEnv(t)
	e.must(robotT0, "create", "ci", "--allow", "docker.io/**")
	e.must(robotT0, "disable", "ci")
	if !e.robot("ci").Disabled {
		t.Fatal("disable did not disable")
	}
	var list struct{ Robots []robotListEntry }
	if err := json.Unmarshal([]byte(e.must(robotT0, "list", "--json")), &list); err != nil || len(list.Robots) != 1 || !list.Robots[0].Disabled {
		t.Fatalf("list after disable: %+v (%v)", list, err)
	}
	if out := e.must(robotT0, "disable", "ci"); !strings.Contains(out, "already disabled") {
		t.Errorf("disabling twice: %q", out)
	}
	e.must(robotT0, "enable", "ci")
	if e.robot("ci").Disabled {
		t.Fatal("enable did not enable")
	}
}

func TestRobotList(t *testing.T) {
	e := newRobotEnv(t)
	e.must(robotT0, "create", "used", "--allow", "docker.io/**", "--expires", "1d")
	e.must(robotT0, "create", "idle", "--allow", "docker.io/**", "--admin", "--expires", "never")
	e.must(robotT0, "rotate", "idle", "--grace", "6h")
	used := robotT0.Add(90 * time.Minute)
	// "idle" was used before it was created: that was an earlier robot of the same name.
	lastUse := identity.LastUse{"used": used, "idle": robotT0.Add(-time.Hour), "deleted": robotT0}
	dataDir := e.env["PULLGATE_DATA_DIR"]
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := lastUse.Write(filepath.Join(dataDir, identity.LastUseFile)); err != nil {
		t.Fatal(err)
	}

	t.Run("json", func(t *testing.T) {
		dec := json.NewDecoder(strings.NewReader(e.must(robotT0.Add(2*time.Hour), "list", "--json")))
		dec.DisallowUnknownFields()
		var got struct{ Robots []robotListEntry }
		if err := dec.Decode(&got); err != nil {
			t.Fatal(err)
		}
		s := func(v string) *string { return &v }
		want := []robotListEntry{
			{Name: "idle", Pull: []string{"docker.io/**"}, Admin: true, Created: "2026-03-01T12:00:00Z", Secrets: 2, GraceUntil: s("2026-03-01T18:00:00Z")},
			{Name: "used", Pull: []string{"docker.io/**"}, Created: "2026-03-01T12:00:00Z", Expires: s("2026-03-02T12:00:00Z"), Secrets: 1, LastUse: s("2026-03-01T13:30:00Z")},
		}
		if !reflect.DeepEqual(got.Robots, want) {
			g, _ := json.Marshal(got.Robots)
			w, _ := json.Marshal(want)
			t.Fatalf("list\n%s\nwant\n%s", g, w)
		}
	})
	t.Run("table", func(t *testing.T) {
		// A day later: "used" has expired, the grace of "idle"'s old secret is over.
		out := e.must(robotT0.Add(25*time.Hour), "list")
		lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
		if len(lines) != 3 {
			t.Fatalf("%d lines:\n%s", len(lines), out)
		}
		wantRows := [][]string{
			{"NAME", "PULL", "ADMIN", "CREATED", "EXPIRES", "DISABLED", "SECRETS", "LAST", "USE", "DESCRIPTION"},
			{"idle", "docker.io/**", "yes", "2026-03-01T12:00:00Z", "never", "no", "1", "never"},
			{"used", "docker.io/**", "no", "2026-03-01T12:00:00Z", "EXPIRED", "2026-03-02T12:00:00Z", "no", "1", "2026-03-01T13:30:00Z"},
		}
		for i, want := range wantRows {
			if got := strings.Fields(lines[i]); !slices.Equal(got, want) {
				t.Errorf("row %d: %q, want %q", i, got, want)
			}
		}
		// Aligned: every row's second column starts where the header's does.
		col := strings.Index(lines[0], "PULL")
		for _, l := range lines[1:] {
			if l[col-1] != ' ' || l[col] == ' ' {
				t.Errorf("row %q is not aligned with the header %q", l, lines[0])
			}
		}
	})
	t.Run("unreadable last use", func(t *testing.T) {
		if err := os.WriteFile(filepath.Join(dataDir, identity.LastUseFile), []byte("{"), 0o600); err != nil {
			t.Fatal(err)
		}
		code, out, stderr := e.run(robotT0, "list")
		if code != 0 || !strings.Contains(stderr, "last use unknown") || !strings.Contains(out, "unknown") {
			t.Fatalf("exit status %d\nstdout:\n%s\nstderr:\n%s", code, out, stderr)
		}
	})
}

func TestRobotCommandErrors(t *testing.T) {
	tests := []struct {
		name     string
		noFile   bool // the environment names no robots file
		args     []string
		wantCode int
		want     []string // in stderr
	}{
		{"no file for create", true, []string{"create", "x", "--allow", "docker.io/**"}, 2, []string{"--file", "PULLGATE_ROBOTS_FILE"}},
		{"no file for list", true, []string{"list"}, 2, []string{"--file", "PULLGATE_ROBOTS_FILE"}},
		{"duplicate", false, []string{"create", "ci", "--allow", "docker.io/**"}, 1, []string{`robot "ci" exists; use rotate`}},
		{"pattern with a space", false, []string{"create", "x", "--allow", "docker.io/library/ng inx"}, 2, []string{"--allow", "invalid pattern", "ng inx"}},
		{"pattern without upstream", false, []string{"create", "x", "--allow", "nginx"}, 2, []string{`"nginx" matches nothing`}},
		{"empty pattern in a list", false, []string{"create", "x", "--allow", "docker.io/a,,docker.io/b"}, 2, []string{"empty value"}},
		{"no pattern", false, []string{"create", "x"}, 2, []string{"--allow PATTERN is required"}},
		{"upper-case name", false, []string{"create", "CI", "--allow", "docker.io/**"}, 2, []string{`robot name "CI"`}},
		{"name ending in a dash", false, []string{"create", "ci-", "--allow", "docker.io/**"}, 2, []string{"not first or last"}},
		{"name too long", false, []string{"create", strings.Repeat("a", 65), "--allow", "docker.io/**"}, 2, []string{"1 to 64 characters"}},
		{"two names", false, []string{"create", "a", "b", "--allow", "docker.io/**"}, 2, []string{"want one robot NAME"}},
		{"no name", false, []string{"rotate"}, 2, []string{"want one robot NAME"}},
		{"bad expiry", false, []string{"create", "x", "--allow", "docker.io/**", "--expires", "soon"}, 2, []string{"--expires", `"soon"`}},
		{"past expiry", false, []string{"create", "x", "--allow", "docker.io/**", "--expires", "2026-02-01"}, 2, []string{"not in the future"}},
		{"bad namespace", false, []string{"create", "x", "--allow", "docker.io/**", "--namespace", "Team_A"}, 2, []string{"--namespace"}},
		{"bad service account", false, []string{"create", "x", "--allow", "docker.io/**", "--service-account", "a b"}, 2, []string{"--service-account"}},
		{"bad server", false, []string{"create", "x", "--allow", "docker.io/**", "--server", "a b"}, 2, []string{"--server"}},
		{"unknown flag", false, []string{"create", "x", "--allow", "docker.io/**", "--bogus"}, 2, []string{"-bogus", "usage: pullgate robot create"}},
		{"multi-line description", false, []string{"create", "x", "--allow", "docker.io/**", "--description", "a\nb"}, 2, []string{"--description"}},
		{"negative grace", false, []string{"rotate", "ci", "--grace", "-1h"}, 2, []string{"--grace"}},
		{"bad grace", false, []string{"rotate", "ci", "--grace", "a while"}, 2, []string{"--grace"}},
		{"rotate unknown", false, []string{"rotate", "nobody"}, 1, []string{`no robot "nobody"`}},
		{"disable unknown", false, []string{"disable", "nobody"}, 1, []string{`no robot "nobody"`}},
		{"list with an argument", false, []string{"list", "ci"}, 2, []string{"unexpected arguments"}},
		{"unknown command", false, []string{"destroy", "ci"}, 2, []string{`unknown command "destroy"`}},
		{"no command", false, nil, 2, []string{"usage: pullgate robot"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newRobotEnv(t)
			e.must(robotT0, "create", "ci", "--allow", "docker.io/**")
			before, err := os.ReadFile(e.path)
			if err != nil {
				t.Fatal(err)
			}
			if tt.noFile {
				delete(e.env, "PULLGATE_ROBOTS_FILE")
			}
			code, stdout, stderr := e.run(robotT0, tt.args...)
			if code != tt.wantCode {
				t.Fatalf("exit status %d, want %d\nstderr: %s", code, tt.wantCode, stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
			if strings.Contains(stdout, "secret: ") {
				t.Errorf("a failed command printed a secret:\n%s", stdout)
			}
			if after, _ := os.ReadFile(e.path); !bytes.Equal(before, after) {
				t.Error("a failed command changed the robots file")
			}
		})
	}
}

func TestRobotFileMustExist(t *testing.T) {
	for _, args := range [][]string{{"list"}, {"rotate", "ci"}, {"delete", "ci"}, {"enable", "ci"}} {
		t.Run(args[0], func(t *testing.T) {
			e := newRobotEnv(t)
			code, _, stderr := e.run(robotT0, args...)
			if code != 1 || !strings.Contains(stderr, "does not exist") {
				t.Fatalf("exit status %d, stderr %q", code, stderr)
			}
			if _, err := os.Stat(e.path); !os.IsNotExist(err) {
				t.Fatalf("%s made the robots file (%v)", args[0], err)
			}
		})
	}
	t.Run("create in a missing directory", func(t *testing.T) {
		e := newRobotEnv(t)
		e.env["PULLGATE_ROBOTS_FILE"] = filepath.Join(filepath.Dir(e.path), "no", "robots.yaml")
		if code, stdout, stderr := e.run(robotT0, "create", "ci", "--allow", "docker.io/**"); code != 1 || stdout != "" {
			t.Fatalf("exit status %d, stdout %q, stderr %q", code, stdout, stderr)
		}
	})
}

func TestParseExpires(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 500_000_000, time.UTC)
	tests := []struct {
		in      string
		want    string // RFC 3339; "" for never
		wantErr string
	}{
		{in: "90d", want: "2026-05-30T12:00:00Z"},
		{in: "1d", want: "2026-03-02T12:00:00Z"},
		{in: "12h", want: "2026-03-02T00:00:00Z"},
		{in: "720h", want: "2026-03-31T12:00:00Z"},
		{in: "1h30m", want: "2026-03-01T13:30:00Z"},
		{in: "never", want: ""},
		{in: "2027-03-01", want: "2027-03-01T00:00:00Z"},
		{in: "2027-03-01T10:00:00+02:00", want: "2027-03-01T08:00:00Z"},
		{in: "2026-03-01T12:00:01Z", want: "2026-03-01T12:00:01Z"},
		{in: "garbage", wantErr: "want a lifetime"},
		{in: "", wantErr: "want a lifetime"},
		{in: "d", wantErr: "whole number of days"},
		{in: "1.5d", wantErr: "whole number of days"},
		{in: "-1d", wantErr: "whole number of days"},
		{in: "0d", wantErr: "must be positive"},
		{in: "-12h", wantErr: "must be positive"},
		{in: "99999999d", wantErr: "at most 36500 days"},
		{in: "2026-03-01", wantErr: "not in the future"},
		{in: "2026-03-01T12:00:00Z", wantErr: "not in the future"},
		{in: "2027-02-30", wantErr: "want a lifetime"},
		{in: "Never", wantErr: "want a lifetime"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseExpires(tt.in, now)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseExpires(%q) = %v, %v; want an error with %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case tt.want == "" && got != nil:
				t.Fatalf("got %v, want never (nil)", got)
			case tt.want != "" && (got == nil || got.Format(time.RFC3339) != tt.want || got.Location() != time.UTC):
				t.Fatalf("got %v, want %s", got, tt.want)
			}
		})
	}
}

func TestDefaultServer(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    string
		wantErr bool
	}{
		{"nothing set", map[string]string{}, "localhost:5443", false},
		{"first TLS host", map[string]string{"PULLGATE_TLS_HOSTS": "pullgate.example, other.example"}, "pullgate.example:5443", false},
		{"wildcard skipped", map[string]string{"PULLGATE_TLS_HOSTS": "*.example,pullgate.example"}, "pullgate.example:5443", false},
		{"port 443 is left out", map[string]string{"PULLGATE_TLS_HOSTS": "pullgate.example", "PULLGATE_ADDR": ":443"}, "pullgate.example", false},
		{"other port", map[string]string{"PULLGATE_TLS_HOSTS": "pullgate.example", "PULLGATE_ADDR": "0.0.0.0:8443"}, "pullgate.example:8443", false},
		{"no TLS host, port 443", map[string]string{"PULLGATE_ADDR": ":443"}, "localhost", false},
		{"IPv6 host", map[string]string{"PULLGATE_TLS_HOSTS": "fd00::1"}, "[fd00::1]:5443", false},
		{"bad address", map[string]string{"PULLGATE_ADDR": "5443"}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := defaultServer(tt.env)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("defaultServer = %q, %v; want %q (error %v)", got, err, tt.want, tt.wantErr)
			}
		})
	}
	t.Run("used by create", func(t *testing.T) {
		e := newRobotEnv(t)
		e.env["PULLGATE_TLS_HOSTS"] = "pullgate.example"
		is := decodeIssued(t, e.must(robotT0, "create", "ci", "--allow", "docker.io/**", "--json"))
		if !slices.Equal(is.Servers, []string{"pullgate.example:5443"}) || is.Namespace != "default" {
			t.Fatalf("servers %q, namespace %q", is.Servers, is.Namespace)
		}
	})
}

// TestRunRobot goes through run itself: the real clock and the default bcrypt cost.
func TestRunRobot(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{"PULLGATE_ROBOTS_FILE": filepath.Join(dir, "robots.yaml"), "PULLGATE_DATA_DIR": dir}
	var stdout, stderr bytes.Buffer
	start := time.Now()
	if code := run([]string{"robot", "create", "ci", "--allow", "docker.io/**"}, env, &stdout, &stderr); code != 0 {
		t.Fatalf("exit status %d: %s", code, stderr.String())
	}
	f, err := identity.ReadFile(env["PULLGATE_ROBOTS_FILE"])
	if err != nil {
		t.Fatal(err)
	}
	r := f.Robot("ci")
	if cost, _ := bcrypt.Cost([]byte(r.Secrets[0].Hash)); cost != identity.DefaultCost {
		t.Errorf("bcrypt cost %d, want the default %d", cost, identity.DefaultCost)
	}
	if r.Created.Before(start.Add(-time.Second)) || r.Created.After(time.Now()) {
		t.Errorf("created %v, not the time of the run (%v)", r.Created, start)
	}
	if !verifies(r.Secrets[0], printedSecret(t, stdout.String())) {
		t.Error("the printed secret does not verify")
	}

	for _, tt := range []struct {
		name string
		args []string
		env  map[string]string
		code int
		want string
	}{
		{"robot alone", []string{"robot"}, env, 2, "usage: pullgate robot"},
		{"no robots file", []string{"robot", "list"}, map[string]string{}, 2, "PULLGATE_ROBOTS_FILE"},
		{"help", []string{"robot", "create", "-h"}, env, 0, "usage: pullgate robot create"},
		{"other commands still take one word", []string{"verify", "extra"}, env, 2, "usage: pullgate <command>"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(tt.args, tt.env, &stdout, &stderr); code != tt.code || !strings.Contains(stderr.String(), tt.want) {
				t.Fatalf("exit status %d, want %d; stderr %q lacks %q", code, tt.code, stderr.String(), tt.want)
			}
		})
	}
}

// TestRobotDefaultsMatchTheServer holds that the robot commands assume the server's own defaults for the
// address clients reach it by and for where it records last use.
func TestRobotDefaultsMatchTheServer(t *testing.T) {
	cfg, _, err := loadConfig(map[string]string{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Addr != robotDefaultAddr || cfg.DataDir != robotDefaultDataDir {
		t.Fatalf("server defaults %q, %q; robot commands assume %q, %q", cfg.Addr, cfg.DataDir, robotDefaultAddr, robotDefaultDataDir)
	}
}
