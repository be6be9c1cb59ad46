package proxy_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/proxy"
)

// Tests of the named-prepared-statement layer (docs/design.md section 5) with pgx in
// its default mode (QueryExecModeCacheStatement: statements stmtcache_<hash>) and
// with pgconn's explicit Prepare / Deallocate / ExecPrepared.

// ppxWire counts what pgx clients send, by watching the bytes they write: the
// proxy's ClientParses must equal the named Parse messages counted here.
type ppxWire struct {
	namedParses atomic.Int64 // Parse messages with a statement name
	closes      atomic.Int64 // Close messages of a statement
	queries     atomic.Int64 // simple Query messages
}

// ppxConn is a client connection whose writes are scanned for message boundaries.
type ppxConn struct {
	net.Conn
	w       *ppxWire
	started bool   // the startup message (no type byte) has gone
	hdr     []byte // header bytes of the next message read so far
	typ     byte   // type of the current message
	left    int    // body bytes of the current message not seen yet
	first   bool   // the next body byte is the first of the current message
}

func (c *ppxConn) Write(p []byte) (int, error) {
	c.scan(p)
	return c.Conn.Write(p)
}

func (c *ppxConn) scan(p []byte) {
	for len(p) > 0 {
		if c.left > 0 {
			if c.first {
				c.first = false
				switch {
				case c.typ == 'P' && p[0] != 0:
					c.w.namedParses.Add(1)
				case c.typ == 'C' && p[0] == 'S':
					c.w.closes.Add(1)
				}
			}
			n := min(c.left, len(p))
			c.left -= n
			p = p[n:]
			continue
		}
		need := 5
		if !c.started {
			need = 4
		}
		k := min(need-len(c.hdr), len(p))
		c.hdr = append(c.hdr, p[:k]...)
		p = p[k:]
		if len(c.hdr) < need {
			return
		}
		if c.started {
			c.typ = c.hdr[0]
			c.left = int(binary.BigEndian.Uint32(c.hdr[1:])) - 4
			if c.typ == 'Q' {
				c.w.queries.Add(1)
			}
		} else {
			c.started = true
			c.typ = 0
			c.left = int(binary.BigEndian.Uint32(c.hdr)) - 4
		}
		c.hdr = c.hdr[:0]
		c.first = true
	}
}

// ppxConnect opens a pgx connection through the proxy in pgx's default mode
// (statement cache); with wc, what it sends is counted there. It is closed at
// cleanup.
func ppxConnect(t *testing.T, tp *testProxy, wc *ppxWire) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(tp.URL())
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeCacheStatement
	if wc != nil {
		dial := cfg.DialFunc
		cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &ppxConn{Conn: c, w: wc}, nil
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect through proxy: %v", err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// ppxCountSQL counts the proxy's statements on the backend it runs on (sent in the
// simple protocol, so that it is no named statement itself).
const ppxCountSQL = `SELECT pg_backend_pid(), count(*) FROM pg_prepared_statements WHERE name LIKE 'pgsidecar\_%'`

type ppxQuerier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// ppxProxyStmts returns the backend pid that q's next statement runs on and how
// many proxy statements that backend holds.
func ppxProxyStmts(ctx context.Context, q ppxQuerier) (pid, n int, err error) {
	err = q.QueryRow(ctx, ppxCountSQL, pgx.QueryExecModeSimpleProtocol).Scan(&pid, &n)
	return pid, n, err
}

// ppxBothBackends returns the proxy statements held by each backend of a pool of
// two: a holds one backend in a transaction, so that b's query runs on the other.
func ppxBothBackends(ctx context.Context, t *testing.T, a, b *pgx.Conn) map[int]int {
	t.Helper()
	tx, err := a.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	pa, na, err := ppxProxyStmts(ctx, tx)
	if err != nil {
		t.Fatal(err)
	}
	pb, nb, err := ppxProxyStmts(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	if pa == pb {
		t.Fatalf("both checks ran on backend %d although one was held in a transaction", pa)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	return map[int]int{pa: na, pb: nb}
}

// ppxTxPid begins a transaction on c and returns it with the pid of its backend.
func ppxTxPid(ctx context.Context, t *testing.T, c *pgx.Conn) (pgx.Tx, int) {
	t.Helper()
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()", pgx.QueryExecModeSimpleProtocol).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	return tx, pid
}

// ppxOnBoth runs fn times times in transactions of c on each backend of a pool of
// two: first while h1 holds one backend in a transaction, then while h2 holds the
// other.
func ppxOnBoth(ctx context.Context, t *testing.T, h1, h2, c *pgx.Conn, times int, fn func(tx pgx.Tx, pid int)) {
	t.Helper()
	run := func() int {
		t.Helper()
		tx, pid := ppxTxPid(ctx, t, c)
		defer tx.Rollback(ctx)
		fn(tx, pid)
		if err := tx.Commit(ctx); err != nil {
			t.Fatalf("commit on backend %d: %v", pid, err)
		}
		return pid
	}
	tx1, p1 := ppxTxPid(ctx, t, h1)
	var pc int
	for range times {
		if pc = run(); pc == p1 {
			t.Fatalf("ran on backend %d, which h1 holds", pc)
		}
	}
	tx2, p2 := ppxTxPid(ctx, t, h2)
	if p2 != pc {
		t.Fatalf("h2 got backend %d, want the free one, %d", p2, pc)
	}
	if err := tx1.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	for range times {
		if pid := run(); pid != p1 {
			t.Fatalf("ran on backend %d, want %d (h2 holds %d)", pid, p1, p2)
		}
	}
	if err := tx2.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

func ppxStats(t *testing.T, tp *testProxy) proxy.PreparedStats {
	st := tp.srv.PreparedStats()
	t.Logf("PreparedStats: client parses %d, server parses %d, cache hits %d, evictions %d, statements %d",
		st.ClientParses, st.ServerParses, st.CacheHits, st.Evictions, st.Statements)
	return st
}

// The statements of TestPreparedPgxDefaultMode.
const (
	ppxIns   = "INSERT INTO ppx_items (conn, seq, val) VALUES ($1, $2, $3)"
	ppxGet   = "SELECT val, pg_backend_pid() FROM ppx_items WHERE conn = $1 AND seq = $2"
	ppxUpd   = "UPDATE ppx_items SET val = val + $3 WHERE conn = $1 AND seq = $2 RETURNING val"
	ppxCalc  = "SELECT $1::int * $2::int + 7, pg_backend_pid()"
	ppxDiv   = "SELECT $1::int / $2::int" // batches only
	ppxCount = "SELECT count(*) FROM ppx_items WHERE conn = $1"
)

var ppxAll = []string{ppxIns, ppxGet, ppxUpd, ppxCalc, ppxDiv, ppxCount}

// ppxModel follows pgx's statement cache of one connection: a statement not in
// it is prepared (one named Parse); a failed batch drops all its statements
// (invalidateCachesOnBatchResultsError), which pgx closes and prepares anew on
// their next use.
type ppxModel struct {
	cached map[string]bool
	parses int
}

func (m *ppxModel) use(q string) {
	if !m.cached[q] {
		m.cached[q] = true
		m.parses++
	}
}

func (m *ppxModel) batch(qs []string, failed bool) {
	for _, q := range qs {
		m.use(q)
	}
	if failed {
		for _, q := range qs {
			m.cached[q] = false
		}
	}
}

// ppxWorker is one client of TestPreparedPgxDefaultMode.
type ppxWorker struct {
	w         int
	c         *pgx.Conn
	model     ppxModel
	committed map[int]int // seq -> val of its committed rows
	last      int         // a committed seq
	pids      []int       // backend of each transaction that reported one
	batches   int
	errBatch  int
}

func (k *ppxWorker) pid(p int) { k.pids = append(k.pids, p) }

func (k *ppxWorker) run(ctx context.Context, txns int) error {
	c, w := k.c, k.w
	for i := 0; i < txns; i++ {
		switch (i + w) % 4 {
		case 0: // autocommit statements
			k.model.use(ppxIns)
			if _, err := c.Exec(ctx, ppxIns, w, i, i*10); err != nil {
				return fmt.Errorf("txn %d autocommit insert: %w", i, err)
			}
			k.committed[i], k.last = i*10, i
			k.model.use(ppxCalc)
			var v, p int
			if err := c.QueryRow(ctx, ppxCalc, i, w).Scan(&v, &p); err != nil || v != i*w+7 {
				return fmt.Errorf("txn %d autocommit calc: got %d, want %d (%v)", i, v, i*w+7, err)
			}
			k.pid(p)
		case 1, 3: // a transaction that commits (1: with an update)
			tx, err := c.Begin(ctx)
			if err != nil {
				return fmt.Errorf("txn %d begin: %w", i, err)
			}
			k.model.use(ppxIns)
			if _, err := tx.Exec(ctx, ppxIns, w, i, i*10); err != nil {
				return fmt.Errorf("txn %d insert: %w", i, err)
			}
			k.model.use(ppxGet)
			var v, p, p2 int
			if err := tx.QueryRow(ctx, ppxGet, w, i).Scan(&v, &p); err != nil || v != i*10 {
				return fmt.Errorf("txn %d read back: got %d, want %d (%v)", i, v, i*10, err)
			}
			want := i * 10
			if (i+w)%4 == 1 {
				want += 5
				k.model.use(ppxUpd)
				if err := tx.QueryRow(ctx, ppxUpd, w, i, 5).Scan(&v); err != nil || v != want {
					return fmt.Errorf("txn %d update: got %d, want %d (%v)", i, v, want, err)
				}
			}
			k.model.use(ppxCalc)
			if err := tx.QueryRow(ctx, ppxCalc, i, 2).Scan(&v, &p2); err != nil || v != 2*i+7 {
				return fmt.Errorf("txn %d calc: got %d, want %d (%v)", i, v, 2*i+7, err)
			}
			if p2 != p {
				return fmt.Errorf("txn %d ran on backends %d and %d", i, p, p2)
			}
			if err := tx.Commit(ctx); err != nil {
				return fmt.Errorf("txn %d commit: %w", i, err)
			}
			k.committed[i], k.last = want, i
			k.pid(p)
		case 2: // a transaction that rolls back
			tx, err := c.Begin(ctx)
			if err != nil {
				return fmt.Errorf("txn %d begin: %w", i, err)
			}
			k.model.use(ppxIns)
			if _, err := tx.Exec(ctx, ppxIns, w, i, i*10); err != nil {
				return fmt.Errorf("txn %d insert: %w", i, err)
			}
			k.model.use(ppxUpd)
			var v, p int
			if err := tx.QueryRow(ctx, ppxUpd, w, i, 1).Scan(&v); err != nil || v != i*10+1 {
				return fmt.Errorf("txn %d update: got %d, want %d (%v)", i, v, i*10+1, err)
			}
			k.model.use(ppxGet)
			if err := tx.QueryRow(ctx, ppxGet, w, i).Scan(&v, &p); err != nil || v != i*10+1 {
				return fmt.Errorf("txn %d read back: got %d, want %d (%v)", i, v, i*10+1, err)
			}
			if err := tx.Rollback(ctx); err != nil {
				return fmt.Errorf("txn %d rollback: %w", i, err)
			}
			k.pid(p)
		}
		if i%15 == 14 {
			var err error
			if (i/15)%2 == 0 {
				err = k.goodBatch(ctx, i)
			} else {
				err = k.failingBatch(ctx, i)
			}
			if err != nil {
				return fmt.Errorf("txn %d: %w", i, err)
			}
		}
	}
	return nil
}

// goodBatch mixes statements prepared before with ones new to the connection (the
// first time: ppxDiv, ppxCount; later: those dropped by a failed batch).
func (k *ppxWorker) goodBatch(ctx context.Context, i int) error {
	k.batches++
	qs := []string{ppxCalc, ppxDiv, ppxCount, ppxGet}
	k.model.batch(qs, false)
	b := &pgx.Batch{}
	b.Queue(ppxCalc, i, 3)
	b.Queue(ppxDiv, i*6, 3)
	b.Queue(ppxCount, k.w)
	b.Queue(ppxGet, k.w, k.last)
	br := k.c.SendBatch(ctx, b)
	defer br.Close()
	var v, p, p2, n, val int
	if err := br.QueryRow().Scan(&v, &p); err != nil || v != 3*i+7 {
		return fmt.Errorf("batch calc: got %d, want %d (%v)", v, 3*i+7, err)
	}
	if err := br.QueryRow().Scan(&v); err != nil || v != 2*i {
		return fmt.Errorf("batch div: got %d, want %d (%v)", v, 2*i, err)
	}
	if err := br.QueryRow().Scan(&n); err != nil || n != len(k.committed) {
		return fmt.Errorf("batch count: got %d, want %d (%v)", n, len(k.committed), err)
	}
	if err := br.QueryRow().Scan(&val, &p2); err != nil || val != k.committed[k.last] {
		return fmt.Errorf("batch get %d: got %d, want %d (%v)", k.last, val, k.committed[k.last], err)
	}
	if p2 != p {
		return fmt.Errorf("one batch ran on backends %d and %d", p, p2)
	}
	if err := br.Close(); err != nil {
		return fmt.Errorf("batch close: %w", err)
	}
	k.pid(p)
	return nil
}

// failingBatch runs a batch whose third statement fails (division by zero): its
// insert is rolled back with the implicit transaction, and the connection goes on.
func (k *ppxWorker) failingBatch(ctx context.Context, i int) error {
	k.batches++
	k.errBatch++
	qs := []string{ppxIns, ppxCalc, ppxDiv, ppxCount}
	k.model.batch(qs, true)
	b := &pgx.Batch{}
	b.Queue(ppxIns, k.w, 100000+i, 1)
	b.Queue(ppxCalc, i, 1)
	b.Queue(ppxDiv, i, 0)
	b.Queue(ppxCount, k.w)
	br := k.c.SendBatch(ctx, b)
	if tag, err := br.Exec(); err != nil || tag.String() != "INSERT 0 1" {
		br.Close()
		return fmt.Errorf("failing batch insert: %q %v", tag, err)
	}
	var v, p int
	if err := br.QueryRow().Scan(&v, &p); err != nil || v != i+7 {
		br.Close()
		return fmt.Errorf("failing batch calc: got %d, want %d (%v)", v, i+7, err)
	}
	err3 := br.QueryRow().Scan(&v)
	err4 := br.QueryRow().Scan(&v)
	errClose := br.Close()
	if pgCode(err3) != "22012" {
		return fmt.Errorf("failing batch: third statement returned %v, want division_by_zero (22012)", err3)
	}
	// pgx reports the batch's error for the statement the server skipped, and again
	// from Close.
	if pgCode(err4) != "22012" || pgCode(errClose) != "22012" {
		return fmt.Errorf("failing batch: fourth statement %v, Close %v, want the 22012 error", err4, errClose)
	}
	if k.c.IsClosed() {
		return fmt.Errorf("failing batch closed the connection")
	}
	// The next transaction works, the insert of the batch is gone.
	k.model.use(ppxCount)
	var n int
	if err := k.c.QueryRow(ctx, ppxCount, k.w).Scan(&n); err != nil || n != len(k.committed) {
		return fmt.Errorf("after failing batch: count %d, want %d (%v)", n, len(k.committed), err)
	}
	k.pid(p)
	return nil
}

// TestPreparedPgxDefaultMode runs pgx clients in their default mode (named
// statements stmtcache_*) in transaction mode with 2 backends: statements
// prepared on one backend are used on the other, in transactions, autocommit
// statements and batches, one of which fails halfway.
func TestPreparedPgxDefaultMode(t *testing.T) {
	const (
		workers = 10
		txns    = 300
	)
	db := newDatabase(t)
	chk := direct(t, db)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if _, err := chk.Exec(ctx, `CREATE TABLE ppx_items (conn int, seq int, val int NOT NULL, PRIMARY KEY (conn, seq))`); err != nil {
		t.Fatal(err)
	}
	tp := startProxy(t, db, proxyOpts{PoolSize: 2})
	wire := &ppxWire{}

	// The holder keeps every statement registered for the whole test, so that each
	// stays one statement with one server-side name (a statement all clients have
	// closed leaves the registry and gets a new name when prepared again), which
	// makes the server-side Parses countable.
	holder := ppxConnect(t, tp, wire)
	for i, q := range ppxAll {
		sd, err := holder.PgConn().Prepare(ctx, fmt.Sprintf("holder_%d", i), q, nil)
		if err != nil {
			t.Fatalf("holder prepare %q: %v", q, err)
		}
		if len(sd.Fields) == 0 && q != ppxIns {
			t.Fatalf("holder prepare %q: no result columns", q)
		}
	}

	ws := make([]*ppxWorker, workers)
	for w := range ws {
		ws[w] = &ppxWorker{w: w, c: ppxConnect(t, tp, wire), model: ppxModel{cached: map[string]bool{}}, committed: map[int]int{}}
	}
	start := time.Now()
	ppxParallel(t, workers, "worker", func(w int) error { return ws[w].run(ctx, txns) })
	t.Logf("%d workers x %d transactions in %v", workers, txns, time.Since(start).Round(time.Millisecond))

	// Consecutive transactions of a client ran on different backends.
	all := map[int]bool{}
	for _, k := range ws {
		seen := map[int]bool{}
		switches := 0
		for j, p := range k.pids {
			all[p], seen[p] = true, true
			if j > 0 && p != k.pids[j-1] {
				switches++
			}
		}
		if len(seen) != 2 || switches == 0 {
			t.Errorf("worker %d: %d transactions on %d backends with %d switches, want both backends", k.w, len(k.pids), len(seen), switches)
		}
		if k.w == 0 {
			t.Logf("worker 0: %d of %d consecutive transactions switched backends", switches, len(k.pids)-1)
		}
	}
	if len(all) != 2 {
		t.Errorf("transactions ran on %d backends, want 2", len(all))
	}

	// The table holds exactly the committed rows.
	type row struct{ conn, seq, val int }
	var want []row
	for _, k := range ws {
		for seq, val := range k.committed {
			want = append(want, row{k.w, seq, val})
		}
	}
	slices.SortFunc(want, func(a, b row) int {
		if a.conn != b.conn {
			return a.conn - b.conn
		}
		return a.seq - b.seq
	})
	rows, err := chk.Query(ctx, "SELECT conn, seq, val FROM ppx_items ORDER BY conn, seq")
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
		var x row
		err := r.Scan(&x.conn, &x.seq, &x.val)
		return x, err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("table has %d rows, want %d; first difference at %d", len(got), len(want), ppxFirstDiff(got, want))
	}

	// Counters.
	st := ppxStats(t, tp)
	modelParses, errBatches := 0, 0
	for _, k := range ws {
		modelParses += k.model.parses
		errBatches += k.errBatch
	}
	distinct := len(ppxAll)
	t.Logf("named Parses sent: %d (holder %d + workers %d = %d distinct x %d workers + %d after failed batches); closes sent %d; failed batches %d",
		wire.namedParses.Load(), distinct, modelParses, distinct, workers, modelParses-distinct*workers, wire.closes.Load(), errBatches)
	if st.ClientParses != uint64(wire.namedParses.Load()) {
		t.Errorf("ClientParses = %d, but the clients sent %d named Parses", st.ClientParses, wire.namedParses.Load())
	}
	// pgx closes every statement of a failed batch before its next query.
	if wire.closes.Load() != int64(4*errBatches) {
		t.Errorf("clients sent %d statement Closes, want %d (4 per failed batch)", wire.closes.Load(), 4*errBatches)
	}
	if int64(distinct+modelParses) != wire.namedParses.Load() {
		t.Errorf("clients sent %d named Parses, the model of pgx's cache says %d", wire.namedParses.Load(), distinct+modelParses)
	}
	// Each worker prepares each statement once, and once more after each of its
	// txns/30 failed batches for each of the 4 statements of that batch, which
	// pgx dropped and uses again: ppxCount right after the batch, ppxIns and
	// ppxCalc in the next transactions, ppxDiv in the next batch. After the last
	// failed batch (the last transaction) only ppxCount is used again.
	wantWorker := distinct + 4*(txns/30) - 3
	for _, k := range ws {
		if k.model.parses != wantWorker {
			t.Errorf("worker %d: model has %d Parses, want %d", k.w, k.model.parses, wantWorker)
		}
	}
	if st.CacheHits == 0 {
		t.Error("CacheHits = 0")
	}
	// Every statement is one server-side statement (the holder keeps it), prepared
	// at most once per backend, plus a Parse the proxy put into a failed batch
	// after the failing statement (ppxCount), which the backend skipped and which
	// is sent again: at most one per failed batch.
	if st.ServerParses < uint64(distinct) || st.ServerParses > uint64(distinct*2+errBatches) {
		t.Errorf("ServerParses = %d, want %d..%d", st.ServerParses, distinct, distinct*2+errBatches)
	}
	if st.Evictions != 0 {
		t.Errorf("Evictions = %d, want 0", st.Evictions)
	}
	if st.Statements != distinct {
		t.Errorf("Statements = %d, want %d", st.Statements, distinct)
	}
	hold := ppxBothBackends(ctx, t, ws[0].c, ws[1].c)
	for pid, n := range hold {
		if n > distinct {
			t.Errorf("backend %d holds %d proxy statements, want <= %d", pid, n, distinct)
		}
	}
	t.Logf("proxy statements per backend: %v", hold)

	for _, k := range ws {
		k.c.Close(ctx)
	}
	holder.Close(ctx)
	ppxWaitReleased(t, tp, "statements released")
}

func ppxFirstDiff[T comparable](a, b []T) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
