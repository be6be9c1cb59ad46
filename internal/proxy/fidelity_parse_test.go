package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// A named Parse that PostgreSQL rejects (an unknown column, a syntax error) and
// that arrives with more than a Sync behind it (pgx's Prepare: Parse, Describe,
// Sync; a pipeline: Parse, Bind, Execute, Sync) gets its error at the Parse, as
// from PostgreSQL: no ParseComplete for a statement the server refused, and
// nothing else up to the ReadyForQuery. Only a lone Parse (Parse and Sync or
// Flush, nothing else) is answered by the proxy without a server connection; its
// error comes at the statement's first use (README, Prepared statements).

// fidelityStep is one write of frontend messages; want is PostgreSQL's stream
// (asserted on the direct side), proxyWant, when set, the proxy's documented
// different one (else the proxy must match PostgreSQL).
type fidelityStep struct {
	name      string
	msgs      []pgproto3.FrontendMessage
	tail      int
	want      []string
	proxyWant []string
}

// TestFidelityParseErrorProtocol sends the same raw message sequences straight
// to PostgreSQL and through the proxy (transaction mode: every step starts
// without a server connection, where the proxy defers a named Parse) and
// compares the backend message streams. With one server connection a statement
// the connection already has is found there (the proxy then parses the text
// under a throwaway name for the client's answer); with two, either may happen.
func TestFidelityParseErrorProtocol(t *testing.T) {
	needCluster(t)
	pgAddr := net.JoinHostPort(cluster.Host, strconv.Itoa(cluster.Port))
	directDB := newDatabase(t)
	for _, size := range []int{1, 2} {
		t.Run(fmt.Sprintf("pool%d", size), func(t *testing.T) {
			db := newDatabase(t)
			tp := startProxy(t, db, proxyOpts{PoolSize: size})
			runFidelitySteps(t, []side{
				{name: "direct", addr: pgAddr, db: directDB, direct: true},
				{name: "proxy", addr: tp.addr, db: db},
			}, parseErrorSteps())
		})
	}
}

// parseErrorSteps are the steps of TestFidelityParseErrorProtocol, run on one
// connection per side in order.
func parseErrorSteps() []fidelityStep {
	const undefFoo = `column "foo" does not exist`
	errFoo := perr("42703", undefFoo)
	steps := []fidelityStep{{
		name: "parse bad, describe, sync (pgx Prepare)",
		msgs: fm(parse("s1", "select foo"), describeS("s1"), syncM),
		want: w(errFoo, rfqI),
	}, {
		name: "s1 was not registered",
		msgs: fm(describeS("s1"), syncM),
		want: w(perr("26000", `prepared statement "s1" does not exist`), rfqI),
	}, {
		name: "parse bad, bind, execute, sync",
		msgs: fm(parse("s1", "select foo"), bind("s1"), execute(), syncM),
		want: w(errFoo, rfqI),
	}, {
		name: "parse bad, describe, bind, execute, sync",
		msgs: fm(parse("s1", "select foo"), describeS("s1"), bind("s1"), execute(), syncM),
		want: w(errFoo, rfqI),
	}, {
		name: "syntax error, describe, sync",
		msgs: fm(parse("s1", "selec 1"), describeS("s1"), syncM),
		want: w(perr("42601", `syntax error at or near "selec"`), rfqI),
	}, {
		name: "parse bad, close it, sync",
		msgs: fm(parse("s1", "select foo"), closeS("s1"), syncM),
		want: w(errFoo, rfqI),
	}, {
		name: "parse bad, then a use of another name, then sync",
		msgs: fm(parse("s1", "select foo"), bind("nosuch"), execute(), syncM),
		want: w(errFoo, rfqI),
	}, {
		name: "the name s1 is free: prepared with valid text and used",
		msgs: fm(parse("s1", "select 1 as one"), describeS("s1"), bind("s1"), execute(), syncM),
		want: w(pc, pdesc(), rdesc("one:int4"), bc, row("1"), tag("SELECT 1"), rfqI),
	}, {
		name: "s1 usable in the next batch",
		msgs: fm(bind("s1"), execute(), syncM),
		want: selectOne("1"),
	}, {
		name: "two statements, the second fails",
		msgs: fm(parse("a2", "select 2 as two"), parse("b2", "select foo"), describeS("a2"), describeS("b2"), syncM),
		want: w(pc, errFoo, rfqI),
	}, {
		name: "a2 exists, b2 does not",
		msgs: fm(bind("a2"), execute(), syncM, describeS("b2"), syncM),
		want: w(bc, row("2"), tag("SELECT 1"), rfqI, perr("26000", `prepared statement "b2" does not exist`), rfqI),
	}, {
		name: "two statements, the first fails: the second is skipped",
		msgs: fm(parse("a3", "select foo"), parse("b3", "select 3 as three"), bind("b3"), execute(), syncM),
		want: w(errFoo, rfqI),
	}, {
		name: "neither a3 nor b3 exists",
		msgs: fm(describeS("a3"), syncM, describeS("b3"), syncM),
		want: w(perr("26000", `prepared statement "a3" does not exist`), rfqI,
			perr("26000", `prepared statement "b3" does not exist`), rfqI),
	}, {
		name: "two good statements, used in reverse order",
		msgs: fm(parse("a4", "select 'a4' as a"), parse("b4", "select 'b4' as b"), bind("b4"), execute(), bind("a4"), execute(), syncM),
		want: w(pc, pc, bc, row("b4"), tag("SELECT 1"), bc, row("a4"), tag("SELECT 1"), rfqI),
	}, {
		name: "a known text under a new name (the server connection may have it)",
		msgs: fm(parse("a5", "select 'a4' as a"), describeS("a5"), bind("a5"), execute(), syncM),
		want: w(pc, pdesc(), rdesc("a:text"), bc, row("a4"), tag("SELECT 1"), rfqI),
	}, {
		name: "parse bad, describe, flush, sync",
		msgs: fm(parse("s6", "select foo"), describeS("s6"), flushM, syncM),
		want: w(errFoo, rfqI),
	}, {
		name: "parse good, describe, flush",
		msgs: fm(parse("s7", "select 7 as seven"), describeS("s7"), flushM),
		tail: 3,
		want: w(pc, pdesc(), rdesc("seven:int4")),
	}, {
		name: "sync",
		msgs: fm(syncM),
		want: w(rfqI),
	}, {
		name: "unnamed: parse bad, describe, sync",
		msgs: fm(parse("", "select foo"), describeS(""), syncM),
		want: w(errFoo, rfqI),
	}, {
		name: "unnamed: parse bad, bind, execute, sync",
		msgs: fm(parse("", "select foo"), bind(""), execute(), syncM),
		want: w(errFoo, rfqI),
	}, {
		name: "unnamed: parse good, bind, execute, sync",
		msgs: fm(parse("", "select 8 as eight"), bind(""), execute(), syncM),
		want: w(pc, bc, row("8"), tag("SELECT 1"), rfqI),
	}, {
		name: "named bad, then unnamed in the same batch: skipped",
		msgs: fm(parse("s9", "select foo"), parse("", "select 9 as nine"), bind(""), execute(), syncM),
		want: w(errFoo, rfqI),
	}, {
		// The documented difference: a lone Parse is answered without a server
		// connection; its error comes at the first use, and the name is free
		// again after it.
		name:      "lone parse bad, sync",
		msgs:      fm(parse("s10", "select foo"), syncM),
		want:      w(errFoo, rfqI),
		proxyWant: w(pc, rfqI),
	}, {
		name:      "first use of the lone bad parse",
		msgs:      fm(describeS("s10"), syncM),
		want:      w(perr("26000", `prepared statement "s10" does not exist`), rfqI),
		proxyWant: w(errFoo, rfqI),
	}, {
		name: "s10 gone after its first use",
		msgs: fm(describeS("s10"), syncM, parse("s10", "select 10 as ten"), bind("s10"), execute(), syncM),
		want: w(perr("26000", `prepared statement "s10" does not exist`), rfqI, pc, bc, row("10"), tag("SELECT 1"), rfqI),
	}, {
		name:      "lone parse bad, flush",
		msgs:      fm(parse("s13", "select foo"), flushM),
		tail:      1,
		want:      w(errFoo),
		proxyWant: w(pc),
	}, {
		name:      "describe after the flush, sync",
		msgs:      fm(describeS("s13"), syncM),
		want:      w(rfqI),
		proxyWant: w(errFoo, rfqI),
	}, {
		name: "s13 gone",
		msgs: fm(describeS("s13"), syncM),
		want: w(perr("26000", `prepared statement "s13" does not exist`), rfqI),
	}, {
		name: "lone good parse, sync, then used",
		msgs: fm(parse("s11", "select 11 as eleven"), syncM, bind("s11"), execute(), syncM),
		want: w(pc, rfqI, bc, row("11"), tag("SELECT 1"), rfqI),
	}, {
		name: "in a transaction: parse bad, describe, sync",
		msgs: fm(query("begin"), parse("s12", "select foo"), describeS("s12"), syncM, query("rollback")),
		want: w(tag("BEGIN"), rfqT, errFoo, rfqE, tag("ROLLBACK"), rfqI),
	}, {
		name: "s12 was not registered",
		msgs: fm(describeS("s12"), syncM),
		want: w(perr("26000", `prepared statement "s12" does not exist`), rfqI),
	}, {
		name: "a name parsed twice, the first fails",
		msgs: fm(parse("d1", "select foo"), parse("d1", "select 1 as one"), describeS("d1"), syncM),
		want: w(errFoo, rfqI),
	}, {
		name: "a name parsed twice, the first fails, then sync",
		msgs: fm(parse("d1", "select foo"), parse("d1", "select 1 as one"), syncM),
		want: w(errFoo, rfqI),
	}, {
		name: "a name parsed twice, the first works",
		msgs: fm(parse("d1", "select 1 as one"), parse("d1", "select 2 as two"), syncM),
		want: w(pc, perr("42P05", `prepared statement "d1" already exists`), rfqI),
	}, {
		name: "d1 is the first text",
		msgs: fm(bind("d1"), execute(), syncM),
		want: selectOne("1"),
	}, {
		name: "create table",
		msgs: fm(query("create table tf (a int4)")),
		want: w(tag("CREATE TABLE"), rfqI),
	}, {
		name: "prepare x1 on the table",
		msgs: fm(parse("x1", "select a from tf"), describeS("x1"), bind("x1"), execute(), syncM),
		want: w(pc, pdesc(), rdesc("a:int4@t1.1"), bc, tag("SELECT 0"), rfqI),
	}, {
		name: "drop table",
		msgs: fm(query("drop table tf")),
		want: w(tag("DROP TABLE"), rfqI),
	}, {
		// The server connection may have the statement of x1: the text no
		// longer parses there either.
		name: "the same text as x2 with the table gone",
		msgs: fm(parse("x2", "select a from tf"), describeS("x2"), syncM),
		want: w(perr("42P01", `relation "tf" does not exist`), rfqI),
	}, {
		name: "x2 was not registered, x1 closes",
		msgs: fm(describeS("x2"), syncM, closeS("x1"), syncM),
		want: w(perr("26000", `prepared statement "x2" does not exist`), rfqI, ccl, rfqI),
	}}
	return steps
}

// runFidelitySteps runs steps on sides[0] (PostgreSQL) and sides[1] (the
// proxy), one connection each, and compares the streams.
func runFidelitySteps(t *testing.T, sides []side, steps []fidelityStep) {
	conns := make([]*rawConn, len(sides))
	for i, s := range sides {
		rc, err := dialRaw(s)
		if err != nil {
			t.Fatalf("%s: connect: %v", s.name, err)
		}
		defer rc.close()
		conns[i] = rc
	}
	for i, st := range steps {
		label := fmt.Sprintf("step %d %q", i+1, st.name)
		var got [2][]string
		for j, rc := range conns {
			got[j] = rc.runStep(pstep{name: st.name, msgs: st.msgs, tail: st.tail}, map[uint32]string{})
			if !sides[j].direct {
				// Let the proxy's server connection go back to the pool: the next
				// step starts without one.
				time.Sleep(5 * time.Millisecond)
			}
		}
		if d := firstDiff(st.want, got[0]); d >= 0 {
			t.Errorf("%s: PostgreSQL differs from the expectation at message %d\n%s",
				label, d+1, sideBySide("expected", st.want, "direct", got[0]))
		}
		want, wname := got[0], "direct"
		if st.proxyWant != nil {
			want, wname = st.proxyWant, "documented"
		}
		if d := firstDiff(want, got[1]); d >= 0 {
			t.Errorf("%s: the proxy differs from %s at message %d\n%s",
				label, wname, d+1, sideBySide(wname, want, "proxy", got[1]))
		}
		for j, rc := range conns {
			if rc.broken != nil {
				t.Fatalf("%s: %s stream broken: %v", label, sides[j].name, rc.broken)
			}
		}
	}
}

// TestFidelityParseErrorPgx prepares a statement with an unknown column through
// pgx, straight to PostgreSQL and through the proxy: the error must be the same,
// PrepareError.ParseComplete false (pgx would otherwise deallocate a statement
// that never existed), and the name must stay free. Then the same statement
// through every QueryExecMode.
func TestFidelityParseErrorPgx(t *testing.T) {
	directDB := newDatabase(t)
	db := newDatabase(t)
	tp := startProxy(t, db, proxyOpts{PoolSize: 2})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	connect := func(t *testing.T, sideName string, mode pgx.QueryExecMode) *pgx.Conn {
		t.Helper()
		if sideName == "proxy" {
			return tp.connect(t, mode)
		}
		cfg, err := pgx.ParseConfig(cluster.URL(directDB))
		if err != nil {
			t.Fatal(err)
		}
		cfg.RuntimeParams["application_name"] = directAppName
		cfg.DefaultQueryExecMode = mode
		c, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatalf("connect directly: %v", err)
		}
		t.Cleanup(func() { c.Close(context.Background()) })
		return c
	}
	// prepareErr describes a Prepare error: its text, SQLSTATE and whether pgx
	// saw a ParseComplete.
	prepareErr := func(err error) string {
		if err == nil {
			return "no error"
		}
		var pe *pgconn.PrepareError
		afterParse := errors.As(err, &pe) && pe.ParseComplete
		return fmt.Sprintf("%s (code %s, ParseComplete %v)", err, pgCode(err), afterParse)
	}

	t.Run("Prepare", func(t *testing.T) {
		results := map[string][]string{}
		for _, sideName := range []string{"direct", "proxy"} {
			c := connect(t, sideName, pgx.QueryExecModeCacheStatement)
			pc := c.PgConn()
			var got []string
			for _, sql := range []string{"select foo", "selec 1"} {
				_, err := pc.Prepare(ctx, "s1", sql, nil)
				got = append(got, "pgconn "+sql+": "+prepareErr(err))
				var pe *pgconn.PrepareError
				if !errors.As(err, &pe) || pe.ParseComplete {
					t.Errorf("%s: pgconn Prepare(%q): %s; want a PrepareError without ParseComplete", sideName, sql, prepareErr(err))
				}
				_, err = c.Prepare(ctx, "s1", sql)
				got = append(got, "pgx "+sql+": "+prepareErr(err))
			}
			// The name was never taken: prepared with valid text, and used.
			if _, err := c.Prepare(ctx, "s1", "select 1 as one"); err != nil {
				t.Fatalf("%s: prepare s1 with valid text after the failures: %v", sideName, err)
			}
			var one int
			if err := c.QueryRow(ctx, "s1").Scan(&one); err != nil || one != 1 {
				t.Fatalf("%s: execute s1: %d, %v", sideName, one, err)
			}
			// A failure after a successful Prepare in the same connection.
			_, err := c.Prepare(ctx, "s2", "select foo")
			got = append(got, "pgx s2: "+prepareErr(err))
			if _, err := c.Prepare(ctx, "s2", "select 2 as two"); err != nil {
				t.Fatalf("%s: prepare s2 with valid text after the failure: %v", sideName, err)
			}
			results[sideName] = got
		}
		if d := firstDiff(results["direct"], results["proxy"]); d >= 0 {
			t.Errorf("pgx errors differ at %d\n%s", d+1, sideBySide("direct", results["direct"], "proxy", results["proxy"]))
		}
	})

	modes := []struct {
		name string
		mode pgx.QueryExecMode
	}{
		{"cache_statement", pgx.QueryExecModeCacheStatement},
		{"cache_describe", pgx.QueryExecModeCacheDescribe},
		{"describe_exec", pgx.QueryExecModeDescribeExec},
		{"exec", pgx.QueryExecModeExec},
		{"simple_protocol", pgx.QueryExecModeSimpleProtocol},
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			results := map[string][]string{}
			for _, sideName := range []string{"direct", "proxy"} {
				c := connect(t, sideName, m.mode)
				var got []string
				for i := range 2 {
					for _, sql := range []string{"select foo", "select foo, $1::int4", "selec 1"} {
						var args []any
						if sql == "select foo, $1::int4" {
							args = []any{1}
						}
						_, err := c.Exec(ctx, sql, args...)
						got = append(got, fmt.Sprintf("round %d exec %q: %s", i+1, sql, prepareErr(err)))
						var v int
						err = c.QueryRow(ctx, sql, args...).Scan(&v)
						got = append(got, fmt.Sprintf("round %d query %q: %s", i+1, sql, prepareErr(err)))
					}
					var v int
					if err := c.QueryRow(ctx, "select 5 as five").Scan(&v); err != nil || v != 5 {
						t.Fatalf("%s round %d: select 5: %d, %v", sideName, i+1, v, err)
					}
				}
				results[sideName] = got
			}
			if d := firstDiff(results["direct"], results["proxy"]); d >= 0 {
				t.Errorf("pgx errors differ at %d\n%s", d+1, sideBySide("direct", results["direct"], "proxy", results["proxy"]))
			}
		})
	}
}
