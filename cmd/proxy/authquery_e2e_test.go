package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/localpg"
	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
)

// hbaFirst puts lines at the top of the cluster's pg_hba.conf and reloads it.
func hbaFirst(t *testing.T, cl *localpg.Cluster, admin *pgx.Conn, lines ...string) {
	t.Helper()
	hba := filepath.Join(cl.Dir, "data", "pg_hba.conf")
	old, err := os.ReadFile(hba)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hba, append([]byte(strings.Join(lines, "\n")+"\n"), old...), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(context.Background(), "SELECT pg_reload_conf()"); err != nil {
		t.Fatal(err)
	}
}

// --auth-query (PgBouncer's auth_query): roles only PostgreSQL knows log in
// through the proxy with their own passwords, SCRAM and md5, against a
// PostgreSQL that demands those passwords for them; the proxy, which never
// learns the passwords, logs in to PostgreSQL as each role with what its
// client proved, over plain and TLS (verify-full) server connections. A
// wrong password and an unknown role get 28P01; a changed password takes
// effect after --auth-query-ttl; the query runs over one connection of its
// own; a failing query refuses the client with 08006.
func TestAuthQueryBinary(t *testing.T) {
	cl := pgtest.Start(t, localpg.Options{TLS: true})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin := pgtest.Connect(t, cl.URL("postgres"), 0, nil)
	for _, sql := range []string{
		"CREATE ROLE aq_scram LOGIN PASSWORD 'scram-pass'",
		"SET password_encryption = 'md5'",
		"CREATE ROLE aq_md5 LOGIN PASSWORD 'md5-pass'",
		"RESET password_encryption",
		"CREATE ROLE aq_nologin PASSWORD 'x'",
	} {
		if _, err := admin.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	hbaFirst(t, cl, admin, "host all aq_scram 127.0.0.1/32 scram-sha-256", "host all aq_md5 127.0.0.1/32 md5")
	pgtest.Eventually(t, 10*time.Second, "PostgreSQL asks aq_scram for its password", func() error {
		c, err := pgx.Connect(ctx, fmt.Sprintf("postgres://aq_scram:wrong@127.0.0.1:%d/postgres?sslmode=disable", cl.Port))
		if err == nil {
			c.Close(ctx)
			return fmt.Errorf("a wrong password still works")
		}
		return nil
	})

	listen := pgtest.FreeAddr(t)
	const query = "SELECT rolpassword FROM pg_authid WHERE rolname = $1 AND rolcanlogin"
	p := startProxy(t, []string{"PGSIDECAR_CLIENT_AUTH=md5"}, "--listen", listen, "--http-listen", "off",
		"--log-format", "json", "--upstream", cl.URL("postgres"), "--auth-query", query, "--auth-query-ttl", "1s",
		"--server-idle-timeout", "0")
	p.waitFor(t, `"msg":"pgsidecar listening"`, 1, 30*time.Second)

	login := func(user, pass string) (string, error) {
		c, err := pgtest.TryConnect(t, fmt.Sprintf("postgres://%s:%s@%s/postgres?sslmode=disable", user, pass, listen), pgx.QueryExecModeExec, nil)
		if err != nil {
			return "", err
		}
		defer c.Close(context.Background())
		var who string
		err = c.QueryRow(ctx, "SELECT current_user").Scan(&who)
		return who, err
	}
	for _, r := range [][2]string{{"aq_scram", "scram-pass"}, {"aq_md5", "md5-pass"}} {
		if who, err := login(r[0], r[1]); err != nil || who != r[0] {
			t.Errorf("%s with its password: current_user %q, %v", r[0], who, err)
		}
	}
	for _, r := range [][2]string{{"aq_scram", "wrong"}, {"aq_md5", "wrong"}, {"nobody", "x"}, {"aq_nologin", "x"}} {
		if _, err := login(r[0], r[1]); pgtest.SQLState(err) != "28P01" {
			t.Errorf("%s with password %q: %v, want 28P01", r[0], r[1], err)
		}
	}
	var n int
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgsidecar auth query'").Scan(&n); err != nil || n != 1 {
		t.Errorf("auth query connections: %d, %v; want 1", n, err)
	}

	// A new password: the old one works until the cached verifier expires,
	// then only the new one, on new server connections too.
	held := pgtest.Connect(t, fmt.Sprintf("postgres://aq_scram:scram-pass@%s/postgres?sslmode=disable", listen), 0, nil)
	if _, err := held.Exec(ctx, "BEGIN"); err != nil { // holds its server connection
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, "ALTER ROLE aq_scram PASSWORD 'scram-pass-2'"); err != nil {
		t.Fatal(err)
	}
	pgtest.Eventually(t, 10*time.Second, "the new password logs in", func() error {
		_, err := login("aq_scram", "scram-pass-2")
		return err
	})
	if _, err := login("aq_scram", "scram-pass"); pgtest.SQLState(err) != "28P01" {
		t.Errorf("the old password after the change: %v, want 28P01", err)
	}
	// A second server connection (one is held): dialed with the new proof.
	c2 := pgtest.Connect(t, fmt.Sprintf("postgres://aq_scram:scram-pass-2@%s/postgres?sslmode=disable", listen), 0, nil)
	if _, err := c2.Exec(ctx, "BEGIN"); err != nil {
		t.Fatalf("a new server connection after the change: %v", err)
	}
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'aq_scram'").Scan(&n); err != nil || n < 2 {
		t.Errorf("aq_scram server connections: %d, %v; want 2", n, err)
	}
	if strings.Contains(p.output(), "scram-pass") || strings.Contains(p.output(), "SCRAM-SHA-256$") {
		t.Error("a password or verifier reached the log")
	}

	// The upstream on TLS: the login runs over the tls.Conn, and the event
	// loop then drives that connection's TLS as any other's.
	listenTLS := pgtest.FreeAddr(t)
	p3 := startProxy(t, []string{"PGSIDECAR_CLIENT_AUTH=scram-sha-256"}, "--listen", listenTLS, "--http-listen", "off",
		"--log-format", "json", "--upstream", cl.URLSSL("postgres", "verify-full"), "--auth-query", query)
	p3.waitFor(t, `"msg":"pgsidecar listening"`, 1, 30*time.Second)
	ct := pgtest.Connect(t, fmt.Sprintf("postgres://aq_scram:scram-pass-2@%s/postgres?sslmode=disable", listenTLS), 0, nil)
	var ssl bool
	if err := ct.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil || !ssl {
		t.Errorf("aq_scram through a TLS upstream: ssl %v, %v; want true", ssl, err)
	}
	for i := range 20 {
		if err := pgtest.SelectInt(ct, i); err != nil {
			t.Fatalf("query %d over the TLS server connection: %v", i, err)
		}
	}

	// A query that fails: 08006, and the reason in the log.
	listen2 := pgtest.FreeAddr(t)
	p2 := startProxy(t, []string{"PGSIDECAR_CLIENT_AUTH=md5"}, "--listen", listen2, "--http-listen", "off",
		"--log-format", "json", "--upstream", cl.URL("postgres"), "--auth-query", "SELECT pw FROM no_such_table WHERE u = $1")
	p2.waitFor(t, `"msg":"pgsidecar listening"`, 1, 30*time.Second)
	_, err := pgtest.TryConnect(t, fmt.Sprintf("postgres://aq_scram:x@%s/postgres?sslmode=disable", listen2), 0, nil)
	if pgtest.SQLState(err) != "08006" {
		t.Errorf("a failing auth query: %v, want 08006", err)
	}
	p2.waitFor(t, "no_such_table", 1, 5*time.Second)
}
