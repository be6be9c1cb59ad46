package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/localpg"
	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
)

// runMainEnv makes the test binary act as the proxy binary for end-to-end
// tests. It has no PGSIDECAR_ prefix: the proxy rejects unknown PGSIDECAR_*
// variables.
const runMainEnv = "GO_TEST_PGSIDECAR_RUN_MAIN"

// TestMain lets the test binary act as the proxy binary for end-to-end tests.
func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		os.Exit(run(os.Args[1:], os.Getenv, os.Environ, os.Stdout, os.Stderr))
	}
	// The tests' throwaway clusters have no passwords: the proxies they start
	// let clients in without one unless a test says otherwise (a flag wins).
	os.Setenv("PGSIDECAR_CLIENT_AUTH", "trust")
	// Proxies run side by side: no status page on its fixed default port.
	os.Setenv("PGSIDECAR_STATUS_LISTEN", "off")
	os.Exit(m.Run())
}

// The binary serves clients, answers health checks and metrics, and on SIGTERM lets
// an open transaction commit, then exits 0.
func TestBinarySIGTERM(t *testing.T) {
	cl := pgtest.Start(t, localpg.Options{})
	listen, httpAddr, statusAddr := pgtest.FreeAddr(t), pgtest.FreeAddr(t), pgtest.FreeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "--listen", listen, "--http-listen", httpAddr,
		"--status-listen", statusAddr, "--pool-size", "2", "--shutdown-timeout", "10s", "--log-format", "json")
	cmd.Env = append(os.Environ(), runMainEnv+"=1", "DATABASE_URL="+cl.URL("postgres"))
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logs := make(chan string, 1000)
	logsDone := make(chan struct{})
	go func() {
		defer close(logsDone)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logs <- sc.Text()
		}
		close(logs)
	}()
	get := func(path string) (int, string) { return pgtest.HTTPGet(httpAddr, path) }
	pgtest.Eventually(t, 20*time.Second, "proxy ready", func() error {
		if code, body := get("/readyz"); code != 200 {
			return fmt.Errorf("/readyz %d: %q", code, body)
		}
		return nil
	})
	if code, _ := get("/livez"); code != 200 {
		t.Fatalf("/livez = %d", code)
	}
	url := fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable", listen)
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(ctx, "CREATE TABLE IF NOT EXISTS e2e (id int)"); err != nil {
		t.Fatal(err)
	}
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO e2e VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, `pgsidecar_server_connections{database="postgres",state="active",user="postgres"} 1`) {
		t.Fatalf("/metrics = %d, want one active server connection:\n%s", code, body)
	}
	// The status page and its data, on their own listener: one active server
	// connection, the open transaction listed as idle in transaction with its
	// last statement, its constant replaced. The metrics listener has no
	// status page.
	status := func(path string) (int, string) { return pgtest.HTTPGet(statusAddr, path) }
	if code, body := status("/"); code != 200 || !strings.Contains(body, "pgsidecar status") {
		t.Fatalf("GET / = %d:\n%s", code, body)
	}
	for _, p := range []string{"/", "/status.json"} {
		if code, _ := get(p); code != 404 {
			t.Errorf("GET %s on --http-listen: %d, want 404", p, code)
		}
	}
	if code, body := status("/status.json"); code != 200 || !strings.Contains(body, `"active":1`) ||
		!strings.Contains(body, `"state":"idle_in_transaction"`) || !strings.Contains(body, "INSERT INTO e2e VALUES ($1)") {
		t.Fatalf("/status.json = %d, want the pool and the open transaction:\n%s", code, body)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Draining: not ready any more, but the open transaction may finish.
	pgtest.Eventually(t, 5*time.Second, "/readyz not 200 after SIGTERM", func() error {
		if code, body := get("/readyz"); code != 503 && code != 0 {
			return fmt.Errorf("/readyz %d: %q", code, body)
		}
		return nil
	})
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("commit during drain: %v", err)
	}
	// All of stderr first: Wait closes the pipe, losing what was not read yet.
	select {
	case <-logsDone:
	case <-ctx.Done():
		t.Fatal("proxy did not exit")
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("proxy exit: %v", err)
	}
	d, err := pgx.Connect(ctx, cl.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(context.Background())
	var n int
	if err := d.QueryRow(ctx, "SELECT count(*) FROM e2e").Scan(&n); err != nil || n != 1 {
		t.Fatalf("committed rows %d %v, want 1", n, err)
	}
	var all []string
	for l := range logs {
		all = append(all, l)
	}
	if !strings.Contains(strings.Join(all, "\n"), "pgsidecar stopped") {
		t.Fatalf("no clean stop in the log:\n%s", strings.Join(all, "\n"))
	}
}
