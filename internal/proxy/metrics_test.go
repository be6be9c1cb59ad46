package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
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
	gauge := func(name, state string) float64 {
		v, _ := pgtest.Gather(t, reg).Value(name, map[string]string{"state": state})
		return v
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
	pgtest.Eventually(t, 5*time.Second, "b waiting", func() error {
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
	pgtest.Eventually(t, 5*time.Second, "histograms", func() error {
		m := pgtest.Gather(t, reg)
		waits, waitSum, _ := m.Histogram("pgsidecar_wait_seconds", nil)
		holds, _, _ := m.Histogram("pgsidecar_transaction_hold_seconds", nil)
		idles, _, _ := m.Histogram("pgsidecar_idle_transaction_seconds", nil)
		exhausted, _ := m.Value("pgsidecar_pool_exhausted_seconds_total", nil)
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
	pgtest.Eventually(t, 5*time.Second, "pinned backend", func() error {
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
	pgtest.Eventually(t, 5*time.Second, "unpinned", func() error {
		if v := gauge("pgsidecar_server_connections", "pinned"); v != 0 {
			return fmt.Errorf("server_connections{state=pinned} = %v", v)
		}
		return nil
	})
}

// A route PostgreSQL refuses (a mistyped database or user) gets PostgreSQL's
// error and leaves nothing behind: no pool, no SHOW POOLS row, no metric series.
// Labels stay bounded by what the server accepts, whatever clients send. Clients
// refused at the same time all get PostgreSQL's error, not a shutdown error from a
// pool another one's failure dropped.
func TestUnknownRouteLeavesNothing(t *testing.T) {
	db := newDatabase(t)
	obs := metrics.NewObserver(10, false)
	tp := startProxy(t, db, proxyOpts{PoolSize: 2, Opt: proxy.Options{Observer: obs}})
	reg, _ := newObsRegistry(t, tp, obs)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	good := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
	if _, err := good.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	login := func(database, user string) error {
		c, err := pgx.Connect(ctx, fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable&connect_timeout=10", user, tp.addr, database))
		if err == nil {
			c.Close(ctx)
			return errors.New("login succeeded")
		}
		return err
	}
	const badDB, badUser = "pgsidecar_no_such_db", "pgsidecar_no_such_user"
	for round := 0; round < 2; round++ {
		var wg sync.WaitGroup
		errs := make(chan error, 12)
		for i := 0; i < 6; i++ {
			wg.Add(2)
			go func() { defer wg.Done(); errs <- login(badDB, "postgres") }()
			go func() { defer wg.Done(); errs <- login(db, badUser) }()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if c := pgCode(err); c != "3D000" && c != "28000" {
				t.Fatalf("round %d: refused login: %v (SQLSTATE %q), want 3D000 or 28000", round, err, c)
			}
		}
	}
	for _, r := range tp.pools.Pools() {
		if r.Key.Database != db || r.Key.User != "postgres" {
			t.Errorf("pool left for refused route %s/%s", r.Key.Database, r.Key.User)
		}
	}
	if n := len(tp.pools.Pools()); n != 1 {
		t.Errorf("%d pools, want 1 (the good route)", n)
	}
	ms := reg.gather()
	found := 0
	for name, series := range ms {
		for _, m := range series {
			if pgtest.HasLabels(m, map[string]string{"database": db}) {
				found++
			}
			if pgtest.HasLabels(m, map[string]string{"database": badDB}) || pgtest.HasLabels(m, map[string]string{"user": badUser}) {
				t.Errorf("metric %s has a series for a refused route: %v", name, m.GetLabel())
			}
		}
	}
	if found == 0 {
		t.Fatal("no series for the good route: the check above would prove nothing")
	}
	// The good client is untouched.
	if _, err := good.Exec(ctx, "SELECT 2"); err != nil {
		t.Fatal(err)
	}
}
