package proxy_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
)

// TestProtocolOrder sends the same raw frontend message sequences once straight
// to PostgreSQL and once through the proxy (transaction mode, pool size 2, with
// busy clients around so that the test client's transactions move between
// backends) and requires identical backend message streams: the same messages,
// in the same order, with the same statement names, command tags, data rows,
// error codes and messages and ReadyForQuery statuses. The "harness" half runs
// the same comparison between two direct connections, so that the harness's own
// assumptions are checked, and asserts every step's direct stream against the
// expectation written in the scenario.
//
// Set PGSIDECAR_DUMP_PROTOCOL=1 to log every step's streams.
func TestProtocolOrder(t *testing.T) {
	needCluster(t)
	pgAddr := net.JoinHostPort(cluster.Host, strconv.Itoa(cluster.Port))
	t.Run("harness", func(t *testing.T) {
		a := side{name: "direct", addr: pgAddr, db: newDatabase(t), direct: true}
		b := side{name: "direct2", addr: pgAddr, db: newDatabase(t), direct: true}
		// Twice: the scenarios must leave nothing behind that changes a rerun.
		for r := range 2 {
			t.Run(fmt.Sprintf("round%d", r+1), func(t *testing.T) { runProtocolScenarios(t, a, b, pairHooks{}) })
		}
	})
	t.Run("proxy", func(t *testing.T) {
		a := side{name: "direct", addr: pgAddr, db: newDatabase(t), direct: true}
		db := newDatabase(t)
		tp := startProxy(t, db, proxyOpts{PoolSize: 2})
		load := startLoad(t, tp)
		defer load.finish(t)
		t.Run("backends_rotate", func(t *testing.T) {
			load.setPhase("backends_rotate")
			checkRotation(t, tp)
		})
		chk := direct(t, a.db)
		where := func(text string) string {
			// Best effort: the proxy backend whose last statement was text.
			// A busy client may have used it since; "?" when not found.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			var pid int
			if err := chk.QueryRow(ctx, `SELECT pid FROM pg_stat_activity WHERE `+proxyBackends+` AND query = $2
				ORDER BY query_start DESC LIMIT 1`, tp.db, text).Scan(&pid); err != nil {
				return "?"
			}
			return strconv.Itoa(pid)
		}
		// Several rounds, each on fresh connections: where the client's
		// transactions land is up to the busy clients, so more rounds give
		// more backend switches at every step.
		for r := range protocolRounds {
			t.Run(fmt.Sprintf("round%d", r+1), func(t *testing.T) {
				runProtocolScenarios(t, a, side{name: "proxy", addr: tp.addr, db: db}, pairHooks{phase: load.setPhase, where: where})
			})
		}
	})
}

// protocolRounds is how many times the proxy half runs every scenario.
const protocolRounds = 3

// ---------------------------------------------------------------------------
// Scenarios

// pstep is one write of frontend messages and the backend messages read for it.
type pstep struct {
	name string
	msgs []pgproto3.FrontendMessage
	// tail is how many messages follow the last ReadyForQuery (a write that
	// ends with Flush and no Sync). The reader waits for one ReadyForQuery per
	// Sync and Query in msgs and then for tail more messages.
	tail int
	// want is the stream PostgreSQL itself sends, asserted on direct
	// connections (nil: not asserted, only compared).
	want []string
	// loose, when set, says why the proxy may legitimately differ here: a
	// difference is logged, not failed.
	loose string
	// abortedOK: where PostgreSQL reports an error, the proxy may report 25P02
	// instead. Inside a failed transaction the proxy prepares a client's named
	// statement on a backend that lacks it before the Bind or Describe, and the
	// failed transaction refuses that Parse before PostgreSQL would have checked
	// the Bind itself (a wrong parameter count, say).
	abortedOK bool
}

type pscenario struct {
	name  string
	steps []pstep
}

// Message constructors.

func fm(m ...pgproto3.FrontendMessage) []pgproto3.FrontendMessage { return m }

func parse(name, q string, oids ...uint32) *pgproto3.Parse {
	return &pgproto3.Parse{Name: name, Query: q, ParameterOIDs: oids}
}

func bind(stmt string, params ...string) *pgproto3.Bind {
	return bindPortal("", stmt, params...)
}

func bindPortal(portal, stmt string, params ...string) *pgproto3.Bind {
	b := &pgproto3.Bind{DestinationPortal: portal, PreparedStatement: stmt}
	for _, p := range params {
		b.Parameters = append(b.Parameters, []byte(p))
	}
	return b
}

func execute() *pgproto3.Execute { return &pgproto3.Execute{} }

func executeMax(portal string, n uint32) *pgproto3.Execute {
	return &pgproto3.Execute{Portal: portal, MaxRows: n}
}

func describeS(name string) *pgproto3.Describe {
	return &pgproto3.Describe{ObjectType: 'S', Name: name}
}

func describeP(name string) *pgproto3.Describe {
	return &pgproto3.Describe{ObjectType: 'P', Name: name}
}

func closeS(name string) *pgproto3.Close { return &pgproto3.Close{ObjectType: 'S', Name: name} }

func query(s string) *pgproto3.Query { return &pgproto3.Query{String: s} }

var (
	syncM  = &pgproto3.Sync{}
	flushM = &pgproto3.Flush{}
)

// Expected-message shorthands, in the format of describeMsg.

const (
	pc   = "ParseComplete"
	bc   = "BindComplete"
	ccl  = "CloseComplete"
	nod  = "NoData"
	susp = "PortalSuspended"
	rfqI = "ReadyForQuery I"
	rfqT = "ReadyForQuery T"
	rfqE = "ReadyForQuery E"
)

func w(s ...string) []string { return s }

func row(vals ...string) string {
	q := make([]string, len(vals))
	for i, v := range vals {
		q[i] = strconv.Quote(v)
	}
	return "DataRow [" + strings.Join(q, " ") + "]"
}

func tag(s string) string { return "CommandComplete " + s }

func perr(code, msg string) string { return "ErrorResponse ERROR " + code + " " + msg }

func pdesc(types ...string) string { return "ParameterDescription [" + strings.Join(types, " ") + "]" }

func rdesc(fields ...string) string { return "RowDescription [" + strings.Join(fields, " ") + "]" }

// selectOne is the stream of Bind, Execute, Sync returning the one value v.
func selectOne(v string) []string { return w(bc, row(v), tag("SELECT 1"), rfqI) }

func protocolScenarios() []pscenario {
	var reuse []pstep
	for i := 2; i <= 9; i++ {
		v := strconv.Itoa(i)
		reuse = append(reuse, pstep{name: "bind S1 " + v, msgs: fm(bind("S1", v), execute(), syncM), want: selectOne(strconv.Itoa(i + 1))})
	}
	s1 := []pstep{{
		name: "parse S1",
		msgs: fm(parse("S1", "select $1::int4 + 1 as n"), bind("S1", "1"), execute(), syncM),
		want: w(pc, bc, row("2"), tag("SELECT 1"), rfqI),
	}}
	s1 = append(s1, reuse...)
	s1 = append(s1,
		pstep{name: "begin", msgs: fm(query("begin")), want: w(tag("BEGIN"), rfqT)},
		pstep{name: "bind S1 in transaction", msgs: fm(bind("S1", "10"), execute(), syncM), want: w(bc, row("11"), tag("SELECT 1"), rfqT)},
		pstep{name: "bind S1 again in transaction", msgs: fm(bind("S1", "11"), execute(), syncM), want: w(bc, row("12"), tag("SELECT 1"), rfqT)},
		pstep{name: "commit", msgs: fm(query("commit")), want: w(tag("COMMIT"), rfqI)},
		pstep{name: "bind S1 after commit", msgs: fm(bind("S1", "20"), execute(), syncM), want: selectOne("21")},
	)

	return []pscenario{
		{name: "1_prepare_then_bind_only", steps: s1},
		{name: "2_pipeline_mixed", steps: []pstep{{
			name: "one write",
			msgs: fm(
				parse("A", "select $1::int4 * 2 as doubled"), describeS("A"), bind("A", "21"), execute(),
				parse("B", "select generate_series(1, $1::int4) as g"), bind("B", "3"), describeP(""), execute(),
				closeS("A"), syncM,
				bind("B", "2"), execute(), syncM),
			want: w(pc, pdesc("int4"), rdesc("doubled:int4"), bc, row("42"), tag("SELECT 1"),
				pc, bc, rdesc("g:int4"), row("1"), row("2"), row("3"), tag("SELECT 3"),
				ccl, rfqI,
				bc, row("1"), row("2"), tag("SELECT 2"), rfqI),
		}, {
			name: "known B, closed A is unknown",
			msgs: fm(bind("B", "1"), execute(), bind("A", "1"), execute(), syncM),
			want: w(bc, row("1"), tag("SELECT 1"), perr("26000", `prepared statement "A" does not exist`), rfqI),
		}, {
			name: "known B then A parsed again with another text",
			msgs: fm(bind("B", "1"), execute(),
				parse("A", "select $1::text || '!' as shout"), describeS("A"), bind("A", "hi"), describeP(""), execute(), syncM),
			want: w(bc, row("1"), tag("SELECT 1"),
				pc, pdesc("text"), rdesc("shout:text"), bc, rdesc("shout:text"), row("hi!"), tag("SELECT 1"), rfqI),
		}, {
			name: "describe B before bind, close B, then B is unknown",
			msgs: fm(describeS("B"), bind("B", "2"), describeP(""), execute(), closeS("B"), bind("A", "x"), execute(), syncM,
				bind("B", "1"), execute(), syncM),
			want: w(pdesc("int4"), rdesc("g:int4"), bc, rdesc("g:int4"), row("1"), row("2"), tag("SELECT 2"),
				ccl, bc, row("x!"), tag("SELECT 1"), rfqI,
				perr("26000", `prepared statement "B" does not exist`), rfqI),
		}}},
		{name: "3_flush_instead_of_sync", steps: []pstep{{
			name: "parse and describe C, flush",
			msgs: fm(parse("C", "select $1::int4 as c, 'x'::text as t"), describeS("C"), flushM),
			tail: 3,
			want: w(pc, pdesc("int4"), rdesc("c:int4", "t:text")),
		}, {
			name: "bind C, sync",
			msgs: fm(bind("C", "7"), execute(), syncM),
			want: w(bc, row("7", "x"), tag("SELECT 1"), rfqI),
		}, {
			name: "known C: describe, flush",
			msgs: fm(describeS("C"), flushM),
			tail: 2,
			want: w(pdesc("int4"), rdesc("c:int4", "t:text")),
		}, {
			name: "bind C, describe portal, execute, flush",
			msgs: fm(bind("C", "8"), describeP(""), execute(), flushM),
			tail: 4,
			want: w(bc, rdesc("c:int4", "t:text"), row("8", "x"), tag("SELECT 1")),
		}, {
			name: "sync",
			msgs: fm(syncM),
			want: w(rfqI),
		}, {
			name: "portal suspended across flushes",
			msgs: fm(parse("C2", "select generate_series(1, 5) as s"), bind("C2"), executeMax("", 2), flushM),
			tail: 5,
			want: w(pc, bc, row("1"), row("2"), susp),
		}, {
			name: "execute more, flush",
			msgs: fm(executeMax("", 2), flushM),
			tail: 3,
			want: w(row("3"), row("4"), susp),
		}, {
			name: "execute rest, sync",
			msgs: fm(execute(), syncM),
			want: w(row("5"), tag("SELECT 1"), rfqI),
		}, {
			name: "error before a flush",
			// The error comes at Execute after a first row: a parameter in a
			// plain expression would be constant-folded by the custom plan
			// made at Bind, and the error would come at Bind.
			msgs: fm(parse("C3", "select 6 / (2 - g) as q from generate_series(1, $1::int4) g"), bind("C3", "3"), execute(), flushM),
			tail: 4,
			want: w(pc, bc, row("6"), perr("22012", "division by zero")),
		}, {
			name: "messages skipped until sync",
			msgs: fm(bind("C", "9"), execute(), flushM, syncM),
			want: w(rfqI),
		}, {
			name: "C and C3 still there",
			msgs: fm(bind("C", "9"), execute(), bind("C3", "1"), execute(), syncM),
			want: w(bc, row("9", "x"), tag("SELECT 1"), bc, row("6"), tag("SELECT 1"), rfqI),
		}}},
		{name: "4_errors_halfway", steps: []pstep{{
			name: "bind D fails",
			msgs: fm(parse("D", "select $1::int4 + 0 as d", 23), bind("D", "abc"), execute(), syncM),
			want: w(pc, perr("22P02", `invalid input syntax for type integer: "abc"`), rfqI),
		}, {
			name: "bind known D, then parse E fails, then parse G is skipped",
			msgs: fm(bind("D", "1"), execute(), parse("E", "select 1 frm x"), bind("E"), execute(),
				parse("G", "select 'g' as g"), bind("G"), execute(), syncM),
			want: w(bc, row("1"), tag("SELECT 1"), perr("42601", `syntax error at or near "x"`), rfqI),
		}, {
			name: "execute error, then more before sync (close D skipped)",
			msgs: fm(bind("D", "5"), execute(),
				parse("Z", "select 10 / (3 - g) as z from generate_series(1, $1::int4) g"), bind("Z", "3"), execute(),
				bind("D", "2"), execute(), describeS("D"), closeS("D"), syncM),
			want: w(bc, row("5"), tag("SELECT 1"), pc, bc, row("5"), row("10"), perr("22012", "division by zero"), rfqI),
		}, {
			name: "names still usable, E and G never existed",
			msgs: fm(bind("D", "3"), execute(), bind("Z", "2"), execute(), syncM,
				bind("E"), execute(), syncM,
				bind("G"), execute(), syncM),
			want: w(bc, row("3"), tag("SELECT 1"), bc, row("5"), row("10"), tag("SELECT 2"), rfqI,
				perr("26000", `prepared statement "E" does not exist`), rfqI,
				perr("26000", `prepared statement "G" does not exist`), rfqI),
		}, {
			// The custom plan made at Bind folds 10 / 0: the error is the
			// Bind's, no BindComplete.
			name: "division by zero at Bind",
			msgs: fm(parse("Q4", "select 10 / $1::int4 as q"), bind("Q4", "0"), execute(), syncM, bind("Q4", "5"), execute(), syncM),
			want: w(pc, perr("22012", "division by zero"), rfqI, bc, row("2"), tag("SELECT 1"), rfqI),
		}, {
			name: "begin",
			msgs: fm(query("begin")),
			want: w(tag("BEGIN"), rfqT),
		}, {
			name: "error in transaction",
			msgs: fm(bind("D", "4"), execute(), bind("Z", "4"), execute(), bind("D", "6"), execute(), syncM),
			want: w(bc, row("4"), tag("SELECT 1"), bc, row("5"), row("10"), perr("22012", "division by zero"), rfqE),
		}, {
			name: "aborted transaction",
			msgs: fm(bind("D", "7"), execute(), syncM),
			want: w(perr("25P02", "current transaction is aborted, commands ignored until end of transaction block"), rfqE),
		}, {
			name: "parse in aborted transaction",
			msgs: fm(parse("Y", "select 1 as y"), syncM),
			want: w(perr("25P02", "current transaction is aborted, commands ignored until end of transaction block"), rfqE),
		}, {
			name: "rollback",
			msgs: fm(query("rollback")),
			want: w(tag("ROLLBACK"), rfqI),
		}, {
			name: "after rollback: D usable, Y never existed",
			msgs: fm(bind("D", "8"), execute(), syncM, bind("Y"), execute(), syncM),
			want: w(bc, row("8"), tag("SELECT 1"), rfqI, perr("26000", `prepared statement "Y" does not exist`), rfqI),
		}}},
		{name: "5_name_reuse", steps: []pstep{{
			name: "parse F, close F, parse F again",
			msgs: fm(parse("F", "select 1 as v"), closeS("F"), parse("F", "select 2 as v"), bind("F"), execute(), syncM),
			want: w(pc, ccl, pc, bc, row("2"), tag("SELECT 1"), rfqI),
		}, {
			name: "bind F",
			msgs: fm(bind("F"), execute(), syncM),
			want: w(bc, row("2"), tag("SELECT 1"), rfqI),
		}, {
			name: "parse existing F with another text",
			msgs: fm(parse("F", "select 3 as v"), bind("F"), execute(), syncM),
			want: w(perr("42P05", `prepared statement "F" already exists`), rfqI),
		}, {
			name: "parse existing F with the same text",
			msgs: fm(bind("F"), execute(), parse("F", "select 2 as v"), bind("F"), execute(), syncM),
			want: w(bc, row("2"), tag("SELECT 1"), perr("42P05", `prepared statement "F" already exists`), rfqI),
		}, {
			name: "F unchanged",
			msgs: fm(bind("F"), execute(), syncM),
			want: w(bc, row("2"), tag("SELECT 1"), rfqI),
		}, {
			name: "close a name never prepared, close twice",
			msgs: fm(closeS("nosuch"), closeS("F"), closeS("F"), syncM),
			want: w(ccl, ccl, ccl, rfqI),
		}, {
			name: "F gone, parse F as select 4",
			msgs: fm(bind("F"), syncM, parse("F", "select 4 as v"), bind("F"), execute(), syncM),
			want: w(perr("26000", `prepared statement "F" does not exist`), rfqI, pc, bc, row("4"), tag("SELECT 1"), rfqI),
		}, {
			name: "bind F (select 4)",
			msgs: fm(bind("F"), execute(), syncM),
			want: w(bc, row("4"), tag("SELECT 1"), rfqI),
		}}},
		{name: "6_table_changed", steps: []pstep{{
			name: "create table",
			msgs: fm(query("create table t6 (a int4); insert into t6 values (1)")),
			want: w(tag("CREATE TABLE"), tag("INSERT 0 1"), rfqI),
		}, {
			name: "prepare T6 and K6",
			msgs: fm(parse("T6", "select * from t6"), describeS("T6"), bind("T6"), execute(),
				parse("K6", "select 6 as k"), syncM),
			want: w(pc, pdesc(), rdesc("a:int4@t1.1"), bc, row("1"), tag("SELECT 1"), pc, rfqI),
		}, {
			name: "bind T6",
			msgs: fm(bind("T6"), execute(), syncM),
			want: w(bc, row("1"), tag("SELECT 1"), rfqI),
		}, {
			name: "bind T6 again",
			msgs: fm(bind("T6"), execute(), syncM),
			want: w(bc, row("1"), tag("SELECT 1"), rfqI),
		}, {
			name: "alter table",
			msgs: fm(query("alter table t6 add column b text default 'x'")),
			want: w(tag("ALTER TABLE"), rfqI),
		}, {
			name:  "bind T6 after alter",
			msgs:  fm(bind("T6"), execute(), syncM),
			want:  w(perr("0A000", "cached plan must not change result type"), rfqI),
			loose: "a backend that lacks T6 parses it afresh (two columns) where PostgreSQL refuses",
		}, {
			name:  "bind T6 after alter, again",
			msgs:  fm(bind("T6"), execute(), syncM),
			want:  w(perr("0A000", "cached plan must not change result type"), rfqI),
			loose: "the proxy may re-prepare after the error where PostgreSQL keeps refusing",
		}, {
			name: "client retries: close, parse, bind",
			msgs: fm(closeS("T6"), parse("T6", "select * from t6"), describeS("T6"), bind("T6"), execute(), syncM),
			want: w(ccl, pc, pdesc(), rdesc("a:int4@t1.1", "b:text@t1.2"), bc, row("1", "x"), tag("SELECT 1"), rfqI),
		}, {
			name: "bind T6 after retry",
			msgs: fm(bind("T6"), execute(), syncM),
			want: w(bc, row("1", "x"), tag("SELECT 1"), rfqI),
		}, {
			name: "bind T6 after retry, again",
			msgs: fm(bind("T6"), execute(), syncM),
			want: w(bc, row("1", "x"), tag("SELECT 1"), rfqI),
		}, {
			name: "bind T6 after retry, third time",
			msgs: fm(bind("T6"), execute(), syncM),
			want: w(bc, row("1", "x"), tag("SELECT 1"), rfqI),
		}, {
			name: "drop and recreate with the same shape",
			msgs: fm(query("drop table t6; create table t6 (a int4, b text); insert into t6 values (2, 'y')")),
			want: w(tag("DROP TABLE"), tag("CREATE TABLE"), tag("INSERT 0 1"), rfqI),
		}, {
			name: "bind T6 after recreate",
			msgs: fm(bind("T6"), execute(), syncM),
			want: w(bc, row("2", "y"), tag("SELECT 1"), rfqI),
		}, {
			name: "bind T6 after recreate, again",
			msgs: fm(bind("T6"), execute(), syncM),
			want: w(bc, row("2", "y"), tag("SELECT 1"), rfqI),
		}, {
			name: "drop table",
			msgs: fm(query("drop table t6")),
			want: w(tag("DROP TABLE"), rfqI),
		}, {
			name: "T6 fails halfway through a pipeline (an injected Parse would fail)",
			msgs: fm(bind("K6"), execute(), bind("T6"), execute(), bind("K6"), execute(), syncM),
			want: w(bc, row("6"), tag("SELECT 1"), perr("42P01", `relation "t6" does not exist`), rfqI),
		}, {
			name: "T6 fails again, then K6 in the next batch",
			msgs: fm(bind("T6"), execute(), syncM, bind("K6"), execute(), syncM),
			want: w(perr("42P01", `relation "t6" does not exist`), rfqI, bc, row("6"), tag("SELECT 1"), rfqI),
		}, {
			// PostgreSQL sends the ParameterDescription, then revalidates
			// the statement for the RowDescription and fails: an injected
			// Parse failing instead would lose the ParameterDescription.
			name: "describe T6 with the table gone",
			msgs: fm(describeS("T6"), syncM, describeS("T6"), bind("K6"), execute(), syncM),
			want: w(pdesc(), perr("42P01", `relation "t6" does not exist`), rfqI,
				pdesc(), perr("42P01", `relation "t6" does not exist`), rfqI),
			// Which backend the step lands on decides: one that still has T6
			// answers like PostgreSQL, one that must prepare it first can only
			// report the Parse's error (documented in the README).
			loose: "a backend that lacks T6 reports the failing Parse without the ParameterDescription",
		}, {
			name: "recreate table",
			msgs: fm(query("create table t6 (a int4, b text); insert into t6 values (3, 'z')")),
			want: w(tag("CREATE TABLE"), tag("INSERT 0 1"), rfqI),
		}, {
			name: "bind T6 works again",
			msgs: fm(bind("T6"), execute(), syncM),
			want: w(bc, row("3", "z"), tag("SELECT 1"), rfqI),
		}, {
			name: "bind T6 works again, twice",
			msgs: fm(bind("T6"), execute(), syncM),
			want: w(bc, row("3", "z"), tag("SELECT 1"), rfqI),
		}, {
			name: "drop table for the next round",
			msgs: fm(query("drop table t6")),
			want: w(tag("DROP TABLE"), rfqI),
		}}},
		{name: "7_unknown_names", steps: []pstep{{
			name: "describe unknown statement",
			msgs: fm(describeS("nosuch"), syncM),
			want: w(perr("26000", `prepared statement "nosuch" does not exist`), rfqI),
		}, {
			name: "bind unknown statement",
			msgs: fm(bind("nosuch"), execute(), syncM),
			want: w(perr("26000", `prepared statement "nosuch" does not exist`), rfqI),
		}, {
			name: "describe and execute unknown portals",
			msgs: fm(describeP("nope"), syncM, executeMax("nope", 0), syncM, describeP(""), syncM),
			want: w(perr("34000", `portal "nope" does not exist`), rfqI,
				perr("34000", `portal "nope" does not exist`), rfqI,
				perr("34000", `portal "" does not exist`), rfqI),
		}, {
			name: "unknown describe halfway through a pipeline",
			msgs: fm(parse("K7", "select 7 as k"), bind("K7"), execute(), describeS("nosuch"), bind("K7"), execute(), syncM),
			want: w(pc, bc, row("7"), tag("SELECT 1"), perr("26000", `prepared statement "nosuch" does not exist`), rfqI),
		}, {
			name: "K7 usable, closing an unknown portal is no error",
			msgs: fm(bind("K7"), execute(), &pgproto3.Close{ObjectType: 'P', Name: "nope"}, syncM),
			want: w(bc, row("7"), tag("SELECT 1"), ccl, rfqI),
		}}},
		{name: "8_unnamed_statement", steps: []pstep{{
			name: "parse unnamed, sync",
			msgs: fm(parse("", "select $1::int4 * 3 as u"), syncM),
			want: w(pc, rfqI),
		}, {
			name: "bind unnamed in the next batch",
			msgs: fm(bind("", "4"), execute(), syncM),
			want: w(bc, row("12"), tag("SELECT 1"), rfqI),
		}, {
			name: "bind unnamed again in a third batch",
			msgs: fm(bind("", "5"), execute(), syncM),
			want: w(bc, row("15"), tag("SELECT 1"), rfqI),
		}, {
			name: "describe unnamed",
			msgs: fm(describeS(""), syncM),
			want: w(pdesc("int4"), rdesc("u:int4"), rfqI),
		}, {
			name: "a simple query drops the unnamed statement",
			msgs: fm(query("select 1 as one"), bind("", "6"), execute(), syncM),
			want: w(rdesc("one:int4"), row("1"), tag("SELECT 1"), rfqI,
				perr("26000", "unnamed prepared statement does not exist"), rfqI),
		}, {
			name: "unnamed survives a named parse",
			msgs: fm(parse("", "select $1::int4 * 3 as u"), bind("", "2"), execute(),
				parse("N8", "select 8 as n"), bind("N8"), execute(), bind("", "3"), execute(), syncM),
			want: w(pc, bc, row("6"), tag("SELECT 1"), pc, bc, row("8"), tag("SELECT 1"), bc, row("9"), tag("SELECT 1"), rfqI),
		}, {
			name: "replace unnamed, sync, bind",
			msgs: fm(parse("", "select 'second' as u2"), syncM, bind(""), execute(), syncM),
			want: w(pc, rfqI, bc, row("second"), tag("SELECT 1"), rfqI),
		}}},
		{name: "9_reuse_from_earlier_scenarios", steps: []pstep{{
			// No want: which statements exist depends on which scenarios ran
			// before on this connection; both sides must still agree.
			name: "S1, C, D, F, K6, K7, N8",
			msgs: fm(bind("S1", "100"), execute(), syncM,
				bind("C", "1"), execute(), syncM,
				bind("D", "1"), execute(), syncM,
				bind("F"), execute(), syncM,
				bind("K6"), execute(), syncM,
				bind("K7"), execute(), syncM,
				bind("N8"), execute(), syncM),
		}, {
			name: "all of them in one batch",
			msgs: fm(bind("S1", "100"), execute(), bind("C", "1"), execute(), bind("D", "1"), execute(), bind("F"), execute(),
				bind("K6"), execute(), bind("K7"), execute(), bind("N8"), execute(), syncM),
		}}},
		{name: "10_deallocate", steps: []pstep{{
			name: "parse h1 and h2",
			msgs: fm(parse("h1", "select 'h1' as h"), parse("h2", "select 'h2' as h"), syncM),
			want: w(pc, pc, rfqI),
		}, {
			name: "bind h1 and h2",
			msgs: fm(bind("h1"), execute(), bind("h2"), execute(), syncM),
			want: w(bc, row("h1"), tag("SELECT 1"), bc, row("h2"), tag("SELECT 1"), rfqI),
		}, {
			name: "deallocate h1",
			msgs: fm(query("deallocate h1")),
			want: w(tag("DEALLOCATE"), rfqI),
		}, {
			name: "h1 gone, h2 still there",
			msgs: fm(bind("h1"), execute(), syncM, bind("h2"), execute(), syncM),
			want: w(perr("26000", `prepared statement "h1" does not exist`), rfqI, bc, row("h2"), tag("SELECT 1"), rfqI),
		}, {
			name: "deallocate all",
			msgs: fm(query("deallocate all")),
			want: w(tag("DEALLOCATE ALL"), rfqI),
		}, {
			name: "h2 gone and so is D",
			msgs: fm(bind("h2"), execute(), syncM, bind("D", "1"), execute(), syncM),
			want: w(perr("26000", `prepared statement "h2" does not exist`), rfqI,
				perr("26000", `prepared statement "D" does not exist`), rfqI),
		}, {
			name: "the name h1 is free again",
			msgs: fm(parse("h1", "select 'h1 again' as h"), bind("h1"), execute(), syncM),
			want: w(pc, bc, row("h1 again"), tag("SELECT 1"), rfqI),
		}, {
			name: "deallocate in a rolled-back transaction",
			msgs: fm(query("begin"), query("deallocate h1"), query("rollback"), bind("h1"), execute(), syncM),
			want: w(tag("BEGIN"), rfqT, tag("DEALLOCATE"), rfqT, tag("ROLLBACK"), rfqI,
				perr("26000", `prepared statement "h1" does not exist`), rfqI),
		}, {
			name: "deallocate an unknown name",
			msgs: fm(query("deallocate h1")),
			want: w(perr("26000", `prepared statement "h1" does not exist`), rfqI),
		}, {
			name: "SQL PREPARE is visible to Bind",
			msgs: fm(query("prepare sq as select 42 as answer"), bind("sq"), execute(), syncM),
			want: w(tag("PREPARE"), rfqI, bc, row("42"), tag("SELECT 1"), rfqI),
		}, {
			name: "protocol Parse is visible to SQL EXECUTE",
			msgs: fm(parse("h3", "select 'h3' as h"), syncM, query("execute h3")),
			want: w(pc, rfqI, rdesc("h:text"), row("h3"), tag("SELECT 1"), rfqI),
			// The proxy names the statement differently on the backend and does not
			// rewrite SQL EXECUTE: the client gets 26000 (documented in the README).
			loose: "SQL EXECUTE of a protocol-level statement is not rewritten",
		}, {
			name: "deallocate all again",
			msgs: fm(query("deallocate all"), bind("sq"), execute(), syncM, bind("h3"), execute(), syncM),
			want: w(tag("DEALLOCATE ALL"), rfqI,
				perr("26000", `prepared statement "sq" does not exist`), rfqI,
				perr("26000", `prepared statement "h3" does not exist`), rfqI),
		}}},
	}
}

// ---------------------------------------------------------------------------
// Raw protocol connections

// side is where a scenario runs: PostgreSQL itself or the proxy.
type side struct {
	name   string
	addr   string
	db     string
	direct bool
}

// rawConn is a client connection speaking the protocol with pgproto3.
type rawConn struct {
	side
	c  net.Conn
	fe *pgproto3.Frontend
	// startup is the normalised login stream.
	startup []string
	// broken is set once the stream can no longer be trusted (read error,
	// timeout, EOF); the next scenario reconnects.
	broken error
}

// stepTimeout bounds one step; a stream that stalls is broken from then on.
const stepTimeout = 10 * time.Second

func dialRaw(s side) (*rawConn, error) {
	c, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	rc := &rawConn{side: s, c: c, fe: pgproto3.NewFrontend(c, c)}
	_ = c.SetDeadline(time.Now().Add(stepTimeout))
	rc.fe.Send(&pgproto3.StartupMessage{
		ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters:      map[string]string{"user": "postgres", "database": s.db},
	})
	if err := rc.fe.Flush(); err != nil {
		c.Close()
		return nil, err
	}
	var params []string
	for {
		m, err := rc.fe.Receive()
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("startup: %w", err)
		}
		switch m := m.(type) {
		case *pgproto3.ParameterStatus:
			// Values legitimately differ (application_name, and the proxy
			// reports those of its first backend); names must not.
			params = append(params, "ParameterStatus "+m.Name)
			continue
		case *pgproto3.BackendKeyData:
			rc.startup = append(rc.startup, "BackendKeyData")
			continue
		case *pgproto3.ErrorResponse:
			c.Close()
			return nil, fmt.Errorf("startup: %s", describeMsg(m, nil))
		}
		if len(params) > 0 {
			slices.Sort(params)
			rc.startup = append(rc.startup, params...)
			params = nil
		}
		rc.startup = append(rc.startup, describeMsg(m, nil))
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	return rc, nil
}

func (rc *rawConn) close() {
	if rc == nil || rc.c == nil {
		return
	}
	_ = rc.c.SetDeadline(time.Now().Add(time.Second))
	rc.fe.Send(&pgproto3.Terminate{})
	_ = rc.fe.Flush()
	_ = rc.c.Close()
}

// runStep writes st.msgs in one write and reads the responses: one
// ReadyForQuery per Sync and Query, then st.tail more messages. On a read
// error the error is the last entry and rc is marked broken.
func (rc *rawConn) runStep(st pstep, tables map[uint32]string) []string {
	_ = rc.c.SetDeadline(time.Now().Add(stepTimeout))
	for _, m := range st.msgs {
		rc.fe.Send(m)
	}
	if err := rc.fe.Flush(); err != nil {
		rc.broken = err
		return []string{"!! write: " + err.Error()}
	}
	wantReady := 0
	for _, m := range st.msgs {
		switch m.(type) {
		case *pgproto3.Sync, *pgproto3.Query:
			wantReady++
		}
	}
	var out []string
	ready, tail := 0, 0
	for ready < wantReady || tail < st.tail {
		m, err := rc.fe.Receive()
		if err != nil {
			rc.broken = err
			return append(out, "!! read: "+err.Error())
		}
		out = append(out, describeMsg(m, tables))
		if ready == wantReady {
			tail++
			if _, ok := m.(*pgproto3.ErrorResponse); ok {
				// The server skips everything up to the next Sync: nothing
				// more comes for this write.
				break
			}
		} else if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			ready++
		}
	}
	return out
}

// describeMsg renders a backend message for comparison. Table OIDs differ
// between databases and are numbered in order of appearance (t1, t2, ...)
// through tables; error and notice fields that legitimately differ (file,
// line, routine, position) are left out.
func describeMsg(m pgproto3.BackendMessage, tables map[uint32]string) string {
	switch m := m.(type) {
	case *pgproto3.ParseComplete:
		return pc
	case *pgproto3.BindComplete:
		return bc
	case *pgproto3.CloseComplete:
		return ccl
	case *pgproto3.NoData:
		return nod
	case *pgproto3.PortalSuspended:
		return susp
	case *pgproto3.EmptyQueryResponse:
		return "EmptyQueryResponse"
	case *pgproto3.AuthenticationOk:
		return "AuthenticationOk"
	case *pgproto3.ReadyForQuery:
		return "ReadyForQuery " + string(m.TxStatus)
	case *pgproto3.CommandComplete:
		return tag(string(m.CommandTag))
	case *pgproto3.ParameterDescription:
		ts := make([]string, len(m.ParameterOIDs))
		for i, o := range m.ParameterOIDs {
			ts[i] = typeName(o)
		}
		return pdesc(ts...)
	case *pgproto3.RowDescription:
		fs := make([]string, len(m.Fields))
		for i, f := range m.Fields {
			s := string(f.Name) + ":" + typeName(f.DataTypeOID)
			if f.TableOID != 0 {
				tn, ok := tables[f.TableOID]
				if !ok {
					tn = fmt.Sprintf("t%d", len(tables)+1)
					if tables != nil {
						tables[f.TableOID] = tn
					}
				}
				s += fmt.Sprintf("@%s.%d", tn, f.TableAttributeNumber)
			}
			if f.TypeModifier != -1 {
				s += fmt.Sprintf("(%d)", f.TypeModifier)
			}
			if f.Format != 0 {
				s += "/bin"
			}
			fs[i] = s
		}
		return rdesc(fs...)
	case *pgproto3.DataRow:
		vs := make([]string, len(m.Values))
		for i, v := range m.Values {
			if v == nil {
				vs[i] = "NULL"
			} else {
				vs[i] = strconv.Quote(string(v))
			}
		}
		return "DataRow [" + strings.Join(vs, " ") + "]"
	case *pgproto3.ErrorResponse:
		return "ErrorResponse " + m.Severity + " " + m.Code + " " + m.Message
	case *pgproto3.NoticeResponse:
		return "NoticeResponse " + m.Severity + " " + m.Code + " " + m.Message
	case *pgproto3.ParameterStatus:
		return "ParameterStatus " + m.Name + "=" + m.Value
	case *pgproto3.NotificationResponse:
		return "NotificationResponse " + m.Channel + " " + m.Payload
	}
	return fmt.Sprintf("%T", m)
}

func typeName(oid uint32) string {
	switch oid {
	case 16:
		return "bool"
	case 20:
		return "int8"
	case 21:
		return "int2"
	case 23:
		return "int4"
	case 25:
		return "text"
	case 705:
		return "unknown"
	case 1043:
		return "varchar"
	}
	return fmt.Sprintf("oid%d", oid)
}

// ---------------------------------------------------------------------------
// Comparison

// runProtocolScenarios runs every scenario on a (PostgreSQL) and on b, one
// connection each kept across scenarios so that statements outlive
// transactions and scenarios, and compares the streams step by step.
func runProtocolScenarios(t *testing.T, a, b side, hooks pairHooks) {
	dump := os.Getenv("PGSIDECAR_DUMP_PROTOCOL") != ""
	conns := map[string]*rawConn{}
	defer func() {
		for _, rc := range conns {
			rc.close()
		}
	}()
	get := func(t *testing.T, s side) *rawConn {
		t.Helper()
		if rc := conns[s.name]; rc != nil && rc.broken == nil {
			return rc
		} else if rc != nil {
			t.Logf("%s: reconnecting after %v (statements of earlier scenarios are gone on this side)", s.name, rc.broken)
			rc.close()
			delete(conns, s.name)
		}
		rc, err := dialRaw(s)
		if err != nil {
			t.Fatalf("%s: connect: %v", s.name, err)
		}
		conns[s.name] = rc
		return rc
	}

	t.Run("startup", func(t *testing.T) {
		ra, rb := get(t, a), get(t, b)
		if d := firstDiff(ra.startup, rb.startup); d >= 0 {
			t.Errorf("login streams differ at message %d\n%s", d+1, sideBySide(a.name, ra.startup, b.name, rb.startup))
		}
	})
	for _, sc := range append(protocolScenarios(), randomScenarios()...) {
		t.Run(sc.name, func(t *testing.T) {
			if hooks.phase != nil {
				hooks.phase(t.Name())
			}
			texts := map[string]string{} // statement name -> query text, for hooks.where
			var backends []string
			ra, rb := get(t, a), get(t, b)
			ta, tb := map[uint32]string{}, map[uint32]string{}
			failed := false
			for i, st := range sc.steps {
				ga := ra.runStep(st, ta)
				if !b.direct {
					// Let the busy clients take the backend just released,
					// so that the next transaction lands on another one.
					time.Sleep(10 * time.Millisecond)
				}
				gb := rb.runStep(st, tb)
				if hooks.where != nil {
					if text := lastText(st.msgs, texts); text != "" {
						backends = append(backends, hooks.where(text))
					}
				}
				label := fmt.Sprintf("step %d %q", i+1, st.name)
				if dump {
					t.Logf("%s\n%s", label, sideBySide(a.name, ga, b.name, gb))
				}
				for _, s := range []struct {
					side
					got []string
				}{{a, ga}, {b, gb}} {
					if st.want != nil && s.direct {
						if d := firstDiff(st.want, s.got); d >= 0 {
							t.Errorf("%s: PostgreSQL (%s) differs from the expectation at message %d\n%s",
								label, s.name, d+1, sideBySide("expected", st.want, s.name, s.got))
						}
					}
				}
				if st.abortedOK {
					gb = slices.Clone(gb)
					for i := range min(len(ga), len(gb)) {
						if strings.HasPrefix(gb[i], "ErrorResponse ERROR 25P02 ") && strings.HasPrefix(ga[i], "ErrorResponse ERROR ") {
							gb[i] = ga[i]
						}
					}
				}
				if d := firstDiff(ga, gb); d >= 0 {
					switch {
					case st.loose != "":
						t.Logf("%s: %s differs from %s at message %d (tolerated: %s)\n%s",
							label, b.name, a.name, d+1, st.loose, sideBySide(a.name, ga, b.name, gb))
					case !failed:
						failed = true
						t.Errorf("%s: %s differs from %s at message %d\n%s",
							label, b.name, a.name, d+1, sideBySide(a.name, ga, b.name, gb))
					default:
						t.Logf("%s: also differs at message %d\n%s", label, d+1, sideBySide(a.name, ga, b.name, gb))
					}
				}
				if ra.broken != nil || rb.broken != nil {
					t.Errorf("%s: stream broken (%s: %v, %s: %v); rest of the scenario skipped",
						label, a.name, ra.broken, b.name, rb.broken)
					return
				}
			}
			if len(backends) > 0 {
				trail, switches := backendTrail(backends)
				t.Logf("%s: steps ran on backends %s (%d switches; best effort, from pg_stat_activity)", b.name, trail, switches)
			}
		})
	}
}

// pairHooks lets the proxy half watch the run.
type pairHooks struct {
	// phase is told the name of each scenario as it starts.
	phase func(name string)
	// where names the backend that last ran the query text.
	where func(text string) string
}

// lastText returns the text of the last statement msgs run (Parse, Bind or
// Query), keeping texts (statement name -> text) up to date.
func lastText(msgs []pgproto3.FrontendMessage, texts map[string]string) string {
	var last string
	for _, m := range msgs {
		switch m := m.(type) {
		case *pgproto3.Parse:
			if _, ok := texts[m.Name]; !ok || m.Name == "" {
				texts[m.Name] = m.Query
			}
			last = m.Query
		case *pgproto3.Close:
			if m.ObjectType == 'S' {
				delete(texts, m.Name)
			}
		case *pgproto3.Bind:
			if q, ok := texts[m.PreparedStatement]; ok {
				last = q
			}
		case *pgproto3.Query:
			last = m.String
		}
	}
	return last
}

// backendTrail renders where the steps ran as letters (A, B, ...; ? unknown)
// and counts the switches between known backends.
func backendTrail(pids []string) (string, int) {
	letters := map[string]string{"?": "?"}
	var sb strings.Builder
	switches, prev := 0, ""
	for _, p := range pids {
		l, ok := letters[p]
		if !ok {
			l = string(rune('A' + len(letters) - 1))
			letters[p] = l
		}
		sb.WriteString(l)
		if p != "?" {
			if prev != "" && p != prev {
				switches++
			}
			prev = p
		}
	}
	return sb.String(), switches
}

// firstDiff returns the index of the first difference between a and b, or -1.
func firstDiff(a, b []string) int {
	for i := range max(len(a), len(b)) {
		if i >= len(a) || i >= len(b) || a[i] != b[i] {
			return i
		}
	}
	return -1
}

// sideBySide renders two streams for a failure message, marking differences.
func sideBySide(an string, a []string, bn string, b []string) string {
	width := len(an)
	for _, s := range a {
		width = max(width, len(s))
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "     %-*s | %s\n", width, an, bn)
	for i := range max(len(a), len(b)) {
		var x, y string
		if i < len(a) {
			x = a[i]
		}
		if i < len(b) {
			y = b[i]
		}
		mark := " "
		if i >= len(a) || i >= len(b) || x != y {
			mark = "*"
		}
		fmt.Fprintf(&sb, "%s%3d %-*s | %s\n", mark, i+1, width, x, y)
	}
	return strings.TrimRight(sb.String(), "\n")
}

// ---------------------------------------------------------------------------
// Load: busy clients sharing the pool with the test client

// loadGen is the busy clients: a pgtest.Crowd whose failures name the test
// client's scenario running at the time (its phase).
type loadGen struct {
	*pgtest.Crowd
	mu    sync.Mutex
	phase string // the test client's current scenario
}

func (l *loadGen) setPhase(p string) {
	l.mu.Lock()
	l.phase = p
	l.mu.Unlock()
}

// failure is err of the busy client named client, during the current phase.
func (l *loadGen) failure(client string, err error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return fmt.Errorf("during %s: %s: %w", l.phase, client, err)
}

// startLoad runs three clients through the proxy until finish: pgx over the
// simple protocol holding each transaction open for a few milliseconds, pgx
// with its statement cache (named statements of its own), and a raw client
// whose statements have the test client's names (S1, A, B, C) with other
// texts, checking that it gets its own results. A client whose transaction
// fails reconnects.
func startLoad(t *testing.T, tp *testProxy) *loadGen {
	// The clients' connections, each used by its client's goroutine only; they
	// close after the crowd has halted (cleanups run last first).
	var pgxConns [2]*pgx.Conn
	var rc *rawConn
	t.Cleanup(func() {
		for _, c := range pgxConns {
			if c != nil {
				c.Close(context.Background())
			}
		}
		rc.close()
	})
	l := &loadGen{Crowd: pgtest.NewCrowd(t, "busy clients"), phase: "setup"}
	pgxClient := func(c **pgx.Conn, name string, mode pgx.QueryExecMode, tx func(ctx context.Context, c *pgx.Conn, i int) error) {
		l.Go(func(ctx context.Context, i int) error {
			if *c == nil {
				cfg, err := pgx.ParseConfig(tp.URL())
				if err == nil {
					cfg.DefaultQueryExecMode = mode
					*c, err = pgx.ConnectConfig(ctx, cfg)
				}
				if err != nil {
					time.Sleep(50 * time.Millisecond)
					return l.failure(name, err)
				}
			}
			if err := tx(ctx, *c, i); err != nil {
				(*c).Close(context.Background())
				*c = nil
				time.Sleep(20 * time.Millisecond)
				return l.failure(name, err)
			}
			time.Sleep(time.Millisecond)
			return nil
		})
	}
	pgxClient(&pgxConns[0], "pgx simple, holding", pgx.QueryExecModeSimpleProtocol, func(ctx context.Context, c *pgx.Conn, i int) error {
		return pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
			var n int
			if err := tx.QueryRow(ctx, "select 1").Scan(&n); err != nil {
				return err
			}
			time.Sleep(3 * time.Millisecond) // idle in transaction, holding the backend
			if err := tx.QueryRow(ctx, "select 2").Scan(&n); err != nil {
				return err
			}
			if n != 2 {
				return fmt.Errorf("select 2 returned %d", n)
			}
			return nil
		})
	})
	pgxClient(&pgxConns[1], "pgx cached statements", pgx.QueryExecModeCacheStatement, func(ctx context.Context, c *pgx.Conn, i int) error {
		return pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
			var n int
			if err := tx.QueryRow(ctx, "select $1::int4 + 1", i).Scan(&n); err != nil {
				return err
			}
			if n != i+1 {
				return fmt.Errorf("select %d + 1 returned %d", i, n)
			}
			var s string
			return tx.QueryRow(ctx, "select $1::text", "x").Scan(&s)
		})
	})
	l.rawClient(tp, &rc)
	t.Logf("load: 3 busy clients through the proxy")
	return l
}

// rawClient starts a client that prepares the test client's statement names
// with other texts once and then uses them in transactions, some held open
// briefly; *rc is its connection.
func (l *loadGen) rawClient(tp *testProxy, rc **rawConn) {
	const name = "raw same names"
	names := []string{"S1", "A", "B", "C"}
	var bindAll, prep []pgproto3.FrontendMessage
	var want []string
	for _, n := range names {
		prep = append(prep, parse(n, "select 'load "+n+"'::text as other"))
		bindAll = append(bindAll, bind(n), execute())
		want = append(want, bc, row("load "+n), tag("SELECT 1"))
	}
	prep = append(prep, syncM)
	l.Go(func(_ context.Context, i int) error {
		if *rc == nil {
			c, err := dialRaw(side{name: name, addr: tp.addr, db: tp.db})
			if err != nil {
				time.Sleep(50 * time.Millisecond)
				return l.failure(name, err)
			}
			if got := c.runStep(pstep{msgs: prep}, nil); firstDiff(got, w(pc, pc, pc, pc, rfqI)) >= 0 {
				c.close()
				return l.failure(name, fmt.Errorf("prepare: got %q", got))
			}
			*rc = c
		}
		var steps []pstep
		if i%4 == 0 {
			steps = []pstep{
				{msgs: fm(query("begin")), want: w(tag("BEGIN"), rfqT)},
				{msgs: append(slices.Clone(bindAll), syncM), want: append(slices.Clone(want), rfqT)},
				{msgs: fm(query("commit")), want: w(tag("COMMIT"), rfqI)},
			}
		} else {
			steps = []pstep{{msgs: append(slices.Clone(bindAll), syncM), want: append(slices.Clone(want), rfqI)}}
		}
		for j, st := range steps {
			if j == 2 {
				time.Sleep(3 * time.Millisecond) // hold the transaction open
			}
			if got := (*rc).runStep(st, nil); firstDiff(got, st.want) >= 0 {
				(*rc).close()
				*rc = nil
				time.Sleep(20 * time.Millisecond)
				return l.failure(name, fmt.Errorf("got %q, want %q", got, st.want))
			}
		}
		time.Sleep(time.Millisecond)
		return nil
	})
}

// finish stops the load and fails the test if a busy client saw an error.
func (l *loadGen) finish(t *testing.T) {
	t.Helper()
	l.setPhase("the end")
	l.Finish(t)
}

// checkRotation checks the premise of the proxy half: with the busy clients
// running, consecutive transactions of one client land on different backends.
func checkRotation(t *testing.T, tp *testProxy) {
	rc, err := dialRaw(side{name: "rotation", addr: tp.addr, db: tp.db})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.close()
	pids := map[string]int{}
	for range 20 {
		got := rc.runStep(pstep{msgs: fm(query("select pg_backend_pid()"))}, nil)
		if rc.broken != nil || len(got) != 4 {
			t.Fatalf("select pg_backend_pid(): %q", got)
		}
		pids[got[1]]++
		time.Sleep(2 * time.Millisecond)
	}
	t.Logf("20 transactions of one client ran on %d backends: %v", len(pids), pids)
	if len(pids) < 2 {
		t.Errorf("all transactions ran on one backend; the busy clients do not move the test client around")
	}
}
