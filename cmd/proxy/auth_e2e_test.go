package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/localpg"
	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
)

// A password method with nothing to check passwords against, and trust on a
// non-loopback address, stop the proxy before it listens.
func TestClientAuthRefusesToStart(t *testing.T) {
	p := startProxy(t, []string{"PGSIDECAR_CLIENT_AUTH=scram-sha-256"}, "--listen", pgtest.FreeAddr(t),
		"--http-listen", "off", "--upstream", "postgres://app@127.0.0.1:1/app")
	<-p.exited
	if !strings.Contains(p.output(), "--client-auth scram-sha-256: no password to check clients against") {
		t.Errorf("no password: output\n%s", p.output())
	}
	code, _, errb := runWith([]string{"--listen", "0.0.0.0:6432", "--upstream", "postgres://app@db/app", "--client-auth", "trust"}, nil)
	if code != exitConfig || !strings.Contains(errb, "--client-auth: trust lets anyone who reaches 0.0.0.0:6432 in") {
		t.Errorf("trust on 0.0.0.0: exit %d\n%s", code, errb)
	}
}

// The application keeps its DATABASE_URL with only host and port changed: the
// upstream's user and password log in with SCRAM; a wrong password, another
// database and a role only the auth file knows behave as documented, and a new
// auth file is taken on SIGHUP. No password, no SCRAM message or verifier,
// and no literal of a statement reaches the log, the console, /metrics or
// /status.json.
func TestClientAuthBinary(t *testing.T) {
	cl := pgtest.Start(t, localpg.Options{})
	dir := t.TempDir()
	userlist := filepath.Join(dir, "userlist.txt")
	if err := os.WriteFile(userlist, []byte(`"filer" "file-pass-1"`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	admin := pgtest.Connect(t, cl.URL("postgres"), 0, nil)
	if _, err := admin.Exec(context.Background(), "CREATE ROLE filer LOGIN"); err != nil {
		t.Fatal(err)
	}
	listen, httpAddr, statusAddr := pgtest.FreeAddr(t), pgtest.FreeAddr(t), pgtest.FreeAddr(t)
	upstream := strings.Replace(cl.URL("postgres"), "postgres@", "postgres:up-secret@", 1)
	p := startProxy(t, []string{"PGSIDECAR_CLIENT_AUTH=scram-sha-256"}, "--listen", listen, "--http-listen", httpAddr,
		"--status-listen", statusAddr, "--admin-users", "postgres", "--leak-threshold", "100ms",
		"--log-format", "json", "--log-level", "debug", "--upstream", upstream, "--auth-file", userlist)
	p.waitFor(t, `"msg":"pgsidecar listening"`, 1, 30*time.Second)

	url := func(user, pass, db string) string {
		return "postgres://" + user + ":" + pass + "@" + listen + "/" + db + "?sslmode=disable"
	}
	try := func(user, pass, db string) error {
		c, err := pgtest.TryConnect(t, url(user, pass, db), pgx.QueryExecModeExec, nil)
		if err != nil {
			return err
		}
		return pgtest.SelectInt(c, 1)
	}
	code := func(err error) string {
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			return pe.Code
		}
		return "no PgError: " + errorString(err)
	}
	if err := try("postgres", "up-secret", "postgres"); err != nil {
		t.Errorf("upstream's user and password: %v", err)
	}
	if err := try("postgres", "nope", "postgres"); code(err) != "28P01" {
		t.Errorf("wrong password: %v, want 28P01", err)
	}
	if err := try("postgres", "up-secret", "template1"); code(err) != "3D000" {
		t.Errorf("another database: %v, want 3D000", err)
	}
	if err := try("filer", "file-pass-1", "postgres"); err != nil {
		t.Errorf("auth file role: %v", err)
	}
	if err := try("stranger", "x", "postgres"); code(err) != "28P01" {
		t.Errorf("unknown role: %v, want 28P01", err)
	}

	// A new password in the file: taken at the reload, the old one refused.
	if err := os.WriteFile(userlist, []byte(`"filer" "file-pass-2"`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if err := pgtest.Poll(20*time.Second, func() error { return try("filer", "file-pass-2", "postgres") }); err != nil {
		t.Errorf("new auth file password after SIGHUP: %v", err)
	}
	if err := try("filer", "file-pass-1", "postgres"); code(err) != "28P01" {
		t.Errorf("old auth file password after the reload: %v, want 28P01", err)
	}
	// A file that does not parse is rejected; the one in force stays.
	if err := os.WriteFile(userlist, []byte("\"filer\" \"file-pass-3\"\nnot a line\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	p.waitFor(t, "line 2", 1, 20*time.Second)
	if err := try("filer", "file-pass-2", "postgres"); err != nil {
		t.Errorf("password in force after a rejected file: %v", err)
	}
	if failed := p.matching(`"msg":"client authentication failed"`); len(failed) == 0 {
		t.Error("failed logins are not logged")
	}
	// Without --fleet-budget there is no coordination connection (issue 15, point 4).
	var coord int
	if err := admin.QueryRow(context.Background(), "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgsidecar fleet'").Scan(&coord); err != nil || coord != 0 {
		t.Errorf("coordination connections without --fleet-budget: %d, %v; want 0", coord, err)
	}

	// A client leaves a transaction open after a statement with a literal:
	// a leak suspect, in the log, SHOW LEAKS and the status page.
	ctx := context.Background()
	leaky := pgtest.Connect(t, url("postgres", "up-secret", "postgres"), pgx.QueryExecModeSimpleProtocol, nil)
	if _, err := leaky.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if _, err := leaky.Exec(ctx, "SELECT 'card=4111-literal' AS leaked"); err != nil {
		t.Fatal(err)
	}
	p.waitFor(t, "leak suspect", 1, 20*time.Second)
	con := pgtest.Connect(t, url("postgres", "up-secret", "pgsidecar"), pgx.QueryExecModeSimpleProtocol, nil)
	var channels strings.Builder
	for _, cmd := range []string{"SHOW POOLS", "SHOW CLIENTS", "SHOW SERVERS", "SHOW STATS", "SHOW LEAKS"} {
		res, err := con.PgConn().Exec(ctx, cmd).ReadAll()
		if err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
		for _, r := range res {
			for _, row := range r.Rows {
				for _, v := range row {
					channels.Write(v)
					channels.WriteByte(' ')
				}
			}
		}
	}
	if !strings.Contains(channels.String(), "SELECT $1 AS leaked") {
		t.Errorf("SHOW LEAKS lacks the normalized statement: %s", channels.String())
	}
	_, metricsBody := pgtest.HTTPGet(httpAddr, "/metrics")
	_, status := pgtest.HTTPGet(statusAddr, "/status.json")
	if !strings.Contains(status, "SELECT $1 AS leaked") {
		t.Errorf("/status.json lacks the normalized statement: %.500s", status)
	}
	if !strings.Contains(metricsBody, `pgsidecar_client_errors_total{reason="auth_failed"}`) {
		t.Errorf("/metrics lacks auth_failed")
	}
	// No secret and no literal in any output: log, console, metrics, status.
	out := map[string]string{"log": p.output(), "console": channels.String(), "metrics": metricsBody, "status.json": status}
	for name, text := range out {
		for _, secret := range []string{"up-secret", "file-pass-1", "file-pass-2", "file-pass-3", "nope", "card=4111"} {
			if strings.Contains(text, secret) {
				t.Errorf("the %s shows %q", name, secret)
			}
		}
		// Nor any piece of a SCRAM exchange (client-first "n,,n=", client-final
		// "c=biws,r=", server-final "v="), a verifier or an md5 hash.
		for _, piece := range []string{"n,,n=", "c=biws", ",p=", "v=", "SCRAM-SHA-256$", `"md5`} {
			if strings.Contains(text, piece) {
				t.Errorf("the %s shows a piece of an authentication exchange or secret: %q", name, piece)
			}
		}
	}
}

func errorString(err error) string {
	if err == nil {
		return "nil"
	}
	return err.Error()
}
