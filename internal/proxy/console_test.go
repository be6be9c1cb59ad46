package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
)

func consoleOpts() proxyOpts {
	return proxyOpts{PoolSize: 2, Opt: proxy.Options{AdminUsers: []string{"postgres"}}}
}

// consoleConnect opens an admin console connection as user.
func consoleConnect(t *testing.T, tp *testProxy, user string) (*pgx.Conn, error) {
	t.Helper()
	return pgtest.TryConnect(t, fmt.Sprintf("postgres://%s@%s/pgsidecar?sslmode=disable", user, tp.addr), pgx.QueryExecModeSimpleProtocol, nil)
}

func mustConsole(t *testing.T, tp *testProxy) *pgx.Conn {
	t.Helper()
	c, err := consoleConnect(t, tp, "postgres")
	if err != nil {
		t.Fatalf("console connect: %v", err)
	}
	return c
}

// consoleRows runs a console command and returns its rows as maps of column to
// text (NULL as "<null>").
func consoleRows(t *testing.T, c *pgx.Conn, cmd string) []map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	results, err := c.PgConn().Exec(ctx, cmd).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	if len(results) != 1 {
		t.Fatalf("%s: %d results", cmd, len(results))
	}
	r := results[0]
	if got := r.CommandTag.String(); got != "SHOW" {
		t.Fatalf("%s: command tag %q", cmd, got)
	}
	var out []map[string]string
	for _, row := range r.Rows {
		m := map[string]string{}
		for i, fd := range r.FieldDescriptions {
			if row[i] == nil {
				m[fd.Name] = "<null>"
			} else {
				m[fd.Name] = string(row[i])
			}
		}
		out = append(out, m)
	}
	return out
}

func consoleExec(t *testing.T, c *pgx.Conn, cmd string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tag, err := c.PgConn().Exec(ctx, cmd).ReadAll()
	if err != nil {
		return "", err
	}
	if len(tag) != 1 {
		return "", fmt.Errorf("%d results", len(tag))
	}
	return tag[0].CommandTag.String(), nil
}

// clientByApp finds the SHOW CLIENTS row of the client with application_name app.
func clientByApp(rows []map[string]string, app string) map[string]string {
	for _, r := range rows {
		if r["application_name"] == app {
			return r
		}
	}
	return nil
}

// connectApp opens a client connection through the proxy with application_name app.
func connectApp(t *testing.T, tp *testProxy, app string) *pgx.Conn {
	t.Helper()
	return pgtest.Connect(t, tp.URL(), pgx.QueryExecModeSimpleProtocol, map[string]string{"application_name": app})
}

func TestConsoleShow(t *testing.T) {
	db := newDatabase(t)
	tp := startProxy(t, db, consoleOpts())
	ctx := context.Background()
	con := mustConsole(t, tp)

	idle := connectApp(t, tp, "c_idle")
	consoleMustExec(t, idle, "SELECT 1")
	inTx := connectApp(t, tp, "c_intx")
	consoleMustExec(t, inTx, "BEGIN", "SELECT 42 AS leaked")
	pinned := connectApp(t, tp, "c_pinned")
	consoleMustExec(t, pinned, "SELECT pg_advisory_lock(7)")
	// The pool (2) is now full: this one waits.
	waiter := connectApp(t, tp, "c_wait")
	waitDone := consoleExecAsync(ctx, waiter, "SELECT 1")

	consoleWaitWaiting(t, con, "c_wait", "waiter waiting")
	clients := consoleRows(t, con, "show clients;")
	want := map[string]string{"c_idle": "idle", "c_intx": "idle_in_transaction", "c_pinned": "idle", "c_wait": "waiting"}
	ids := map[string]string{}
	for app, st := range want {
		r := clientByApp(clients, app)
		if r == nil {
			t.Fatalf("SHOW CLIENTS has no %s: %v", app, clients)
		}
		if r["state"] != st || r["type"] != "C" || r["database"] != db || r["user"] != "postgres" || r["addr"] != "127.0.0.1" || r["id"] == "" || r["connect_time"] == "" {
			t.Errorf("SHOW CLIENTS %s: %v, want state %s", app, r, st)
		}
		ids[app] = r["id"]
	}
	if r := clientByApp(clients, "c_pinned"); r["pinned"] == "" || r["server_pid"] == "<null>" {
		t.Errorf("pinned client: %v", r)
	}
	if r := clientByApp(clients, "c_intx"); r["pinned"] != "" || r["server_pid"] == "<null>" {
		t.Errorf("client in transaction: %v", r)
	}
	if r := clientByApp(clients, "c_idle"); r["server_pid"] != "<null>" {
		t.Errorf("idle client holds a server: %v", r)
	}
	consoles := 0
	for _, r := range clients {
		if r["database"] == "pgsidecar" {
			consoles++
			if r["state"] != "console" {
				t.Errorf("console row %v", r)
			}
		}
	}
	if consoles != 1 {
		t.Errorf("%d console rows, want 1", consoles)
	}

	pools := consoleRows(t, con, "SHOW POOLS")
	if len(pools) != 1 {
		t.Fatalf("SHOW POOLS: %v", pools)
	}
	p := pools[0]
	for k, v := range map[string]string{"database": db, "user": "postgres", "cl_active": "2", "cl_waiting": "1",
		"cl_idle_in_transaction": "1", "sv_active": "2", "sv_idle": "0", "sv_pinned": "1", "pool_mode": "transaction", "pool_size": "2"} {
		if p[k] != v {
			t.Errorf("SHOW POOLS %s = %q, want %q (%v)", k, p[k], v, p)
		}
	}
	if p["maxwait_us"] == "" || p["maxwait"] == "" {
		t.Errorf("SHOW POOLS maxwait: %v", p)
	}

	servers := consoleRows(t, con, "SHOW SERVERS")
	if len(servers) != 2 {
		t.Fatalf("SHOW SERVERS: %v", servers)
	}
	states := map[string]string{}
	for _, s := range servers {
		if s["type"] != "S" || s["database"] != db || s["pid"] == "" {
			t.Errorf("server row %v", s)
		}
		states[s["client_id"]] = s["state"]
	}
	if states[ids["c_intx"]] != "active" || states[ids["c_pinned"]] != "pinned" {
		t.Errorf("SHOW SERVERS states by client %v (ids %v)", states, ids)
	}

	leaks := consoleRows(t, con, "SHOW LEAKS")
	if len(leaks) != 1 {
		t.Fatalf("SHOW LEAKS: %v", leaks)
	}
	if l := leaks[0]; l["id"] != ids["c_intx"] || l["application_name"] != "c_intx" || l["last_statement"] != "SELECT $1 AS leaked" ||
		l["state"] != "idle_in_transaction" || l["suspect"] != "f" || l["server_pid"] == "" || l["age_seconds"] == "" {
		t.Errorf("SHOW LEAKS row %v", l)
	}

	// The transaction ends: the waiter gets its backend.
	consoleMustExec(t, inTx, "COMMIT")
	consoleAwait(t, waitDone, "waiter", "waiter did not get a backend")
	stats := consoleRows(t, con, "SHOW STATS")
	if len(stats) != 1 {
		t.Fatalf("SHOW STATS: %v", stats)
	}
	if s := stats[0]; s["database"] != db || s["total_xact_count"] == "0" || s["total_wait_count"] == "0" || s["total_wait_time"] == "0" || s["avg_wait_time"] == "0" {
		t.Errorf("SHOW STATS %v", s)
	}
	if len(consoleRows(t, con, "SHOW LEAKS")) != 0 {
		t.Error("SHOW LEAKS lists a client after its COMMIT")
	}

	// Errors: unknown commands list the commands; the console stays usable.
	for _, cmd := range []string{"SHOW HELP", "SELECT 1", "show nothing"} {
		_, err := consoleExec(t, con, cmd)
		if pgCode(err) != "42601" || !strings.Contains(err.Error(), "SHOW POOLS") {
			t.Errorf("%s: %v, want 42601 listing the commands", cmd, err)
		}
	}
	if tag, err := consoleExec(t, con, "reload;"); err != nil || tag != "RELOAD" {
		t.Errorf("RELOAD: %q %v", tag, err)
	}
}

func TestConsoleRefused(t *testing.T) {
	db := newDatabase(t)
	tp := startProxy(t, db, consoleOpts())
	_, err := consoleConnect(t, tp, "someone_else")
	if pgCode(err) != "28000" || !strings.Contains(err.Error(), "not allowed to use the admin console") {
		t.Fatalf("non-admin console login: %v, want 28000", err)
	}
	tp2 := startProxy(t, db, proxyOpts{PoolSize: 1})
	if _, err := consoleConnect(t, tp2, "postgres"); pgCode(err) != "28000" {
		t.Fatalf("console login with no admin users: %v, want 28000", err)
	}
}

func TestConsoleExtendedProtocol(t *testing.T) {
	db := newDatabase(t)
	tp := startProxy(t, db, consoleOpts())
	con := mustConsole(t, tp)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Parse/Bind/Describe/Execute/Sync.
	rr := con.PgConn().ExecParams(ctx, "SHOW POOLS", nil, nil, nil, nil).Read()
	if pgCode(rr.Err) != "0A000" {
		t.Fatalf("extended query: %v, want 0A000", rr.Err)
	}
	_, err := con.PgConn().Prepare(ctx, "s1", "SHOW CLIENTS", nil)
	if pgCode(err) != "0A000" {
		t.Fatalf("Prepare: %v, want 0A000", err)
	}
	if tag, err := consoleExec(t, con, "RESUME"); err != nil || tag != "RESUME" {
		t.Fatalf("after extended query: %q %v", tag, err)
	}
	if rows := consoleRows(t, con, "SHOW CLIENTS"); len(rows) != 1 {
		t.Fatalf("SHOW CLIENTS: %v", rows)
	}
	// pgx's default (extended) query mode on the console fails cleanly too.
	var n int
	if err := con.QueryRow(ctx, "SHOW POOLS", pgx.QueryExecModeExec).Scan(&n); pgCode(err) != "0A000" {
		t.Fatalf("QueryExecModeExec: %v, want 0A000", err)
	}
	if _, err := consoleExec(t, con, ";"); err != nil {
		t.Fatalf("empty query: %v", err)
	}
}

func TestConsolePauseResume(t *testing.T) {
	db := newDatabase(t)
	tp := startProxy(t, db, consoleOpts())
	ctx := context.Background()
	con := mustConsole(t, tp)
	inTx := connectApp(t, tp, "p_intx")
	consoleMustExec(t, inTx, "BEGIN", "SELECT 1")
	c := connectApp(t, tp, "p_new")
	if tag, err := consoleExec(t, con, "pause"); err != nil || tag != "PAUSE" {
		t.Fatalf("PAUSE: %q %v", tag, err)
	}
	done := consoleExecAsync(ctx, c, "SELECT 1")
	consoleWaitWaiting(t, con, "p_new", "paused client waiting")
	// The open transaction goes on.
	if _, err := inTx.Exec(ctx, "SELECT 2"); err != nil {
		t.Fatalf("open transaction while paused: %v", err)
	}
	if _, err := inTx.Exec(ctx, "COMMIT"); err != nil {
		t.Fatalf("COMMIT while paused: %v", err)
	}
	// A backend is free (idle in the pool) and still the client waits.
	select {
	case err := <-done:
		t.Fatalf("query finished while paused: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if p := consoleRows(t, con, "SHOW POOLS"); len(p) != 1 || p[0]["cl_waiting"] != "1" {
		t.Errorf("SHOW POOLS while paused: %v", p)
	}
	if tag, err := consoleExec(t, con, "RESUME;"); err != nil || tag != "RESUME" {
		t.Fatalf("RESUME: %q %v", tag, err)
	}
	consoleAwait(t, done, "query after RESUME", "query did not finish after RESUME")
}

func TestConsolePauseTimeout(t *testing.T) {
	db := newDatabase(t)
	o := consoleOpts()
	o.Opt.QueryWaitTimeout = 300 * time.Millisecond
	tp := startProxy(t, db, o)
	con := mustConsole(t, tp)
	c := connectApp(t, tp, "pt")
	if _, err := consoleExec(t, con, "PAUSE"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := c.Exec(context.Background(), "SELECT 1")
	if pgCode(err) != "57014" {
		t.Fatalf("query while paused: %v, want query_wait_timeout (57014)", err)
	}
	if el := time.Since(start); el < 250*time.Millisecond || el > 10*time.Second {
		t.Errorf("failed after %v", el)
	}
	if _, err := consoleExec(t, con, "RESUME"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(context.Background(), "SELECT 1"); err != nil {
		t.Fatalf("after RESUME: %v", err)
	}
}

func TestConsoleKillClient(t *testing.T) {
	db := newDatabase(t)
	tp := startProxy(t, db, consoleOpts())
	ctx := context.Background()
	chk := direct(t, db)
	if _, err := chk.Exec(ctx, "CREATE TABLE k (x int)"); err != nil {
		t.Fatal(err)
	}
	con := mustConsole(t, tp)
	victim := connectApp(t, tp, "victim")
	other := connectApp(t, tp, "other")
	consoleMustExec(t, victim, "BEGIN", "INSERT INTO k VALUES (1)")
	r := clientByApp(consoleRows(t, con, "SHOW CLIENTS"), "victim")
	if r == nil || r["state"] != "idle_in_transaction" {
		t.Fatalf("victim: %v", r)
	}
	if tag, err := consoleExec(t, con, "kill_client "+r["id"]); err != nil || tag != "KILL_CLIENT" {
		t.Fatalf("KILL_CLIENT: %q %v", tag, err)
	}
	pgtest.Eventually(t, 10*time.Second, "victim gone", func() error {
		if clientByApp(consoleRows(t, con, "SHOW CLIENTS"), "victim") != nil {
			return errors.New("still listed")
		}
		return nil
	})
	_, err := victim.Exec(ctx, "SELECT 1")
	if err == nil {
		t.Fatal("killed client's query succeeded")
	}
	if pgCode(err) != "57P01" || !strings.Contains(err.Error(), "terminated by the admin console") {
		t.Errorf("killed client's query: %v, want 57P01", err)
	}
	pgtest.Eventually(t, 10*time.Second, "rolled back", func() error {
		var n int
		if err := chk.QueryRow(ctx, "SELECT count(*) FROM k").Scan(&n); err != nil {
			return err
		}
		if n != 0 {
			return fmt.Errorf("%d rows", n)
		}
		if b := tp.serverBackends(t, chk); b["idle in transaction"] != 0 {
			return fmt.Errorf("backends %v", b)
		}
		if r := tp.srv.LeakStats().ForcedRollbacks; r["admin_kill"] != 1 || r["client_disconnect"] != 0 {
			return fmt.Errorf("forced rollbacks %v, want one admin_kill", r)
		}
		return nil
	})
	if _, err := other.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("other client: %v", err)
	}
	_, err = consoleExec(t, con, "KILL_CLIENT 12345")
	if pgCode(err) != "42704" || !strings.Contains(err.Error(), "no client with id 12345") {
		t.Errorf("unknown id: %v, want 42704", err)
	}
	if _, err := consoleExec(t, con, "KILL_CLIENT abc"); pgCode(err) != "42601" {
		t.Errorf("bad id: %v, want 42601", err)
	}
}

func TestConsoleShutdown(t *testing.T) {
	db := newDatabase(t)
	tp := startProxy(t, db, consoleOpts())
	con := mustConsole(t, tp)
	if _, err := consoleRowsErr(con, "SHOW POOLS"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- tp.srv.Shutdown(ctx)
	}()
	consoleAwait(t, done, "Shutdown", "Shutdown waits for the console client")
	_, err := consoleRowsErr(con, "SHOW POOLS")
	if pgCode(err) != "57P01" {
		t.Fatalf("console after shutdown: %v, want 57P01", err)
	}
}

func consoleRowsErr(c *pgx.Conn, cmd string) ([]*pgconn.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.PgConn().Exec(ctx, cmd).ReadAll()
}

// consoleMustExec runs each statement on c in turn, failing the test on an error.
func consoleMustExec(t *testing.T, c *pgx.Conn, stmts ...string) {
	t.Helper()
	for _, sql := range stmts {
		if _, err := c.Exec(context.Background(), sql); err != nil {
			t.Fatal(err)
		}
	}
}

// consoleExecAsync runs sql on c in a goroutine; its error arrives on the channel.
func consoleExecAsync(ctx context.Context, c *pgx.Conn, sql string) <-chan error {
	done := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, sql)
		done <- err
	}()
	return done
}

// consoleWaitWaiting waits until SHOW CLIENTS lists the client with
// application_name app as waiting.
func consoleWaitWaiting(t *testing.T, con *pgx.Conn, app, what string) {
	t.Helper()
	pgtest.Eventually(t, 10*time.Second, what, func() error {
		if r := clientByApp(consoleRows(t, con, "SHOW CLIENTS"), app); r == nil || r["state"] != "waiting" {
			return fmt.Errorf("%s: %v", app, r)
		}
		return nil
	})
}

// consoleAwait waits up to 10s for done: what names the operation in the
// failure on its error, late is the failure when it does not finish.
func consoleAwait(t *testing.T, done <-chan error, what, late string) {
	t.Helper()
	if err := pgtest.Recv(t, done, 10*time.Second, late); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}
