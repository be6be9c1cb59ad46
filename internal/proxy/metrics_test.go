package proxy_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	dto "github.com/prometheus/client_model/go"

	"github.com/pgsidecar/pgsidecar/internal/metrics"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
)

// The saturation and leak metrics follow what clients do: a client idle in a
// transaction, another waiting for the only backend, the wait, hold and idle
// histograms, pool exhaustion time and a pinned backend.
func TestMetricsThroughProxy(t *testing.T) {
	db := newDatabase(t)
	obs := metrics.NewObserver(10, false)
	tp := startProxy(t, db, proxyOpts{PoolSize: 1, Opt: proxy.Options{Observer: obs}})
	_, reg := metrics.Handler(metrics.NewCollector(tp.pools, tp.srv), obs)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	gather := func() map[string][]*dto.Metric {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string][]*dto.Metric{}
		for _, mf := range mfs {
			out[mf.GetName()] = mf.GetMetric()
		}
		return out
	}
	label := func(m *dto.Metric, name string) string {
		for _, l := range m.GetLabel() {
			if l.GetName() == name {
				return l.GetValue()
			}
		}
		return ""
	}
	gauge := func(name, state string) float64 {
		for _, m := range gather()[name] {
			if label(m, "state") == state {
				return m.GetGauge().GetValue()
			}
		}
		return 0
	}

	a := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
	b := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
	tx, err := a.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	if v := gauge("pgsidecar_clients", proxy.StateIdleInTransaction); v != 1 {
		t.Fatalf("clients{state=idle_in_transaction} = %v, want 1", v)
	}
	done := make(chan error, 1)
	go func() {
		_, err := b.Exec(ctx, "SELECT 2")
		done <- err
	}()
	eventually(t, 5*time.Second, "b waiting", func() error {
		if v := gauge("pgsidecar_clients", proxy.StateWaiting); v != 1 {
			return fmt.Errorf("clients{state=waiting} = %v", v)
		}
		return nil
	})
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "histograms", func() error {
		m := gather()
		var waits, waitSum float64
		for _, s := range m["pgsidecar_wait_seconds"] {
			waits += float64(s.GetHistogram().GetSampleCount())
			waitSum += s.GetHistogram().GetSampleSum()
		}
		var holds, idles float64
		for _, s := range m["pgsidecar_transaction_hold_seconds"] {
			holds += float64(s.GetHistogram().GetSampleCount())
		}
		for _, s := range m["pgsidecar_idle_transaction_seconds"] {
			idles += float64(s.GetHistogram().GetSampleCount())
		}
		var exhausted float64
		for _, s := range m["pgsidecar_pool_exhausted_seconds_total"] {
			exhausted += s.GetCounter().GetValue()
		}
		// a: BEGIN...COMMIT is one hold; b: one; the connects' first queries none.
		if waits < 2 || waitSum <= 0 || holds < 2 || idles < 1 || exhausted <= 0 {
			return fmt.Errorf("waits %v (sum %v), holds %v, idle episodes %v, exhausted %v s", waits, waitSum, holds, idles, exhausted)
		}
		return nil
	})

	// A pinned client's backend is reported as pinned, not active.
	if _, err := a.Exec(ctx, "SELECT pg_advisory_lock(7)"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "pinned backend", func() error {
		if v := gauge("pgsidecar_server_connections", "pinned"); v != 1 {
			return fmt.Errorf("server_connections{state=pinned} = %v", v)
		}
		if v := gauge("pgsidecar_server_connections", "active"); v != 0 {
			return fmt.Errorf("server_connections{state=active} = %v", v)
		}
		return nil
	})
	if _, err := a.Exec(ctx, "SELECT pg_advisory_unlock(7)"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "unpinned", func() error {
		if v := gauge("pgsidecar_server_connections", "pinned"); v != 0 {
			return fmt.Errorf("server_connections{state=pinned} = %v", v)
		}
		return nil
	})
}
