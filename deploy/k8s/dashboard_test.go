package k8s_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

// The dashboard is checked twice over:
//
//   - against Grafana's schema, with the Grafana Foundation SDK's strict decoder
//     (generated from Grafana's own CUE schemas: the dashboard, each panel type's
//     options and field config, the Prometheus query model), which rejects unknown
//     fields, wrong types and missing required fields;
//   - decoded strictly (DisallowUnknownFields) into the model below, which the
//     checks of what this project requires read. v0.0.22's strict decoder reports
//     errors faithfully but does not fill in panels, targets or options (its
//     generated code compares a nil cog.BuildErrors stored in an error with nil),
//     so the SDK serves as the schema and this model as the data.

type dsRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type gridPos struct {
	X int `json:"x"`
	Y int `json:"y"`
	W int `json:"w"`
	H int `json:"h"`
}

type dashTarget struct {
	Datasource     *dsRef `json:"datasource"`
	RefID          string `json:"refId"`
	Expr           string `json:"expr"`
	LegendFormat   string `json:"legendFormat"`
	Range          *bool  `json:"range"`
	Instant        *bool  `json:"instant"`
	Format         string `json:"format"`
	Interval       string `json:"interval"`
	Hide           *bool  `json:"hide"`
	EditorMode     string `json:"editorMode"`
	Exemplar       *bool  `json:"exemplar"`
	IntervalFactor *int   `json:"intervalFactor"`
}

type dashPanel struct {
	Type             string            `json:"type"`
	ID               *int              `json:"id"`
	Title            string            `json:"title"`
	Description      string            `json:"description"`
	Collapsed        *bool             `json:"collapsed"`
	Datasource       *dsRef            `json:"datasource"`
	GridPos          *gridPos          `json:"gridPos"`
	Targets          []dashTarget      `json:"targets"`
	Panels           []dashPanel       `json:"panels"` // a row's panels
	FieldConfig      json.RawMessage   `json:"fieldConfig"`
	Options          json.RawMessage   `json:"options"`
	Transformations  []json.RawMessage `json:"transformations"`
	Links            []json.RawMessage `json:"links"`
	Interval         string            `json:"interval"`
	MaxDataPoints    *int              `json:"maxDataPoints"`
	PluginVersion    string            `json:"pluginVersion"`
	Transparent      bool              `json:"transparent"`
	Repeat           string            `json:"repeat"`
	RepeatDirection  string            `json:"repeatDirection"`
	TimeFrom         string            `json:"timeFrom"`
	TimeShift        string            `json:"timeShift"`
	HideTimeOverride bool              `json:"hideTimeOverride"`
}

type dashVariable struct {
	Type        string            `json:"type"`
	Name        string            `json:"name"`
	Label       string            `json:"label"`
	Description string            `json:"description"`
	Query       json.RawMessage   `json:"query"`
	Definition  string            `json:"definition"`
	Datasource  *dsRef            `json:"datasource"`
	Current     json.RawMessage   `json:"current"`
	Hide        int               `json:"hide"`
	IncludeAll  bool              `json:"includeAll"`
	Multi       bool              `json:"multi"`
	AllValue    string            `json:"allValue"`
	Options     []json.RawMessage `json:"options"`
	Refresh     int               `json:"refresh"`
	Regex       string            `json:"regex"`
	Sort        int               `json:"sort"`
	SkipURLSync bool              `json:"skipUrlSync"`
}

type dashboardModel struct {
	ID          *int   `json:"id"`
	UID         string `json:"uid"`
	Title       string `json:"title"`
	Description string `json:"description"`
	Annotations struct {
		List []json.RawMessage `json:"list"`
	} `json:"annotations"`
	Editable             bool              `json:"editable"`
	FiscalYearStartMonth int               `json:"fiscalYearStartMonth"`
	GraphTooltip         int               `json:"graphTooltip"`
	LiveNow              bool              `json:"liveNow"`
	Links                []json.RawMessage `json:"links"`
	Panels               []dashPanel       `json:"panels"`
	Refresh              string            `json:"refresh"`
	SchemaVersion        int               `json:"schemaVersion"`
	Tags                 []string          `json:"tags"`
	Templating           struct {
		List []dashVariable `json:"list"`
	} `json:"templating"`
	Time struct {
		From string `json:"from"`
		To   string `json:"to"`
	} `json:"time"`
	Timepicker json.RawMessage `json:"timepicker"`
	Timezone   string          `json:"timezone"`
	Version    int             `json:"version"`
	WeekStart  string          `json:"weekStart"`
}

// decodeDashboard decodes the dashboard JSON strictly into dashboardModel.
func decodeDashboard(raw []byte) (dashboardModel, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var d dashboardModel
	if err := dec.Decode(&d); err != nil {
		return d, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return d, errors.New("data after the dashboard object")
	}
	return d, nil
}

var registerPlugins sync.Once

// sdkErr turns the SDK's typed nil (an empty cog.BuildErrors) into nil.
func sdkErr(err error) error {
	if be, ok := err.(cog.BuildErrors); ok && len(be) == 0 {
		return nil
	}
	return err
}

// schemaErrors checks the dashboard against Grafana's schema (Grafana Foundation
// SDK): the whole dashboard, and the field config of each panel, which the
// dashboard decoder checks only loosely.
func schemaErrors(raw []byte, d dashboardModel) error {
	registerPlugins.Do(plugins.RegisterDefaultPlugins)
	var errs []error
	var sd dashboard.Dashboard
	if err := sdkErr(sd.UnmarshalJSONStrict(raw)); err != nil {
		errs = append(errs, fmt.Errorf("Grafana schema: %w", err))
	}
	for _, p := range allPanels(d) {
		if p.Type == "row" {
			continue
		}
		if _, ok := cog.ConfigForPanelcfgVariant(p.Type); !ok {
			errs = append(errs, fmt.Errorf("panel %q: unknown panel type %q", p.Title, p.Type))
		}
		if p.FieldConfig != nil {
			var fc dashboard.FieldConfigSource
			if err := sdkErr(fc.UnmarshalJSONStrict(p.FieldConfig)); err != nil {
				errs = append(errs, fmt.Errorf("panel %q: Grafana schema: fieldConfig: %w", p.Title, err))
			}
		}
	}
	return errors.Join(errs...)
}

// allPanels returns the top-level panels followed by the panels of collapsed rows.
func allPanels(d dashboardModel) []dashPanel {
	var out []dashPanel
	for _, p := range d.Panels {
		out = append(out, p)
		out = append(out, p.Panels...)
	}
	return out
}

// checkDashboard checks the dashboard JSON: Grafana's schema, strict decoding,
// then what this project requires: a Prometheus data source variable every panel
// and query uses, the filter variables, every panel with a title, a unique id, a
// place on the grid and at least one PromQL query that Prometheus's parser
// accepts and that reads a pgsidecar_ metric, and every variable referred to
// anywhere defined.
func checkDashboard(raw []byte) error {
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	d, err := decodeDashboard(raw)
	if err := schemaErrors(raw, d); err != nil {
		errs = append(errs, err)
	}
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("decode: %w", err))...)
	}
	if d.UID == "" || d.Title == "" {
		fail("the dashboard needs a uid and a title, got uid %q title %q", d.UID, d.Title)
	}
	if d.SchemaVersion < 36 {
		fail("schemaVersion %d, want 36 or later", d.SchemaVersion)
	}

	// Template variables.
	vars := map[string]dashVariable{}
	dsVar := ""
	for _, v := range d.Templating.List {
		if v.Name == "" {
			fail("a template variable has no name")
		}
		if _, dup := vars[v.Name]; dup {
			fail("template variable %q defined twice", v.Name)
		}
		vars[v.Name] = v
		if v.Type == "datasource" {
			var q string
			if err := json.Unmarshal(v.Query, &q); err != nil || q != "prometheus" {
				fail("data source variable %q: query %s, want \"prometheus\"", v.Name, v.Query)
			}
			dsVar = v.Name
		}
	}
	if dsVar == "" {
		fail("no template variable of type datasource")
	}
	wantDS := "${" + dsVar + "}"
	defined := func(where, text string) {
		for _, name := range varRefs(text) {
			if _, ok := vars[name]; !ok {
				if _, builtin := grafanaBuiltins[name]; !builtin {
					fail("%s uses undefined variable $%s", where, name)
				}
			}
		}
	}
	for _, name := range []string{"database", "user", "application", "namespace", "pod"} {
		v, ok := vars[name]
		switch {
		case !ok:
			fail("template variable %q missing", name)
		case v.Type != "query" || !strings.HasPrefix(v.Definition, "label_values(") || !strings.Contains(string(v.Query), "label_values("):
			fail("template variable %q: type %q definition %q, want a label_values query", name, v.Type, v.Definition)
		case v.Datasource == nil || v.Datasource.UID != wantDS:
			fail("template variable %q: datasource %+v, want uid %s", name, v.Datasource, wantDS)
		}
	}
	for _, v := range d.Templating.List {
		where := fmt.Sprintf("template variable %q", v.Name)
		defined(where, string(v.Query))
		defined(where, v.Definition)
		if v.Datasource != nil {
			defined(where, v.Datasource.UID)
		}
	}

	// Panels.
	ids := map[int]string{}
	for _, p := range allPanels(d) {
		name := fmt.Sprintf("panel %q", p.Title)
		if p.Title == "" {
			fail("a %s panel has no title", p.Type)
		}
		defined(name+" title", p.Title)
		defined(name+" description", p.Description)
		if p.ID == nil {
			fail("%s: no id", name)
		} else if other, dup := ids[*p.ID]; dup {
			fail("%s: id %d already used by panel %q", name, *p.ID, other)
		} else {
			ids[*p.ID] = p.Title
		}
		if g := p.GridPos; g == nil {
			fail("%s: no gridPos", name)
		} else if g.W < 1 || g.H < 1 || g.X < 0 || g.Y < 0 || g.X+g.W > 24 {
			fail("%s: gridPos %+v outside the 24-column grid", name, *g)
		}
		if p.Type == "row" {
			if len(p.Targets) > 0 || p.Datasource != nil {
				fail("%s: a row has no queries", name)
			}
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != wantDS || p.Datasource.Type != "prometheus" {
			fail("%s: datasource %+v, want {prometheus %s}", name, p.Datasource, wantDS)
		}
		if len(p.Targets) == 0 {
			fail("%s: no targets", name)
		}
		refIDs := map[string]bool{}
		for i, tg := range p.Targets {
			if tg.RefID == "" || refIDs[tg.RefID] {
				fail("%s: target %d: missing or repeated refId %q", name, i, tg.RefID)
			}
			refIDs[tg.RefID] = true
			where := fmt.Sprintf("%s target %s", name, tg.RefID)
			if tg.Datasource != nil && (tg.Datasource.UID != wantDS || tg.Datasource.Type != "prometheus") {
				fail("%s: datasource %+v, want {prometheus %s}", where, tg.Datasource, wantDS)
			}
			if strings.TrimSpace(tg.Expr) == "" {
				fail("%s: no expr", where)
				continue
			}
			defined(where, tg.Expr)
			sels, err := selectors(tg.Expr)
			if err != nil {
				fail("%s: %v", where, err)
				continue
			}
			if !slices.ContainsFunc(sels, func(s selector) bool { return strings.HasPrefix(s.name, "pgsidecar_") }) {
				fail("%s: queries no pgsidecar_ metric: %s", where, tg.Expr)
			}
		}
	}
	// Top-level panels must not overlap (collapsed rows' panels are laid out when opened).
	for i, a := range d.Panels {
		for _, b := range d.Panels[i+1:] {
			if a.GridPos != nil && b.GridPos != nil && overlap(*a.GridPos, *b.GridPos) {
				fail("panels %q %+v and %q %+v overlap", a.Title, *a.GridPos, b.Title, *b.GridPos)
			}
		}
	}
	return errors.Join(errs...)
}

func overlap(a, b gridPos) bool {
	return a.X < b.X+b.W && b.X < a.X+a.W && a.Y < b.Y+b.H && b.Y < a.Y+a.H
}

func TestDashboard(t *testing.T) {
	if err := checkDashboard(readFile(t, dashboardFile)); err != nil {
		t.Errorf("%s:\n%v", dashboardFile, err)
	}
}

// The dashboard checks must be able to fail: break the real dashboard in memory
// in one place each.
func TestDashboardChecksFail(t *testing.T) {
	good := readFile(t, dashboardFile)
	// panel returns the first panel of a type.
	panel := func(d map[string]any, typ string) map[string]any {
		for _, p := range d["panels"].([]any) {
			if p.(map[string]any)["type"] == typ {
				return p.(map[string]any)
			}
		}
		t.Fatalf("no %s panel", typ)
		return nil
	}
	target := func(d map[string]any) map[string]any {
		return at(panel(d, "timeseries"), "targets", 0).(map[string]any)
	}
	for _, tc := range []struct {
		name   string
		mutate func(d map[string]any)
		want   []string
	}{
		{"a panel without a datasource", func(d map[string]any) { delete(panel(d, "timeseries"), "datasource") },
			[]string{"datasource <nil>, want {prometheus ${datasource}}"}},
		{"a panel with another datasource", func(d map[string]any) {
			panel(d, "stat")["datasource"] = map[string]any{"type": "loki", "uid": "${datasource}"}
		}, []string{"want {prometheus ${datasource}}"}},
		{"a target without expr", func(d map[string]any) { delete(target(d), "expr") },
			[]string{"targets[0].expr: required field is missing", "no expr"}},
		{"a panel without targets", func(d map[string]any) { delete(panel(d, "stat"), "targets") },
			[]string{"no targets"}},
		{"an unknown panel field", func(d map[string]any) { panel(d, "timeseries")["decription"] = "typo" },
			[]string{"unexpected field 'decription'", `unknown field "decription"`}},
		{"an unknown dashboard field", func(d map[string]any) { d["refreshInterval"] = "30s" },
			[]string{`unknown field "refreshInterval"`}},
		{"an unknown option", func(d map[string]any) { panel(d, "stat")["options"].(map[string]any)["colourMode"] = "value" },
			[]string{"unexpected field 'colourMode'"}},
		{"an unknown field config default", func(d map[string]any) {
			at(panel(d, "timeseries"), "fieldConfig", "defaults").(map[string]any)["units"] = "s"
		}, []string{"fieldConfig", "unexpected field 'units'"}},
		{"an unknown query field", func(d map[string]any) { target(d)["query"] = "up" },
			[]string{"unexpected field 'query'", `unknown field "query"`}},
		{"a wrong type", func(d map[string]any) { panel(d, "timeseries")["gridPos"].(map[string]any)["w"] = "12" },
			[]string{"gridPos"}},
		{"an unknown panel type", func(d map[string]any) { panel(d, "timeseries")["type"] = "timeseriez" },
			[]string{`unknown panel type "timeseriez"`}},
		{"an undefined variable", func(d map[string]any) {
			target(d)["expr"] = strings.Replace(target(d)["expr"].(string), `pod=~"$pod"`, `pod=~"$pod", cluster=~"$cluster"`, 1)
		}, []string{"uses undefined variable $cluster"}},
		{"an undefined ${variable} in a title", func(d map[string]any) { panel(d, "stat")["title"] = "Leaks in ${cluster}" },
			[]string{"uses undefined variable $cluster"}},
		{"a used variable removed", func(d map[string]any) {
			tl := at(d, "templating").(map[string]any)
			tl["list"] = slices.DeleteFunc(tl["list"].([]any), func(v any) bool { return v.(map[string]any)["name"] == "application" })
		}, []string{`template variable "application" missing`, "uses undefined variable $application"}},
		{"broken PromQL", func(d map[string]any) { target(d)["expr"] = "sum by (state) (pgsidecar_server_connections" },
			[]string{"PromQL", "unclosed left parenthesis"}},
		{"no pgsidecar metric", func(d map[string]any) { target(d)["expr"] = `up{pod=~"$pod"}` },
			[]string{"queries no pgsidecar_ metric"}},
		{"a duplicate panel id", func(d map[string]any) { panel(d, "stat")["id"] = panel(d, "timeseries")["id"] },
			[]string{"already used by panel"}},
		{"overlapping panels", func(d map[string]any) {
			panel(d, "stat")["gridPos"] = maps(panel(d, "timeseries")["gridPos"])
		}, []string{"overlap"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var d map[string]any
			if err := json.Unmarshal(good, &d); err != nil {
				t.Fatal(err)
			}
			tc.mutate(d)
			raw, err := json.Marshal(d)
			if err != nil {
				t.Fatal(err)
			}
			wantErr(t, tc.name, checkDashboard(raw), tc.want...)
		})
	}
}

// maps copies a JSON object.
func maps(v any) map[string]any {
	out := map[string]any{}
	for k, x := range v.(map[string]any) {
		out[k] = x
	}
	return out
}
