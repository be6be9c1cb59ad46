package localpg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

const (
	// defaultReadyTimeout bounds the wait for readiness when the context
	// passed to Start has no deadline.
	defaultReadyTimeout = 30 * time.Second
	// defaultInitdbTimeout bounds initdb when the context has no deadline.
	defaultInitdbTimeout = 2 * time.Minute
	// stopTimeout is how long Stop waits after SIGINT before SIGKILL.
	stopTimeout = 20 * time.Second
	// readyPollInterval is the pause between readiness probes.
	readyPollInterval = 20 * time.Millisecond
	// readyAttemptTimeout bounds a single readiness connection attempt.
	readyAttemptTimeout = 2 * time.Second
	// bindRetries is how many times Start retries with a new free port
	// when the postmaster cannot bind the one it was given.
	bindRetries = 3
	// errorTailLines is how many log lines are quoted in errors.
	errorTailLines = 30
	// logTailMaxBytes caps how much of the log LogTail reads.
	logTailMaxBytes = 1 << 20
	// maxSocketPathLen keeps <SocketDir>/.s.PGSQL.<port> below the
	// sun_path limit (108 bytes including the NUL on Linux, 104 on BSDs).
	maxSocketPathLen = 100

	superuser   = "postgres"
	loopback    = "127.0.0.1"
	logFileName = "postgres.log"
)

// defaultSettings are the postgresql.conf settings of every cluster, tuned
// for fast throwaway use. Options.Settings override them.
var defaultSettings = map[string]string{
	"listen_addresses":        loopback,
	"fsync":                   "off",
	"synchronous_commit":      "off",
	"full_page_writes":        "off",
	"max_connections":         "300",
	"shared_buffers":          "128MB",
	"unix_socket_permissions": "0777",
	"lc_messages":             "C",
}

// reservedSettings are controlled by Cluster fields and may not appear in
// Options.Settings.
var reservedSettings = []string{"port", "unix_socket_directories", "data_directory"}

// errBind marks a postmaster that exited because it could not bind its port.
var errBind = errors.New("postgres could not bind its port")

// Options configures Start.
type Options struct {
	// BinDir is the directory holding initdb and postgres; "" means
	// FindBinDir.
	BinDir string
	// Port is the TCP port on 127.0.0.1; 0 picks a free port (and retries
	// with another one if the postmaster cannot bind it).
	Port int
	// Settings are extra postgresql.conf settings passed as -c name=value;
	// they override the defaults (fsync=off, synchronous_commit=off,
	// full_page_writes=off, max_connections=300, shared_buffers=128MB,
	// unix_socket_permissions=0777, listen_addresses=127.0.0.1,
	// lc_messages=C). port, unix_socket_directories and data_directory are
	// managed by the Cluster and rejected here.
	Settings map[string]string
	// Logger receives lifecycle messages; nil discards them.
	Logger *slog.Logger
	// Dir is the cluster directory (data directory in Dir/data, log in
	// Dir/postgres.log, sockets in Dir/sock). "" creates a new temporary
	// directory that Close removes; otherwise the directory is created if
	// needed, reused if it already holds a cluster, and kept by Close. When
	// the caller is root, Dir is made mode 0755 and owned data/socket dirs
	// are given to the server user; every directory above Dir must be
	// searchable by that user.
	Dir string
	// TLS starts the server with ssl=on, using a certificate made at Start
	// (Dir/tls; signed by a throwaway CA, for 127.0.0.1 and localhost): see
	// Cluster.CACertPEM and Cluster.URLSSL. It sets ssl, ssl_cert_file and
	// ssl_key_file, over Settings. Plain connections are still accepted.
	TLS bool
}

// Cluster is a local PostgreSQL server started by Start. Its exported fields
// are fixed once Start returns and must not be modified. All methods are
// safe for concurrent use.
type Cluster struct {
	// Host is the TCP address the server listens on, "127.0.0.1".
	Host string
	// Port is the TCP port the server listens on; it stays the same across
	// Stop and Start.
	Port int
	// User is the superuser name, "postgres" (trust authentication).
	User string
	// Dir is the cluster directory (see Options.Dir).
	Dir string
	// SocketDir is the Unix-socket directory (normally Dir/sock; a short
	// temporary directory if Dir is too long for socket paths).
	SocketDir string
	// BinDir is the directory of the initdb and postgres binaries used.
	BinDir string
	// CACertPEM is the certificate (PEM) of the CA that signed the server's
	// with Options.TLS, nil without; CAFile is where it is on disk (for
	// sslrootcert), "" without.
	CACertPEM []byte
	CAFile    string

	dataDir       string
	logPath       string
	settings      map[string]string
	runAs         *runAs
	logger        *slog.Logger
	ownsDir       bool
	ownsSocketDir bool

	mu     sync.Mutex
	proc   *process // nil when not running
	closed bool
}

// process is a started postmaster. done is closed (after err is set) when
// the process has exited and been reaped.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Start creates (if needed) and starts a cluster and waits until it accepts
// connections. ctx bounds only the startup; the server keeps running until
// Stop or Close. Readiness is awaited until ctx's deadline, or for 30 s if
// ctx has none. The error wraps ErrNoBinaries when initdb or postgres cannot
// be found. On failure nothing is left running and a temporary directory is
// removed.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if opts.Port < 0 || opts.Port > 65535 {
		return nil, fmt.Errorf("localpg: invalid port %d", opts.Port)
	}
	settings, err := mergeSettings(opts.Settings)
	if err != nil {
		return nil, err
	}

	binDir := opts.BinDir
	if binDir == "" {
		if binDir, err = FindBinDir(); err != nil {
			return nil, fmt.Errorf("localpg: %w", err)
		}
	} else if err := checkBinDir(binDir); err != nil {
		return nil, fmt.Errorf("localpg: BinDir %q: %w", binDir, err)
	}

	ra, err := resolveRunAs(ctx, logger)
	if err != nil {
		return nil, err
	}
	if _, err := sysProcAttr(ra, false); err != nil {
		return nil, err
	}

	c := &Cluster{
		Host:     loopback,
		Port:     opts.Port,
		User:     superuser,
		BinDir:   binDir,
		settings: settings,
		runAs:    ra,
		logger:   logger,
	}
	if err := c.prepareDirs(opts.Dir); err != nil {
		return nil, errors.Join(err, c.removeDirs())
	}
	if opts.TLS {
		if err := c.makeTLS(); err != nil {
			return nil, errors.Join(err, c.removeDirs())
		}
	}
	if err := c.initdb(ctx); err != nil {
		return nil, errors.Join(err, c.removeDirs())
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	for attempt := 0; ; attempt++ {
		if opts.Port == 0 {
			if c.Port, err = pickPort(); err != nil {
				return nil, errors.Join(err, c.removeDirs())
			}
		}
		err = c.startLocked(ctx)
		if err == nil {
			return c, nil
		}
		if opts.Port == 0 && attempt < bindRetries && errors.Is(err, errBind) && ctx.Err() == nil {
			logger.Warn("localpg: port taken, retrying with another", "port", c.Port, "attempt", attempt+1)
			continue
		}
		return nil, errors.Join(err, c.removeDirs())
	}
}

// mergeSettings overlays user settings on the defaults.
func mergeSettings(user map[string]string) (map[string]string, error) {
	m := make(map[string]string, len(defaultSettings)+len(user))
	for k, v := range defaultSettings {
		m[k] = v
	}
	for k, v := range user {
		name := strings.ToLower(strings.TrimSpace(k))
		if name == "" {
			return nil, errors.New("localpg: empty setting name")
		}
		if slices.Contains(reservedSettings, name) {
			return nil, fmt.Errorf("localpg: setting %q is managed by localpg (use Options.Port/Options.Dir)", k)
		}
		m[name] = v
	}
	return m, nil
}

// prepareDirs creates (or adopts) the cluster, data and socket directories
// and makes them usable by the server user.
func (c *Cluster) prepareDirs(dir string) error {
	var err error
	if dir == "" {
		if dir, err = os.MkdirTemp("", "localpg-"); err != nil {
			return fmt.Errorf("localpg: create temp dir: %w", err)
		}
		c.ownsDir = true
	} else {
		if dir, err = filepath.Abs(dir); err != nil {
			return fmt.Errorf("localpg: %w", err)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("localpg: create dir: %w", err)
		}
	}
	c.Dir = dir
	c.dataDir = filepath.Join(dir, "data")
	c.logPath = filepath.Join(dir, logFileName)

	if c.runAs != nil {
		// The server user must be able to reach the data and socket dirs.
		if err := os.Chmod(dir, 0o755); err != nil {
			return fmt.Errorf("localpg: %w", err)
		}
		if err := c.runAs.checkTraversable(dir); err != nil {
			return err
		}
	}

	if err := os.Mkdir(c.dataDir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("localpg: create data dir: %w", err)
	}
	if err := c.runAs.chownTree(c.dataDir); err != nil {
		return err
	}

	c.SocketDir = filepath.Join(dir, "sock")
	if len(c.SocketDir)+len("/.s.PGSQL.65535") > maxSocketPathLen {
		if c.SocketDir, err = shortTempDir(); err != nil {
			return err
		}
		c.ownsSocketDir = true
	} else if err := os.Mkdir(c.SocketDir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("localpg: create socket dir: %w", err)
	}
	if err := os.Chmod(c.SocketDir, 0o755); err != nil {
		return fmt.Errorf("localpg: %w", err)
	}
	return c.runAs.chown(c.SocketDir)
}

// shortTempDir creates a socket directory with a path short enough for
// Unix sockets.
func shortTempDir() (string, error) {
	for _, base := range []string{os.TempDir(), "/tmp"} {
		d, err := os.MkdirTemp(base, "pgsock-")
		if err != nil {
			continue
		}
		if len(d)+len("/.s.PGSQL.65535") <= maxSocketPathLen {
			return d, nil
		}
		_ = os.Remove(d)
	}
	return "", errors.New("localpg: cannot create a socket directory with a short enough path")
}

// removeDirs removes what Start created: the temporary cluster directory
// and a separate socket directory.
func (c *Cluster) removeDirs() error {
	var errs []error
	if c.ownsDir && c.Dir != "" {
		if err := os.RemoveAll(c.Dir); err != nil {
			errs = append(errs, fmt.Errorf("localpg: remove %s: %w", c.Dir, err))
		}
	}
	if c.ownsSocketDir && c.SocketDir != "" {
		if err := os.RemoveAll(c.SocketDir); err != nil {
			errs = append(errs, fmt.Errorf("localpg: remove %s: %w", c.SocketDir, err))
		}
	}
	return errors.Join(errs...)
}

// initdb initialises the data directory unless it already holds a cluster.
func (c *Cluster) initdb(ctx context.Context) error {
	if _, err := os.Stat(filepath.Join(c.dataDir, "PG_VERSION")); err == nil {
		c.logger.Info("localpg: reusing existing data directory", "dir", c.dataDir)
		return nil
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultInitdbTimeout)
		defer cancel()
	}
	logf, offset, err := c.openLog()
	if err != nil {
		return err
	}
	defer logf.Close()

	attr, err := sysProcAttr(c.runAs, false)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir, "initdb"),
		"-D", c.dataDir, "-U", superuser, "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync")
	cmd.Dir = c.Dir
	cmd.Env = c.childEnv()
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = attr
	c.logger.Debug("localpg: running initdb", "dir", c.dataDir, "bin", cmd.Path)
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("localpg: initdb: %w\n%s", err, c.logTailFrom(offset, errorTailLines))
	}
	c.logger.Info("localpg: initdb done", "dir", c.dataDir, "elapsed", time.Since(start))
	return nil
}

// openLog opens the server log for appending; the file is handed to child
// processes as stdout/stderr, so it need not be writable by the server user.
// It returns the file and its size before anything new is written.
func (c *Cluster) openLog() (*os.File, int64, error) {
	f, err := os.OpenFile(c.logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, 0, fmt.Errorf("localpg: open log: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("localpg: stat log: %w", err)
	}
	return f, fi.Size(), nil
}

// childEnv is the environment of initdb and postgres: the caller's, with
// HOME pointing at the cluster directory.
func (c *Cluster) childEnv() []string {
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "HOME=")
	})
	return append(env, "HOME="+c.Dir)
}

// serverArgs is the postgres command line.
func (c *Cluster) serverArgs() []string {
	args := []string{"-D", c.dataDir, "-p", strconv.Itoa(c.Port), "-k", c.SocketDir}
	names := make([]string, 0, len(c.settings))
	for k := range c.settings {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		args = append(args, "-c", k+"="+c.settings[k])
	}
	return args
}

// URL returns a connection URL for database on this cluster, for example
// "postgres://postgres@127.0.0.1:5432/app?sslmode=disable".
func (c *Cluster) URL(database string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(c.User),
		Host:     net.JoinHostPort(c.Host, strconv.Itoa(c.Port)),
		Path:     "/" + database,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// URLSSL is URL with sslmode set to mode ("require", "verify-full", ...);
// for the verify modes it names CAFile as sslrootcert. It is for a cluster
// started with Options.TLS.
func (c *Cluster) URLSSL(database, mode string) string {
	q := url.Values{"sslmode": {mode}}
	if strings.HasPrefix(mode, "verify") && c.CAFile != "" {
		q.Set("sslrootcert", c.CAFile)
	}
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(c.User),
		Host:     net.JoinHostPort(c.Host, strconv.Itoa(c.Port)),
		Path:     "/" + database,
		RawQuery: q.Encode(),
	}
	return u.String()
}

// Start starts the server again after Stop, on the same port and with the
// same data. ctx bounds the startup as for the package-level Start. It is a
// no-op if the server is already running, and an error after Close.
func (c *Cluster) Start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("localpg: cluster is closed")
	}
	if c.proc != nil {
		select {
		case <-c.proc.done:
			c.logger.Warn("localpg: postgres had exited on its own", "err", c.proc.err)
			c.proc = nil
		default:
			return nil
		}
	}
	return c.startLocked(ctx)
}

// startLocked launches the postmaster on c.Port and waits until it is
// ready. On failure the process is stopped. c.mu must be held.
func (c *Cluster) startLocked(ctx context.Context) error {
	logf, offset, err := c.openLog()
	if err != nil {
		return err
	}
	attr, err := sysProcAttr(c.runAs, true)
	if err != nil {
		logf.Close()
		return err
	}
	cmd := exec.Command(filepath.Join(c.BinDir, "postgres"), c.serverArgs()...)
	cmd.Dir = c.Dir
	cmd.Env = c.childEnv()
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = attr

	p, err := launch(cmd)
	logf.Close() // the child has its own copy of the descriptor
	if err != nil {
		return fmt.Errorf("localpg: start postgres: %w", err)
	}
	start := time.Now()
	if err := c.waitReady(ctx, p, offset); err != nil {
		if serr := c.stopProcess(context.Background(), p); serr != nil {
			c.logger.Warn("localpg: stopping failed postgres", "err", serr)
		}
		return err
	}
	c.proc = p
	user := "(current user)"
	if c.runAs != nil {
		user = c.runAs.name
	}
	c.logger.Info("localpg: postgres ready", "port", c.Port, "pid", cmd.Process.Pid,
		"dir", c.Dir, "os_user", user, "elapsed", time.Since(start))
	return nil
}

// launch starts cmd and a goroutine that reaps it. The goroutine stays
// locked to the OS thread that forked the child until the child exits, so
// the parent-death signal (tied to that thread on Linux) only fires when
// the whole parent process goes away.
func launch(cmd *exec.Cmd) (*process, error) {
	p := &process{cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

// waitReady polls until a pgconn connection to the TCP port succeeds and
// the postmaster.pid of this cluster reports our process as ready (so a
// foreign server that happens to hold the port is never mistaken for ours).
func (c *Cluster) waitReady(ctx context.Context, p *process, logOffset int64) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultReadyTimeout)
		defer cancel()
	}
	connString := c.URL("postgres")
	ticker := time.NewTicker(readyPollInterval)
	defer ticker.Stop()
	var lastErr error
	for {
		lastErr = c.probe(ctx, connString, p)
		if lastErr == nil {
			return nil
		}
		select {
		case <-p.done:
			tail := c.logTailFrom(logOffset, errorTailLines)
			err := fmt.Errorf("localpg: postgres exited during startup (%v)", p.err)
			if strings.Contains(tail, "could not bind") {
				err = fmt.Errorf("%w: %w", err, errBind)
			}
			return fmt.Errorf("%w; log:\n%s", err, tail)
		case <-ctx.Done():
			return fmt.Errorf("localpg: postgres on port %d not ready: %w (last probe: %v); log:\n%s",
				c.Port, ctx.Err(), lastErr, c.logTailFrom(logOffset, errorTailLines))
		case <-ticker.C:
		}
	}
}

// probe makes one readiness attempt.
func (c *Cluster) probe(ctx context.Context, connString string, p *process) error {
	actx, cancel := context.WithTimeout(ctx, readyAttemptTimeout)
	defer cancel()
	conn, err := pgconn.Connect(actx, connString)
	if err != nil {
		return err
	}
	_ = conn.Close(actx)
	return c.checkPidFile(p.cmd.Process.Pid)
}

// checkPidFile verifies that postmaster.pid names pid and, when the server
// writes a status line (PostgreSQL 10+), that it says "ready".
func (c *Cluster) checkPidFile(pid int) error {
	b, err := os.ReadFile(filepath.Join(c.dataDir, "postmaster.pid"))
	if err != nil {
		return fmt.Errorf("read postmaster.pid: %w", err)
	}
	lines := strings.Split(string(b), "\n")
	if got := strings.TrimSpace(lines[0]); got != strconv.Itoa(pid) {
		return fmt.Errorf("postmaster.pid names pid %q, ours is %d (is another server on port %d?)", got, pid, c.Port)
	}
	const statusLine = 7 // LOCK_FILE_LINE_PM_STATUS - 1
	if len(lines) > statusLine {
		if st := strings.TrimSpace(lines[statusLine]); st != "" && st != "ready" {
			return fmt.Errorf("postmaster status %q", st)
		}
	}
	return nil
}

// Stop shuts the server down with a fast shutdown (SIGINT to the
// postmaster) and waits for it to exit; the data directory is kept. If the
// server has not exited after 20 s, or ctx is done first, it is killed. Stop
// is a no-op when the server is not running.
func (c *Cluster) Stop(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopLocked(ctx)
}

func (c *Cluster) stopLocked(ctx context.Context) error {
	p := c.proc
	if p == nil {
		return nil
	}
	c.proc = nil
	err := c.stopProcess(ctx, p)
	if err == nil {
		c.logger.Info("localpg: postgres stopped", "port", c.Port)
	}
	return err
}

// stopProcess signals p (which this Cluster started) and waits for exit.
func (c *Cluster) stopProcess(ctx context.Context, p *process) error {
	select {
	case <-p.done:
		return nil // already exited (and reaped): nothing to signal
	default:
	}
	if err := p.cmd.Process.Signal(os.Interrupt); err != nil && !errors.Is(err, os.ErrProcessDone) {
		c.logger.Warn("localpg: SIGINT to postgres failed, killing", "err", err)
		return c.kill(p, fmt.Errorf("localpg: interrupt postgres: %w", err))
	}
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return nil
	case <-timer.C:
		return c.kill(p, fmt.Errorf("localpg: postgres did not shut down within %v", stopTimeout))
	case <-ctx.Done():
		return c.kill(p, fmt.Errorf("localpg: stop postgres: %w", ctx.Err()))
	}
}

// kill sends SIGKILL to p and waits for it to be reaped; cause is returned.
func (c *Cluster) kill(p *process, cause error) error {
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		cause = errors.Join(cause, fmt.Errorf("localpg: kill postgres: %w", err))
	}
	<-p.done
	c.logger.Warn("localpg: postgres killed", "port", c.Port, "cause", cause)
	return cause
}

// Close stops the server if it is running and removes the directory if
// Start created it. It is idempotent; later calls return nil.
func (c *Cluster) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	return errors.Join(c.stopLocked(context.Background()), c.removeDirs())
}

// CreateDatabase creates database name (owned by the superuser). It
// succeeds if the database already exists.
func (c *Cluster) CreateDatabase(ctx context.Context, name string) error {
	if name == "" {
		return errors.New("localpg: empty database name")
	}
	conn, err := pgconn.Connect(ctx, c.URL("postgres"))
	if err != nil {
		return fmt.Errorf("localpg: create database %q: connect: %w", name, err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	sql := "CREATE DATABASE " + quoteIdent(name)
	_, err = conn.Exec(ctx, sql).ReadAll()
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) &&
		// duplicate_database, or unique_violation from a concurrent create
		// of the same name.
		(pgErr.Code == "42P04" || pgErr.Code == "23505") {
		return nil
	}
	if err != nil {
		return fmt.Errorf("localpg: create database %q: %w", name, err)
	}
	return nil
}

// quoteIdent quotes a SQL identifier.
func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// LogTail returns the last n lines of the server log (initdb and postgres
// output), for test failure messages. It returns "" if the log is empty or
// unreadable.
func (c *Cluster) LogTail(n int) string {
	return c.logTailFrom(0, n)
}

// logTailFrom returns the last n lines of the log written after offset.
func (c *Cluster) logTailFrom(offset int64, n int) string {
	if n <= 0 {
		return ""
	}
	f, err := os.Open(c.logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	start := max(offset, fi.Size()-logTailMaxBytes, 0)
	b, err := io.ReadAll(io.NewSectionReader(f, start, fi.Size()-start))
	if err != nil {
		return ""
	}
	b = bytes.TrimRight(b, "\n")
	if len(b) == 0 {
		return ""
	}
	lines := bytes.Split(b, []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// pickPort chooses the port when Options.Port is 0; tests replace it.
var pickPort = freePort

// freePort asks the kernel for a free TCP port on 127.0.0.1.
func freePort() (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(loopback, "0"))
	if err != nil {
		return 0, fmt.Errorf("localpg: pick free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, fmt.Errorf("localpg: pick free port: %w", err)
	}
	return port, nil
}
