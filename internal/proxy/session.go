package proxy

// This file is the goroutine driver of a client: its state, login, the client
// goroutine's loop, attach and the server goroutine. It is above 800 lines
// because the flow that the event loop reimplemented on the engine's calls
// (loop*_linux.go) is still here for the goroutine driver; step 3 of
// docs/design.md section 16 reduces it to what that driver alone needs.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
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
	"syscall"
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

// fatalWriteTimeout bounds writing the FATAL error that tells a client why the
// proxy ends it.
const fatalWriteTimeout = 500 * time.Millisecond

// syncReadLimit is how long the client goroutine waits for a backend's answer
// itself before it hands the backend to a server goroutine and goes back to
// watching the client (see syncRead).
const syncReadLimit = 100 * time.Millisecond

// loginBufSize is the size of the reader a client logs in with: a startup
// packet is a few hundred bytes (a larger one is read through it), and the
// login's answer is written without a buffer. Only a client that stays with
// its goroutine gets bufSize buffers (growBuffers): in a storm of logins
// that go to the event loop, each login in flight holds 1 KiB, not 32.
const loginBufSize = 1024

var (
	readerPool      = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, bufSize) }}
	writerPool      = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, bufSize) }}
	loginReaderPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, loginBufSize) }}
)

// growBuffers gives a client that stays with its goroutine (or the admin
// console) the full-size reader and writer in place of the small reader it
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

// session is one client connection.
//
// The client goroutine (run) reads client messages and writes them to the attached
// backend. When it has sent a complete batch (up to a Sync or a Query) and the
// client has sent nothing more, it reads the backend's answer itself (syncRead):
// the common request/response exchange costs no goroutine handoff. Otherwise (a
// Flush or an unfinished batch whose answers the client may be waiting for, COPY
// IN, a slow answer, session mode, cleanup after the client left) a server
// goroutine (serverLoop) reads the backend and writes to the client until the
// batch is answered. At most one of them reads the backend at a time: reader says
// which. The client writer w belongs to the server goroutine while it runs and to
// the client goroutine otherwise. mu guards the state shared between the two.
type session struct {
	srv  *Server
	conn net.Conn // nil once the event loop serves the client
	addr string

	// goSide is what only the goroutine driver uses; nil once the event loop
	// serves the client (serveClient drops it after toLoop).
	*goSide

	pool          *pool.Pool
	pid, key      uint32
	db, user, app string

	swallow      atomic.Bool
	swallowing   atomic.Int32 // queued Queries whose whole answer is dropped
	streamBroken atomic.Bool  // a message to the client was cut off: write nothing more
	// dying: the proxy ends the client (terminate); answers stop being forwarded
	// at the next message boundary. killCh, made by the first wait that needs
	// it (killChan), is closed then. Under mu.
	dying atomic.Bool

	// The small fields are together, so that an idle client's session fits a
	// smaller size class (size_linux_test.go). cancels, kill, gone, draining,
	// probing, doomed, leakReported, waiting and fatalForwarded are under mu.
	cancels       int32
	kill          killReason
	discardToSync bool // an extended-protocol batch failed locally; skip to its Sync
	track         bool // named statements are rewritten (transaction mode)
	pooled        bool // transaction mode: session state is tracked
	gone          bool // the client left; the server goroutine cleans up and releases
	draining      bool
	probing       bool // the backend is being asked (see probe); attach waits
	doomed        bool // the backend is being closed: never release it
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
	// it (loop_linux.go); nil while its goroutine does. Under mu.
	ls *loopSess

	connectedAt stamp // when the client connected (SHOW CLIENTS)
	waitSince   stamp // when the current wait for a backend began (SHOW POOLS maxwait)
}

// goSide is the part of a session that only the goroutine driver uses: the
// client socket's reader and writers, the attached backend's writer, and the
// hand-off between the client goroutine and a server goroutine. A client the
// event loop serves does without it: about a third of an idle loop client's
// memory.
type goSide struct {
	cio io.ReadWriter // reads and writes conn
	raw syscall.RawConn

	r          *bufio.Reader // client reader; nil while waiting for input with nothing buffered
	cout       sink          // client connection, error-swallowing
	w          *bufio.Writer // buffered writes to the client
	wIdle      *bufio.Writer // a tiny writer that stands in for w while the client is idle (see fill)
	bout       sink          // attached backend connection
	bw         *bufio.Writer // buffered writes to the attached backend
	waitFn     func(fd uintptr) bool
	flushFn    func(fd uintptr) bool // ss.flushAndWait
	flushState int
	flushErr   error
	waitArm    bool
	peekBuf    [1]byte

	// The client goroutine's own prepared-statement state.
	owedReply []byte // ParseCompletes for Parses answered without a backend
	held      []byte // a client message too big for r, read whole and not yet sent
	scratch   []byte // a whole client message
	// unsettled: a server goroutine did not stop when the client left; the
	// session's buffers are not reused (see leave).
	unsettled bool
	big       *bigMsg // the message read whole outside r (msgmem.go), until the next one
	// backpressured: the client goroutine waits for answers to drain (awaitAnswers).
	backpressured bool

	// Under session.mu.
	cond        sync.Cond
	reader      bool // a server goroutine reads be
	writing     bool // the client goroutine is sending be a message that does not hold it (see attach)
	pendingBody int  // bytes of a backend message a timed-out syncRead left for the server goroutine
	pendingSkip bool // ... which are dropped rather than forwarded
	readerWG    sync.WaitGroup
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
	ss.cond.L = &ss.mu
	ss.e.Tx = wire.TxIdle
	ss.cio = netio.ConnIO(c)
	ss.cout.c = ss.cio
	ss.r = loginReaderPool.Get().(*bufio.Reader)
	ss.r.Reset(ss.cio)
	defer ss.release()
	if sc, ok := c.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			ss.raw = raw
			ss.waitFn = ss.readable
		}
	}
	ss.flushFn = ss.flushAndWait

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
	ss.growBuffers()
	ss.run()
}

// release returns the session's buffers to their pools.
func (ss *session) release() {
	if ss.goSide == nil || ss.unsettled {
		return // a server goroutine may still use them: left to the garbage collector
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
	if ss.w != nil && ss.w != ss.wIdle {
		ss.w.Reset(nil)
		writerPool.Put(ss.w)
	}
	ss.w = nil
}

// startup reads packets until a StartupMessage; it answers SSL and GSSENC requests
// with 'N' and serves CancelRequests. ok is false when the connection is done.
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
	if ss.db == ConsoleDatabase {
		// The admin console (console.go): served here, never from a pool.
		ss.growBuffers()
		ss.serveConsole(st, unsupported)
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

// readable is the session's RawConn.Read callback: it returns true once the client
// socket has data (or an error/EOF) to read, so that the client goroutine can wait
// for input without holding a read buffer.
func (ss *session) readable(fd uintptr) bool {
	if ss.waitArm {
		return true
	}
	_, err := netio.PeekFD(fd, ss.peekBuf[:])
	if err == syscall.EAGAIN {
		ss.waitArm = true
		return false
	}
	return true
}

// fill makes sure the client reader exists; with nothing buffered it first waits for
// input holding no buffer, so that an idle client costs little memory.
func (ss *session) fill() error {
	if ss.r != nil && ss.r.Buffered() > 0 {
		return nil
	}
	if ss.raw != nil {
		if ss.r != nil {
			ss.r.Reset(nil)
			readerPool.Put(ss.r)
			ss.r = nil
		}
		ss.shedWriters()
		ss.waitArm = false
		err := ss.raw.Read(ss.waitFn)
		ss.r = readerPool.Get().(*bufio.Reader)
		ss.r.Reset(ss.cio)
		if ss.w == ss.wIdle {
			ss.w = writerPool.Get().(*bufio.Writer)
			ss.w.Reset(&ss.cout)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// shedWriters returns the client's and the backend's write buffers to their pools
// while the client waits for input with no backend and no server goroutine: an
// idle client then holds no buffer. w becomes wIdle, a 16-byte writer that is
// correct (if slow) should anything write to the client meanwhile; bw is taken
// again by attach.
func (ss *session) shedWriters() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.be != nil || ss.reader {
		return
	}
	if ss.bw != nil {
		ss.bw.Reset(nil)
		writerPool.Put(ss.bw)
		ss.bw = nil
	}
	if ss.w != ss.wIdle && ss.w.Buffered() == 0 {
		if ss.wIdle == nil {
			ss.wIdle = bufio.NewWriterSize(&ss.cout, 16)
		}
		ss.w.Reset(nil)
		writerPool.Put(ss.w)
		ss.w = ss.wIdle
	}
}

// complete reports whether r holds one whole message, so that the writer on the other
// side may keep batching instead of flushing.
func complete(r *bufio.Reader) bool {
	n := r.Buffered()
	if n < wire.HeaderLen {
		return false
	}
	p, _ := r.Peek(wire.HeaderLen)
	return n >= 1+int(binary.BigEndian.Uint32(p[1:5]))
}

// run is the client goroutine after login.
func (ss *session) run() {
	for {
		ss.releaseBig() // the last message is done with
		if err := ss.fill(); err != nil {
			ss.end(err)
			return
		}
		h, err := wire.PeekHeader(ss.r, wire.MaxMessageLength)
		if err != nil {
			ss.end(err)
			return
		}
		opt := ss.srv.options()
		ss.e.Env = opt.engineEnv() // a reload may have changed the bounds
		if err := checkClientHeader(h, opt); err != nil {
			ss.end(err)
			return
		}
		if h.Type == wire.MsgTerminate {
			ss.end(io.EOF)
			return
		}
		if ss.discardToSync {
			if err := wire.Skip(ss.r, 1+h.Len); err != nil {
				ss.end(err)
				return
			}
			if h.Type == wire.MsgSync {
				ss.discardToSync = false
				ss.w.Write(readyIdle)
				ss.w.Flush()
			}
			continue
		}
		if h.Type == wire.MsgParse && ss.track {
			deferred, err := ss.deferParse(h)
			if err != nil {
				ss.end(err)
				return
			}
			if deferred {
				continue
			}
		}
		var eff engine.QueryEffect
		if h.Type == wire.MsgQuery && ss.pooled {
			if eff, err = ss.classifyQuery(h); err != nil {
				ss.end(err)
				return
			}
			if ss.track && ss.answerLocally(&eff, h) {
				continue
			}
			if eff.State.Pin != "" && ss.srv.options().PinPolicy == PinPolicyRefuse && ss.refuseLocally(&eff, h) {
				continue
			}
		}
		be, err := ss.attach(h.Type)
		if err != nil {
			if !ss.failLocally(h, err) {
				return
			}
			continue
		}
		if h.Type == wire.MsgQuery && ss.pooled {
			err = ss.sendQuery(eff, h)
		} else {
			err = ss.send(be, h)
		}
		if err != nil {
			ss.end(err)
			return
		}
		if !complete(ss.r) {
			ss.flushed(be)
		}
	}
}

// checkClientHeader refuses a client message by its header alone: larger
// than --max-message-size (COPY data excepted: it is streamed, only its rate
// is bounded), a Sync, Flush or CopyDone with a body, or a type no frontend
// sends. Both drivers call it before anything of the message is read.
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

// flushed sends what was forwarded to be and decides who reads the answer.
func (ss *session) flushed(be *pool.Backend) {
	ss.mu.Lock()
	if ss.be == be && !ss.reader && !ss.e.Partial && ss.e.Outstanding > 0 {
		// The common case: a complete batch whose answer the client goroutine reads.
		ss.doneWritingLocked()
		ss.mu.Unlock()
		ss.syncRead(be, true)
		return
	}
	ss.mu.Unlock()
	err := ss.bw.Flush()
	if err == nil {
		err = ss.bout.err
	}
	ss.mu.Lock()
	ss.doneWritingLocked()
	if ss.be != be || ss.reader {
		// The server goroutine reads the answer (or sees the broken backend and
		// ends this client).
		ss.mu.Unlock()
		if err != nil {
			ss.doom(be)
		}
		return
	}
	if err != nil {
		ss.mu.Unlock()
		ss.serverFailed(be, err, false)
		return
	}
	if ss.e.Partial {
		// The client may wait for answers before it sends the rest of its batch (a
		// Flush): read them while the client goroutine watches the client.
		ss.startReaderLocked(be)
		ss.mu.Unlock()
		return
	}
	wait := ss.e.Outstanding > 0
	ss.mu.Unlock()
	if wait {
		ss.syncRead(be, false)
	}
}

// flushAndWait is the backend RawConn.Read callback of syncRead: its first call
// sends the batch, later calls report the answer readable. Sending it after the
// read was armed spares the read attempt that would find nothing yet.
func (ss *session) flushAndWait(uintptr) bool {
	if ss.flushState == 0 {
		ss.flushState = 1
		ss.flushErr = ss.bw.Flush()
		if ss.flushErr == nil {
			ss.flushErr = ss.bout.err
		}
		return ss.flushErr != nil
	}
	return true
}

// startReaderLocked starts the server goroutine for be. ss.mu is held.
func (ss *session) startReaderLocked(be *pool.Backend) {
	ss.reader = true
	ss.readerWG.Add(1)
	go ss.serverLoop(be)
}

// syncRead reads be's answer to the batch in flight on the client goroutine and
// forwards it to the client, like a PostgreSQL backend that answers a batch before
// it reads the next one. A backend that has not answered within syncReadLimit (a
// long query) or that starts COPY IN is handed to a server goroutine, so that the
// client goroutine goes back to watching the client (its disconnect, more COPY
// data, the proxy ending it).
//
// flush says the batch is still in ss.bw: it is sent here.
func (ss *session) syncRead(be *pool.Backend, flush bool) {
	_ = be.Conn.SetReadDeadline(time.Now().Add(syncReadLimit))
	r := be.R
	if flush {
		var err error
		if raw := be.RawConn(); raw != nil && r.Buffered() == 0 {
			ss.flushState = 0
			err = raw.Read(ss.flushFn)
			if ss.flushErr != nil {
				ss.serverFailed(be, ss.flushErr, false)
				return
			}
		} else if err = ss.bw.Flush(); err == nil && ss.bout.err != nil {
			err = ss.bout.err
		}
		if err != nil {
			if ss.flushState == 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
				ss.serverFailed(be, err, false)
			} else {
				ss.handOver(be, 0, false)
			}
			return
		}
	}
	for {
		if ss.dying.Load() {
			// The proxy ends the client: the backend, in the middle of its
			// answer, is closed when the client goroutine gets to end it.
			return
		}
		h, err := wire.PeekHeader(r, wire.MaxMessageLength)
		if err != nil {
			ss.syncReadFailed(be, err, 0, false)
			return
		}
		if h.Type == wire.MsgReadyForQuery {
			status, err := ss.forwardReady(r, h)
			if err != nil {
				ss.serverFailed(be, err, false)
				return
			}
			switch ss.settle(be, ss.ready(be, status, false), false) {
			case released:
				ss.w.Flush()
				return
			case stopReading:
				ss.w.Flush()
				ss.mu.Lock()
				if ss.e.State.PinListen && ss.be == be && !ss.reader {
					ss.startReaderLocked(be) // notifications reach the idle client
				}
				ss.mu.Unlock()
				return
			}
			if !complete(r) {
				ss.w.Flush()
			}
			continue
		}
		if rest, skip, err := ss.relay(r, h); err != nil {
			ss.syncReadFailed(be, err, rest, skip)
			return
		}
		if h.Type == wire.MsgCopyInResponse || h.Type == wire.MsgCopyBothResponse {
			ss.w.Flush()
			ss.handOver(be, 0, false)
			return
		}
		if !complete(r) {
			ss.w.Flush()
		}
	}
}

// syncReadFailed handles a read error of syncRead: a timeout hands the backend to a
// server goroutine (which first forwards the rest bytes of a message cut by the
// timeout); anything else means the backend is broken.
func (ss *session) syncReadFailed(be *pool.Backend, err error, rest int, skip bool) {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		ss.handOver(be, rest, skip)
		return
	}
	if rest > 0 && !skip {
		// Part of a message may have reached the client: anything more would be read
		// as the rest of it. Like PostgreSQL, just close.
		ss.streamBroken.Store(true)
	}
	ss.serverFailed(be, err, false)
}

// handOver starts the server goroutine for be from the client goroutine.
func (ss *session) handOver(be *pool.Backend, rest int, skip bool) {
	ss.mu.Lock()
	ss.pendingBody, ss.pendingSkip = rest, skip
	ss.startReaderLocked(be)
	ss.mu.Unlock()
}

// forwardReady forwards the ReadyForQuery whose header h was peeked (unless the
// session swallows the backend's output) and returns its status byte.
func (ss *session) forwardReady(r *bufio.Reader, h wire.Header) (byte, error) {
	msg, err := wire.PeekMessage(r, h)
	if err != nil || h.Len != 5 {
		return 0, fmt.Errorf("bad ReadyForQuery: %w", err)
	}
	status := msg[5]
	if !ss.swallow.Load() && !ss.dying.Load() && !ss.frontSwallowed() {
		ss.w.Write(msg)
	}
	r.Discard(6)
	return status, nil
}

var (
	errProtocol = engine.ErrProtocol // a client message that cannot be read
	readyIdle   = wire.AppendReadyForQuery(nil, wire.TxIdle)
)

// failLocally answers a message that got no backend. It returns false when the
// client is done.
func (ss *session) failLocally(h wire.Header, err error) bool {
	if ss.held != nil {
		ss.held = nil
	} else if skipErr := wire.Skip(ss.r, 1+h.Len); skipErr != nil {
		ss.end(skipErr)
		return false
	}
	if errors.Is(err, errLocal) {
		switch h.Type {
		case wire.MsgSync:
			ss.payOwed()
			ss.w.Write(readyIdle)
			ss.w.Flush()
		case wire.MsgFlush:
			if ss.e.Owing() > 0 {
				ss.payOwed()
				ss.w.Flush()
			}
		}
		return true
	}
	if errors.Is(err, errKilled) || errors.Is(err, errDraining) || errors.Is(err, pool.ErrClosed) || errors.Is(err, context.Canceled) {
		ss.end(err)
		return false
	}
	code, msg := ss.acquireError(err)
	ss.logNoServer("no server connection for client", err)
	ss.payOwed()
	ss.w.Write(wire.AppendError(nil, wire.SeverityError, code, msg, ""))
	switch h.Type {
	case wire.MsgQuery, wire.MsgFunctionCall, wire.MsgSync:
		ss.w.Write(wire.AppendReadyForQuery(nil, wire.TxIdle))
	default:
		ss.discardToSync = true
	}
	ss.w.Flush()
	return true
}

// attach returns the backend the message of type t goes to, attaching one first if
// needed, and accounts for the message. Messages that need no backend while none is
// attached (Sync, Flush, stray COPY data) return errLocal.
func (ss *session) attach(t byte) (*pool.Backend, error) {
	ss.mu.Lock()
	for ss.probing {
		ss.cond.Wait()
	}
	if ss.kill != killNone {
		ss.mu.Unlock()
		return nil, errKilled
	}
	be := ss.be
	if be != nil && ss.e.Q.Len() >= maxPending {
		// Backpressure: the client sends faster than its answers are read.
		if err := ss.awaitAnswersLocked(be); err != nil {
			ss.mu.Unlock()
			return nil, err
		}
		be = ss.be
	}
	ss.statementBeginsLocked(be != nil)
	if be == nil {
		switch t {
		case wire.MsgSync, wire.MsgFlush, wire.MsgCopyData, wire.MsgCopyDone, wire.MsgCopyFail:
			ss.mu.Unlock()
			return nil, errLocal
		}
		if ss.draining {
			ss.mu.Unlock()
			return nil, errDraining
		}
		key := ss.e.State.WantKey
		ss.mu.Unlock()
		var err error
		var at time.Time
		if be, at, err = ss.acquire(key); err != nil {
			return nil, err
		}
		ss.mu.Lock()
		if ss.kill != killNone {
			ss.mu.Unlock()
			be.Pool().Release(be)
			return nil, errKilled
		}
		if at.IsZero() {
			at = time.Now()
		}
		ss.attachedLocked(be, at)
		ss.bout = sink{c: be.RW}
		if ss.bw == nil {
			ss.bw = writerPool.Get().(*bufio.Writer)
		}
		ss.bw.Reset(&ss.bout)
		ss.pendingBody = 0
		if q := ss.replayLocked(be); q != nil {
			// The client's settings first; an error means it cannot have them here.
			ss.e.Outstanding++
			ss.pushSwallowedLocked(&engine.Undo{Fatal: true})
			ss.bw.Write(q)
		}
		// Parses taken without a backend go first; the client gets its answers.
		ss.sendOwedLocked()
		if ss.srv.options().Mode == ModeSession {
			// The backend stays for the whole session: read it all the time, so that
			// notices and notifications reach an idle client.
			ss.startReaderLocked(be)
		}
	}
	if ss.e.Sent(t) {
		ss.obs.Query()
	}
	switch t {
	case wire.MsgFlush, wire.MsgCopyData, wire.MsgCopyDone, wire.MsgCopyFail:
		// Nothing of these holds be: a server goroutine may see its last answer
		// while they are being written. writing keeps it from releasing be to
		// another client until they are (flushed clears it).
		ss.writing = true
	default:
		// be is held until this message is answered.
		ss.doneWritingLocked()
	}
	ss.mu.Unlock()
	return be, nil
}

// attachedLocked makes be the client's server connection, got at at, with
// its per-connection state fresh. ss.mu is held.
func (ss *session) attachedLocked(be *pool.Backend, at time.Time) {
	ss.be = be
	ss.attachedAt = stampOf(at)
	ss.e.Attached(stmtsOf(be))
	ss.swallowing.Store(0)
	ss.doomed = false
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
// answers due, the client goroutine stops reading the client until they are
// down to resumePending. Each pending answer is a few dozen bytes.
const (
	maxPending    = 8192
	resumePending = maxPending / 2
)

// awaitAnswersLocked sends what is buffered for be, makes sure a server
// goroutine reads its answers and waits until few enough are due (or be is
// gone, or the client is being ended: errKilled). ss.mu is held; it is released
// while waiting.
func (ss *session) awaitAnswersLocked(be *pool.Backend) error {
	ss.mu.Unlock()
	err := ss.bw.Flush()
	if err == nil {
		err = ss.bout.err
	}
	ss.mu.Lock()
	if err != nil {
		ss.mu.Unlock()
		ss.doom(be)
		ss.mu.Lock()
		return nil // the reader sees the broken backend
	}
	if ss.be == be && !ss.reader {
		ss.startReaderLocked(be)
	}
	ss.backpressured = true
	for ss.be == be && ss.e.Q.Len() >= resumePending && ss.kill == killNone {
		ss.cond.Wait()
	}
	ss.backpressured = false
	if ss.kill != killNone {
		return errKilled
	}
	return nil
}

// answersDrainedLocked wakes a client goroutine held back by
// awaitAnswersLocked once few enough answers are due. ss.mu is held.
func (ss *session) answersDrainedLocked() {
	if ss.goSide != nil && ss.backpressured && ss.e.Q.Len() < resumePending { // nil: on the loop
		ss.cond.Broadcast()
	}
}

// doneWritingLocked says the client goroutine writes nothing more to be that does
// not hold it, and wakes a server goroutine waiting to release be. ss.mu is held.
func (ss *session) doneWritingLocked() {
	if ss.writing {
		ss.writing = false
		ss.cond.Broadcast()
	}
}

// acquire gets a backend for the client; at is when it got it, when known.
func (ss *session) acquire(key uint64) (be *pool.Backend, at time.Time, err error) {
	// PAUSE of the admin console: wait for RESUME as for a full pool.
	paused := ss.srv.pauseGate()
	if paused == nil {
		be, err := ss.pool.TryAcquirePrefer(key)
		if be != nil || err != nil {
			if be != nil {
				ss.obs.Waited(0)
			}
			return be, time.Time{}, err
		}
	}
	start := time.Now()
	ss.mu.Lock()
	ss.waiting = true
	ss.waitSince = stampOf(start)
	ss.mu.Unlock()
	timeout := ss.srv.options().QueryWaitTimeout
	if paused != nil {
		// Paused (console.go): the same query-wait-timeout covers this wait and
		// the pool's.
		t := time.NewTimer(timeout)
		select {
		case <-paused:
		case <-t.C:
			err = context.DeadlineExceeded
		case <-ss.srv.drainCtx.Done():
			err = errDraining
		case <-ss.killChan():
			err = errKilled
		}
		t.Stop()
		if timeout -= time.Since(start); timeout <= 0 {
			err = context.DeadlineExceeded
		}
	}
	if err == nil {
		// The pool's own timer ends the wait: a wait allocates nothing.
		be, err = ss.pool.AcquirePrefer(key, timeout, ss.srv.drainCtx.Done(), ss.killChan())
	}
	ss.mu.Lock()
	ss.waiting = false
	ss.mu.Unlock()
	if be != nil {
		at = time.Now()
		ss.obs.Waited(at.Sub(start))
	}
	switch {
	case err == nil:
	case ss.srv.drainCtx.Err() != nil:
		err = errDraining
	case ss.dying.Load():
		err = errKilled
	}
	return be, at, err
}

// serverLoop is the server goroutine: it forwards the attached backend's messages to
// the client until the batch in flight is answered, and releases the backend at a
// transaction boundary.
func (ss *session) serverLoop(be *pool.Backend) {
	defer ss.readerWG.Done()
	_ = be.Conn.SetReadDeadline(time.Time{}) // set by syncRead
	r := be.R
	if n := ss.pendingBody; n > 0 {
		ss.pendingBody = 0
		var err error
		if ss.pendingSkip {
			err = wire.Skip(r, n)
		} else if _, err = wire.ForwardRest(ss.w, r, n); err != nil {
			ss.streamBroken.Store(true)
		}
		if err != nil {
			ss.serverFailed(be, err, true)
			return
		}
		if !complete(r) {
			ss.w.Flush() // the message is whole: not held back until the next one
		}
	}
	for {
		h, err := wire.PeekHeader(r, wire.MaxMessageLength)
		if err != nil {
			ss.serverFailed(be, err, true)
			return
		}
		if h.Type == wire.MsgReadyForQuery {
			status, err := ss.forwardReady(r, h)
			if err != nil {
				ss.serverFailed(be, err, true)
				return
			}
			if !complete(r) {
				ss.w.Flush()
			}
			if ss.settle(be, ss.ready(be, status, true), true) != keepReading {
				return
			}
			continue
		}
		if rest, skip, err := ss.relay(r, h); err != nil {
			if rest > 0 && !skip {
				// Part of a message may have reached the client: anything more would be
				// read as the rest of it. Like PostgreSQL, just close.
				ss.streamBroken.Store(true)
			}
			ss.serverFailed(be, err, true)
			return
		}
		if !complete(r) {
			ss.w.Flush()
		}
	}
}

// readyAction is what the reader of a backend does after a ReadyForQuery.
type readyAction int

const (
	keepReading readyAction = iota // more answers are due
	stopReading                    // the batch is answered; the backend stays attached
	released                       // the backend went back to its pool
	probeNow                       // ask the backend about session state, then decide again
)

// ready accounts for a ReadyForQuery and releases the backend when the client is at
// a transaction boundary. async says the caller is the server goroutine, which
// flushes the client writer before it gives the writer back.
func (ss *session) ready(be *pool.Backend, status byte, async bool) readyAction {
	ss.mu.Lock()
	if ss.e.ReadyForQuery(status) {
		ss.swallowing.Add(-1)
	}
	ss.answersDrainedLocked()
	return ss.decideLocked(be, async)
}

// decideLocked decides, at a ReadyForQuery, whether the reader keeps reading,
// stops (the backend stays attached), asks the backend about session state first
// (probeNow: the caller runs probe and decides again) or releases it. ss.mu is
// held; it is released.
func (ss *session) decideLocked(be *pool.Backend, async bool) readyAction {
	for {
		if ss.doomed {
			// Closed under us: the next read fails and destroys it.
			ss.mu.Unlock()
			return keepReading
		}
		// What to do is the engine's decision; waiting until it can be carried
		// out (a flush, a write in progress, a cancel on its way) is ours.
		d := engine.Decide(ss.boundaryLocked())
		switch d {
		case engine.KeepReading:
			ss.mu.Unlock()
			return keepReading
		case engine.Probe:
			if ss.w.Buffered() > 0 {
				ss.mu.Unlock()
				ss.w.Flush()
				ss.mu.Lock()
				continue
			}
			if ss.writing {
				// The probe's Query must not land inside a COPY message the client
				// goroutine is still writing (see attach).
				ss.cond.Wait()
				continue
			}
			ss.probing = true // the client goroutine waits in attach until probe is done
			ss.mu.Unlock()
			return probeNow
		case engine.Stay, engine.StayListening:
			if ss.e.Tx != wire.TxIdle {
				ss.armIdleLocked()
			}
			if async {
				if d == engine.StayListening {
					ss.mu.Unlock()
					return keepReading
				}
				if ss.w.Buffered() > 0 {
					ss.mu.Unlock()
					ss.w.Flush()
					ss.mu.Lock()
					continue
				}
				ss.reader = false
			}
			ss.mu.Unlock()
			return stopReading
		}
		// engine.Release.
		if ss.cancels > 0 {
			// A CancelRequest for this backend is on its way: keep the backend until it
			// has been delivered, so that it cannot hit another client's query.
			ss.cond.Wait()
			continue
		}
		if async && ss.w.Buffered() > 0 {
			ss.mu.Unlock()
			ss.w.Flush()
			ss.mu.Lock()
			continue
		}
		if ss.writing {
			// The client goroutine is still writing a Flush or COPY message (one the
			// backend ignores after an error ended its COPY): it must not land on
			// another client's session.
			ss.cond.Wait()
			continue
		}
		break
	}
	ss.be = nil
	ss.e.Detached()
	ss.swallowing.Store(0)
	if async {
		ss.reader = false
	}
	ss.answersDrainedLocked()
	ss.obs.TransactionDone(ss.attachedAt.Since())
	draining, gone := ss.draining, ss.gone
	ss.mu.Unlock()
	be.Pool().Release(be)
	if draining && !gone {
		ss.terminate(killShutdown)
	}
	return released
}

// boundaryLocked is what the engine's transaction-boundary decision needs to
// know of the client now. ss.mu is held.
func (ss *session) boundaryLocked() engine.Boundary {
	return ss.e.Boundary(ss.srv.options().Mode == ModeSession, ss.gone)
}

// serverFailed handles a backend that broke while attached: it is destroyed, and a
// client whose transaction or session was on it is ended.
//
// async says the caller is the server goroutine, which stops reading.
func (ss *session) serverFailed(be *pool.Backend, err error, async bool) {
	if !ss.streamBroken.Load() {
		ss.w.Flush()
	}
	ss.mu.Lock()
	lost := ss.e.Outstanding > 0 || ss.e.Partial || ss.e.Tx != wire.TxIdle || ss.srv.options().Mode == ModeSession
	gone := ss.gone
	server := ss.e.Server
	ss.e.Detached()
	ss.swallowing.Store(0)
	if ss.be == be {
		ss.be = nil
	} else {
		ss.e.Server = server // another backend's
	}
	ss.answersDrainedLocked()
	if async {
		ss.reader = false // the client writer is the client goroutine's again
	}
	if lost && !gone && ss.kill == killNone {
		// Under the lock that attach takes: the client's next statement must not run
		// on another backend outside the transaction it lost.
		ss.kill = killServerLost
	}
	ss.mu.Unlock()
	be.Pool().Destroy(be)
	if !gone {
		ss.srv.log.Warn("server connection lost", "client", ss.addr, "user", ss.user, "database", ss.db, "server_pid", be.PID, "error", err)
		if lost {
			ss.terminate(killServerLost)
		}
	}
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
		// Decided under the same lock that attach takes: a message the client sends
		// from now on is refused, so the client cannot be ended halfway through it.
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
		if ss.goSide != nil {
			ss.cond.Broadcast()
		}
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

// killChan returns the channel closed when the proxy ends the client
// (terminate). It is made on first use: most clients never wait for
// anything it could cut short.
func (ss *session) killChan() <-chan struct{} {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.killChanLocked()
}

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
