package proxy_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// What a client may make the proxy buffer (issue 11, points 2 and 3): memory
// grows only with bytes that arrived, within bounds the proxy chooses.

// limitsBystander checks that another client is answered within 100 ms.
func limitsBystander(t *testing.T, c *pgx.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	var n int
	if err := c.QueryRow(ctx, "SELECT 41 + 1").Scan(&n); err != nil || n != 42 {
		t.Fatalf("bystander: %d, %v", n, err)
	}
	if took := time.Since(start); took > 100*time.Millisecond {
		t.Errorf("bystander answered in %s", took)
	}
}

// limitsResult reads the answer to a Raw.StreamLiteral: its one value, or the error.
func limitsResult(rc *pgtest.Raw, within time.Duration) (string, *wire.ErrorFields) {
	rc.T.Helper()
	val, ef, err := limitsAnswer(rc, within)
	if err != nil {
		rc.T.Fatalf("reading the answer: %v", err)
	}
	return val, ef
}

// limitsAnswer reads up to the ReadyForQuery or a FATAL: the value of the one
// DataRow, the last ErrorResponse, or the read error. It may run in a goroutine
// other than the test's.
func limitsAnswer(rc *pgtest.Raw, within time.Duration) (val string, ef *wire.ErrorFields, err error) {
	for {
		typ, body, err := rc.Next(within)
		if err != nil {
			return val, ef, err
		}
		switch typ {
		case wire.MsgDataRow:
			if len(body) > 6 {
				val = string(body[6:])
			}
		case wire.MsgErrorResponse:
			f := wire.ParseError(body)
			ef = &f
			if f.Severity == wire.SeverityFatal {
				return val, ef, nil
			}
		case wire.MsgReadyForQuery:
			return val, ef, nil
		}
	}
}

// A message claiming more than --max-message-size is refused after its header
// with FATAL 54000: nothing is reserved for the length it claims. COPY data is
// streamed and not counted against it.
func TestLimitsMessageSize(t *testing.T) {
	db := newDatabase(t)
	tp := startProxy(t, db, proxyOpts{Opt: proxy.Options{MaxMessageSize: 1 << 20}})
	by := tp.connect(t, pgx.QueryExecModeSimpleProtocol)

	for _, typ := range []byte{wire.MsgQuery, wire.MsgParse, wire.MsgBind, wire.MsgFunctionCall} {
		t.Run(string(typ), func(t *testing.T) {
			before := tp.srv.Stats().TooLarge
			rc := pgtest.Dial(t, tp.addr)
			rc.Login(db, "fault_raw")
			// 13 bytes that claim a gigabyte.
			rc.Send(append(pgtest.Header(typ, 1<<30-5), "SELECT 1"...))
			start := time.Now()
			errs, _, _ := rc.ReadToClose(5 * time.Second)
			if len(errs) != 1 || errs[0].Code != wire.CodeProgramLimitExceeded || errs[0].Severity != wire.SeverityFatal {
				t.Fatalf("got %+v, want one FATAL 54000", errs)
			}
			t.Logf("refused in %s: %s", time.Since(start).Round(time.Millisecond), errs[0].Message)
			if !strings.Contains(errs[0].Message, "max-message-size") {
				t.Errorf("message does not name the flag: %q", errs[0].Message)
			}
			if got := tp.srv.Stats().TooLarge - before; got != 1 {
				t.Errorf("Stats.TooLarge grew by %d, want 1", got)
			}
			limitsBystander(t, by)
		})
	}

	t.Run("CopyDataIsStreamed", func(t *testing.T) {
		chk := direct(t, db)
		if _, err := chk.Exec(context.Background(), "CREATE TABLE limits_copy (t text)"); err != nil {
			t.Fatal(err)
		}
		rc := pgtest.Dial(t, tp.addr)
		rc.Login(db, "fault_raw")
		rc.Send(wire.AppendQuery(nil, "COPY limits_copy FROM STDIN"))
		if typ, _, err := rc.Next(5 * time.Second); err != nil || typ != wire.MsgCopyInResponse {
			t.Fatalf("COPY: %q, %v", typ, err)
		}
		row := append(bytes.Repeat([]byte("y"), 3<<20), '\n') // 3 MiB in one CopyData
		rc.Send(append(pgtest.Header(wire.MsgCopyData, len(row)), row...))
		rc.Send([]byte{wire.MsgCopyDone, 0, 0, 0, 4})
		if _, ef := limitsResult(rc, 10*time.Second); ef != nil {
			t.Fatalf("COPY of a 3 MiB row: %+v", ef)
		}
		var n int
		if err := chk.QueryRow(context.Background(), "SELECT length(t) FROM limits_copy").Scan(&n); err != nil || n != 3<<20 {
			t.Fatalf("copied row: %d bytes, %v", n, err)
		}
	})
}

// Query and Parse text larger than the read buffer comes out of the message
// memory: a message that does not fit waits for room; one larger than all of
// it is refused (54000); a wait that times out ends the client (53200).
func TestLimitsMessageMemory(t *testing.T) {
	db := newDatabase(t)
	const budget = 1 << 20
	tp := startProxy(t, db, proxyOpts{PoolSize: 4, Opt: proxy.Options{
		MaxMessageMemory: budget, QueryWaitTimeout: 2 * time.Second,
	}})
	by := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
	const big = 700 << 10 // two do not fit at once

	t.Run("WaitsForRoom", func(t *testing.T) {
		a := pgtest.Dial(t, tp.addr)
		a.Login(db, "fault_raw")
		b := pgtest.Dial(t, tp.addr)
		b.Login(db, "fault_raw")
		// a sends its header and part of its text, then stalls: its message holds
		// the room it claims.
		head := "SELECT length('"
		a.Send(append(pgtest.Header(wire.MsgQuery, len(head)+big+3), head...))
		a.Send(bytes.Repeat([]byte("x"), 1000))
		pgtest.Eventually(t, 5*time.Second, "a's message reserved", func() error {
			if st := tp.srv.MessageMemory(); st.Used < big {
				return fmt.Errorf("%+v", st)
			}
			return nil
		})
		done := make(chan struct{})
		var val string
		var ef *wire.ErrorFields
		go func() {
			defer close(done)
			if err := b.StreamLiteral(big, 60*time.Second); err != nil {
				t.Errorf("write: %v", err)
			}
		}()
		pgtest.Eventually(t, 5*time.Second, "b waits for room", func() error {
			if st := tp.srv.MessageMemory(); st.Waiting != 1 {
				return fmt.Errorf("%+v", st)
			}
			return nil
		})
		limitsBystander(t, by)
		a.Send(bytes.Repeat([]byte("x"), big-1000))
		a.Send([]byte("')\x00"))
		if val, ef = limitsResult(a, 10*time.Second); ef != nil || val != fmt.Sprint(big) {
			t.Fatalf("a: %q, %+v", val, ef)
		}
		<-done
		if val, ef = limitsResult(b, 10*time.Second); ef != nil || val != fmt.Sprint(big) {
			t.Fatalf("b: %q, %+v", val, ef)
		}
		pgtest.Eventually(t, 5*time.Second, "the budget released", func() error {
			if st := tp.srv.MessageMemory(); st.Used != 0 || st.Waiting != 0 {
				return fmt.Errorf("%+v", st)
			}
			return nil
		})
	})

	t.Run("LargerThanBudget", func(t *testing.T) {
		rc := pgtest.Dial(t, tp.addr)
		rc.Login(db, "fault_raw")
		rc.Send(append(pgtest.Header(wire.MsgQuery, 2*budget), "SELECT 1"...))
		errs, _, _ := rc.ReadToClose(5 * time.Second)
		if len(errs) != 1 || errs[0].Code != wire.CodeProgramLimitExceeded {
			t.Fatalf("got %+v, want FATAL 54000", errs)
		}
		limitsBystander(t, by)
	})

	t.Run("WaitTimesOut", func(t *testing.T) {
		before := tp.srv.Stats().OutOfMemory
		a := pgtest.Dial(t, tp.addr)
		a.Login(db, "fault_raw")
		a.Send(append(pgtest.Header(wire.MsgQuery, big), "SELECT 1 --"...))
		pgtest.Eventually(t, 5*time.Second, "a's message reserved", func() error {
			if st := tp.srv.MessageMemory(); st.Used < big {
				return fmt.Errorf("%+v", st)
			}
			return nil
		})
		b := pgtest.Dial(t, tp.addr)
		b.Login(db, "fault_raw")
		b.Send(append(pgtest.Header(wire.MsgParse, big), "\x00SELECT 1 --"...))
		errs, _, _ := b.ReadToClose(10 * time.Second)
		if len(errs) != 1 || errs[0].Code != wire.CodeOutOfMemory || errs[0].Severity != wire.SeverityFatal {
			t.Fatalf("got %+v, want FATAL 53200", errs)
		}
		if got := tp.srv.Stats().OutOfMemory - before; got != 1 {
			t.Errorf("Stats.OutOfMemory grew by %d", got)
		}
		a.Conn.Close()
		pgtest.Eventually(t, 5*time.Second, "the budget released when a left", func() error {
			if st := tp.srv.MessageMemory(); st.Used != 0 || st.Waiting != 0 {
				return fmt.Errorf("%+v", st)
			}
			return nil
		})
		limitsBystander(t, by)
	})
}

// Named statements prepared outside a transaction are answered without a
// server connection; their number and bytes per client are bounded (54000),
// and the client goes on.
func TestLimitsClientStatements(t *testing.T) {
	db := newDatabase(t)
	tp := startProxy(t, db, proxyOpts{Opt: proxy.Options{MaxClientStatements: 5, MaxClientStatementBytes: 4096}})
	for _, inTx := range []bool{false, true} {
		t.Run(fmt.Sprintf("inTransaction=%v", inTx), func(t *testing.T) {
			rc := pgtest.Dial(t, tp.addr)
			rc.Login(db, "fault_raw")
			if inTx {
				rc.MustQuery("BEGIN", wire.TxActive)
			}
			// untilReady reads up to the ReadyForQuery: the first error, the status.
			untilReady := func(what string) (*wire.ErrorFields, byte) {
				return rc.UntilReady(5*time.Second, what)
			}
			parse := func(name, sql string) *wire.ErrorFields {
				rc.Send(wire.AppendSync(wire.AppendParse(nil, name, sql)))
				ef, tx := untilReady("parse " + name)
				if ef != nil && inTx {
					// As on PostgreSQL, the error aborted the transaction.
					if tx != wire.TxFailed {
						t.Fatalf("transaction status %q after an error", tx)
					}
					rc.MustQuery("ROLLBACK", wire.TxIdle)
					rc.MustQuery("BEGIN", wire.TxActive)
				}
				return ef
			}
			for i := 0; i < 5; i++ {
				if ef := parse(fmt.Sprintf("s%d", i), fmt.Sprintf("SELECT %d", i)); ef != nil {
					t.Fatalf("statement %d: %+v", i, ef)
				}
			}
			before := tp.srv.Stats().StatementLimit
			ef := parse("s5", "SELECT 5")
			if ef == nil || ef.Code != wire.CodeProgramLimitExceeded || !strings.Contains(ef.Message, "max-client-prepared-statements") {
				t.Fatalf("sixth statement: %+v, want 54000", ef)
			}
			rc.Send(wire.AppendSync(wire.AppendClose(nil, 'S', "s0")))
			if ef, _ := untilReady("close"); ef != nil {
				t.Fatalf("close: %+v", ef)
			}
			// Room again for one, but not for 5 kB of text.
			ef = parse("long", "SELECT '"+strings.Repeat("z", 5000)+"'")
			if ef == nil || ef.Code != wire.CodeProgramLimitExceeded || !strings.Contains(ef.Message, "max-client-prepared-bytes") {
				t.Fatalf("long statement: %+v, want 54000", ef)
			}
			if ef := parse("s5", "SELECT 5"); ef != nil {
				t.Fatalf("statement after a Close: %+v", ef)
			}
			if got := tp.srv.Stats().StatementLimit - before; got != 2 {
				t.Errorf("Stats.StatementLimit grew by %d, want 2", got)
			}
			// The statements kept work.
			rc.Send(wire.AppendSync(wire.AppendExecute(wire.AppendBind(nil, "", "s4"), "")))
			if v, ef := limitsResult(rc, 5*time.Second); ef != nil || v != "4" {
				t.Fatalf("s4: %q, %+v", v, ef)
			}
		})
	}
}

// A client that pipelines without a Sync and never reads: the proxy stops
// reading it once maxPending answers are due, instead of queueing without end.
func TestLimitsPendingAnswers(t *testing.T) {
	db := newDatabase(t)
	tp := startProxy(t, db, proxyOpts{PoolSize: 1})
	// Whether the answers due reach the bound before the TCP buffers between
	// the proxy and PostgreSQL fill depends on how fast PostgreSQL drains them
	// (on a loaded 2-core host, sometimes not): the bound must never be
	// exceeded in any attempt, and must be reached in one of three.
	reached := 0
	for attempt := 1; attempt <= 3 && reached < proxy.MaxPending/2; attempt++ {
		most := pendingAnswersAttempt(t, tp, db)
		t.Logf("attempt %d: at most %d answers due (bound %d)", attempt, most, proxy.MaxPending)
		if most > proxy.MaxPending+4 {
			t.Fatalf("%d answers due to one client, bound %d", most, proxy.MaxPending)
		}
		reached = max(reached, most)
	}
	if reached < proxy.MaxPending/2 {
		t.Fatalf("only %d answers were ever due in 3 attempts: the test did not reach the bound", reached)
	}
}

// pendingAnswersAttempt pipelines Bind/Execute pairs from a client that never
// reads until its writes block, samples the most answers due to it, then
// checks that the stuck client's leaving frees the server connection.
func pendingAnswersAttempt(t *testing.T, tp *testProxy, db string) int {
	t.Helper()
	rc := pgtest.Dial(t, tp.addr)
	rc.Login(db, "fault_raw")
	if tcp, ok := rc.Conn.(*net.TCPConn); ok {
		_ = tcp.SetReadBuffer(16 << 10)
	}
	rc.Send(wire.AppendParse(nil, "", "SELECT repeat('x', 200)"))
	var batch []byte
	for i := 0; i < 1000; i++ {
		batch = wire.AppendExecute(wire.AppendBind(batch, "", ""), "")
	}
	most := 0
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for i := 0; i < 3000; i++ { // bounded: 6 million messages at most
			_ = rc.Conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
			if _, err := rc.Conn.Write(batch); err != nil {
				return
			}
		}
	}()
	// Until the client's writes block (the proxy stopped reading it), sample
	// the answers due.
	deadline := time.Now().Add(60 * time.Second)
	for blocked := false; !blocked; {
		select {
		case <-writerDone:
			blocked = true
		case <-time.After(20 * time.Millisecond):
			most = max(most, tp.srv.PendingAnswers())
			if time.Now().After(deadline) {
				t.Fatal("the client's writes never blocked")
			}
		}
	}
	most = max(most, tp.srv.PendingAnswers())
	// A stuck client that leaves frees its server connection. Its end may
	// wait up to cleanupTimeout (5 s) for a server goroutine still writing to
	// it before closing under it: the bound is that, not less. (hangEnded
	// counts every client: the previous attempt's hangPoolUsable closed its
	// own.)
	rc.Conn.Close()
	hangEnded(t, tp, time.Now().Add(8*time.Second))
	hangPoolUsable(t, tp)
	return most
}
