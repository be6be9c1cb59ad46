package k8s_test

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/pgsidecar/pgsidecar/internal/config"
)

// What the component promises; the checks below hold every Deployment it patches to it.
const (
	httpPort       = 9127
	metricsPort    = "metrics"
	scrapeLabel    = "pgsidecar.io/scrape"
	sidecarName    = "pgsidecar"
	appListen      = "127.0.0.1:6432"
	exampleAppURL  = "postgres://app@127.0.0.1:6432/app"
	fakeUpstream   = "postgres://app:secret@db.example:5432/app" // the Secret's content at run time
	defaultGraceS  = 30                                          // Kubernetes' terminationGracePeriodSeconds default
	envConfig      = "PGSIDECAR_CONFIG"
	envUpstreamF   = "PGSIDECAR_UPSTREAM_FILE"
	envPasswordF   = "PGSIDECAR_UPSTREAM_PASSWORD_FILE"
	envListen      = "PGSIDECAR_LISTEN"
	envHTTPListen  = "PGSIDECAR_HTTP_LISTEN"
	envUpstream    = "PGSIDECAR_UPSTREAM"
	envDatabaseURL = "DATABASE_URL"
)

// checkSidecar checks decoded manifest objects that add pgsidecar to Deployments:
// every Deployment must carry the sidecar as the component defines it, and its
// settings (environment plus the mounted config file) must load with the proxy's
// own configuration code. example adds the checks specific to the orders-worker
// example (its app container, an explicit grace period).
func checkSidecar(objs []object, example bool) error {
	var errs []error
	deploys := ofKind[*appsv1.Deployment](objs)
	cms := ofKind[*corev1.ConfigMap](objs)
	pms := ofKind[*monitoringv1.PodMonitor](objs)
	if len(deploys) == 0 {
		errs = append(errs, errors.New("no Deployment"))
	}
	if len(pms) != 1 {
		errs = append(errs, fmt.Errorf("%d PodMonitors, want 1", len(pms)))
	}
	for _, pm := range pms {
		errs = append(errs, checkPodMonitor(pm)...)
	}
	for _, d := range deploys {
		for _, err := range checkDeployment(d, cms, pms, example) {
			errs = append(errs, fmt.Errorf("Deployment %s: %w", d.Name, err))
		}
	}
	return errors.Join(errs...)
}

func checkPodMonitor(pm *monitoringv1.PodMonitor) []error {
	var errs []error
	if pm.APIVersion != "monitoring.coreos.com/v1" {
		errs = append(errs, fmt.Errorf("PodMonitor %s: apiVersion %q", pm.Name, pm.APIVersion))
	}
	if pm.Spec.Selector.MatchLabels[scrapeLabel] != "true" {
		errs = append(errs, fmt.Errorf("PodMonitor %s: selects %v, want the label %s=true", pm.Name, pm.Spec.Selector.MatchLabels, scrapeLabel))
	}
	if len(pm.Spec.PodMetricsEndpoints) != 1 {
		return append(errs, fmt.Errorf("PodMonitor %s: %d podMetricsEndpoints, want 1", pm.Name, len(pm.Spec.PodMetricsEndpoints)))
	}
	ep := pm.Spec.PodMetricsEndpoints[0]
	if ep.Port == nil || *ep.Port != metricsPort || ep.Path != "/metrics" {
		errs = append(errs, fmt.Errorf("PodMonitor %s: should scrape port %q path /metrics", pm.Name, metricsPort))
	}
	return errs
}

func checkDeployment(d *appsv1.Deployment, cms []*corev1.ConfigMap, pms []*monitoringv1.PodMonitor, example bool) []error {
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	pod := d.Spec.Template
	if sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector); err != nil || sel.Empty() || !sel.Matches(labels.Set(pod.Labels)) {
		fail("selector %v does not select the pod template's labels %v", d.Spec.Selector, pod.Labels)
	}
	for _, pm := range pms {
		if sel, err := metav1.LabelSelectorAsSelector(&pm.Spec.Selector); err != nil || !sel.Matches(labels.Set(pod.Labels)) {
			fail("the PodMonitor %s does not select its pods (labels %v)", pm.Name, pod.Labels)
		}
	}

	var sc *corev1.Container
	for i := range pod.Spec.InitContainers {
		if pod.Spec.InitContainers[i].Name == sidecarName {
			sc = &pod.Spec.InitContainers[i]
		}
	}
	if sc == nil {
		fail("no initContainers entry named %s", sidecarName)
		return errs
	}
	for _, c := range pod.Spec.Containers {
		if c.Name == sidecarName {
			fail("%s is also an ordinary container", sidecarName)
		}
	}
	// The native-sidecar switch.
	if sc.RestartPolicy == nil || *sc.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		fail("the sidecar needs restartPolicy: Always (a native sidecar)")
	}
	if want := sidecarImage + ":" + sidecarImageTag; sc.Image != want {
		fail("image %q, want %q", sc.Image, want)
	}
	if len(sc.Command) > 0 || len(sc.Args) > 0 {
		fail("command/args %q %q: the image's entrypoint and the PGSIDECAR_* environment configure it", sc.Command, sc.Args)
	}

	// Security.
	s := sc.SecurityContext
	switch {
	case s == nil:
		fail("the sidecar has no securityContext")
	default:
		if s.RunAsNonRoot == nil || !*s.RunAsNonRoot || s.RunAsUser == nil || *s.RunAsUser == 0 {
			fail("the sidecar must run as a non-root uid (runAsNonRoot, runAsUser)")
		}
		if s.ReadOnlyRootFilesystem == nil || !*s.ReadOnlyRootFilesystem {
			fail("the sidecar needs readOnlyRootFilesystem: true")
		}
		if s.AllowPrivilegeEscalation == nil || *s.AllowPrivilegeEscalation {
			fail("the sidecar needs allowPrivilegeEscalation: false")
		}
		if s.Privileged != nil && *s.Privileged {
			fail("the sidecar must not be privileged")
		}
		if s.Capabilities == nil || !slices.Contains(s.Capabilities.Drop, "ALL") || len(s.Capabilities.Add) > 0 {
			fail("the sidecar must drop ALL capabilities and add none")
		}
		seccomp := s.SeccompProfile
		if seccomp == nil && pod.Spec.SecurityContext != nil {
			seccomp = pod.Spec.SecurityContext.SeccompProfile
		}
		if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
			fail("the sidecar needs seccompProfile RuntimeDefault")
		}
	}
	if example {
		if ps := pod.Spec.SecurityContext; ps == nil || ps.RunAsNonRoot == nil || !*ps.RunAsNonRoot {
			fail("the example's pod should set runAsNonRoot: true")
		}
	}

	// Resources: small requests, a memory limit, no CPU limit (throttling a proxy
	// adds latency to every query).
	r := sc.Resources
	if r.Requests.Cpu().IsZero() || r.Requests.Memory().IsZero() {
		fail("the sidecar needs CPU and memory requests")
	}
	if r.Limits.Memory().IsZero() {
		fail("the sidecar needs a memory limit")
	}
	if _, ok := r.Limits[corev1.ResourceCPU]; ok {
		fail("the sidecar should have no CPU limit")
	}

	// The HTTP port: named, declared, and what the probes use.
	var port *corev1.ContainerPort
	for i := range sc.Ports {
		if sc.Ports[i].Name == metricsPort {
			port = &sc.Ports[i]
		}
	}
	if port == nil || port.ContainerPort != httpPort || (port.Protocol != "" && port.Protocol != corev1.ProtocolTCP) {
		fail("the sidecar should declare containerPort %d/TCP named %q", httpPort, metricsPort)
	}
	for _, p := range []struct {
		name, path string
		probe      *corev1.Probe
	}{{"startupProbe", "/startupz", sc.StartupProbe}, {"livenessProbe", "/livez", sc.LivenessProbe}, {"readinessProbe", "/readyz", sc.ReadinessProbe}} {
		switch {
		case p.probe == nil:
			fail("the sidecar has no %s", p.name)
		case p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != p.path ||
			!(p.probe.HTTPGet.Port.IntValue() == httpPort || p.probe.HTTPGet.Port.String() == metricsPort):
			fail("%s should be an httpGet of %s on port %d", p.name, p.path, httpPort)
		}
	}

	// The environment: the proxy's own check of PGSIDECAR_* names, then the
	// variables the component relies on. Every value must be literal, so that the
	// configuration below is what the pod really gets.
	env := map[string]string{}
	var environ []string
	for _, e := range sc.Env {
		if e.ValueFrom != nil {
			fail("env %s comes from valueFrom: use a literal value (the upstream comes from a mounted Secret file)", e.Name)
			continue
		}
		if _, dup := env[e.Name]; dup {
			fail("env %s set twice", e.Name)
		}
		env[e.Name] = e.Value
		environ = append(environ, e.Name+"="+e.Value)
	}
	if len(sc.EnvFrom) > 0 {
		fail("envFrom hides which variables the sidecar gets")
	}
	if err := config.CheckEnviron(environ); err != nil {
		fail("the proxy rejects the sidecar's environment: %v", err)
	}
	for _, name := range []string{envConfig, envUpstreamF, envListen, envHTTPListen} {
		if env[name] == "" {
			fail("the sidecar does not set %s", name)
		}
	}
	for _, name := range []string{envUpstream, envDatabaseURL} {
		if _, ok := env[name]; ok {
			fail("the sidecar sets %s: the upstream must come from the mounted Secret (%s), so that rotation reaches the pod", name, envUpstreamF)
		}
	}

	// The files those variables name: directory mounts of the ConfigMap and the
	// Secret. The contents the proxy will read are the ConfigMap's (shipped) and a
	// stand-in for the Secret's (created by the user).
	files := map[string]string{}
	for _, f := range []struct {
		env    string
		secret bool
	}{{envConfig, false}, {envUpstreamF, true}, {envPasswordF, true}} {
		file, ok := env[f.env]
		if !ok || file == "" {
			continue
		}
		vol, err := volumeFor(pod.Spec, sc, file)
		if err != nil {
			fail("%s=%s: %v", f.env, file, err)
			continue
		}
		switch {
		case f.secret && vol.Secret == nil:
			fail("%s=%s: volume %s should be a Secret", f.env, file, vol.Name)
		case f.secret && vol.Secret.SecretName == "":
			fail("%s=%s: volume %s names no Secret", f.env, file, vol.Name)
		case f.secret && f.env == envPasswordF:
			files[file] = "secret"
		case f.secret:
			files[file] = fakeUpstream
		case vol.ConfigMap == nil:
			fail("%s=%s: volume %s should be a ConfigMap", f.env, file, vol.Name)
		case len(vol.ConfigMap.Items) > 0:
			fail("%s=%s: volume %s maps items; mount the whole ConfigMap", f.env, file, vol.Name)
		default:
			cm := findConfigMap(cms, vol.ConfigMap.Name)
			if cm == nil {
				fail("%s=%s: the ConfigMap %s is not in the manifest", f.env, file, vol.ConfigMap.Name)
				continue
			}
			data, ok := cm.Data[path.Base(file)]
			if !ok {
				fail("%s=%s: the ConfigMap %s has no key %s", f.env, file, cm.Name, path.Base(file))
				continue
			}
			files[file] = data
		}
	}

	// The proxy's own loader: defaults < config file < environment, the upstream
	// read from its file, then validation.
	l, err := config.Load(config.Sources{
		Getenv: func(name string) string { return env[name] },
		ReadFile: func(name string) ([]byte, error) {
			if s, ok := files[name]; ok {
				return []byte(s), nil
			}
			return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
		},
	})
	if err != nil {
		fail("the sidecar's environment and config file are not a valid configuration:\n%v", err)
		return errs
	}
	if len(l.Shadowed) > 0 {
		fail("the environment overrides settings of the config file, which is confusing: %s", strings.Join(l.Shadowed, ", "))
	}
	if l.Upstream != fakeUpstream {
		fail("the upstream does not come from %s", envUpstreamF)
	}
	if l.Listen != appListen {
		fail("--listen %s, want %s (loopback only: the app reaches the proxy, nothing else can)", l.Listen, appListen)
	}
	if host, p, err := net.SplitHostPort(l.HTTPListen); err != nil || (host != "0.0.0.0" && host != "") || p != strconv.Itoa(httpPort) {
		fail("--http-listen %q, want 0.0.0.0:%d (the kubelet's probes and Prometheus come from outside the pod)", l.HTTPListen, httpPort)
	}

	// The grace period must leave room for the proxy's shutdown timeout.
	grace := int64(defaultGraceS)
	if g := pod.Spec.TerminationGracePeriodSeconds; g != nil {
		grace = *g
	} else if example {
		fail("the example should set terminationGracePeriodSeconds")
	}
	if time.Duration(grace)*time.Second <= l.ShutdownTimeout {
		fail("terminationGracePeriodSeconds %d is not above shutdown-timeout %v", grace, l.ShutdownTimeout)
	}

	if example {
		// The app talks to the sidecar's listener, without a password.
		var app *corev1.Container
		for i := range pod.Spec.Containers {
			if pod.Spec.Containers[i].Name == "app" {
				app = &pod.Spec.Containers[i]
			}
		}
		if app == nil {
			fail("no app container")
			return errs
		}
		var dbURL string
		for _, e := range app.Env {
			if e.Name == envDatabaseURL {
				dbURL = e.Value
			}
		}
		u, err := url.Parse(dbURL)
		switch {
		case dbURL != exampleAppURL:
			fail("the app's DATABASE_URL is %q, want %s", dbURL, exampleAppURL)
		case err != nil || u.Host != l.Listen:
			fail("DATABASE_URL %q does not point at the sidecar's --listen %s", dbURL, l.Listen)
		case u.User != nil:
			if _, has := u.User.Password(); has {
				fail("DATABASE_URL %q has a password: the app needs none", dbURL)
			}
		}
	}
	return errs
}

// volumeFor returns the pod volume mounted into c at the directory holding file,
// checking that the mount can see updates.
func volumeFor(spec corev1.PodSpec, c *corev1.Container, file string) (*corev1.Volume, error) {
	dir := path.Dir(file)
	for _, m := range c.VolumeMounts {
		if m.MountPath != dir {
			continue
		}
		if m.SubPath != "" || m.SubPathExpr != "" {
			return nil, fmt.Errorf("mounted with subPath: a subPath mount never sees an update of its ConfigMap or Secret")
		}
		if !m.ReadOnly {
			return nil, fmt.Errorf("mount %s should be readOnly", m.Name)
		}
		for i := range spec.Volumes {
			if spec.Volumes[i].Name == m.Name {
				return &spec.Volumes[i], nil
			}
		}
		return nil, fmt.Errorf("mount %s names no volume of the pod", m.Name)
	}
	return nil, fmt.Errorf("no volume mounted at %s", dir)
}

func findConfigMap(cms []*corev1.ConfigMap, name string) *corev1.ConfigMap {
	for _, cm := range cms {
		if cm.Name == name {
			return cm
		}
	}
	return nil
}

// TestSidecarExample decodes sidecar-example.yaml (the rendered example overlay)
// strictly and checks the sidecar, its configuration and its PodMonitor.
func TestSidecarExample(t *testing.T) {
	objs, err := decodeObjects(readFile(t, sidecarFile))
	if err != nil {
		t.Fatalf("%s: %v", sidecarFile, err)
	}
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.kind+"/"+o.name)
	}
	if want := []string{"ConfigMap/pgsidecar-config", "Deployment/orders-worker", "PodMonitor/pgsidecar"}; !slices.Equal(kinds, want) {
		t.Errorf("%s holds %v, want %v", sidecarFile, kinds, want)
	}
	if err := checkSidecar(objs, true); err != nil {
		t.Errorf("%s:\n%v", sidecarFile, err)
	}
}

// The checks must be able to fail: break the real example in one place each and
// make sure the check notices, for the reason it should.
func TestSidecarChecksFail(t *testing.T) {
	good := readFile(t, sidecarFile)
	deployment := func(docs []map[string]any) map[string]any {
		for _, d := range docs {
			if d["kind"] == "Deployment" {
				return d
			}
		}
		t.Fatal("no Deployment")
		return nil
	}
	podSpec := func(docs []map[string]any) map[string]any {
		return at(deployment(docs), "spec", "template", "spec").(map[string]any)
	}
	sidecar := func(docs []map[string]any) map[string]any {
		return at(podSpec(docs), "initContainers", 0).(map[string]any)
	}
	configMap := func(docs []map[string]any) map[string]any {
		for _, d := range docs {
			if d["kind"] == "ConfigMap" {
				return d["data"].(map[string]any)
			}
		}
		t.Fatal("no ConfigMap")
		return nil
	}
	setEnv := func(c map[string]any, name string, value any) {
		env := c["env"].([]any)
		for _, e := range env {
			if e.(map[string]any)["name"] == name {
				e.(map[string]any)["value"] = value
				return
			}
		}
		c["env"] = append(env, map[string]any{"name": name, "value": value})
	}
	// Strict decoding: unknown fields and wrong types.
	for _, tc := range []struct {
		name   string
		mutate func(docs []map[string]any)
		want   []string
	}{
		{"unknown field in a container", func(docs []map[string]any) { sidecar(docs)["restartPolcy"] = "Always" },
			[]string{"(Deployment)", `unknown field "restartPolcy"`}},
		{"unknown top-level field", func(docs []map[string]any) { deployment(docs)["specs"] = map[string]any{} },
			[]string{`unknown field "specs"`}},
		{"replicas as a string", func(docs []map[string]any) { deployment(docs)["spec"].(map[string]any)["replicas"] = "two" },
			[]string{"Deployment", "replicas"}},
		{"containerPort as a string", func(docs []map[string]any) { at(sidecar(docs), "ports", 0).(map[string]any)["containerPort"] = "9127" },
			[]string{"containerPort"}},
		{"unknown field in the PodMonitor", func(docs []map[string]any) {
			for _, d := range docs {
				if d["kind"] == "PodMonitor" {
					at(d, "spec", "podMetricsEndpoints", 0).(map[string]any)["scrapeIntervall"] = "15s"
				}
			}
		}, []string{"(PodMonitor)", `unknown field "scrapeIntervall"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeObjects(mutateYAML(t, good, tc.mutate))
			wantErr(t, tc.name, err, tc.want...)
		})
	}
	// A key given twice (YAML takes the last one silently).
	dup := strings.Replace(string(good), "  replicas: 2\n", "  replicas: 2\n  replicas: 3\n", 1)
	if dup == string(good) {
		t.Fatal("no replicas line to duplicate")
	}
	_, err := decodeObjects([]byte(dup))
	wantErr(t, "a duplicate key", err, `"replicas" already set`)
	// The Secret holding the upstream is the user's: shipping one is an error.
	withSecret := append(slices.Clip(good), "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: pgsidecar-upstream\nstringData:\n  url: postgres://app:pw@db/app\n"...)
	_, err = decodeObjects(withSecret)
	wantErr(t, "a shipped Secret", err, `unexpected apiVersion "v1" kind "Secret"`)
	// The semantic checks.
	for _, tc := range []struct {
		name   string
		mutate func(docs []map[string]any)
		want   []string
	}{
		{"no restartPolicy", func(docs []map[string]any) { delete(sidecar(docs), "restartPolicy") }, []string{"restartPolicy: Always"}},
		{"probe on the wrong path", func(docs []map[string]any) {
			at(sidecar(docs), "readinessProbe", "httpGet").(map[string]any)["path"] = "/livez"
		}, []string{"readinessProbe should be an httpGet of /readyz"}},
		{"writable root", func(docs []map[string]any) {
			sidecar(docs)["securityContext"].(map[string]any)["readOnlyRootFilesystem"] = false
		}, []string{"readOnlyRootFilesystem"}},
		{"a CPU limit", func(docs []map[string]any) {
			at(sidecar(docs), "resources", "limits").(map[string]any)["cpu"] = "1"
		}, []string{"no CPU limit"}},
		{"subPath mount", func(docs []map[string]any) {
			at(sidecar(docs), "volumeMounts", 0).(map[string]any)["subPath"] = "pgsidecar.conf"
		}, []string{"subPath"}},
		{"upstream from env", func(docs []map[string]any) { setEnv(sidecar(docs), envUpstream, fakeUpstream) },
			[]string{"the sidecar sets PGSIDECAR_UPSTREAM"}},
		{"unknown PGSIDECAR_ variable", func(docs []map[string]any) { setEnv(sidecar(docs), "PGSIDECAR_POOLSIZE", "10") },
			[]string{"PGSIDECAR_POOLSIZE: unknown variable"}},
		{"invalid env value", func(docs []map[string]any) { setEnv(sidecar(docs), envListen, "localhost") },
			[]string{"not a valid configuration", "--listen"}},
		{"invalid config file value", func(docs []map[string]any) {
			cm := configMap(docs)
			cm["pgsidecar.conf"] = strings.Replace(cm["pgsidecar.conf"].(string), "pool-size = 10", "pool-size = 0", 1)
		}, []string{"not a valid configuration", "pool-size"}},
		{"unknown config file setting", func(docs []map[string]any) {
			cm := configMap(docs)
			cm["pgsidecar.conf"] = cm["pgsidecar.conf"].(string) + "poolsize = 10\n"
		}, []string{"poolsize: unknown setting"}},
		{"config file setting the environment overrides", func(docs []map[string]any) {
			cm := configMap(docs)
			cm["pgsidecar.conf"] = cm["pgsidecar.conf"].(string) + "listen = 127.0.0.1:6432\n"
		}, []string{"overrides settings of the config file", "listen"}},
		{"grace period too short", func(docs []map[string]any) { podSpec(docs)["terminationGracePeriodSeconds"] = 20 },
			[]string{"terminationGracePeriodSeconds 20 is not above shutdown-timeout 20s"}},
		{"the pods not selected by the PodMonitor", func(docs []map[string]any) {
			delete(at(deployment(docs), "spec", "template", "metadata", "labels").(map[string]any), scrapeLabel)
		}, []string{"does not select its pods"}},
		{"app bypasses the proxy", func(docs []map[string]any) {
			at(podSpec(docs), "containers", 0, "env", 0).(map[string]any)["value"] = "postgres://app:pw@db.internal:5432/app"
		}, []string{"DATABASE_URL"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := decodeObjects(mutateYAML(t, good, tc.mutate))
			if err != nil {
				t.Fatalf("the mutation broke strict decoding, not the check: %v", err)
			}
			wantErr(t, tc.name, checkSidecar(objs, true), tc.want...)
		})
	}
}
