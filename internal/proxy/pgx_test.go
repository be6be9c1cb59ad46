package proxy_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
)

var allModes = []pgx.QueryExecMode{
	pgx.QueryExecModeCacheStatement,
	pgx.QueryExecModeCacheDescribe,
	pgx.QueryExecModeDescribeExec,
	pgx.QueryExecModeExec,
	pgx.QueryExecModeSimpleProtocol,
}

// Modes that use only the unnamed statement: they work in transaction mode without
// prepared-statement tracking (DescribeExec parses in one Sync and binds in the next;
// the proxy holds the backend from that Parse to its Bind).
var oneSyncModes = []pgx.QueryExecMode{
	pgx.QueryExecModeSimpleProtocol,
	pgx.QueryExecModeExec,
	pgx.QueryExecModeCacheDescribe,
	pgx.QueryExecModeDescribeExec,
}

// runWorkers runs workers concurrent clients, each doing txns transactions that
// insert a row, read it back inside the transaction, and commit (every 7th rolls
// back), plus an autocommit query. It returns the number of committed rows.
func runWorkers(t *testing.T, tp *testProxy, mode pgx.QueryExecMode, table string, workers, txns int) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	committed := make([]int, workers)
	for w := 0; w < workers; w++ {
		c := tp.connect(t, mode)
		wg.Add(1)
		go func(w int, c *pgx.Conn) {
			defer wg.Done()
			for i := 0; i < txns; i++ {
				id := w*100000 + i
				tx, err := c.Begin(ctx)
				if err != nil {
					errs <- fmt.Errorf("worker %d begin: %w", w, err)
					return
				}
				if _, err := tx.Exec(ctx, "INSERT INTO "+table+" (id, worker, note) VALUES ($1, $2, $3)", id, w, fmt.Sprintf("n%d", i)); err != nil {
					errs <- fmt.Errorf("worker %d insert: %w", w, err)
					return
				}
				var got int
				var note string
				if err := tx.QueryRow(ctx, "SELECT worker, note FROM "+table+" WHERE id = $1", id).Scan(&got, &note); err != nil || got != w || note != fmt.Sprintf("n%d", i) {
					errs <- fmt.Errorf("worker %d read back: %d %q %v", w, got, note, err)
					return
				}
				if i%7 == 6 {
					err = tx.Rollback(ctx)
				} else {
					err = tx.Commit(ctx)
					committed[w]++
				}
				if err != nil {
					errs <- fmt.Errorf("worker %d end: %w", w, err)
					return
				}
				var one int
				if err := c.QueryRow(ctx, "SELECT $1::int + 1", i).Scan(&one); err != nil || one != i+1 {
					errs <- fmt.Errorf("worker %d autocommit: %d %v", w, one, err)
					return
				}
			}
		}(w, c)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	n := 0
	for _, k := range committed {
		n += k
	}
	return n
}

func createTable(t *testing.T, db, table string) {
	t.Helper()
	d := direct(t, db)
	if _, err := d.Exec(context.Background(), "CREATE TABLE "+table+" (id int PRIMARY KEY, worker int NOT NULL, note text)"); err != nil {
		t.Fatal(err)
	}
}

func checkRows(t *testing.T, db, table string, want int) {
	t.Helper()
	d := direct(t, db)
	var n, distinct int
	if err := d.QueryRow(context.Background(), "SELECT count(*), count(DISTINCT id) FROM "+table).Scan(&n, &distinct); err != nil {
		t.Fatal(err)
	}
	if n != want || distinct != want {
		t.Fatalf("%s has %d rows (%d distinct), want %d", table, n, distinct, want)
	}
	// Rolled-back rows (every 7th) must be absent.
	var rolledBack int
	if err := d.QueryRow(context.Background(), "SELECT count(*) FROM "+table+" WHERE (id % 100000) % 7 = 6").Scan(&rolledBack); err != nil {
		t.Fatal(err)
	}
	if rolledBack != 0 {
		t.Fatalf("%d rolled-back rows are visible", rolledBack)
	}
}

func TestPgxTransactionMode(t *testing.T) {
	db := newDatabase(t)
	tp := startProxy(t, db, proxyOpts{PoolSize: 2, Mode: proxy.ModeTransaction})
	for _, mode := range oneSyncModes {
		t.Run(mode.String(), func(t *testing.T) {
			table := "tx_" + strings.ReplaceAll(mode.String(), " ", "_")
			createTable(t, db, table)
			n := runWorkers(t, tp, mode, table, 10, 40)
			checkRows(t, db, table, n)
			st := tp.pools.Pools()[0].Pool.Stats()
			if st.Open > 2 {
				t.Fatalf("pool opened %d backends, limit 2", st.Open)
			}
		})
	}
	chk := direct(t, db)
	pgtest.Eventually(t, 5*time.Second, "proxy backends idle", func() error {
		b := tp.serverBackends(t, chk)
		if len(b) != 1 || b["idle"] == 0 || b["idle"] > 2 {
			return fmt.Errorf("backends by state: %v", b)
		}
		return nil
	})
}

func TestPgxSessionMode(t *testing.T) {
	db := newDatabase(t)
	tp := startProxy(t, db, proxyOpts{PoolSize: 10, Mode: proxy.ModeSession})
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			table := "sess_" + strings.ReplaceAll(mode.String(), " ", "_")
			createTable(t, db, table)
			n := runWorkers(t, tp, mode, table, 10, 30)
			checkRows(t, db, table, n)
		})
	}
}

// In session mode a client keeps its backend, so session state stays, and the
// backend is reset with DISCARD ALL before the next client gets it.
func TestSessionModeResets(t *testing.T) {
	db := newDatabase(t)
	tp := startProxy(t, db, proxyOpts{PoolSize: 1, Mode: proxy.ModeSession})
	ctx := context.Background()
	a := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
	var pid1, pid2 int
	if _, err := a.Exec(ctx, "SET statement_timeout = '1234ms'"); err != nil {
		t.Fatal(err)
	}
	if err := a.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid1); err != nil {
		t.Fatal(err)
	}
	var st string
	if err := a.QueryRow(ctx, "SHOW statement_timeout").Scan(&st); err != nil || st != "1234ms" {
		t.Fatalf("statement_timeout in session = %q, %v", st, err)
	}
	a.Close(ctx)
	b := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
	if err := b.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid2); err != nil {
		t.Fatal(err)
	}
	if pid1 != pid2 {
		t.Fatalf("pool of one gave a different backend: %d then %d", pid1, pid2)
	}
	if err := b.QueryRow(ctx, "SHOW statement_timeout").Scan(&st); err != nil || st != "0" {
		t.Fatalf("next client sees statement_timeout %q (%v), want the reset value 0", st, err)
	}
}

// Pipelined batches with several Syncs in flight, and Flush instead of Sync.
func TestPipelineAndFlush(t *testing.T) {
	db := newDatabase(t)
	tp := startProxy(t, db, proxyOpts{PoolSize: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		c := tp.connect(t, pgx.QueryExecModeExec)
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 30; i++ {
				p := c.PgConn().StartPipeline(ctx)
				for k := 0; k < 3; k++ {
					p.SendQueryParams("SELECT $1::int * 10", [][]byte{[]byte(fmt.Sprint(k))}, nil, nil, nil)
					if err := p.Sync(); err != nil {
						t.Error(err)
						return
					}
				}
				for k := 0; k < 3; k++ {
					res, err := p.GetResults()
					if err != nil {
						t.Errorf("worker %d results %d: %v", w, k, err)
						return
					}
					rr := res.(*pgconn.ResultReader).Read()
					if rr.Err != nil || len(rr.Rows) != 1 || string(rr.Rows[0][0]) != fmt.Sprint(k*10) {
						t.Errorf("worker %d query %d: %v %q", w, k, rr.Err, rr.Rows)
						return
					}
					if _, err := p.GetResults(); err != nil { // the PipelineSync
						t.Errorf("worker %d sync %d: %v", w, k, err)
						return
					}
				}
				if err := p.Close(); err != nil {
					t.Errorf("worker %d close pipeline: %v", w, err)
					return
				}
				// A batch in pgx (one Sync) with an error halfway: later statements skipped.
				b := &pgx.Batch{}
				b.Queue("SELECT 1")
				b.Queue("SELECT 1/0")
				b.Queue("SELECT 3")
				br := c.SendBatch(ctx, b)
				var one int
				if err := br.QueryRow().Scan(&one); err != nil || one != 1 {
					t.Errorf("batch first: %d %v", one, err)
				}
				if _, err := br.Exec(); pgCode(err) != "22012" {
					t.Errorf("batch division by zero: %v", err)
				}
				br.Close()
				var x int
				if err := c.QueryRow(ctx, "SELECT 7").Scan(&x); err != nil || x != 7 {
					t.Errorf("after failed batch: %d %v", x, err)
				}
			}
		}(w)
	}
	wg.Wait()
	// Flush: Parse + Describe + Flush gets its answers before any Sync is sent.
	c := tp.connect(t, pgx.QueryExecModeExec)
	sd, err := c.PgConn().Prepare(ctx, "", "SELECT $1::text AS t", nil)
	if err != nil || len(sd.Fields) != 1 || sd.Fields[0].Name != "t" {
		t.Fatalf("prepare via proxy: %v %v", sd, err)
	}
}

// COPY FROM STDIN and COPY TO STDOUT through a pool of one, concurrently.
func TestCopy(t *testing.T) {
	db := newDatabase(t)
	createTable(t, db, "c")
	tp := startProxy(t, db, proxyOpts{PoolSize: 1})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	const workers, rows = 4, 5000
	for w := 0; w < workers; w++ {
		c := tp.connect(t, pgx.QueryExecModeExec)
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			src := make([][]any, rows)
			for i := range src {
				src[i] = []any{w*rows + i, w, strings.Repeat("x", i%100)}
			}
			n, err := c.CopyFrom(ctx, pgx.Identifier{"c"}, []string{"id", "worker", "note"}, pgx.CopyFromRows(src))
			if err != nil || n != rows {
				t.Errorf("copy from worker %d: %d %v", w, n, err)
				return
			}
			var sb strings.Builder
			tag, err := c.PgConn().CopyTo(ctx, &sb, fmt.Sprintf("COPY (SELECT id FROM c WHERE worker = %d ORDER BY id) TO STDOUT", w))
			if err != nil || tag.RowsAffected() != rows || strings.Count(sb.String(), "\n") != rows {
				t.Errorf("copy to worker %d: %v %v", w, tag, err)
			}
			// A failing COPY FROM (duplicate key) leaves the client usable.
			_, err = c.CopyFrom(ctx, pgx.Identifier{"c"}, []string{"id", "worker", "note"}, pgx.CopyFromRows(src[:1]))
			if pgCode(err) != "23505" {
				t.Errorf("duplicate copy: %v", err)
			}
			var x int
			if err := c.QueryRow(ctx, "SELECT 5").Scan(&x); err != nil || x != 5 {
				t.Errorf("after failed copy: %d %v", x, err)
			}
		}(w)
	}
	wg.Wait()
	var n int
	if err := direct(t, db).QueryRow(ctx, "SELECT count(*) FROM c").Scan(&n); err != nil || n != workers*rows {
		t.Fatalf("rows %d %v, want %d", n, err, workers*rows)
	}
}

// Errors outside and inside transactions leave the client (and the backend) usable.
func TestErrors(t *testing.T) {
	db := newDatabase(t)
	tp := startProxy(t, db, proxyOpts{PoolSize: 1})
	ctx := context.Background()
	for _, mode := range oneSyncModes {
		c := tp.connect(t, mode)
		if _, err := c.Exec(ctx, "SELECT * FROM nope"); pgCode(err) != "42P01" {
			t.Fatalf("%v: missing table error = %v", mode, err)
		}
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "SELECT 1/0"); pgCode(err) != "22012" {
			t.Fatalf("%v: division error = %v", mode, err)
		}
		if _, err := tx.Exec(ctx, "SELECT 1"); pgCode(err) != "25P02" {
			t.Fatalf("%v: in failed transaction = %v", mode, err)
		}
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		var x int
		if err := c.QueryRow(ctx, "SELECT 9").Scan(&x); err != nil || x != 9 {
			t.Fatalf("%v: after rollback: %d %v", mode, x, err)
		}
	}
}
