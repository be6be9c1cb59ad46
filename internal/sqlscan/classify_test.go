package sqlscan

import (
	"fmt"
	"strings"
	"testing"
)

// classifyAll returns every record of q, and whether q ended inside a
// literal, comment, parenthesis or BEGIN ATOMIC body.
func classifyAll(q []byte) ([]Statement, bool) {
	var s Scanner
	s.Reset(q)
	var out []Statement
	for s.Next() {
		out = append(out, s.Statement())
	}
	return out, s.open
}

// rec is an expected record, without its offsets.
type rec struct {
	kind        Kind
	name, value string
	local, def  bool
}

func (r rec) String() string {
	s := r.kind.String()
	if r.name != "" || r.value != "" {
		s += fmt.Sprintf(" %q=%q", r.name, r.value)
	}
	if r.local {
		s += " local"
	}
	if r.def {
		s += " default"
	}
	return s
}

func rk(kind Kind) rec                      { return rec{kind: kind} }
func rn(kind Kind, name string) rec         { return rec{kind: kind, name: name} }
func rnv(kind Kind, name, value string) rec { return rec{kind: kind, name: name, value: value} }
func (r rec) loc() rec                      { r.local = true; return r }
func (r rec) dflt() rec                     { r.def = true; return r }
func recs(r ...rec) []rec                   { return r }
func rset(name, value string) rec           { return rnv(KindSet, name, value) }
func rsetLocal(name, value string) rec      { return rnv(KindSetLocal, name, value).loc() }
func rsetConfig(name, value string, l bool) rec {
	return rec{kind: KindSetConfig, name: name, value: value, local: l}
}

var rother = recs(rk(KindOther))

var classifyCases = []struct {
	q    string
	want []rec
}{
	// Ordinary statements.
	{"SELECT abalance FROM pgbench_accounts WHERE aid = $1;", rother},
	{"select 1", rother},
	{"UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2", rother},
	{"INSERT INTO t (a, b) VALUES (1, 'set_config(''x'', ''y'', false)')", rother},
	{"DELETE FROM t WHERE id = 1", rother},
	{"CREATE TABLE t (id int primary key)", rother},
	{"CREATE UNLOGGED TABLE t (id int)", rother},
	{"SHOW search_path", rother},
	{"SAVEPOINT s1", rother},
	{"RELEASE SAVEPOINT s1", rother},
	{"ROLLBACK TO SAVEPOINT s1", rother},
	{"ROLLBACK TO s1", rother},
	{"rollback work to savepoint s1", rother},
	{"PREPARE TRANSACTION 'gid1'", rother},
	{"COMMIT PREPARED 'gid1'", rother},
	{"ROLLBACK PREPARED 'gid1'", rother},
	{"DECLARE c CURSOR FOR SELECT 1", rother},
	{"DECLARE c NO SCROLL CURSOR WITHOUT HOLD FOR SELECT 1", rother},
	{"SELECT pg_advisory_xact_lock(1)", rother},
	{"SELECT pg_try_advisory_xact_lock_shared(1)", rother},
	{"SELECT 'pg_advisory_lock(1)'", rother},
	{"SELECT $$pg_advisory_lock(1)$$", rother},
	{"SELECT $f$ set_config('a','b',false) $f$", rother},
	{"SELECT 1 -- pg_advisory_lock(1)", rother},
	{"SELECT /* pg_advisory_lock(1) /* nested */ set_config( */ 1", rother},
	{"SELECT pg_advisory_lock FROM t", rother},
	{"SELECT \"PG_ADVISORY_LOCK\"(1)", rother},
	{"SELECT my_set_config('a', 'b', false)", rother},
	{"DO $$BEGIN PERFORM pg_advisory_lock(1); END$$", rother},
	{"\"set\" x = 1", rother},
	{"NOTIFY chan, 'hello'", rother},
	{"VACUUM ANALYZE t", rother},
	{"EXPLAIN SELECT pg_advisory_xact_lock(1)", rother},
	{"EXPLAIN CREATE TEMP TABLE t AS SELECT 1", rother},
	{"EXPLAIN (ANALYZE false) CREATE TEMP TABLE t AS SELECT 1", rother},
	{"EXPLAIN ANALYZE DECLARE c CURSOR WITH HOLD FOR SELECT 1", rother},
	{"CREATE TEMP TABLE t (id int) ON COMMIT DROP", rother},
	{"INSERT INTO temp VALUES (1)", rother},
	{"SELECT a INTO temp FROM b", rother},
	{"SELECT a INTO new_table FROM b", rother},
	{"LOCK TABLE t IN ACCESS EXCLUSIVE MODE", rother},
	{"SET CATALOG 'x'", rother},
	{"LOAD ''", rother},
	{"LISTEN ;", rother},
	{"E'pg_advisory_lock(1)'", rother},

	// Transaction control.
	{"BEGIN", recs(rk(KindBegin))},
	{"begin work", recs(rk(KindBegin))},
	{"BEGIN TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY", recs(rk(KindBegin))},
	{"START TRANSACTION READ WRITE", recs(rk(KindBegin))},
	{"COMMIT", recs(rk(KindCommit))},
	{"commit and chain", recs(rk(KindCommit))},
	{"END TRANSACTION", recs(rk(KindCommit))},
	{"ROLLBACK", recs(rk(KindRollback))},
	{"ABORT WORK", recs(rk(KindRollback))},
	{"Rollback And No Chain", recs(rk(KindRollback))},

	// SET.
	{"SET search_path TO \"$user\", public", recs(rset("search_path", `"$user", public`))},
	{"SET SESSION statement_timeout = '5s'", recs(rset("statement_timeout", "'5s'"))},
	{"set Application_Name='app' ", recs(rset("application_name", "'app'"))},
	{"SET \"TimeZone\" TO 'UTC'", recs(rset("timezone", "'UTC'"))},
	{"SET myapp.user_id = 42", recs(rset("myapp.user_id", "42"))},
	{"SET myapp . \"User\" TO 'x' /* trailing */", recs(rset("myapp.user", "'x'"))},
	{"SET work_mem TO DEFAULT", recs(rset("work_mem", "").dflt())},
	{"SET work_mem = default", recs(rset("work_mem", "").dflt())},
	{"SET work_mem = 'default'", recs(rset("work_mem", "'default'"))},
	{"SET extra_float_digits FROM CURRENT", recs(rset("extra_float_digits", ""))},
	{"SET TIME ZONE 'Europe/Rome'", recs(rset("timezone", "'Europe/Rome'"))},
	{"SET TIME ZONE INTERVAL '+02:00' HOUR TO MINUTE", recs(rset("timezone", "INTERVAL '+02:00' HOUR TO MINUTE"))},
	{"SET TIME ZONE LOCAL", recs(rset("timezone", "").dflt())},
	{"SET TIME ZONE DEFAULT", recs(rset("timezone", "").dflt())},
	{"SET ROLE admin", recs(rset("role", "admin"))},
	{"SET ROLE NONE", recs(rset("role", "NONE"))},
	{"SET role = 'admin'", recs(rset("role", "'admin'"))},
	{"SET SESSION AUTHORIZATION 'alice'", recs(rset("session_authorization", "'alice'"))},
	{"SET SESSION AUTHORIZATION DEFAULT", recs(rset("session_authorization", "").dflt())},
	{"SET SCHEMA 'app'", recs(rset("search_path", "'app'"))},
	{"SET NAMES 'UTF8'", recs(rset("client_encoding", "'UTF8'"))},
	{"SET NAMES", recs(rset("client_encoding", "").dflt())},
	{"SET XML OPTION DOCUMENT", recs(rset("xmloption", "DOCUMENT"))},
	{"SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ",
		recs(rset("session_characteristics", "ISOLATION LEVEL REPEATABLE READ"))},
	{"SET\n\tsearch_path\n=\n\tpublic\n", recs(rset("search_path", "public"))},
	{"SET x", recs(rset("", ""))},
	{"SET x TO", recs(rset("", ""))},
	{"SET 'x' = 1", recs(rset("", ""))},

	// SET LOCAL and transaction-scoped SETs.
	{"SET LOCAL statement_timeout = 0", recs(rsetLocal("statement_timeout", "0"))},
	{"set local time zone 'UTC'", recs(rsetLocal("timezone", "'UTC'"))},
	{"SET LOCAL search_path TO DEFAULT", recs(rsetLocal("search_path", "").dflt())},
	{"SET LOCAL ROLE reader", recs(rsetLocal("role", "reader"))},
	{"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", recs(rsetLocal("transaction", "ISOLATION LEVEL SERIALIZABLE"))},
	{"SET TRANSACTION SNAPSHOT '00000003-0000001B-1'", recs(rsetLocal("transaction", "SNAPSHOT '00000003-0000001B-1'"))},
	{"SET CONSTRAINTS ALL DEFERRED", recs(rsetLocal("constraints", "ALL DEFERRED"))},

	// RESET.
	{"RESET search_path", recs(rn(KindReset, "search_path"))},
	{"RESET Statement_Timeout;", recs(rn(KindReset, "statement_timeout"))},
	{"RESET ROLE", recs(rn(KindReset, "role"))},
	{"RESET SESSION AUTHORIZATION", recs(rn(KindReset, "session_authorization"))},
	{"RESET TIME ZONE", recs(rn(KindReset, "timezone"))},
	{"RESET TRANSACTION ISOLATION LEVEL", recs(rn(KindReset, "transaction_isolation"))},
	{"RESET myapp.user_id", recs(rn(KindReset, "myapp.user_id"))},
	{"RESET ALL", recs(rk(KindResetAll))},
	{"reset all", recs(rk(KindResetAll))},

	// set_config.
	{"SELECT set_config('search_path', 'app, public', false)", recs(rsetConfig("search_path", "app, public", false))},
	{"select SET_CONFIG('Application_Name', 'it''s', true)", recs(rsetConfig("application_name", "it's", true))},
	{"SELECT pg_catalog.set_config ('a.b', E'x\\ny\\'z', 'off')", recs(rsetConfig("a.b", "x\ny'z", false))},
	{"SELECT set_config('a'::text, $$v$$::text, 'yes'::boolean)", recs(rsetConfig("a", "v", true))},
	{"SELECT set_config('a', U&'d\\0061t\\+000061', false)", recs(rsetConfig("a", "data", false))},
	{"SELECT set_config('a', U&'d!0061t!+000061' UESCAPE '!', false)", recs(rsetConfig("a", "data", false))},
	{"SELECT set_config($1, $2, false)", recs(rsetConfig("", "", false))},
	{"SELECT set_config('a', 'b', $1)", recs(rsetConfig("", "", false))},
	{"SELECT set_config('a', 'abc'::char(1), false)", recs(rsetConfig("", "", false))},
	{"SELECT set_config('a', 'x'\n'y', false)", recs(rsetConfig("a", "xy", false))},
	{"SELECT \"set_config\"('a', 'b', false)", recs(rsetConfig("a", "b", false))},
	{"UPDATE t SET v = set_config('a', v, false)", recs(rsetConfig("", "", false))},

	// Advisory locks.
	{"SELECT pg_advisory_lock(1)", recs(rnv(KindAdvisoryLock, "pg_advisory_lock", "1"))},
	{"select PG_TRY_ADVISORY_LOCK_SHARED ( $1 , $2 )", recs(rnv(KindAdvisoryLock, "pg_try_advisory_lock_shared", "$1 , $2"))},
	{"SELECT pg_catalog.pg_advisory_lock(hashtext('job'))", recs(rnv(KindAdvisoryLock, "pg_advisory_lock", "hashtext('job')"))},
	{"SELECT pg_try_advisory_lock(42) AS got", recs(rnv(KindAdvisoryLock, "pg_try_advisory_lock", "42"))},
	{"SELECT pg_advisory_lock_shared(1)", recs(rnv(KindAdvisoryLock, "pg_advisory_lock_shared", "1"))},
	{"SELECT pg_advisory_unlock(1)", recs(rnv(KindAdvisoryUnlock, "pg_advisory_unlock", "1"))},
	{"SELECT pg_advisory_unlock_shared(1)", recs(rnv(KindAdvisoryUnlock, "pg_advisory_unlock_shared", "1"))},
	{"SELECT pg_advisory_unlock_all()", recs(rn(KindAdvisoryUnlock, "pg_advisory_unlock_all"))},
	{"WITH x AS (SELECT 1) SELECT pg_advisory_lock(id) FROM x", recs(rnv(KindAdvisoryLock, "pg_advisory_lock", "id"))},
	{"SELECT * FROM pg_advisory_lock(7)", recs(rnv(KindAdvisoryLock, "pg_advisory_lock", "7"))},
	{"UPDATE jobs SET locked = pg_try_advisory_lock(id) WHERE id = 1", recs(rnv(KindAdvisoryLock, "pg_try_advisory_lock", "id"))},
	{"SELECT pg_advisory_lock /* comment */ (1)", recs(rnv(KindAdvisoryLock, "pg_advisory_lock", "1"))},
	{"SELECT U&\"pg_advisory_lock\"(1)", recs(rnv(KindAdvisoryLock, "pg_advisory_lock", "1"))},
	{"EXPLAIN ANALYZE SELECT pg_advisory_lock(1)", recs(rnv(KindAdvisoryLock, "pg_advisory_lock", "1"))},
	{"EXPLAIN ANALYZE (SELECT 1 INTO TEMP t)", recs(rk(KindTempTable))},
	{"EXPLAIN (SELECT 1 INTO TEMP t)", rother},
	{"(SELECT 1) UNION (SELECT pg_advisory_lock(2))", recs(rnv(KindAdvisoryLock, "pg_advisory_lock", "2"))},
	{"COPY (SELECT pg_advisory_lock(1)) TO STDOUT", recs(rnv(KindAdvisoryLock, "pg_advisory_lock", "1"))},
	{"CALL do_work(pg_try_advisory_lock(5))", recs(rnv(KindAdvisoryLock, "pg_try_advisory_lock", "5"))},
	{"INSERT INTO t SELECT set_config('a', 'b', true) RETURNING 1", recs(rsetConfig("a", "b", true))},

	// Several constructs in one statement.
	{"SELECT pg_advisory_lock(1), set_config('a', 'b', false)",
		recs(rnv(KindAdvisoryLock, "pg_advisory_lock", "1"), rsetConfig("a", "b", false))},
	{"SELECT set_config('a', pg_try_advisory_lock(2)::text, false)",
		recs(rsetConfig("", "", false), rnv(KindAdvisoryLock, "pg_try_advisory_lock", "2"))},
	{"SELECT pg_advisory_unlock_all(), pg_advisory_lock(3) INTO TEMP t",
		recs(rk(KindTempTable), rn(KindAdvisoryUnlock, "pg_advisory_unlock_all"), rnv(KindAdvisoryLock, "pg_advisory_lock", "3"))},
	{"CREATE TEMP TABLE t AS EXECUTE p(1)", recs(rk(KindTempTable), rn(KindExecute, "p"))},

	// Prepared statements.
	{"PREPARE q1 (int, text) AS SELECT $1, $2", recs(rnv(KindPrepare, "q1", "SELECT $1, $2"))},
	{"prepare Q2 as select 1;", recs(rnv(KindPrepare, "q2", "select 1"))},
	{"PREPARE \"Mixed\" AS SELECT 1", recs(rnv(KindPrepare, "Mixed", "SELECT 1"))},
	{"PREPARE transaction AS SELECT 1", recs(rnv(KindPrepare, "transaction", "SELECT 1"))},
	{"EXECUTE q1(1, 'a')", recs(rn(KindExecute, "q1"))},
	{"EXECUTE Q1", recs(rn(KindExecute, "q1"))},
	{"EXECUTE p(pg_advisory_lock(1))", recs(rn(KindExecute, "p"), rnv(KindAdvisoryLock, "pg_advisory_lock", "1"))},
	{"EXPLAIN EXECUTE q1(1)", recs(rn(KindExecute, "q1"))},
	{"EXPLAIN (ANALYZE, BUFFERS) EXECUTE q1(1)", recs(rn(KindExecute, "q1"))},
	{"CREATE TABLE t AS EXECUTE q1", recs(rn(KindExecute, "q1"))},
	{"DEALLOCATE q1", recs(rn(KindDeallocate, "q1"))},
	{"DEALLOCATE PREPARE q1", recs(rn(KindDeallocate, "q1"))},
	{"DEALLOCATE prepare", recs(rn(KindDeallocate, "prepare"))},
	{"DEALLOCATE ALL", recs(rk(KindDeallocateAll))},
	{"DEALLOCATE PREPARE ALL", recs(rk(KindDeallocateAll))},
	{"DEALLOCATE \"all\"", recs(rn(KindDeallocate, "all"))},

	// DISCARD.
	{"DISCARD ALL", recs(rk(KindDiscardAll))},
	{"discard plans", recs(rk(KindDiscardPlans))},
	{"DISCARD SEQUENCES", recs(rk(KindDiscardSequences))},
	{"DISCARD TEMP", recs(rk(KindDiscardTemp))},
	{"DISCARD TEMPORARY", recs(rk(KindDiscardTemp))},

	// LISTEN.
	{"LISTEN jobs", recs(rn(KindListen, "jobs"))},
	{"LISTEN \"Jobs\"", recs(rn(KindListen, "Jobs"))},
	{"listen JOBS", recs(rn(KindListen, "jobs"))},
	{"LISTEN \"a\"\"b\"", recs(rn(KindListen, `a"b`))},
	{"LISTEN U&\"d\\0061ta\"", recs(rn(KindListen, "data"))},
	{"LISTEN " + strings.Repeat("x", 70), recs(rn(KindListen, strings.Repeat("x", 63)))},
	{"UNLISTEN jobs", recs(rn(KindUnlisten, "jobs"))},
	{"UNLISTEN *", recs(rk(KindUnlistenAll))},

	// Cursors.
	{"DECLARE c CURSOR WITH HOLD FOR SELECT 1", recs(rn(KindDeclareHold, "c"))},
	{"DECLARE \"C\" BINARY INSENSITIVE NO SCROLL CURSOR WITH HOLD FOR SELECT 1", recs(rn(KindDeclareHold, "C"))},
	{"CLOSE c", recs(rn(KindCloseCursor, "c"))},
	{"CLOSE ALL", recs(rk(KindCloseAll))},

	// Temporary objects.
	{"CREATE TEMP TABLE t (id int)", recs(rk(KindTempTable))},
	{"CREATE TEMPORARY TABLE IF NOT EXISTS t (id int)", recs(rk(KindTempTable))},
	{"CREATE GLOBAL TEMPORARY TABLE t (id int)", recs(rk(KindTempTable))},
	{"create local temp table t as select 1", recs(rk(KindTempTable))},
	{"CREATE TEMP TABLE t (id int) ON COMMIT DELETE ROWS", recs(rk(KindTempTable))},
	{"CREATE TEMP SEQUENCE s", recs(rk(KindTempTable))},
	{"CREATE OR REPLACE TEMP VIEW v AS SELECT 1", recs(rk(KindTempTable))},
	{"CREATE TEMP RECURSIVE VIEW v (n) AS SELECT 1", recs(rk(KindTempTable))},
	{"CREATE TABLE pg_temp.t (id int)", recs(rk(KindTempTable))},
	{"CREATE TABLE PG_TEMP.t (id int)", recs(rk(KindTempTable))},
	{"CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'", recs(rk(KindTempTable))},
	{"SELECT * INTO TEMP t FROM x", recs(rk(KindTempTable))},
	{"SELECT * INTO TEMPORARY TABLE t FROM x", recs(rk(KindTempTable))},
	{"SELECT 1 AS a INTO LOCAL TEMP t", recs(rk(KindTempTable))},
	{"SELECT 1 INTO pg_temp.t", recs(rk(KindTempTable))},
	{"EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1", recs(rk(KindTempTable))},

	// LOAD.
	{"LOAD 'auto_explain'", recs(rn(KindLoad, "auto_explain"))},
	{"LOAD '$libdir/plugins/x'", recs(rn(KindLoad, "$libdir/plugins/x"))},

	// Quoting does not end statements.
	{"SELECT 'a;b'; SELECT \"c;d\"; SELECT $t$;$t$; SELECT E'\\';' -- ;\n", recs(rk(KindOther), rk(KindOther), rk(KindOther), rk(KindOther))},
	{"SELECT $1;SET x = 1", recs(rk(KindOther), rset("x", "1"))},

	// Several statements.
	{"BEGIN; SET LOCAL a = 1; SELECT 1; COMMIT", recs(rk(KindBegin), rsetLocal("a", "1"), rk(KindOther), rk(KindCommit))},
	{";; ;SELECT 1;;", rother},
	{"/* only a comment */", nil},
	{"", nil},
	{"  ;  -- nothing\n ; ", nil},
	{"LISTEN a; UNLISTEN *; LISTEN b", recs(rn(KindListen, "a"), rk(KindUnlistenAll), rn(KindListen, "b"))},
	{"CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 2 END; END; SET x = 1",
		recs(rk(KindOther), rset("x", "1"))},
	{"CREATE OR REPLACE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC INSERT INTO t VALUES (1); END; COMMIT",
		recs(rk(KindOther), rk(KindCommit))},
	{"CREATE FUNCTION begin() RETURNS int LANGUAGE sql RETURN 1; SET x = 1", recs(rk(KindOther), rset("x", "1"))},
	{"CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2)); END",
		recs(rk(KindOther), rk(KindCommit))},
	{"SELECT E'x'\n'\\''; SELECT pg_advisory_lock(1); --'", recs(rk(KindOther), rnv(KindAdvisoryLock, "pg_advisory_lock", "1"))},
	{"SELECT 'x' -- c\n '; SET a = 1; '", rother},
	{"SELECT 'x' /* c */ '; SET a = 1; '", rother},
}

func TestClassify(t *testing.T) {
	if len(classifyCases) < 80 {
		t.Fatalf("only %d cases", len(classifyCases))
	}
	for _, tc := range classifyCases {
		got, _ := classifyAll([]byte(tc.q))
		var gotRecs []rec
		for _, st := range got {
			gotRecs = append(gotRecs, rec{st.Kind, st.Name, st.Value, st.IsLocal, st.Default})
		}
		if fmt.Sprint(gotRecs) != fmt.Sprint(tc.want) {
			t.Errorf("%q:\n got %v\nwant %v", tc.q, gotRecs, tc.want)
		}
	}
}

// TestClassifyBounds checks the statement text each record points at.
func TestClassifyBounds(t *testing.T) {
	for _, tc := range []struct {
		q    string
		want []string
	}{
		{"SELECT 1", []string{"SELECT 1"}},
		{"  SELECT 1 ;  ", []string{"SELECT 1"}},
		{"/* a */ BEGIN -- b\n; /* c */ COMMIT /* d */", []string{"BEGIN", "COMMIT"}},
		{"SELECT pg_advisory_lock(1), pg_advisory_unlock(2); END", []string{
			"SELECT pg_advisory_lock(1), pg_advisory_unlock(2)",
			"SELECT pg_advisory_lock(1), pg_advisory_unlock(2)",
			"END"}},
		{"SELECT (1;2); SELECT 3", []string{"SELECT (1;2)", "SELECT 3"}},
		{"SELECT 'unterminated; SELECT 2", []string{"SELECT 'unterminated; SELECT 2"}},
		{"SELECT 1 /* unterminated; SELECT 2", []string{"SELECT 1"}},
		{"SELECT $a$ x; $b$ y;", []string{"SELECT $a$ x; $b$ y;"}},
	} {
		got, _ := classifyAll([]byte(tc.q))
		var texts []string
		for _, st := range got {
			texts = append(texts, tc.q[st.Start:st.End])
		}
		if fmt.Sprintf("%q", texts) != fmt.Sprintf("%q", tc.want) {
			t.Errorf("%q: got %q, want %q", tc.q, texts, tc.want)
		}
	}
}

func TestClassifyOpen(t *testing.T) {
	for q, want := range map[string]bool{
		"SELECT 1":              false,
		"SELECT 1;":             false,
		"SELECT 'a":             true,
		"SELECT E'a\\'":         true,
		"SELECT \"a":            true,
		"SELECT $x$ a":          true,
		"SELECT 1 -- c":         true,
		"SELECT 1 -- c\n":       false,
		"SELECT 1 /* a /* b */": true,
		"SELECT (1":             true,
		"CREATE FUNCTION f() BEGIN ATOMIC SELECT 1;": true,
		"SELECT 1; /*": true,
	} {
		if _, open := classifyAll([]byte(q)); open != want {
			t.Errorf("%q: open = %v, want %v", q, open, want)
		}
	}
}

func TestKindString(t *testing.T) {
	if got := KindSetLocal.String(); got != "SetLocal" {
		t.Errorf("KindSetLocal.String() = %q", got)
	}
	if got := KindLoad.String(); got != "Load" {
		t.Errorf("KindLoad.String() = %q", got)
	}
	if got := Kind(200).String(); got != "Kind(200)" {
		t.Errorf("Kind(200).String() = %q", got)
	}
}

func TestScannerZeroAndReuse(t *testing.T) {
	var s Scanner
	if s.Next() {
		t.Fatal("zero Scanner has a statement")
	}
	s.Reset([]byte("LISTEN a; SELECT 1"))
	s.Next()
	s.Reset([]byte("UNLISTEN *"))
	if !s.Next() || s.Statement().Kind != KindUnlistenAll || s.Next() {
		t.Fatalf("Reset did not restart: %+v", s.Statement())
	}
}
