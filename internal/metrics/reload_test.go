package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgsidecar/pgsidecar/internal/reload"
)

func TestReloadCollector(t *testing.T) {
	st := reload.Stats{Successes: 3, Failures: 1, LastOK: false, LastSuccess: time.Unix(1700000000, 0)}
	c := NewReloadCollector(func() reload.Stats { return st })
	want := `
# HELP pgsidecar_config_last_reload_successful 1 if the last configuration reload was applied (or none happened yet), 0 if it was rejected.
# TYPE pgsidecar_config_last_reload_successful gauge
pgsidecar_config_last_reload_successful 0
# HELP pgsidecar_config_reloads_total Configuration reloads (SIGHUP, the console's RELOAD, a changed file) by result: success (applied) or error (rejected as a whole, the previous configuration stays in force).
# TYPE pgsidecar_config_reloads_total counter
pgsidecar_config_reloads_total{result="error"} 1
pgsidecar_config_reloads_total{result="success"} 3
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "pgsidecar_config_reloads_total", "pgsidecar_config_last_reload_successful"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(c); n != 4 {
		t.Errorf("%d series, want 4", n)
	}
}

func TestObserverLabelCapChange(t *testing.T) {
	o := NewObserver(1, false)
	o.Client("db", "u", "a")
	o.Client("db", "u", "b") // over the cap
	o.SetMaxApplicationLabels(2)
	o.Client("db", "u", "c")
	o.Client("db", "u", "d")
	got := map[string]bool{}
	for _, app := range []string{"a", "b", "c", "d"} {
		got[app] = o.appLabel(app) == app
	}
	if !got["a"] || got["b"] || !got["c"] || got["d"] {
		t.Errorf("labels kept: %v (want a and c)", got)
	}
}
