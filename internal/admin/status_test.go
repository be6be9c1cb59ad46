package admin

import (
	"encoding/json"
	"go/parser"
	"go/token"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
)

const xss = "SELECT '<script>alert(1)</script>' & 1"

func fakeStatus() Status {
	return Status{
		Time: time.Date(2026, 11, 26, 3, 0, 0, 0, time.UTC),
		Pools: []PoolStatus{{Database: "app", User: "web", Size: 20, Active: 3, Idle: 5, Login: 1, Pinned: 1,
			Waiting: 2, MaxWaitSeconds: 0.25}},
		Clients: map[string]int{"idle": 7, "waiting": 2, "idle_in_transaction": 1},
		Leaks: []LeakStatus{{ID: 42, Application: "<b>worker</b>", User: "web", Database: "app",
			Client: "10.0.0.7:51234", State: "idle_in_transaction", LastStatement: xss,
			AgeSeconds: 12.5, Suspect: true, ServerPID: 4711}},
		LeakThresholdSeconds: 10,
	}
}

func statusServer(t *testing.T) *httptest.Server {
	t.Helper()
	ts := httptest.NewServer(NewStatusHandler(fakeStatus))
	t.Cleanup(ts.Close)
	return ts
}

func get(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

func TestStatusPage(t *testing.T) {
	ts := statusServer(t)
	resp, body := get(t, ts.URL+"/")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /: %d", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Errorf("Content-Type %q, want text/html", ct)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q", cc)
	}
	for _, want := range []string{"<title>pgsidecar status</title>", "<script>", `fetch("status.json"`, "setTimeout(poll"} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	// Self-contained: no asset (or anything) from the network.
	for _, bad := range []string{"http://", "https://", "//cdn", "@import", "<link rel=\"stylesheet\"", "src="} {
		if strings.Contains(body, bad) {
			t.Errorf("page references %q: it must not load external assets", bad)
		}
	}
}

// TestStatusPageNoMarkupFromData checks by source that the page's script only
// ever renders data as text: no innerHTML/outerHTML/insertAdjacentHTML/
// document.write, and text goes through textContent.
func TestStatusPageNoMarkupFromData(t *testing.T) {
	page := string(statusPage)
	for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"} {
		if strings.Contains(page, bad) {
			t.Errorf("page script uses %s: data must be rendered with textContent", bad)
		}
	}
	if !strings.Contains(page, "textContent") {
		t.Error("page script does not use textContent")
	}
	// The last statement goes through a value function, i.e. td.textContent.
	if !regexp.MustCompile(`return l\.last_statement;`).MatchString(page) {
		t.Error("last statement is not rendered through the text-only table path")
	}
}

func TestStatusPageCSP(t *testing.T) {
	ts := statusServer(t)
	resp, _ := get(t, ts.URL+"/")
	csp := resp.Header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "connect-src 'self'", "script-src 'sha256-", "style-src 'sha256-"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
}

func TestStatusJSON(t *testing.T) {
	ts := statusServer(t)
	resp, body := get(t, ts.URL+"/status.json")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /status.json: %d", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q", cc)
	}
	var got Status
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("decode: %v\n%s", err, body)
	}
	if want := fakeStatus(); !reflect.DeepEqual(got, want) {
		t.Errorf("status.json round trip:\n got %+v\nwant %+v", got, want)
	}
	// JSON escapes markup characters; the raw body never carries a tag.
	if strings.Contains(body, "<script>") || strings.Contains(body, "<b>") || strings.Contains(body, "&") {
		t.Errorf("status.json carries unescaped markup: %s", body)
	}
	if !strings.Contains(body, `\u003cscript\u003ealert(1)\u003c/script\u003e`) {
		t.Errorf("status.json does not escape the statement as JSON does: %s", body)
	}
	for _, key := range []string{`"pools":`, `"max_wait_seconds":0.25`, `"last_statement":`, `"age_seconds":12.5`, `"suspect":true`, `"server_pid":4711`, `"waiting":2`} {
		if !strings.Contains(body, key) {
			t.Errorf("status.json lacks %s: %s", key, body)
		}
	}
}

func TestStatusJSONEmptyListsAreArrays(t *testing.T) {
	ts := httptest.NewServer(NewStatusHandler(func() Status { return Status{} }))
	defer ts.Close()
	_, body := get(t, ts.URL+"/status.json")
	for _, want := range []string{`"pools":[]`, `"leaks":[]`, `"clients":{}`} {
		if !strings.Contains(body, want) {
			t.Errorf("status.json lacks %s: %s", want, body)
		}
	}
	if strings.Contains(body, `"time":"0001-`) {
		t.Errorf("zero time not filled in: %s", body)
	}
}

func TestStatusUnknownPath404(t *testing.T) {
	ts := statusServer(t)
	for _, p := range []string{"/nope", "/index.html", "/status.json/x", "/status"} {
		resp, _ := get(t, ts.URL+p)
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", p, resp.StatusCode)
		}
	}
	// The status listener serves nothing else: the probes and metrics are on
	// --http-listen.
	for _, p := range []string{"/livez", "/readyz", "/metrics"} {
		if resp, _ := get(t, ts.URL+p); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s on the status handler: %d, want 404", p, resp.StatusCode)
		}
	}
}

// The health and metrics handler has no status page.
func TestStatusNotOnHTTPListen(t *testing.T) {
	ts := httptest.NewServer(NewHandler(Probes{}, nil))
	defer ts.Close()
	for _, p := range []string{"/", "/status.json"} {
		resp, _ := get(t, ts.URL+p)
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s on the health and metrics handler: %d, want 404 (the status page has its own listener)", p, resp.StatusCode)
		}
	}
}

// TestAdminImportsNoHotPath keeps admin independent of the hot path's packages.
func TestAdminImportsNoHotPath(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			for _, bad := range []string{"/internal/proxy", "/internal/pool", "/internal/wire"} {
				if strings.HasSuffix(strings.Trim(imp.Path.Value, `"`), bad) {
					t.Errorf("%s imports %s", f, imp.Path.Value)
				}
			}
		}
	}
}
