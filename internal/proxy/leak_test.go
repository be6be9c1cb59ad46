package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
)

// recordHandler keeps the log records of a proxy under test.
type recordHandler struct {
	mu   *sync.Mutex
	recs *[]slog.Record
}

func newRecordHandler() recordHandler {
	return recordHandler{mu: &sync.Mutex{}, recs: &[]slog.Record{}}
}

func (h recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h recordHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	*h.recs = append(*h.recs, r.Clone())
	h.mu.Unlock()
	return nil
}
func (h recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h recordHandler) WithGroup(string) slog.Handler      { return h }

// find returns the attributes of the records whose message starts with msg.
func (h recordHandler) find(msg string) []map[string]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []map[string]string
	for _, r := range *h.recs {
		if !strings.HasPrefix(r.Message, msg) {
			continue
		}
		m := map[string]string{}
		r.Attrs(func(a slog.Attr) bool {
			m[a.Key] = a.Value.String()
			return true
		})
		out = append(out, m)
	}
	return out
}

// A client idle in a transaction longer than the leak threshold is logged once
// per episode with what identifies it (application_name, its last statement,
// age) and counted; it stops being a suspect when it ends the transaction. A
// client that leaves mid-transaction counts as a forced rollback.
func TestLeakSuspect(t *testing.T) {
	db := newDatabase(t)
	logs := newRecordHandler()
	tp := startProxy(t, db, proxyOpts{PoolSize: 2, Opt: proxy.Options{
		LeakThreshold: 200 * time.Millisecond,
		Logger:        slog.New(logs),
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	leaky := connectApp(t, tp, "orders-worker")
	busy := tp.connect(t, pgx.QueryExecModeSimpleProtocol)

	tx, err := leaky.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 'leaky statement marker' /* consume_message */"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	// Another client keeps working meanwhile and is never a suspect.
	other := pgtest.NewCrowd(t, "busy client")
	other.Go(func(ctx context.Context, _ int) error {
		if _, err := busy.Exec(ctx, "SELECT 1"); err != nil {
			return pgtest.Quit(err)
		}
		return nil
	})
	pgtest.Eventually(t, 10*time.Second, "leak suspect reported", func() error {
		st := tp.srv.LeakStats()
		if st.Suspects != 1 || st.Detected != 1 {
			return fmt.Errorf("LeakStats = %+v", st)
		}
		if len(logs.find("leak suspect")) != 1 {
			return errors.New("no log line yet")
		}
		return nil
	})
	if age := time.Since(start); age < 200*time.Millisecond {
		t.Errorf("reported after %v, before the 200ms threshold", age)
	}
	// The statement is shown without its literal (sqlscan.Normalize): its
	// comment and shape remain.
	const shown = "SELECT $1 /* consume_message */"
	rec := logs.find("leak suspect")[0]
	if rec["application_name"] != "orders-worker" || rec["last_statement"] != shown ||
		rec["user"] != "postgres" || rec["database"] != db || rec["client"] == "" || rec["state"] != "idle in transaction" {
		t.Errorf("leak suspect log line %v", rec)
	}
	if ls := tp.srv.Leaks(); len(ls) != 1 || !ls[0].Suspect || ls[0].Application != "orders-worker" ||
		ls[0].LastStatement != shown || ls[0].ServerPID == 0 || ls[0].ClientID == 0 {
		t.Errorf("Leaks() = %+v", ls)
	}
	if st := tp.srv.LeakStats(); st.OldestIdleTx < 200*time.Millisecond {
		t.Errorf("OldestIdleTx = %v, want >= 200ms", st.OldestIdleTx)
	}
	// Still idle a while later: reported once per episode.
	time.Sleep(500 * time.Millisecond) // lets several watcher ticks pass; the assertion is on their count
	if n := len(logs.find("leak suspect")); n != 1 {
		t.Errorf("%d leak suspect log lines for one idle episode, want 1", n)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	pgtest.Eventually(t, 5*time.Second, "suspect gone after commit", func() error {
		if st := tp.srv.LeakStats(); st.Suspects != 0 || st.OldestIdleTx != 0 {
			return fmt.Errorf("LeakStats = %+v", st)
		}
		return nil
	})
	if other.Finish(t); len(other.Failures()) > 0 {
		t.FailNow() // Finish reported the busy client's error
	}

	// Leaving mid-transaction: a forced rollback with its own reason.
	gone := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
	if _, err := gone.Exec(ctx, "BEGIN; SELECT 1"); err != nil {
		t.Fatal(err)
	}
	gone.PgConn().Conn().Close()
	pgtest.Eventually(t, 5*time.Second, "forced rollback counted", func() error {
		if n := tp.srv.LeakStats().ForcedRollbacks["client_disconnect"]; n != 1 {
			return fmt.Errorf("client_disconnect rollbacks = %d", n)
		}
		return nil
	})
	if st := tp.srv.LeakStats(); st.Detected != 1 {
		t.Errorf("Detected = %d after the episode ended, want 1", st.Detected)
	}
}

// A transaction older than the transaction timeout ends its client with
// SQLSTATE 25P04 and is rolled back, whether it is idle or running a statement;
// other clients go on.
func TestTransactionTimeout(t *testing.T) {
	db := newDatabase(t)
	chk := direct(t, db)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := chk.Exec(ctx, "CREATE TABLE tt (id int)"); err != nil {
		t.Fatal(err)
	}
	tp := startProxy(t, db, proxyOpts{PoolSize: 2, Opt: proxy.Options{TransactionTimeout: 300 * time.Millisecond}})
	for _, tc := range []struct {
		name, then string
	}{
		{"idle", ""},
		{"running", "SELECT pg_sleep(5)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
			other := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
			tx, err := c.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "INSERT INTO tt VALUES (1)"); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			if tc.then != "" {
				_, err = tx.Exec(ctx, tc.then)
			} else {
				// Idle until the proxy ends it: the next statement fails.
				pgtest.Eventually(t, 15*time.Second, "client ended", func() error {
					if c.PgConn().IsClosed() {
						return nil
					}
					if _, err := c.PgConn().Exec(ctx, "").ReadAll(); err != nil {
						return nil
					}
					return errors.New("still open")
				})
				_, err = tx.Exec(ctx, "SELECT 1")
			}
			if err == nil {
				t.Fatalf("statement after the transaction timeout succeeded (forced rollbacks %v)", tp.srv.LeakStats().ForcedRollbacks)
			}
			if el := time.Since(start); el > 10*time.Second {
				t.Errorf("ended after %v, want about 300ms (a generous bound: loaded CI machines)", el)
			}
			if tc.then != "" && pgCode(err) != "25P04" {
				t.Errorf("running statement ended with %v, want SQLSTATE 25P04", err)
			}
			if _, err := other.Exec(ctx, "SELECT 1"); err != nil {
				t.Fatalf("other client: %v", err)
			}
			pgtest.Eventually(t, 10*time.Second, "rolled back", func() error {
				var n int
				if err := chk.QueryRow(ctx, "SELECT count(*) FROM tt").Scan(&n); err != nil {
					return err
				}
				if n != 0 {
					return fmt.Errorf("%d rows committed", n)
				}
				if st := tp.srv.LeakStats(); st.ForcedRollbacks["transaction_timeout"] == 0 {
					return fmt.Errorf("forced rollbacks %v", st.ForcedRollbacks)
				}
				return nil
			})
		})
	}
	if n := tp.srv.LeakStats().ForcedRollbacks["transaction_timeout"]; n != 2 {
		t.Errorf("transaction_timeout rollbacks = %d, want 2", n)
	}
}

// With SQLLiterals the last statement is shown as sent, for debugging.
func TestLeakSQLLiterals(t *testing.T) {
	db := newDatabase(t)
	tp := startProxy(t, db, proxyOpts{PoolSize: 1, Opt: proxy.Options{SQLLiterals: true}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "SELECT 'card=4111' AS shown"); err != nil {
		t.Fatal(err)
	}
	pgtest.EventuallyTrue(t, 10*time.Second, "the client listed idle in transaction", func() bool {
		ls := tp.srv.Leaks()
		return len(ls) == 1 && ls[0].LastStatement == "SELECT 'card=4111' AS shown"
	})
}
