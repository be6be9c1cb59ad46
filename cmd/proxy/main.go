// Command proxy is pgsidecar: a PostgreSQL transaction-pooling proxy that runs next
// to an application as a sidecar. See the README for flags and usage.
//
//	proxy [flags]   run the sidecar (every flag also from PGSIDECAR_<FLAG_NAME>)
//	proxy dev       a throwaway local PostgreSQL with the proxy in front of it
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
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
	"github.com/pgsidecar/pgsidecar/internal/reload"
)

// Exit codes.
const (
	exitOK      = 0
	exitRuntime = 1
	exitConfig  = 2
)

// version and commit are stamped by make build:
//
//	go build -ldflags "-X main.version=$(git describe --tags --always --dirty) -X main.commit=$(git rev-parse HEAD)"
//
// When empty, currentVersion falls back to the build information Go records
// in the binary.
var version, commit string

// cpuProfileEnv names a file to write a CPU profile of the whole run to. It
// is undocumented: it exists for profiling benchmarks.
const cpuProfileEnv = config.EnvPrefix + "CPUPROFILE"

// allowedEnv are the PGSIDECAR_* variables that are not flags and are still
// accepted; any other unknown one is a configuration error.
var allowedEnv = []string{cpuProfileEnv}

// httpShutdownTimeout bounds the graceful stop of the HTTP server once the
// proxy itself has shut down, so the process exits within --shutdown-timeout
// plus about a second even while a scrape or a slow HTTP client is open.
const httpShutdownTimeout = 250 * time.Millisecond

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Environ, os.Stdout, os.Stderr))
}

// run is the whole program: args are the command-line arguments without the
// program name, getenv and environ read the environment (os.Getenv and
// os.Environ in main). It returns the exit status: exitConfig after printing
// every configuration problem to stderr, exitRuntime when the proxy fails.
func run(args []string, getenv func(string) string, environ func() []string, stdout, stderr io.Writer) int {
	dev := len(args) > 0 && args[0] == "dev"
	if dev {
		args = args[1:]
	}
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := config.Default()
	config.Bind(fs, &cfg) // for parsing and --help; Load below reads the environment
	showVersion := fs.Bool("version", false, "Print the version, the commit and the Go version, and exit.")
	positional, help, parseErr := config.ParseArgs(fs, args)
	if help || slices.Contains(positional, "help") {
		fmt.Fprintf(stdout, "pgsidecar: PostgreSQL transaction-pooling sidecar\n\n"+
			"Usage:\n  proxy [flags]       run the proxy in front of --upstream (or $DATABASE_URL)\n"+
			"  proxy dev [flags]   start a throwaway local PostgreSQL and the proxy in front of it\n"+
			"  proxy --version     print the version and exit\n\n")
		config.FlagUsage(stdout, fs)
		return exitOK
	}
	if *showVersion {
		fmt.Fprintln(stdout, currentVersion())
		return exitOK
	}

	var problems []error
	if parseErr != nil {
		problems = append(problems, parseErr)
	}
	for _, a := range positional {
		if a == "dev" {
			problems = append(problems, errors.New(`unexpected argument "dev": it must come first (proxy dev [flags])`))
		} else {
			problems = append(problems, fmt.Errorf("unexpected argument %q", a))
		}
	}
	if err := config.CheckEnviron(environ(), allowedEnv...); err != nil {
		problems = append(problems, err)
	}
	// Every setting comes from Load, now and at every reload: the command
	// line, the environment, the --config file, the upstream files.
	src := config.Sources{Args: config.CommandLine(fs), Getenv: getenv}
	if dev {
		src.Args["upstream"] = "dev" // replaced by the throwaway cluster's URL below
		if _, set := src.Args["client-auth"]; !set && getenv(config.EnvName("client-auth")) == "" {
			// The throwaway cluster has no password, and dev listens on loopback.
			src.Args["client-auth"] = config.ClientAuthTrust
		}
	}
	loaded, err := config.Load(src)
	if err != nil {
		problems = append(problems, err)
	}
	cfg = loaded.Config
	var upstream *pgconn.Config
	if cfg.Upstream != "" && !dev {
		if upstream, err = parseUpstream(cfg); err != nil {
			problems = append(problems, err)
		}
	}
	if len(problems) > 0 {
		fmt.Fprintln(stderr, "proxy: invalid configuration (see proxy --help):")
		for _, line := range strings.Split(errors.Join(problems...).Error(), "\n") {
			fmt.Fprintln(stderr, "  "+line)
		}
		return exitConfig
	}
	level := new(slog.LevelVar)
	level.Set(cfg.LogLevel)
	log := newLogger(cfg.LogFormat, level, stderr)
	v := currentVersion()
	log.Info("pgsidecar starting", "version", v.Version, "commit", v.Commit, "go", runtime.Version())
	logOpenFilesLimit(log)
	setGCPercent(cfg.GCPercent, getenv)
	if path := getenv(cpuProfileEnv); path != "" {
		if f, err := os.Create(path); err == nil {
			if err := pprof.StartCPUProfile(f); err == nil {
				defer pprof.StopCPUProfile()
			}
		}
	}

	// SIGINT and SIGTERM shut down gracefully. In dev mode SIGHUP does too (the
	// terminal went away): every way out runs the deferred cl.Close below, which
	// removes the throwaway cluster's directory. Otherwise SIGHUP reloads the
	// configuration.
	stopSignals := []os.Signal{syscall.SIGINT, syscall.SIGTERM}
	if dev {
		stopSignals = append(stopSignals, syscall.SIGHUP)
	}
	ctx, stop := signal.NotifyContext(context.Background(), stopSignals...)
	defer stop()

	var devDir string
	if dev {
		cl, err := localpg.Start(ctx, localpg.Options{Logger: log})
		if err != nil {
			if ctx.Err() != nil {
				// localpg.Start removed what it had created.
				log.Info("stopped while the throwaway PostgreSQL was starting", "error", err)
				return exitOK
			}
			log.Error("could not start the throwaway PostgreSQL", "error", err)
			return exitRuntime
		}
		defer cl.Close()
		src.Args["upstream"] = cl.URL("postgres")
		if loaded, err = config.Load(src); err == nil {
			upstream, err = parseUpstream(loaded.Config)
		}
		if err != nil {
			log.Error("bad dev configuration", "error", err)
			return exitRuntime
		}
		cfg = loaded.Config
		devDir = cl.Dir
	}
	rl := reload.New(src, loaded, log)
	rl.Register(reload.Component{Name: "runtime", Prepare: func(prev, next config.Loaded) (func(), error) {
		n := next.GCPercent
		return func() { setGCPercent(n, getenv) }, nil
	}})
	// Printed once the listener is bound: a script that waits for the URL can
	// connect at once.
	onListening := func(addr string) {
		if !dev {
			return
		}
		fmt.Fprintf(stdout, "pgsidecar dev: PostgreSQL %s (data in %s)\n", cfg.Upstream, devDir)
		fmt.Fprintf(stdout, "DATABASE_URL=postgres://postgres@%s/postgres?sslmode=disable\n", addr)
		fmt.Fprintf(stdout, "try: psql \"postgres://postgres@%s/postgres?sslmode=disable\"   (Ctrl-C stops both)\n", addr)
		if cfg.StatusListen != "" {
			fmt.Fprintf(stdout, "status page: http://%s/\n", cfg.StatusListen)
		}
		if cfg.AdminUsers == "" {
			fmt.Fprintf(stdout, "admin console: set %s=postgres (or --admin-users postgres), then psql \"postgres://postgres@%s/pgsidecar?sslmode=disable\" -c 'SHOW POOLS'\n",
				config.EnvName("admin-users"), addr)
		} else {
			fmt.Fprintf(stdout, "admin console: psql \"postgres://%s@%s/pgsidecar?sslmode=disable\" -c 'SHOW POOLS'\n", splitList(cfg.AdminUsers)[0], addr)
		}
	}
	if err := serve(ctx, rl, upstream, log, level, dev, onListening); err != nil {
		log.Error("proxy failed", "error", err)
		return exitRuntime
	}
	return exitOK
}

// versionInfo is what --version prints and the startup log records.
type versionInfo struct {
	Version string // e.g. v0.3.0-12-gabcdef0, or "devel"
	Commit  string // the full commit hash, "-dirty" if built from a modified tree; or "unknown"
}

// String is the --version line, e.g.
// "pgsidecar v0.3.0-12-gabcdef0 (commit abcdef0..., go1.26.8 linux/amd64)".
func (v versionInfo) String() string {
	return fmt.Sprintf("pgsidecar %s (commit %s, %s %s/%s)", v.Version, v.Commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// currentVersion is the version of this binary: the stamped version and
// commit, or else what Go recorded in the binary.
func currentVersion() versionInfo {
	bi, _ := debug.ReadBuildInfo() // nil when the binary has none
	return resolveVersion(version, commit, bi)
}

// resolveVersion prefers the values stamped with -ldflags -X; an unstamped
// version falls back to the main module's version in bi (set by go build from
// a tagged commit or go install pkg@version) and then to "devel", an
// unstamped commit to bi's vcs.revision (with "-dirty" when vcs.modified) and
// then to "unknown". bi may be nil.
func resolveVersion(stampedVersion, stampedCommit string, bi *debug.BuildInfo) versionInfo {
	v := versionInfo{Version: stampedVersion, Commit: stampedCommit}
	if bi != nil {
		if v.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v.Version = bi.Main.Version
		}
		if v.Commit == "" {
			var modified bool
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					v.Commit = s.Value
				case "vcs.modified":
					modified = s.Value == "true"
				}
			}
			if v.Commit != "" && modified {
				v.Commit += "-dirty"
			}
		}
	}
	if v.Version == "" {
		v.Version = "devel"
	}
	if v.Commit == "" {
		v.Commit = "unknown"
	}
	return v
}

// reloadOnSIGHUP keeps SIGHUP from ending the process, its default action,
// and reloads the configuration on every one received until the returned
// function is called.
func reloadOnSIGHUP(rl *reload.Reloader) (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-hup:
				rl.Reload("SIGHUP")
			case <-done:
				return
			}
		}
	}()
	return func() {
		signal.Stop(hup)
		close(done)
	}
}

// setGCPercent sets the garbage collector's target to --gc-percent, unless
// the GOGC environment variable says otherwise (the runtime read it already).
func setGCPercent(n int, getenv func(string) string) {
	if getenv("GOGC") == "" {
		debug.SetGCPercent(n)
	}
}

// logOpenFilesLimit raises the soft limit on open files to the hard limit
// (every client and server connection is a descriptor) and logs both.
func logOpenFilesLimit(log *slog.Logger) {
	soft, hard, err := raiseOpenFilesLimit()
	switch {
	case errors.Is(err, errors.ErrUnsupported):
	case err != nil:
		log.Warn("could not raise the open files limit", "soft", soft, "hard", hard, "error", err)
	default:
		log.Info("open files limit", "soft", soft, "hard", hard)
	}
}

// newLogger returns a logger of the given format (config.LogFormatText or
// config.LogFormatJSON) and level, writing to w; a reload changes the level.
// The JSON format writes durations as strings ("30s"), not slog's integer
// nanoseconds.
func newLogger(format string, level slog.Leveler, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == config.LogFormatJSON {
		opts.ReplaceAttr = durationAsString
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// durationAsString is a slog.HandlerOptions.ReplaceAttr function that turns a
// time.Duration value into its String form ("1.5s"). The handler calls it for
// attributes inside groups too, after resolving LogValuers.
func durationAsString(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}

// parseUpstream parses the upstream of cfg with pgconn and applies the
// password of --upstream-password-file to it.
func parseUpstream(cfg config.Config) (*pgconn.Config, error) {
	up, err := pgconn.ParseConfig(cfg.Upstream)
	if err != nil {
		return nil, fmt.Errorf("--upstream: %w", err)
	}
	if cfg.HasUpstreamPassword {
		up.Password = cfg.UpstreamPassword
	}
	if _, ok := up.RuntimeParams["application_name"]; !ok {
		up.RuntimeParams["application_name"] = "pgsidecar"
	}
	return up, nil
}

// defaultRoute is the (database, user) pool of the upstream URL itself.
func defaultRoute(up *pgconn.Config) pool.Key {
	k := pool.Key{Database: up.Database, User: up.User}
	if k.Database == "" {
		k.Database = k.User // PostgreSQL's default database
	}
	return k
}

// serverOptions maps the configuration to the proxy server's options.
func serverOptions(cfg config.Config) proxy.Options {
	mode := proxy.ModeTransaction
	if cfg.PoolMode == config.PoolModeSession {
		mode = proxy.ModeSession
	}
	return proxy.Options{
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
		StatsUsers:              splitList(cfg.StatsUsers),
		SQLLiterals:             cfg.SQLLiterals,
		MaxMessageSize:          int(cfg.MaxMessageSize),
		MaxMessageMemory:        cfg.MaxMessageMemory,
		MaxClientStatements:     cfg.MaxClientPreparedStatements,
		MaxClientStatementBytes: cfg.MaxClientPreparedBytes,
	}
}

// serve runs the proxy with the configuration in force in rl until ctx is
// done, then shuts down gracefully. Outside dev mode the configuration is
// reloaded on SIGHUP, on the console's RELOAD and when one of its files
// changes. onListening is called with the client address once it is bound.
func serve(ctx context.Context, rl *reload.Reloader, upstream *pgconn.Config, log *slog.Logger, level *slog.LevelVar,
	dev bool, onListening func(addr string)) error {
	cfg := rl.Current().Config
	// What the pools are built from; a reload replaces both, then reconfigures
	// the pools that exist (pools created afterwards read the new values).
	var cur atomic.Pointer[config.Config]
	var up atomic.Pointer[pgconn.Config]
	cur.Store(&cfg)
	up.Store(upstream)
	// What clients proved, per role: the pools of roles whose password the
	// proxy does not know (auth file, auth query) log in with it.
	logins := &serverLogins{}
	aq := newAuthQuery(func() (string, time.Duration, time.Duration, *pgconn.Config) {
		c, u := cur.Load(), up.Load()
		pc := u.Copy()
		pc.ConnectTimeout = c.ServerConnectTimeout
		pc.RuntimeParams["application_name"] = "pgsidecar auth query"
		return c.AuthQuery, c.AuthQueryTTL, c.ServerConnectTimeout, pc
	})
	defer aq.close()
	fleets := newFleetShares(cfg, upstream, &up, &cur, log)
	poolConfig := func(k pool.Key) pool.Config {
		c, u := cur.Load(), up.Load()
		pc := u.Copy()
		if k.User != pc.User {
			// Another role: its client's proof, not the upstream's password.
			pc.AfterNetConnect = pool.LoginWith(logins.get)
		}
		pc.Database, pc.User = k.Database, k.User
		pc.ConnectTimeout = c.ServerConnectTimeout
		pcfg := pool.Config{
			Size:           c.PoolSize,
			Lifetime:       c.ServerLifetime,
			IdleTimeout:    c.ServerIdleTimeout,
			ConnectTimeout: c.ServerConnectTimeout,
			Dial:           pool.PgconnDialer(pc),
			Logger:         log.With("database", k.Database, "user", k.User),
		}
		if fleets != nil {
			pcfg.Budget = fleets.get(k)
		}
		return pcfg
	}
	if fleets != nil {
		defer fleets.close() // after the pools (deferred below, so run first)
	}
	pools := pool.NewRegistry(func(k pool.Key) *pool.Pool { return pool.New(poolConfig(k)) })
	defer pools.Close()
	// The configured route: its connect failures are counted under its own labels
	// even before it ever logged in, and --readiness-checks-upstream checks it.
	pools.SetDefaultRoute(defaultRoute(upstream))

	// Without an HTTP server nobody reads metrics: the hot path reports nothing.
	var obs *metrics.Observer
	var observer proxy.Observer
	if cfg.HTTPListen != "" {
		obs = metrics.NewObserver(cfg.MaxApplicationLabels, cfg.MetricsCompat == config.MetricsCompatPgBouncer)
		observer = obs
	}
	// The key of the fake exchanges of unknown roles: the same answers for a
	// name while the process lives, unpredictable to clients.
	mockKey := make([]byte, 32)
	if _, err := rand.Read(mockKey); err != nil {
		return fmt.Errorf("random key: %w", err)
	}
	// proxyOptions is what the server takes from a configuration, at start
	// and at every reload: its settings, client authentication and routes,
	// client TLS, and SHOW FLEET's source.
	proxyOptions := func(c config.Config, up *pgconn.Config) (proxy.Options, error) {
		o := serverOptions(c)
		if fleets != nil {
			o.Fleet = fleets.status
		}
		var err error
		if o.Auth, o.Routes, err = clientAuth(c, up, mockKey, aq, logins); err != nil {
			return o, err
		}
		o.TLS, err = clientTLS(c)
		return o, err
	}
	opts, err := proxyOptions(cfg, upstream)
	if err != nil {
		return err
	}
	opts.Observer, opts.Logger = observer, log
	if !dev {
		opts.Reload = func() (string, error) {
			res := rl.Reload("RELOAD")
			return res.String(), res.Err
		}
	}
	srv := proxy.NewServer(opts, pools)

	rl.Register(reload.Component{Name: "upstream", Prepare: func(prev, next config.Loaded) (func(), error) {
		// The connect timeout is not the upstream's: poolConfig takes it from
		// the configuration in force.
		changed := false
		for _, c := range config.Changes(prev.Config, next.Config) {
			changed = changed || c.Name == "upstream"
		}
		if !changed {
			return nil, nil
		}
		nu, err := parseUpstream(next.Config)
		if err != nil {
			return nil, err
		}
		return func() {
			up.Store(nu)
			pools.SetDefaultRoute(defaultRoute(nu))
		}, nil
	}})
	rl.Register(reload.Component{Name: "pools", Prepare: func(prev, next config.Loaded) (func(), error) {
		retire := false
		for _, c := range config.Changes(prev.Config, next.Config) {
			if c.Name == "upstream" {
				retire = true // new credentials: old connections retire at release
			}
		}
		nc := next.Config
		return func() {
			cur.Store(&nc)
			pools.Reconfigure(poolConfig, retire)
		}, nil
	}})
	rl.Register(reload.Component{Name: "proxy", Prepare: func(prev, next config.Loaded) (func(), error) {
		nu, err := parseUpstream(next.Config)
		if err != nil {
			return nil, err
		}
		o, err := proxyOptions(next.Config, nu)
		if err != nil {
			return nil, err
		}
		return func() { srv.Reconfigure(o) }, nil
	}})
	rl.Register(reload.Component{Name: "logging", Prepare: func(prev, next config.Loaded) (func(), error) {
		l := next.LogLevel
		return func() { level.Set(l) }, nil
	}})
	if obs != nil {
		rl.Register(reload.Component{Name: "metrics", Prepare: func(prev, next config.Loaded) (func(), error) {
			n := next.MaxApplicationLabels
			return func() { obs.SetMaxApplicationLabels(n) }, nil
		}})
	}
	if !dev {
		defer reloadOnSIGHUP(rl)()
		wctx, wcancel := context.WithCancel(context.Background())
		watched := make(chan struct{})
		go func() { rl.Watch(wctx, reload.WatchOptions{}); close(watched) }()
		defer func() { wcancel(); <-watched }()
	}

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	var started atomic.Bool
	var httpSrv *admin.Server
	if cfg.HTTPListen != "" {
		extra := []prometheus.Collector{obs, metrics.NewReloadCollector(rl.Stats)}
		if fleets != nil {
			extra = append(extra, metrics.NewFleetCollector(fleets.metrics))
		}
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
				if cur.Load().ReadinessChecksUpstream {
					if err := pools.UpstreamReady(); err != nil {
						return fmt.Errorf("upstream: %w", err)
					}
				}
				return nil
			},
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
	// The status page lists clients and their statements: on a listener of
	// its own (loopback by default), not on the one the probes and Prometheus
	// reach.
	var statusSrv *admin.Server
	if cfg.StatusListen != "" {
		h := admin.NewStatusHandler(statusFunc(pools, srv, func() time.Duration { return cur.Load().LeakThreshold }))
		if statusSrv, err = admin.Listen(cfg.StatusListen, h, log); err != nil {
			ln.Close()
			if httpSrv != nil {
				_ = httpSrv.Close()
			}
			return err
		}
		go func() {
			if err := statusSrv.Serve(); err != nil {
				log.Error("status server failed", "error", err)
			}
		}()
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	started.Store(true)
	onListening(ln.Addr().String())
	log.Info("pgsidecar listening", "listen", ln.Addr().String(), "upstream_host", upstream.Host,
		"upstream_port", upstream.Port, "pool_mode", cfg.PoolMode.String(), "pool_size", cfg.PoolSize,
		"http_listen", cfg.HTTPListen, "status_listen", cfg.StatusListen)

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down: no new clients; open transactions may finish", "timeout", cur.Load().ShutdownTimeout)
	case err := <-serveErr:
		runErr = err
	}
	// A second signal while draining ends every client at once.
	hard := make(chan os.Signal, 1)
	signal.Notify(hard, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(hard)
	sctx, cancel := context.WithTimeout(context.Background(), cur.Load().ShutdownTimeout)
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
	for _, hs := range []*admin.Server{httpSrv, statusSrv} {
		if hs == nil {
			continue
		}
		// Bounded: an open scrape or a slow HTTP client must not delay the exit.
		hctx, hcancel := context.WithTimeout(context.Background(), httpShutdownTimeout)
		if err := hs.Shutdown(hctx); err != nil {
			log.Debug("http server: connections still open after shutdown bound, closing them", "addr", hs.Addr().String(), "timeout", httpShutdownTimeout, "error", err)
			_ = hs.Close()
		}
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
func statusFunc(pools *pool.Registry, srv *proxy.Server, leakThreshold func() time.Duration) func() admin.Status {
	return func() admin.Status {
		st := admin.Status{Time: time.Now(), Clients: map[string]int{}, LeakThresholdSeconds: leakThreshold().Seconds()}
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
