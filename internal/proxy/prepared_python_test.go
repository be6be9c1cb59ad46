package proxy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/pool"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
)

// Black-box driver tests for named prepared statements in transaction mode (docs/design.md
// section 5): real drivers prepare a statement once per connection and then only
// Bind it by name, while the proxy hands each transaction whichever backend is free.
// Each test runs a concurrent workload through a proxy pool of 2 backends and checks
// every result, the exact table contents afterwards (through a direct connection),
// and that PostgreSQL never saw more than 2 proxy backends.
//
// With workloadDirectEnv set (workloadDirect) the workloads connect straight to
// PostgreSQL instead of the proxy.

const preparedPoolSize = 2

// needPyModule skips the test (fails it in CI) when /usr/bin/python3 cannot import
// module, which Debian package pkg provides.
func needPyModule(t *testing.T, module, pkg string) {
	t.Helper()
	needPythonImport(t, module+" tests", module, "Debian package "+pkg)
}

// preparedSchema is the tables the Python workloads write.
const preparedSchema = `
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE items(client int NOT NULL, seq int NOT NULL, note text NOT NULL, PRIMARY KEY (client, seq));
CREATE TABLE copied(client int NOT NULL, n int NOT NULL, label text NOT NULL, PRIMARY KEY (client, n));`

// preparedTarget is where a workload connects: a transaction-mode proxy with a pool
// of 2, or PostgreSQL itself in direct mode.
type preparedTarget struct {
	db  string
	url string
	chk *pgx.Conn // direct connection for setup and checks
	tp  *testProxy
	mon *pgtest.BackendMonitor
}

// preparedStart creates a database, runs setup in it directly and starts the proxy
// (unless in direct mode) and the pg_stat_activity monitor.
func preparedStart(t *testing.T, setup string) *preparedTarget {
	t.Helper()
	pt := &preparedTarget{db: newDatabase(t)}
	pt.chk = direct(t, pt.db)
	if setup != "" {
		if _, err := pt.chk.Exec(context.Background(), setup); err != nil {
			t.Fatalf("setup: %v", err)
		}
	}
	if workloadDirect() {
		pt.url = cluster.URL(pt.db)
		t.Logf("%s=1: the workload runs directly against PostgreSQL, not through the proxy", workloadDirectEnv)
		return pt
	}
	pt.tp = startProxy(t, pt.db, proxyOpts{PoolSize: preparedPoolSize, Mode: proxy.ModeTransaction})
	pt.url = pt.tp.URL()
	pt.mon = monitorProxyBackends(t, pt.tp)
	return pt
}

// finish stops the monitor and checks that PostgreSQL saw between 1 and 2 proxy
// backends, that they are all idle now and that the pool has nothing in use.
func (pt *preparedTarget) finish(t *testing.T) {
	t.Helper()
	if pt.tp == nil {
		return
	}
	seen := pt.mon.Finish()
	if seen.Err != nil {
		t.Errorf("pg_stat_activity monitor failed after %d samples: %v", seen.Samples, seen.Err)
	}
	if seen.Max > preparedPoolSize || seen.Max == 0 || seen.Samples < 3 {
		t.Errorf("max proxy backends seen in pg_stat_activity = %d over %d samples, want 1..%d over at least 3",
			seen.Max, seen.Samples, preparedPoolSize)
	}
	if idle := pyOnlyIdle(t, pt.tp, pt.chk, 10*time.Second); idle > preparedPoolSize {
		t.Errorf("%d idle proxy backends at the end, want at most %d", idle, preparedPoolSize)
	}
	ps := pt.tp.pools.Get(pool.Key{Database: pt.db, User: "postgres"}).Stats()
	if ps.Open > preparedPoolSize || ps.InUse != 0 {
		t.Errorf("pool at the end: %+v, want at most %d open and none in use", ps, preparedPoolSize)
	}
	t.Logf("max %d proxy backends over %d pg_stat_activity samples; pool: %d acquires, %d waited, %d dials",
		seen.Max, seen.Samples, ps.Acquires, ps.Waited, ps.Dials)
}

// preparedSummary is the RESULT line of the Python workloads.
type preparedSummary struct {
	Driver       string   `json:"driver"`
	Version      string   `json:"version"`
	Clients      int      `json:"clients"`
	Transactions int      `json:"transactions"`
	RolledBack   int      `json:"rolled_back"`
	Checks       int      `json:"checks"`
	Errors       int      `json:"errors"`
	ErrorSamples []string `json:"error_samples"`
	// ServerStatements is, per client, how many of the driver's named statements
	// its session held at the end (only with --check-server-statements).
	ServerStatements []*int `json:"server_statements"`
}

var preparedResultLine = regexp.MustCompile(`(?m)^RESULT (\{.*\})\n\z`)

// preparedWorkload describes one run of a Python workload script and the figures it
// implies (see the scripts' docstrings): every client c runs transactions iterations
// i, each inserting row (c, i) unless rolled back; after every 50th it inserts
// batchRows[k] rows with seqs base+i*10+j, and copies 10 rows into `copied`.
type preparedWorkload struct {
	script       string
	clients      int
	transactions int
	rollbacks    bool
	// batchRows maps a seq base to the number of rows inserted after every 50th
	// iteration (executemany, pipeline).
	batchRows map[int]int
	// batchChecks is the number of checks the script makes after every 50th iteration.
	batchChecks int
	args        []string
}

const preparedBatchEvery = 50

func (w preparedWorkload) rolledBack(c, i int) bool {
	return w.rollbacks && (i+c)%4 == 3 && (i/4)%5 == 4
}

// wantSeqs is the items.seq values client c must have committed, in order.
func (w preparedWorkload) wantSeqs(c int) []int {
	var seqs []int
	for i := range w.transactions {
		if !w.rolledBack(c, i) {
			seqs = append(seqs, i)
		}
	}
	for base, n := range w.batchRows {
		for i := preparedBatchEvery - 1; i < w.transactions; i += preparedBatchEvery {
			for j := range n {
				seqs = append(seqs, base+i*10+j)
			}
		}
	}
	slices.Sort(seqs)
	return seqs
}

// wantCopied is the copied.n values of every client, in order.
func (w preparedWorkload) wantCopied() []int {
	var ns []int
	for i := preparedBatchEvery - 1; i < w.transactions; i += preparedBatchEvery {
		for k := range 10 {
			ns = append(ns, i*100+k)
		}
	}
	return ns
}

func (w preparedWorkload) wantSummary() preparedSummary {
	s := preparedSummary{Clients: w.clients, Transactions: w.clients * w.transactions}
	batches := w.transactions / preparedBatchEvery
	for c := range w.clients {
		for i := range w.transactions {
			if w.rolledBack(c, i) {
				s.RolledBack++
			}
			if (i+c)%4 == 0 {
				s.Checks += 2
			} else {
				s.Checks += 3
			}
		}
		s.Checks += batches * w.batchChecks
	}
	return s
}

// run runs the workload against pt and checks its summary and the tables.
func (w preparedWorkload) run(t *testing.T, pt *preparedTarget) {
	t.Helper()
	if w.transactions%preparedBatchEvery != 0 {
		t.Fatalf("transactions = %d, want a multiple of %d", w.transactions, preparedBatchEvery)
	}
	script, err := filepath.Abs(filepath.Join("testdata", w.script))
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{script, "--dsn", pt.url, "--clients", strconv.Itoa(w.clients),
		"--transactions", strconv.Itoa(w.transactions)}, w.args...)
	if w.rollbacks && w.script == "prepared_psycopg.py" {
		args = append(args, "--rollbacks")
	}
	if workloadDirect() {
		args = append(args, "--check-server-statements")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, pythonBin, args...)
	cmd.Env = append(os.Environ(), "PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1")
	cmd.WaitDelay = 5 * time.Second
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	start := time.Now()
	runErr := cmd.Run()
	elapsed := time.Since(start)
	pt.finish(t)

	var got preparedSummary
	m := preparedResultLine.FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("%s: exit %v after %s (context: %v), no RESULT line\nstdout:\n%s%s",
			w.script, runErr, elapsed.Round(time.Millisecond), ctx.Err(), lastBytes(out.String(), 2000), preparedStderr(errOut.String()))
	}
	if err := json.Unmarshal([]byte(m[1]), &got); err != nil {
		t.Fatalf("%s: RESULT line %q: %v", w.script, m[1], err)
	}
	if runErr != nil || got.Errors != 0 {
		t.Errorf("%s: exit %v after %s, %d client(s) failed; first errors:\n  %s%s",
			w.script, runErr, elapsed.Round(time.Millisecond), got.Errors, strings.Join(got.ErrorSamples, "\n  "), preparedStderr(errOut.String()))
	}
	want := w.wantSummary()
	if got.Clients != want.Clients || got.Transactions != want.Transactions || got.RolledBack != want.RolledBack || got.Checks != want.Checks {
		t.Errorf("%s: clients=%d transactions=%d rolled_back=%d checks=%d, want %d %d %d %d",
			w.script, got.Clients, got.Transactions, got.RolledBack, got.Checks,
			want.Clients, want.Transactions, want.RolledBack, want.Checks)
	}
	w.checkTables(t, pt.chk)
	if workloadDirect() {
		var held []string
		for _, n := range got.ServerStatements {
			if n == nil {
				held = append(held, "?")
			} else {
				held = append(held, strconv.Itoa(*n))
			}
		}
		t.Logf("named statements held by each client's session at the end: %s", strings.Join(held, " "))
	}
	t.Logf("%s (%s %s): %d clients, %d transactions (%d rolled back), %d checked results in %s (%.0f tx/s)",
		w.script, got.Driver, got.Version, got.Clients, got.Transactions, got.RolledBack, got.Checks,
		elapsed.Round(time.Millisecond), float64(got.Transactions)/elapsed.Seconds())
}

// preparedStderr formats a script's standard error (tracebacks) for a failure message.
func preparedStderr(s string) string {
	if s == "" {
		return ""
	}
	return "\nstderr:\n" + lastBytes(s, 6000)
}

// checkTables compares items and copied, read directly, with the rows the workload
// must have committed, exactly.
func (w preparedWorkload) checkTables(t *testing.T, chk *pgx.Conn) {
	t.Helper()
	ctx := context.Background()
	rows, err := chk.Query(ctx, `SELECT client, array_agg(seq ORDER BY seq), count(*) FILTER (WHERE note = 'rollback') FROM items GROUP BY client ORDER BY client`)
	if err != nil {
		t.Fatal(err)
	}
	type clientRows struct {
		Client int
		Seqs   []int
		Bad    int // rolled-back items rows; copied rows with a wrong label
	}
	items, err := pgx.CollectRows(rows, pgx.RowToStructByPos[clientRows])
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != w.clients {
		t.Errorf("items has rows of %d clients, want %d", len(items), w.clients)
	}
	for _, cr := range items {
		if cr.Client < 0 || cr.Client >= w.clients {
			t.Errorf("items has rows of unknown client %d", cr.Client)
			continue
		}
		if want := w.wantSeqs(cr.Client); !slices.Equal(cr.Seqs, want) {
			t.Errorf("client %d committed %d items rows, want %d (missing %v, extra %v)",
				cr.Client, len(cr.Seqs), len(want), preparedDiff(want, cr.Seqs), preparedDiff(cr.Seqs, want))
		}
		if cr.Bad != 0 {
			t.Errorf("client %d: %d rows of rolled-back transactions were committed", cr.Client, cr.Bad)
		}
	}

	rows, err = chk.Query(ctx, `SELECT client, array_agg(n ORDER BY n),
		count(*) FILTER (WHERE label <> format('c%s-%s-%s', client, n / 100, n % 100))
		FROM copied GROUP BY client ORDER BY client`)
	if err != nil {
		t.Fatal(err)
	}
	copied, err := pgx.CollectRows(rows, pgx.RowToStructByPos[clientRows])
	if err != nil {
		t.Fatal(err)
	}
	if len(copied) != w.clients {
		t.Errorf("copied has rows of %d clients, want %d", len(copied), w.clients)
	}
	want := w.wantCopied()
	for _, cr := range copied {
		if !slices.Equal(cr.Seqs, want) {
			t.Errorf("client %d copied %d rows, want %d (missing %v, extra %v)",
				cr.Client, len(cr.Seqs), len(want), preparedDiff(want, cr.Seqs), preparedDiff(cr.Seqs, want))
		}
		if cr.Bad != 0 {
			t.Errorf("client %d: %d copied rows have a wrong label", cr.Client, cr.Bad)
		}
	}
}

// preparedDiff returns up to 10 elements of a missing from b (both sorted).
func preparedDiff(a, b []int) []int {
	var d []int
	for _, x := range a {
		if _, found := slices.BinarySearch(b, x); !found {
			d = append(d, x)
			if len(d) == 10 {
				break
			}
		}
	}
	return d
}

// TestPreparedAsyncpg: 8 asyncpg connections with their default statement cache
// (named statements __asyncpg_stmt_N__; two of them with a cache of 2, so that
// evicted statements are closed and new names prepared) interleave 200 iterations
// each of autocommit statements and explicit transactions, executemany and
// copy_records_to_table, through a proxy pool of 2.
func TestPreparedAsyncpg(t *testing.T) {
	needPyModule(t, "asyncpg", "python3-asyncpg")
	pt := preparedStart(t, preparedSchema)
	preparedWorkload{
		script:       "prepared_asyncpg.py",
		clients:      8,
		transactions: 200,
		rollbacks:    true,
		batchRows:    map[int]int{100_000: 5},
		batchChecks:  2,
	}.run(t, pt)
}

// TestPreparedPsycopg: psycopg 3 connections with prepare_threshold=0 (every
// statement prepared server-side as _pg3_N), one per thread, interleave autocommit
// statements, explicit transactions, executemany, pipelines and COPY through a proxy
// pool of 2. "deallocate" adds what makes psycopg send SQL-level DEALLOCATE: a
// rollback (DEALLOCATE ALL, then new names) every 20 iterations and prepared_max=2
// (DEALLOCATE _pg3_N on every cache eviction).
func TestPreparedPsycopg(t *testing.T) {
	needPyModule(t, "psycopg", "python3-psycopg")
	psycopgWorkload := preparedWorkload{
		script:      "prepared_psycopg.py",
		batchRows:   map[int]int{100_000: 5, 200_000: 2},
		batchChecks: 7, // 3 pipelined echoes, 2 pipelined inserts, count, copy
	}
	t.Run("prepared", func(t *testing.T) {
		w := psycopgWorkload
		w.clients, w.transactions = 6, 200
		w.run(t, preparedStart(t, preparedSchema))
	})
	t.Run("deallocate", func(t *testing.T) {
		w := psycopgWorkload
		w.clients, w.transactions, w.rollbacks = 4, 100, true
		w.args = []string{"--prepared-max", "2"}
		w.run(t, preparedStart(t, preparedSchema))
	})
}

// pgbenchBin returns the pgbench of the test cluster's PostgreSQL, or skips the test
// (fails it in CI).
func pgbenchBin(t *testing.T) string {
	t.Helper()
	needCluster(t)
	p := filepath.Join(cluster.BinDir, "pgbench")
	if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
		return p
	}
	pgtest.SkipUnlessCI(t, "pgbench not found next to the server binaries in %s (Debian package postgresql-client-<version>)", cluster.BinDir)
	return ""
}

var (
	pgbenchProcessed = regexp.MustCompile(`(?m)^number of transactions actually processed: (\d+)/(\d+)$`)
	pgbenchFailed    = regexp.MustCompile(`(?m)^number of failed transactions: (\d+) `)
	pgbenchMode      = regexp.MustCompile(`(?m)^query mode: prepared$`)
	pgbenchError     = regexp.MustCompile(`(?mi)^.*(error|fatal).*$`)
	pgbenchVersion   = regexp.MustCompile(`^pgbench \(PostgreSQL\) (\d+)`)
)

// runPgbench runs pgbench with args against url and returns its output.
func runPgbench(ctx context.Context, t *testing.T, bin, url string, args ...string) (string, time.Duration, error) {
	t.Helper()
	cmd := exec.CommandContext(ctx, bin, append(args, url)...)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10")
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	out, err := cmd.CombinedOutput()
	return string(out), time.Since(start), err
}

// TestPreparedPgbench: pgbench -M prepared (statements P_N, prepared by each client
// at its first use) with 8 clients through a proxy pool of 2: the select-only
// script, then the default TPC-B-like one (BEGIN ... END with updates), whose
// balances must add up afterwards.
func TestPreparedPgbench(t *testing.T) {
	bin := pgbenchBin(t)
	pt := preparedStart(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, _, err := runPgbench(ctx, t, bin, cluster.URL(pt.db), "-i", "-s", "1", "-q"); err != nil {
		t.Fatalf("pgbench -i (directly): %v\n%s", err, out)
	}

	vout, err := exec.CommandContext(ctx, bin, "--version").Output()
	vm := pgbenchVersion.FindSubmatch(vout)
	if err != nil || vm == nil {
		t.Fatalf("%s --version: %v, %q", bin, err, vout)
	}
	major, _ := strconv.Atoi(string(vm[1]))

	const clients = 8
	bench := func(t *testing.T, txPerClient int, extra ...string) {
		args := append([]string{"-M", "prepared", "-n", "-c", strconv.Itoa(clients), "-j", "2", "-t", strconv.Itoa(txPerClient)}, extra...)
		out, elapsed, err := runPgbench(ctx, t, bin, pt.url, args...)
		want := clients * txPerClient
		m := pgbenchProcessed.FindStringSubmatch(out)
		// pgbench 15 and later report failed transactions (errors that did not abort
		// the client); older ones do not have the line.
		f := pgbenchFailed.FindStringSubmatch(out)
		failedOK := f != nil && f[1] == "0" || f == nil && major < 15
		// pgbench only logs a failed PQprepare and goes on (a Bind that then finds a
		// statement of the same name and query on its backend succeeds by luck), so
		// any error it printed fails the test.
		errLine := pgbenchError.FindString(out)
		if err != nil || m == nil || m[1] != strconv.Itoa(want) || m[2] != strconv.Itoa(want) || !failedOK || !pgbenchMode.MatchString(out) || errLine != "" {
			t.Errorf("pgbench %s: exit %v after %s; want %d/%d transactions processed, 0 failed, query mode prepared, no errors\n%s",
				strings.Join(args, " "), err, elapsed.Round(time.Millisecond), want, want, lastBytes(out, 4000))
			return
		}
		t.Logf("pgbench %s: %s/%s transactions, 0 failed, in %s", strings.Join(args, " "), m[1], m[2], elapsed.Round(time.Millisecond))
	}
	t.Run("select-only", func(t *testing.T) { bench(t, 300, "-S") })
	t.Run("tpcb-like", func(t *testing.T) {
		bench(t, 100)
		var n, delta, abal, tbal, bbal int64
		if err := pt.chk.QueryRow(ctx, `SELECT (SELECT count(*) FROM pgbench_history), (SELECT coalesce(sum(delta), 0) FROM pgbench_history),
			(SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(tbalance) FROM pgbench_tellers), (SELECT sum(bbalance) FROM pgbench_branches)`).
			Scan(&n, &delta, &abal, &tbal, &bbal); err != nil {
			t.Fatal(err)
		}
		if n != clients*100 || abal != delta || tbal != delta || bbal != delta {
			t.Errorf("after tpcb-like: %d history rows (want %d), sum(delta)=%d, balances: accounts %d, tellers %d, branches %d (want all equal to sum(delta))",
				n, clients*100, delta, abal, tbal, bbal)
		}
	})
	pt.finish(t)
}
