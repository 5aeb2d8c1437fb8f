package deploy_test

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// builds lists what the tests build: every Kustomization under deploy/ (found by walking, so a new overlay is
// covered without listing it here), and the base with each component alone (written to a temporary directory), so
// that a component is checked without the others that the example overlay adds.
func builds(t *testing.T) map[string]string {
	t.Helper()
	dirs := map[string]string{}
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "kustomization.yaml" {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if regexp.MustCompile(`(?m)^kind: Kustomization$`).Match(data) {
			dirs[filepath.Dir(p)] = filepath.Dir(p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"base", "overlays/example", "dashboards"} {
		if _, ok := dirs[want]; !ok {
			t.Fatalf("kustomization %s not found", want)
		}
	}
	here, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	comps, err := os.ReadDir("components")
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	for _, c := range comps {
		dir := filepath.Join(tmp, c.Name())
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		rel, err := filepath.Rel(dir, here)
		if err != nil {
			t.Fatal(err)
		}
		k := fmt.Sprintf("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - %s\ncomponents:\n  - %s\n",
			filepath.Join(rel, "base"), filepath.Join(rel, "components", c.Name()))
		if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644); err != nil {
			t.Fatal(err)
		}
		dirs["base+components/"+c.Name()] = dir
	}
	return dirs
}

// object is one object of a kustomize build, decoded into its type.
type object struct {
	apiVersion, kind, namespace, name string
	obj                               any
}

func (o object) String() string {
	if o.namespace == "" {
		return o.kind + " " + o.name
	}
	return o.kind + " " + o.namespace + "/" + o.name
}

// Local types for the objects of kinds k8s.io/api does not have: only the fields deploy/ uses, so that any other
// field (a typo, or a field of another version) fails the strict decoding.
type (
	serviceMonitor struct {
		metav1.TypeMeta   `json:",inline"`
		metav1.ObjectMeta `json:"metadata"`
		Spec              struct {
			NamespaceSelector struct {
				MatchNames []string `json:"matchNames"`
			} `json:"namespaceSelector"`
			Selector  metav1.LabelSelector `json:"selector"`
			Endpoints []struct {
				Port          string `json:"port"`
				Path          string `json:"path"`
				Scheme        string `json:"scheme"`
				Interval      string `json:"interval"`
				ScrapeTimeout string `json:"scrapeTimeout"`
			} `json:"endpoints"`
		} `json:"spec"`
	}
	issuerRef struct {
		Name  string `json:"name"`
		Kind  string `json:"kind"`
		Group string `json:"group"`
	}
	certificate struct {
		metav1.TypeMeta   `json:",inline"`
		metav1.ObjectMeta `json:"metadata"`
		Spec              struct {
			SecretName  string   `json:"secretName"`
			IsCA        bool     `json:"isCA"`
			CommonName  string   `json:"commonName"`
			Duration    string   `json:"duration"`
			RenewBefore string   `json:"renewBefore"`
			DNSNames    []string `json:"dnsNames"`
			Usages      []string `json:"usages"`
			PrivateKey  struct {
				Algorithm      string `json:"algorithm"`
				Size           int    `json:"size"`
				RotationPolicy string `json:"rotationPolicy"`
			} `json:"privateKey"`
			IssuerRef issuerRef `json:"issuerRef"`
		} `json:"spec"`
	}
	issuer struct {
		metav1.TypeMeta   `json:",inline"`
		metav1.ObjectMeta `json:"metadata"`
		Spec              struct {
			SelfSigned *struct{} `json:"selfSigned"`
			CA         *struct {
				SecretName string `json:"secretName"`
			} `json:"ca"`
		} `json:"spec"`
	}
)

// types maps apiVersion and kind to a new object of its type. A kind not listed fails the build.
func types() map[string]func() any {
	return map[string]func() any{
		"v1/Namespace":                       func() any { return new(corev1.Namespace) },
		"v1/ServiceAccount":                  func() any { return new(corev1.ServiceAccount) },
		"v1/Service":                         func() any { return new(corev1.Service) },
		"v1/ConfigMap":                       func() any { return new(corev1.ConfigMap) },
		"v1/Secret":                          func() any { return new(corev1.Secret) },
		"apps/v1/StatefulSet":                func() any { return new(appsv1.StatefulSet) },
		"apps/v1/Deployment":                 func() any { return new(appsv1.Deployment) },
		"apps/v1/DaemonSet":                  func() any { return new(appsv1.DaemonSet) },
		"networking.k8s.io/v1/NetworkPolicy": func() any { return new(networkingv1.NetworkPolicy) },
		"policy/v1/PodDisruptionBudget":      func() any { return new(policyv1.PodDisruptionBudget) },
		"admissionregistration.k8s.io/v1/MutatingWebhookConfiguration":   func() any { return new(admissionregistrationv1.MutatingWebhookConfiguration) },
		"admissionregistration.k8s.io/v1/ValidatingWebhookConfiguration": func() any { return new(admissionregistrationv1.ValidatingWebhookConfiguration) },
		"rbac.authorization.k8s.io/v1/Role":                              func() any { return new(rbacv1.Role) },
		"rbac.authorization.k8s.io/v1/RoleBinding":                       func() any { return new(rbacv1.RoleBinding) },
		"rbac.authorization.k8s.io/v1/ClusterRole":                       func() any { return new(rbacv1.ClusterRole) },
		"rbac.authorization.k8s.io/v1/ClusterRoleBinding":                func() any { return new(rbacv1.ClusterRoleBinding) },
		"monitoring.coreos.com/v1/ServiceMonitor":                        func() any { return new(serviceMonitor) },
		"cert-manager.io/v1/Certificate":                                 func() any { return new(certificate) },
		"cert-manager.io/v1/Issuer":                                      func() any { return new(issuer) },
	}
}

// decodeStrict decodes data into v: field names case-sensitive, unknown and duplicate fields errors.
func decodeStrict(data []byte, v any) error {
	strict, err := kjson.UnmarshalStrict(data, v)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// build runs kustomize on dir, as kubectl kustomize does (files only from inside each kustomization), and decodes
// every object strictly into its type.
func build(dir string) ([]object, error) {
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	var objs []object
	var errs []error
	decoders := types()
	for _, r := range m.Resources() {
		o := object{apiVersion: r.GetApiVersion(), kind: r.GetKind(), namespace: r.GetNamespace(), name: r.GetName()}
		newObj, ok := decoders[o.apiVersion+"/"+o.kind]
		if !ok {
			errs = append(errs, fmt.Errorf("%s: apiVersion %s kind %s has no type to check it against", o, o.apiVersion, o.kind))
			continue
		}
		data, err := r.MarshalJSON()
		if err != nil {
			return nil, err
		}
		o.obj = newObj()
		if err := decodeStrict(data, o.obj); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", o, err))
			continue
		}
		objs = append(objs, o)
	}
	return objs, errors.Join(errs...)
}

// workload is a pod template and what holds it.
type workload struct {
	object
	spec *corev1.PodSpec
}

func workloads(objs []object) []workload {
	var ws []workload
	for _, o := range objs {
		switch v := o.obj.(type) {
		case *appsv1.StatefulSet:
			ws = append(ws, workload{o, &v.Spec.Template.Spec})
		case *appsv1.Deployment:
			ws = append(ws, workload{o, &v.Spec.Template.Spec})
		case *appsv1.DaemonSet:
			ws = append(ws, workload{o, &v.Spec.Template.Spec})
		}
	}
	return ws
}

func templateLabels(o object) map[string]string {
	switch v := o.obj.(type) {
	case *appsv1.StatefulSet:
		return v.Spec.Template.Labels
	case *appsv1.Deployment:
		return v.Spec.Template.Labels
	case *appsv1.DaemonSet:
		return v.Spec.Template.Labels
	}
	return nil
}

func allContainers(spec *corev1.PodSpec) []corev1.Container {
	return append(slices.Clone(spec.InitContainers), spec.Containers...)
}

// isPullgate says whether image is pullgate's (any registry, any tag): the repository's last element is pullgate.
func isPullgate(image string) bool {
	repo, _, _ := strings.Cut(image, "@")
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo = repo[:i]
	}
	return path.Base(repo) == "pullgate"
}

func find[T any](objs []object, namespace, name string) (T, bool) {
	for _, o := range objs {
		if v, ok := o.obj.(T); ok && o.namespace == namespace && o.name == name {
			return v, true
		}
	}
	var zero T
	return zero, false
}

// TestKustomizations builds every kustomization and checks what it makes.
func TestKustomizations(t *testing.T) {
	readme := readmeVariables(t)
	docs := documentedSources(t)
	for name, dir := range builds(t) {
		t.Run(name, func(t *testing.T) {
			objs, err := build(dir)
			if err != nil {
				t.Fatal(err)
			}
			if len(objs) == 0 {
				t.Fatal("the build made no objects")
			}
			checks := []struct {
				name  string
				check func([]object) []error
			}{
				{"pod security", checkPodSecurity},
				{"probes", checkProbes},
				{"environment", func(objs []object) []error { return checkEnvironment(objs, readme) }},
				{"references", func(objs []object) []error { return checkReferences(objs, docs) }},
				{"files", func(objs []object) []error { return checkFiles(objs, docs) }},
				{"services", checkServices},
				{"webhooks", checkWebhooks},
				{"node setup", checkNodeSetup},
				{"public host", checkPublicHost},
				{"certificates", checkCertificates},
			}
			for _, c := range checks {
				t.Run(c.name, func(t *testing.T) {
					for _, err := range c.check(objs) {
						t.Error(err)
					}
				})
			}
		})
	}
}

// privileged names the only workloads allowed outside a namespace that enforces the "restricted" Pod Security
// Standard, each in a namespace of its own labelled "privileged".
func privileged(w workload) bool {
	return w.String() == "DaemonSet pullgate-node-setup/pullgate-node-setup"
}

// volumeType names the one source a volume has (its JSON field name).
func volumeType(v corev1.Volume) string {
	s := v.VolumeSource
	switch {
	case s.ConfigMap != nil:
		return "configMap"
	case s.CSI != nil:
		return "csi"
	case s.DownwardAPI != nil:
		return "downwardAPI"
	case s.EmptyDir != nil:
		return "emptyDir"
	case s.Ephemeral != nil:
		return "ephemeral"
	case s.PersistentVolumeClaim != nil:
		return "persistentVolumeClaim"
	case s.Projected != nil:
		return "projected"
	case s.Secret != nil:
		return "secret"
	case s.HostPath != nil:
		return "hostPath"
	}
	return "other"
}

// checkPodSecurity checks every workload against the Pod Security Standard its namespace enforces ("restricted",
// except the listed privileged ones), and every container, wherever it runs, against the house rules: read-only
// root filesystem, no privilege escalation, no capabilities, seccomp RuntimeDefault, resources requested and
// limited; pullgate's own containers in restricted namespaces as user and group 65532.
func checkPodSecurity(objs []object) []error {
	var errs []error
	for _, w := range workloads(objs) {
		ns, ok := find[*corev1.Namespace](objs, w.namespace, w.namespace)
		if !ok {
			if ns, ok = find[*corev1.Namespace](objs, "", w.namespace); !ok {
				errs = append(errs, fmt.Errorf("%s: its namespace is not in the build", w))
				continue
			}
		}
		level := ns.Labels["pod-security.kubernetes.io/enforce"]
		switch {
		case level == "restricted":
			errs = append(errs, restricted(w)...)
		case level == "privileged" && privileged(w):
		default:
			errs = append(errs, fmt.Errorf("%s: namespace %s enforces %q, not \"restricted\"", w, w.namespace, level))
		}
		for _, c := range allContainers(w.spec) {
			errs = append(errs, houseRules(w, c, level == "restricted")...)
		}
	}
	return errs
}

func restricted(w workload) []error {
	var errs []error
	fail := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: restricted: "+format, append([]any{w}, args...)...))
	}
	s := w.spec
	psc := s.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	if s.HostNetwork || s.HostPID || s.HostIPC {
		fail("host namespaces")
	}
	for _, v := range s.Volumes {
		restrictedVolumes := []string{"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
		if t := volumeType(v); !slices.Contains(restrictedVolumes, t) {
			fail("volume %s is %s", v.Name, t)
		}
	}
	if psc.RunAsUser != nil && *psc.RunAsUser == 0 {
		fail("pod runs as user 0")
	}
	if len(psc.Sysctls) > 0 {
		fail("pod sets sysctls")
	}
	if psc.SELinuxOptions != nil && psc.SELinuxOptions.Type != "" {
		fail("pod sets an SELinux type")
	}
	podSeccomp := psc.SeccompProfile != nil && (psc.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault || psc.SeccompProfile.Type == corev1.SeccompProfileTypeLocalhost)
	for _, c := range allContainers(s) {
		csc := c.SecurityContext
		if csc == nil {
			fail("container %s has no securityContext", c.Name)
			continue
		}
		if csc.Privileged != nil && *csc.Privileged {
			fail("container %s is privileged", c.Name)
		}
		if csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation {
			fail("container %s: allowPrivilegeEscalation must be false", c.Name)
		}
		nonRoot := psc.RunAsNonRoot != nil && *psc.RunAsNonRoot
		if csc.RunAsNonRoot != nil {
			nonRoot = *csc.RunAsNonRoot
		}
		if !nonRoot {
			fail("container %s: runAsNonRoot must be true", c.Name)
		}
		if csc.RunAsUser != nil && *csc.RunAsUser == 0 {
			fail("container %s runs as user 0", c.Name)
		}
		if csc.Capabilities == nil || !slices.Contains(csc.Capabilities.Drop, "ALL") {
			fail("container %s: capabilities must drop ALL", c.Name)
		} else if slices.ContainsFunc(csc.Capabilities.Add, func(c corev1.Capability) bool { return c != "NET_BIND_SERVICE" }) {
			fail("container %s adds capabilities %v", c.Name, csc.Capabilities.Add)
		}
		seccomp := podSeccomp
		if csc.SeccompProfile != nil {
			seccomp = csc.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault || csc.SeccompProfile.Type == corev1.SeccompProfileTypeLocalhost
		}
		if !seccomp {
			fail("container %s: seccompProfile must be RuntimeDefault or Localhost", c.Name)
		}
		if csc.ProcMount != nil && *csc.ProcMount != corev1.DefaultProcMount {
			fail("container %s sets procMount", c.Name)
		}
		if csc.SELinuxOptions != nil && csc.SELinuxOptions.Type != "" {
			fail("container %s sets an SELinux type", c.Name)
		}
		if csc.AppArmorProfile != nil && csc.AppArmorProfile.Type == corev1.AppArmorProfileTypeUnconfined {
			fail("container %s: AppArmor unconfined", c.Name)
		}
		for _, p := range c.Ports {
			if p.HostPort != 0 {
				fail("container %s uses host port %d", c.Name, p.HostPort)
			}
		}
	}
	return errs
}

func houseRules(w workload, c corev1.Container, restricted bool) []error {
	var errs []error
	fail := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: container %s: "+format, append([]any{w, c.Name}, args...)...))
	}
	csc := c.SecurityContext
	if csc == nil {
		fail("no securityContext")
		return errs
	}
	if csc.ReadOnlyRootFilesystem == nil || !*csc.ReadOnlyRootFilesystem {
		fail("readOnlyRootFilesystem must be true")
	}
	if csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation {
		fail("allowPrivilegeEscalation must be false")
	}
	if csc.Capabilities == nil || !slices.Equal(csc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(csc.Capabilities.Add) > 0 {
		fail("capabilities must be drop [ALL], add nothing")
	}
	if csc.SeccompProfile == nil || csc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		fail("seccompProfile must be RuntimeDefault")
	}
	if restricted && isPullgate(c.Image) {
		psc := w.spec.SecurityContext
		if csc.RunAsUser == nil || *csc.RunAsUser != 65532 || csc.RunAsGroup == nil || *csc.RunAsGroup != 65532 ||
			csc.RunAsNonRoot == nil || !*csc.RunAsNonRoot {
			fail("pullgate runs as non-root user and group 65532")
		}
		if psc == nil || psc.FSGroup == nil || *psc.FSGroup != 65532 {
			fail("the pod's fsGroup must be 65532, the group pullgate writes its volumes as")
		}
	}
	for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if _, ok := c.Resources.Requests[res]; !ok {
			fail("no %s request", res)
		}
		if _, ok := c.Resources.Limits[res]; !ok {
			fail("no %s limit", res)
		}
	}
	return errs
}

// command is what a pullgate container runs: the first argument.
func command(c corev1.Container) string {
	if len(c.Args) == 0 {
		return ""
	}
	return c.Args[0]
}

// checkProbes checks that every probe names a port the container declares by name, and that pullgate's long-running
// commands have all three probes: serve on its operations listener (/readyz, /healthz), webhook on /healthz.
func checkProbes(objs []object) []error {
	var errs []error
	for _, w := range workloads(objs) {
		for _, c := range allContainers(w.spec) {
			fail := func(format string, args ...any) {
				errs = append(errs, fmt.Errorf("%s: container %s: "+format, append([]any{w, c.Name}, args...)...))
			}
			probes := map[string]*corev1.Probe{"startup": c.StartupProbe, "liveness": c.LivenessProbe, "readiness": c.ReadinessProbe}
			for kind, p := range probes {
				if p == nil {
					continue
				}
				var port string
				switch {
				case p.HTTPGet != nil:
					port = p.HTTPGet.Port.StrVal
				case p.TCPSocket != nil:
					port = p.TCPSocket.Port.StrVal
				default:
					fail("%s probe is neither httpGet nor tcpSocket", kind)
					continue
				}
				if port == "" || !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == port }) {
					fail("%s probe's port %q is not one of the container's named ports", kind, port)
				}
			}
			if !isPullgate(c.Image) {
				continue
			}
			want := map[string]map[string]string{
				"serve":   {"startup": "/healthz", "liveness": "/healthz", "readiness": "/readyz"},
				"webhook": {"startup": "/healthz", "liveness": "/healthz", "readiness": "/healthz"},
			}[command(c)]
			wantPort := map[string]string{"serve": "metrics", "webhook": "https"}[command(c)]
			for kind, p := range want {
				got := probes[kind]
				if got == nil || got.HTTPGet == nil || got.HTTPGet.Path != p || got.HTTPGet.Port.StrVal != wantPort {
					fail("pullgate %s needs a %s probe GET %s on port %q", command(c), kind, p, wantPort)
				}
			}
		}
	}
	return errs
}

// readmeVariables reads the PULLGATE_* variables README.md's configuration table lists.
func readmeVariables(t *testing.T) map[string]bool {
	t.Helper()
	data, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(data), "\n## Configuration\n")
	if !ok {
		t.Fatal("README.md has no Configuration section")
	}
	if i := strings.Index(table, "\n#"); i >= 0 {
		table = table[:i]
	}
	vars := map[string]bool{}
	for line := range strings.Lines(table) {
		if !strings.HasPrefix(line, "| `PULLGATE_") {
			continue
		}
		cell, _, _ := strings.Cut(line[1:], "|")
		for _, v := range regexp.MustCompile(`PULLGATE_[A-Z0-9_]+`).FindAllString(cell, -1) {
			vars[v] = true
		}
	}
	if len(vars) < 10 {
		t.Fatalf("read only %d variables from README.md's configuration table", len(vars))
	}
	return vars
}

// environment is the variables a container gets: env values, and the data of the ConfigMaps it takes with
// envFrom when they are in the build.
func environment(objs []object, namespace string, c corev1.Container) (map[string]string, []error) {
	env := map[string]string{}
	var errs []error
	for _, ef := range c.EnvFrom {
		if ef.ConfigMapRef == nil {
			continue
		}
		cm, ok := find[*corev1.ConfigMap](objs, namespace, ef.ConfigMapRef.Name)
		if !ok {
			continue // checkReferences reports it
		}
		if ef.Prefix != "" {
			errs = append(errs, fmt.Errorf("container %s: envFrom %s with a prefix", c.Name, cm.Name))
		}
		for k, v := range cm.Data {
			env[k] = v
		}
	}
	for _, e := range c.Env {
		env[e.Name] = e.Value
		if e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef == nil && strings.HasPrefix(e.Name, "PULLGATE_") {
			errs = append(errs, fmt.Errorf("container %s: %s comes from neither a value nor a ConfigMap", c.Name, e.Name))
		}
	}
	return env, errs
}

// checkEnvironment checks pullgate serve's environment: every PULLGATE_* variable is one README.md documents; the
// listeners listen on the Pod's addresses at the ports the container declares as api and metrics; the data
// directory is the mounted volume; and the grace period outlasts PULLGATE_SHUTDOWN_TIMEOUT.
func checkEnvironment(objs []object, readme map[string]bool) []error {
	var errs []error
	for _, w := range workloads(objs) {
		for _, c := range allContainers(w.spec) {
			fail := func(format string, args ...any) {
				errs = append(errs, fmt.Errorf("%s: container %s: "+format, append([]any{w, c.Name}, args...)...))
			}
			env, e := environment(objs, w.namespace, c)
			errs = append(errs, e...)
			for k := range env {
				if strings.HasPrefix(k, "PULLGATE_") && !readme[k] {
					fail("%s is not in README.md's configuration table", k)
				}
			}
			if !isPullgate(c.Image) || command(c) != "serve" {
				continue
			}
			for variable, port := range map[string]string{"PULLGATE_ADDR": "api", "PULLGATE_METRICS_ADDR": "metrics"} {
				host, p, err := splitHostPort(env[variable])
				if err != nil {
					fail("%s=%q: %v", variable, env[variable], err)
					continue
				}
				if host != "" {
					fail("%s=%q listens on one address only; the kubelet and Services reach the Pod's", variable, env[variable])
				}
				if !slices.ContainsFunc(c.Ports, func(cp corev1.ContainerPort) bool { return cp.Name == port && cp.ContainerPort == p }) {
					fail("%s=%q: the container declares no port %q with that number", variable, env[variable], port)
				}
			}
			if dir := env["PULLGATE_DATA_DIR"]; !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
				return m.MountPath == dir && !m.ReadOnly && m.Name == "data"
			}) {
				fail("PULLGATE_DATA_DIR=%q is not where the volume claim template data is mounted", dir)
			}
			shutdown := 30 * time.Second
			if s, ok := env["PULLGATE_SHUTDOWN_TIMEOUT"]; ok {
				d, err := time.ParseDuration(s)
				if err != nil {
					fail("PULLGATE_SHUTDOWN_TIMEOUT=%q: %v", s, err)
				}
				shutdown = d
			}
			grace := int64(corev1.DefaultTerminationGracePeriodSeconds)
			if w.spec.TerminationGracePeriodSeconds != nil {
				grace = *w.spec.TerminationGracePeriodSeconds
			}
			if time.Duration(grace)*time.Second <= shutdown {
				fail("terminationGracePeriodSeconds %d does not outlast PULLGATE_SHUTDOWN_TIMEOUT %s", grace, shutdown)
			}
		}
	}
	return errs
}

func splitHostPort(addr string) (string, int32, error) {
	i := strings.LastIndex(addr, ":")
	if i < 0 {
		return "", 0, errors.New("no port")
	}
	p, err := strconv.ParseUint(addr[i+1:], 10, 16)
	if err != nil {
		return "", 0, err
	}
	return addr[:i], int32(p), nil
}

// source is a Secret or ConfigMap: "Secret ns/name" or "ConfigMap ns/name".
type source struct{ kind, namespace, name string }

func (s source) String() string { return s.kind + " " + s.namespace + "/" + s.name }

// readmeSection returns the section of README.md under the heading "## "+title, up to the next such heading.
func readmeSection(t *testing.T, title string) string {
	t.Helper()
	data, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(data), "\n## "+title+"\n")
	if !ok {
		t.Fatalf("README.md has no section %q", title)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	return section
}

// documentedSources reads the Secrets and ConfigMaps README.md's "Deploying on Kubernetes" has commands to
// create, with the keys each gets: kubectl [-n NS] create secret tls|docker-registry|generic NAME ...,
// kubectl create configmap NAME ...
func documentedSources(t *testing.T) map[source][]string {
	t.Helper()
	joined := strings.ReplaceAll(readmeSection(t, "Deploying on Kubernetes"), "\\\n", " ")
	docs := map[source][]string{}
	sc := bufio.NewScanner(strings.NewReader(joined))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		i := slices.Index(f, "kubectl")
		if i < 0 || !slices.Contains(f, "create") {
			continue
		}
		f = f[i+1:]
		var ns string
		var words []string
		for j := 0; j < len(f); j++ {
			switch a := f[j]; {
			case (a == "-n" || a == "--namespace") && j+1 < len(f):
				ns = f[j+1]
				j++
			case strings.HasPrefix(a, "--namespace="):
				ns = strings.TrimPrefix(a, "--namespace=")
			default:
				words = append(words, a)
			}
		}
		var s source
		var keys []string
		switch {
		case len(words) >= 4 && words[0] == "create" && words[1] == "secret":
			s = source{"Secret", ns, words[3]}
			switch words[2] {
			case "tls":
				keys = []string{"tls.crt", "tls.key"}
			case "docker-registry":
				keys = []string{".dockerconfigjson"}
			}
		case len(words) >= 3 && words[0] == "create" && words[1] == "configmap":
			s = source{"ConfigMap", ns, words[2]}
		default:
			continue
		}
		for _, w := range words {
			if v, ok := strings.CutPrefix(w, "--from-file="); ok {
				key, file, found := strings.Cut(v, "=")
				if !found {
					key = filepath.Base(file)
				}
				keys = append(keys, key)
			}
		}
		docs[s] = append(docs[s], keys...)
	}
	if len(docs) == 0 {
		t.Fatal("README.md's Deploying on Kubernetes section has no kubectl create secret or configmap commands")
	}
	return docs
}

// reference is a use of a Secret or ConfigMap by a workload.
type reference struct {
	source
	optional bool
	where    string
}

func references(w workload) []reference {
	opt := func(b *bool) bool { return b != nil && *b }
	var refs []reference
	add := func(kind, name string, optional *bool, where string) {
		refs = append(refs, reference{source{kind, w.namespace, name}, opt(optional), where})
	}
	for _, v := range w.spec.Volumes {
		if s := v.Secret; s != nil {
			add("Secret", s.SecretName, s.Optional, "volume "+v.Name)
		}
		if c := v.ConfigMap; c != nil {
			add("ConfigMap", c.Name, c.Optional, "volume "+v.Name)
		}
		if p := v.Projected; p != nil {
			for _, s := range p.Sources {
				if s.Secret != nil {
					add("Secret", s.Secret.Name, s.Secret.Optional, "volume "+v.Name)
				}
				if s.ConfigMap != nil {
					add("ConfigMap", s.ConfigMap.Name, s.ConfigMap.Optional, "volume "+v.Name)
				}
			}
		}
	}
	for _, c := range allContainers(w.spec) {
		for _, e := range c.EnvFrom {
			if e.SecretRef != nil {
				add("Secret", e.SecretRef.Name, e.SecretRef.Optional, "container "+c.Name+" envFrom")
			}
			if e.ConfigMapRef != nil {
				add("ConfigMap", e.ConfigMapRef.Name, e.ConfigMapRef.Optional, "container "+c.Name+" envFrom")
			}
		}
		for _, e := range c.Env {
			if e.ValueFrom == nil {
				continue
			}
			if r := e.ValueFrom.SecretKeyRef; r != nil {
				add("Secret", r.Name, r.Optional, "container "+c.Name+" env "+e.Name)
			}
			if r := e.ValueFrom.ConfigMapKeyRef; r != nil {
				add("ConfigMap", r.Name, r.Optional, "container "+c.Name+" env "+e.Name)
			}
		}
	}
	for _, s := range w.spec.ImagePullSecrets {
		add("Secret", s.Name, nil, "imagePullSecrets")
	}
	return refs
}

// made lists the Secrets and ConfigMaps the build makes, with their keys: the objects themselves, and the
// Secrets cert-manager writes for the Certificates (tls.crt, tls.key, ca.crt).
func made(objs []object) map[source][]string {
	m := map[source][]string{}
	for _, o := range objs {
		switch v := o.obj.(type) {
		case *corev1.Secret:
			for k := range v.Data {
				m[source{"Secret", o.namespace, o.name}] = append(m[source{"Secret", o.namespace, o.name}], k)
			}
			for k := range v.StringData {
				m[source{"Secret", o.namespace, o.name}] = append(m[source{"Secret", o.namespace, o.name}], k)
			}
		case *corev1.ConfigMap:
			s := source{"ConfigMap", o.namespace, o.name}
			m[s] = []string{}
			for k := range v.Data {
				m[s] = append(m[s], k)
			}
		case *certificate:
			m[source{"Secret", o.namespace, v.Spec.SecretName}] = []string{"tls.crt", "tls.key", "ca.crt"}
		}
	}
	return m
}

// checkReferences checks that every Secret and ConfigMap a workload uses is in the build (or made by
// cert-manager from it), or optional, or one README.md's "Deploying on Kubernetes" says how to create; and that every
// Certificate's issuer and every CA Issuer's Secret is in the build.
func checkReferences(objs []object, docs map[source][]string) []error {
	var errs []error
	have := made(objs)
	for _, w := range workloads(objs) {
		for _, r := range references(w) {
			_, inBuild := have[r.source]
			_, documented := docs[r.source]
			if !inBuild && !r.optional && !documented {
				errs = append(errs, fmt.Errorf("%s: %s uses %s, which is neither in the build, nor optional, nor created in README.md's Deploying on Kubernetes section", w, r.where, r.source))
			}
		}
	}
	for _, o := range objs {
		switch v := o.obj.(type) {
		case *certificate:
			ref := v.Spec.IssuerRef
			if ref.Kind != "Issuer" || ref.Group != "" && ref.Group != "cert-manager.io" {
				continue // a ClusterIssuer or an external issuer is the user's
			}
			if _, ok := find[*issuer](objs, o.namespace, ref.Name); !ok {
				errs = append(errs, fmt.Errorf("%s: issuer %s is not in the build", o, ref.Name))
			}
		case *issuer:
			if v.Spec.CA != nil {
				if _, ok := have[source{"Secret", o.namespace, v.Spec.CA.SecretName}]; !ok {
					errs = append(errs, fmt.Errorf("%s: CA Secret %s is not in the build", o, v.Spec.CA.SecretName))
				}
			}
		}
	}
	return errs
}

// isFileVariable says whether a PULLGATE_* variable names a file pullgate reads at start.
func isFileVariable(name string) bool {
	return name == "PULLGATE_GATE_POLICY" || strings.HasSuffix(name, "_FILE") ||
		name == "PULLGATE_TLS_CERT" || name == "PULLGATE_TLS_KEY"
}

// checkFiles checks every file pullgate is told to read (file variables, file flags): it is a key of a Secret
// or ConfigMap mounted at its directory, and that source is in the build or documented with that key. (pullgate
// refuses to start when a file it is told to read is missing, so an optional source is no excuse here.)
func checkFiles(objs []object, docs map[source][]string) []error {
	var errs []error
	have := made(objs)
	// The command-line flags of pullgate that name files to read.
	fileArgs := []string{"--ca", "--tls-cert", "--tls-key", "--client-cert", "--client-key"}
	for _, w := range workloads(objs) {
		for _, c := range allContainers(w.spec) {
			if !isPullgate(c.Image) {
				continue
			}
			files := map[string]string{}
			env, _ := environment(objs, w.namespace, c)
			for k, v := range env {
				if isFileVariable(k) && v != "" {
					files[k] = v
				}
			}
			for i, a := range c.Args {
				if slices.Contains(fileArgs, a) && i+1 < len(c.Args) {
					files[a] = c.Args[i+1]
				} else if name, v, ok := strings.Cut(a, "="); ok && slices.Contains(fileArgs, name) {
					files[name] = v
				}
			}
			for what, file := range files {
				fail := func(format string, args ...any) {
					errs = append(errs, fmt.Errorf("%s: container %s: %s=%s: "+format, append([]any{w, c.Name, what, file}, args...)...))
				}
				i := slices.IndexFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == path.Dir(file) })
				if i < 0 {
					fail("no volume is mounted at %s", path.Dir(file))
					continue
				}
				vi := slices.IndexFunc(w.spec.Volumes, func(v corev1.Volume) bool { return v.Name == c.VolumeMounts[i].Name })
				if vi < 0 {
					fail("volume %s is not in the Pod", c.VolumeMounts[i].Name)
					continue
				}
				v := w.spec.Volumes[vi]
				var src source
				switch {
				case v.Secret != nil && len(v.Secret.Items) == 0:
					src = source{"Secret", w.namespace, v.Secret.SecretName}
				case v.ConfigMap != nil && len(v.ConfigMap.Items) == 0:
					src = source{"ConfigMap", w.namespace, v.ConfigMap.Name}
				default:
					fail("volume %s is neither a Secret nor a ConfigMap mounted whole", v.Name)
					continue
				}
				keys, inBuild := have[src]
				if !inBuild {
					var documented bool
					if keys, documented = docs[src]; !documented {
						fail("%s is neither in the build nor created in README.md's Deploying on Kubernetes section", src)
						continue
					}
				}
				if !slices.Contains(keys, path.Base(file)) {
					fail("%s has no key %s (it has %v)", src, path.Base(file), keys)
				}
			}
		}
	}
	return errs
}

// checkServices checks that every Service selects a workload of its namespace and names ports its containers
// declare, and that every ServiceMonitor selects a Service with the port it scrapes.
func checkServices(objs []object) []error {
	var errs []error
	for _, o := range objs {
		switch v := o.obj.(type) {
		case *corev1.Service:
			sel := labels.SelectorFromSet(v.Spec.Selector)
			var pods []workload
			for _, w := range workloads(objs) {
				if w.namespace == o.namespace && len(v.Spec.Selector) > 0 && sel.Matches(labels.Set(templateLabels(w.object))) {
					pods = append(pods, w)
				}
			}
			if len(pods) == 0 {
				errs = append(errs, fmt.Errorf("%s selects no workload", o))
				continue
			}
			for _, p := range v.Spec.Ports {
				if p.TargetPort.StrVal == "" {
					errs = append(errs, fmt.Errorf("%s: port %s: targetPort must name a container port", o, p.Name))
					continue
				}
				for _, w := range pods {
					if !slices.ContainsFunc(w.spec.Containers, func(c corev1.Container) bool {
						return slices.ContainsFunc(c.Ports, func(cp corev1.ContainerPort) bool { return cp.Name == p.TargetPort.StrVal })
					}) {
						errs = append(errs, fmt.Errorf("%s: port %s: %s declares no port %q", o, p.Name, w, p.TargetPort.StrVal))
					}
				}
			}
		case *serviceMonitor:
			sel, err := metav1.LabelSelectorAsSelector(&v.Spec.Selector)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", o, err))
				continue
			}
			var n int
			for _, so := range objs {
				svc, ok := so.obj.(*corev1.Service)
				if !ok || !slices.Contains(v.Spec.NamespaceSelector.MatchNames, so.namespace) || !sel.Matches(labels.Set(svc.Labels)) {
					continue
				}
				n++
				for _, e := range v.Spec.Endpoints {
					if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == e.Port }) {
						errs = append(errs, fmt.Errorf("%s: %s has no port %q", o, so, e.Port))
					}
				}
			}
			if n != 1 {
				errs = append(errs, fmt.Errorf("%s selects %d Services, want 1 (more would scrape pullgate twice)", o, n))
			}
		}
	}
	return errs
}

// checkWebhooks checks the webhook configurations against what pullgate webhook serves and the namespace labels
// the project documents: the Service and port exist, paths /mutate and /validate, v1 reviews, no side effects,
// rewriting fails open and enforcing fails closed, and the caBundle is either set or injected by cert-manager
// from a Certificate in the build.
func checkWebhooks(objs []object) []error {
	var errs []error
	type hook struct {
		name, path, label, failure string
		cfg                        admissionregistrationv1.WebhookClientConfig
		failurePolicy              *admissionregistrationv1.FailurePolicyType
		sideEffects                *admissionregistrationv1.SideEffectClass
		versions                   []string
		timeout                    *int32
		selector                   *metav1.LabelSelector
		rules                      []admissionregistrationv1.RuleWithOperations
	}
	for _, o := range objs {
		var hooks []hook
		var annotations map[string]string
		switch v := o.obj.(type) {
		case *admissionregistrationv1.MutatingWebhookConfiguration:
			annotations = v.Annotations
			for _, h := range v.Webhooks {
				hooks = append(hooks, hook{h.Name, "/mutate", "pullgate.dev/rewrite", "Ignore", h.ClientConfig, h.FailurePolicy, h.SideEffects, h.AdmissionReviewVersions, h.TimeoutSeconds, h.NamespaceSelector, h.Rules})
			}
		case *admissionregistrationv1.ValidatingWebhookConfiguration:
			annotations = v.Annotations
			for _, h := range v.Webhooks {
				hooks = append(hooks, hook{h.Name, "/validate", "pullgate.dev/enforce", "Fail", h.ClientConfig, h.FailurePolicy, h.SideEffects, h.AdmissionReviewVersions, h.TimeoutSeconds, h.NamespaceSelector, h.Rules})
			}
		default:
			continue
		}
		for _, h := range hooks {
			fail := func(format string, args ...any) {
				errs = append(errs, fmt.Errorf("%s: webhook %s: "+format, append([]any{o, h.name}, args...)...))
			}
			s := h.cfg.Service
			if s == nil || s.Path == nil || *s.Path != h.path {
				fail("must call a Service at path %s", h.path)
				continue
			}
			svc, ok := find[*corev1.Service](objs, s.Namespace, s.Name)
			port := int32(443)
			if s.Port != nil {
				port = *s.Port
			}
			if !ok || !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Port == port }) {
				fail("Service %s/%s port %d is not in the build", s.Namespace, s.Name, port)
			}
			if len(h.cfg.CABundle) == 0 {
				ns, cert, _ := strings.Cut(annotations["cert-manager.io/inject-ca-from"], "/")
				if _, ok := find[*certificate](objs, ns, cert); !ok {
					// Without cert-manager the user sets caBundle (README.md's "Deploying on Kubernetes"): allowed only in a
					// build without a Certificate, where there is nothing to inject from.
					if slices.ContainsFunc(objs, func(o object) bool { _, ok := o.obj.(*certificate); return ok }) {
						fail("no caBundle and no cert-manager injection from a Certificate in the build")
					}
				}
			}
			if h.failurePolicy == nil || string(*h.failurePolicy) != h.failure {
				fail("failurePolicy must be %s", h.failure)
			}
			if h.sideEffects == nil || *h.sideEffects != admissionregistrationv1.SideEffectClassNone {
				fail("sideEffects must be None")
			}
			if !slices.Equal(h.versions, []string{"v1"}) {
				fail("admissionReviewVersions must be [v1], what pullgate webhook speaks")
			}
			if h.timeout == nil || *h.timeout > 10 {
				fail("timeoutSeconds must be set, at most 10")
			}
			if h.selector == nil || h.selector.MatchLabels[h.label] != "enabled" || len(h.selector.MatchLabels) != 1 || len(h.selector.MatchExpressions) != 0 {
				fail("namespaceSelector must be exactly %s=enabled (namespaces opt in)", h.label)
			}
			var pods bool
			for _, r := range h.rules {
				if slices.Contains(r.Resources, "pods") && slices.Contains(r.Operations, admissionregistrationv1.Create) &&
					slices.Equal(r.APIGroups, []string{""}) && slices.Contains(r.APIVersions, "v1") {
					pods = true
				}
			}
			if !pods {
				fail("no rule for pods CREATE")
			}
		}
	}
	return errs
}

// flag returns the value of a command-line flag, given as "--f v" or "--f=v".
func flag(args []string, name string) (string, bool) {
	for i, a := range args {
		if a == name && i+1 < len(args) {
			return args[i+1], true
		}
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v, true
		}
	}
	return "", false
}

// checkNodeSetup checks pullgate hosts-toml in a DaemonSet: it writes into a hostPath volume mounted at --dir, and
// --node-dir is that volume's path on the node, so the paths inside the files are the ones containerd opens.
func checkNodeSetup(objs []object) []error {
	var errs []error
	for _, w := range workloads(objs) {
		for _, c := range allContainers(w.spec) {
			if !isPullgate(c.Image) || command(c) != "hosts-toml" {
				continue
			}
			fail := func(format string, args ...any) {
				errs = append(errs, fmt.Errorf("%s: container %s: "+format, append([]any{w, c.Name}, args...)...))
			}
			if w.kind != "DaemonSet" {
				fail("hosts-toml runs on every node: a DaemonSet")
			}
			dir, _ := flag(c.Args, "--dir")
			nodeDir, _ := flag(c.Args, "--node-dir")
			i := slices.IndexFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == dir })
			if i < 0 || c.VolumeMounts[i].ReadOnly {
				fail("--dir %q is not a writable volume mount", dir)
				continue
			}
			vi := slices.IndexFunc(w.spec.Volumes, func(v corev1.Volume) bool { return v.Name == c.VolumeMounts[i].Name })
			if vi < 0 || w.spec.Volumes[vi].HostPath == nil {
				fail("--dir %q is not a hostPath volume", dir)
				continue
			}
			if hp := w.spec.Volumes[vi].HostPath.Path; nodeDir != hp {
				fail("--node-dir %q is not the host path %q mounted at --dir", nodeDir, hp)
			}
			if server, _ := flag(c.Args, "--server"); !strings.HasPrefix(server, "https://") {
				fail("--server %q must be https://", server)
			}
		}
	}
	return errs
}

// checkPublicHost checks that pullgate's public name is the same everywhere the build names it: the webhook's
// --registry, node setup's --server, and the serving Certificate's DNS names.
func checkPublicHost(objs []object) []error {
	var errs []error
	hosts := map[string]string{}
	for _, w := range workloads(objs) {
		for _, c := range allContainers(w.spec) {
			if !isPullgate(c.Image) {
				continue
			}
			switch command(c) {
			case "webhook":
				if r, ok := flag(c.Args, "--registry"); ok {
					hosts[w.String()+" --registry"] = r
				}
			case "hosts-toml":
				if s, ok := flag(c.Args, "--server"); ok {
					hosts[w.String()+" --server"] = strings.TrimPrefix(s, "https://")
				}
			}
		}
	}
	var first string
	for what, h := range hosts {
		if first == "" {
			first = h
		}
		if h != first {
			errs = append(errs, fmt.Errorf("%s is %s, elsewhere %s", what, h, first))
		}
	}
	if cert, ok := find[*certificate](objs, "pullgate", "pullgate"); ok && first != "" {
		host, _, _ := strings.Cut(first, ":")
		if !slices.Contains(cert.Spec.DNSNames, host) {
			errs = append(errs, fmt.Errorf("Certificate pullgate/pullgate: dnsNames %v lack the public host %s", cert.Spec.DNSNames, host))
		}
	}
	return errs
}

// checkCertificates checks that a Certificate whose Secret a workload mounts names every Service in front of that
// workload (<service>.<namespace>.svc, the name the API server calls a webhook by and clients in the cluster use).
// Headless Services are left out: their clients address single Pods.
func checkCertificates(objs []object) []error {
	var errs []error
	for _, o := range objs {
		svc, ok := o.obj.(*corev1.Service)
		if !ok || svc.Spec.ClusterIP == corev1.ClusterIPNone || len(svc.Spec.Selector) == 0 {
			continue
		}
		sel := labels.SelectorFromSet(svc.Spec.Selector)
		for _, w := range workloads(objs) {
			if w.namespace != o.namespace || !sel.Matches(labels.Set(templateLabels(w.object))) {
				continue
			}
			for _, v := range w.spec.Volumes {
				if v.Secret == nil {
					continue
				}
				for _, co := range objs {
					cert, ok := co.obj.(*certificate)
					if !ok || co.namespace != w.namespace || cert.Spec.SecretName != v.Secret.SecretName {
						continue
					}
					if name := o.name + "." + o.namespace + ".svc"; !slices.Contains(cert.Spec.DNSNames, name) {
						errs = append(errs, fmt.Errorf("%s: %s mounts its Secret %s behind %s, but dnsNames %v lack %s", co, w, cert.Spec.SecretName, o, cert.Spec.DNSNames, name))
					}
				}
			}
		}
	}
	return errs
}
