package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
)

// TestPreparedCloseAndReuse closes a statement and prepares its name again, and
// prepares a name in use, with pgconn's explicit API.
func TestPreparedCloseAndReuse(t *testing.T) {
	db := newDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tp := startProxy(t, db, proxyOpts{PoolSize: 2})
	wire := &ppxWire{}
	c := ppxConnect(t, tp, wire)
	pc := c.PgConn()
	execS := func(what, want string) {
		t.Helper()
		res := pc.ExecPrepared(ctx, "s", nil, nil, nil).Read()
		if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != want {
			t.Fatalf("%s: execute s: %q %v, want %s", what, res.Rows, res.Err, want)
		}
	}
	simple := func(what string) {
		t.Helper()
		var v int
		if err := c.QueryRow(ctx, "SELECT 41 + 1", pgx.QueryExecModeSimpleProtocol).Scan(&v); err != nil || v != 42 {
			t.Fatalf("%s: connection not usable: %d %v", what, v, err)
		}
	}

	if _, err := pc.Prepare(ctx, "s", "select 1", nil); err != nil {
		t.Fatal(err)
	}
	execS("first", "1")

	queries := wire.queries.Load()
	if err := pc.Deallocate(ctx, "s"); err != nil {
		t.Fatalf("deallocate: %v", err)
	}
	// pgx v5 closes with a protocol Close (not DEALLOCATE in a simple query).
	if wire.closes.Load() != 1 || wire.queries.Load() != queries {
		t.Fatalf("Deallocate sent %d Closes and %d simple queries, want 1 Close", wire.closes.Load(), wire.queries.Load()-queries)
	}
	res := pc.ExecPrepared(ctx, "s", nil, nil, nil).Read()
	if pgCode(res.Err) != "26000" {
		t.Fatalf("execute s after deallocate: %v, want 26000", res.Err)
	}
	simple("after executing a closed statement")

	// In a later transaction: s again, with another text.
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pc.Prepare(ctx, "s", "select 2", nil); err != nil {
		t.Fatalf("prepare s again: %v", err)
	}
	execS("in the transaction", "2")
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	h1 := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
	h2 := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
	ppxOnBoth(ctx, t, h1, h2, c, 2, func(_ pgx.Tx, pid int) { execS(fmt.Sprintf("on backend %d", pid), "2") })

	// s again without closing it, outside a transaction.
	_, err = pc.Prepare(ctx, "s", "select 3", nil)
	var pe *pgconn.PgError
	if pgCode(err) != "42P05" || !errors.As(err, &pe) || pe.Message != `prepared statement "s" already exists` {
		t.Fatalf("prepare s while it exists: %v, want 42P05", err)
	}
	simple("after 42P05")
	execS("after 42P05", "2")

	// And inside a transaction, which the error aborts as PostgreSQL does.
	tx, err = c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = pc.Prepare(ctx, "s", "select 1", nil)
	if pgCode(err) != "42P05" || !errors.As(err, &pe) || pe.Message != `prepared statement "s" already exists` {
		t.Fatalf("prepare s while it exists, in a transaction: %v, want 42P05", err)
	}
	if st := pc.TxStatus(); st != 'E' {
		t.Fatalf("transaction status after 42P05: %c, want E", st)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); pgCode(err) != "25P02" {
		t.Fatalf("statement in the failed transaction: %v, want 25P02", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	simple("after the failed transaction")
	execS("after the failed transaction", "2")

	st := ppxStats(t, tp)
	if st.ClientParses != uint64(wire.namedParses.Load()) || st.ClientParses != 4 {
		t.Errorf("ClientParses = %d, client sent %d named Parses, want 4", st.ClientParses, wire.namedParses.Load())
	}
	// "select 1" on one backend, "select 2" on both; the Parses of a name in use
	// never reach a backend as statements.
	if st.ServerParses != 3 {
		t.Errorf("ServerParses = %d, want 3", st.ServerParses)
	}
	if st.Statements != 1 {
		t.Errorf("Statements = %d, want 1", st.Statements)
	}
}

// ppxParallel runs fn(0) .. fn(n-1) concurrently and stops the test if any of
// them failed, reporting each error as "<what> <i>: <error>".
func ppxParallel(t *testing.T, n int, what string, fn func(i int) error) {
	t.Helper()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(i)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("%s %d: %v", what, i, err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

// ppxCheckHeld checks the proxy statements each backend holds (hold, from
// ppxBothBackends) against the bound maxStmts, and that they add up to the
// server-side Parses minus the evictions.
func ppxCheckHeld(t *testing.T, st proxy.PreparedStats, hold map[int]int, maxStmts int) {
	t.Helper()
	sum := 0
	for pid, n := range hold {
		sum += n
		if n > maxStmts {
			t.Errorf("backend %d holds %d proxy statements, bound %d", pid, n, maxStmts)
		}
	}
	if st.ServerParses-st.Evictions != uint64(sum) {
		t.Errorf("ServerParses - Evictions = %d, but the backends hold %d", st.ServerParses-st.Evictions, sum)
	}
}

// ppxWaitReleased waits until the proxy holds no prepared statements.
func ppxWaitReleased(t *testing.T, tp *testProxy, what string) {
	t.Helper()
	pgtest.Eventually(t, 10*time.Second, what, func() error {
		if n := tp.srv.PreparedStats().Statements; n != 0 {
			return fmt.Errorf("Statements = %d", n)
		}
		return nil
	})
}
