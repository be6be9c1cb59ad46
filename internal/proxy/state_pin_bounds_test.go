package proxy_test

// Transaction mode: state that cannot move between backends (LISTEN, session
// advisory locks, temporary tables, WITH HOLD cursors) pins the client to its
// backend until the state is gone; --pin-policy refuse turns such statements
// away (docs/design.md section 6). Every test runs a crowd of other clients doing
// short transactions throughout, each checking that it sees none of the pinned
// client's state and never lands on its backend.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
)

// ---------------------------------------------------------------------------
// 4. WITH HOLD cursor

func TestStatePinHoldCursor(t *testing.T) {
	db := newDatabase(t)
	tp, logs := spStart(t, db, proxyOpts{PoolSize: 2})
	mon := monitorProxyBackends(t, tp)
	ctx := spCtx(t, 60*time.Second)
	a := tp.connect(t, spSimple)
	aLog := spClient(a)

	var pinned atomic.Int32
	cr := spStartCrowd(t, tp, 4, spAll(spNotOn(&pinned),
		spNone("SELECT count(*) FROM pg_cursors", "backend has %d cursor(s)"),
		func(ctx context.Context, c *pgx.Conn, _ int, _ int32) error {
			return spFailsWith(ctx, c, "FETCH 1 FROM c", "34000", "invalid cursor name")
		}), nil)

	spExec(t, ctx, a, "BEGIN")
	spExec(t, ctx, a, "DECLARE c CURSOR WITH HOLD FOR SELECT generate_series(1,100)")
	pid := spPid(t, ctx, a)
	spExec(t, ctx, a, "COMMIT")
	pinned.Store(pid)
	next := 1
	for i := 0; i < 5; i++ {
		spProgress(t, cr, 3)
		spBeginOn(t, ctx, a, pid, fmt.Sprintf("transaction %d: A", i))
		rows, err := a.Query(ctx, "FETCH 10 FROM c")
		if err != nil {
			t.Fatalf("transaction %d: FETCH: %v", i, err)
		}
		vals, err := pgx.CollectRows(rows, pgx.RowTo[int32])
		if err != nil {
			t.Fatalf("transaction %d: FETCH: %v", i, err)
		}
		spExec(t, ctx, a, "COMMIT")
		if len(vals) != 10 {
			t.Fatalf("transaction %d: FETCH returned %v", i, vals)
		}
		for j, v := range vals {
			if int(v) != next {
				t.Fatalf("transaction %d: FETCH returned %v, row %d = %d, want %d", i, vals, j, v, next)
			}
			next++
		}
	}
	spWaitLog(t, logs, 1, spPinnedMsg, aLog, "reason=hold_cursor")
	pinned.Store(0)
	spExec(t, ctx, a, "CLOSE c")
	spWaitLog(t, logs, 1, spUnpinnedMsg, aLog, "reason=hold_cursor")
	spBothBackends(t, tp)
	spPidChanges(t, a, pid)
	cr.Finish(t)
	spPinsAtLeast(t, tp, "hold_cursor", 1)
	spMonitorCheck(t, mon, 2)
}

// ---------------------------------------------------------------------------
// 5. Pinned clients never exceed the pool

func TestStatePinPoolBound(t *testing.T) {
	db := newDatabase(t)
	tp, _ := spStart(t, db, proxyOpts{PoolSize: 2, Opt: proxy.Options{QueryWaitTimeout: time.Second}})
	mon := monitorProxyBackends(t, tp)
	ctx := spCtx(t, 60*time.Second)
	d := direct(t, db)
	p1 := tp.connect(t, spSimple)
	p2 := tp.connect(t, spSimple)
	third := tp.connect(t, spSimple)

	var pin1, pin2 atomic.Int32
	waitTimeout := func(err error) bool { return pgCode(err) == "57014" }
	cr := spStartCrowd(t, tp, 4, spAll(spNotOn(&pin1), spNotOn(&pin2)), waitTimeout)

	// Pin both backends. The crowd competes for them: a pinning statement may
	// wait its turn (or time out after 1s and be retried).
	pinWith := func(c *pgx.Conn, key int, into *atomic.Int32) {
		t.Helper()
		pgtest.Eventually(t, 10*time.Second, fmt.Sprintf("pg_advisory_lock(%d)", key), func() error {
			_, err := c.Exec(ctx, fmt.Sprintf("SELECT pg_advisory_lock(%d)", key))
			if err != nil && !waitTimeout(err) {
				t.Fatalf("pg_advisory_lock(%d): %v", key, err)
			}
			return err
		})
		into.Store(spPid(t, ctx, c))
	}
	pinWith(p1, 1, &pin1)
	pinWith(p2, 2, &pin2)
	if pin1.Load() == pin2.Load() {
		t.Fatalf("both pinned clients on backend %d", pin1.Load())
	}
	// The crowd is now starved: it only sees query_wait_timeout.
	w0 := cr.Tolerated()
	pgtest.Eventually(t, 5*time.Second, "the crowd waits out query_wait_timeout", func() error {
		if cr.Tolerated()-w0 < 2 {
			return errors.New("no timeouts yet")
		}
		return nil
	})

	start := time.Now()
	_, err := third.Exec(ctx, "SELECT 1")
	took := time.Since(start)
	if pgCode(err) != "57014" || !strings.Contains(err.Error(), "query_wait_timeout") {
		t.Fatalf("third client while both backends are pinned: got %v, want query_wait_timeout (57014)", err)
	}
	if took < 900*time.Millisecond || took > 5*time.Second {
		t.Errorf("third client failed after %s, want about the 1s query_wait_timeout", took)
	}
	for key, holder := range map[int]int32{1: pin1.Load(), 2: pin2.Load()} {
		if h, err := spAdvisoryHolders(ctx, d, key); err != nil || len(h) != 1 || h[0] != holder {
			t.Fatalf("lock %d held by %v (%v), want [%d]", key, h, err, holder)
		}
	}

	// The first pinned client leaves: the proxy cleans its backend up (the lock
	// goes) and gives it back, to the crowd too.
	freed := pin1.Load()
	pin1.Store(0)
	if err := p1.Close(ctx); err != nil {
		t.Fatal(err)
	}
	pgtest.Eventually(t, 5*time.Second, "advisory lock 1 released after its client left", func() error {
		h, err := spAdvisoryHolders(ctx, d, 1)
		if err != nil {
			t.Fatal(err)
		}
		if len(h) != 0 {
			return fmt.Errorf("held by %v", h)
		}
		return nil
	})
	pgtest.Eventually(t, 10*time.Second, "the third client gets a backend", func() error {
		var pid int32
		err := third.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid)
		if err != nil {
			if !waitTimeout(err) {
				t.Fatalf("third client: %v", err)
			}
			return err
		}
		if pid == pin2.Load() {
			t.Fatalf("third client ran on backend %d, pinned by another client", pid)
		}
		if pid != freed {
			t.Logf("third client on a new backend %d (the freed one was %d)", pid, freed)
		}
		return nil
	})
	if h, err := spAdvisoryHolders(ctx, d, 2); err != nil || len(h) != 1 || h[0] != pin2.Load() {
		t.Fatalf("lock 2 held by %v (%v), want [%d]", h, err, pin2.Load())
	}
	spProgress(t, cr, 5)
	cr.Finish(t)
	spPinsAtLeast(t, tp, "advisory_lock", 2)
	if n := tp.serverBackends(t, d); n["active"]+n["idle"]+n["idle in transaction"] > 2 {
		t.Errorf("proxy backends now: %v", n)
	}
	spMonitorCheck(t, mon, 2)
}

// ---------------------------------------------------------------------------
// 6. --pin-policy refuse

func TestStatePinRefuse(t *testing.T) {
	db := newDatabase(t)
	tp, logs := spStart(t, db, proxyOpts{PoolSize: 2, Opt: proxy.Options{PinPolicy: proxy.PinPolicyRefuse}})
	mon := monitorProxyBackends(t, tp)
	ctx := spCtx(t, 60*time.Second)
	d := direct(t, db)
	a := tp.connect(t, spSimple)

	cr := spStartCrowd(t, tp, 4, func(ctx context.Context, c *pgx.Conn, _ int, _ int32) error {
		var chans, temps, curs int
		if err := c.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_listening_channels()),
			(SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()),
			(SELECT count(*) FROM pg_cursors)`).Scan(&chans, &temps, &curs); err != nil {
			return err
		}
		if chans+temps+curs != 0 {
			return fmt.Errorf("backend has state left: %d channels, %d temp relations, %d cursors", chans, temps, curs)
		}
		return nil
	}, nil)

	nothingExecuted := func(what string) {
		t.Helper()
		if n := spInt(t, ctx, d, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`); n != 0 {
			t.Errorf("%s: %d advisory locks held", what, n)
		}
		if n := spInt(t, ctx, d, "SELECT count(*) FROM pg_class WHERE relpersistence = 't'"); n != 0 {
			t.Errorf("%s: %d temporary relations exist", what, n)
		}
		if n := spInt(t, ctx, d, "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND datname = current_database() AND (query ILIKE '%WITH HOLD%' OR query ILIKE 'LISTEN%' OR query ILIKE '%pg_advisory_lock%' OR query ILIKE '%CREATE TEMP%')"); n != 0 {
			t.Errorf("%s: a backend ran the refused statement (pg_stat_activity.query)", what)
		}
		spExec(t, ctx, d, "NOTIFY c, 'refused'")
		if got := spInt(t, ctx, a, "SELECT 1"); got != 1 {
			t.Errorf("%s: client not usable", what)
		}
		if n := spPending(a); n != nil {
			t.Errorf("%s: the client received a notification on %q: its LISTEN ran", what, n.Channel)
		}
	}

	cases := []struct{ sql, kind string }{
		{"LISTEN c", "LISTEN"},
		{"SELECT pg_advisory_lock(1)", "advisory lock"},
		{"CREATE TEMP TABLE t(x int)", "temporary table"},
		{"DECLARE c CURSOR WITH HOLD FOR SELECT generate_series(1,100)", "WITH HOLD cursor"},
	}
	checkRefusal := func(where, sql, kind string, err error) {
		t.Helper()
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "0A000" {
			t.Fatalf("%s %q: got %v, want SQLSTATE 0A000", where, sql, err)
		}
		if !strings.Contains(pe.Message, kind) {
			t.Errorf("%s %q: message %q does not name %q", where, sql, pe.Message, kind)
		}
	}
	for _, tc := range cases {
		// Outside a transaction.
		_, err := a.Exec(ctx, tc.sql)
		checkRefusal("outside a transaction:", tc.sql, tc.kind, err)
		nothingExecuted("outside a transaction: " + tc.sql)

		// Inside one: the transaction fails as with any error.
		spExec(t, ctx, a, "BEGIN")
		spExec(t, ctx, a, "SELECT 1")
		_, err = a.Exec(ctx, tc.sql)
		checkRefusal("inside a transaction:", tc.sql, tc.kind, err)
		for i := 0; i < 2; i++ {
			if _, err := a.Exec(ctx, "SELECT 1"); pgCode(err) != "25P02" {
				t.Fatalf("inside a transaction, after the refused %q: SELECT 1 got %v, want 25P02", tc.sql, err)
			}
		}
		if err := a.PgConn().Exec(ctx, "ROLLBACK").Close(); err != nil {
			t.Fatalf("ROLLBACK: %v", err)
		}
		if st := a.PgConn().TxStatus(); st != 'I' {
			t.Fatalf("after ROLLBACK the transaction status is %q", st)
		}
		nothingExecuted("inside a transaction: " + tc.sql)
		spProgress(t, cr, 2)
	}

	// Several statements in one Query, the pinning one not first.
	_, err := a.Exec(ctx, "SELECT 1; SELECT pg_advisory_lock(3); SELECT 2")
	checkRefusal("in a multi-statement query:", "SELECT pg_advisory_lock(3)", "advisory lock", err)
	nothingExecuted("multi-statement query")

	// Transaction-level advisory locks are fine.
	if !spBool(t, ctx, a, "SELECT pg_advisory_xact_lock(5) IS NOT NULL") {
		t.Fatal("pg_advisory_xact_lock(5) outside a transaction")
	}
	spExec(t, ctx, a, "BEGIN")
	spExec(t, ctx, a, "SELECT pg_advisory_xact_lock(5)")
	if got := spInt(t, ctx, a, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 5 AND pid = pg_backend_pid()"); got != 1 {
		t.Errorf("pg_advisory_xact_lock(5) inside a transaction: %d locks held", got)
	}
	if b, err := spAdvisoryHolders(ctx, d, 5); err != nil || len(b) != 1 {
		t.Errorf("lock 5 inside the transaction: %v %v", b, err)
	}
	spExec(t, ctx, a, "COMMIT")
	if b, err := spAdvisoryHolders(ctx, d, 5); err != nil || len(b) != 0 {
		t.Errorf("lock 5 after the transaction: %v %v", b, err)
	}
	spBothBackends(t, tp)

	cr.Finish(t)
	if pins := tp.srv.Pins(); len(pins) != 0 {
		t.Errorf("Pins() = %v under --pin-policy refuse, want none", pins)
	}
	if n := logs.Count(spPinnedMsg); n != 0 {
		t.Errorf("clients pinned under --pin-policy refuse:\n%s", logs.Lines("pinned"))
	}
	spMonitorCheck(t, mon, 2)
}

// ---------------------------------------------------------------------------
// 7. A listening client leaves: its backend goes back clean

func TestStatePinListenDisconnect(t *testing.T) {
	db := newDatabase(t)
	tp, logs := spStart(t, db, proxyOpts{PoolSize: 2})
	mon := monitorProxyBackends(t, tp)
	ctx := spCtx(t, 60*time.Second)
	d := direct(t, db)

	var pinned atomic.Int32
	var onOld atomic.Int64 // crowd transactions on the listener's old backend
	var oldPid atomic.Int32
	cr := spStartCrowd(t, tp, 4, spAll(spNotOn(&pinned), spNoListen, func(_ context.Context, _ *pgx.Conn, _ int, pid int32) error {
		if pid == oldPid.Load() {
			onOld.Add(1)
		}
		return nil
	}), nil)

	l := tp.connect(t, spSimple)
	spExec(t, ctx, l, "LISTEN c")
	pid := spPid(t, ctx, l)
	pinned.Store(pid)
	spExec(t, ctx, d, "NOTIFY c, 'hello'")
	wctx, cancel := context.WithTimeout(ctx, time.Second)
	n, err := l.WaitForNotification(wctx)
	cancel()
	if err != nil || n.Payload != "hello" {
		t.Fatalf("the listener did not get its notification: %v %v", n, err)
	}
	spWaitLog(t, logs, 1, spPinnedMsg, spClient(l), "reason=listen")
	spProgress(t, cr, 5)

	oldPid.Store(pid)
	pinned.Store(0) // the crowd may land on it as soon as the listener is gone
	if err := l.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// Its backend is reused, not closed: the crowd lands on it.
	pgtest.Eventually(t, 10*time.Second, "a crowd transaction on the old listener's backend", func() error {
		if onOld.Load() == 0 {
			return fmt.Errorf("none yet on backend %d", pid)
		}
		return nil
	})
	// Notifications for c now reach nobody through the proxy: neither the crowd
	// (it checks after every transaction) nor a new client that lands on it.
	nc := tp.connect(t, spSimple)
	landed := false
	for i := 0; i < 200 && !landed; i++ {
		spExec(t, ctx, d, fmt.Sprintf("NOTIFY c, 'stale%d'", i))
		spExec(t, ctx, nc, "BEGIN")
		if spPid(t, ctx, nc) == pid {
			landed = true
			if got := spInt(t, ctx, nc, "SELECT count(*) FROM pg_listening_channels()"); got != 0 {
				t.Errorf("the old listener's backend still listens on %d channel(s)", got)
			}
			spExec(t, ctx, d, "NOTIFY c, 'during'")
		}
		spExec(t, ctx, nc, "COMMIT")
		spExec(t, ctx, nc, "SELECT 1")
		if n := spPending(nc); n != nil {
			t.Fatalf("a new client received notification %q for the disconnected listener's channel", n.Payload)
		}
	}
	if !landed {
		t.Errorf("the new client never landed on the old listener's backend %d", pid)
	}
	spProgress(t, cr, 5)
	cr.Finish(t)
	pgtest.Eventually(t, 5*time.Second, "the backend idle in the pool", func() error {
		st := spPool(t, tp).Stats()
		if st.InUse != 0 || st.Idle != st.Open {
			return fmt.Errorf("%+v", st)
		}
		var state string
		if err := d.QueryRow(ctx, "SELECT coalesce(state, '') FROM pg_stat_activity WHERE pid = $1", pid).Scan(&state); err != nil {
			return fmt.Errorf("backend %d: %v", pid, err)
		}
		if state != "idle" {
			return fmt.Errorf("backend %d is %q", pid, state)
		}
		return nil
	})
	spMonitorCheck(t, mon, 2)
}

// spNoListen is a crowd check: the backend listens on no channel.
var spNoListen = spNone("SELECT count(*) FROM pg_listening_channels()", "backend listens on %d channel(s)")

// spNone is a crowd check: the count query sql answers 0; format reports the
// count otherwise.
func spNone(sql, format string) spCheck {
	return func(ctx context.Context, c *pgx.Conn, _ int, _ int32) error {
		var n int
		if err := c.QueryRow(ctx, sql).Scan(&n); err != nil {
			return err
		}
		if n != 0 {
			return fmt.Errorf(format, n)
		}
		return nil
	}
}

// spFailsWith runs sql in a savepoint of c's transaction, wants it to fail with
// SQLSTATE code (what names it) and rolls back to the savepoint.
func spFailsWith(ctx context.Context, c *pgx.Conn, sql, code, what string) error {
	if _, err := c.Exec(ctx, "SAVEPOINT s"); err != nil {
		return err
	}
	if _, err := c.Exec(ctx, sql); pgCode(err) != code {
		return fmt.Errorf("%s: got %v, want %s (%s)", sql, err, what, code)
	}
	_, err := c.Exec(ctx, "ROLLBACK TO SAVEPOINT s")
	return err
}

// spBeginOn begins a transaction on c and checks that it runs on the pinned
// backend pid; who names the transaction in the failure.
func spBeginOn(t *testing.T, ctx context.Context, c *pgx.Conn, pid int32, who string) {
	t.Helper()
	spExec(t, ctx, c, "BEGIN")
	if got := spPid(t, ctx, c); got != pid {
		t.Fatalf("%s on backend %d, want its pinned backend %d", who, got, pid)
	}
}

// spPinsAtLeast checks the proxy's count of pins for reason.
func spPinsAtLeast(t *testing.T, tp *testProxy, reason string, n uint64) {
	t.Helper()
	if got := tp.srv.Pins()[reason]; got < n {
		t.Errorf("Pins()[%q] = %d, want >= %d (%v)", reason, got, n, tp.srv.Pins())
	}
}
