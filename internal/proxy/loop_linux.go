//go:build linux

package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/driver"
	"github.com/pgsidecar/pgsidecar/internal/engine"
	"github.com/pgsidecar/pgsidecar/internal/netio"
	"github.com/pgsidecar/pgsidecar/internal/pool"
	"github.com/pgsidecar/pgsidecar/internal/wire"
	"golang.org/x/sys/unix"
)

// The event loop (docs/design.md section 16): after login, every client
// leaves its goroutine and is served by one epoll loop, with the server
// connection it holds (plain, or TLS through the backend's codec). The protocol decisions are
// the engine's (engine.Session) and the session's shared helpers'; what is
// here is the I/O: framing the bytes each readiness event brings, waiting for
// a server connection without a goroutine (pool.AcquireAsync), backpressure by
// pausing reads, and the end of a client, all without blocking the loop.
//
// Everything a loopSess does runs on the loop's goroutine. It holds ss.mu
// while it changes what other goroutines read (the console, the leak watcher,
// a cancel request), never across a system call. Other goroutines reach it
// only through the loop: terminate and the outcome of a wait are posted.
//
// Files: loop_linux.go the driver, a client's state, its end;
// loop_client_linux.go what the client sends; loop_wait_linux.go waiting for
// a server connection; loop_server_linux.go what the server connection sends.

// loopBriefWait is how long the loop, finding no event, waits for one
// holding its P (driver.Options.BriefWait): under load the next event comes
// within it, and the loop's thread is not parked and woken by the scheduler
// for every one of them.
const loopBriefWait = 50 * time.Microsecond

// loopDriver is the loop and what its clients share.
type loopDriver struct {
	srv    *Server
	l      *driver.Loop
	cancel context.CancelFunc
	done   chan struct{}
	// toC and toS are the output of the callback running now, for the
	// client and for its server connection, written when it returns: one
	// write per connection per turn.
	toC, toS []byte
	// waiting are the loop's clients waiting for a server connection, per
	// pool, oldest first: a client that releases one hands it to the first of
	// them in the same step (handOver).
	waiting map[*pool.Pool]*loopQueue
	// released are server connections released during the callback running
	// now, handed over or given back to their pool when it returns.
	released []*pool.Backend
	// freeWaits are loopWaits to lend to the next clients that wait.
	freeWaits []*loopWait
}

// loopQueue is a FIFO of waiting loop clients.
type loopQueue struct{ head, tail *loopSess }

// loopBackend is what the loop keeps with a server connection (Backend.Loop):
// its registration, which stays on the loop while the connection goes from
// one loop client to the next and while it idles in its pool (parked: reads
// paused, so that a byte the server sends meanwhile stays in the socket for
// the pool's liveness check). Whoever closes the backend goes through the
// loop (Backend.OnClose), which takes the descriptor off before it is closed:
// a descriptor number reused by a new socket never meets a stale
// registration.
type loopBackend struct {
	c       driver.Conn
	adopted bool
	d       *loopDriver
	be      *pool.Backend
}

// loopBackendOf returns be's loop state.
func (d *loopDriver) loopBackendOf(be *pool.Backend) *loopBackend {
	lb, _ := be.Loop.(*loopBackend)
	if lb == nil {
		lb = &loopBackend{d: d, be: be}
		be.Loop = lb
		be.OnClose = lb.closing
	}
	return lb
}

// closing is the backend's OnClose, on any goroutine: the loop takes the
// descriptor off, then the backend is closed.
func (lb *loopBackend) closing(be *pool.Backend) {
	if lb.d.l.Post(lb.closeOnLoop) != nil {
		_ = be.CloseNow() // the loop has stopped: nothing is registered any more
	}
}

// closeOnLoop takes the descriptor off the loop and closes the backend.
func (lb *loopBackend) closeOnLoop() {
	if lb.adopted {
		lb.c.Detach()
		lb.adopted = false
	}
	_ = lb.be.CloseNow()
}

// park keeps the registration of a server connection going back to its
// pool, with reads paused.
func (lb *loopBackend) park() {
	lb.c.PauseRead()
	lb.c.SetHandler(lb)
}

// Opened, Data and Closed make a parked loopBackend the Handler of its
// registration. Data never comes (reads are paused); Closed does when the
// loop stops.
func (lb *loopBackend) Opened(*driver.Conn)       {}
func (lb *loopBackend) Data(*driver.Conn, []byte) {}
func (lb *loopBackend) Closed(*driver.Conn, error) {
	lb.adopted = false
}

// settle hands the server connections released by the callback that ran
// to the loop's clients waiting for one, in the same step, or gives them
// back to their pools. No session lock is held.
func (d *loopDriver) settle() {
	for len(d.released) > 0 {
		be := d.released[0]
		copy(d.released, d.released[1:])
		d.released[len(d.released)-1] = nil
		d.released = d.released[:len(d.released)-1]
		d.place(be)
	}
}

// place gives be to the first waiting loop client of its pool that the pool
// lets have it, or back to the pool.
func (d *loopDriver) place(be *pool.Backend) {
	p := be.Pool()
	lb := d.loopBackendOf(be)
	if q := d.waiting[p]; q != nil && !p.OverBudget() { // over the fleet budget: Release closes it
		for next := q.head; next != nil; next = q.head {
			d.dequeue(next)
			if p.HandOver(&next.wait.w, be) {
				d.dropWait(next)
				next.handed(be)
				return
			}
			// Its outcome is on its way (a timeout, a shutdown): gotBackend
			// carries it out.
		}
	}
	if lb.adopted {
		lb.park() // the next loop client to take it makes no epoll_ctl
	}
	p.Release(be)
}

func newLoopDriver(srv *Server) (*loopDriver, error) {
	l, err := driver.NewLoop(driver.Options{BriefWait: loopBriefWait})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &loopDriver{srv: srv, l: l, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(d.done)
		if err := l.Run(ctx); err != nil {
			srv.log.Error("event loop stopped", "error", err)
		}
	}()
	return d, nil
}

// stop ends the loop; its clients are closed.
func (d *loopDriver) stop() {
	d.cancel()
	<-d.done
	_ = d.l.Close()
}

// Why a loop client does not read its socket now (loopSess.paused).
const (
	pauseWait     = 1 << iota // waits for a server connection
	pauseAnswers              // too many answers due (maxPending)
	pauseServer               // the server connection does not take what is sent
	pauseProbe                // the server connection is being probed
	pauseMem                  // a large message waits for room in the message budget
	pauseOut                  // the client does not read what it is sent
	pauseClassify             // a large statement is being classified off the loop
)

// classifyOffLoop is the size from which a statement (a Query, an unnamed
// Parse) is classified on a goroutine of its own: scanning tens of megabytes
// of SQL made of short tokens takes the best part of a second, which would
// stall every client of the loop.
const classifyOffLoop = 1 << 20

// maxCarry bounds the bytes of a client message kept while the rest arrives
// without counting against the message budget.
const maxCarry = 64 << 10

// outHighWater is how much output a connection may have pending before its
// source is paused.
const outHighWater = 1 << 20

// loopSess is one client on the loop.
type loopSess struct {
	ss *session
	d  *loopDriver
	c  *driver.Conn // the client
	sc *driver.Conn // the attached server connection's registration (loopBackend)
	sh serverSide   // sc's handler

	in    []byte // client bytes not handled yet, after head
	inMem int64  // of in's capacity, what the message budget granted
	// head is a client message larger than bufSize, read into a buffer of
	// its own with its room in the message budget (head.n); hfill bytes of
	// it have arrived. It comes before in. Sent on, it goes to the server
	// connection's pending output by reference (toServer) and is freed once
	// written.
	head    *bigMsg
	hfill   int
	headEff *engine.QueryEffect // head's statement, classified off the loop
	sin     []byte              // the start of a server message, kept until it is whole
	srest   int                 // bytes of a server message still to pass on (sskip: to drop)
	crest   int                 // bytes of a client CopyData message still to pass on (cskip: to drop)
	probe   *loopProbe          // while probing

	cleanTimer driver.Timer

	// The flags, together: an idle client is mostly this struct.
	classifying bool // a goroutine reads head (classify)
	sskip       bool
	cskip       bool
	probing     bool // the server connection answers the probe
	release     bool // Release decided, waiting for a cancel request to be delivered
	// decideLater: a ReadyForQuery came while the client was in the middle of
	// a message to the server; the boundary is decided when it is whole.
	decideLater bool
	clientGone  bool  // the client's connection is closed
	ended       bool  // end ran: the client is told and its connection closing
	finished    bool  // the session is over (finish ran)
	resuming    bool  // the head of in is a message that waited for a server connection
	paused      int32 // pause* bits

	// wait, while the client waits for a server connection or for RESUME,
	// is lent by the loop (waitFor, dropWait).
	wait *loopWait
}

// loopProbe is a probe of session state in flight (engine.StateProbe) and
// its answer so far.
type loopProbe struct {
	q   engine.StateProbe
	row [][]byte
	err error
}

// serverSide is the Handler of a loop client's server connection.
type serverSide struct{ ls *loopSess }

// toLoop hands a logged-in client to the loop. It reports false when it
// cannot: no loop, a client being ended, or a connection without a
// descriptor.
func (ss *session) toLoop() bool {
	d := ss.srv.loop
	if d == nil || ss.dying.Load() {
		return false
	}
	var pending []byte
	if n := ss.r.Buffered(); n > 0 {
		p, _ := ss.r.Peek(n)
		pending = append([]byte(nil), p...)
	}
	var codec driver.Codec
	var fd int
	var err error
	if tr := ss.tlsTr; tr != nil {
		// TLS: the loop reads ciphertext and decodes it through the
		// session's tls.Conn, whose transport the socket's duplicate leaves
		// for good (netio.NewDetachedConn): only the codec reaches it now.
		tc, _ := ss.conn.(*tls.Conn)
		var cd *netio.TLSCodec
		if tc == nil {
			return false
		}
		if cd, err = netio.NewTLSCodec(tc); err != nil {
			return false
		}
		sock := tr.NetConn()
		if fd, err = driver.FD(sock); err != nil {
			return false
		}
		if err = tr.EnterMemoryPhase(netio.NewDetachedConn(sock.LocalAddr(), sock.RemoteAddr())); err != nil {
			_ = unix.Close(fd)
			return false
		}
		codec = cd
	} else if fd, err = driver.FD(ss.conn); err != nil {
		return false
	}
	ls := &loopSess{ss: ss, d: d, in: pending}
	ls.sh.ls = ls
	ss.mu.Lock()
	ss.ls = ls
	// The login's hold on the (closed) connection goes: an idle loop client
	// is its loopSess and what the engine keeps.
	ss.conn = nil // serveClient drops the login's reader (goSide)
	ss.mu.Unlock()
	ss.srv.onLoop.Add(1)
	if err := d.l.RegisterCodec(fd, ls, codec); err != nil {
		// The loop has stopped (shutdown): the descriptor is closed.
		ss.mu.Lock()
		ss.ls = nil
		ss.mu.Unlock()
		ls.finishCounts()
		return true
	}
	return true
}

// post runs fn on the loop; false when the loop has stopped.
func (ls *loopSess) post(fn func()) bool { return ls.d.l.Post(fn) == nil }

// Opened: the client is on the loop.
func (ls *loopSess) Opened(c *driver.Conn) {
	ls.c = c
	if len(ls.in) > 0 {
		ls.run()
	}
}

// Closed: the client's connection is closed (it left, or the proxy closed it).
func (ls *loopSess) Closed(c *driver.Conn, err error) {
	ls.clientGone = true
	if !ls.ended {
		if err == nil || errors.Is(err, io.EOF) || errors.Is(err, driver.ErrLoopClosed) {
			err = io.EOF
		}
		ls.ss.mu.Lock()
		ls.end(err)
		ls.ss.mu.Unlock()
	}
	ls.flush()
	ls.maybeFinish()
}

// Drained: the client took all the output; a server connection paused for it,
// and the client paused for not reading, go on.
func (ls *loopSess) Drained(c *driver.Conn) {
	if ls.ss.be != nil && ls.sc.Paused() {
		ls.sc.ResumeRead()
	}
	ls.resume(pauseOut)
}

// flush writes the output of the callback that ran.
func (ls *loopSess) flush() {
	d := ls.d
	if len(d.toS) > 0 {
		if ls.ss.be != nil && !ls.sc.IsClosed() {
			_ = ls.sc.Write(d.toS)
			if ls.sc.Buffered() > outHighWater {
				ls.pause(pauseServer)
			}
		}
		d.toS = d.toS[:0]
	}
	if len(d.toC) > 0 {
		if ls.c != nil && !ls.c.IsClosed() && !ls.ss.streamBroken.Load() {
			_ = ls.c.Write(d.toC)
			if ls.c.Buffered() > outHighWater {
				// Neither its server connection's answers nor the proxy's own
				// (a Sync answered without one) pile up for a client that
				// does not read.
				if ls.ss.be != nil && !ls.sc.IsClosed() {
					ls.sc.PauseRead()
				}
				ls.pause(pauseOut)
			}
		}
		d.toC = d.toC[:0]
	}
	if ls.ended && ls.c != nil && !ls.clientGone {
		// Ended: the client gets what is written (its FATAL), briefly.
		ls.c.CloseAfterFlush(killWriteGrace)
	}
	if len(d.released) > 0 {
		d.settle()
	}
	if cap(d.toC) > 1<<20 {
		d.toC = nil
	}
	if cap(d.toS) > 1<<20 {
		d.toS = nil
	}
}

// pause stops reading the client for reason.
func (ls *loopSess) pause(reason int32) {
	ls.paused |= reason
	if ls.c != nil {
		ls.c.PauseRead()
	}
}

// resume clears reason; with no reason left the client's input, held and
// unread, is handled again.
func (ls *loopSess) resume(reason int32) {
	if ls.paused&reason == 0 {
		return
	}
	ls.paused &^= reason
	if ls.paused != 0 || ls.ended {
		return
	}
	if len(ls.in) > 0 || ls.head != nil {
		ls.run()
	}
	if ls.paused == 0 && ls.c != nil && !ls.ended {
		ls.c.ResumeRead()
	}
}

// cancelDone is posted when a cancel request for the client was delivered.
func (ls *loopSess) cancelDone() {
	ss := ls.ss
	ss.mu.Lock()
	if ls.release && ss.cancels == 0 && ss.be != nil {
		// Decided again: the client may have sent more since.
		ls.release = false
		ls.decide()
	}
	ss.mu.Unlock()
	ls.flush()
	ls.maybeFinish()
}

// forceClose is posted by Shutdown's last resort: the client and its server
// connection are closed now.
func (ls *loopSess) forceClose() {
	ss := ls.ss
	ss.mu.Lock()
	if ss.kill == killNone {
		ss.kill = killShutdown
	}
	if be := ss.be; be != nil {
		ls.serverFailed(be, errors.New("shutdown"))
	}
	ls.kill(killShutdown)
	ss.mu.Unlock()
	if ls.c != nil {
		ls.c.Close()
	}
	ls.flush()
	ls.maybeFinish()
}

// killed is posted by terminate: the proxy ends the client.
func (ls *loopSess) killed() {
	ls.ss.mu.Lock()
	ls.kill(ls.ss.kill)
	ls.ss.mu.Unlock()
	ls.flush()
	ls.maybeFinish()
}

// kill ends the client for reason (session.terminate, on the loop). ss.mu is
// held.
func (ls *loopSess) kill(reason killReason) {
	ss := ls.ss
	if ss.kill == killNone {
		ss.kill = reason
	}
	ss.markDyingLocked()
	if ls.ended {
		return
	}
	ls.cancelWait()
	ls.end(errKilled)
}

// end ends the client: its server connection is cleaned up and released
// (or closed, in the middle of an answer), the client told why if the proxy
// ends it, and its connection closed once that is written (by flush). ss.mu
// is held.
func (ls *loopSess) end(cause error) {
	if ls.ended {
		return
	}
	ls.ended = true
	ss := ls.ss
	reason := ss.kill
	ls.cancelWait()
	ss.gone = true
	ss.e.ReleaseAll()
	ls.dropIn()
	ls.releaseHead()
	if ss.idleTimer != nil {
		ss.idleTimer.Stop()
	}
	if be := ss.be; be != nil {
		ls.leave(be)
	}
	code, msg := ss.endMessage(reason, cause)
	if code != "" && ls.c != nil && !ls.clientGone && !ss.streamBroken.Load() {
		ls.d.toC = wire.AppendError(ls.d.toC, wire.SeverityFatal, code, msg, "")
	}
	// flush writes it and closes the client.
}

// leave returns the attached server connection to a known state (see
// session.leave): rolled back and released, or closed in the middle of an
// answer.
func (ls *loopSess) leave(be *pool.Backend) {
	ss := ls.ss
	if ls.probing || ls.release {
		// Its state is being read, or it is about to be released: closing is
		// simplest and safe.
		ls.serverFailed(be, errors.New("client left"))
		return
	}
	clean := ss.e.Between()
	ss.countRollback()
	if !clean {
		ls.serverFailed(be, errors.New("client left in the middle of an answer"))
		return
	}
	q := ss.cleanupQueries(be, nil)
	ss.swallow.Store(true)
	ls.d.toS = append(ls.d.toS, q...)
	ls.cleanTimer.Init(ls.cleanupExpired)
	ls.d.l.ArmAfter(&ls.cleanTimer, cleanupTimeout)
}

// cleanupExpired: the server connection did not finish its cleanup in time.
func (ls *loopSess) cleanupExpired(time.Time) {
	ss := ls.ss
	ss.mu.Lock()
	if be := ss.be; be != nil {
		ss.srv.log.Warn("server connection did not finish cleanup in time, closing it", "client", ss.addr, "server_pid", be.PID)
		ls.serverFailed(be, errors.New("cleanup timed out"))
	}
	ss.mu.Unlock()
	ls.flush()
	ls.maybeFinish()
}

// maybeFinish ends the session once the client's connection is closed and
// its server connection settled.
func (ls *loopSess) maybeFinish() {
	ss := ls.ss
	if ls.finished || !ls.ended || !ls.clientGone || ss.be != nil || ss.waiting {
		return
	}
	ls.finished = true
	ls.d.l.Disarm(&ls.cleanTimer)
	ls.dropIn()
	ss.mu.Lock()
	ss.ls = nil
	ss.mu.Unlock()
	ls.finishCounts()
}

// finishCounts does what serveClient does when it ends a client itself.
func (ls *loopSess) finishCounts() {
	ss := ls.ss
	ss.srv.onLoop.Add(-1)
	ss.srv.unregister(ss)
	ss.srv.clients.Add(-1)
	ss.srv.sessWG.Done()
}
