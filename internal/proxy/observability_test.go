package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/metrics"
	"github.com/pgsidecar/pgsidecar/internal/pool"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
)

// The observability tests check what an operator sees of the two incidents that
// motivated pgsidecar (docs/design.md section 1): a leaked SQLAlchemy session holding a
// backend idle in transaction, and a pool saturated by far more clients than
// backends. Each must show up, with the right values, in the log, the admin
// console and the Prometheus metrics.

// obsRegistry gathers a proxy's metrics (Collector and Observer) as the /metrics
// handler does.
type obsRegistry struct {
	t   *testing.T
	reg *prometheus.Registry
}

func newObsRegistry(t *testing.T, tp *testProxy, obs *metrics.Observer) (*obsRegistry, *metrics.Collector) {
	t.Helper()
	col := metrics.NewCollector(tp.pools, tp.srv)
	var more []prometheus.Collector
	if obs != nil {
		more = append(more, obs)
	}
	_, reg := metrics.Handler(col, more...)
	return &obsRegistry{t: t, reg: reg}, col
}

func (r *obsRegistry) gather() pgtest.Metrics {
	r.t.Helper()
	return pgtest.Gather(r.t, r.reg)
}

// pyLeak is a running testdata/leak_session.py.
type pyLeak struct {
	pid     int       // backend pid of the leaked session
	readyAt time.Time // when the test read its LEAKED line (the INSERT had run)
	stdin   io.WriteCloser
	errOut  *bytes.Buffer
	out     *strings.Builder
	done    chan error
}

var pyLeakedLine = regexp.MustCompile(`^LEAKED pid=(\d+)$`)

// startPyLeak runs testdata/leak_session.py against tp with application_name app
// and waits until its session is idle in transaction after an INSERT tagged with
// marker.
func startPyLeak(t *testing.T, ctx context.Context, tp *testProxy, app, marker string) *pyLeak {
	t.Helper()
	script, err := filepath.Abs(filepath.Join("testdata", "leak_session.py"))
	if err != nil {
		t.Fatal(err)
	}
	dsn := fmt.Sprintf("postgresql+psycopg2://postgres@%s/%s?sslmode=disable&application_name=%s", tp.addr, tp.db, app)
	cmd := exec.CommandContext(ctx, pythonBin, script, "--dsn", dsn, "--marker", marker)
	cmd.Env = append(os.Environ(), "PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1")
	cmd.WaitDelay = 5 * time.Second
	p := &pyLeak{errOut: &bytes.Buffer{}, out: &strings.Builder{}, done: make(chan error, 1)}
	cmd.Stderr = p.errOut
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 4)
	var outMu sync.Mutex
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			outMu.Lock()
			p.out.WriteString(sc.Text() + "\n")
			outMu.Unlock()
			select {
			case lines <- sc.Text():
			default:
			}
		}
		close(lines)
		p.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = p.stdin.Close()
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				err := <-p.done
				p.done <- err
				outMu.Lock()
				defer outMu.Unlock()
				t.Fatalf("leak_session.py ended (%v) before LEAKED\nstdout:\n%s\nstderr:\n%s", err, p.out.String(), lastBytes(p.errOut.String(), 4000))
			}
			if m := pyLeakedLine.FindStringSubmatch(l); m != nil {
				p.readyAt = time.Now()
				p.pid, _ = strconv.Atoi(m[1])
				return p
			}
		case <-ctx.Done():
			t.Fatalf("no LEAKED line from leak_session.py\nstderr:\n%s", lastBytes(p.errOut.String(), 4000))
		}
	}
}

// finish closes the script's stdin and waits for it to exit.
func (p *pyLeak) finish(t *testing.T) {
	t.Helper()
	_ = p.stdin.Close()
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup
		if err != nil {
			t.Logf("leak_session.py exited with %v; stderr:\n%s", err, lastBytes(p.errOut.String(), 2000))
		}
	case <-time.After(15 * time.Second):
		t.Fatal("leak_session.py did not exit after its stdin was closed")
	}
}

// TestObservabilityPythonLeak reproduces the leak of docs/design.md section 1 with
// SQLAlchemy + psycopg2: a Session that ran an INSERT and was never committed nor
// closed. With a leak threshold of 1s it must appear within about a second in the
// log, SHOW LEAKS and the metrics; with an idle-transaction timeout of 1s the proxy
// must end it, roll it back and free its backend.
func TestObservabilityPythonLeak(t *testing.T) {
	needPython(t)
	const (
		threshold = time.Second
		app       = "orders-leaker"
		// Detection may take threshold + one watcher period (threshold/2); the rest is
		// polling and scheduling slack on a loaded 2-core machine.
		maxDetect = 2*time.Second + 500*time.Millisecond
	)
	db := newDatabase(t)
	chk := direct(t, db)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := chk.Exec(ctx, `CREATE TABLE leaked(id serial PRIMARY KEY, note text NOT NULL)`); err != nil {
		t.Fatal(err)
	}

	t.Run("suspect", func(t *testing.T) {
		logs := newRecordHandler()
		obs := metrics.NewObserver(10, false)
		tp := startProxy(t, db, proxyOpts{PoolSize: 2, Opt: proxy.Options{
			LeakThreshold: threshold,
			Logger:        slog.New(logs),
			Observer:      obs,
			AdminUsers:    []string{"postgres"},
		}})
		reg, _ := newObsRegistry(t, tp, obs)
		con := mustConsole(t, tp)
		const marker = "obs_leak_marker_suspect"

		p := startPyLeak(t, ctx, tp, app, marker)
		var inLog, inConsole, inMetrics time.Duration
		var logRec, leakRow map[string]string
		pgtest.Eventually(t, 10*time.Second, "leak suspect in log, SHOW LEAKS and metrics", func() error {
			now := time.Since(p.readyAt)
			if inLog == 0 {
				if recs := logs.find("leak suspect"); len(recs) > 0 {
					inLog, logRec = now, recs[0]
				}
			}
			if inConsole == 0 {
				for _, r := range consoleRows(t, con, "SHOW LEAKS") {
					if r["suspect"] == "t" {
						inConsole, leakRow = now, r
					}
				}
			}
			if inMetrics == 0 {
				ms := reg.gather()
				if v, _ := ms.Value("pgsidecar_leak_suspects", nil); v >= 1 {
					inMetrics = now
				}
			}
			if inLog == 0 || inConsole == 0 || inMetrics == 0 {
				return fmt.Errorf("seen after %v: log %v, console %v, metrics %v", now, inLog, inConsole, inMetrics)
			}
			return nil
		})
		t.Logf("leak suspect seen, after the session's INSERT: log %v, SHOW LEAKS %v, metrics %v",
			inLog.Round(time.Millisecond), inConsole.Round(time.Millisecond), inMetrics.Round(time.Millisecond))
		for what, d := range map[string]time.Duration{"log": inLog, "SHOW LEAKS": inConsole, "metrics": inMetrics} {
			if d > maxDetect {
				t.Errorf("leak suspect in the %s %v after the leak, want within %v (threshold %v)", what, d, maxDetect, threshold)
			}
		}

		// (a) The log record identifies the leaking code.
		if recs := logs.find("leak suspect"); len(recs) != 1 {
			t.Errorf("%d leak suspect records, want 1: %v", len(recs), recs)
		}
		age, err := time.ParseDuration(logRec["age"])
		if logRec["application_name"] != app || !strings.Contains(logRec["last_statement"], marker) ||
			!strings.Contains(logRec["last_statement"], "INSERT INTO leaked") || logRec["user"] != "postgres" ||
			logRec["database"] != db || logRec["state"] != "idle in transaction" || logRec["server_pid"] != strconv.Itoa(p.pid) ||
			err != nil || age < threshold {
			t.Errorf("leak suspect record %v (age %v, %v); want application_name %q, the marker %q, server_pid %d, age >= %v",
				logRec, age, err, app, marker, p.pid, threshold)
		}
		// (b) SHOW LEAKS.
		ageS, err := strconv.ParseFloat(leakRow["age_seconds"], 64)
		if leakRow["application_name"] != app || !strings.Contains(leakRow["last_statement"], marker) ||
			leakRow["state"] != proxy.StateIdleInTransaction || leakRow["user"] != "postgres" || leakRow["database"] != db ||
			leakRow["server_pid"] != strconv.Itoa(p.pid) || err != nil || ageS < threshold.Seconds() {
			t.Errorf("SHOW LEAKS row %v; want application_name %q, the marker, server_pid %d, age >= %v", leakRow, app, p.pid, threshold)
		}
		if rows := consoleRows(t, con, "SHOW LEAKS"); len(rows) != 1 {
			t.Errorf("SHOW LEAKS has %d rows, want 1: %v", len(rows), rows)
		}
		// (c) Metrics.
		ms := reg.gather()
		if v, n := ms.Value("pgsidecar_leak_suspects", nil); v != 1 || n != 1 {
			t.Errorf("pgsidecar_leak_suspects = %v (%d series), want 1", v, n)
		}
		if v, _ := ms.Value("pgsidecar_leak_suspects_detected_total", nil); v != 1 {
			t.Errorf("pgsidecar_leak_suspects_detected_total = %v, want 1", v)
		}
		if v, n := ms.Value("pgsidecar_oldest_idle_transaction_seconds", nil); v < threshold.Seconds() || n != 1 {
			t.Errorf("pgsidecar_oldest_idle_transaction_seconds = %v (%d series), want >= %v", v, n, threshold.Seconds())
		}
		if v, _ := ms.Value("pgsidecar_clients", map[string]string{"state": proxy.StateIdleInTransaction}); v != 1 {
			t.Errorf("pgsidecar_clients{state=idle_in_transaction} = %v, want 1", v)
		}
		if v, _ := ms.Value("pgsidecar_clients", map[string]string{"database": db, "state": proxy.StateIdleInTransaction}); v != 1 {
			t.Errorf("pgsidecar_clients{database=%q,state=idle_in_transaction} = %v, want 1", db, v)
		}
		// Without an idle-transaction timeout the leak goes on until the process
		// exits; then its transaction is rolled back as a client disconnect.
		p.finish(t)
		pgtest.Eventually(t, 10*time.Second, "leak ended by the client's exit", func() error {
			ms := reg.gather()
			if v, _ := ms.Value("pgsidecar_leak_suspects", nil); v != 0 {
				return fmt.Errorf("leak_suspects = %v", v)
			}
			if v, _ := ms.Value("pgsidecar_forced_rollbacks_total", map[string]string{"reason": "client_disconnect"}); v != 1 {
				return fmt.Errorf("forced_rollbacks_total{reason=client_disconnect} = %v", v)
			}
			return nil
		})
		var n int
		if err := chk.QueryRow(ctx, `SELECT count(*) FROM leaked WHERE note = $1`, marker).Scan(&n); err != nil || n != 0 {
			t.Errorf("rows of the leaked session committed: %d (%v), want 0", n, err)
		}
	})

	t.Run("idle_transaction_timeout", func(t *testing.T) {
		const marker = "obs_leak_marker_timeout"
		obs := metrics.NewObserver(10, false)
		tp := startProxy(t, db, proxyOpts{PoolSize: 1, Opt: proxy.Options{
			IdleTransactionTimeout: time.Second,
			Observer:               obs,
		}})
		reg, _ := newObsRegistry(t, tp, obs)
		pl := tp.pools.Get(pool.Key{Database: db, User: "postgres"})

		p := startPyLeak(t, ctx, tp, app, marker)
		if st := pl.Stats(); st.InUse != 1 {
			t.Errorf("pool while leaked: %+v, want the only backend in use", st)
		}
		var freedAfter time.Duration
		pgtest.Eventually(t, 10*time.Second, "leak ended by the idle-transaction timeout", func() error {
			if st := pl.Stats(); st.InUse != 0 {
				return fmt.Errorf("pool %+v", st)
			}
			v, _ := reg.gather().Value("pgsidecar_forced_rollbacks_total", map[string]string{"reason": "idle_transaction_timeout"})
			if v != 1 {
				return fmt.Errorf("forced_rollbacks_total{reason=idle_transaction_timeout} = %v", v)
			}
			freedAfter = time.Since(p.readyAt)
			return nil
		})
		t.Logf("leaked backend freed %v after the session's INSERT (timeout 1s)", freedAfter.Round(time.Millisecond))
		if freedAfter > maxDetect {
			t.Errorf("backend freed %v after the leak, want about 1s", freedAfter)
		}
		// The Python process is still alive, holding its (ended) session: another
		// client gets the pool's only backend, the leaked one, rolled back.
		c := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
		var pid int
		var inTx bool
		if err := c.QueryRow(ctx, `SELECT pg_backend_pid(), now() <> statement_timestamp()`).Scan(&pid, &inTx); err != nil {
			t.Fatalf("another client on the pool of 1: %v", err)
		}
		if pid != p.pid || inTx {
			t.Errorf("another client got backend %d (inside an older transaction: %v), want the leaked backend %d rolled back", pid, inTx, p.pid)
		}
		var n int
		if err := c.QueryRow(ctx, `SELECT count(*) FROM leaked WHERE note = $1`, marker).Scan(&n); err != nil || n != 0 {
			t.Errorf("through the proxy: %d rows of the leaked session visible (%v), want 0", n, err)
		}
		if err := chk.QueryRow(ctx, `SELECT count(*) FROM leaked WHERE note = $1`, marker).Scan(&n); err != nil || n != 0 {
			t.Errorf("rows of the leaked session committed: %d (%v), want 0", n, err)
		}
		ms := reg.gather()
		for reason, want := range map[string]float64{"idle_transaction_timeout": 1, "client_disconnect": 0, "transaction_timeout": 0, "shutdown": 0} {
			if v, _ := ms.Value("pgsidecar_forced_rollbacks_total", map[string]string{"reason": reason}); v != want {
				t.Errorf("pgsidecar_forced_rollbacks_total{reason=%q} = %v, want %v", reason, v, want)
			}
		}
		if v, _ := ms.Value("pgsidecar_idle_transaction_timeouts_total", nil); v != 1 {
			t.Errorf("pgsidecar_idle_transaction_timeouts_total = %v, want 1", v)
		}
		if v, _ := ms.Value("pgsidecar_clients", map[string]string{"state": proxy.StateIdleInTransaction}); v != 0 {
			t.Errorf("pgsidecar_clients{state=idle_in_transaction} = %v after the timeout, want 0", v)
		}
		p.finish(t)
		if v, _ := reg.gather().Value("pgsidecar_forced_rollbacks_total", map[string]string{"reason": "client_disconnect"}); v != 0 {
			t.Errorf("forced_rollbacks_total{reason=client_disconnect} = %v after the ended client exited, want 0", v)
		}
	})
}

// TestObservabilitySaturation: 100 clients over a pool of 2 backends must show as
// waiting clients, a non-zero max wait, a wait histogram with one observation per
// transaction, exhausted-pool time; and clients that give up waiting as
// query_wait_timeout errors and wait-timeout counts.
func TestObservabilitySaturation(t *testing.T) {
	const (
		clients  = 100
		txEach   = 5
		poolSize = 2
		total    = clients * txEach
	)
	db := newDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	t.Run("saturated", func(t *testing.T) {
		obs := metrics.NewObserver(10, false)
		tp := startProxy(t, db, proxyOpts{PoolSize: poolSize, Opt: proxy.Options{Observer: obs}})
		reg, _ := newObsRegistry(t, tp, obs)
		conns := make([]*pgx.Conn, clients)
		for i := range conns {
			conns[i] = tp.connect(t, pgx.QueryExecModeSimpleProtocol)
		}
		errs := make(chan error, clients)
		done := make(chan struct{})
		var wg sync.WaitGroup
		start := time.Now()
		for i, c := range conns {
			wg.Go(func() {
				for j := range txEach {
					if err := obsSleepTx(ctx, c); err != nil {
						errs <- fmt.Errorf("client %d tx %d: %w", i, j, err)
						return
					}
				}
			})
		}
		go func() { wg.Wait(); close(done) }()

		// Sample the collector for as long as the workload runs.
		var maxWaiting, maxMaxWait float64
		samples := 0
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
	sampling:
		for {
			ms := reg.gather()
			w, _ := ms.Value("pgsidecar_clients_waiting", map[string]string{"database": db})
			mw, _ := ms.Value("pgsidecar_pool_maxwait_seconds", map[string]string{"database": db})
			maxWaiting, maxMaxWait = max(maxWaiting, w), max(maxMaxWait, mw)
			samples++
			select {
			case <-done:
				break sampling
			case <-ctx.Done():
				t.Fatal("workload did not finish")
			case <-tick.C:
			}
		}
		// With ~98 clients queued for backends each held ~10ms, the oldest waiter is
		// hundreds of ms old most of the time: 50ms is a loose floor. At the start
		// the pool has the one backend of the route's first login; while the
		// second is dialed (a TLS handshake under -race takes long enough for
		// the sampler to see it), 99 clients wait.
		if maxWaiting <= 0 || maxWaiting > clients-1 || maxMaxWait < 0.05 {
			t.Errorf("over %d samples while the workload ran: max pgsidecar_clients_waiting %v (want 1..%d), max pgsidecar_pool_maxwait_seconds %v (want >= 0.05)",
				samples, maxWaiting, clients-1, maxMaxWait)
		}
		elapsed := time.Since(start)
		close(errs)
		for err := range errs {
			t.Error(err)
		}

		ms := reg.gather()
		count, sum, buckets := ms.Histogram("pgsidecar_wait_seconds", nil)
		var le10ms float64 = math.Inf(1) // smallest bucket bound >= 10ms
		for b := range buckets {
			if b >= 0.01 && b < le10ms {
				le10ms = b
			}
		}
		above := count - buckets[le10ms]
		if count < total || sum <= 0 || above == 0 {
			t.Errorf("pgsidecar_wait_seconds: %d samples (want >= %d), sum %v (want > 0), %d above %vs (want > 0); buckets %v",
				count, total, sum, above, le10ms, buckets)
		}
		if v, _ := ms.Value("pgsidecar_transactions_total", map[string]string{"database": db}); v != total {
			t.Errorf("pgsidecar_transactions_total = %v, want %d", v, total)
		}
		if v, _ := ms.Value("pgsidecar_pool_exhausted_seconds_total", map[string]string{"database": db}); v <= 0 {
			t.Errorf("pgsidecar_pool_exhausted_seconds_total = %v, want > 0", v)
		}
		waits, _ := ms.Value("pgsidecar_pool_waits_total", map[string]string{"database": db})
		if waits <= 0 || waits > total {
			t.Errorf("pgsidecar_pool_waits_total = %v, want 1..%d", waits, total)
		}
		if v, _ := ms.Value("pgsidecar_clients_waiting", map[string]string{"database": db}); v != 0 {
			t.Errorf("pgsidecar_clients_waiting = %v after the workload, want 0", v)
		}
		if v, _ := ms.Value("pgsidecar_pool_wait_timeouts_total", nil); v != 0 {
			t.Errorf("pgsidecar_pool_wait_timeouts_total = %v, want 0", v)
		}
		t.Logf("%d transactions by %d clients over %d backends in %v; max clients_waiting %v, max pool_maxwait %.3fs over %d samples; wait histogram %d samples, mean %.1fms, %d above %vs; %v waits",
			total, clients, poolSize, elapsed.Round(time.Millisecond), maxWaiting, maxMaxWait, samples, count, 1000*sum/float64(count), above, le10ms, waits)
	})

	t.Run("wait_timeouts", func(t *testing.T) {
		const (
			waiters = 3
			timeout = 200 * time.Millisecond
		)
		tp := startProxy(t, db, proxyOpts{PoolSize: 1, Opt: proxy.Options{QueryWaitTimeout: timeout}})
		reg, _ := newObsRegistry(t, tp, nil)
		holder := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
		tx, err := holder.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		conns := make([]*pgx.Conn, waiters)
		for i := range conns {
			conns[i] = tp.connect(t, pgx.QueryExecModeSimpleProtocol)
		}
		type res struct {
			err error
			d   time.Duration
		}
		results := make(chan res, waiters)
		for _, c := range conns {
			go func() {
				start := time.Now()
				_, err := c.Exec(ctx, "SELECT 1")
				results <- res{err, time.Since(start)}
			}()
		}
		for range waiters {
			r := <-results
			if pgCode(r.err) != "57014" || !strings.Contains(r.err.Error(), "query_wait_timeout") {
				t.Errorf("query while the only backend is held: %v, want SQLSTATE 57014 query_wait_timeout", r.err)
			}
			if r.d < timeout || r.d > 10*time.Second {
				t.Errorf("query failed after %v, want after the %v wait timeout", r.d, timeout)
			}
		}
		ms := reg.gather()
		if v, _ := ms.Value("pgsidecar_pool_wait_timeouts_total", map[string]string{"database": db, "user": "postgres"}); v != waiters {
			t.Errorf("pgsidecar_pool_wait_timeouts_total = %v, want %d", v, waiters)
		}
		if v, _ := ms.Value("pgsidecar_clients_waiting", nil); v != 0 {
			t.Errorf("pgsidecar_clients_waiting = %v after the timeouts, want 0", v)
		}
		// The holder is unaffected; once it commits the others are served.
		if err := tx.Commit(ctx); err != nil {
			t.Fatalf("holder commit: %v", err)
		}
		for i, c := range conns {
			if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
				t.Errorf("client %d after the holder committed: %v", i, err)
			}
		}
		if v, _ := reg.gather().Value("pgsidecar_pool_wait_timeouts_total", nil); v != waiters {
			t.Errorf("pgsidecar_pool_wait_timeouts_total = %v at the end, want %d", v, waiters)
		}
	})
}

// obsSleepTx runs one short transaction.
func obsSleepTx(ctx context.Context, c *pgx.Conn) error {
	tx, err := c.Begin(ctx)
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, "SELECT pg_sleep(0.01)"); err != nil {
		_ = tx.Rollback(ctx)
		return err
	}
	return tx.Commit(ctx)
}

// TestObservabilityLint: the metrics follow Prometheus naming and help
// conventions (promlint) once every family has series.
func TestObservabilityLint(t *testing.T) {
	db := newDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	obs := metrics.NewObserver(10, false)
	tp := startProxy(t, db, proxyOpts{PoolSize: 1, Opt: proxy.Options{Observer: obs}})
	reg, col := newObsRegistry(t, tp, obs)

	// Traffic: transactions, a wait, an idle-in-transaction episode.
	a := connectApp(t, tp, "lint_a")
	b := connectApp(t, tp, "lint_b")
	tx, err := a.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := b.Exec(ctx, "SELECT 2")
		done <- err
	}()
	pgtest.Eventually(t, 5*time.Second, "b waiting", func() error {
		if v, _ := reg.gather().Value("pgsidecar_clients_waiting", nil); v != 1 {
			return fmt.Errorf("clients_waiting = %v", v)
		}
		return nil
	})
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := obsSleepTx(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	ms := reg.gather()
	for _, name := range []string{"pgsidecar_wait_seconds", "pgsidecar_transaction_hold_seconds", "pgsidecar_idle_transaction_seconds"} {
		if n, _, _ := ms.Histogram(name, nil); n == 0 {
			t.Errorf("%s has no samples after the traffic", name)
		}
	}

	for name, c := range map[string]prometheus.Collector{"Collector": col, "Observer": obs} {
		problems, err := testutil.CollectAndLint(c)
		if err != nil {
			t.Errorf("%s: CollectAndLint: %v", name, err)
			continue
		}
		for _, p := range problems {
			t.Errorf("%s: lint problem: %s: %s", name, p.Metric, p.Text)
		}
	}
}
