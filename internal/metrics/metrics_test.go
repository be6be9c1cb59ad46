package metrics_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/metrics"
	"github.com/pgsidecar/pgsidecar/internal/pool"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
)

func TestCollector(t *testing.T) {
	down := errors.New("database is down")
	reg := pool.NewRegistry(func(pool.Key) *pool.Pool {
		return pool.New(pool.Config{Size: 7, Dial: func(context.Context) (*pool.Backend, error) { return nil, down }})
	})
	defer reg.Close()
	p := reg.Get(pool.Key{Database: "app", User: "worker"})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := p.Acquire(ctx); !errors.Is(err, pool.ErrDial) {
		t.Fatalf("acquire: %v, want ErrDial", err)
	}
	c := metrics.NewCollector(reg, proxy.NewServer(proxy.Options{}, reg))
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
	want := `
# HELP pgsidecar_pool_size Configured maximum of server connections of the pool.
# TYPE pgsidecar_pool_size gauge
pgsidecar_pool_size{database="app",user="worker"} 7
# HELP pgsidecar_server_connect_failures_total Failed attempts to open a server connection, those of routes that never logged in included: under the upstream's own database and user for its route, else under database and user "(unknown)".
# TYPE pgsidecar_server_connect_failures_total counter
pgsidecar_server_connect_failures_total{database="app",user="worker"} 1
# HELP pgsidecar_client_connections_open Connected clients (logged in or logging in).
# TYPE pgsidecar_client_connections_open gauge
pgsidecar_client_connections_open 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want),
		"pgsidecar_pool_size", "pgsidecar_server_connect_failures_total", "pgsidecar_client_connections_open"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(c, "pgsidecar_client_errors_total"); n != 12 {
		t.Errorf("client_errors_total: %d reasons, want 12", n)
	}
	if v := p.Stats().DialTime; v <= 0 {
		t.Errorf("DialTime after a failed dial = %v, want > 0", v)
	}
}

// Failed logins of routes whose pool the registry dropped (a database down at pod
// start, a bad Secret, a mistyped database) still count: the upstream's route
// under its own labels, merged with its live pool's figures once it has one,
// every other route under "(unknown)", so that labels stay bounded whatever
// clients send.
func TestCollectorDroppedRoutes(t *testing.T) {
	down := errors.New("database is down")
	reg := pool.NewRegistry(func(pool.Key) *pool.Pool {
		return pool.New(pool.Config{Size: 3, Dial: func(context.Context) (*pool.Backend, error) {
			time.Sleep(time.Millisecond) // so that the time spent is above 0
			return nil, down
		}})
	})
	defer reg.Close()
	def := pool.Key{Database: "app", User: "worker"}
	reg.SetDefaultRoute(def)
	c := metrics.NewCollector(reg, proxy.NewServer(proxy.Options{}, reg))
	failLogin := func(k pool.Key) {
		t.Helper()
		p := reg.Get(k)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := p.Acquire(ctx); !errors.Is(err, down) {
			t.Fatalf("%v: acquire: %v, want the dial error", k, err)
		}
		if !reg.DropUnproven(k, p) {
			t.Fatalf("%v: not dropped", k)
		}
	}
	failLogin(def)
	for i := range 5 {
		failLogin(pool.Key{Database: fmt.Sprintf("typo%d", i), User: "worker"})
	}
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
	const help = `# HELP pgsidecar_server_connect_failures_total Failed attempts to open a server connection, those of routes that never logged in included: under the upstream's own database and user for its route, else under database and user "(unknown)".
# TYPE pgsidecar_server_connect_failures_total counter
`
	want := help + `pgsidecar_server_connect_failures_total{database="(unknown)",user="(unknown)"} 5
pgsidecar_server_connect_failures_total{database="app",user="worker"} 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "pgsidecar_server_connect_failures_total"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(c, "pgsidecar_pool_size"); n != 0 {
		t.Errorf("%d pool_size series with no pool left, want 0", n)
	}
	if n := testutil.CollectAndCount(c, "pgsidecar_server_connect_seconds_total"); n != 2 {
		t.Errorf("%d server_connect_seconds_total series, want 2", n)
	}
	for _, k := range []pool.Key{def, pool.UnknownRoute} {
		if v := seriesValue(t, c, "pgsidecar_server_connect_seconds_total", k); v <= 0 {
			t.Errorf("server_connect_seconds_total%v = %v, want > 0", k, v)
		}
	}

	// The upstream's route gets a pool again and fails once more: one series with
	// the dropped pool's failure and the live pool's.
	p := reg.Get(def)
	pgtest.Eventually(t, 10*time.Second, "a dial failure of the new pool", func() error {
		if p.Stats().DialFailures > 0 {
			return nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := p.Acquire(ctx) // refused at once until the back-off ends, then dials
		cancel()
		if !errors.Is(err, down) {
			t.Fatalf("acquire: %v", err)
		}
		return err
	})
	want = help + `pgsidecar_server_connect_failures_total{database="(unknown)",user="(unknown)"} 5
pgsidecar_server_connect_failures_total{database="app",user="worker"} 2
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "pgsidecar_server_connect_failures_total"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(c, "pgsidecar_pool_size"); n != 1 {
		t.Errorf("%d pool_size series, want 1 (the live pool)", n)
	}
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
}

// seriesValue returns the value of the series of name labelled with k.
func seriesValue(t *testing.T, c prometheus.Collector, name string, k pool.Key) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	v, n := pgtest.Gather(t, reg).Value(name, map[string]string{"database": k.Database, "user": k.User})
	if n == 0 {
		t.Fatalf("no series %s%v", name, k)
	}
	return v
}
