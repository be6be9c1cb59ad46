package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/localpg"
	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/pool"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
)

// cluster is the PostgreSQL shared by the package's tests (nil: binaries missing
// outside CI, tests skip).
var cluster *localpg.Cluster

func TestMain(m *testing.M) {
	c, stop, err := pgtest.Main(localpg.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "proxy tests:", err)
		os.Exit(1)
	}
	cluster = c
	code := m.Run()
	stop()
	os.Exit(code)
}

// testProxy is a proxy served in-process in front of the shared cluster.
type testProxy struct {
	srv   *proxy.Server
	pools *pool.Registry
	addr  string
	db    string
	// appName is the application_name the proxy's backends log in with; a
	// client's own application_name replaces it while the client uses a backend, so
	// tests find the proxy's backends by database instead (serverBackends): every
	// connection to the test's database except direct ones (directAppName).
	appName string
}

type proxyOpts struct {
	PoolSize int
	Mode     proxy.PoolMode
	// Options overrides; Logger defaults to the test log at Warn.
	Opt proxy.Options
	// Lifetime and IdleTimeout of backends.
	Lifetime, IdleTimeout time.Duration
	// Upstream overrides the upstream URL (default: the shared cluster's).
	Upstream string
}

var dbSeq struct {
	sync.Mutex
	n int
}

// newDatabase creates a fresh database so that a test's tables and counts are its own.
func newDatabase(t testing.TB) string {
	t.Helper()
	needCluster(t)
	dbSeq.Lock()
	dbSeq.n++
	name := fmt.Sprintf("t%d_%s", dbSeq.n, strings.ToLower(strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())))
	if len(name) > 60 {
		name = name[:60]
	}
	dbSeq.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cluster.CreateDatabase(ctx, name); err != nil {
		t.Fatalf("create database %s: %v", name, err)
	}
	return name
}

func needCluster(t testing.TB) {
	t.Helper()
	if cluster == nil {
		t.Skip("PostgreSQL server binaries not found")
	}
}

// directAppName marks the tests' direct connections to PostgreSQL.
const directAppName = "pgsidecar_test_direct"

// startProxy starts a proxy for database db and returns it; it is closed at cleanup.
func startProxy(t testing.TB, db string, o proxyOpts) *testProxy {
	t.Helper()
	needCluster(t)
	checkNoProxyGoroutines(t)
	if o.PoolSize == 0 {
		o.PoolSize = 2
	}
	up := o.Upstream
	if up == "" {
		up = cluster.URL(db)
	}
	cfg, err := pgconn.ParseConfig(up)
	if err != nil {
		t.Fatal(err)
	}
	tp := &testProxy{db: db, appName: "pgsidecar_" + db}
	cfg.RuntimeParams["application_name"] = tp.appName
	cfg.ConnectTimeout = 5 * time.Second
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	tp.pools = pool.NewRegistry(func(k pool.Key) *pool.Pool {
		pc := cfg.Copy()
		pc.Database, pc.User = k.Database, k.User
		return pool.New(pool.Config{
			Size:           o.PoolSize,
			Lifetime:       o.Lifetime,
			IdleTimeout:    o.IdleTimeout,
			ConnectTimeout: 5 * time.Second,
			Dial:           pool.PgconnDialer(pc),
			Logger:         log,
		})
	})
	opt := o.Opt
	opt.Mode = o.Mode
	if opt.Logger == nil {
		opt.Logger = log
	}
	if opt.QueryWaitTimeout == 0 {
		opt.QueryWaitTimeout = 20 * time.Second
	}
	tp.srv = proxy.NewServer(opt, tp.pools)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tp.addr = ln.Addr().String()
	done := make(chan error, 1)
	go func() { done <- tp.srv.Serve(ln) }()
	t.Cleanup(func() {
		_ = tp.srv.Close()
		if err := <-done; err != proxy.ErrServerClosed {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
		tp.pools.Close()
	})
	return tp
}

// URL is a client connection string for the proxy.
func (tp *testProxy) URL() string {
	return fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable", tp.addr, tp.db)
}

// connect opens a pgx connection through the proxy.
func (tp *testProxy) connect(t testing.TB, mode pgx.QueryExecMode) *pgx.Conn {
	t.Helper()
	c, err := tp.tryConnect(t, mode)
	if err != nil {
		t.Fatalf("connect through proxy: %v", err)
	}
	return c
}

// tryConnect opens a pgx connection through the proxy, returning the error; a
// connection is closed at cleanup.
func (tp *testProxy) tryConnect(t testing.TB, mode pgx.QueryExecMode) (*pgx.Conn, error) {
	t.Helper()
	cfg, err := pgx.ParseConfig(tp.URL())
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = mode
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c, nil
}

// direct opens a pgx connection straight to PostgreSQL (for checks and setup).
func direct(t testing.TB, db string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg, err := pgx.ParseConfig(cluster.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	// Not counted as a proxy backend (see serverBackends).
	cfg.RuntimeParams["application_name"] = directAppName
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect directly: %v", err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// serverBackends counts the proxy's backends in pg_stat_activity, by state.
func (tp *testProxy) serverBackends(t testing.TB, chk *pgx.Conn) map[string]int {
	t.Helper()
	rows, err := chk.Query(context.Background(),
		`SELECT coalesce(state, ''), count(*) FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend' AND application_name <> 'pgsidecar_test_direct' AND pid <> pg_backend_pid() GROUP BY 1`, tp.db)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for rows.Next() {
		var s string
		var n int
		if err := rows.Scan(&s, &n); err != nil {
			t.Fatal(err)
		}
		out[s] = n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// eventually polls cond until it returns nil or the deadline passes.
func eventually(t testing.TB, within time.Duration, what string, cond func() error) {
	t.Helper()
	pgtest.Eventually(t, within, what, cond)
}

// pgCode returns the SQLSTATE of err, or "".
func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
