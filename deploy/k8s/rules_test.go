package k8s_test

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"sigs.k8s.io/yaml"
)

// The alerts prometheus-rules.yaml must define; each needs a case in
// prometheus-rules.test.yaml.
var wantAlerts = []string{
	"PgsidecarClientsWaiting", "PgsidecarMaxWaitHigh", "PgsidecarPoolExhausted",
	"PgsidecarLeakSuspects", "PgsidecarForcedRollbacksRising",
	"PgsidecarServerConnectFailures", "PgsidecarDown",
	"PgsidecarConfigReloadFailed",
	"PgsidecarFleetBudgetExhausted", "PgsidecarFleetCoordinationDown",
}

// rulesFileName is the plain rules file promtool reads, extracted from the
// PrometheusRule; prometheus-rules.test.yaml names it in rule_files.
const rulesFileName = "pgsidecar-rules.yaml"

// promDuration is the PrometheusRule CRD's pattern for "for" (the API server
// enforces it, not the Go types).
var promDuration = regexp.MustCompile(`^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$`)

// loadRules decodes a PrometheusRule manifest strictly into the Prometheus
// Operator's type, and returns it with its spec as a plain Prometheus rules file
// (what the Operator hands Prometheus).
func loadRules(data []byte) (*monitoringv1.PrometheusRule, []byte, error) {
	objs, err := decodeObjects(data)
	if err != nil {
		return nil, nil, err
	}
	rules := ofKind[*monitoringv1.PrometheusRule](objs)
	if len(objs) != 1 || len(rules) != 1 {
		return nil, nil, fmt.Errorf("%d objects, want one PrometheusRule", len(objs))
	}
	// The spec as written (not re-encoded from the Go types, which would add or
	// drop nothing here but could hide what the file says).
	var raw struct {
		Spec any `json:"spec"`
	}
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return nil, nil, err
	}
	plain, err := yaml.Marshal(raw.Spec)
	if err != nil {
		return nil, nil, err
	}
	return rules[0], plain, nil
}

// checkRules checks a PrometheusRule manifest: strict decoding, Prometheus's own
// rule-file loader (rulefmt: PromQL, durations, label names, annotation
// templates), and what this project asks of each alert.
func checkRules(data []byte) error {
	pr, plain, err := loadRules(data)
	if err != nil {
		return err
	}
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if _, perrs := rulefmt.Parse(plain, false, model.UTF8Validation, promqlParser, slog.New(slog.NewTextHandler(io.Discard, nil))); len(perrs) > 0 {
		errs = append(errs, perrs...)
	}
	seen := map[string]bool{}
	for _, g := range pr.Spec.Groups {
		for _, r := range g.Rules {
			where := fmt.Sprintf("group %s, alert %s", g.Name, r.Alert)
			if r.Alert == "" {
				fail("group %s: a rule that is not an alert (record %q)", g.Name, r.Record)
				continue
			}
			if seen[r.Alert] {
				fail("%s: defined twice", where)
			}
			seen[r.Alert] = true
			if !slices.Contains(wantAlerts, r.Alert) {
				fail("%s: not an alert this test knows; add it to wantAlerts (and a case to %s)", where, rulesTestFile)
			}
			expr := r.Expr.String()
			if strings.TrimSpace(expr) == "" {
				fail("%s: no expr", where)
			} else if _, err := selectors(expr); err != nil {
				fail("%s: %v", where, err)
			}
			switch {
			case r.For == nil && r.Alert != "PgsidecarDown":
				fail("%s: no for", where)
			case r.For != nil && !promDuration.MatchString(string(*r.For)):
				fail("%s: for %q is not a Prometheus duration", where, *r.For)
			}
			switch s := r.Labels["severity"]; s {
			case "critical", "warning", "info":
			default:
				fail("%s: labels.severity %q, want critical, warning or info", where, s)
			}
			summary, description := r.Annotations["summary"], r.Annotations["description"]
			if summary == "" || description == "" {
				fail("%s: needs annotations summary and description", where)
			}
			if !strings.Contains(summary+description, "$labels.") {
				fail("%s: the annotations name no $labels", where)
			}
			if r.Alert == "PgsidecarLeakSuspects" && !strings.Contains(description, `"leak suspect"`) {
				fail("%s: the description should say to grep the proxy's log for \"leak suspect\"", where)
			}
		}
	}
	for _, name := range wantAlerts {
		if !seen[name] {
			fail("alert %s missing", name)
		}
	}
	return errors.Join(errs...)
}

func TestPrometheusRule(t *testing.T) {
	if err := checkRules(readFile(t, rulesFile)); err != nil {
		t.Errorf("%s:\n%v", rulesFile, err)
	}
}

// writeRules writes the plain rules file and the unit tests into a temporary
// directory for promtool.
func writeRules(t *testing.T, plain []byte) (dir string) {
	t.Helper()
	dir = t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, rulesFileName), plain, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, rulesTestFile), readFile(t, rulesTestFile), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func promtool(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	bin := needTool(t, "promtool", "Debian package prometheus")
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestPromtoolCheckRules runs promtool check rules on the PrometheusRule's spec.
func TestPromtoolCheckRules(t *testing.T) {
	_, plain, err := loadRules(readFile(t, rulesFile))
	if err != nil {
		t.Fatal(err)
	}
	dir := writeRules(t, plain)
	out, err := promtool(t, dir, "check", "rules", rulesFileName)
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}

// TestPromtoolTestRules runs the alerts' unit tests (prometheus-rules.test.yaml)
// with promtool test rules, and checks that every alert has a test.
func TestPromtoolTestRules(t *testing.T) {
	_, plain, err := loadRules(readFile(t, rulesFile))
	if err != nil {
		t.Fatal(err)
	}
	var tests struct {
		RuleFiles []string `json:"rule_files"`
		Tests     []struct {
			AlertRuleTest []struct {
				Alertname string `json:"alertname"`
				ExpAlerts []any  `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	if err := yaml.Unmarshal(readFile(t, rulesTestFile), &tests); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(tests.RuleFiles, []string{rulesFileName}) {
		t.Errorf("%s: rule_files %v, want [%s]", rulesTestFile, tests.RuleFiles, rulesFileName)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	for _, name := range wantAlerts {
		if !fires[name] || !quiet[name] {
			t.Errorf("%s: alert %s needs a case where it fires and one where it does not", rulesTestFile, name)
		}
	}

	dir := writeRules(t, plain)
	out, err := promtool(t, dir, "test", "rules", rulesTestFile)
	if err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}

// The rule checks must be able to fail.
func TestRuleChecksFail(t *testing.T) {
	good := readFile(t, rulesFile)
	rule := func(docs []map[string]any, group, i int) map[string]any {
		return at(docs[0], "spec", "groups", group, "rules", i).(map[string]any)
	}
	for _, tc := range []struct {
		name   string
		mutate func(docs []map[string]any)
		want   []string
	}{
		{"unknown field in a rule", func(docs []map[string]any) { rule(docs, 0, 0)["fore"] = "5m" },
			[]string{"(PrometheusRule)", `unknown field "fore"`}},
		{"labels as a list", func(docs []map[string]any) { rule(docs, 0, 0)["labels"] = []any{"severity"} },
			[]string{"labels"}},
		{"broken PromQL", func(docs []map[string]any) { rule(docs, 0, 0)["expr"] = "pgsidecar_clients_waiting >" },
			[]string{"PgsidecarClientsWaiting", "parse error"}},
		{"bad duration", func(docs []map[string]any) { rule(docs, 0, 0)["for"] = "5 minutes" },
			[]string{"5 minutes"}},
		{"broken annotation template", func(docs []map[string]any) {
			at(rule(docs, 0, 0), "annotations").(map[string]any)["summary"] = "{{ $labels.pod "
		}, []string{"summary"}},
		{"no severity", func(docs []map[string]any) { delete(rule(docs, 0, 0)["labels"].(map[string]any), "severity") },
			[]string{"labels.severity"}},
		{"an alert removed", func(docs []map[string]any) {
			g := at(docs[0], "spec", "groups", 0).(map[string]any)
			g["rules"] = g["rules"].([]any)[1:]
		}, []string{"alert PgsidecarClientsWaiting missing"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantErr(t, tc.name, checkRules(mutateYAML(t, good, tc.mutate)), tc.want...)
		})
	}

	// The unit tests must catch a changed alert: wait 10 minutes instead of 2
	// before PgsidecarLeakSuspects fires, or fire ClientsWaiting at once.
	for _, tc := range []struct {
		name   string
		mutate func(docs []map[string]any)
		want   string
	}{
		{"leak alert too slow", func(docs []map[string]any) {
			for _, g := range at(docs[0], "spec", "groups").([]any) {
				for _, r := range g.(map[string]any)["rules"].([]any) {
					if r.(map[string]any)["alert"] == "PgsidecarLeakSuspects" {
						r.(map[string]any)["for"] = "10m"
					}
				}
			}
		}, "PgsidecarLeakSuspects"},
		{"waiting alert too eager", func(docs []map[string]any) { rule(docs, 0, 0)["for"] = "0m" }, "PgsidecarClientsWaiting"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, plain, err := loadRules(mutateYAML(t, good, tc.mutate))
			if err != nil {
				t.Fatal(err)
			}
			out, err := promtool(t, writeRules(t, plain), "test", "rules", rulesTestFile)
			if err == nil || !strings.Contains(out, tc.want) {
				t.Errorf("promtool test rules passed on a broken %s (err %v):\n%s", tc.want, err, out)
			}
		})
	}
}
