// Command proxy is pgsidecar: a PostgreSQL transaction-pooling proxy that runs next
// to an application as a sidecar. See the README for flags and usage.
//
//	proxy [flags]   run the sidecar (every flag also from PGSIDECAR_<FLAG_NAME>)
//	proxy dev       a throwaway local PostgreSQL with the proxy in front of it
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/internal/admin"
	"github.com/pgsidecar/pgsidecar/internal/config"
	"github.com/pgsidecar/pgsidecar/internal/localpg"
	"github.com/pgsidecar/pgsidecar/internal/metrics"
	"github.com/pgsidecar/pgsidecar/internal/pool"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
)

// Exit codes.
const (
	exitOK      = 0
	exitRuntime = 1
	exitConfig  = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	dev := len(args) > 0 && args[0] == "dev"
	if dev {
		args = args[1:]
	}
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := config.Default()
	applyEnv := config.Bind(fs, &cfg)
	for _, a := range args {
		if a == "-h" || a == "-help" || a == "--help" || a == "help" {
			fmt.Fprintf(stdout, "pgsidecar: PostgreSQL transaction-pooling sidecar\n\n"+
				"Usage:\n  proxy [flags]       run the proxy in front of --upstream (or $DATABASE_URL)\n"+
				"  proxy dev [flags]   start a throwaway local PostgreSQL and the proxy in front of it\n\n")
			config.FlagUsage(stdout, fs)
			return exitOK
		}
	}
	fs.Usage = func() { fmt.Fprintln(stderr, "proxy: invalid configuration (see proxy --help)") }
	if err := fs.Parse(args); err != nil {
		return exitConfig
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "proxy: unexpected argument %q (see --help)\n", fs.Arg(0))
		return exitConfig
	}
	var problems []error
	if err := applyEnv(getenv); err != nil {
		problems = append(problems, err)
	}
	if dev && cfg.Upstream == "" {
		cfg.Upstream = "dev" // replaced by the throwaway cluster's URL below
	}
	if err := cfg.Validate(); err != nil {
		problems = append(problems, err)
	}
	var upstream *pgconn.Config
	if cfg.Upstream != "" && !dev {
		var err error
		if upstream, err = pgconn.ParseConfig(cfg.Upstream); err != nil {
			problems = append(problems, fmt.Errorf("--upstream: %w", err))
		}
	}
	if len(problems) > 0 {
		fmt.Fprintf(stderr, "proxy: invalid configuration:\n%v\n", errors.Join(problems...))
		return exitConfig
	}
	log := newLogger(cfg, stderr)
	if path := getenv("PGSIDECAR_CPUPROFILE"); path != "" { // undocumented: for profiling benchmarks
		if f, err := os.Create(path); err == nil {
			if err := pprof.StartCPUProfile(f); err == nil {
				defer pprof.StopCPUProfile()
			}
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	if dev {
		cl, err := localpg.Start(ctx, localpg.Options{Logger: log})
		if err != nil {
			log.Error("could not start the throwaway PostgreSQL", "error", err)
			return exitRuntime
		}
		defer cl.Close()
		cfg.Upstream = cl.URL("postgres")
		if upstream, err = pgconn.ParseConfig(cfg.Upstream); err != nil {
			log.Error("bad dev upstream", "error", err)
			return exitRuntime
		}
		fmt.Fprintf(stdout, "pgsidecar dev: PostgreSQL %s (data in %s)\n", cfg.Upstream, cl.Dir)
		fmt.Fprintf(stdout, "DATABASE_URL=postgres://postgres@%s/postgres?sslmode=disable\n", cfg.Listen)
		fmt.Fprintf(stdout, "try: psql \"postgres://postgres@%s/postgres?sslmode=disable\"   (Ctrl-C stops both)\n", cfg.Listen)
	}
	if err := serve(ctx, cfg, upstream, log); err != nil {
		log.Error("proxy failed", "error", err)
		return exitRuntime
	}
	return exitOK
}

func newLogger(cfg config.Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == config.LogFormatJSON {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// serve runs the proxy until ctx is done, then shuts down gracefully.
func serve(ctx context.Context, cfg config.Config, upstream *pgconn.Config, log *slog.Logger) error {
	if _, ok := upstream.RuntimeParams["application_name"]; !ok {
		upstream.RuntimeParams["application_name"] = "pgsidecar"
	}
	upstream.ConnectTimeout = cfg.ServerConnectTimeout
	pools := pool.NewRegistry(func(k pool.Key) *pool.Pool {
		pc := upstream.Copy()
		pc.Database, pc.User = k.Database, k.User
		return pool.New(pool.Config{
			Size:           cfg.PoolSize,
			Lifetime:       cfg.ServerLifetime,
			IdleTimeout:    cfg.ServerIdleTimeout,
			ConnectTimeout: cfg.ServerConnectTimeout,
			Dial:           pool.PgconnDialer(pc),
			Logger:         log.With("database", k.Database, "user", k.User),
		})
	})
	defer pools.Close()

	mode := proxy.ModeTransaction
	if cfg.PoolMode == config.PoolModeSession {
		mode = proxy.ModeSession
	}
	// Without an HTTP server nobody reads metrics: the hot path reports nothing.
	var obs *metrics.Observer
	var observer proxy.Observer
	if cfg.HTTPListen != "" {
		obs = metrics.NewObserver(cfg.MaxApplicationLabels, cfg.MetricsCompat == config.MetricsCompatPgBouncer)
		observer = obs
	}
	srv := proxy.NewServer(proxy.Options{
		Mode:                    mode,
		MaxClientConn:           cfg.MaxClientConn,
		ClientLoginTimeout:      cfg.ClientLoginTimeout,
		QueryWaitTimeout:        cfg.QueryWaitTimeout,
		IdleTransactionTimeout:  cfg.IdleTransactionTimeout,
		MaxPreparedStatements:   maxPrepared(cfg.MaxPreparedStatements),
		PinPolicy:               pinPolicy(cfg.PinPolicy),
		LeakThreshold:           cfg.LeakThreshold,
		TransactionTimeout:      cfg.TransactionTimeout,
		AdminUsers:              splitList(cfg.AdminUsers),
		MaxMessageSize:          int(cfg.MaxMessageSize),
		MaxMessageMemory:        cfg.MaxMessageMemory,
		MaxClientStatements:     cfg.MaxClientPreparedStatements,
		MaxClientStatementBytes: cfg.MaxClientPreparedBytes,
		Observer:                observer,
		Logger:                  log,
	}, pools)

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	var started atomic.Bool
	var httpSrv *admin.Server
	if cfg.HTTPListen != "" {
		extra := []prometheus.Collector{obs}
		if cfg.MetricsCompat == config.MetricsCompatPgBouncer {
			extra = append(extra, metrics.NewPgBouncerCompat(pools, srv, obs))
		}
		metricsHandler, _ := metrics.Handler(metrics.NewCollector(pools, srv), extra...)
		h := admin.NewHandler(admin.Probes{
			Started: started.Load,
			Ready: func() error {
				if srv.Draining() {
					return errors.New("shutting down")
				}
				if !started.Load() {
					return errors.New("starting")
				}
				return nil
			},
			Status: statusFunc(pools, srv, cfg.LeakThreshold),
		}, metricsHandler)
		if httpSrv, err = admin.Listen(cfg.HTTPListen, h, log); err != nil {
			ln.Close()
			return err
		}
		go func() {
			if err := httpSrv.Serve(); err != nil {
				log.Error("http server failed", "error", err)
			}
		}()
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	started.Store(true)
	log.Info("pgsidecar listening", "listen", ln.Addr().String(), "upstream_host", upstream.Host,
		"upstream_port", upstream.Port, "pool_mode", cfg.PoolMode.String(), "pool_size", cfg.PoolSize,
		"http_listen", cfg.HTTPListen)

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down: no new clients; open transactions may finish", "timeout", cfg.ShutdownTimeout)
	case err := <-serveErr:
		runErr = err
	}
	// A second signal while draining ends every client at once.
	hard := make(chan os.Signal, 1)
	signal.Notify(hard, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(hard)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	go func() {
		select {
		case <-hard:
			log.Warn("second signal: closing every client now")
			cancel()
		case <-sctx.Done():
		}
	}()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("shutdown timeout reached: remaining clients ended, their transactions rolled back", "error", err)
	}
	cancel()
	if httpSrv != nil {
		hctx, hcancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = httpSrv.Shutdown(hctx)
		hcancel()
	}
	if runErr != nil && !errors.Is(runErr, proxy.ErrServerClosed) {
		return runErr
	}
	log.Info("pgsidecar stopped")
	return nil
}

// statusFunc builds the status page's snapshot (admin.Status) from the pools and
// the server; admin itself depends on neither.
func statusFunc(pools *pool.Registry, srv *proxy.Server, leakThreshold time.Duration) func() admin.Status {
	return func() admin.Status {
		st := admin.Status{Time: time.Now(), Clients: map[string]int{}, LeakThresholdSeconds: leakThreshold.Seconds()}
		pinned := srv.PinnedServers()
		for _, r := range pools.Pools() {
			ps := r.Pool.Stats()
			st.Pools = append(st.Pools, admin.PoolStatus{
				Database: r.Key.Database, User: r.Key.User,
				Size: ps.Size, Active: ps.InUse, Idle: ps.Idle, Login: ps.Dialing,
				Pinned:  pinned[[2]string{r.Key.Database, r.Key.User}],
				Waiting: ps.Waiting, MaxWaitSeconds: ps.MaxWait.Seconds(),
			})
		}
		for _, c := range srv.Clients() {
			st.Clients[c.State] += c.N
		}
		for _, l := range srv.Leaks() {
			st.Leaks = append(st.Leaks, admin.LeakStatus{
				ID: l.ClientID, Application: l.Application, User: l.User, Database: l.Database,
				Client: l.Client, State: l.State, LastStatement: l.LastStatement,
				AgeSeconds: l.Age.Seconds(), Suspect: l.Suspect, ServerPID: l.ServerPID,
			})
		}
		return st
	}
}

// maxPrepared maps --max-prepared-statements (0 = off) to proxy.Options.
func maxPrepared(n int) int {
	if n == 0 {
		return -1
	}
	return n
}

// pinPolicy maps --pin-policy to proxy.Options.
func pinPolicy(p string) proxy.PinPolicy {
	if p == config.PinPolicyRefuse {
		return proxy.PinPolicyRefuse
	}
	return proxy.PinPolicyPin
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
