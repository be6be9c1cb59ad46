package proxy_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
)

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
