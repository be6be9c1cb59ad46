package k8s_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
)

const (
	dashboardFile   = "grafana/pgsidecar-dashboard.json"
	rulesFile       = "prometheus-rules.yaml"
	rulesTestFile   = "prometheus-rules.test.yaml"
	sidecarFile     = "sidecar-example.yaml"
	componentDir    = "kustomize/components/pgsidecar"
	exampleDir      = "kustomize/example"
	repoRoot        = "../.."
	sidecarImage    = "ghcr.io/pgsidecar/pgsidecar"
	sidecarImageTag = "latest"
)

// needTool returns the path of an external program, or skips the test when it is
// not installed (fails it when CI=true: a skipped check would silently hide
// missing coverage).
func needTool(t *testing.T, name, installHint string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		pgtest.SkipUnlessCI(t, "%s not found (%s)", name, installHint)
	}
	return p
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// object is one decoded Kubernetes object of a manifest.
type object struct {
	doc  int    // 0-based index of its YAML document
	kind string // e.g. "Deployment"
	name string
	obj  any // *appsv1.Deployment, *corev1.ConfigMap, *monitoringv1.PodMonitor, ...
}

// newObject returns an empty typed object for an apiVersion and kind, or nil for a
// kind these manifests have no business shipping.
func newObject(apiVersion, kind string) any {
	switch apiVersion + " " + kind {
	case "apps/v1 Deployment":
		return &appsv1.Deployment{}
	case "v1 ConfigMap":
		return &corev1.ConfigMap{}
	case "monitoring.coreos.com/v1 PodMonitor":
		return &monitoringv1.PodMonitor{}
	case "monitoring.coreos.com/v1 PrometheusRule":
		return &monitoringv1.PrometheusRule{}
	}
	return nil
}

// decodeObjects splits a multi-document manifest and decodes each document
// strictly into its k8s.io/api or Prometheus Operator type: an unknown field, a
// field given twice or a value of the wrong type is an error, as is a kind this
// package does not know. Documents holding only comments are skipped.
func decodeObjects(data []byte) ([]object, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var out []object
	var errs []error
	for i := 0; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			errs = append(errs, fmt.Errorf("document %d: %w", i, err))
			continue
		}
		if s := string(bytes.TrimSpace(js)); s == "null" || s == "" {
			continue // comments only
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			errs = append(errs, fmt.Errorf("document %d: %w", i, err))
			continue
		}
		obj := newObject(tm.APIVersion, tm.Kind)
		if obj == nil {
			errs = append(errs, fmt.Errorf("document %d: unexpected apiVersion %q kind %q", i, tm.APIVersion, tm.Kind))
			continue
		}
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			errs = append(errs, fmt.Errorf("document %d (%s): %w", i, tm.Kind, err))
			continue
		}
		name := obj.(metav1.Object).GetName()
		if name == "" {
			errs = append(errs, fmt.Errorf("document %d (%s): no metadata.name", i, tm.Kind))
		}
		out = append(out, object{doc: i, kind: tm.Kind, name: name, obj: obj})
	}
	return out, errors.Join(errs...)
}

// ofKind returns the objects of one kind.
func ofKind[T any](objs []object) []T {
	var out []T
	for _, o := range objs {
		if v, ok := o.obj.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

// mutateYAML decodes a manifest's documents into generic maps, lets mutate change
// them and encodes them again: the negative tests use it to break a real file in
// one place.
func mutateYAML(t *testing.T, data []byte, mutate func(docs []map[string]any)) []byte {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs []map[string]any
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := yaml.Unmarshal(doc, &m); err != nil {
			t.Fatal(err)
		}
		if m != nil {
			docs = append(docs, m)
		}
	}
	mutate(docs)
	var parts []string
	for _, d := range docs {
		b, err := yaml.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, string(b))
	}
	return []byte(strings.Join(parts, "---\n"))
}

// at walks a generic YAML/JSON value: string keys index maps, ints index lists.
func at(v any, keys ...any) any {
	for _, k := range keys {
		switch k := k.(type) {
		case string:
			v = v.(map[string]any)[k]
		case int:
			v = v.([]any)[k]
		}
	}
	return v
}

// wantErr fails the test unless err is non-nil and its text contains every one of
// wants: a negative test must fail for the reason it means to provoke.
func wantErr(t *testing.T, what string, err error, wants ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: the check passed, want it to fail", what)
		return
	}
	for _, w := range wants {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%s: error does not mention %q:\n%v", what, w, err)
		}
	}
}
