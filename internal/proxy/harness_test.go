package proxy_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
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
	c, stop, err := pgtest.Main(localpg.Options{TLS: true}) // TLS: tls_upstream_test.go
	if err != nil {
		fmt.Fprintln(os.Stderr, "proxy tests:", err)
		os.Exit(1)
	}
	cluster = c
	code := m.Run()
	stop()
	os.Exit(code)
}

// upstreamSSLModeEnv, set to an sslmode (require, verify-full), makes every
// proxy of the suite reach the shared cluster (ssl=on) over TLS, unless the
// test names its own upstream: make test runs the suite once that way.
const upstreamSSLModeEnv = "PGSIDECAR_TEST_UPSTREAM_SSLMODE"

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
	// url, when set, replaces URL's connection string (a TLS test's sslmode
	// and files).
	url string
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
		if mode := os.Getenv(upstreamSSLModeEnv); mode != "" {
			up = cluster.URLSSL(db, mode) // the whole suite over TLS server connections
		}
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
	if tp.url != "" {
		return tp.url
	}
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
	return pgtest.TryConnect(t, tp.URL(), mode, nil)
}

// direct opens a pgx connection straight to PostgreSQL (for checks and setup).
// It is not counted as a proxy backend (see proxyBackends): its
// application_name is directAppName.
func direct(t testing.TB, db string) *pgx.Conn {
	t.Helper()
	return pgtest.Connect(t, cluster.URL(db), 0, map[string]string{"application_name": directAppName})
}

// proxyBackends is the condition on pg_stat_activity of the proxy's backends for
// the database $1 ($1 is tp.db): every client backend there except the test's
// direct connections and the querying one.
const proxyBackends = `datname = $1 AND backend_type = 'client backend' AND application_name <> '` + directAppName + `' AND pid <> pg_backend_pid()`

// countProxyBackends counts the proxy's backends for tp's database on c; it
// returns errors instead of failing the test, for a goroutine other than the
// test's.
func countProxyBackends(ctx context.Context, tp *testProxy, c *pgx.Conn) (int, error) {
	var n int
	err := c.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE `+proxyBackends, tp.db).Scan(&n)
	return n, err
}

// monitorProxyBackends samples how many backends the proxy of tp has in
// PostgreSQL (countProxyBackends) until the test ends or Finish.
func monitorProxyBackends(t testing.TB, tp *testProxy) *pgtest.BackendMonitor {
	t.Helper()
	return pgtest.MonitorBackends(t, direct(t, tp.db), func(ctx context.Context, c *pgx.Conn) (int, int, error) {
		n, err := countProxyBackends(ctx, tp, c)
		return n, 0, err
	})
}

// serverBackends counts the proxy's backends in pg_stat_activity, by state.
func (tp *testProxy) serverBackends(t testing.TB, chk *pgx.Conn) map[string]int {
	t.Helper()
	rows, err := chk.Query(context.Background(),
		`SELECT coalesce(state, ''), count(*) FROM pg_stat_activity WHERE `+proxyBackends+` GROUP BY 1`, tp.db)
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

// pgCode is pgtest.SQLState, the SQLSTATE of err or "", under the short name
// this package's tests use.
var pgCode = pgtest.SQLState

// workloadDirectEnv names the switch that points the driver workloads (Python,
// JDBC, node-postgres) at PostgreSQL itself instead of the proxy: with it set
// to 1 they validate the tests themselves, which must pass that way.
const workloadDirectEnv = "PGSIDECAR_TEST_DIRECT"

// workloadDirect reports whether workloadDirectEnv is set to a true value.
func workloadDirect() bool {
	v, err := strconv.ParseBool(os.Getenv(workloadDirectEnv))
	return err == nil && v
}

// lastBytes returns the last n bytes of s (of a process's output, for a failure
// message).
func lastBytes(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
