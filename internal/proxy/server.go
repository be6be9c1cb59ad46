package proxy

import (
	"bufio"
	"bytes"
	"context"
	crand "crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/engine"
	"github.com/pgsidecar/pgsidecar/internal/pool"
	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("proxy: server closed")

// PoolMode says when a client gives its backend back.
type PoolMode int

const (
	// ModeTransaction releases the backend at the end of every transaction.
	ModeTransaction PoolMode = iota
	// ModeSession keeps the backend for the client's whole connection and resets it
	// with DISCARD ALL when the client leaves.
	ModeSession
)

// Options configures a Server.
type Options struct {
	Mode PoolMode
	// MaxClientConn is the most clients connected at once; more are refused with
	// SQLSTATE 53300.
	MaxClientConn int
	// ClientLoginTimeout bounds the startup phase of a client.
	ClientLoginTimeout time.Duration
	// QueryWaitTimeout bounds how long a client waits for a backend.
	QueryWaitTimeout time.Duration
	// IdleTransactionTimeout ends a client silent inside a transaction for longer
	// (0 = off) with SQLSTATE 25P03; its backend is rolled back and reused.
	IdleTransactionTimeout time.Duration
	// CancelTimeout bounds forwarding one CancelRequest (default 5s).
	CancelTimeout time.Duration
	// MaxPreparedStatements bounds the named statements the proxy keeps prepared
	// on each backend in transaction mode (least recently used closed first).
	// 0 means DefaultMaxPreparedStatements; a negative value turns the rewriting of
	// statement names off (named statements then fail in transaction mode).
	MaxPreparedStatements int
	// AdminUsers may connect to the admin console (database ConsoleDatabase);
	// nobody when empty.
	AdminUsers []string
	// StatsUsers may connect to the admin console for its SHOW commands only.
	StatsUsers []string
	// SQLLiterals shows statements with their constants in logs, SHOW LEAKS
	// and the status page; by default constants are replaced by $n.
	SQLLiterals bool
	// Observer receives hot-path events for metrics (nil: none).
	Observer Observer
	// LeakThreshold makes a client idle inside a transaction for longer a leak
	// suspect: logged once per episode with its last statement, and counted
	// (0 = off).
	LeakThreshold time.Duration
	// TransactionTimeout ends a client whose transaction (or statement outside
	// one) is older than this with SQLSTATE 25P04 and rolls it back (0 = off;
	// transaction mode).
	TransactionTimeout time.Duration
	// PinPolicy says whether a statement that would pin a client to its backend
	// (LISTEN, session advisory locks, temp tables, ...) pins it or is refused with
	// SQLSTATE 0A000, in transaction mode.
	PinPolicy PinPolicy
	// MaxMessageSize is the largest message a client may send (0:
	// DefaultMaxMessageSize); a larger one is refused with SQLSTATE 54000 and the
	// client closed. COPY data is streamed and never counted against it.
	MaxMessageSize int
	// MaxMessageMemory bounds the memory of all clients' Query and Parse messages
	// that the proxy reads whole because they do not fit a read buffer (0:
	// DefaultMaxMessageMemory). A client whose message does not fit waits for
	// room up to QueryWaitTimeout.
	MaxMessageMemory int64
	// MaxClientStatements and MaxClientStatementBytes bound one client's named
	// prepared statements in transaction mode: their number and the bytes of
	// their text (0: the defaults). Past them a Parse gets SQLSTATE 54000.
	MaxClientStatements     int
	MaxClientStatementBytes int64
	// Auth is how clients authenticate before they get a pool or the console;
	// nil lets every client in (trust).
	Auth *ClientAuth
	// Routes decides which (database, user) pools authenticated clients may
	// use; nil allows all. A refused client leaves no pool or metric series.
	Routes RoutePolicy
	// TLS is how clients may or must use TLS; nil: they may not (SSLRequest
	// is answered 'N').
	TLS *ClientTLS
	// Fleet, when set, reports the routes' shares of the fleet-wide
	// connection budget (SHOW FLEET).
	Fleet func() []FleetStatus
	// Logger receives the server's log; nil discards.
	Logger *slog.Logger
	// Reload, when set, is what the admin console's RELOAD runs: it reloads
	// the configuration and returns the answer to show, or an error when the
	// new configuration was rejected. Without it RELOAD does nothing.
	Reload func() (string, error)

	// env is what every client's engine shares: the server's statement
	// registry and counters, and the bounds from the fields above (set by
	// the server as it stores the options).
	env engine.Env
}

// Defaults of the message and statement bounds.
const (
	DefaultMaxMessageSize          = 64 << 20
	DefaultMaxMessageMemory        = 128 << 20
	DefaultMaxClientStatements     = 10000
	DefaultMaxClientStatementBytes = 16 << 20
)

// DefaultMaxPreparedStatements is the default bound of prepared statements per
// backend.
const DefaultMaxPreparedStatements = 256

// Stats is a snapshot of the server's client-side figures.
type Stats struct {
	Clients       int    // connected clients (logged in or logging in)
	ClientsTotal  uint64 // clients accepted since start
	Refused       uint64 // clients refused by max-client-conn
	ProtocolError uint64 // clients closed for a protocol violation
	AuthFailed    uint64 // clients whose authentication failed (wrong password, unknown role, bad exchange)
	RouteRefused  uint64 // authenticated clients refused by Options.Routes
	TLSFailed     uint64 // clients whose TLS handshake failed
	TLSRequired   uint64 // clients refused for logging in without TLS (TLSRequire)
	IdleTxKilled  uint64 // clients ended by the idle-transaction timeout
	// TooLarge counts clients closed for a message over MaxMessageSize (or one
	// needing more than the whole MaxMessageMemory), SQLSTATE 54000.
	TooLarge uint64
	// OutOfMemory counts clients closed because their message found no room in
	// MaxMessageMemory within QueryWaitTimeout, SQLSTATE 53200.
	OutOfMemory uint64
	// StatementLimit counts Parses refused by MaxClientStatements or
	// MaxClientStatementBytes, SQLSTATE 54000.
	StatementLimit uint64
	// LoopClients is how many clients the event loop serves now.
	LoopClients int
}

// Server accepts PostgreSQL clients and serves them from pooled backends.
type Server struct {
	opt   atomic.Pointer[Options] // replaced whole by Reconfigure
	pools *pool.Registry
	log   *slog.Logger

	drainCtx    context.Context // canceled when Shutdown starts
	drainCancel context.CancelFunc
	// watchWake tells the leak watcher that the options changed, so that it
	// picks its new period at once.
	watchWake chan struct{}

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	logins    map[net.Conn]struct{} // clients not logged in yet (Shutdown ends them)
	sessions  map[uint32]*session   // by the BackendKeyData pid given to the client
	shutdown  bool
	sessWG    sync.WaitGroup
	loop      *loopDriver // serves every client after its login (loop_linux.go)
	loopErr   error       // why there is no loop (not Linux, no epoll): Serve returns it
	loopOnce  sync.Once
	onLoop    atomic.Int64 // clients the loop serves now
	startups  startupCache // clients' startup settings, shared

	refusedLog   logLimiter // "client refused" lines: one a second at most
	authLog      logLimiter // failed logins and refused routes: one line a second at most
	authFailed   atomic.Uint64
	routeRefused atomic.Uint64
	tlsFailed    atomic.Uint64 // client TLS handshakes that failed
	tlsRequired  atomic.Uint64 // plaintext clients refused by TLSRequire

	clients  atomic.Int64
	accepted atomic.Uint64
	refused  atomic.Uint64
	protoErr atomic.Uint64
	idleKill atomic.Uint64

	stmts  stmtRegistry
	prep   engine.Counters // prepared statements, for every client
	msgMem msgMemory       // buffers of client messages read whole (msgmem.go)

	tooLarge   atomic.Uint64 // clients closed for a message over MaxMessageSize or the message memory
	memTimeout atomic.Uint64 // clients closed for want of message memory
	replays    atomic.Uint64 // settings given to a backend for a client

	leaksDetected atomic.Uint64
	rollbacks     [numRollbackReasons]atomic.Uint64

	pinMu sync.Mutex
	pins  map[string]uint64 // clients pinned, by reason

	// PAUSE / RESUME of the admin console (console.go): while paused, resumed is
	// open and clients that need a backend wait on it (session.acquire).
	pauseMu    sync.Mutex
	pausedFast atomic.Bool // paused, read without pauseMu
	paused     bool
	resumed    chan struct{}
}

// Pause makes clients that need a backend wait, as if every pool were full, until
// Resume (or their query-wait-timeout); transactions already running go on.
func (s *Server) Pause() {
	s.pauseMu.Lock()
	if !s.paused {
		s.paused = true
		s.pausedFast.Store(true)
		s.resumed = make(chan struct{})
	}
	s.pauseMu.Unlock()
}

// Resume ends a Pause: the clients waiting for it go on.
func (s *Server) Resume() {
	s.pauseMu.Lock()
	if s.paused {
		s.paused = false
		s.pausedFast.Store(false)
		close(s.resumed)
	}
	s.pauseMu.Unlock()
}

// Paused reports whether the server is paused.
func (s *Server) Paused() bool {
	s.pauseMu.Lock()
	defer s.pauseMu.Unlock()
	return s.paused
}

// pauseGate returns the channel closed by Resume while the server is paused, nil
// otherwise.
func (s *Server) pauseGate() <-chan struct{} {
	if !s.pausedFast.Load() { // every transaction asks: no lock unless paused
		return nil
	}
	s.pauseMu.Lock()
	defer s.pauseMu.Unlock()
	if !s.paused {
		return nil
	}
	return s.resumed
}

func (s *Server) countPin(reason string) {
	s.pinMu.Lock()
	if s.pins == nil {
		s.pins = make(map[string]uint64)
	}
	s.pins[reason]++
	s.pinMu.Unlock()
}

// Pins returns how many clients were pinned to their backend, by reason.
func (s *Server) Pins() map[string]uint64 {
	s.pinMu.Lock()
	defer s.pinMu.Unlock()
	out := make(map[string]uint64, len(s.pins))
	for k, v := range s.pins {
		out[k] = v
	}
	return out
}

// NewServer returns a Server that takes backends from pools.
func NewServer(opt Options, pools *pool.Registry) *Server {
	opt = withDefaults(opt)
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		pools:       pools,
		log:         opt.Logger,
		drainCtx:    ctx,
		drainCancel: cancel,
		listeners:   make(map[net.Listener]struct{}),
		logins:      make(map[net.Conn]struct{}),
		sessions:    make(map[uint32]*session),
		msgMem:      msgMemory{limit: opt.MaxMessageMemory},
		watchWake:   make(chan struct{}, 1),
	}
	s.storeOptions(opt)
	if d, err := newLoopDriver(s); err != nil {
		s.loopErr = fmt.Errorf("proxy: event loop: %w", err)
	} else {
		s.loop = d
	}
	go s.watchLeaks()
	return s
}

// withDefaults fills the zero fields of opt with their defaults.
func withDefaults(opt Options) Options {
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.ClientLoginTimeout <= 0 {
		opt.ClientLoginTimeout = 15 * time.Second
	}
	if opt.QueryWaitTimeout <= 0 {
		opt.QueryWaitTimeout = 30 * time.Second
	}
	if opt.CancelTimeout <= 0 {
		opt.CancelTimeout = 5 * time.Second
	}
	if opt.MaxClientConn <= 0 {
		opt.MaxClientConn = 1000
	}
	if opt.Observer == nil {
		opt.Observer = nopObserver{}
	}
	if opt.MaxPreparedStatements == 0 {
		opt.MaxPreparedStatements = DefaultMaxPreparedStatements
	}
	if opt.MaxMessageSize <= 0 {
		opt.MaxMessageSize = DefaultMaxMessageSize
	}
	opt.MaxMessageSize = min(opt.MaxMessageSize, wire.MaxMessageLength)
	if opt.MaxMessageMemory <= 0 {
		opt.MaxMessageMemory = DefaultMaxMessageMemory
	}
	if opt.MaxClientStatements <= 0 {
		opt.MaxClientStatements = DefaultMaxClientStatements
	}
	if opt.MaxClientStatementBytes <= 0 {
		opt.MaxClientStatementBytes = DefaultMaxClientStatementBytes
	}
	opt.env.Limits = engine.Limits{MaxPreparedStatements: opt.MaxPreparedStatements,
		MaxClientStatements: opt.MaxClientStatements, MaxClientStatementBytes: opt.MaxClientStatementBytes,
		RefusePins: opt.PinPolicy == PinPolicyRefuse}
	return opt
}

// storeOptions makes opt, with its defaults, the options in force.
func (s *Server) storeOptions(opt Options) {
	opt.env.Registry, opt.env.Counters = &s.stmts, &s.prep
	s.opt.Store(&opt)
}

// engineEnv is what every client's engine shares under o (one of the
// immutable Options the server stores).
func (o *Options) engineEnv() *engine.Env { return &o.env }

// options returns the options in force. Read them once per decision: a
// reload may replace them at any time.
func (s *Server) options() *Options { return s.opt.Load() }

// Reconfigure replaces the options in force while clients are connected;
// every later decision uses the new ones, and no client is disconnected by
// it. Mode, Observer, Logger, Reload and CancelTimeout cannot change: they keep
// their values. Turning the rewriting of statement names on or off
// (MaxPreparedStatements to or from a negative value) applies to clients that
// connect afterwards; a new bound applies to every backend at its next
// statement. A lower MaxClientConn refuses new clients only; a lower
// MaxMessageMemory makes later messages wait until the memory in use is below
// it.
func (s *Server) Reconfigure(opt Options) {
	cur := s.options()
	opt.Mode, opt.Observer, opt.Logger, opt.Reload, opt.CancelTimeout = cur.Mode, cur.Observer, cur.Logger, cur.Reload, cur.CancelTimeout
	opt = withDefaults(opt)
	s.storeOptions(opt)
	s.msgMem.setLimit(opt.MaxMessageMemory)
	select {
	case s.watchWake <- struct{}{}:
	default:
	}
}

// Stats returns a snapshot of client-side figures.
func (s *Server) Stats() Stats {
	return Stats{
		Clients:        int(s.clients.Load()),
		ClientsTotal:   s.accepted.Load(),
		Refused:        s.refused.Load(),
		ProtocolError:  s.protoErr.Load(),
		AuthFailed:     s.authFailed.Load(),
		RouteRefused:   s.routeRefused.Load(),
		TLSFailed:      s.tlsFailed.Load(),
		TLSRequired:    s.tlsRequired.Load(),
		IdleTxKilled:   s.idleKill.Load(),
		TooLarge:       s.tooLarge.Load(),
		OutOfMemory:    s.memTimeout.Load(),
		StatementLimit: s.prep.StatementLimit.Load(),
		LoopClients:    int(s.onLoop.Load()),
	}
}

// MessageMemory returns the state of the budget for client messages read
// whole (Options.MaxMessageMemory).
func (s *Server) MessageMemory() MessageMemory { return s.msgMem.stats() }

// PreparedStats returns the prepared-statement layer's counts.
func (s *Server) PreparedStats() PreparedStats {
	return PreparedStats{
		ClientParses: s.prep.ClientParses.Load(),
		ServerParses: s.prep.ServerParses.Load(),
		CacheHits:    s.prep.Hits.Load(),
		Evictions:    s.prep.Evictions.Load(),
		Statements:   s.stmts.len(),
	}
}

// Replays is how often a client's settings had to be applied to a backend.
func (s *Server) Replays() uint64 { return s.replays.Load() }

// Draining reports whether Shutdown or Close has started.
func (s *Server) Draining() bool { return s.drainCtx.Err() != nil }

// Serve accepts clients on ln until Shutdown or Close; it then returns
// ErrServerClosed. Other accept errors are returned after closing ln, and so
// is the reason the server has no event loop (it needs Linux).
func (s *Server) Serve(ln net.Listener) error {
	if s.loopErr != nil {
		ln.Close()
		return s.loopErr
	}
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()
	var backoff time.Duration
	var failures int // since the last log line
	var lastLog time.Time
	warned := false // a WARN went out since the last "accepting clients again"
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.Draining() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("proxy: accept: %w", err)
			}
			// Anything else (out of file descriptors, a connection reset before it
			// was accepted, ...) passes: retry with a growing delay, as net/http
			// does. Clients already logged in are not affected; new ones wait in
			// the listen backlog until descriptors are free again.
			failures++
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			if now := time.Now(); now.Sub(lastLog) >= time.Second {
				s.log.Warn("accept failed, retrying", "error", err, "delay", backoff, "failures", failures)
				lastLog, failures, warned = now, 0, true
			}
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-s.drainCtx.Done():
				t.Stop()
				return ErrServerClosed
			}
			continue
		}
		if backoff > 0 {
			// The next failure starts from the shortest delay again. One line for
			// the recovery after each WARN: while descriptors run out and free up
			// in turn, at most one of each a second.
			if warned {
				s.log.Info("accepting clients again", "failures_since_last_line", failures)
				warned, failures = false, 0
			}
			backoff = 0
		}
		s.accepted.Add(1)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetNoDelay(true)
		}
		s.sessWG.Add(1)
		if n := s.clients.Add(1); n > int64(s.options().MaxClientConn) {
			// Checked before anything is read: a client beyond the limit costs no
			// login, no buffer and no login timeout.
			s.clients.Add(-1)
			go s.refuseTooMany(c)
			continue
		}
		go s.serveClient(c)
	}
}

// refuseLinger bounds how long a refused client's connection stays open so
// that the startup packet it sent is read (see refuseTooMany).
const refuseLinger = 500 * time.Millisecond

// refuseTooMany refuses a client beyond --max-client-conn with FATAL 53300 at
// once, as PostgreSQL's postmaster does when it cannot start a backend (libpq
// reads the error even in answer to its SSLRequest). The connection then lingers
// a little while the startup packet the client sent is read and dropped: closing
// a socket with unread input resets the connection, which can destroy the error
// before the client reads it. A CancelRequest is still served: it never counts as
// a client.
func (s *Server) refuseTooMany(c net.Conn) {
	defer s.sessWG.Done()
	s.refused.Add(1)
	s.refusedLog.note(s.log, "client refused: max-client-conn reached", "client", c.RemoteAddr().String(),
		"max_client_conn", s.options().MaxClientConn)
	_ = c.SetDeadline(time.Now().Add(refuseLinger))
	_, _ = c.Write(wire.AppendError(nil, wire.SeverityFatal, wire.CodeTooManyConnections, "sorry, too many clients already", ""))
	var buf [wire.MaxStartupPacketLength]byte
	n, _ := io.ReadAtLeast(c, buf[:], 8)
	if st, err := wire.ReadStartup(bufio.NewReader(bytes.NewReader(buf[:n]))); err == nil && st.Code == wire.CancelRequestCode {
		s.cancel(st.CancelPID, st.CancelKey)
	}
	c.Close()
}

// register assigns the client a unique BackendKeyData pid and a random secret.
func (s *Server) register(ss *session) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown {
		return false
	}
	for {
		pid := rand.Uint32()&0x7fffffff | 1
		if _, taken := s.sessions[pid]; !taken {
			ss.pid, ss.key = pid, cancelKey()
			s.sessions[pid] = ss
			delete(s.logins, ss.sock) // Shutdown reaches it as a session now
			return true
		}
	}
}

// trackLogin records a client that is logging in, so that Shutdown can end it;
// false means the server is shutting down.
func (s *Server) trackLogin(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown {
		return false
	}
	s.logins[c] = struct{}{}
	return true
}

// untrackLogin forgets a client that logged in or left.
func (s *Server) untrackLogin(c net.Conn) {
	s.mu.Lock()
	delete(s.logins, c)
	s.mu.Unlock()
}

// cancelKey returns the secret of a client's BackendKeyData from crypto/rand: a
// CancelRequest needs it, so it must not be guessable from other clients' keys.
func cancelKey() uint32 {
	var b [4]byte
	_, _ = crand.Read(b[:]) // never fails on Linux (getrandom), panics if it could not
	return binary.BigEndian.Uint32(b[:])
}

func (s *Server) unregister(ss *session) {
	if ss.pid == 0 {
		return
	}
	s.mu.Lock()
	if s.sessions[ss.pid] == ss {
		delete(s.sessions, ss.pid)
	}
	s.mu.Unlock()
}

// cancel forwards a client's CancelRequest to the backend its session uses now.
func (s *Server) cancel(pid uint32, key []byte) {
	s.mu.Lock()
	ss := s.sessions[pid]
	s.mu.Unlock()
	if ss == nil || len(key) != 4 {
		return
	}
	var want [4]byte
	want[0], want[1], want[2], want[3] = byte(ss.key>>24), byte(ss.key>>16), byte(ss.key>>8), byte(ss.key)
	if subtle.ConstantTimeCompare(want[:], key) != 1 {
		s.log.Debug("cancel request with a wrong key ignored", "pid", pid)
		return
	}
	ss.forwardCancel()
}

// snapshot lists the pooled clients (admin console clients left out: they are
// not clients of any pool, see console.go).
func (s *Server) snapshot() []*session {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*session, 0, len(s.sessions))
	for _, ss := range s.sessions {
		if !ss.console {
			out = append(out, ss)
		}
	}
	return out
}

// snapshotAll lists every logged-in client, admin console clients included
// (Shutdown ends them too).
func (s *Server) snapshotAll() []*session {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*session, 0, len(s.sessions))
	for _, ss := range s.sessions {
		out = append(out, ss)
	}
	return out
}

// session returns the logged-in client given BackendKeyData pid id, or nil.
func (s *Server) session(id uint32) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions[id]
}

func (s *Server) closeListeners() {
	s.drainCancel() // first, so that Serve sees the accept error as a shutdown
	s.mu.Lock()
	s.shutdown = true
	for ln := range s.listeners {
		ln.Close()
	}
	s.mu.Unlock()
}

// Shutdown stops accepting clients, closes clients that are between transactions,
// lets open transactions finish until ctx is done, then ends the rest (their
// backends are rolled back). It returns when every client is gone. Pools are not
// closed: that is the caller's job, after Shutdown.
func (s *Server) Shutdown(ctx context.Context) error {
	defer s.stopLoop()
	s.closeListeners()
	s.mu.Lock()
	for c := range s.logins {
		// Wakes the startup read: the client is told the proxy shuts down.
		_ = c.SetReadDeadline(time.Unix(1, 0))
	}
	s.mu.Unlock()
	for _, ss := range s.snapshotAll() {
		ss.drain()
	}
	done := make(chan struct{})
	go func() { s.sessWG.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	for _, ss := range s.snapshotAll() {
		ss.terminate(killShutdown)
	}
	// Ended clients go within killWriteGrace, or as soon as their server
	// connection has rolled back. Whatever is still there after shutdownGrace
	// (a server connection that does not answer its ROLLBACK, a client still
	// logging in) is closed under its goroutines.
	t := time.NewTimer(shutdownGrace)
	defer t.Stop()
	select {
	case <-done:
		return ctx.Err()
	case <-t.C:
	}
	s.mu.Lock()
	for c := range s.logins {
		c.Close()
	}
	s.mu.Unlock()
	for _, ss := range s.snapshotAll() {
		ss.forceClose()
	}
	t.Reset(shutdownGrace)
	select {
	case <-done:
		return ctx.Err()
	case <-t.C:
	}
	s.log.Error("clients still being served after shutdown; giving up on them", "clients", s.clients.Load())
	return fmt.Errorf("%w: %d clients did not end", ctx.Err(), s.clients.Load())
}

// stopLoop stops the event-loop driver, once; its clients are gone by then
// or are closed.
func (s *Server) stopLoop() {
	s.loopOnce.Do(func() {
		if s.loop != nil {
			s.loop.stop()
		}
	})
}

// shutdownGrace is how long Shutdown waits for ended clients to go before it
// closes their connections, and again after.
const shutdownGrace = 400 * time.Millisecond

// Close ends every client now, rolling back their backends, and returns when they
// are gone.
func (s *Server) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := s.Shutdown(ctx)
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// refuse writes a FATAL error to a client that is not logged in and closes it.
func refuse(c net.Conn, code, msg string) { refuseDetail(c, code, msg, "") }

// refuseDetail is refuse with a DETAIL field.
func refuseDetail(c net.Conn, code, msg, detail string) {
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = c.Write(wire.AppendError(nil, wire.SeverityFatal, code, msg, detail))
	c.Close()
}

// logLimiter writes a line at most once a second; the lines it drops are
// counted in the next one (suppressed).
type logLimiter struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

// note logs msg at Warn unless a line went out less than a second ago.
func (l *logLimiter) note(log *slog.Logger, msg string, args ...any) {
	now := time.Now()
	l.mu.Lock()
	if now.Sub(l.last) < time.Second {
		l.suppressed++
		l.mu.Unlock()
		return
	}
	n := l.suppressed
	l.last, l.suppressed = now, 0
	l.mu.Unlock()
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	log.Warn(msg, args...)
}
