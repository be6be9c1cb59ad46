package proxy_test

// LISTEN / NOTIFY fidelity (issue 13, item 4): a client that listens gets each
// notification as on a direct connection. PostgreSQL sends a notification to an
// idle listener at once and to one inside a transaction just before the
// ReadyForQuery that ends it, so a notification committed before the listener's
// next query has reached it before that query's answer (pgconn's
// TestConnOnNotification), and a listener that sends nothing (a LISTEN worker
// blocked in WaitForNotification) gets it as soon as it is sent. Each test runs
// the same steps on a direct connection first, as the reference.

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/proxy"
)

// ntfRecorder collects the notifications a connection's OnNotification sees.
type ntfRecorder struct {
	mu  sync.Mutex
	got []pgconn.Notification
}

func (r *ntfRecorder) on(_ *pgconn.PgConn, n *pgconn.Notification) {
	r.mu.Lock()
	r.got = append(r.got, *n)
	r.mu.Unlock()
}

func (r *ntfRecorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

// take returns the notifications received so far and forgets them.
func (r *ntfRecorder) take() []pgconn.Notification {
	r.mu.Lock()
	defer r.mu.Unlock()
	got := r.got
	r.got = nil
	return got
}

func ntfDescribe(ns []pgconn.Notification) string {
	s := "["
	for i, n := range ns {
		if i > 0 {
			s += " "
		}
		s += fmt.Sprintf("%s:%q", n.Channel, n.Payload)
	}
	return s + "]"
}

// ntfTarget is where a test's listener connects: PostgreSQL itself (the
// reference) or a proxy in one pool mode.
type ntfTarget struct {
	name string
	url  string
	db   string
}

// ntfTargets starts a proxy in transaction mode and one in session mode for db.
func ntfTargets(t *testing.T, db string) []ntfTarget {
	t.Helper()
	tx := startProxy(t, db, proxyOpts{PoolSize: 3, Mode: proxy.ModeTransaction})
	sess := startProxy(t, db, proxyOpts{PoolSize: 4, Mode: proxy.ModeSession})
	return []ntfTarget{
		{"direct", cluster.URL(db), db},
		{"transaction", tx.URL(), db},
		{"session", sess.URL(), db},
	}
}

func ntfCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func ntfExecPgx(t *testing.T, ctx context.Context, c *pgx.Conn, sql string) {
	t.Helper()
	if _, err := c.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// ntfConnect opens a pgconn connection to url whose notifications go to rec.
func ntfConnect(t *testing.T, url string, rec *ntfRecorder) *pgconn.PgConn {
	t.Helper()
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	if rec != nil {
		cfg.OnNotification = rec.on
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func ntfExec(t *testing.T, ctx context.Context, c *pgconn.PgConn, sql string) {
	t.Helper()
	if _, err := c.Exec(ctx, sql).ReadAll(); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// ntfSelect1 runs select 1 through the simple or the extended protocol.
func ntfSelect1(t *testing.T, ctx context.Context, c *pgconn.PgConn, extended bool) {
	t.Helper()
	if !extended {
		ntfExec(t, ctx, c, "select 1")
		return
	}
	res := c.ExecParams(ctx, "select $1::int", [][]byte{[]byte("1")}, nil, nil, nil).Read()
	if res.Err != nil {
		t.Fatalf("select $1::int: %v", res.Err)
	}
}

// TestNotifyBeforeNextAnswer: conn A listens, another connection notifies, then
// A runs select 1: A's OnNotification has run by the time select 1 returns
// (pgconn's TestConnOnNotification, 50 rounds). Sent while A is inside a
// transaction, the notification arrives with the answer to A's COMMIT, not
// before. Through the proxy in transaction mode (A is pinned by its LISTEN) and
// in session mode, with A's LISTEN and queries in the simple and the extended
// protocol, the notifications sent through the proxy and directly.
func TestNotifyBeforeNextAnswer(t *testing.T) {
	db := newDatabase(t)
	for _, tg := range ntfTargets(t, db) {
		for _, extended := range []bool{false, true} {
			name := tg.name + "/simple"
			if extended {
				name = tg.name + "/extended"
			}
			t.Run(name, func(t *testing.T) {
				ctx := ntfCtx(t)
				rec := &ntfRecorder{}
				a := ntfConnect(t, tg.url, rec)
				viaSame := ntfConnect(t, tg.url, nil) // the notifier through the same target
				viaDirect := ntfConnect(t, cluster.URL(db), nil)
				if extended {
					// Through the extended protocol as JDBC, asyncpg or node-postgres send it.
					if res := a.ExecParams(ctx, "LISTEN foo", nil, nil, nil, nil).Read(); res.Err != nil {
						t.Fatalf("LISTEN foo: %v", res.Err)
					}
				} else {
					ntfExec(t, ctx, a, "LISTEN foo")
				}
				if got := rec.take(); len(got) != 0 {
					t.Fatalf("notifications before any NOTIFY: %s", ntfDescribe(got))
				}
				delays := []time.Duration{0, 0, time.Millisecond, 0, 20 * time.Millisecond}
				for i := 0; i < 50; i++ {
					payload := fmt.Sprintf("bar%d", i)
					via, viaName := viaSame, "the same target"
					if i%2 == 1 {
						via, viaName = viaDirect, "a direct connection"
					}
					inTx := i%5 == 3
					what := fmt.Sprintf("round %d (notified via %s, A in a transaction: %v)", i, viaName, inTx)
					if inTx {
						ntfExec(t, ctx, a, "BEGIN")
					}
					ntfExec(t, ctx, via, "NOTIFY foo, '"+payload+"'")
					d := delays[i%len(delays)]
					if i%10 == 9 {
						d = 150 * time.Millisecond // longer than the proxy's 100 ms syncRead limit
					}
					time.Sleep(d)
					ntfSelect1(t, ctx, a, extended)
					if inTx {
						// PostgreSQL holds it back until the transaction ends.
						if got := rec.take(); len(got) != 0 {
							t.Fatalf("%s: notifications inside the transaction: %s", what, ntfDescribe(got))
						}
						ntfExec(t, ctx, a, "COMMIT")
					}
					got := rec.take()
					if len(got) != 1 || got[0].Channel != "foo" || got[0].Payload != payload {
						t.Fatalf("%s: when A's %s returned it had received %s, want exactly [foo:%q]",
							what, map[bool]string{true: "COMMIT", false: "select 1"}[inTx], ntfDescribe(got), payload)
					}
				}
			})
		}
	}
}

// TestNotifyIdleListener: a listener that sends nothing and waits in
// WaitForNotification (what a LISTEN worker does) gets each notification within
// 2 seconds (in practice at once), whether it was sent while the listener waits
// or before; also after the listener ran a query or a transaction of its own.
func TestNotifyIdleListener(t *testing.T) {
	db := newDatabase(t)
	for _, tg := range ntfTargets(t, db) {
		t.Run(tg.name, func(t *testing.T) {
			ctx := ntfCtx(t)
			cfg, err := pgx.ParseConfig(tg.url)
			if err != nil {
				t.Fatal(err)
			}
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			l, err := pgx.ConnectConfig(cctx, cfg)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close(context.Background()) })
			viaSame := ntfConnect(t, tg.url, nil)
			viaDirect := ntfConnect(t, cluster.URL(db), nil)
			ntfExecPgx(t, ctx, l, "LISTEN worker")
			var worst time.Duration
			for i := 0; i < 20; i++ {
				payload := fmt.Sprintf("job%d", i)
				via := viaSame
				if i%2 == 1 {
					via = viaDirect
				}
				switch i % 4 {
				case 1:
					ntfExecPgx(t, ctx, l, "select 1")
				case 2:
					ntfExecPgx(t, ctx, l, "BEGIN")
					ntfExecPgx(t, ctx, l, "select 1")
					ntfExecPgx(t, ctx, l, "COMMIT")
				}
				before := i%3 == 2 // sent before the listener starts waiting
				sendErr := make(chan error, 1)
				var sentAt atomic.Int64 // when the NOTIFY was committed (UnixNano)
				send := func() {
					_, err := via.Exec(ctx, "NOTIFY worker, '"+payload+"'").ReadAll()
					sentAt.Store(time.Now().UnixNano())
					sendErr <- err
				}
				if before {
					send()
					time.Sleep(20 * time.Millisecond)
				} else {
					go func() {
						time.Sleep([]time.Duration{10 * time.Millisecond, 150 * time.Millisecond}[i%2])
						send()
					}()
				}
				wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				n, err := l.WaitForNotification(wctx)
				cancel()
				got := time.Now()
				if serr := <-sendErr; serr != nil {
					t.Fatalf("round %d: NOTIFY: %v", i, serr)
				}
				if err != nil {
					t.Fatalf("round %d (sent before waiting: %v): no notification within 2s: %v", i, before, err)
				}
				if n.Channel != "worker" || n.Payload != payload {
					t.Fatalf("round %d: got %s:%q, want worker:%q", i, n.Channel, n.Payload, payload)
				}
				if !before {
					// Received as soon as sent (at the latest when the NOTIFY had
					// returned to its sender): the listener waited, sending nothing.
					took := got.Sub(time.Unix(0, sentAt.Load()))
					if took > time.Second {
						t.Errorf("round %d: the notification took %s after its NOTIFY returned", i, took)
					}
					worst = max(worst, took)
				}
			}
			t.Logf("longest delay after the NOTIFY returned: %s", worst)
			// Nothing more: pgx returns one it has already received at once.
			pctx, cancel := context.WithCancel(ctx)
			cancel()
			if n, _ := l.WaitForNotification(pctx); n != nil {
				t.Errorf("an extra notification %s:%q", n.Channel, n.Payload)
			}
		})
	}
}

// TestNotifyNoneLost: while notifications stream in, the listener keeps running
// statements that make the proxy talk to its backend on its own (another LISTEN
// and a SET, after which it reads session state back; a RESET of a startup
// parameter, after which it restores the client's value): every notification
// still reaches the listener, exactly once and in order, and once the flood
// stops the last ones reach it while it waits without sending anything.
func TestNotifyNoneLost(t *testing.T) {
	db := newDatabase(t)
	for _, tg := range ntfTargets(t, db) {
		t.Run(tg.name, func(t *testing.T) {
			ctx := ntfCtx(t)
			rec := &ntfRecorder{}
			cfg, err := pgconn.ParseConfig(tg.url)
			if err != nil {
				t.Fatal(err)
			}
			cfg.OnNotification = rec.on
			cfg.RuntimeParams["search_path"] = "public"
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			a, err := pgconn.ConnectConfig(cctx, cfg)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { a.Close(context.Background()) })
			sender := ntfConnect(t, cluster.URL(db), nil)
			ntfExec(t, ctx, a, "LISTEN flood")

			var sent atomic.Int64
			stop := make(chan struct{})
			done := make(chan error, 1)
			go func() {
				for i := 0; ; i++ {
					select {
					case <-stop:
						done <- nil
						return
					default:
					}
					if _, err := sender.Exec(ctx, fmt.Sprintf("NOTIFY flood, '%d'", i)).ReadAll(); err != nil {
						done <- err
						return
					}
					sent.Add(1)
				}
			}()
			stmts := []string{"LISTEN other", "SET work_mem = '8MB'", "RESET search_path", "UNLISTEN other", "select 1"}
			deadline := time.Now().Add(2 * time.Second)
			for i := 0; time.Now().Before(deadline) || sent.Load() < 200; i++ {
				ntfExec(t, ctx, a, stmts[i%len(stmts)])
			}
			close(stop)
			if err := <-done; err != nil {
				t.Fatalf("NOTIFY: %v", err)
			}
			// Every notification reaches the idle listener without a query of its own.
			n := int(sent.Load())
			wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			for rec.count() < n {
				if err := a.WaitForNotification(wctx); err != nil {
					t.Errorf("%d of %d notifications reached the idle listener within 2s: %v", rec.count(), n, err)
					break
				}
			}
			cancel()
			ntfExec(t, ctx, a, "select 1")
			got := rec.take()
			for i, g := range got {
				if want := fmt.Sprint(i); g.Channel != "flood" || g.Payload != want {
					t.Fatalf("notification %d of %d received (%d sent): got %s:%q, want flood:%q (lost or out of order)",
						i, len(got), n, g.Channel, g.Payload, want)
				}
			}
			if len(got) != n {
				t.Fatalf("received %d notifications, %d sent", len(got), n)
			}
			t.Logf("%d notifications", n)
		})
	}
}
