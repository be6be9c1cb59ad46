package proxy_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// TestFaultBackendDiesMidMessage kills a backend while it is blocked sending a large
// result to a client that does not read yet, so that PostgreSQL dies in the middle
// of a message. What the client then reads must be well-formed messages, then the
// end of the connection (possibly in the middle of a message, as from PostgreSQL
// itself): nothing may be spliced after a partly forwarded message.
func TestFaultBackendDiesMidMessage(t *testing.T) {
	db := newDatabase(t)
	chk := direct(t, db)
	tp := startProxy(t, db, proxyOpts{PoolSize: 2})
	bystander := tp.connect(t, pgx.QueryExecModeExec)
	const total = 2_000_000
	// PostgreSQL sends its FATAL instead when it happens not to be blocked at that
	// moment: two rounds make a cut in the middle of a message all but certain.
	for round := 0; round < 2; round++ {
		rc := pgtest.Dial(t, tp.addr)
		rc.Login(db, "fault_raw")
		rc.Send(wire.AppendQuery(nil, fmt.Sprintf("SELECT repeat('x', 100) FROM generate_series(1, %d)", total)))
		var pid int
		pgtest.Eventually(t, 20*time.Second, "backend blocked sending the result", func() error {
			ctx, cancel := faultCtx()
			defer cancel()
			return chk.QueryRow(ctx, `SELECT pid FROM pg_stat_activity WHERE `+proxyBackends+`
				AND state = 'active' AND wait_event = 'ClientWrite'`, tp.db).Scan(&pid)
		})
		if n := pgtest.MustInt(t, chk, "SELECT count(*) FROM (SELECT pg_terminate_backend($1)) s", pid); n != 1 {
			t.Fatal("pg_terminate_backend")
		}
		pgtest.Eventually(t, 5*time.Second, "terminated backend gone", func() error {
			if n := pgtest.MustInt(t, chk, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid); n != 0 {
				return errors.New("still there")
			}
			return nil
		})

		_ = rc.Conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		rows := 0
		var errs []wire.ErrorFields
		var end error
		for i := 0; i <= total+10; i++ {
			typ, body, err := rc.Read()
			if err != nil {
				end = err
				if typ == 'D' && errors.Is(err, io.ErrUnexpectedEOF) {
					// The connection ended in the middle of a DataRow: what came of it
					// must be the start of a good one.
					good := append([]byte{0, 1, 0, 0, 0, 100}, bytes.Repeat([]byte("x"), 100)...)
					if !bytes.HasPrefix(good, body) {
						t.Fatalf("corrupt truncated DataRow after %d good rows: %q", rows, body)
					}
				}
				break
			}
			switch typ {
			case 'T':
				if i != 0 {
					t.Fatalf("RowDescription after %d rows", rows)
				}
			case 'D':
				if len(errs) > 0 {
					t.Fatalf("DataRow after an ErrorResponse %+v", errs)
				}
				ok := len(body) == 106 && body[0] == 0 && body[1] == 1 && binary.BigEndian.Uint32(body[2:6]) == 100
				for _, c := range body[min(6, len(body)):] {
					ok = ok && c == 'x'
				}
				if !ok {
					t.Fatalf("corrupt DataRow after %d good rows: %q", rows, body[:min(len(body), 120)])
				}
				rows++
			case wire.MsgErrorResponse:
				errs = append(errs, wire.ParseError(body))
			default:
				t.Fatalf("unexpected message %q after %d rows and errors %+v: %q", typ, rows, errs, body[:min(len(body), 120)])
			}
		}
		t.Logf("client read %d rows, errors %+v, then %v", rows, errs, end)
		if !pgtest.Closed(end) && !errors.Is(end, io.ErrUnexpectedEOF) {
			t.Fatalf("after %d rows and errors %+v: %v; want well-formed messages, then the end of the connection", rows, errs, end)
		}
		if rows >= total {
			t.Fatalf("the backend was not killed during the result")
		}
		if err := pgtest.SelectInt(bystander, 1); err != nil {
			t.Fatalf("other client: %v", err)
		}
		faultNoIdleInTx(t, tp, chk)
		if st := faultPool(tp).Stats(); st.Open > 2 {
			t.Fatalf("pool has %d backends open, size 2", st.Open)
		}
	}
}

// faultGate is a slog.Handler that, once armed, holds the first Warn (or worse)
// record until released: a slow log sink, used to hold the proxy right after it logs
// a fault.
type faultGate struct {
	armed    atomic.Bool
	hit      chan struct{}
	hitOnce  sync.Once
	open     chan struct{}
	openOnce sync.Once
}

func newFaultGate() *faultGate {
	return &faultGate{hit: make(chan struct{}), open: make(chan struct{})}
}

func (g *faultGate) Enabled(context.Context, slog.Level) bool { return true }

func (g *faultGate) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn && g.armed.Load() {
		g.hitOnce.Do(func() { close(g.hit) })
		select {
		case <-g.open:
		case <-time.After(10 * time.Second):
		}
	}
	return nil
}

func (g *faultGate) WithAttrs([]slog.Attr) slog.Handler { return g }
func (g *faultGate) WithGroup(string) slog.Handler      { return g }
func (g *faultGate) release()                           { g.openOnce.Do(func() { close(g.open) }) }

// TestFaultLostTransactionNotRerouted: a client's backend dies while the client is in
// a transaction; a statement the client sends afterwards (pipelined, or by a client
// that does not stop at the FATAL) must not run on another backend, outside the
// transaction the client believes it is in. The proxy's log sink is made slow, which
// widens the time between the proxy noticing the dead backend and ending the client.
func TestFaultLostTransactionNotRerouted(t *testing.T) {
	db := newDatabase(t)
	chk := direct(t, db)
	faultTable(t, chk)
	gate := newFaultGate()
	tp := startProxy(t, db, proxyOpts{PoolSize: 2, Opt: proxy.Options{Logger: slog.New(gate)}})
	t.Cleanup(gate.release) // before the proxy is closed
	bystander := tp.connect(t, pgx.QueryExecModeExec)

	rc := pgtest.Dial(t, tp.addr)
	rc.Login(db, "fault_raw")
	rc.MustQuery("BEGIN", wire.TxActive)
	rc.MustQuery("INSERT INTO fault_rows VALUES (1)", wire.TxActive)
	pid := pgtest.MustInt(t, chk, "SELECT pid FROM pg_stat_activity WHERE "+proxyBackends+" AND state = 'idle in transaction'", tp.db)
	gate.armed.Store(true)
	if n := pgtest.MustInt(t, chk, "SELECT count(*) FROM (SELECT pg_terminate_backend($1)) s", pid); n != 1 {
		t.Fatal("pg_terminate_backend")
	}
	select {
	case <-gate.hit:
	case <-time.After(5 * time.Second):
		t.Logf("the proxy logged nothing about the lost backend; going on without holding it")
	}
	rc.Send(wire.AppendQuery(nil, "INSERT INTO fault_rows VALUES (2)"))
	// While the proxy is held, the statement must not run anywhere.
	_ = pgtest.Poll(time.Second, func() error { // ends early only if it does run
		if faultRows(t, chk, 2) != 0 {
			return nil
		}
		return errors.New("not run")
	})
	gate.release()
	errs, _, others := rc.ReadToClose(5 * time.Second)
	t.Logf("client got errors %+v and messages %q", errs, others)
	if n := faultRows(t, chk, 2); n != 0 {
		t.Fatalf("statement sent after the transaction's backend died was committed on another backend (client saw errors %+v, messages %q)", errs, others)
	}
	for _, typ := range others {
		if typ == 'C' {
			t.Fatalf("statement sent after the transaction's backend died completed (messages %q)", others)
		}
	}
	if len(errs) == 0 || errs[0].Severity != wire.SeverityFatal {
		t.Fatalf("client got errors %+v, want a FATAL one first", errs)
	}
	if n := faultRows(t, chk, 1); n != 0 {
		t.Fatalf("row of the lost transaction committed")
	}
	if err := pgtest.SelectInt(bystander, 1); err != nil {
		t.Fatalf("other client: %v", err)
	}
	faultNoIdleInTx(t, tp, chk)
}

// TestFaultClientLeavesWhileBackendFails: the client of a transaction disconnects
// while the proxy is still handling the death of that client's backend (held in a
// slow log sink). The session must not be finished, its buffers recycled and the
// server closed while its server goroutine still runs.
func TestFaultClientLeavesWhileBackendFails(t *testing.T) {
	db := newDatabase(t)
	chk := direct(t, db)
	faultTable(t, chk)
	gate := newFaultGate()
	tp := startProxy(t, db, proxyOpts{PoolSize: 2, Opt: proxy.Options{Logger: slog.New(gate)}})
	t.Cleanup(gate.release) // before the proxy is closed

	rc := pgtest.Dial(t, tp.addr)
	rc.Login(db, "fault_raw")
	rc.MustQuery("BEGIN", wire.TxActive)
	rc.MustQuery("INSERT INTO fault_rows VALUES (1)", wire.TxActive)
	pid := pgtest.MustInt(t, chk, "SELECT pid FROM pg_stat_activity WHERE "+proxyBackends+" AND state = 'idle in transaction'", tp.db)
	gate.armed.Store(true)
	if n := pgtest.MustInt(t, chk, "SELECT count(*) FROM (SELECT pg_terminate_backend($1)) s", pid); n != 1 {
		t.Fatal("pg_terminate_backend")
	}
	select {
	case <-gate.hit:
	case <-time.After(5 * time.Second):
		t.Skip("the proxy logged nothing about the lost backend: nothing to hold it with")
	}
	// The proxy's server goroutine for this client is now held in the log sink.
	rc.Conn.Close()
	_ = pgtest.Poll(time.Second, func() error { // best effort: the client gone
		if n := tp.srv.Stats().Clients; n > 0 {
			return fmt.Errorf("%d clients", n)
		}
		return nil
	})
	closed := make(chan error, 1)
	go func() { closed <- tp.srv.Close() }()
	select {
	case err := <-closed:
		gate.release()
		t.Fatalf("Server.Close returned (%v) while a session goroutine was still running (held in the log sink)", err)
	case <-time.After(500 * time.Millisecond):
	}
	gate.release()
	if err := pgtest.Recv(t, closed, 5*time.Second, "Close did not return"); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if n := faultRows(t, chk, 1); n != 0 {
		t.Fatalf("row of the lost transaction committed")
	}
}

func TestFaultRestartPostgres(t *testing.T) {
	db := newDatabase(t)
	chk := direct(t, db)
	faultTable(t, chk)
	// The cluster is shared: whatever happens, leave it running.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := cluster.Start(ctx); err != nil {
			t.Errorf("restart the shared cluster: %v", err)
		}
	})
	tp := startProxy(t, db, proxyOpts{PoolSize: 2})
	idle1 := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
	idle2 := tp.connect(t, pgx.QueryExecModeExec)
	txc := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
	for i, c := range []*pgx.Conn{idle1, idle2, txc} {
		if err := pgtest.SelectInt(c, i); err != nil {
			t.Fatal(err)
		}
	}
	faultExec(t, txc, "BEGIN")
	faultExec(t, txc, "INSERT INTO fault_rows VALUES (1)")
	chk.Close(context.Background())

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := cluster.Stop(ctx); err != nil {
		t.Fatalf("stop PostgreSQL: %v", err)
	}
	// While PostgreSQL is down a query fails with an error, quickly.
	start := time.Now()
	err := pgtest.SelectInt(idle2, 5)
	faultNoHang(t, "query while PostgreSQL is down", err, time.Since(start))
	if err == nil {
		t.Fatalf("query succeeded while PostgreSQL is down")
	}
	t.Logf("query while PostgreSQL is down: %v", err)
	if err := cluster.Start(ctx); err != nil {
		t.Fatalf("start PostgreSQL: %v", err)
	}

	for name, c := range map[string]*pgx.Conn{"simple": idle1, "extended": idle2} {
		deadline := time.Now().Add(10 * time.Second)
		fails := 0
		for i := 0; ; i++ {
			start := time.Now()
			err := pgtest.SelectInt(c, 100+i)
			if err == nil {
				break
			}
			faultNoHang(t, name+" client after the restart", err, time.Since(start))
			fails++
			t.Logf("%s client, query %d after the restart: %v", name, i, err)
			if time.Now().After(deadline) || i > 100 {
				t.Fatalf("%s client: no query succeeded within 10s of the restart", name)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if fails > 1 {
			t.Errorf("%s client: %d queries failed after the restart, want at most 1", name, fails)
		}
		for i := 0; i < 3; i++ {
			if err := pgtest.SelectInt(c, 200+i); err != nil {
				t.Fatalf("%s client still not usable: %v", name, err)
			}
		}
	}

	// The client whose transaction was on a backend that died gets an error; its
	// next statement must not run elsewhere outside its transaction.
	qctx, qcancel := faultCtx()
	start = time.Now()
	_, err = txc.Exec(qctx, "INSERT INTO fault_rows VALUES (2)")
	qcancel()
	faultNoHang(t, "client of a transaction lost in the restart", err, time.Since(start))
	if err == nil {
		t.Fatalf("statement of a transaction lost in the restart succeeded")
	}
	t.Logf("client in a transaction during the restart: %v (SQLSTATE %q)", err, pgCode(err))

	chk2 := direct(t, db)
	c4 := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
	for i := 0; i < 3; i++ {
		if err := pgtest.SelectInt(c4, i); err != nil {
			t.Fatalf("new client after the restart: %v", err)
		}
	}
	for _, id := range []int{1, 2} {
		if n := faultRows(t, chk2, id); n != 0 {
			t.Errorf("row %d of the lost transaction is visible", id)
		}
	}
	faultNoIdleInTx(t, tp, chk2)
	if st := faultPool(tp).Stats(); st.Open > 2 {
		t.Fatalf("pool has %d backends open, size 2", st.Open)
	}
}

func TestFaultDisconnectMidTransaction(t *testing.T) {
	db := newDatabase(t)
	chk := direct(t, db)
	faultTable(t, chk)
	tp := startProxy(t, db, proxyOpts{PoolSize: 1})

	t.Run("Idle", func(t *testing.T) {
		a := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
		faultExec(t, a, "BEGIN")
		faultExec(t, a, "INSERT INTO fault_rows VALUES (1)")
		pid := pgtest.MustInt(t, a, "SELECT pg_backend_pid()")
		a.PgConn().Conn().Close()
		pgtest.Eventually(t, 5*time.Second, "backend back to idle", func() error {
			if st := tp.serverBackends(t, chk); st["idle"] != 1 || len(st) != 1 {
				return fmt.Errorf("backends by state: %v", st)
			}
			return nil
		})
		if n := faultRows(t, chk, 1); n != 0 {
			t.Fatalf("row of the abandoned transaction is visible")
		}
		b := tp.connect(t, pgx.QueryExecModeExec)
		if got := pgtest.MustInt(t, b, "SELECT pg_backend_pid()"); got != pid {
			t.Fatalf("new client on backend %d, want the reused backend %d (pool size 1)", got, pid)
		}
		if n := pgtest.MustInt(t, b, "SELECT count(*) FROM fault_rows WHERE id = $1", 1); n != 0 {
			t.Fatalf("new client sees the abandoned row")
		}
		if b.PgConn().TxStatus() != 'I' {
			t.Fatalf("new client's transaction status %q, want I", b.PgConn().TxStatus())
		}
		faultExec(t, b, "INSERT INTO fault_rows VALUES ($1)", 2)
		if n := faultRows(t, chk, 2); n != 1 {
			t.Fatalf("new client's autocommit row: %d rows", n)
		}
	})

	t.Run("MidQuery", func(t *testing.T) {
		a := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
		faultExec(t, a, "BEGIN")
		faultExec(t, a, "INSERT INTO fault_rows VALUES (3)")
		pid := pgtest.MustInt(t, a, "SELECT pg_backend_pid()")
		errc := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err := a.Exec(ctx, "SELECT pg_sleep(5)")
			errc <- err
		}()
		pgtest.Eventually(t, 5*time.Second, "pg_sleep running", func() error {
			if n := pgtest.MustInt(t, chk, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active' AND query = 'SELECT pg_sleep(5)'", pid); n != 1 {
				return errors.New("not yet")
			}
			return nil
		})
		a.PgConn().Conn().Close()
		if err := pgtest.Recv(t, errc, 5*time.Second, "query did not return after its connection was closed"); err == nil {
			t.Fatalf("query on a closed connection succeeded")
		}
		b := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
		start := time.Now()
		if n := pgtest.MustInt(t, b, "SELECT count(*) FROM fault_rows WHERE id = 3"); n != 0 {
			t.Fatalf("new client sees the abandoned row")
		}
		t.Logf("next client served after %s", time.Since(start))
		if b.PgConn().TxStatus() != 'I' {
			t.Fatalf("new client's transaction status %q, want I", b.PgConn().TxStatus())
		}
		faultExec(t, b, "INSERT INTO fault_rows VALUES (4)")
		if n := faultRows(t, chk, 4); n != 1 {
			t.Fatalf("new client's autocommit row: %d rows", n)
		}
		// The abandoned backend ends (closed by the proxy, PostgreSQL notices after
		// pg_sleep) without committing anything.
		pgtest.Eventually(t, 10*time.Second, "abandoned backend gone or rolled back", func() error {
			st := pgtest.MustInt(t, chk, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state <> 'idle'", pid)
			if st != 0 {
				return fmt.Errorf("backend %d still busy or in a transaction", pid)
			}
			return nil
		})
		if n := faultRows(t, chk, 3); n != 0 {
			t.Fatalf("row of the abandoned transaction committed")
		}
		faultNoIdleInTx(t, tp, chk)
		if st := faultPool(tp).Stats(); st.Open > 1 {
			t.Fatalf("pool leaks: %d backends open, size 1 (%+v)", st.Open, st)
		}
		if err := pgtest.SelectInt(b, 9); err != nil {
			t.Fatal(err)
		}
	})
}
