package proxy_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/pool"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
)

// Session mode on the event loop: a client keeps its server connection from
// its first message to its end; the loop reads that connection all the time,
// so a notification reaches an idle client; session state (settings,
// temporary tables, named statements) stays the client's; its end resets the
// connection (DISCARD ALL); a server connection lost under an idle client
// ends that client (its session is gone), and nobody else.
func TestLoopSessionMode(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the event loop is Linux-only")
	}
	db := newDatabase(t)
	tp := startProxy(t, db, proxyOpts{PoolSize: 1, Mode: proxy.ModeSession})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	cfg, err := pgx.ParseConfig(tp.URL())
	if err != nil {
		t.Fatal(err)
	}
	notes := make(chan *pgconn.Notification, 4)
	cfg.OnNotification = func(_ *pgconn.PgConn, n *pgconn.Notification) { notes <- n }
	a, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(context.Background())
	for _, q := range []string{"SET application_name = 'sess_a'", "CREATE TEMP TABLE mine(x int)", "INSERT INTO mine VALUES (7)", "LISTEN sess_chan"} {
		if _, err := a.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if n := tp.srv.Stats().LoopClients; n != 1 {
		t.Fatalf("the loop serves %d clients, want 1 (session mode on the loop)", n)
	}
	var pidA int
	if err := a.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pidA); err != nil {
		t.Fatal(err)
	}
	// Idle, with no query on its way: the notification must come by itself.
	other := direct(t, db)
	if _, err := other.Exec(ctx, "NOTIFY sess_chan, 'hello'"); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	err = a.PgConn().WaitForNotification(wctx)
	wcancel()
	if err != nil {
		t.Fatalf("no notification reached the idle session-mode client: %v", err)
	}
	if n := <-notes; n.Channel != "sess_chan" || n.Payload != "hello" {
		t.Fatalf("notification: %+v", n)
	}
	// Its state is still its own, statements included.
	var x int
	var app string
	if err := a.QueryRow(ctx, "SELECT x, current_setting('application_name') FROM mine").Scan(&x, &app); err != nil || x != 7 || app != "sess_a" {
		t.Fatalf("session state: x=%d app=%q err=%v", x, app, err)
	}
	if _, err := a.Prepare(ctx, "named_one", "SELECT $1::int + 1"); err != nil {
		t.Fatal(err)
	}
	if err := a.QueryRow(ctx, "named_one", 41).Scan(&x); err != nil || x != 42 {
		t.Fatalf("named statement: %d, %v", x, err)
	}

	// A second client waits for the pool's only connection until a leaves,
	// then gets it reset.
	got := make(chan error, 1)
	go func() {
		c, err := pgx.Connect(ctx, tp.URL())
		if err != nil {
			got <- err
			return
		}
		defer c.Close(context.Background())
		var pid int
		var app string
		var temp int
		err = c.QueryRow(ctx, "SELECT pg_backend_pid(), current_setting('application_name'), (SELECT count(*) FROM pg_tables WHERE tablename = 'mine')").Scan(&pid, &app, &temp)
		if err == nil && (pid != pidA || app == "sess_a" || temp != 0) {
			err = fmt.Errorf("next client on pid %d (first %d) sees application_name %q and %d temp tables: not reset", pid, pidA, app, temp)
		}
		got <- err
	}()
	p := tp.pools.Get(pool.Key{Database: db, User: "postgres"})
	pgtest.EventuallyTrue(t, 10*time.Second, "the second client to wait", func() bool {
		return p.Stats().Waiting == 1
	})
	a.Close(ctx)
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("the second client never got the connection")
	}

	// The server connection of an idle session-mode client is terminated:
	// that client is ended on its next query (its session is gone), and the
	// proxy serves the next one.
	b := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
	var pidB int
	if err := b.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pidB); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Exec(ctx, "SELECT pg_terminate_backend($1)", pidB); err != nil {
		t.Fatal(err)
	}
	pgtest.EventuallyTrue(t, 10*time.Second, "the client to be ended", func() bool {
		return b.PgConn().IsClosed() || b.Ping(ctx) != nil
	})
	c := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
	var one int
	if err := c.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("after a lost session: select 1 = %d, %v", one, err)
	}
}
