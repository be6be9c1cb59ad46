package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/pool"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
)

// The Python tests drive the proxy with the workload that motivated it: SQLAlchemy
// services whose client-side pools (pool_size=50, max_overflow=100 per process) are
// far larger than what PostgreSQL should serve. testdata/worker.py is the worker.

const pythonBin = "/usr/bin/python3"

// needPython skips the test when python3 with SQLAlchemy and psycopg2 is missing,
// or fails it in CI (CI=true), where a skip would hide missing coverage.
func needPython(t *testing.T) {
	t.Helper()
	needPythonImport(t, "python worker tests", "sqlalchemy, psycopg2", "SQLAlchemy and psycopg2: python3-sqlalchemy, python3-psycopg2")
}

// needPythonImport skips the test (fails it in CI) when /usr/bin/python3 is
// missing or cannot import the modules of imports (as an import statement lists
// them); what names the tests, hint where the modules come from.
func needPythonImport(t *testing.T, what, imports, hint string) {
	t.Helper()
	if _, err := os.Stat(pythonBin); err != nil {
		pgtest.SkipUnlessCI(t, "%s need %s: %v", what, pythonBin, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, pythonBin, "-c", "import "+imports).CombinedOutput()
	if err != nil {
		pgtest.SkipUnlessCI(t, "%s need the Python modules %s (%s): %v\n%s", what, imports, hint, err, out)
	}
}

// pyWorkerCmd returns the command running testdata/worker.py as process i of p.
func pyWorkerCmd(ctx context.Context, t *testing.T, tp *testProxy, n, i, p int, extra ...string) *exec.Cmd {
	t.Helper()
	script, err := filepath.Abs(filepath.Join("testdata", "worker.py"))
	if err != nil {
		t.Fatal(err)
	}
	dsn := fmt.Sprintf("postgresql+psycopg2://postgres@%s/%s?sslmode=disable", tp.addr, tp.db)
	args := append([]string{script, "--dsn", dsn, "--messages", strconv.Itoa(n),
		"--process-index", strconv.Itoa(i), "--processes", strconv.Itoa(p)}, extra...)
	cmd := exec.CommandContext(ctx, pythonBin, args...)
	cmd.Env = append(os.Environ(), "PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1")
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

var pyDoneLine = regexp.MustCompile(`(?m)^RETRIED (\d+)\nDONE processed=(\d+) errors=(\d+)\n\z`)

// pyParseDone returns the figures of a worker's final RETRIED and DONE lines.
func pyParseDone(out string) (processed, errs, retried int, ok bool) {
	m := pyDoneLine.FindStringSubmatch(out)
	if m == nil {
		return 0, 0, 0, false
	}
	retried, _ = strconv.Atoi(m[1])
	processed, _ = strconv.Atoi(m[2])
	errs, _ = strconv.Atoi(m[3])
	return processed, errs, retried, true
}

// pyMessagesOf is how many of n messages process i of p handles: range(i, n, p).
func pyMessagesOf(n, i, p int) int {
	if i >= n {
		return 0
	}
	return (n - i + p - 1) / p
}

func pyCreateMessages(t *testing.T, db string) *pgx.Conn {
	t.Helper()
	c := direct(t, db)
	if _, err := c.Exec(context.Background(), `CREATE TABLE messages(id int PRIMARY KEY, worker int NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	return c
}

// pyOnlyIdle waits until every proxy backend is 'idle' (none idle in transaction or
// active) and returns their count.
func pyOnlyIdle(t *testing.T, tp *testProxy, chk *pgx.Conn, within time.Duration) int {
	t.Helper()
	var idle int
	pgtest.Eventually(t, within, "proxy backends all idle", func() error {
		st := tp.serverBackends(t, chk)
		for s, n := range st {
			if s != "idle" && n > 0 {
				return fmt.Errorf("backends by state: %v", st)
			}
		}
		idle = st["idle"]
		return nil
	})
	return idle
}

// TestPythonWorker runs 4 worker processes of 10 threads each (SQLAlchemy pools of
// up to 150 connections each) through a proxy pool of 5 backends: every message must
// be written exactly once, and PostgreSQL must never see more than 5 proxy backends.
func TestPythonWorker(t *testing.T) {
	needPython(t)
	const (
		messages  = 4000
		processes = 4
		poolSize  = 5
	)
	db := newDatabase(t)
	chk := pyCreateMessages(t, db)
	tp := startProxy(t, db, proxyOpts{PoolSize: poolSize, Mode: proxy.ModeTransaction})

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	mon := monitorProxyBackends(t, tp)
	start := time.Now()

	type result struct {
		out, errOut bytes.Buffer
		err         error
		elapsed     time.Duration
	}
	results := make([]*result, processes)
	var wg sync.WaitGroup
	for i := range processes {
		r := &result{}
		results[i] = r
		cmd := pyWorkerCmd(ctx, t, tp, messages, i, processes)
		cmd.Stdout, cmd.Stderr = &r.out, &r.errOut
		wg.Go(func() {
			r.err = cmd.Run()
			r.elapsed = time.Since(start)
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	seen := mon.Finish()

	for i, r := range results {
		want := pyMessagesOf(messages, i, processes)
		// No connection may be lost: there is no idle-transaction timeout here.
		processed, errs, retried, ok := pyParseDone(r.out.String())
		if r.err != nil || !ok || processed != want || errs != 0 || retried != 0 {
			t.Errorf("worker %d: exit %v after %s, DONE line found %v: processed=%d (want %d) errors=%d retried=%d\nstdout:\n%s\nstderr:\n%s",
				i, r.err, r.elapsed.Round(time.Millisecond), ok, processed, want, errs, retried, lastBytes(r.out.String(), 2000), lastBytes(r.errOut.String(), 4000))
		}
	}
	if ctx.Err() != nil {
		t.Fatalf("workers did not finish within the 3-minute timeout")
	}

	var count, distinct, lo, hi int
	if err := chk.QueryRow(context.Background(),
		`SELECT count(*), count(DISTINCT id), coalesce(min(id), -1), coalesce(max(id), -1) FROM messages`).Scan(&count, &distinct, &lo, &hi); err != nil {
		t.Fatal(err)
	}
	if count != messages || distinct != messages || lo != 0 || hi != messages-1 {
		t.Errorf("messages: count=%d distinct=%d min=%d max=%d, want %d %d 0 %d", count, distinct, lo, hi, messages, messages, messages-1)
	}
	rows, err := chk.Query(context.Background(), `SELECT worker, count(*) FROM messages GROUP BY worker ORDER BY worker`)
	if err != nil {
		t.Fatal(err)
	}
	perWorker, err := pgx.CollectRows(rows, pgx.RowToStructByPos[struct{ W, N int }])
	if err != nil {
		t.Fatal(err)
	}
	for _, pw := range perWorker {
		if want := pyMessagesOf(messages, pw.W, processes); pw.N != want {
			t.Errorf("worker %d wrote %d messages, want %d", pw.W, pw.N, want)
		}
	}

	if seen.Err != nil {
		t.Errorf("pg_stat_activity monitor failed after %d samples: %v", seen.Samples, seen.Err)
	}
	if seen.Max > poolSize || seen.Max == 0 {
		t.Errorf("max proxy backends seen in pg_stat_activity = %d over %d samples, want 1..%d", seen.Max, seen.Samples, poolSize)
	}
	idle := pyOnlyIdle(t, tp, chk, 10*time.Second)
	if idle > poolSize {
		t.Errorf("%d idle proxy backends at the end, want at most %d", idle, poolSize)
	}
	ps := tp.pools.Get(pool.Key{Database: db, User: "postgres"}).Stats()
	if ps.Open > poolSize || ps.InUse != 0 {
		t.Errorf("pool at the end: %+v, want at most %d open and none in use", ps, poolSize)
	}
	st := tp.srv.Stats()
	t.Logf("%d messages by %d processes in %s (%.0f msg/s); max %d proxy backends over %d samples; pool: %d acquires, %d waited (%s total), %d dials, %d closed; %d clients",
		messages, processes, elapsed.Round(time.Millisecond), float64(messages)/elapsed.Seconds(), seen.Max, seen.Samples,
		ps.Acquires, ps.Waited, ps.WaitTime.Round(time.Millisecond), ps.Dials, ps.Closed, st.ClientsTotal)
}

var (
	pyLeakReadyLine = regexp.MustCompile(`^LEAK_READY id=(\d+) pid=(\d+)$`)
	pyLeakLine      = regexp.MustCompile(`(?m)^LEAK commit=(\w+) error=(.*)$`)
)

// TestPythonWorkerLeak: one handler leaves its session idle in transaction forever
// while the others keep working through a pool of 2. The proxy must end the leaked
// client after IdleTransactionTimeout, roll its transaction back (its row must never
// be committed, even when the application later calls commit) and reuse its backend.
func TestPythonWorkerLeak(t *testing.T) {
	needPython(t)
	const (
		messages = 200
		poolSize = 2
		idleTx   = 500 * time.Millisecond
	)
	db := newDatabase(t)
	chk := pyCreateMessages(t, db)
	// A short query_wait_timeout makes a proxy that never frees the leaked backend
	// fail the worker's messages within the test's deadline.
	tp := startProxy(t, db, proxyOpts{PoolSize: poolSize, Mode: proxy.ModeTransaction,
		Opt: proxy.Options{IdleTransactionTimeout: idleTx, QueryWaitTimeout: 3 * time.Second}})

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	// Keep the pool's other backend busy (active, not idle in transaction: the
	// timeout does not apply) with a query blocked on an advisory lock held here, so
	// that the worker's other messages can only be handled on the leaked
	// transaction's backend once the proxy has rolled it back.
	if _, err := chk.Exec(ctx, `SELECT pg_advisory_lock(7)`); err != nil {
		t.Fatal(err)
	}
	blocker := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
	type blocked struct {
		pid int
		err error
	}
	blockerDone := make(chan blocked, 1)
	go func() {
		var b blocked
		b.err = blocker.QueryRow(ctx, `SELECT pg_advisory_lock(7)::text, pg_backend_pid()`).Scan(new(string), &b.pid)
		blockerDone <- b
	}()
	unlocked := false
	unlock := func() {
		if !unlocked {
			unlocked = true
			if _, err := chk.Exec(context.Background(), `SELECT pg_advisory_unlock(7)`); err != nil {
				t.Errorf("advisory unlock: %v", err)
			}
		}
	}
	t.Cleanup(func() { // before blocker and chk are closed
		unlock()
		<-blockerDone
	})
	pgtest.Eventually(t, 10*time.Second, "a proxy backend waits for the advisory lock", func() error {
		var n int
		if err := chk.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE `+proxyBackends+` AND wait_event = 'advisory'`, tp.db).Scan(&n); err != nil || n != 1 {
			return fmt.Errorf("%d waiting, %v", n, err)
		}
		return nil
	})

	start := time.Now()
	cmd := pyWorkerCmd(ctx, t, tp, messages, 0, 1, "--leak")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errOut bytes.Buffer
	cmd.Stderr = &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 16)
	var out strings.Builder // written by the reader goroutine until lines is closed
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			out.WriteString(sc.Text() + "\n")
			lines <- sc.Text()
		}
	}()
	waited := false
	wait := func() error {
		if waited {
			return nil
		}
		waited = true
		for range lines { // drain so that Wait's pipe copy can finish
		}
		return cmd.Wait()
	}
	defer func() {
		cancel()
		_ = wait()
	}()

	// The worker handled every other message and holds the leaked session.
	var leakedID, leakedPID int
	for leakedPID == 0 {
		select {
		case l, ok := <-lines:
			if !ok {
				err := wait()
				t.Fatalf("worker ended (%v) before LEAK_READY\nstdout:\n%s\nstderr:\n%s", err, lastBytes(out.String(), 2000), lastBytes(errOut.String(), 4000))
			}
			if m := pyLeakReadyLine.FindStringSubmatch(l); m != nil {
				leakedID, _ = strconv.Atoi(m[1])
				leakedPID, _ = strconv.Atoi(m[2])
			}
		case <-ctx.Done():
			_ = wait()
			t.Fatalf("no LEAK_READY from the worker within the timeout\nstderr:\n%s", lastBytes(errOut.String(), 4000))
		}
	}
	processedAt := time.Since(start)

	// The other messages were handled while the blocker held the other backend: on the
	// leaked transaction's backend, so the proxy has already ended the leaked client.
	if n := tp.srv.Stats().IdleTxKilled; n < 1 {
		t.Errorf("IdleTxKilled = %d after the other messages were handled, want the leaked client ended", n)
	}
	unlock()
	select {
	case b := <-blockerDone:
		blockerDone <- b // for the cleanup
		if b.err != nil {
			t.Errorf("blocked query through the proxy: %v", b.err)
		} else if b.pid == leakedPID {
			t.Errorf("the blocked query ran on the leaked transaction's backend %d", b.pid)
		}
	case <-ctx.Done():
		t.Fatal("blocked query did not finish after the advisory lock was released")
	}
	// Now let the application try to commit the leaked session.
	if _, err := io.WriteString(stdin, "go\n"); err != nil {
		t.Fatalf("write to worker: %v", err)
	}
	_ = stdin.Close()
	werr := wait()
	stdoutText := out.String()
	processed, errs, retried, ok := pyParseDone(stdoutText)
	if werr != nil || !ok || processed != messages-1 || errs != 0 {
		t.Errorf("worker: exit %v, DONE line found %v: processed=%d (want %d) errors=%d retried=%d\nstdout:\n%s\nstderr:\n%s",
			werr, ok, processed, messages-1, errs, retried, lastBytes(stdoutText, 2000), lastBytes(errOut.String(), 4000))
	}
	// A handler descheduled for longer than the timeout inside its transaction (a
	// loaded machine) is legitimately ended too; the worker then retries its message.
	// Every lost connection must be such an idle-transaction kill.
	if n := tp.srv.Stats().IdleTxKilled; n != uint64(1+retried) {
		t.Errorf("IdleTxKilled = %d, want 1 (the leaked session) + %d (handlers retried after losing their connection)\nstderr:\n%s",
			n, retried, lastBytes(errOut.String(), 4000))
	} else if retried > 0 {
		t.Logf("%d handlers were idle in transaction past the timeout (machine load) and retried:\n%s", retried, lastBytes(errOut.String(), 2000))
	}
	if m := pyLeakLine.FindStringSubmatch(stdoutText); m == nil || m[1] != "failed" {
		t.Errorf("commit of the leaked session after the idle-transaction timeout: %q, want it to fail", m)
	} else {
		t.Logf("commit of the leaked session failed as expected: %s", m[2])
	}

	// Every other message is committed, the leaked one is not.
	rows, err := chk.Query(context.Background(), `SELECT id FROM messages ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		t.Fatal(err)
	}
	var want []int
	for id := range messages {
		if id != leakedID {
			want = append(want, id)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("committed messages: %d rows (leaked message %d present: %v), want the %d messages other than %d",
			len(got), leakedID, slices.Contains(got, leakedID), len(want), leakedID)
	}

	// The leaked transaction's backend was rolled back and returned to the pool, not
	// closed: two transactions open at once get both backends, one of them it.
	ps := tp.pools.Get(pool.Key{Database: db, User: "postgres"}).Stats()
	if ps.Closed != 0 || ps.Dials > poolSize {
		t.Errorf("pool: %d backends closed, %d dialed; want the leaked backend reused (0 closed, at most %d dialed)", ps.Closed, ps.Dials, poolSize)
	}
	pyOnlyIdle(t, tp, chk, 10*time.Second)
	var pids []int
	for range poolSize {
		c := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(context.Background())
		var pid int
		if err := tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
			t.Fatal(err)
		}
		pids = append(pids, pid)
	}
	if !slices.Contains(pids, leakedPID) {
		t.Errorf("backends serving %d concurrent transactions: %v; the leaked transaction's backend %d is not among them", poolSize, pids, leakedPID)
	}
	t.Logf("leaked message %d on backend %d; other %d messages processed in %s; backends now %v; pool: %d acquires, %d waited, %d dials",
		leakedID, leakedPID, messages-1, processedAt.Round(time.Millisecond), pids, ps.Acquires, ps.Waited, ps.Dials)
}
