package proxy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
)

// TestPreparedJDBC and TestPreparedNode drive a transaction-mode proxy with real drivers
// that prepare named statements once per connection and use them in later transactions
// (docs/design.md section 5): pgjdbc with prepareThreshold=1 (S_1, S_2, ...) and
// node-postgres named queries. Several clients share a pool of 2 backends, so a
// client's statements are used on backends where it never prepared them, and the same
// statement name means different SQL for different clients. The workloads
// (testdata/Prepared.java, testdata/node/prepared.js) run the schedule of prepSchedule,
// check every value they read back and print a SUMMARY line; the test compares it with
// the schedule, reads every row back through a direct connection, and watches
// pg_stat_activity for more backends than the pool allows.
//
// With PGSIDECAR_TEST_DIRECT=1 the workloads connect to PostgreSQL directly instead:
// this checks the tests themselves (they must pass), and the workloads also check
// through pg_prepared_statements that the drivers really use named statements.

const (
	jdbcJar = "/usr/share/java/postgresql.jar"

	prepClients  = 4
	prepTxns     = 300
	prepPoolSize = 2
	// prepTimeout bounds a workload run (it normally takes one or two seconds); the
	// drivers' own query timeouts (20s) turn a hang into errors before it.
	prepTimeout = 30 * time.Second
)

// needJava returns the java launcher, or skips (fails in CI) without a JDK 11+ (whose
// jdk.compiler runs single-source-file programs) or Debian's PostgreSQL JDBC driver.
func needJava(t *testing.T) string {
	t.Helper()
	java, err := exec.LookPath("java")
	if err != nil {
		pgtest.SkipUnlessCI(t, "JDBC tests need java 11+ (Debian: default-jdk-headless): %v", err)
	}
	if _, err := os.Stat(jdbcJar); err != nil {
		pgtest.SkipUnlessCI(t, "JDBC tests need %s (Debian: libpostgresql-jdbc-java): %v", jdbcJar, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// "openjdk 17.0.15 2025-04-15"; Java 8 has no --version.
	out, err := exec.CommandContext(ctx, java, "--version").CombinedOutput()
	f := strings.Fields(string(out))
	var major int
	if err == nil && len(f) > 1 {
		major, _ = strconv.Atoi(strings.SplitN(f[1], ".", 2)[0])
	}
	if major < 11 {
		pgtest.SkipUnlessCI(t, "JDBC tests need java 11+ to run a source file (Debian: default-jdk-headless); %s --version: %v\n%s", java, err, out)
	}
	// A JRE alone cannot compile the source file.
	out, err = exec.CommandContext(ctx, java, "--list-modules").CombinedOutput()
	if err != nil || !regexp.MustCompile(`(?m)^jdk\.compiler@`).Match(out) {
		pgtest.SkipUnlessCI(t, "JDBC tests need a JDK, not only a JRE, to run a source file (Debian: default-jdk-headless); %s --list-modules: %v", java, err)
	}
	return java
}

// needNode returns node and the workload's folder, after installing node-postgres
// there (npm install, into the ignored node_modules) if it is missing; it skips (fails
// in CI) without node or npm, or when the install fails.
func needNode(t *testing.T) (node, dir string) {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		pgtest.SkipUnlessCI(t, "node-postgres tests need node (Debian: nodejs): %v", err)
	}
	dir, err = filepath.Abs(filepath.Join("testdata", "node"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "pg", "package.json")); err == nil {
		return node, dir
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		pgtest.SkipUnlessCI(t, "node-postgres tests need npm (Debian: npm) to install pg: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, npm, "install", "--no-audit", "--no-fund")
	cmd.Dir = dir
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		pgtest.SkipUnlessCI(t, "npm install in %s: %v\n%s", dir, err, out)
	}
	t.Logf("npm install in %s (%s): %s", dir, time.Since(start).Round(time.Millisecond), strings.TrimSpace(string(out)))
	return node, dir
}

// prepTarget is where a workload connects: the proxy, or PostgreSQL with
// PGSIDECAR_TEST_DIRECT=1.
type prepTarget struct {
	db     string
	host   string
	port   int
	direct bool
	tp     *testProxy // nil when direct
	// maxBackends is how many connections PostgreSQL may see for the workload.
	maxBackends int
	chk         *pgx.Conn
}

func prepStart(t *testing.T) *prepTarget {
	t.Helper()
	db := newDatabase(t)
	chk := direct(t, db)
	if _, err := chk.Exec(context.Background(), `
		CREATE TABLE items (client int, seq int, val bigint NOT NULL, note text NOT NULL, PRIMARY KEY (client, seq));
		CREATE TABLE batch (client int, seq int, PRIMARY KEY (client, seq))`); err != nil {
		t.Fatal(err)
	}
	tg := &prepTarget{db: db, chk: chk}
	if workloadDirect() {
		tg.direct = true
		tg.host, tg.port = cluster.Host, cluster.Port
		tg.maxBackends = prepClients
		t.Logf("%s is set: the workload connects to PostgreSQL at %s:%d directly, not through the proxy", workloadDirectEnv, tg.host, tg.port)
		return tg
	}
	tg.tp = startProxy(t, db, proxyOpts{PoolSize: prepPoolSize, Mode: proxy.ModeTransaction})
	host, port, err := net.SplitHostPort(tg.tp.addr)
	if err != nil {
		t.Fatal(err)
	}
	tg.host = host
	if tg.port, err = strconv.Atoi(port); err != nil {
		t.Fatal(err)
	}
	tg.maxBackends = prepPoolSize
	return tg
}

// prepClientSummary is one client's part of a workload's SUMMARY line.
type prepClientSummary struct {
	Client         int   `json:"client"`
	Done           int   `json:"done"`
	EchoOK         int   `json:"echo_ok"`
	EchoSum        int64 `json:"echo_sum"`
	TypesOK        int   `json:"types_ok"`
	Rows           int   `json:"rows"`
	BatchRows      int   `json:"batch_rows"`
	ExpectedErrors int   `json:"expected_errors"`
	Rollbacks      int   `json:"rollbacks"`
	Reprepares     int   `json:"reprepares"`
	Errors         int   `json:"errors"`
	// Direct runs only: pg_prepared_statements readings and the distinct
	// server-side statement names they showed.
	StatementChecks int `json:"statement_checks"`
	StatementNames  int `json:"statement_names"`
}

type prepSummary struct {
	Driver  string              `json:"driver"`
	Clients []prepClientSummary `json:"clients"`
	Errors  int                 `json:"errors"`
}

type prepItem struct {
	Client, Seq int
	Val         int64
	Note        string
}

type prepBatchRow struct{ Client, Seq int }

// prepSchedule is what client c of a workload does in txns transactions, and so
// what its summary must say and which rows it leaves committed. Transaction i is of
// kind r = (i + 7c) mod 10 (the offset makes the clients prepare their statements in
// different orders):
//
//	0-3  autocommit: echo; insert 1 row
//	4-6  BEGIN; echo; insert 2 rows; types; COMMIT
//	7    BEGIN; insert 1 row; types (sees it); ROLLBACK; types (does not)
//	8    BEGIN; 5 inserts into batch (JDBC: one addBatch/executeBatch); COMMIT
//	9    BEGIN; insert 1 row; insert it again: unique_violation (23505); ROLLBACK
//
// JDBC also closes and prepares again its 4 statements after every 50th transaction.
func prepSchedule(driver string, c, txns int, direct bool) (prepClientSummary, []prepItem, []prepBatchRow) {
	s := prepClientSummary{Client: c}
	var items []prepItem
	var batch []prepBatchRow
	item := func(seq int) {
		items = append(items, prepItem{c, seq, int64(seq)*7 + int64(c), fmt.Sprintf("c%d-%d", c, seq)})
	}
	echo := func(i int) {
		s.EchoOK++
		s.EchoSum += int64(i) + 2*(int64(c+1)*100000+int64(i))
	}
	for i := range txns {
		seq := i * 10
		switch r := (i + 7*c) % 10; {
		case r <= 3:
			echo(i)
			s.Rows++
			item(seq)
		case r <= 6:
			echo(i)
			s.Rows += 2
			item(seq)
			item(seq + 1)
			s.TypesOK++
		case r == 7:
			s.Rows++
			s.TypesOK += 2
			s.Rollbacks++
		case r == 8:
			s.BatchRows += 5
			for k := range 5 {
				batch = append(batch, prepBatchRow{c, seq + k})
			}
		default:
			s.Rows++
			s.ExpectedErrors++
			s.Rollbacks++
		}
		s.Done++
		if driver == "jdbc" && i%50 == 49 {
			s.Reprepares++
			if direct {
				s.StatementChecks++
			}
		}
	}
	if direct {
		switch driver {
		case "jdbc":
			// Without the statement cache (even clients) every re-prepare makes 4 new
			// statements and closes the old ones; with it, the same 4 are reused.
			s.StatementNames = 4
			if c%2 == 0 {
				s.StatementNames = 4 * s.StatementChecks
			}
		case "node":
			s.StatementChecks, s.StatementNames = 1, 4
		}
	}
	return s, items, batch
}

// prepMonitorBackends monitors how many connections to the test's database
// PostgreSQL has besides the test's own (n), and how many of them have the proxy's
// application_name (nApp). It does not count by the proxy's application_name alone:
// pgjdbc sends SET application_name after login, which renames the backend it runs on
// (today) or is applied to backends as tracked session state (docs/design.md section 6);
// every connection to the database is a proxy backend (or, direct, a workload
// connection) either way.
func prepMonitorBackends(t *testing.T, tg *prepTarget) *pgtest.BackendMonitor {
	t.Helper()
	app := ""
	if tg.tp != nil {
		app = tg.tp.appName
	}
	chkPID := int32(tg.chk.PgConn().PID())
	return pgtest.MonitorBackends(t, direct(t, tg.db), func(ctx context.Context, c *pgx.Conn) (n, nApp int, err error) {
		own := []int32{chkPID, int32(c.PgConn().PID())}
		err = c.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE application_name = $2)
			FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend' AND pid <> ALL($3)`,
			tg.db, app, own).Scan(&n, &nApp)
		return n, nApp, err
	})
}

var prepSummaryLine = regexp.MustCompile(`(?m)^SUMMARY (\{.*\})$`)

// prepRun runs a workload command while monitoring the backends, and checks its
// summary, the rows it left and the backends PostgreSQL saw.
func prepRun(ctx context.Context, t *testing.T, tg *prepTarget, driver string, cmd *exec.Cmd) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	mon := prepMonitorBackends(t, tg)
	start := time.Now()
	runErr := cmd.Run()
	elapsed := time.Since(start)
	seen := mon.Finish()
	if ctx.Err() != nil {
		t.Fatalf("%s workload did not finish within %s\nstdout:\n%s\nstderr:\n%s", driver, prepTimeout, lastBytes(stdout.String(), 2000), lastBytes(stderr.String(), 4000))
	}
	m := prepSummaryLine.FindStringSubmatch(stdout.String())
	var sum prepSummary
	if m == nil {
		t.Fatalf("%s workload: %s after %s without a SUMMARY line\nstdout:\n%s\nstderr:\n%s",
			driver, prepExit(runErr), elapsed.Round(time.Millisecond), lastBytes(stdout.String(), 2000), lastBytes(stderr.String(), 4000))
	}
	if err := json.Unmarshal([]byte(m[1]), &sum); err != nil {
		t.Fatalf("%s workload: bad SUMMARY line %q: %v", driver, m[1], err)
	}
	if runErr != nil || sum.Errors != 0 {
		t.Fatalf("%s workload: %s after %s, %d unexpected errors\nstderr:\n%s\nsummary: %s",
			driver, prepExit(runErr), elapsed.Round(time.Millisecond), sum.Errors, lastBytes(stderr.String(), 8000), m[1])
	}

	// The summary is the schedule's, client by client.
	if sum.Driver != driver || len(sum.Clients) != prepClients {
		t.Fatalf("summary of driver %q with %d clients, want %q with %d: %s", sum.Driver, len(sum.Clients), driver, prepClients, m[1])
	}
	var wantItems []prepItem
	var wantBatch []prepBatchRow
	for c, got := range sum.Clients {
		want, items, batch := prepSchedule(driver, c, prepTxns, tg.direct)
		if got != want {
			t.Errorf("client %d summary:\n got %+v\nwant %+v", c, got, want)
		}
		wantItems = append(wantItems, items...)
		wantBatch = append(wantBatch, batch...)
	}

	// Every committed row, and only those, read back directly.
	bg := context.Background()
	rows, err := tg.chk.Query(bg, `SELECT client, seq, val, note FROM items ORDER BY client, seq`)
	if err != nil {
		t.Fatal(err)
	}
	gotItems, err := pgx.CollectRows(rows, pgx.RowToStructByPos[prepItem])
	if err != nil {
		t.Fatal(err)
	}
	prepCompareRows(t, "items", gotItems, wantItems)
	rows, err = tg.chk.Query(bg, `SELECT client, seq FROM batch ORDER BY client, seq`)
	if err != nil {
		t.Fatal(err)
	}
	gotBatch, err := pgx.CollectRows(rows, pgx.RowToStructByPos[prepBatchRow])
	if err != nil {
		t.Fatal(err)
	}
	prepCompareRows(t, "batch", gotBatch, wantBatch)

	// PostgreSQL never saw more connections than the pool (direct: the clients) allows,
	// and the monitor did sample while the workload ran.
	if seen.Err != nil {
		t.Errorf("pg_stat_activity monitor failed after %d samples: %v", seen.Samples, seen.Err)
	}
	if seen.Max > tg.maxBackends || seen.Busy < 3 {
		t.Errorf("pg_stat_activity: at most %d connections of the workload seen (%d with the proxy's application_name), want 1..%d; %d of %d samples saw any, want 3 or more",
			seen.Max, seen.MaxApp, tg.maxBackends, seen.Busy, seen.Samples)
	}
	if tg.tp != nil {
		// No backend is left inside a transaction.
		pgtest.Eventually(t, 10*time.Second, "proxy backends all idle", func() error {
			var notIdle int
			err := tg.chk.QueryRow(bg, `SELECT count(*) FROM pg_stat_activity
				WHERE datname = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid() AND state <> 'idle'`, tg.db).Scan(&notIdle)
			if err == nil && notIdle > 0 {
				err = fmt.Errorf("%d backends not idle", notIdle)
			}
			return err
		})
	}
	mode := "directly to PostgreSQL"
	if tg.tp != nil {
		mode = fmt.Sprintf("through the proxy (pool of %d; at most %d backends with application_name %s)", prepPoolSize, seen.MaxApp, tg.tp.appName)
	}
	t.Logf("%s: %d clients x %d transactions %s in %s (process included); %d items and %d batch rows; at most %d connections seen over %d samples (%d busy)",
		driver, prepClients, prepTxns, mode, elapsed.Round(time.Millisecond), len(gotItems), len(gotBatch), seen.Max, seen.Samples, seen.Busy)
}

// prepCompareRows reports the first difference between the rows read back and those
// the schedule committed.
func prepCompareRows[T comparable](t *testing.T, table string, got, want []T) {
	t.Helper()
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			t.Errorf("%s: %d rows (want %d); row %d is %+v, want %+v", table, len(got), len(want), i, got[i], want[i])
			return
		}
	}
	if len(got) != len(want) {
		t.Errorf("%s: %d rows, want %d", table, len(got), len(want))
	}
}

// prepExit describes how a workload process ended.
func prepExit(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// TestPreparedJDBC: pgjdbc (Debian's libpostgresql-jdbc-java) with prepareThreshold=1,
// 4 client threads through a transaction-mode pool of 2; clients 0 and 2 run without
// the driver's statement cache, so closing a statement sends Close (with the next
// query) and preparing it again parses it under a new name.
func TestPreparedJDBC(t *testing.T) {
	java := needJava(t)
	tg := prepStart(t)
	script, err := filepath.Abs(filepath.Join("testdata", "Prepared.java"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), prepTimeout)
	defer cancel()
	url := fmt.Sprintf("jdbc:postgresql://%s/%s?prepareThreshold=1&sslmode=disable&gssEncMode=disable&connectTimeout=10&socketTimeout=20",
		net.JoinHostPort(tg.host, strconv.Itoa(tg.port)), tg.db)
	args := []string{"-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-cp", jdbcJar, script,
		"url=" + url, "clients=" + strconv.Itoa(prepClients), "txns=" + strconv.Itoa(prepTxns), "app=pgsidecar_test_jdbc"}
	if tg.direct {
		args = append(args, "direct=true")
	}
	cmd := exec.CommandContext(ctx, java, args...)
	prepRun(ctx, t, tg, "jdbc", cmd)
}

// TestPreparedNode: node-postgres named queries ({name, text, values}), 4 pg.Client
// connections in one process through a transaction-mode pool of 2; each name stands
// for different SQL on each connection.
func TestPreparedNode(t *testing.T) {
	node, dir := needNode(t)
	tg := prepStart(t)
	ctx, cancel := context.WithTimeout(context.Background(), prepTimeout)
	defer cancel()
	args := []string{filepath.Join(dir, "prepared.js"), "host=" + tg.host, "port=" + strconv.Itoa(tg.port), "db=" + tg.db,
		"clients=" + strconv.Itoa(prepClients), "txns=" + strconv.Itoa(prepTxns), "app=pgsidecar_test_node"}
	if tg.direct {
		args = append(args, "direct=true")
	}
	cmd := exec.CommandContext(ctx, node, args...)
	cmd.Dir = dir
	prepRun(ctx, t, tg, "node", cmd)
}
