package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/proxy"
)

// TestPreparedEviction cycles through more statements than a backend may keep:
// the least recently used are closed, and are prepared again when used.
func TestPreparedEviction(t *testing.T) {
	const (
		maxStmts = 4
		conns    = 4
		stmts    = 12
		rounds   = 50
	)
	db := newDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tp := startProxy(t, db, proxyOpts{PoolSize: 2, Opt: proxy.Options{MaxPreparedStatements: maxStmts}})
	wire := &ppxWire{}
	cs := make([]*pgx.Conn, conns)
	for i := range cs {
		cs[i] = ppxConnect(t, tp, wire)
	}
	type sampled struct {
		n       int
		maxSeen map[int]int // pid -> most proxy statements seen
	}
	samples := make([]sampled, conns)
	ppxParallel(t, conns, "conn", func(ci int) error {
		c := cs[ci]
		samples[ci].maxSeen = map[int]int{}
		n := 0
		for r := 0; r < rounds; r++ {
			for s := 0; s < stmts; s++ {
				q := fmt.Sprintf("SELECT $1::int + %d", s*1000)
				arg := ci*100000 + r*100 + s
				var v int
				if err := c.QueryRow(ctx, q, arg).Scan(&v); err != nil || v != arg+s*1000 {
					return fmt.Errorf("round %d statement %d: got %d, want %d (%v)", r, s, v, arg+s*1000, err)
				}
				n++
				if n%(7+ci) == 0 {
					pid, held, err := ppxProxyStmts(ctx, c)
					if err != nil {
						return fmt.Errorf("round %d sample: %w", r, err)
					}
					if held > maxStmts {
						return fmt.Errorf("round %d: backend %d holds %d proxy statements, bound %d", r, pid, held, maxStmts)
					}
					samples[ci].n++
					samples[ci].maxSeen[pid] = max(samples[ci].maxSeen[pid], held)
				}
			}
		}
		return nil
	})
	pids := map[int]int{}
	total := 0
	for _, s := range samples {
		total += s.n
		for pid, m := range s.maxSeen {
			pids[pid] = max(pids[pid], m)
		}
	}
	t.Logf("%d samples during the workload; most proxy statements seen per backend: %v", total, pids)
	if len(pids) != 2 {
		t.Errorf("samples saw %d backends, want 2", len(pids))
	}

	st := ppxStats(t, tp)
	if want := uint64(conns * stmts); st.ClientParses != want || uint64(wire.namedParses.Load()) != want {
		t.Errorf("ClientParses = %d, clients sent %d named Parses, want %d (each connection prepares each statement once)",
			st.ClientParses, wire.namedParses.Load(), want)
	}
	if st.Statements != stmts {
		t.Errorf("Statements = %d, want %d", st.Statements, stmts)
	}
	if st.Evictions == 0 {
		t.Error("Evictions = 0")
	}
	// What the backends hold now is what was prepared minus what was evicted.
	hold := ppxBothBackends(ctx, t, cs[0], cs[1])
	t.Logf("proxy statements per backend at the end: %v", hold)
	ppxCheckHeld(t, st, hold, maxStmts)
	if st.ServerParses+st.CacheHits < uint64(conns*stmts*rounds) {
		t.Errorf("ServerParses + CacheHits = %d, want >= %d executions", st.ServerParses+st.CacheHits, conns*stmts*rounds)
	}
}

// TestPreparedManyStatements prepares far more statements than a backend keeps on
// one connection: the backends stay bounded, the proxy keeps every name, and gives
// them up when the client leaves.
func TestPreparedManyStatements(t *testing.T) {
	const (
		n        = 20000
		maxStmts = 64
	)
	db := newDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	tp := startProxy(t, db, proxyOpts{PoolSize: 2, Opt: proxy.Options{MaxPreparedStatements: maxStmts, MaxClientStatements: n}})
	wire := &ppxWire{}
	c := ppxConnect(t, tp, wire)
	chkA := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
	chkB := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
	pc := c.PgConn()

	exec := func(i int) error {
		res := pc.ExecPrepared(ctx, "m"+strconv.Itoa(i), [][]byte{[]byte("7")}, nil, nil).Read()
		if res.Err != nil {
			return res.Err
		}
		if len(res.Rows) != 1 || string(res.Rows[0][0]) != strconv.Itoa(i+7) {
			return fmt.Errorf("got %q, want %d", res.Rows, i+7)
		}
		return nil
	}

	var m0, m1, m2 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	start := time.Now()
	most := 0
	for i := 0; i < n; i++ {
		// pgconn's Prepare sends what pgx.Conn.Prepare does (Parse, Describe, Sync)
		// but keeps no description, so the heap growth is the proxy's.
		sd, err := pc.Prepare(ctx, "m"+strconv.Itoa(i), "select $1::int + "+strconv.Itoa(i), nil)
		if err != nil {
			t.Fatalf("prepare %d: %v", i, err)
		}
		if len(sd.ParamOIDs) != 1 || len(sd.Fields) != 1 {
			t.Fatalf("prepare %d: %d parameters, %d columns", i, len(sd.ParamOIDs), len(sd.Fields))
		}
		if i%100 == 99 {
			if err := exec(i); err != nil {
				t.Fatalf("execute %d: %v", i, err)
			}
		}
		if i%1000 == 999 {
			// One evicted long ago: prepared again from the proxy's registry.
			if err := exec(i / 2); err != nil {
				t.Fatalf("execute %d: %v", i/2, err)
			}
			pid, held, err := ppxProxyStmts(ctx, c)
			if err != nil {
				t.Fatal(err)
			}
			if held > maxStmts {
				t.Fatalf("after %d statements backend %d holds %d proxy statements, bound %d", i+1, pid, held, maxStmts)
			}
			most = max(most, held)
		}
	}
	elapsed := time.Since(start)
	runtime.GC()
	runtime.ReadMemStats(&m1)
	growth := int64(m1.HeapAlloc) - int64(m0.HeapAlloc)
	perStmt := float64(growth) / n
	t.Logf("%d statements prepared in %v (%v each); heap %d -> %d bytes: %.0f bytes per statement; most proxy statements on a backend: %d",
		n, elapsed.Round(time.Millisecond), (elapsed / n).Round(time.Microsecond), m0.HeapAlloc, m1.HeapAlloc, perStmt, most)
	if perStmt > 4096 {
		t.Errorf("%.0f bytes of heap per statement, want < 4096", perStmt)
	}

	st := ppxStats(t, tp)
	if st.Statements != n {
		t.Errorf("Statements = %d, want %d", st.Statements, n)
	}
	if st.ClientParses != n || wire.namedParses.Load() != n {
		t.Errorf("ClientParses = %d, client sent %d named Parses, want %d", st.ClientParses, wire.namedParses.Load(), n)
	}
	if st.Evictions < n-2*maxStmts {
		t.Errorf("Evictions = %d, want >= %d", st.Evictions, n-2*maxStmts)
	}
	hold := ppxBothBackends(ctx, t, chkA, chkB)
	t.Logf("proxy statements per backend: %v", hold)
	ppxCheckHeld(t, st, hold, maxStmts)

	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	ppxWaitReleased(t, tp, "statements released after the client left")
	runtime.GC()
	runtime.ReadMemStats(&m2)
	t.Logf("heap after the client left: %d bytes (%+d from before the statements)", m2.HeapAlloc, int64(m2.HeapAlloc)-int64(m0.HeapAlloc))
}

// ppxPlanQuery runs q and returns the number of columns and the rows.
func ppxPlanQuery(ctx context.Context, c interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, q string) (int, [][]any, error) {
	rs, err := c.Query(ctx, q)
	if err != nil {
		return 0, nil, err
	}
	rows, err := pgx.CollectRows(rs, func(r pgx.CollectableRow) ([]any, error) { return r.Values() })
	if err != nil {
		return 0, nil, err
	}
	return len(rs.FieldDescriptions()), rows, nil
}

func ppxRowsString(rows [][]any) string { return fmt.Sprint(rows) }

// TestPreparedCachedPlanChange changes the result type of a statement prepared on
// both backends; the client sees PostgreSQL's "cached plan must not change result
// type" once, as it would without the proxy, and then pgx prepares it again and
// gets the new columns on every backend.
func TestPreparedCachedPlanChange(t *testing.T) {
	const q = "select * from t"
	db := newDatabase(t)
	chk := direct(t, db)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, s := range []string{
		"CREATE TABLE t (a int)", "INSERT INTO t VALUES (1), (2), (3)",
		"CREATE TABLE t_ref (a int)", "INSERT INTO t_ref VALUES (1), (2), (3)",
	} {
		if _, err := chk.Exec(ctx, s); err != nil {
			t.Fatal(err)
		}
	}

	// Without the proxy: what pgx does. The first execution after the change fails
	// with 0A000 (pgx does not retry) and drops the statement from its cache; the
	// next closes it, prepares it again and works.
	ref := direct(t, db)
	if cols, _, err := ppxPlanQuery(ctx, ref, "select * from t_ref"); err != nil || cols != 1 {
		t.Fatalf("direct: %d columns, %v", cols, err)
	}
	if _, err := chk.Exec(ctx, "ALTER TABLE t_ref ADD COLUMN b int"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ppxPlanQuery(ctx, ref, "select * from t_ref"); pgCode(err) != "0A000" {
		t.Fatalf("direct: first execution after the change: %v, want 0A000", err)
	}
	if cols, _, err := ppxPlanQuery(ctx, ref, "select * from t_ref"); err != nil || cols != 2 {
		t.Fatalf("direct: second execution after the change: %d columns, %v", cols, err)
	}

	tp := startProxy(t, db, proxyOpts{PoolSize: 2})
	wire := &ppxWire{}
	c := ppxConnect(t, tp, wire)
	h1 := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
	h2 := tp.connect(t, pgx.QueryExecModeSimpleProtocol)

	onBoth := func(phase string, wantCols int, wantRows string) {
		t.Helper()
		ppxOnBoth(ctx, t, h1, h2, c, 3, func(tx pgx.Tx, pid int) {
			cols, rows, err := ppxPlanQuery(ctx, tx, q)
			if err != nil || cols != wantCols || ppxRowsString(rows) != wantRows {
				t.Fatalf("%s: on backend %d: %d columns %v (%v), want %d columns %s", phase, pid, cols, rows, err, wantCols, wantRows)
			}
		})
	}

	onBoth("before the change", 1, "[[1] [2] [3]]")
	st := ppxStats(t, tp)
	if st.ClientParses != 1 || st.ServerParses != 2 {
		t.Errorf("before the change: ClientParses %d, ServerParses %d, want 1 and 2 (one statement on two backends)", st.ClientParses, st.ServerParses)
	}

	if _, err := chk.Exec(ctx, "ALTER TABLE t ADD COLUMN b int"); err != nil {
		t.Fatal(err)
	}
	if _, err := chk.Exec(ctx, "UPDATE t SET b = a * 10"); err != nil {
		t.Fatal(err)
	}
	_, _, err := ppxPlanQuery(ctx, c, q)
	var pe *pgconn.PgError
	if pgCode(err) != "0A000" || !errors.As(err, &pe) || pe.Message != "cached plan must not change result type" {
		t.Fatalf("first execution after the change: %v, want 0A000 cached plan must not change result type", err)
	}
	closes, parses := wire.closes.Load(), wire.namedParses.Load()
	onBoth("after the change", 2, "[[1 10] [2 20] [3 30]]")
	if c.IsClosed() {
		t.Fatal("the connection was closed")
	}
	// pgx closed its statement (a protocol Close) and prepared it again, once.
	if d := wire.closes.Load() - closes; d != 1 {
		t.Errorf("pgx sent %d statement Closes after the error, want 1", d)
	}
	if d := wire.namedParses.Load() - parses; d != 1 {
		t.Errorf("pgx sent %d named Parses after the error, want 1", d)
	}
	st = ppxStats(t, tp)
	if st.ClientParses != 2 {
		t.Errorf("ClientParses = %d, want 2", st.ClientParses)
	}
	// The statement prepared again is prepared once on each backend (a new
	// server-side statement, as the old one left the registry with pgx's Close).
	if st.ServerParses != 4 {
		t.Errorf("ServerParses = %d, want 4", st.ServerParses)
	}
	if st.Statements != 1 {
		t.Errorf("Statements = %d, want 1", st.Statements)
	}
}
