package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
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
