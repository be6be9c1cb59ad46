package proxy_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
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
