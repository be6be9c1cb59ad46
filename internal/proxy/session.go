package proxy

// This file is a client's state and its login, on the goroutine that
// accepted it; after the login the event loop serves it (loop*_linux.go), the
// admin console excepted (console.go).

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/engine"
	"github.com/pgsidecar/pgsidecar/internal/netio"
	"github.com/pgsidecar/pgsidecar/internal/pool"
	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// bufSize is the size of a session's pooled read and write buffers.
const bufSize = 16 * 1024

// cleanupTimeout bounds the ROLLBACK / DISCARD ALL that returns the backend of a
// client that left.
const cleanupTimeout = 5 * time.Second

// killWriteGrace is how long a write to a client the proxy is ending may take:
// a client that does not read is not waited for longer (see terminate).
const killWriteGrace = 250 * time.Millisecond

// loginBufSize is the size of the reader a client logs in with: a startup
// packet is a few hundred bytes (a larger one is read through it), and the
// login's answer is written without a buffer. Only the admin console gets
// bufSize buffers (growBuffers): in a storm of logins each login in flight
// holds 1 KiB, not 32.
const loginBufSize = 1024

var (
	readerPool      = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, bufSize) }}
	writerPool      = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, bufSize) }}
	loginReaderPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, loginBufSize) }}
)

// growBuffers gives an admin console client the full-size reader and writer in place of the small reader it
// logged in with. Bytes the client sent ahead (a query pipelined after its
// startup packet) are read first.
func (ss *session) growBuffers() {
	if ss.w == nil {
		ss.w = writerPool.Get().(*bufio.Writer)
		ss.w.Reset(&ss.cout)
	}
	if ss.r == nil || ss.r.Size() >= bufSize {
		return
	}
	small := ss.r
	ss.r = readerPool.Get().(*bufio.Reader)
	if n := small.Buffered(); n > 0 {
		p, _ := small.Peek(n)
		ss.r.Reset(io.MultiReader(bytes.NewReader(bytes.Clone(p)), ss.cio))
		// Take them in now: fill must not wait for the socket while they wait
		// here. The reader goes on through the socket until its next Reset.
		_, _ = ss.r.Peek(n)
	} else {
		ss.r.Reset(ss.cio)
	}
	small.Reset(nil)
	loginReaderPool.Put(small)
}

// killReason says why the proxy ends a client.
type killReason uint8

const (
	killNone killReason = iota
	killShutdown
	killIdleTx
	killServerLost
	killTxTimeout
	killAdmin // KILL_CLIENT of the admin console
)

var (
	errLocal    = errors.New("answered locally")
	errKilled   = errors.New("client is being closed")
	errDraining = errors.New("proxy is shutting down")
)

// sink is an io.Writer over a connection (its netio.ConnIO) that remembers the first
// write error and then swallows further output, so that the side copying into it
// keeps draining its source.
type sink struct {
	c   io.Writer
	err error
}

func (w *sink) Write(p []byte) (int, error) {
	if w.err != nil {
		return len(p), nil
	}
	if _, err := w.c.Write(p); err != nil {
		w.err = err
	}
	return len(p), nil
}

// session is one client connection: what the event loop (ls), the console
// and the leak watcher share of it. mu guards what the loop writes and the
// others read; no system call is made under it.
type session struct {
	srv  *Server
	conn net.Conn // nil once the event loop serves the client
	addr string

	// goSide is the login's (and the console's) reader and writer; nil once
	// the event loop serves the client (serveClient drops it after toLoop).
	*goSide

	pool          *pool.Pool
	pid, key      uint32
	db, user, app string

	swallow      atomic.Bool
	swallowing   atomic.Int32 // queued Queries whose whole answer is dropped
	streamBroken atomic.Bool  // a message to the client was cut off: write nothing more
	// dying: the proxy ends the client (terminate); answers stop being forwarded
	// at the next message boundary. killCh, made by the first wait that needs
	// it (killChanLocked), is closed then. Under mu.
	dying atomic.Bool

	// The small fields are together, so that an idle client's session fits a
	// smaller size class (size_linux_test.go). cancels, kill, gone, draining,
	// probing, leakReported, waiting and fatalForwarded are under mu.
	cancels       int32
	kill          killReason
	discardToSync bool // an extended-protocol batch failed locally; skip to its Sync
	track         bool // named statements are rewritten (transaction mode)
	pooled        bool // transaction mode: session state is tracked
	gone          bool // the client left; its server connection is cleaned up and released
	draining      bool
	probing       bool // the server connection is being asked about session state (loopSess.probe)
	leakReported  bool // this idle-in-transaction episode was logged as a leak suspect
	waiting       bool // in the pool's queue for a backend
	console       bool // an admin console client: served by serveConsole, no pool (console.go)
	// fatalForwarded: the server's FATAL reached the client, which gets none
	// of the proxy's (set under mu; read by end once the server side stopped).
	fatalForwarded bool

	killCh chan struct{}

	mu sync.Mutex
	// e is the client's protocol state: settings and pins, its statements, the
	// answers due from be and be's statements (internal/engine). Under mu.
	e          engine.Session
	be         *pool.Backend
	idleSince  stamp
	idleTimer  *time.Timer
	obs        ClientObserver // metrics events
	attachedAt stamp          // when be was attached
	txStart    stamp          // when the client's current transaction began

	// ls is the event-loop driver's side of the session while the loop serves
	// it (loop_linux.go); nil while it logs in (or is the console), and
	// after the loop let it go. Under mu.
	ls *loopSess

	connectedAt stamp // when the client connected (SHOW CLIENTS)
	waitSince   stamp // when the current wait for a backend began (SHOW POOLS maxwait)
}

// goSide is what a client has only while a goroutine serves it: the login,
// and the admin console for good.
type goSide struct {
	sock  net.Conn            // the accepted connection (conn, or what conn's TLS runs over)
	tlsTr *netio.TLSTransport // under conn when the client uses TLS (startTLS)
	cio   io.ReadWriter       // reads and writes conn
	r     *bufio.Reader       // client reader
	cout  sink                // client connection, error-swallowing
	w     *bufio.Writer       // buffered writes to the client (the console)
}

func (s *Server) serveClient(c net.Conn) {
	handed := false // to the event loop, which then ends the session
	defer func() {
		if !handed {
			s.sessWG.Done()
			s.clients.Add(-1) // counted by Serve
		}
	}()
	ss := &session{srv: s, conn: c, addr: c.RemoteAddr().String(), connectedAt: stampNow(),
		goSide: new(goSide)}
	ss.e.Tx = wire.TxIdle
	ss.sock = c
	ss.cio = netio.ConnIO(c)
	ss.cout.c = ss.cio
	ss.r = loginReaderPool.Get().(*bufio.Reader)
	ss.r.Reset(ss.cio)
	defer ss.release()

	if !s.trackLogin(c) {
		refuse(c, wire.CodeAdminShutdown, "pgsidecar is shutting down")
		return
	}
	defer s.untrackLogin(c)
	_ = c.SetDeadline(time.Now().Add(s.options().ClientLoginTimeout))
	st, ok := ss.startup()
	if !ok {
		c.Close()
		return
	}
	if !ss.login(st) {
		c.Close()
		return
	}
	defer func() {
		if !handed {
			s.unregister(ss)
		}
	}()
	_ = c.SetDeadline(time.Time{})
	if ss.dying.Load() {
		ss.killDeadlines() // ended while logging in: the deadlines just cleared were terminate's
	}
	if ss.toLoop() {
		handed = true
		ss.release()
		ss.mu.Lock()
		ss.goSide = nil
		ss.mu.Unlock()
		return
	}
	if !ss.dying.Load() {
		// No event loop (not Linux, or it could not start: logged by
		// NewServer), or the client's socket has no descriptor.
		ss.srv.log.Error("client cannot be served: no event loop for it", "client", ss.addr)
		refuse(c, wire.CodeConnectionFailure, "pgsidecar cannot serve this connection: its event loop is unavailable")
	}
	c.Close()
}

// release returns the session's buffers to their pools.
func (ss *session) release() {
	if ss.goSide == nil {
		return
	}
	if ss.r != nil {
		ss.r.Reset(nil)
		if ss.r.Size() < bufSize {
			loginReaderPool.Put(ss.r)
		} else {
			readerPool.Put(ss.r)
		}
		ss.r = nil
	}
	if ss.w != nil {
		ss.w.Reset(nil)
		writerPool.Put(ss.w)
	}
	ss.w = nil
}

// startup reads packets until a StartupMessage; it answers an SSLRequest with
// a TLS handshake when clients may use TLS (startTLS), else 'N' as it
// answers GSSENCRequests, and serves CancelRequests. ok is false when the
// connection is done.
func (ss *session) startup() (*wire.Startup, bool) {
	for i := 0; ; i++ {
		st, err := wire.ReadStartup(ss.r)
		if err != nil {
			ss.startupError(err)
			return nil, false
		}
		switch st.Code {
		case wire.SSLRequestCode, wire.GSSENCRequestCode:
			if i >= 2 {
				ss.protocolViolation("too many encryption requests")
				return nil, false
			}
			if ss.r.Buffered() > 0 {
				// The client must wait for our answer before sending more.
				ss.protocolViolation("received unencrypted data after SSL request")
				return nil, false
			}
			if ss.tlsTr != nil {
				ss.protocolViolation("encryption requested on an encrypted connection")
				return nil, false
			}
			if t := ss.srv.tlsFor(); t != nil && st.Code == wire.SSLRequestCode {
				if !ss.startTLS(t) {
					return nil, false
				}
				continue
			}
			if _, err := ss.conn.Write([]byte{'N'}); err != nil {
				return nil, false
			}
			continue
		case wire.CancelRequestCode:
			ss.srv.cancel(st.CancelPID, st.CancelKey)
			return nil, false
		}
		if st.Major() != 3 {
			ss.srv.protoErr.Add(1)
			refuse(ss.conn, wire.CodeFeatureNotSupported,
				fmt.Sprintf("unsupported frontend protocol %d.%d: server supports 3.0 to 3.0", st.Major(), st.Minor()))
			return nil, false
		}
		return st, true
	}
}

func (ss *session) startupError(err error) {
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF):
		// Connection probe (a TCP health check): nothing to say.
	case errors.As(err, &ne) && ne.Timeout() && ss.srv.Draining():
		refuse(ss.conn, wire.CodeAdminShutdown, "pgsidecar is shutting down")
	case errors.As(err, &ne) && ne.Timeout():
		ss.srv.log.Info("client login timed out", "client", ss.addr, "timeout", ss.srv.options().ClientLoginTimeout)
		ss.srv.protoErr.Add(1)
		refuse(ss.conn, wire.CodeProtocolViolation,
			fmt.Sprintf("pgsidecar: startup not completed within %s", ss.srv.options().ClientLoginTimeout))
	case errors.Is(err, wire.ErrInvalidLength), errors.Is(err, wire.ErrInvalidStartup), errors.Is(err, io.ErrUnexpectedEOF):
		ss.protocolViolation(err.Error())
	default:
		ss.srv.log.Debug("client startup failed", "client", ss.addr, "error", err)
	}
}

func (ss *session) protocolViolation(msg string) {
	ss.srv.protoErr.Add(1)
	ss.srv.log.Info("client protocol violation", "client", ss.addr, "user", ss.user, "database", ss.db, "error", msg)
	refuse(ss.conn, wire.CodeProtocolViolation, msg)
}

// login checks the startup parameters, makes sure the route's server parameters are
// known and sends the client what PostgreSQL sends after authentication.
func (ss *session) login(st *wire.Startup) bool {
	ss.pooled = ss.srv.options().Mode == ModeTransaction
	ss.track = ss.pooled && ss.srv.options().MaxPreparedStatements > 0
	ss.e.State.Init(st)
	ss.initEngine()
	ss.user = st.Param("user")
	ss.db = st.Param("database")
	ss.app = st.Param("application_name")
	if ss.user == "" {
		refuse(ss.conn, wire.CodeInvalidAuthorization, "no PostgreSQL user name specified in startup packet")
		return false
	}
	if ss.db == "" {
		ss.db = ss.user
	}
	switch st.Param("replication") {
	case "", "false", "off", "no", "0":
	default:
		refuse(ss.conn, wire.CodeFeatureNotSupported, "pgsidecar does not support replication connections")
		return false
	}
	var unsupported []string
	for _, p := range st.Params {
		if len(p.Name) > 5 && p.Name[:5] == "_pq_." {
			unsupported = append(unsupported, p.Name)
		}
	}
	if !ss.requireTLS() || !ss.authenticate() {
		return false
	}
	if ss.db == ConsoleDatabase {
		// The admin console (console.go): served here, never from a pool.
		ss.growBuffers()
		ss.serveConsole(st, unsupported)
		return false
	}
	if !ss.allowRoute() {
		return false
	}
	params, ok := ss.findRoute()
	if !ok {
		return false
	}
	// Metric series only for routes PostgreSQL accepted: their labels stay bounded
	// by what the server knows, whatever clients send.
	ss.obs = ss.srv.options().Observer.Client(ss.db, ss.user, ss.app)
	if !ss.srv.register(ss) {
		refuse(ss.conn, wire.CodeAdminShutdown, "pgsidecar is shutting down")
		return false
	}
	buf := make([]byte, 0, 512)
	if st.Minor() > 0 || len(unsupported) > 0 {
		buf = wire.AppendNegotiateProtocolVersion(buf, 0, unsupported)
	}
	buf = wire.AppendAuthOK(buf)
	names := make([]string, 0, len(params))
	for k := range params {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		v := params[k]
		if own, ok := ss.e.State.Startup[strings.ToLower(k)]; ok {
			v = own // the client's own value, which the proxy gives it on every backend
		} else if k == "application_name" {
			v = ""
		}
		buf = wire.AppendParameterStatus(buf, k, v)
	}
	buf = wire.AppendBackendKeyData(buf, ss.pid, ss.key)
	buf = wire.AppendReadyForQuery(buf, wire.TxIdle)
	if _, err := ss.conn.Write(buf); err != nil {
		return false
	}
	ss.srv.log.Debug("client logged in", "client", ss.addr, "user", ss.user, "database", ss.db, "application_name", ss.app)
	return true
}

// findRoute finds the client's pool and the server parameters it reports. The first
// client of a route logs in once to learn them; if that fails, the route's pool is
// dropped again (a mistyped database or user leaves nothing behind) and the
// client is refused with PostgreSQL's error.
func (ss *session) findRoute() (map[string]string, bool) {
	key := pool.Key{Database: ss.db, User: ss.user}
	for try := 0; ; try++ {
		ss.pool = ss.srv.pools.Get(key)
		if ss.pool == nil {
			refuse(ss.conn, wire.CodeAdminShutdown, "pgsidecar is shutting down")
			return nil, false
		}
		if params := ss.pool.ServerParams(); params != nil {
			return params, true
		}
		ctx, cancel := context.WithTimeout(ss.srv.drainCtx, ss.srv.options().ClientLoginTimeout)
		be, err := ss.pool.Acquire(ctx)
		cancel()
		if err == nil {
			params := be.Params
			ss.pool.Release(be)
			return params, true
		}
		if errors.Is(err, pool.ErrClosed) && ss.srv.drainCtx.Err() == nil && try < 3 {
			continue // another client's failed login dropped this pool: take the new one
		}
		ss.srv.pools.DropUnproven(key, ss.pool)
		code, msg := ss.acquireError(err)
		ss.logNoServer("client login failed", err)
		refuse(ss.conn, code, msg)
		return nil, false
	}
}

// logNoServer logs a client that got no backend. A refusal by the back-off of
// a failing route is logged by the pool, once per back-off step with the
// refusals counted, so here only at Debug; so is a failed dial, which the pool
// logs too.
func (ss *session) logNoServer(msg string, err error) {
	level := slog.LevelWarn
	if errors.Is(err, pool.ErrBackoff) || errors.Is(err, pool.ErrDial) {
		level = slog.LevelDebug
	}
	ss.srv.log.Log(context.Background(), level, msg, "client", ss.addr, "user", ss.user, "database", ss.db, "error", err)
}

// acquireError maps a failure to get a backend to what the client is told.
func (ss *session) acquireError(err error) (code, msg string) {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		st := ss.pool.Stats()
		return wire.CodeQueryCanceled, fmt.Sprintf(
			"pgsidecar: query_wait_timeout: no server connection became free within %s (pool %s/%s: %d of %d in use, %d waiting)",
			ss.srv.options().QueryWaitTimeout, ss.db, ss.user, st.InUse, st.Size, st.Waiting)
	case errors.Is(err, context.Canceled), errors.Is(err, pool.ErrClosed), errors.Is(err, errDraining):
		return wire.CodeAdminShutdown, "pgsidecar is shutting down"
	}
	if c, m, ok := pool.ServerError(err); ok {
		return c, m
	}
	return wire.CodeConnectionFailure, "pgsidecar: " + err.Error()
}

// checkClientHeader refuses a client message by its header alone: larger
// than --max-message-size (COPY data excepted: it is streamed, only its rate
// is bounded), a Sync, Flush or CopyDone with a body, or a type no frontend
// sends. The loop calls it before anything of the message is read.
func checkClientHeader(h wire.Header, opt *Options) error {
	if h.Len > opt.MaxMessageSize && h.Type != wire.MsgCopyData {
		return fmt.Errorf("%w: a message of type %q and %d bytes exceeds --max-message-size (%d bytes)",
			errMsgTooBig, h.Type, 1+h.Len, opt.MaxMessageSize)
	}
	switch h.Type {
	case wire.MsgSync, wire.MsgFlush, wire.MsgCopyDone:
		if h.Len != 4 {
			return fmt.Errorf("%w: type %q length %d", wire.ErrInvalidLength, h.Type, h.Len)
		}
	default:
		if !wire.ValidFrontendType(h.Type) {
			return fmt.Errorf("%w: invalid frontend message type %d", errProtocol, h.Type)
		}
	}
	return nil
}

var (
	errProtocol = engine.ErrProtocol // a client message that cannot be read
	readyIdle   = wire.AppendReadyForQuery(nil, wire.TxIdle)
)

// attachedLocked makes be the client's server connection, got at at, with
// its per-connection state fresh. ss.mu is held.
func (ss *session) attachedLocked(be *pool.Backend, at time.Time) {
	ss.be = be
	ss.attachedAt = stampOf(at)
	ss.e.Attached(stmtsOf(be))
	ss.swallowing.Store(0)
	ss.swallow.Store(false)
	ss.fatalForwarded = false
	ss.streamBroken.Store(false)
}

// statementBeginsLocked accounts for a client message about to be sent:
// where a transaction (or a statement outside one) begins, for the
// transaction timeout, and the end of an idle-in-transaction episode.
// attached says a server connection is attached. ss.mu is held.
func (ss *session) statementBeginsLocked(attached bool) {
	if ss.srv.options().TransactionTimeout > 0 && (!attached || (ss.e.Tx == wire.TxIdle && ss.e.Between())) {
		ss.txStart = stampNow() // a transaction (or a statement) begins
	}
	if attached && !ss.idleSince.IsZero() && ss.e.Between() && ss.e.Tx != wire.TxIdle {
		// An idle-in-transaction episode ends.
		ss.obs.IdleTransactionDone(ss.idleSince.Since())
		ss.idleSince = 0
	}
}

// Backpressure on a client that sends messages faster than their answers are
// read (a pipeline without Sync, a client that does not read): at maxPending
// answers due, the loop stops reading the client until they are down to
// resumePending. Each pending answer is a few dozen bytes.
const (
	maxPending    = 8192
	resumePending = maxPending / 2
)

// boundaryLocked is what the engine's transaction-boundary decision needs to
// know of the client now. ss.mu is held.
func (ss *session) boundaryLocked() engine.Boundary {
	return ss.e.Boundary(ss.srv.options().Mode == ModeSession, ss.gone)
}

func (ss *session) armIdleLocked() {
	ss.idleSince = stampNow()
	ss.leakReported = false
	d := ss.srv.options().IdleTransactionTimeout
	if d <= 0 {
		return
	}
	if ss.idleTimer == nil {
		ss.idleTimer = time.AfterFunc(d, ss.idleTimeout)
	} else {
		ss.idleTimer.Reset(d)
	}
}

func (ss *session) idleTimeout() {
	d := ss.srv.options().IdleTransactionTimeout
	ss.mu.Lock()
	expired := ss.activityLocked().IdleTimedOut(time.Now(), d)
	if expired {
		// Decided under the lock the loop takes: a message the client sends from
		// now on is refused, so the client cannot be ended halfway through it.
		ss.kill = killIdleTx
	}
	ss.mu.Unlock()
	if expired {
		ss.srv.idleKill.Add(1)
		ss.srv.log.Warn("client idle in transaction too long, closing it and rolling back",
			"client", ss.addr, "user", ss.user, "database", ss.db, "application_name", ss.app, "timeout", d)
		ss.terminate(killIdleTx)
	}
}

// forwardCancel sends a CancelRequest to the backend the client uses now, if it is
// running something, and keeps that backend attached until the request is delivered.
func (ss *session) forwardCancel() {
	ss.mu.Lock()
	be := ss.be
	if be == nil || ss.e.Outstanding <= 0 {
		ss.mu.Unlock()
		return
	}
	ss.cancels++
	pid, key, addr := be.PID, be.Key, be.CancelAddr()
	ss.mu.Unlock()
	defer func() {
		ss.mu.Lock()
		ss.cancels--
		ls := ss.ls
		ss.mu.Unlock()
		if ls != nil {
			ls.post(ls.cancelDone)
		}
	}()
	if err := sendCancel(addr, pid, key, ss.srv.options().CancelTimeout); err != nil {
		ss.srv.log.Warn("forwarding cancel request failed", "client", ss.addr, "server_pid", pid, "error", err)
		return
	}
	ss.srv.log.Debug("cancel request forwarded", "client", ss.addr, "server_pid", pid)
}

// sendCancel delivers a CancelRequest and waits until the server has processed it
// (the postmaster closes the connection after signalling the backend).
func sendCancel(addr net.Addr, pid uint32, key []byte, timeout time.Duration) error {
	c, err := net.DialTimeout(addr.Network(), addr.String(), timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write(wire.AppendCancelRequest(nil, pid, key)); err != nil {
		return err
	}
	var b [1]byte
	if _, err := c.Read(b[:]); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	return nil
}

// closedChan is a closed channel: the kill channel of a client that is
// already being ended.
var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// killChanLocked is killChan with ss.mu held.
func (ss *session) killChanLocked() <-chan struct{} {
	if ss.killCh == nil {
		if ss.dying.Load() {
			return closedChan
		}
		ss.killCh = make(chan struct{})
	}
	return ss.killCh
}

// markDyingLocked records that the proxy ends the client and wakes its waits.
// ss.mu is held.
func (ss *session) markDyingLocked() {
	if ss.dying.Load() {
		return
	}
	ss.dying.Store(true)
	if ss.killCh != nil {
		close(ss.killCh)
	}
}

// stamp is a point in time on the monotonic clock, in nanoseconds since
// procStart (plus one, so that the zero stamp means never): a session keeps
// five, at 8 bytes each where a time.Time takes 24.
type stamp int64

// procStart is the epoch of stamps.
var procStart = time.Now()

// stampNow is the stamp of now.
func stampNow() stamp { return stamp(time.Since(procStart)) + 1 }

// stampOf is the stamp of t, which must be after procStart.
func stampOf(t time.Time) stamp { return stamp(t.Sub(procStart)) + 1 }

// IsZero reports whether s is never.
func (s stamp) IsZero() bool { return s == 0 }

// Time is s as a time.Time (the zero Time for never).
func (s stamp) Time() time.Time {
	if s == 0 {
		return time.Time{}
	}
	return procStart.Add(time.Duration(s - 1))
}

// Since is the time elapsed since s.
func (s stamp) Since() time.Duration { return time.Since(procStart) - time.Duration(s-1) }
