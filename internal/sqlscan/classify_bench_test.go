package sqlscan

import (
	"strings"
	"testing"
)

// longInsert is a 100-row multi-VALUES INSERT with string literals holding
// quotes and semicolons.
var longInsert = func() string {
	var b strings.Builder
	b.WriteString("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime, note) VALUES ")
	for i := 0; i < 100; i++ {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("(7, 1, 4242, -2417, '2024-01-01 12:34:56.789+00', 'it''s a note; with a semicolon')")
	}
	b.WriteString(";")
	return b.String()
}()

// ordinaryQueries classify without allocating: no record needs a Name or Value.
var ordinaryQueries = []struct{ name, q string }{
	{"pgbench_select", "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"},
	{"update", "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;"},
	{"long_insert", longInsert},
	{"orm_select", `SELECT "users"."id", "users"."email", "users"."created_at" FROM "users" ` +
		`WHERE ("users"."tenant_id" = $1 AND "users"."email" ILIKE $2) ORDER BY "users"."id" LIMIT 50`},
	{"cte_select", "WITH recent AS (SELECT * FROM orders WHERE created_at > now() - interval '1 day') " +
		"SELECT count(*), sum(total) FROM recent /* report */ WHERE status = 'paid'"},
	{"tpcb_transaction", "BEGIN; UPDATE pgbench_accounts SET abalance = abalance + -2417 WHERE aid = 4242; " +
		"SELECT abalance FROM pgbench_accounts WHERE aid = 4242; " +
		"UPDATE pgbench_tellers SET tbalance = tbalance + -2417 WHERE tid = 7; " +
		"INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 4242, -2417, CURRENT_TIMESTAMP); END;"},
	{"discard_all", "DISCARD ALL"},
	{"unlisten_all", "UNLISTEN *"},
}

// sessionQueries allocate only their records' Name/Value strings.
var sessionQueries = []struct{ name, q string }{
	{"set", "SET search_path TO app, public"},
	{"set_config", "SELECT set_config('application_name', 'worker-1', false)"},
	{"advisory_lock", "SELECT pg_advisory_lock(4242)"},
}

var benchKindSink Kind

func classifyLoop(s *Scanner, q []byte) {
	s.Reset(q)
	for s.Next() {
		benchKindSink |= s.Statement().Kind
	}
}

func BenchmarkClassify(b *testing.B) {
	for _, group := range [][]struct{ name, q string }{ordinaryQueries, sessionQueries} {
		for _, tc := range group {
			q := []byte(tc.q)
			b.Run(tc.name, func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(q)))
				var s Scanner
				for b.Loop() {
					classifyLoop(&s, q)
				}
			})
		}
	}
}

func TestClassifyOrdinaryDoesNotAllocate(t *testing.T) {
	var s Scanner
	for _, tc := range ordinaryQueries {
		q := []byte(tc.q)
		if allocs := testing.AllocsPerRun(100, func() { classifyLoop(&s, q) }); allocs != 0 {
			t.Errorf("%s: %v allocations per run, want 0", tc.name, allocs)
		}
	}
	// A statement that only needs a Name allocates that string and nothing else.
	q := []byte("LISTEN jobs")
	if allocs := testing.AllocsPerRun(100, func() { classifyLoop(&s, q) }); allocs != 1 {
		t.Errorf("LISTEN jobs: %v allocations per run, want 1", allocs)
	}
}
