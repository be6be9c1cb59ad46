package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/localpg"
	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
)

// mountedDir imitates a Kubernetes ConfigMap or Secret volume: each file is a
// symlink to ..data/NAME, and an update writes a new directory and swaps the
// ..data symlink atomically.
type mountedDir struct {
	t   *testing.T
	dir string
	gen int
}

func newMountedDir(t *testing.T, files map[string]string) *mountedDir {
	m := &mountedDir{t: t, dir: t.TempDir()}
	m.update(files)
	for name := range files {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(m.dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

func (m *mountedDir) path(name string) string { return filepath.Join(m.dir, name) }

// update replaces the contents of every file at once, as the kubelet does.
func (m *mountedDir) update(files map[string]string) {
	m.t.Helper()
	m.gen++
	d := fmt.Sprintf("..2026_12_06_%d", m.gen)
	if err := os.Mkdir(filepath.Join(m.dir, d), 0o755); err != nil {
		m.t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(m.dir, d, name), []byte(content), 0o644); err != nil {
			m.t.Fatal(err)
		}
	}
	tmp := filepath.Join(m.dir, "..data_tmp")
	if err := os.Symlink(d, tmp); err != nil {
		m.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(m.dir, "..data")); err != nil {
		m.t.Fatal(err)
	}
}

// requirePassword makes PostgreSQL ask role for a SCRAM password over TCP
// (the test cluster trusts everyone otherwise).
func requirePassword(t *testing.T, cl *localpg.Cluster, admin *pgx.Conn, role string) {
	t.Helper()
	hba := filepath.Join(cl.Dir, "data", "pg_hba.conf")
	old, err := os.ReadFile(hba)
	if err != nil {
		t.Fatal(err)
	}
	line := fmt.Sprintf("host all %s 127.0.0.1/32 scram-sha-256\n", role)
	if err := os.WriteFile(hba, append([]byte(line), old...), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(context.Background(), "SELECT pg_reload_conf()"); err != nil {
		t.Fatal(err)
	}
	pgtest.Eventually(t, 10*time.Second, "PostgreSQL asks "+role+" for a password", func() error {
		c, err := pgx.Connect(context.Background(), fmt.Sprintf("postgres://%s:wrong@127.0.0.1:%d/postgres?sslmode=disable", role, cl.Port))
		if err == nil {
			c.Close(context.Background())
			return errors.New("a wrong password still works")
		}
		return nil
	})
}

// The configuration changes under 12 busy clients, through a ConfigMap-like
// and a Secret-like mounted directory: the pool shrinks and grows, the
// upstream password is rotated (PostgreSQL's first, then the Secret), an
// invalid configuration is rejected and the console's RELOAD reports what needs
// a restart. No client sees an error and no client is dropped.
func TestReloadUnderLoad(t *testing.T) {
	pgtest.NeedBinaries(t)
	cl := pgtest.Start(t, localpg.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	admin, err := pgx.Connect(ctx, cl.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	if _, err := admin.Exec(ctx, "CREATE ROLE app LOGIN PASSWORD 'old-password'"); err != nil {
		t.Fatal(err)
	}
	requirePassword(t, cl, admin, "app")
	serverConns := func() (n int, pids []uint32) {
		rows, err := admin.Query(ctx, "SELECT pid FROM pg_stat_activity WHERE usename = 'app' AND backend_type = 'client backend'")
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var pid uint32
			if err := rows.Scan(&pid); err != nil {
				t.Fatal(err)
			}
			pids = append(pids, pid)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return len(pids), pids
	}

	listen, httpAddr := pgtest.FreeAddr(t), pgtest.FreeAddr(t)
	conf := func(extra string) string {
		return "# pgsidecar.conf, as a ConfigMap\nadmin-users = postgres\nserver-idle-timeout = 10m\n" + extra
	}
	cm := newMountedDir(t, map[string]string{"pgsidecar.conf": conf("pool-size = 4\n")})
	secret := newMountedDir(t, map[string]string{
		"url":      fmt.Sprintf("postgres://app@127.0.0.1:%d/postgres?sslmode=disable\n", cl.Port),
		"password": "old-password\n",
	})
	statusAddr := pgtest.FreeAddr(t)
	p := startProxy(t, nil, "--listen", listen, "--http-listen", httpAddr, "--status-listen", statusAddr, "--log-format", "json",
		"--config", cm.path("pgsidecar.conf"), "--upstream-file", secret.path("url"),
		"--upstream-password-file", secret.path("password"), "--shutdown-timeout", "10s")
	p.waitFor(t, `"msg":"pgsidecar listening"`, 1, 30*time.Second)
	// metric sums the series of name with labels.
	metric := func(name string, labels map[string]string) float64 {
		t.Helper()
		m, err := pgtest.ScrapeMetrics(httpAddr)
		if err != nil {
			t.Fatal(err)
		}
		v, _ := m.Value(name, labels)
		return v
	}
	success, failure := map[string]string{"result": "success"}, map[string]string{"result": "error"}

	// 12 clients, each in a loop of short transactions on its own connection;
	// a client stops at its first error.
	const clients = 12
	conns := make([]*pgx.Conn, clients)
	for i := range conns {
		conns[i] = pgtest.Connect(t, fmt.Sprintf("postgres://app@%s/postgres?sslmode=disable", listen), 0,
			map[string]string{"application_name": fmt.Sprintf("worker%d", i)})
	}
	crowd := pgtest.NewCrowd(t, "clients")
	for i, c := range conns {
		crowd.Go(func(ctx context.Context, _ int) error {
			err := pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
				var one int
				if err := tx.QueryRow(ctx, "SELECT 1 FROM pg_sleep(0.002)").Scan(&one); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, "SELECT $1::int", i)
				return err
			})
			if err != nil {
				return pgtest.Quit(fmt.Errorf("client %d: %w", i, err))
			}
			return nil
		})
	}
	checkClients := func(phase string) {
		t.Helper()
		if fails := crowd.Failures(); len(fails) > 0 {
			t.Fatalf("%s: clients failed: %s\n%s", phase, strings.Join(fails, "\n"), p.output())
		}
	}
	progress := func(phase string) {
		t.Helper()
		crowd.Progress(t, phase+": clients make progress", 5*clients, 10*time.Second)
		checkClients(phase)
	}

	pgtest.Eventually(t, 20*time.Second, "pool fills to 4", func() error {
		if n, _ := serverConns(); n != 4 {
			return fmt.Errorf("%d server connections", n)
		}
		return nil
	})
	progress("start")

	// 1. Pool size down: 4 -> 2, from the mounted file alone.
	cm.update(map[string]string{"pgsidecar.conf": conf("pool-size = 2\n")})
	p.waitFor(t, `"setting":"pool-size","old":"4","new":"2"`, 1, 10*time.Second)
	pgtest.Eventually(t, 10*time.Second, "pool shrinks to 2", func() error {
		if n, _ := serverConns(); n != 2 {
			return fmt.Errorf("%d server connections", n)
		}
		return nil
	})
	progress("pool-size 2")
	// It stays at 2 under load.
	for range 20 {
		if n, _ := serverConns(); n > 2 {
			t.Fatalf("%d server connections with pool-size 2", n)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// 2. Pool size up: 2 -> 6.
	cm.update(map[string]string{"pgsidecar.conf": conf("pool-size = 6\n")})
	pgtest.Eventually(t, 10*time.Second, "pool grows to 6", func() error {
		if n, _ := serverConns(); n != 6 {
			return fmt.Errorf("%d server connections", n)
		}
		return nil
	})
	progress("pool-size 6")
	if got := metric("pgsidecar_config_reloads_total", success); got != 2 {
		t.Errorf("reloads_total{success} = %v, want 2", got)
	}

	// 3. Password rotation: PostgreSQL first (open connections stay logged in),
	// then the Secret. Every server connection is replaced by one that logged
	// in with the new password, as it is released.
	_, oldPIDs := serverConns()
	if _, err := admin.Exec(ctx, "ALTER ROLE app PASSWORD 'new-password'"); err != nil {
		t.Fatal(err)
	}
	progress("PostgreSQL password changed")
	secret.update(map[string]string{
		"url":      fmt.Sprintf("postgres://app@127.0.0.1:%d/postgres?sslmode=disable\n", cl.Port),
		"password": "new-password\n",
	})
	p.waitFor(t, `"setting":"upstream","old":"(old)","new":"(changed)"`, 1, 10*time.Second)
	pgtest.Eventually(t, 20*time.Second, "every server connection replaced", func() error {
		_, pids := serverConns()
		for _, pid := range pids {
			for _, old := range oldPIDs {
				if pid == old {
					return fmt.Errorf("server pid %d still open", pid)
				}
			}
		}
		return nil
	})
	progress("password rotated")
	if strings.Contains(p.output(), "new-password") || strings.Contains(p.output(), "old-password") {
		t.Error("a password appears in the log")
	}

	// 4. An invalid configuration is rejected as a whole: pool-size 1 is not
	// applied because max-client-conn is invalid.
	cm.update(map[string]string{"pgsidecar.conf": conf("pool-size = 1\nmax-client-conn = 0\nbogus = 1\n")})
	p.waitFor(t, `"msg":"configuration reload rejected`, 1, 10*time.Second)
	// A line for each problem, logged after the rejection's.
	p.waitFor(t, `bogus: unknown setting`, 1, 10*time.Second)
	p.waitFor(t, `--max-client-conn: must be at least 1`, 1, 10*time.Second)
	if got := metric("pgsidecar_config_reloads_total", failure); got != 1 {
		t.Errorf("reloads_total{error} = %v, want 1", got)
	}
	if got := metric("pgsidecar_config_last_reload_successful", nil); got != 0 {
		t.Errorf("last_reload_successful = %v, want 0", got)
	}
	progress("rejected configuration")
	if n, _ := serverConns(); n != 6 {
		t.Errorf("%d server connections after a rejected reload, want 6", n)
	}

	// 5. The console's RELOAD: ERROR F0000 while the file is invalid; once it
	// is fixed, a NOTICE saying what was applied and what needs a restart.
	con, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres@%s/pgsidecar?sslmode=disable", listen))
	if err != nil {
		t.Fatal(err)
	}
	defer con.Close(context.Background())
	_, err = con.Exec(ctx, "RELOAD")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "F0000" || !strings.Contains(pgErr.Message, "bogus: unknown setting") {
		t.Fatalf("RELOAD of an invalid file: %v", err)
	}
	var notices []string
	var nmu sync.Mutex
	con2cfg, err := pgx.ParseConfig(fmt.Sprintf("postgres://postgres@%s/pgsidecar?sslmode=disable", listen))
	if err != nil {
		t.Fatal(err)
	}
	con2cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		nmu.Lock()
		notices = append(notices, n.Message)
		nmu.Unlock()
	}
	con2, err := pgx.ConnectConfig(ctx, con2cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer con2.Close(context.Background())
	// The watcher reloads the new file first; RELOAD then has nothing new to
	// apply, but still reports the pool mode that needs a restart. (A file's
	// listen address would be overridden by --listen: logged, not a change.)
	reloadedLines := strings.Count(p.output(), `"msg":"configuration reloaded"`)
	cm.update(map[string]string{"pgsidecar.conf": conf("pool-size = 5\npool-mode = session\nleak-threshold = 3s\nlog-level = warn\n")})
	p.waitFor(t, `"msg":"configuration change needs a restart: not applied"`, 1, 10*time.Second)
	if _, err := con2.Exec(ctx, "RELOAD"); err != nil {
		t.Fatalf("RELOAD: %v", err)
	}
	nmu.Lock()
	if len(notices) != 1 || notices[0] != "configuration reloaded; needs a restart, not applied: pool-mode transaction -> session" {
		t.Errorf("RELOAD notices: %q", notices)
	}
	nmu.Unlock()
	p.waitFor(t, `"setting":"pool-mode","old":"transaction","new":"session"`, 1, 0)
	pgtest.Eventually(t, 10*time.Second, "pool shrinks to 5", func() error {
		if n, _ := serverConns(); n != 5 {
			return fmt.Errorf("%d server connections", n)
		}
		return nil
	})
	progress("pool-size 5")
	if got := metric("pgsidecar_config_last_reload_successful", nil); got != 1 {
		t.Errorf("last_reload_successful = %v, want 1", got)
	}
	// The leak threshold and the log level are in force: the status page shows
	// 3s, and a SIGHUP's reload logs its WARN but no longer its INFO line.
	if _, body := pgtest.HTTPGet(statusAddr, "/status.json"); !strings.Contains(body, `"leak_threshold_seconds":3`) {
		t.Errorf("status page: %.300s", body)
	}
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	p.waitFor(t, `"msg":"configuration change needs a restart: not applied","trigger":"SIGHUP"`, 1, 10*time.Second)
	if n := strings.Count(p.output(), `"msg":"configuration reloaded"`); n != reloadedLines {
		t.Errorf("%d INFO lines of reloads at log-level warn, want %d", n-reloadedLines, 0)
	}

	crowd.Halt()
	checkClients("end")
	t.Logf("%d transactions by %d clients across %v applied and %v rejected reloads; 0 client errors, 0 clients dropped",
		crowd.Done(), clients, metric("pgsidecar_config_reloads_total", success), metric("pgsidecar_config_reloads_total", failure))
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("exit %d:\n%s", code, p.output())
	}
}
