package proxy_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/pool"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// Fault-injection tests: malformed input, resource limits, backends that die, a
// PostgreSQL restart, clients that vanish, cancel requests, the proxy's timeouts and
// graceful shutdown.

// ---------------------------------------------------------------------------
// helpers (all prefixed with fault, as other test files share the package)

func faultCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Second)
}

func faultExec(t *testing.T, c *pgx.Conn, sql string, args ...any) {
	t.Helper()
	ctx, cancel := faultCtx()
	defer cancel()
	if _, err := c.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func faultRows(t *testing.T, chk *pgx.Conn, id int) int {
	t.Helper()
	return pgtest.MustInt(t, chk, "SELECT count(*) FROM fault_rows WHERE id = $1", id)
}

func faultTable(t *testing.T, chk *pgx.Conn) {
	t.Helper()
	faultExec(t, chk, "CREATE TABLE fault_rows (id int)")
}

// faultNoIdleInTx waits until no backend of the proxy is idle in a transaction.
func faultNoIdleInTx(t *testing.T, tp *testProxy, chk *pgx.Conn) {
	t.Helper()
	pgtest.Eventually(t, 5*time.Second, "no proxy backend idle in transaction", func() error {
		st := tp.serverBackends(t, chk)
		if n := st["idle in transaction"] + st["idle in transaction (aborted)"]; n > 0 {
			return fmt.Errorf("backends by state: %v", st)
		}
		return nil
	})
}

func faultPool(tp *testProxy) *pool.Pool {
	return tp.pools.Get(pool.Key{Database: tp.db, User: "postgres"})
}

// faultLoop starts a concurrent client: SELECT $1::int on c, over and over,
// until the crowd finishes (cr.Finish reports a failed query, and a loop that
// completed no query). The first failure ends the loop.
func faultLoop(t *testing.T, tp *testProxy, c *pgx.Conn) *pgtest.Crowd {
	cr := pgtest.NewCrowd(t, "concurrent client")
	cr.Go(func(_ context.Context, i int) error {
		start := time.Now()
		if err := pgtest.SelectInt(c, i); err != nil {
			return pgtest.Quit(fmt.Errorf("query %d failed after %s: %v (pool %+v)", i, time.Since(start), err, faultPool(tp).Stats()))
		}
		return nil
	})
	return cr
}

// faultNoHang fails t if err looks like a query that hung until its context ended.
func faultNoHang(t *testing.T, what string, err error, elapsed time.Duration) {
	t.Helper()
	if errors.Is(err, context.DeadlineExceeded) || elapsed > 9*time.Second {
		t.Fatalf("%s hung (%s): %v", what, elapsed, err)
	}
}

// ---------------------------------------------------------------------------

func TestFaultBadInput(t *testing.T) {
	db := newDatabase(t)
	chk := direct(t, db)
	faultTable(t, chk)
	tp := startProxy(t, db, proxyOpts{PoolSize: 2, Opt: proxy.Options{ClientLoginTimeout: 300 * time.Millisecond}})
	{
		// Learn the route's server parameters outside the short login timeout.
		ctx, cancel := faultCtx()
		be, err := faultPool(tp).Acquire(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		faultPool(tp).Release(be)
	}
	bystander := tp.connect(t, pgx.QueryExecModeExec)
	// idle stays logged in without a word for longer than the login timeout.
	idle := tp.connect(t, pgx.QueryExecModeSimpleProtocol)

	loop := faultLoop(t, tp, bystander)
	protoErr0 := tp.srv.Stats().ProtocolError

	loggedIn := func(t *testing.T) *pgtest.Raw {
		rc := pgtest.Dial(t, tp.addr)
		rc.Login(db, "fault_raw")
		return rc
	}
	cases := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"HTTPRequest", func(t *testing.T) {
			rc := pgtest.Dial(t, tp.addr)
			rc.Send([]byte("GET / HTTP/1.1\r\n\r\n"))
			rc.ExpectFatal(wire.CodeProtocolViolation, 2*time.Second)
		}},
		{"HugeStartupLength", func(t *testing.T) {
			rc := pgtest.Dial(t, tp.addr)
			rc.Send([]byte{0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0})
			rc.ExpectFatal(wire.CodeProtocolViolation, 2*time.Second)
		}},
		{"TruncatedStartup", func(t *testing.T) {
			rc := pgtest.Dial(t, tp.addr)
			pkt := []byte{0, 0, 0, 100, 0, 3, 0, 0}
			pkt = append(pkt, "user\x00postgr"...) // 20 bytes of the announced 100
			rc.Send(pkt)
			if err := rc.Conn.(*net.TCPConn).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			errs, _, others := rc.ReadToClose(2 * time.Second)
			if len(others) > 0 || len(errs) > 1 {
				t.Fatalf("got messages %q and errors %+v, want at most one FATAL error", others, errs)
			}
			if len(errs) == 1 && (errs[0].Severity != wire.SeverityFatal || errs[0].Code != wire.CodeProtocolViolation) {
				t.Fatalf("got error %+v, want FATAL 08P01", errs[0])
			}
		}},
		{"UnsupportedProtocol", func(t *testing.T) {
			rc := pgtest.Dial(t, tp.addr)
			rc.Send(wire.AppendStartup(nil, 2<<16, wire.StartupParam{Name: "user", Value: "postgres"}))
			rc.ExpectFatal(wire.CodeFeatureNotSupported, 2*time.Second)
		}},
		{"StalledStartup", func(t *testing.T) {
			start := time.Now()
			rc := pgtest.Dial(t, tp.addr)
			at := rc.ExpectFatal(wire.CodeProtocolViolation, 3*time.Second)
			if d := at.Sub(start); d < 250*time.Millisecond || d > 2*time.Second {
				t.Fatalf("login timeout error after %s, want about 300ms", d)
			}
		}},
		{"InvalidMessageType", func(t *testing.T) {
			rc := loggedIn(t)
			rc.MustQuery("SELECT 1", wire.TxIdle)
			rc.Send([]byte{0x01, 0, 0, 0, 4})
			rc.ExpectFatal(wire.CodeProtocolViolation, 2*time.Second)
		}},
		{"NegativeQueryLength", func(t *testing.T) {
			rc := loggedIn(t)
			msg := []byte{'Q', 0xff, 0xff, 0xff, 0xf0}
			rc.Send(append(msg, "SELECT 1\x00"...))
			rc.ExpectFatal(wire.CodeProtocolViolation, 2*time.Second)
		}},
		{"BadSyncLength", func(t *testing.T) {
			rc := loggedIn(t)
			rc.Send([]byte{'S', 0, 0, 0, 8, 0, 0, 0, 0})
			rc.ExpectFatal(wire.CodeProtocolViolation, 2*time.Second)
		}},
		{"GarbageInTransaction", func(t *testing.T) {
			rc := loggedIn(t)
			rc.MustQuery("BEGIN", wire.TxActive)
			rc.MustQuery("INSERT INTO fault_rows VALUES (7)", wire.TxActive)
			rc.Send([]byte("GET / HTTP/1.1\r\n\r\n"))
			rc.ExpectFatal(wire.CodeProtocolViolation, 2*time.Second)
			faultNoIdleInTx(t, tp, chk)
			if n := faultRows(t, chk, 7); n != 0 {
				t.Fatalf("row of the broken transaction committed (%d rows)", n)
			}
		}},
		{"GarbagePipelinedInTransaction", func(t *testing.T) {
			// The garbage follows a query whose answer is still on its way: the
			// proxy cannot roll back cleanly and must drop the backend instead.
			rc := loggedIn(t)
			rc.MustQuery("BEGIN", wire.TxActive)
			msg := wire.AppendQuery(nil, "INSERT INTO fault_rows VALUES (8)")
			rc.Send(append(msg, 0x01, 0, 0, 0, 4))
			errs, _, others := rc.ReadToClose(2 * time.Second)
			if len(errs) != 1 || errs[0].Severity != wire.SeverityFatal || errs[0].Code != wire.CodeProtocolViolation {
				t.Fatalf("got errors %+v (other messages %q), want one FATAL 08P01", errs, others)
			}
			faultNoIdleInTx(t, tp, chk)
			if n := faultRows(t, chk, 8); n != 0 {
				t.Fatalf("row of the broken transaction committed (%d rows)", n)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, c.run)
	}
	loop.Finish(t)
	if err := pgtest.SelectInt(idle, 42); err != nil {
		t.Errorf("client idle since login (longer than the login timeout): %v", err)
	}
	if got, want := tp.srv.Stats().ProtocolError-protoErr0, uint64(len(cases)-1); got < want {
		t.Errorf("Stats.ProtocolError grew by %d, want at least %d", got, want)
	}
	faultNoIdleInTx(t, tp, chk)
	if st := faultPool(tp).Stats(); st.Open > st.Size {
		t.Errorf("pool has %d backends open, size %d", st.Open, st.Size)
	}
}

func TestFaultMaxClientConn(t *testing.T) {
	db := newDatabase(t)
	tp := startProxy(t, db, proxyOpts{Opt: proxy.Options{MaxClientConn: 3}})
	var conns []*pgx.Conn
	for i := 0; i < 3; i++ {
		c := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
		if err := pgtest.SelectInt(c, i); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	refused0 := tp.srv.Stats().Refused
	for i := 0; i < 2; i++ {
		c, err := tp.tryConnect(t, pgx.QueryExecModeSimpleProtocol)
		if err == nil {
			c.Close(context.Background())
			t.Fatalf("fourth client connected (attempt %d)", i)
		}
		if code := pgCode(err); code != "53300" {
			t.Fatalf("fourth client: error %v (SQLSTATE %q), want 53300", err, code)
		}
	}
	if got := tp.srv.Stats().Refused - refused0; got != 2 {
		t.Errorf("Stats.Refused grew by %d, want 2", got)
	}
	for i, c := range conns {
		if err := pgtest.SelectInt(c, 10+i); err != nil {
			t.Fatalf("client %d after the refusals: %v", i, err)
		}
	}
	ctx, cancel := faultCtx()
	defer cancel()
	if err := conns[0].Close(ctx); err != nil {
		t.Fatal(err)
	}
	var c4 *pgx.Conn
	pgtest.Eventually(t, 5*time.Second, "a new client is accepted after one left", func() error {
		c, err := tp.tryConnect(t, pgx.QueryExecModeSimpleProtocol)
		if err != nil {
			return err
		}
		c4 = c
		return nil
	})
	if err := pgtest.SelectInt(c4, 4); err != nil {
		t.Fatalf("new client: %v", err)
	}
	if _, err := tp.tryConnect(t, pgx.QueryExecModeSimpleProtocol); pgCode(err) != "53300" {
		t.Fatalf("client beyond the limit again: %v, want SQLSTATE 53300", err)
	}
}

func TestFaultTerminateIdleBackend(t *testing.T) {
	db := newDatabase(t)
	chk := direct(t, db)
	tp := startProxy(t, db, proxyOpts{PoolSize: 2})
	c1 := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
	c2 := tp.connect(t, pgx.QueryExecModeExec)
	// Two overlapping queries make the pool open both backends.
	errc := make(chan error, 2)
	for _, c := range []*pgx.Conn{c1, c2} {
		go func() {
			ctx, cancel := faultCtx()
			defer cancel()
			_, err := c.Exec(ctx, "SELECT pg_sleep(0.2)")
			errc <- err
		}()
	}
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	pgtest.Eventually(t, 5*time.Second, "two idle proxy backends", func() error {
		if st := tp.serverBackends(t, chk); st["idle"] != 2 || len(st) != 1 {
			return fmt.Errorf("backends by state: %v", st)
		}
		return nil
	})
	// The pool checks an idle backend before handing it out only once it has been
	// idle for a few milliseconds (one that dies sooner is found by its next user, by
	// design): the backends are made to be idle a while, as idle backends are.
	pgtest.Eventually(t, 5*time.Second, "backends idle for 100ms", func() error {
		n := pgtest.MustInt(t, chk, `SELECT count(*) FROM pg_stat_activity WHERE `+proxyBackends+`
			AND state = 'idle' AND state_change < clock_timestamp() - interval '100 ms'`, tp.db)
		if n != 2 {
			return fmt.Errorf("%d backends idle for 100ms", n)
		}
		return nil
	})
	var old []uint32
	{
		ctx, cancel := faultCtx()
		rows, err := chk.Query(ctx, "SELECT pid FROM pg_stat_activity WHERE "+proxyBackends, tp.db)
		if err != nil {
			t.Fatal(err)
		}
		old, err = pgx.CollectRows(rows, pgx.RowTo[uint32])
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := pgtest.MustInt(t, chk, "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "+proxyBackends+") s", tp.db); n != 2 {
		t.Fatalf("terminated %d backends, want 2", n)
	}
	pgtest.Eventually(t, 5*time.Second, "terminated backends gone", func() error {
		if st := tp.serverBackends(t, chk); len(st) != 0 {
			return fmt.Errorf("backends by state: %v", st)
		}
		return nil
	})
	for i := 0; i < 5; i++ {
		if err := pgtest.SelectInt(c1, i); err != nil {
			t.Fatalf("same client (simple protocol), query %d after the backends were terminated: %v", i, err)
		}
		if err := pgtest.SelectInt(c2, i); err != nil {
			t.Fatalf("same client (extended protocol), query %d after the backends were terminated: %v", i, err)
		}
	}
	c3 := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
	if err := pgtest.SelectInt(c3, 3); err != nil {
		t.Fatalf("new client: %v", err)
	}
	pid := pgtest.MustInt(t, c3, "SELECT pg_backend_pid()")
	for _, o := range old {
		if uint32(pid) == o {
			t.Fatalf("client served by terminated backend %d", pid)
		}
	}
	if st := faultPool(tp).Stats(); st.Open > 2 {
		t.Fatalf("pool has %d backends open, size 2", st.Open)
	}
}

// TestFaultTerminateBackendInTransaction kills the backend of a client that is in a
// transaction and keeps sending statements (pipelined, without waiting for answers):
// once the transaction is lost, none of the client's later statements may run on
// another backend outside it.
func TestFaultTerminateBackendInTransaction(t *testing.T) {
	db := newDatabase(t)
	chk := direct(t, db)
	faultTable(t, chk)
	tp := startProxy(t, db, proxyOpts{PoolSize: 2})
	bystander := tp.connect(t, pgx.QueryExecModeExec)
	for round := 0; round < 3; round++ {
		rc := pgtest.Dial(t, tp.addr)
		rc.Login(db, "fault_raw")
		rc.MustQuery("BEGIN", wire.TxActive)
		rc.MustQuery("INSERT INTO fault_rows VALUES (1)", wire.TxActive)
		pid := pgtest.MustInt(t, chk, "SELECT pid FROM pg_stat_activity WHERE "+proxyBackends+" AND state = 'idle in transaction'", tp.db)

		// reader: counts answers and keeps the errors until the proxy closes.
		var answers atomic.Int64
		type outcome struct {
			errs []wire.ErrorFields
			err  error
		}
		readDone := make(chan outcome, 1)
		go func() {
			var o outcome
			_ = rc.Conn.SetReadDeadline(time.Now().Add(20 * time.Second))
			for {
				typ, body, err := rc.Read()
				if err != nil {
					o.err = err
					readDone <- o
					return
				}
				switch typ {
				case wire.MsgErrorResponse:
					o.errs = append(o.errs, wire.ParseError(body))
				case wire.MsgReadyForQuery:
					answers.Add(1)
				case 'C', wire.MsgNoticeResponse:
				default:
					o.err = fmt.Errorf("unexpected message %q %q after %d answers (corrupt stream?)", typ, body, answers.Load())
					readDone <- o
					return
				}
			}
		}()
		// writer: INSERT 2 as fast as possible, never waiting for an answer.
		stop := make(chan struct{})
		writeDone := make(chan int, 1)
		go func() {
			var batch []byte
			for i := 0; i < 10; i++ {
				batch = wire.AppendQuery(batch, "INSERT INTO fault_rows VALUES (2)")
			}
			n := 0
			defer func() { writeDone <- n }()
			for ; n < 200_000; n++ {
				select {
				case <-stop:
					return
				default:
				}
				_ = rc.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
				if _, err := rc.Conn.Write(batch); err != nil {
					return
				}
			}
		}()
		pgtest.Eventually(t, 5*time.Second, "pipelined statements answered", func() error {
			if answers.Load() < 50 {
				return errors.New("not yet")
			}
			return nil
		})
		if n := pgtest.MustInt(t, chk, "SELECT count(*) FROM (SELECT pg_terminate_backend($1)) s", pid); n != 1 {
			t.Fatal("pg_terminate_backend")
		}
		var o outcome
		select {
		case o = <-readDone:
		case <-time.After(10 * time.Second):
			t.Fatalf("proxy did not close the client whose transaction was lost")
		}
		close(stop)
		<-writeDone
		// The stream may end abruptly (the proxy closes a client that is still
		// sending, so its last bytes may be lost to a reset), but what arrives must
		// be well-formed messages.
		if !pgtest.Closed(o.err) && !errors.Is(o.err, io.ErrUnexpectedEOF) {
			t.Errorf("round %d: client connection: %v, want well-formed messages, then closed", round, o.err)
		}
		faultNoIdleInTx(t, tp, chk)
		if n := faultRows(t, chk, 1); n != 0 {
			t.Fatalf("round %d: row of the lost transaction committed", round)
		}
		if n := faultRows(t, chk, 2); n != 0 {
			t.Fatalf("round %d: %d statements sent inside the lost transaction were committed outside it (after %d answers)", round, n, answers.Load())
		}
		if err := pgtest.SelectInt(bystander, round); err != nil {
			t.Fatalf("other client: %v", err)
		}
	}
}

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

func TestFaultCancel(t *testing.T) {
	db := newDatabase(t)
	chk := direct(t, db)
	tp := startProxy(t, db, proxyOpts{PoolSize: 2})
	a := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
	b := tp.connect(t, pgx.QueryExecModeExec)
	running := func(sql string) func() error {
		return func() error {
			n := pgtest.MustInt(t, chk, "SELECT count(*) FROM pg_stat_activity WHERE "+proxyBackends+" AND state = 'active' AND query = $2", tp.db, sql)
			if n != 1 {
				return fmt.Errorf("%d backends running %q", n, sql)
			}
			return nil
		}
	}

	loop := faultLoop(t, tp, b)

	errc := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
		defer cancel()
		_, err := a.Exec(ctx, "SELECT pg_sleep(30)")
		errc <- err
	}()
	pgtest.Eventually(t, 5*time.Second, "A's pg_sleep running", running("SELECT pg_sleep(30)"))
	ctx, cancel := faultCtx()
	defer cancel()
	start := time.Now()
	if err := a.PgConn().CancelRequest(ctx); err != nil {
		t.Fatalf("cancel request: %v", err)
	}
	err := pgtest.Recv(t, errc, 3*time.Second, "query not canceled within 3s")
	if code := pgCode(err); code != "57014" {
		t.Fatalf("canceled query: %v (SQLSTATE %q), want 57014", err, code)
	}
	t.Logf("query canceled after %s", time.Since(start))
	if err := pgtest.SelectInt(a, 1); err != nil {
		t.Fatalf("A after the cancel: %v", err)
	}
	if loop.Finish(t); loop.Done() == 0 {
		t.FailNow() // Finish reported it
	}

	// Cancel requests that must have no effect: for a client running nothing, and
	// with a wrong key.
	c := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
	sleep := func(send func()) {
		t.Helper()
		errc := make(chan error, 1)
		go func() {
			ctx, cancel := faultCtx()
			defer cancel()
			_, err := c.Exec(ctx, "SELECT pg_sleep(0.5)")
			errc <- err
		}()
		pgtest.Eventually(t, 5*time.Second, "pg_sleep(0.5) running", running("SELECT pg_sleep(0.5)"))
		send()
		if err := <-errc; err != nil {
			t.Fatalf("other client's pg_sleep(0.5): %v", err)
		}
	}
	sleep(func() {
		if err := a.PgConn().CancelRequest(ctx); err != nil {
			t.Fatalf("cancel request: %v", err)
		}
	})
	sleep(func() {
		rc := pgtest.Dial(t, tp.addr)
		key := append([]byte(nil), c.PgConn().SecretKey()...)
		key[0] ^= 0xff
		rc.Send(wire.AppendCancelRequest(nil, c.PgConn().PID(), key))
		rc.ReadToClose(2 * time.Second)
	})
	if err := pgtest.SelectInt(a, 2); err != nil {
		t.Fatal(err)
	}
	if err := pgtest.SelectInt(c, 3); err != nil {
		t.Fatal(err)
	}
}

func TestFaultIdleTransactionTimeout(t *testing.T) {
	db := newDatabase(t)
	chk := direct(t, db)
	faultTable(t, chk)
	tp := startProxy(t, db, proxyOpts{PoolSize: 1, Opt: proxy.Options{IdleTransactionTimeout: 300 * time.Millisecond}})

	// A client idle outside a transaction is never affected, even right after one.
	idle := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
	faultExec(t, idle, "BEGIN")
	faultExec(t, idle, "INSERT INTO fault_rows VALUES (100)")
	faultExec(t, idle, "COMMIT")
	idleSince := time.Now()

	// A raw client goes silent in a transaction: FATAL 25P03.
	rc := pgtest.Dial(t, tp.addr)
	rc.Login(db, "fault_raw")
	rc.MustQuery("BEGIN", wire.TxActive)
	rc.MustQuery("INSERT INTO fault_rows VALUES (1)", wire.TxActive)
	start := time.Now()
	at := rc.ExpectFatal(wire.CodeIdleInTransactionTimout, 3*time.Second)
	if d := at.Sub(start); d < 250*time.Millisecond {
		t.Fatalf("idle-transaction timeout after %s, want about 300ms", d)
	}
	faultNoIdleInTx(t, tp, chk)
	if n := faultRows(t, chk, 1); n != 0 {
		t.Fatalf("row of the timed-out transaction committed")
	}
	b := tp.connect(t, pgx.QueryExecModeExec)
	if err := pgtest.SelectInt(b, 1); err != nil {
		t.Fatalf("client B on the single backend: %v", err)
	}

	// The same with pgx: its next operation fails.
	a := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
	killed := tp.srv.Stats().IdleTxKilled
	faultExec(t, a, "BEGIN")
	faultExec(t, a, "INSERT INTO fault_rows VALUES (2)")
	pgtest.Eventually(t, 3*time.Second, "idle-transaction timeout", func() error {
		if tp.srv.Stats().IdleTxKilled == killed {
			return errors.New("client not ended yet")
		}
		return nil
	})
	ctx, cancel := faultCtx()
	_, err := a.Exec(ctx, "INSERT INTO fault_rows VALUES (3)")
	cancel()
	if err == nil {
		t.Fatalf("client ended by the idle-transaction timeout could still run a statement")
	}
	if code := pgCode(err); code != "" && code != wire.CodeIdleInTransactionTimout {
		t.Fatalf("client ended by the idle-transaction timeout: %v, want SQLSTATE 25P03", err)
	}
	t.Logf("pgx client after the timeout: %v", err)
	if n := faultRows(t, chk, 2) + faultRows(t, chk, 3); n != 0 {
		t.Fatalf("rows of the timed-out transaction committed")
	}
	if err := pgtest.SelectInt(b, 2); err != nil {
		t.Fatalf("client B after the second timeout: %v", err)
	}

	// A transaction that is busy (not idle) for longer than the timeout survives.
	faultExec(t, b, "BEGIN")
	faultExec(t, b, "SELECT pg_sleep(0.6)")
	faultExec(t, b, "INSERT INTO fault_rows VALUES ($1)", 4)
	faultExec(t, b, "COMMIT")
	if n := faultRows(t, chk, 4); n != 1 {
		t.Fatalf("busy transaction not committed")
	}

	if d := time.Second - time.Since(idleSince); d > 0 {
		time.Sleep(d) // the scenario: idle for a second
	}
	if err := pgtest.SelectInt(idle, 5); err != nil {
		t.Fatalf("client idle outside a transaction for 1s: %v", err)
	}
	if n := faultRows(t, chk, 100); n != 1 {
		t.Fatalf("committed row lost")
	}
	if got := tp.srv.Stats().IdleTxKilled; got != 2 {
		t.Fatalf("Stats.IdleTxKilled = %d, want 2", got)
	}
}

func TestFaultQueryWaitTimeout(t *testing.T) {
	db := newDatabase(t)
	tp := startProxy(t, db, proxyOpts{PoolSize: 1, Opt: proxy.Options{QueryWaitTimeout: 300 * time.Millisecond}})
	a := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
	for _, m := range []struct {
		name string
		mode pgx.QueryExecMode
	}{{"Simple", pgx.QueryExecModeSimpleProtocol}, {"Extended", pgx.QueryExecModeExec}} {
		t.Run(m.name, func(t *testing.T) {
			b := tp.connect(t, m.mode)
			faultExec(t, a, "BEGIN")
			for i := 0; i < 2; i++ {
				start := time.Now()
				err := pgtest.SelectInt(b, i)
				d := time.Since(start)
				if code := pgCode(err); code != "57014" {
					t.Fatalf("query %d while the only backend is held: %v (SQLSTATE %q), want 57014", i, err, code)
				}
				// About 300ms; the bound is loose for loaded machines.
				if d < 250*time.Millisecond || d > 2*time.Second {
					t.Fatalf("query_wait_timeout error after %s, want about 300ms", d)
				}
				if b.IsClosed() {
					t.Fatalf("client closed after query_wait_timeout")
				}
			}
			faultExec(t, a, "COMMIT")
			for i := 0; i < 3; i++ {
				if err := pgtest.SelectInt(b, 10+i); err != nil {
					t.Fatalf("query after the backend was freed: %v", err)
				}
			}
			if err := pgtest.SelectInt(a, 1); err != nil {
				t.Fatal(err)
			}
		})
	}

	// Raw extended protocol: the failed batch gets exactly one error, and one
	// ReadyForQuery at its Sync.
	t.Run("ExtendedRaw", func(t *testing.T) {
		rc := pgtest.Dial(t, tp.addr)
		rc.Login(tp.db, "fault_raw")
		batch := faultExtendedBatch("SELECT 1")
		faultExec(t, a, "BEGIN")
		for i := 0; i < 2; i++ {
			start := time.Now()
			rc.Send(batch)
			var types []byte
			var errs []wire.ErrorFields
			for len(types) == 0 || types[len(types)-1] != wire.MsgReadyForQuery {
				typ, body, err := rc.Next(5 * time.Second)
				if err != nil {
					t.Fatalf("batch %d: after %q: %v", i, types, err)
				}
				types = append(types, typ)
				if typ == wire.MsgErrorResponse {
					errs = append(errs, wire.ParseError(body))
				}
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("batch %d answered after %s, want about 300ms", i, d)
			}
			if string(types) != "EZ" || errs[0].Code != wire.CodeQueryCanceled || errs[0].Severity != wire.SeverityError {
				t.Fatalf("batch %d while the only backend is held: messages %q, errors %+v; want one ERROR 57014 then ReadyForQuery", i, types, errs)
			}
		}
		faultExec(t, a, "COMMIT")
		rc.Send(batch)
		var types []byte
		for len(types) == 0 || types[len(types)-1] != wire.MsgReadyForQuery {
			typ, body, err := rc.Next(5 * time.Second)
			if err != nil {
				t.Fatalf("batch after the backend was freed: after %q: %v", types, err)
			}
			if typ == wire.MsgErrorResponse {
				t.Fatalf("batch after the backend was freed: %+v", wire.ParseError(body))
			}
			types = append(types, typ)
		}
		if string(types) != "12TDCZ" {
			t.Fatalf("batch after the backend was freed: messages %q, want \"12TDCZ\"", types)
		}
	})
}

// faultExtendedBatch encodes Parse, Bind, Describe (portal), Execute and Sync of sql
// with the unnamed statement and portal and no parameters.
func faultExtendedBatch(sql string) []byte {
	msg := func(dst []byte, t byte, body ...byte) []byte {
		dst = append(dst, t)
		dst = binary.BigEndian.AppendUint32(dst, uint32(4+len(body)))
		return append(dst, body...)
	}
	parse := append([]byte{0}, sql...) // unnamed statement
	parse = append(parse, 0, 0, 0)     // no parameter types
	var b []byte
	b = msg(b, 'P', parse...)
	b = msg(b, 'B', 0, 0, 0, 0, 0, 0, 0, 0) // portal, statement, 0 formats, 0 params, 0 result formats
	b = msg(b, 'D', 'P', 0)
	b = msg(b, 'E', 0, 0, 0, 0, 0)
	return wire.AppendSync(b)
}

func TestFaultShutdown(t *testing.T) {
	db := newDatabase(t)
	chk := direct(t, db)
	faultTable(t, chk)

	t.Run("Graceful", func(t *testing.T) {
		tp := startProxy(t, db, proxyOpts{PoolSize: 2})
		a := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
		b := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
		if err := pgtest.SelectInt(b, 1); err != nil {
			t.Fatal(err)
		}
		braw := pgtest.Dial(t, tp.addr)
		braw.Login(db, "fault_raw")
		faultExec(t, a, "BEGIN")
		faultExec(t, a, "INSERT INTO fault_rows VALUES (1)")

		done := make(chan error, 1)
		var returned atomic.Bool
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := tp.srv.Shutdown(ctx)
			returned.Store(true)
			done <- err
		}()
		braw.ExpectFatal(wire.CodeAdminShutdown, 3*time.Second)
		pgtest.Eventually(t, 3*time.Second, "idle clients closed", func() error {
			if n := tp.srv.Stats().Clients; n != 1 {
				return fmt.Errorf("%d clients connected", n)
			}
			return nil
		})
		ctx, cancel := faultCtx()
		_, err := b.Exec(ctx, "SELECT 1")
		cancel()
		if err == nil {
			t.Fatalf("idle client still usable during shutdown")
		}
		if code := pgCode(err); code != "" && code != wire.CodeAdminShutdown {
			t.Fatalf("idle client during shutdown: %v, want SQLSTATE 57P01", err)
		}
		if c, err := net.DialTimeout("tcp", tp.addr, time.Second); err == nil {
			c.Close()
			t.Errorf("proxy accepts connections during shutdown")
		}
		if returned.Load() {
			t.Fatalf("Shutdown returned while a transaction was open")
		}
		faultExec(t, a, "INSERT INTO fault_rows VALUES (2)")
		faultExec(t, a, "COMMIT")
		if err := pgtest.Recv(t, done, 3*time.Second, "Shutdown did not return after the last transaction ended"); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		if n := faultRows(t, chk, 1) + faultRows(t, chk, 2); n != 2 {
			t.Fatalf("committed transaction has %d of 2 rows", n)
		}
		ctx, cancel = faultCtx()
		_, err = a.Exec(ctx, "SELECT 1")
		cancel()
		if err == nil {
			t.Fatalf("client still usable after Shutdown")
		}
		faultNoIdleInTx(t, tp, chk)
	})

	t.Run("Queued", func(t *testing.T) {
		// A client queued for the only backend hears of the shutdown at once, with
		// a FATAL 57P01 (not a bare close), not when its query-wait-timeout or the
		// shutdown deadline runs out.
		tp := startProxy(t, db, proxyOpts{PoolSize: 1, Opt: proxy.Options{QueryWaitTimeout: time.Minute}})
		a := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
		faultExec(t, a, "BEGIN")
		faultExec(t, a, "INSERT INTO fault_rows VALUES (30)")
		w := pgtest.Dial(t, tp.addr)
		w.Login(db, "fault_raw")
		w.Send(wire.AppendQuery(nil, "SELECT 1"))
		p := tp.pools.Get(pool.Key{Database: db, User: "postgres"})
		pgtest.Eventually(t, 5*time.Second, "the client queued", func() error {
			if n := p.Stats().Waiting; n != 1 {
				return fmt.Errorf("%d waiting", n)
			}
			return nil
		})
		done := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			done <- tp.srv.Shutdown(ctx)
		}()
		w.ExpectFatal(wire.CodeAdminShutdown, 3*time.Second)
		if n := p.Stats().Waiting; n != 0 {
			t.Fatalf("%d still waiting after the shutdown began", n)
		}
		faultExec(t, a, "COMMIT")
		if err := pgtest.Recv(t, done, 5*time.Second, "Shutdown did not return after the last transaction ended"); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		if n := faultRows(t, chk, 30); n != 1 {
			t.Fatalf("the open transaction's row: %d, want 1", n)
		}
	})

	t.Run("Deadline", func(t *testing.T) {
		tp := startProxy(t, db, proxyOpts{PoolSize: 2})
		a := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
		faultExec(t, a, "BEGIN")
		faultExec(t, a, "INSERT INTO fault_rows VALUES (3)")
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		err := tp.srv.Shutdown(ctx)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown: %v, want context.DeadlineExceeded", err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("Shutdown took %s", d)
		}
		if n := tp.srv.Stats().Clients; n != 0 {
			t.Fatalf("%d clients left after Shutdown", n)
		}
		faultNoIdleInTx(t, tp, chk)
		if n := faultRows(t, chk, 3); n != 0 {
			t.Fatalf("row of the unfinished transaction committed")
		}
		qctx, qcancel := faultCtx()
		_, err = a.Exec(qctx, "COMMIT")
		qcancel()
		if err == nil {
			t.Fatalf("client ended by Shutdown could still COMMIT")
		}
		if code := pgCode(err); code != "" && code != wire.CodeAdminShutdown {
			t.Fatalf("client ended by Shutdown: %v, want SQLSTATE 57P01", err)
		}
		if n := faultRows(t, chk, 3); n != 0 {
			t.Fatalf("row of the unfinished transaction committed")
		}
		if st := faultPool(tp).Stats(); st.Open > 2 || st.InUse != 0 {
			t.Fatalf("pool after Shutdown: %+v", st)
		}
	})
}

// A COPY that fails while the client is in the middle of a large CopyData: the
// backend answers (ErrorResponse, ReadyForQuery) while the proxy is still
// forwarding that message. The client's SET makes the proxy read the session
// state back after the statement; that Query must wait until the CopyData is
// written, not land inside it (which cost the client its connection).
func TestCopyFailsMidMessage(t *testing.T) {
	db := newDatabase(t)
	tp := startProxy(t, db, proxyOpts{PoolSize: 1})
	rc := pgtest.Dial(t, tp.addr)
	rc.Login(db, "fault_raw")
	rc.MustQuery("CREATE TABLE copy_mid(a int)", wire.TxIdle)
	rc.Send(wire.AppendQuery(nil, "SET search_path TO public; COPY copy_mid FROM STDIN"))
	for {
		typ, _, err := rc.Next(10 * time.Second)
		if err != nil {
			t.Fatalf("waiting for CopyInResponse: %v", err)
		}
		if typ == wire.MsgCopyInResponse {
			break
		}
	}
	// A bad row, then the first 200 KiB of a 1 MiB CopyData.
	const body = 1 << 20
	first := append(pgtest.Header(wire.MsgCopyData, body), bytes.Repeat([]byte{'y'}, 200<<10)...)
	rc.Send(append([]byte{wire.MsgCopyData, 0, 0, 0, 6, 'x', '\n'}, first...))
	copyErr, _ := rc.UntilReady(10*time.Second, "waiting for the COPY's error")
	if copyErr == nil || copyErr.Code != "22P02" {
		t.Fatalf("COPY of a bad row: error %+v, want 22P02", copyErr)
	}
	// The client pauses mid-message, as a slow client does: this is the fault
	// injected, not a wait for a condition. Meanwhile the proxy, which forwarded
	// part of the message, decides what to do after the ReadyForQuery. Then the
	// client sends the rest and CopyDone.
	time.Sleep(200 * time.Millisecond)
	rc.Send(bytes.Repeat([]byte{'y'}, body-(len(first)-5)))
	rc.Send([]byte{wire.MsgCopyDone, 0, 0, 0, 4})
	rc.MustQuery("SELECT 1", wire.TxIdle)
	if f, _ := rc.Query("SHOW search_path"); f != nil {
		t.Fatalf("SHOW search_path: %+v", f)
	}
	rc.MustQuery("SELECT count(*) FROM copy_mid", wire.TxIdle)
}
