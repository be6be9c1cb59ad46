package metrics_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgsidecar/pgsidecar/internal/metrics"
	"github.com/pgsidecar/pgsidecar/internal/pool"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
)

// --metrics-compat pgbouncer exports pgbouncer_exporter's names with values from
// pgsidecar's own figures.
func TestPgBouncerCompat(t *testing.T) {
	down := errors.New("database is down")
	reg := pool.NewRegistry(func(pool.Key) *pool.Pool {
		return pool.New(pool.Config{Size: 3, Dial: func(context.Context) (*pool.Backend, error) { return nil, down }})
	})
	defer reg.Close()
	reg.Get(pool.Key{Database: "app", User: "worker"})
	srv := proxy.NewServer(proxy.Options{}, reg)
	defer srv.Close()
	obs := metrics.NewObserver(10, true)
	c := obs.Client("app", "worker", "orders")
	c.Waited(250 * time.Millisecond)
	c.TransactionDone(2 * time.Second)
	c.TransactionDone(time.Second)
	c.Query()
	compat := metrics.NewPgBouncerCompat(reg, srv, obs)
	if problems, err := testutil.CollectAndLint(compat); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
	want := `
# HELP pgbouncer_up The pooler is up (pgsidecar, PgBouncer-compatible name).
# TYPE pgbouncer_up gauge
pgbouncer_up 1
# HELP pgbouncer_pools_server_idle_connections Server connections idle and ready for a client.
# TYPE pgbouncer_pools_server_idle_connections gauge
pgbouncer_pools_server_idle_connections{database="app",user="worker"} 0
# HELP pgbouncer_stats_sql_transactions_pooled_total Total number of SQL transactions pooled (pgsidecar: server connection holds).
# TYPE pgbouncer_stats_sql_transactions_pooled_total counter
pgbouncer_stats_sql_transactions_pooled_total{database="app"} 2
# HELP pgbouncer_stats_server_in_transaction_seconds_total Seconds server connections spent linked to a client in a transaction.
# TYPE pgbouncer_stats_server_in_transaction_seconds_total counter
pgbouncer_stats_server_in_transaction_seconds_total{database="app"} 3
# HELP pgbouncer_stats_client_wait_seconds_total Time spent by clients waiting for a server in seconds.
# TYPE pgbouncer_stats_client_wait_seconds_total counter
pgbouncer_stats_client_wait_seconds_total{database="app"} 0.25
# HELP pgbouncer_stats_queries_pooled_total Total number of SQL queries pooled.
# TYPE pgbouncer_stats_queries_pooled_total counter
pgbouncer_stats_queries_pooled_total{database="app"} 1
`
	if err := testutil.CollectAndCompare(compat, strings.NewReader(want), "pgbouncer_up",
		"pgbouncer_pools_server_idle_connections", "pgbouncer_stats_sql_transactions_pooled_total",
		"pgbouncer_stats_server_in_transaction_seconds_total", "pgbouncer_stats_client_wait_seconds_total",
		"pgbouncer_stats_queries_pooled_total"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"pgbouncer_pools_client_active_connections", "pgbouncer_pools_client_waiting_connections",
		"pgbouncer_pools_server_active_connections", "pgbouncer_pools_server_used_connections",
		"pgbouncer_pools_server_testing_connections", "pgbouncer_pools_server_login_connections",
		"pgbouncer_pools_client_maxwait_seconds"} {
		if n := testutil.CollectAndCount(compat, name); n != 1 {
			t.Errorf("%s: %d series, want 1", name, n)
		}
	}
	// Without compatibility the observer counts nothing of PgBouncer's.
	if n := testutil.CollectAndCount(metrics.NewObserver(10, false), "pgbouncer_stats_queries_pooled_total"); n != 0 {
		t.Errorf("compat counters without --metrics-compat: %d series", n)
	}
}
