package k8s_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/pgsidecar/pgsidecar/internal/localpg"
	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
)

// promqlParser is Prometheus's own PromQL parser, default options.
var promqlParser = parser.NewParser(parser.Options{})

// Grafana variable references: $name, ${name}, ${name:format}, [[name]].
var grafanaVar = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}|\$([A-Za-z_][A-Za-z0-9_]*)|\[\[([A-Za-z_][A-Za-z0-9_]*)(?::[^\]]*)?\]\]`)

// grafanaBuiltins are Grafana's global variables a query may use, with a value of
// the right shape for parsing.
var grafanaBuiltins = map[string]string{
	"__rate_interval": "5m", "__interval": "1m", "__range": "1h",
	"__interval_ms": "60000", "__range_s": "3600", "__range_ms": "3600000",
}

// varRefs returns the names of the Grafana variables s refers to.
func varRefs(s string) []string {
	var out []string
	for _, m := range grafanaVar.FindAllStringSubmatch(s, -1) {
		out = append(out, m[1]+m[2]+m[3])
	}
	return out
}

// substituteVars replaces Grafana's variables in a query: the built-in intervals
// by durations, dashboard variables by a plain word (they stand in label
// matchers' regular expressions).
func substituteVars(s string) string {
	return grafanaVar.ReplaceAllStringFunc(s, func(ref string) string {
		m := grafanaVar.FindStringSubmatch(ref)
		if v, ok := grafanaBuiltins[m[1]+m[2]+m[3]]; ok {
			return v
		}
		return "x"
	})
}

// selector is one metric a query reads, with the labels its matchers name.
type selector struct {
	name   string
	labels []string
}

// selectors parses a PromQL expression (after substituting Grafana's variables)
// with Prometheus's parser and returns the metrics it selects.
func selectors(expr string) ([]selector, error) {
	e, err := promqlParser.ParseExpr(substituteVars(expr))
	if err != nil {
		return nil, fmt.Errorf("PromQL %q: %w", expr, err)
	}
	var out []selector
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		s := selector{name: vs.Name}
		for _, m := range vs.LabelMatchers {
			if m.Name == labels.MetricName {
				if m.Type == labels.MatchEqual {
					s.name = m.Value
				}
				continue
			}
			s.labels = append(s.labels, m.Name)
		}
		out = append(out, s)
		return nil
	})
	return out, nil
}

// labelValuesQuery matches a Grafana label_values(metric_selector, label) query.
var labelValuesQuery = regexp.MustCompile(`^\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$`)

// usedSelectors collects what the dashboard (panel targets and variable
// queries) and the alert rules read, by where.
func usedSelectors(t *testing.T) map[string][]selector {
	t.Helper()
	out := map[string][]selector{}
	d, err := decodeDashboard(readFile(t, dashboardFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range allPanels(d) {
		for _, tg := range p.Targets {
			s, err := selectors(tg.Expr)
			if err != nil {
				t.Fatal(err)
			}
			where := fmt.Sprintf("%s panel %q %s", dashboardFile, p.Title, tg.RefID)
			out[where] = append(out[where], s...)
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q string
		if err := json.Unmarshal(v.Query, &q); err != nil {
			var obj struct{ Query string }
			if err := json.Unmarshal(v.Query, &obj); err != nil {
				t.Fatalf("variable %s: query %s", v.Name, v.Query)
			}
			q = obj.Query
		}
		m := labelValuesQuery.FindStringSubmatch(q)
		if m == nil {
			t.Fatalf("variable %s: %q is not label_values(metric, label)", v.Name, q)
		}
		s, err := selectors(m[1])
		if err != nil {
			t.Fatal(err)
		}
		for i := range s {
			s[i].labels = append(s[i].labels, m[2]) // the label whose values it lists
		}
		where := fmt.Sprintf("%s variable %s", dashboardFile, v.Name)
		out[where] = append(out[where], s...)
	}
	pr, _, err := loadRules(readFile(t, rulesFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range pr.Spec.Groups {
		for _, r := range g.Rules {
			s, err := selectors(r.Expr.String())
			if err != nil {
				t.Fatal(err)
			}
			where := fmt.Sprintf("%s alert %s", rulesFile, r.Alert)
			out[where] = append(out[where], s...)
		}
	}
	return out
}

// targetLabels are added by Prometheus to every series of a PodMonitor's
// targets; the proxy does not export them.
var targetLabels = []string{"namespace", "pod", "container", "instance", "job", "endpoint", "service"}

// family finds the exported family a metric name of a query belongs to: the name
// itself, or a histogram's _bucket, _sum or _count series, or a summary's _sum or
// _count; it also returns the labels that name's series carry.
func family(families map[string]*dto.MetricFamily, name string) (*dto.MetricFamily, []string) {
	labelsOf := func(f *dto.MetricFamily, extra ...string) []string {
		out := slices.Clone(extra)
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if !slices.Contains(out, l.GetName()) {
					out = append(out, l.GetName())
				}
			}
		}
		return out
	}
	if f, ok := families[name]; ok {
		return f, labelsOf(f)
	}
	for suffix, types := range map[string][]dto.MetricType{
		"_bucket": {dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM},
		"_sum":    {dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM, dto.MetricType_SUMMARY},
		"_count":  {dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM, dto.MetricType_SUMMARY},
	} {
		base, ok := strings.CutSuffix(name, suffix)
		if f, exists := families[base]; ok && exists && slices.Contains(types, f.GetType()) {
			if suffix == "_bucket" {
				return f, labelsOf(f, "le")
			}
			return f, labelsOf(f)
		}
	}
	return nil, nil
}

// checkMetricUse checks the metrics that queries use (by where they are used)
// against the families a scrape returned: every pgsidecar_* name must belong to an
// exported family and every label matched on must be one its series carry (or one
// Prometheus adds to a PodMonitor's targets). It returns the families used.
func checkMetricUse(used map[string][]selector, families map[string]*dto.MetricFamily) (map[string]bool, error) {
	var errs []error
	wheres := make([]string, 0, len(used))
	for w := range used {
		wheres = append(wheres, w)
	}
	sort.Strings(wheres)
	usedFamilies := map[string]bool{}
	for _, where := range wheres {
		pg := 0
		for _, s := range used[where] {
			if !strings.HasPrefix(s.name, "pgsidecar_") {
				continue
			}
			pg++
			f, have := family(families, s.name)
			if f == nil {
				errs = append(errs, fmt.Errorf("%s: %s is not exported by the proxy", where, s.name))
				continue
			}
			usedFamilies[f.GetName()] = true
			for _, l := range s.labels {
				if !slices.Contains(have, l) && !slices.Contains(targetLabels, l) {
					errs = append(errs, fmt.Errorf("%s: %s has no label %q (it has %v)", where, s.name, l, have))
				}
			}
		}
		if pg == 0 && !strings.Contains(where, "PgsidecarDown") {
			errs = append(errs, fmt.Errorf("%s: queries no pgsidecar_ metric", where))
		}
	}
	return usedFamilies, errors.Join(errs...)
}

// TestMetricNames checks every pgsidecar_* metric the dashboard and the alerts
// use, and the labels they match on, against a live scrape of the real binary
// in front of a real PostgreSQL, after a client has done what makes every family
// appear (a transaction, a pin, a configuration reload; --fleet-budget for the
// fleet's families).
func TestMetricNames(t *testing.T) {
	used := usedSelectors(t)
	families := scrapeRealProxy(t)
	var exported []string
	for n := range families {
		if strings.HasPrefix(n, "pgsidecar_") {
			exported = append(exported, n)
		}
	}
	sort.Strings(exported)
	if len(exported) == 0 {
		t.Fatal("the proxy exported no pgsidecar_ family")
	}
	usedFamilies, err := checkMetricUse(used, families)
	if err != nil {
		t.Errorf("metrics the dashboard and the alerts use but the proxy does not export:\n%v", err)
	}
	var unused []string
	for _, n := range exported {
		if !usedFamilies[n] {
			unused = append(unused, n)
		}
	}
	t.Logf("exported and used by the dashboard or the alerts: %d families; exported, not used: %s", len(usedFamilies), strings.Join(unused, " "))
}

// The metric check must be able to fail: a name the proxy does not export, a
// histogram suffix on a gauge, a label the metric does not have.
func TestMetricChecksFail(t *testing.T) {
	gauge := func(name string, labels ...string) *dto.MetricFamily {
		m := &dto.Metric{Gauge: &dto.Gauge{Value: new(1.0)}}
		for _, l := range labels {
			m.Label = append(m.Label, &dto.LabelPair{Name: new(l), Value: new("x")})
		}
		return &dto.MetricFamily{Name: new(name), Type: dto.MetricType_GAUGE.Enum(), Metric: []*dto.Metric{m}}
	}
	families := map[string]*dto.MetricFamily{
		"pgsidecar_leak_suspects":   gauge("pgsidecar_leak_suspects"),
		"pgsidecar_clients_waiting": gauge("pgsidecar_clients_waiting", "database", "user"),
		"pgsidecar_pool_size":       gauge("pgsidecar_pool_size", "database", "user"),
	}
	if _, err := checkMetricUse(map[string][]selector{
		"ok": {{"pgsidecar_clients_waiting", []string{"database", "namespace", "pod"}}},
	}, families); err != nil {
		t.Errorf("a correct use fails: %v", err)
	}
	for _, tc := range []struct {
		expr, want string
	}{
		{`pgsidecar_config_reloads_total{pod=~"$pod"}`, "pgsidecar_config_reloads_total is not exported"},
		{`sum(pgsidecar_leak_suspects{database=~"$database"})`, `pgsidecar_leak_suspects has no label "database"`},
		{`rate(pgsidecar_pool_size_bucket[5m])`, "pgsidecar_pool_size_bucket is not exported"},
		{`up{container="pgsidecar"}`, "queries no pgsidecar_ metric"},
	} {
		sels, err := selectors(tc.expr)
		if err != nil {
			t.Fatal(err)
		}
		_, err = checkMetricUse(map[string][]selector{"dashboard": sels}, families)
		wantErr(t, tc.expr, err, tc.want)
	}
}

// TestMetricQueriesParse makes sure the PromQL checks can fail: a broken query, or
// a histogram suffix on a metric that is not a histogram.
func TestMetricQueriesParse(t *testing.T) {
	for _, bad := range []string{
		`sum(rate(pgsidecar_queries_total{pod=~"$pod"}[$__rate_interval])`,
		`pgsidecar_clients_waiting >`,
		`histogram_quantile(0.9, pgsidecar_wait_seconds_bucket{le=~"$le"}) by (le)`,
	} {
		if _, err := selectors(bad); err == nil {
			t.Errorf("%s: parsed, want a parse error", bad)
		}
	}
	s, err := selectors(`sum by (le) (rate(pgsidecar_wait_seconds_bucket{namespace=~"${namespace}", pod=~"[[pod]]", application=~"${application:regex}"}[$__rate_interval])) / on() group_left {__name__="pgsidecar_pool_size"}`)
	if err != nil {
		t.Fatal(err)
	}
	want := []selector{{"pgsidecar_wait_seconds_bucket", []string{"namespace", "pod", "application"}}, {"pgsidecar_pool_size", nil}}
	if fmt.Sprint(s) != fmt.Sprint(want) {
		t.Errorf("selectors = %v, want %v", s, want)
	}
	families := map[string]*dto.MetricFamily{
		"pgsidecar_wait_seconds": {Name: new("pgsidecar_wait_seconds"), Type: dto.MetricType_HISTOGRAM.Enum()},
		"pgsidecar_pool_size":    {Name: new("pgsidecar_pool_size"), Type: dto.MetricType_GAUGE.Enum()},
	}
	for name, ok := range map[string]bool{
		"pgsidecar_wait_seconds_bucket": true, "pgsidecar_wait_seconds_count": true, "pgsidecar_wait_seconds": true,
		"pgsidecar_pool_size_bucket": false, "pgsidecar_pool_size_count": false, "pgsidecar_nope": false,
	} {
		if f, _ := family(families, name); (f != nil) != ok {
			t.Errorf("family(%s) found %v, want %v", name, f != nil, ok)
		}
	}
}

var (
	proxyBinOnce sync.Once
	proxyBin     string
	proxyBinErr  error
)

// buildProxy builds ./cmd/proxy with the root module (the product's own go.mod,
// not this test module's), once per test binary.
func buildProxy(t *testing.T) string {
	t.Helper()
	proxyBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "pgsidecar-k8s-test-")
		if err != nil {
			proxyBinErr = err
			return
		}
		proxyBin = filepath.Join(dir, "proxy")
		cmd := exec.Command("go", "build", "-o", proxyBin, "./cmd/proxy")
		cmd.Dir = repoRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			proxyBinErr = fmt.Errorf("go build ./cmd/proxy: %v\n%s", err, out)
		}
	})
	if proxyBinErr != nil {
		t.Fatal(proxyBinErr)
	}
	return proxyBin
}

// fleetBudget is the --fleet-budget of the scraped proxy.
const fleetBudget = 4

func TestMain(m *testing.M) {
	code := m.Run()
	if proxyBin != "" {
		os.RemoveAll(filepath.Dir(proxyBin))
	}
	os.Exit(code)
}

// scrapeRealProxy runs the proxy binary with the component's config file in front
// of a throwaway PostgreSQL, drives it (a client's transaction, a pinned session,
// a reload on SIGHUP) and returns its parsed /metrics. It runs with a fleet-wide
// connection budget (--fleet-budget, off in the component), without which the
// pgsidecar_fleet_* families the Fleet row and the fleet alerts read do not exist.
func scrapeRealProxy(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	cluster := pgtest.Start(t, localpg.Options{})
	bin := buildProxy(t)

	dir := t.TempDir()
	conf := filepath.Join(dir, "pgsidecar.conf")
	if err := os.WriteFile(conf, readFile(t, filepath.Join(componentDir, "pgsidecar.conf")), 0o644); err != nil {
		t.Fatal(err)
	}
	listen, httpAddr := pgtest.FreeAddr(t), pgtest.FreeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--config", conf, "--upstream", cluster.URL("postgres"),
		"--listen", listen, "--http-listen", httpAddr, "--log-format", "text", "--client-auth", "trust", "--status-listen", "off",
		"--fleet-budget", strconv.Itoa(fleetBudget))
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PGSIDECAR_") && !strings.HasPrefix(kv, "DATABASE_URL=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("proxy log:\n%s", logs.String())
		}
	}()

	get := func(p string) (int, string) { return pgtest.HTTPGet(httpAddr, p) }
	waitFor := func(what string, within time.Duration, ok func() bool) bool {
		return pgtest.Poll(within, func() error {
			if ok() {
				return nil
			}
			select {
			case err := <-exited:
				t.Fatalf("the proxy exited (%v) while waiting for %s:\n%s", err, what, logs.String())
			default:
			}
			return errors.New("not yet")
		}) == nil
	}
	if !waitFor("/readyz", 30*time.Second, func() bool { code, _ := get("/readyz"); return code == 200 }) {
		t.Fatalf("the proxy is not ready within 30s:\n%s", logs.String())
	}

	// A client through the proxy: a transaction, then LISTEN, which pins it to its
	// server connection. It stays connected while /metrics is scraped.
	u, err := url.Parse(cluster.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	u.Host = listen
	conn, err := pgx.Connect(ctx, u.String())
	if err != nil {
		t.Fatalf("connect through the proxy: %v", err)
	}
	defer conn.Close(context.Background())
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "LISTEN pgsidecar_k8s_test"); err != nil {
		t.Fatal(err)
	}

	// A reload of the component's config file by the real proxy: it must succeed.
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if !waitFor("a reload", 10*time.Second, func() bool {
		_, body := get("/metrics")
		return strings.Contains(body, `pgsidecar_config_reloads_total{result="success"} 1`+"\n") &&
			strings.Contains(body, "pgsidecar_config_last_reload_successful 1\n")
	}) {
		_, body := get("/metrics")
		t.Errorf("no successful reload of %s/pgsidecar.conf counted 10s after SIGHUP:\n%s", componentDir, body)
	}

	// The route's share of the fleet's budget: its coordination connection up
	// and the fleet's slots counted in pg_locks (once a second).
	if !waitFor("the fleet's slots counted", 10*time.Second, func() bool {
		_, body := get("/metrics")
		return strings.Contains(body, `pgsidecar_fleet_coordination_up{database="postgres",`) &&
			strings.Contains(body, `pgsidecar_fleet_slots_held_by_fleet{database="postgres",`)
	}) {
		_, body := get("/metrics")
		t.Errorf("no fleet coordination up and slots counted 10s after a transaction under --fleet-budget %d:\n%s", fleetBudget, body)
	}

	code, body := get("/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	tp := expfmt.NewTextParser(model.UTF8Validation)
	families, err := tp.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	if !strings.Contains(body, `pgsidecar_client_pins_total{reason=`) {
		t.Errorf("no pin was counted after LISTEN:\n%s", body)
	}
	return families
}
