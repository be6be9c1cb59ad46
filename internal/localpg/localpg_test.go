package localpg_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/localpg"
)

const testTimeout = 2 * time.Minute

// startCluster starts a cluster, skipping when PostgreSQL is not installed
// (failing instead under CI=true). The cluster is closed at cleanup.
func startCluster(t *testing.T, opts localpg.Options) *localpg.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	c, err := localpg.Start(ctx, opts)
	if errors.Is(err, localpg.ErrNoBinaries) && os.Getenv("CI") != "true" {
		t.Skipf("PostgreSQL binaries not available: %v", err)
	}
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server log tail:\n%s", c.LogTail(40))
		}
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

// queryOne runs sql on url and returns the first column of the first row.
func queryOne(t *testing.T, ctx context.Context, url, sql string) string {
	t.Helper()
	conn, err := pgconn.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	defer conn.Close(ctx)
	res := conn.ExecParams(ctx, sql, nil, nil, nil, nil).Read()
	if res.Err != nil {
		t.Fatalf("%s: %v", sql, res.Err)
	}
	if len(res.Rows) == 0 || len(res.Rows[0]) == 0 {
		t.Fatalf("%s: no rows", sql)
	}
	return string(res.Rows[0][0])
}

// exec runs sql statements on url.
func exec(t *testing.T, ctx context.Context, url, sql string) {
	t.Helper()
	conn, err := pgconn.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql).ReadAll(); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func TestClusterLifecycle(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()

	c := startCluster(t, localpg.Options{})

	if c.Host != "127.0.0.1" || c.User != "postgres" || c.Port <= 0 || c.BinDir == "" {
		t.Fatalf("unexpected cluster fields: %+v", c)
	}
	for _, d := range []string{c.Dir, c.SocketDir} {
		if fi, err := os.Stat(d); err != nil || !fi.IsDir() {
			t.Fatalf("directory %q: %v", d, err)
		}
	}
	wantURL := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/app?sslmode=disable", c.Port)
	if got := c.URL("app"); got != wantURL {
		t.Fatalf("URL = %q, want %q", got, wantURL)
	}

	if got := queryOne(t, ctx, c.URL("postgres"), "SELECT 1"); got != "1" {
		t.Fatalf("SELECT 1 = %q", got)
	}
	for setting, want := range map[string]string{
		"fsync":              "off",
		"synchronous_commit": "off",
		"full_page_writes":   "off",
		"max_connections":    "300",
		"listen_addresses":   "127.0.0.1",
		"port":               strconv.Itoa(c.Port),
	} {
		if got := queryOne(t, ctx, c.URL("postgres"), "SHOW "+setting); got != want {
			t.Errorf("SHOW %s = %q, want %q", setting, got, want)
		}
	}
	// The socket lives in SocketDir too.
	if _, err := os.Stat(filepath.Join(c.SocketDir, ".s.PGSQL."+strconv.Itoa(c.Port))); err != nil {
		t.Errorf("unix socket: %v", err)
	}

	if err := c.CreateDatabase(ctx, "app"); err != nil {
		t.Fatalf("CreateDatabase: %v", err)
	}
	if err := c.CreateDatabase(ctx, "app"); err != nil {
		t.Fatalf("CreateDatabase of an existing database: %v", err)
	}
	if got := queryOne(t, ctx, c.URL("app"), "SELECT current_database()"); got != "app" {
		t.Fatalf("current_database() = %q", got)
	}
	exec(t, ctx, c.URL("app"), "CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")

	port := c.Port
	if err := c.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := c.Stop(ctx); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if conn, err := pgconn.Connect(ctx, c.URL("postgres")); err == nil {
		conn.Close(ctx)
		t.Fatal("connect after Stop succeeded")
	}
	if _, err := os.Stat(filepath.Join(c.Dir, "data", "PG_VERSION")); err != nil {
		t.Fatalf("data kept after Stop: %v", err)
	}

	if err := c.Start(ctx); err != nil {
		t.Fatalf("restart: %v", err)
	}
	if c.Port != port {
		t.Fatalf("port changed on restart: %d -> %d", port, c.Port)
	}
	if got := queryOne(t, ctx, c.URL("app"), "SELECT v FROM kept"); got != "42" {
		t.Fatalf("data after restart = %q, want 42", got)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatalf("Start while running: %v", err)
	}

	tail := c.LogTail(1000)
	if n := strings.Count(tail, "database system is ready to accept connections"); n != 2 {
		t.Errorf("log shows %d ready messages, want 2; log:\n%s", n, tail)
	}
	if got := strings.Count(c.LogTail(3), "\n"); got != 2 {
		t.Errorf("LogTail(3) has %d newlines, want 2", got)
	}

	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := os.Stat(c.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Dir %s still exists after Close (err=%v)", c.Dir, err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := c.Start(ctx); err == nil {
		t.Fatal("Start after Close succeeded")
	}
	if conn, err := pgconn.Connect(ctx, c.URL("postgres")); err == nil {
		conn.Close(ctx)
		t.Fatal("connect after Close succeeded")
	}
}

func TestKeptDirIsReused(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()

	base := t.TempDir()
	dir := filepath.Join(base, "cluster")
	if os.Geteuid() == 0 {
		// t.TempDir's parent is 0700: the server user cannot reach it.
		_, err := localpg.Start(ctx, localpg.Options{Dir: dir})
		if errors.Is(err, localpg.ErrNoBinaries) && os.Getenv("CI") != "true" {
			t.Skipf("PostgreSQL binaries not available: %v", err)
		}
		if err == nil || !strings.Contains(err.Error(), "not searchable") {
			t.Fatalf("Start under a 0700 parent as root: err = %v, want 'not searchable'", err)
		}
		for _, d := range []string{base, filepath.Dir(base)} {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}

	c := startCluster(t, localpg.Options{Dir: dir, Settings: map[string]string{"max_connections": "50"}})
	if c.Dir != dir {
		t.Fatalf("Dir = %q, want %q", c.Dir, dir)
	}
	if got := queryOne(t, ctx, c.URL("postgres"), "SHOW max_connections"); got != "50" {
		t.Fatalf("max_connections = %q, want 50 (Settings override)", got)
	}
	if err := c.CreateDatabase(ctx, `we"ird db`); err != nil {
		t.Fatalf("CreateDatabase: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "PG_VERSION")); err != nil {
		t.Fatalf("kept data dir: %v", err)
	}

	c2 := startCluster(t, localpg.Options{Dir: dir})
	got := queryOne(t, ctx, c2.URL("postgres"), `SELECT count(*) FROM pg_database WHERE datname = 'we"ird db'`)
	if got != "1" {
		t.Fatalf("database from the first run: count = %q, want 1", got)
	}
	if got := queryOne(t, ctx, c2.URL(`we"ird db`), "SELECT current_database()"); got != `we"ird db` {
		t.Fatalf("current_database() = %q", got)
	}
	if !strings.Contains(c2.LogTail(1000), "ready to accept connections") {
		t.Fatalf("log tail lacks ready message:\n%s", c2.LogTail(20))
	}
}

func TestStartFailsWhenPortTaken(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port

	c, err := localpg.Start(ctx, localpg.Options{Port: port})
	if errors.Is(err, localpg.ErrNoBinaries) && os.Getenv("CI") != "true" {
		t.Skipf("PostgreSQL binaries not available: %v", err)
	}
	if err == nil {
		c.Close()
		t.Fatalf("Start on a taken port %d succeeded", port)
	}
	t.Logf("expected error: %v", err)
	if !strings.Contains(err.Error(), "could not bind") {
		t.Fatalf("error does not quote the bind failure from the log: %v", err)
	}
}

func TestStartRejectsReservedSettings(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"port", "unix_socket_directories", "Data_Directory"} {
		_, err := localpg.Start(t.Context(), localpg.Options{Settings: map[string]string{name: "x"}})
		if err == nil || !strings.Contains(err.Error(), "managed by localpg") {
			t.Errorf("setting %s: err = %v, want rejection", name, err)
		}
	}
}

// fakeBinDir makes a directory with executable initdb and postgres stubs.
func fakeBinDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"initdb", "postgres"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestFindBinDirHonoursPGBin(t *testing.T) {
	fake := fakeBinDir(t)
	t.Setenv("PG_BIN", fake)
	got, err := localpg.FindBinDir()
	if err != nil {
		t.Fatalf("FindBinDir: %v", err)
	}
	if got != fake {
		t.Fatalf("FindBinDir = %q, want PG_BIN %q", got, fake)
	}

	// A PG_BIN without the binaries is an error, not a silent fallback.
	empty := t.TempDir()
	t.Setenv("PG_BIN", empty)
	if _, err := localpg.FindBinDir(); !errors.Is(err, localpg.ErrNoBinaries) {
		t.Fatalf("FindBinDir with empty PG_BIN: err = %v, want ErrNoBinaries", err)
	}
}

func TestFindBinDirDiscovers(t *testing.T) {
	t.Setenv("PG_BIN", "")
	dir, err := localpg.FindBinDir()
	if errors.Is(err, localpg.ErrNoBinaries) && os.Getenv("CI") != "true" {
		t.Skipf("PostgreSQL binaries not available: %v", err)
	}
	if err != nil {
		t.Fatalf("FindBinDir: %v", err)
	}
	for _, name := range []string{"initdb", "postgres"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("FindBinDir = %q lacks %s: %v", dir, name, err)
		}
	}
}

func TestStartMissingBinaries(t *testing.T) {
	empty := t.TempDir()
	_, err := localpg.Start(t.Context(), localpg.Options{BinDir: empty})
	if !errors.Is(err, localpg.ErrNoBinaries) {
		t.Fatalf("Start with empty BinDir: err = %v, want ErrNoBinaries", err)
	}

	t.Setenv("PG_BIN", empty)
	_, err = localpg.Start(t.Context(), localpg.Options{})
	if !errors.Is(err, localpg.ErrNoBinaries) {
		t.Fatalf("Start with empty PG_BIN: err = %v, want ErrNoBinaries", err)
	}
}
