package proxy_test

import (
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

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
