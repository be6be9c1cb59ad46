//go:build linux

package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/driver"
	"github.com/pgsidecar/pgsidecar/internal/engine"
	"github.com/pgsidecar/pgsidecar/internal/pool"
	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// The event-loop driver (docs/design.md section 16): after login, a client in
// transaction mode on a plain socket leaves its goroutine and is served by one
// epoll loop, with the server connection it holds. The protocol decisions are
// the engine's (engine.Session) and the session's shared helpers'; what is
// here is the I/O: framing the bytes each readiness event brings, waiting for
// a server connection without a goroutine (pool.AcquireAsync), backpressure by
// pausing reads, and the end of a client, all without blocking the loop.
//
// Everything a loopSess does runs on the loop's goroutine. It holds ss.mu
// while it changes what other goroutines read (the console, the leak watcher,
// a cancel request), never across a system call. Other goroutines reach it
// only through the loop: terminate and the outcome of a wait are posted.

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
}

// loopQueue is a FIFO of waiting loop clients.
type loopQueue struct{ head, tail *loopSess }

// loopBackend is what the loop keeps with a server connection (Backend.Loop):
// its registration, which stays on the loop while the connection goes from
// one loop client to the next, and is taken off when it goes back to its pool.
type loopBackend struct {
	c       driver.Conn
	adopted bool
}

// loopBackendOf returns be's loop state.
func loopBackendOf(be *pool.Backend) *loopBackend {
	lb, _ := be.Loop.(*loopBackend)
	if lb == nil {
		lb = new(loopBackend)
		be.Loop = lb
	}
	return lb
}

// enqueue adds ls to the waiters of p.
func (d *loopDriver) enqueue(p *pool.Pool, ls *loopSess) {
	q := d.waiting[p]
	if q == nil {
		if d.waiting == nil {
			d.waiting = make(map[*pool.Pool]*loopQueue)
		}
		q = new(loopQueue)
		d.waiting[p] = q
	}
	ls.qprev, ls.qnext, ls.queued = q.tail, nil, q
	if q.tail != nil {
		q.tail.qnext = ls
	} else {
		q.head = ls
	}
	q.tail = ls
}

// dequeue takes ls off its queue, if it is on one.
func (d *loopDriver) dequeue(ls *loopSess) {
	q := ls.queued
	if q == nil {
		return
	}
	if ls.qprev != nil {
		ls.qprev.qnext = ls.qnext
	} else {
		q.head = ls.qnext
	}
	if ls.qnext != nil {
		ls.qnext.qprev = ls.qprev
	} else {
		q.tail = ls.qprev
	}
	ls.qprev, ls.qnext, ls.queued = nil, nil, nil
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
	lb := loopBackendOf(be)
	if q := d.waiting[p]; q != nil {
		for next := q.head; next != nil; next = q.head {
			d.dequeue(next)
			if p.HandOver(&next.w, be) {
				next.handed(be)
				return
			}
			// Its outcome is on its way (a timeout, a shutdown): gotBackend
			// carries it out.
		}
	}
	if lb.adopted {
		lb.c.Detach()
		lb.adopted = false
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
	pauseWait    = 1 << iota // waits for a server connection
	pauseAnswers             // too many answers due (maxPending)
	pauseServer              // the server connection does not take what is sent
	pauseProbe               // the server connection is being probed
	pauseMem                 // a large message waits for room in the message budget
)

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

	in      []byte // client bytes not handled yet
	inMem   int64  // of in's capacity, what the message budget granted
	sin     []byte // the start of a server message, kept until it is whole
	srest   int    // bytes of a server message still to pass on (sskip: to drop)
	sskip   bool
	crest   int // bytes of a client CopyData message still to pass on (cskip: to drop)
	cskip   bool
	paused  int  // pause* bits
	probing bool // the server connection answers the probe
	probeQ  engine.StateProbe
	probeRw [][]byte
	probeEr error
	release bool // Release decided, waiting for a cancel request to be delivered
	// decideLater: a ReadyForQuery came while the client was in the middle of
	// a message to the server; the boundary is decided when it is whole.
	decideLater bool
	clientGone,
	ended bool // end ran: the client is told and its connection closing
	finished   bool // the session is over (finish ran)
	cleanTimer driver.Timer
	resuming   bool // the head of in is a message that waited for a server connection

	qprev, qnext *loopSess  // in queued, the loop's waiters for a pool
	queued       *loopQueue // nil when not waiting

	wmu     sync.Mutex // the outcome of a wait, from the pool's goroutine
	wb      *pool.Backend
	werr    error
	w       pool.Waiter
	waitFn  func(*pool.Backend, error)
	gotFn   func()
	killFn  func()
	sideFns bool
}

// serverSide is the Handler of a loop client's server connection.
type serverSide struct{ ls *loopSess }

// toLoop hands a logged-in client to the loop driver. It reports false when
// the client stays with its goroutine: no loop, not transaction mode, or a
// connection without a descriptor.
func (ss *session) toLoop() bool {
	d := ss.srv.loop
	if d == nil || !ss.pooled || ss.dying.Load() || ss.pool.TLS() {
		// TLS server connections stay with goroutines until the loop drives
		// crypto/tls (docs/design.md section 16).
		return false
	}
	var pending []byte
	if n := ss.r.Buffered(); n > 0 {
		p, _ := ss.r.Peek(n)
		pending = append([]byte(nil), p...)
	}
	fd, err := driver.FD(ss.conn)
	if err != nil {
		return false
	}
	ls := &loopSess{ss: ss, d: d, in: pending}
	ls.sh.ls = ls
	ls.waitFn = ls.waited
	ls.gotFn = ls.gotBackend
	ls.killFn = ls.killed
	ls.cleanTimer.Init(ls.cleanupExpired)
	ss.mu.Lock()
	ss.ls = ls
	// The goroutine driver's hold on the (closed) connection goes: an idle
	// loop client is its loopSess and what the engine keeps.
	ss.conn, ss.cio, ss.raw, ss.cout.c = nil, nil, nil, nil
	ss.waitFn, ss.flushFn = nil, nil
	ss.mu.Unlock()
	ss.srv.onLoop.Add(1)
	if err := d.l.Register(fd, ls); err != nil {
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

// Data: the client sent b.
func (ls *loopSess) Data(c *driver.Conn, b []byte) {
	if ls.ended {
		return
	}
	if len(ls.in) > 0 || ls.paused != 0 {
		if !ls.grow(len(b)) {
			return
		}
		ls.in = append(ls.in, b...)
		ls.run()
		return
	}
	ss := ls.ss
	ss.mu.Lock()
	n := ls.clientBytes(b)
	ss.mu.Unlock()
	if n < len(b) && !ls.ended {
		if ls.grow(len(b) - n) {
			ls.in = append(ls.in, b[n:]...)
		}
	}
	ls.flush()
}

// run handles what in holds.
func (ls *loopSess) run() {
	ss := ls.ss
	ss.mu.Lock()
	n := ls.clientBytes(ls.in)
	ss.mu.Unlock()
	if !ls.ended {
		rest := copy(ls.in, ls.in[n:])
		ls.in = ls.in[:rest]
		if rest == 0 {
			ls.dropIn()
		}
	}
	ls.flush()
}

// grow reports whether n more bytes may wait in in. Nothing more is read
// while in holds a whole message that cannot be handled yet (the client is
// paused), and a message larger than bufSize waits only with its size
// reserved in the message budget (reserve), so in is bounded by what the
// proxy chose to buffer. No lock is held.
func (ls *loopSess) grow(n int) bool { return true }

// reserve makes sure a message of n bytes (larger than bufSize) that is not
// whole yet has its room in the message budget (--max-message-memory), as
// readBig does for the goroutine driver. It reports false when the client
// must wait for room (paused until it is granted) or was ended. ss.mu is held.
func (ls *loopSess) reserve(n int) bool {
	if int64(n) <= ls.inMem {
		return true
	}
	ss := ls.ss
	mm := &ss.srv.msgMem
	if limit := mm.stats().Limit; int64(n) > limit {
		ls.end(fmt.Errorf("%w: a message of %d bytes needs more than the %d bytes of --max-message-memory",
			errMsgTooBig, n, limit))
		return false
	}
	want := int64(n) - ls.inMem
	if mm.tryAcquire(want) {
		ls.inMem = int64(n)
		return true
	}
	ls.pause(pauseMem)
	timeout := ss.srv.options().QueryWaitTimeout
	drain, kill := ss.srv.drainCtx.Done(), ss.killCh
	go func() {
		err := mm.acquire(want, timeout, drain, kill)
		if err != nil && errors.Is(err, errMsgMemory) {
			st := mm.stats()
			err = fmt.Errorf("%w: no room for a message of %d bytes within %s (%d of %d bytes in use, %d clients waiting; --max-message-memory)",
				err, n, timeout, st.Used, st.Limit, st.Waiting)
		}
		if !ls.post(func() { ls.reserved(want, err) }) && err == nil {
			mm.release(want)
		}
	}()
	return false
}

// reserved carries out the outcome of a wait for message memory.
func (ls *loopSess) reserved(n int64, err error) {
	ss := ls.ss
	if err == nil && ls.ended {
		ss.srv.msgMem.release(n)
		return
	}
	if err != nil {
		ss.mu.Lock()
		ls.end(err)
		ss.mu.Unlock()
		ls.flush()
		ls.maybeFinish()
		return
	}
	ls.inMem += n
	ls.resume(pauseMem)
	ls.flush()
}

// dropIn lets the empty carry buffer go when it is large or counted.
func (ls *loopSess) dropIn() {
	if cap(ls.in) > 4<<10 || ls.inMem > 0 {
		ls.in = nil
	}
	if ls.inMem > 0 {
		ls.ss.srv.msgMem.release(ls.inMem)
		ls.inMem = 0
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

// Drained: the client took all the output; a server connection paused for it
// goes on.
func (ls *loopSess) Drained(c *driver.Conn) {
	if ls.ss.be != nil && ls.sc.Paused() {
		ls.sc.ResumeRead()
	}
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
			if ls.c.Buffered() > outHighWater && ls.ss.be != nil && !ls.sc.IsClosed() {
				ls.sc.PauseRead()
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
func (ls *loopSess) pause(reason int) {
	ls.paused |= reason
	if ls.c != nil {
		ls.c.PauseRead()
	}
}

// resume clears reason; with no reason left the client's input, held and
// unread, is handled again.
func (ls *loopSess) resume(reason int) {
	if ls.paused&reason == 0 {
		return
	}
	ls.paused &^= reason
	if ls.paused != 0 || ls.ended {
		return
	}
	if len(ls.in) > 0 {
		ls.run()
	}
	if ls.paused == 0 && ls.c != nil && !ls.ended {
		ls.c.ResumeRead()
	}
}

// clientBytes handles the client's messages in b, as far as they are whole
// and nothing holds them back, and returns how many bytes it used. ss.mu is
// held.
func (ls *loopSess) clientBytes(b []byte) int {
	ss := ls.ss
	used := 0
	for !ls.ended && ls.paused == 0 {
		if ls.crest > 0 {
			k := min(ls.crest, len(b)-used)
			if k == 0 {
				break
			}
			if !ls.cskip {
				ls.d.toS = append(ls.d.toS, b[used:used+k]...)
			}
			ls.crest -= k
			used += k
			if ls.crest == 0 && ls.decideLater && ss.be != nil {
				ls.decideLater = false
				ls.decide()
			}
			continue
		}
		if len(b)-used < wire.HeaderLen {
			break
		}
		h, err := wire.ParseHeader(b[used:], wire.MaxMessageLength)
		if err != nil {
			ls.end(err)
			break
		}
		opt := ss.srv.options()
		ss.e.Limits = opt.limits()
		if h.Len > opt.MaxMessageSize && h.Type != wire.MsgCopyData {
			ls.end(fmt.Errorf("%w: a message of type %q and %d bytes exceeds --max-message-size (%d bytes)",
				errMsgTooBig, h.Type, 1+h.Len, opt.MaxMessageSize))
			break
		}
		switch h.Type {
		case wire.MsgTerminate:
			ls.end(io.EOF)
			return used
		case wire.MsgSync, wire.MsgFlush, wire.MsgCopyDone:
			if h.Len != 4 {
				ls.end(fmt.Errorf("%w: type %q length %d", wire.ErrInvalidLength, h.Type, h.Len))
				return used
			}
		default:
			if !wire.ValidFrontendType(h.Type) {
				ls.end(fmt.Errorf("%w: invalid frontend message type %d", errProtocol, h.Type))
				return used
			}
		}
		n := 1 + h.Len
		if len(b)-used < n && n > bufSize && h.Type != wire.MsgCopyData && !ls.reserve(n) {
			break
		}
		if len(b)-used < n {
			if h.Type == wire.MsgCopyData && !ls.discardingToSync() && len(b)-used >= wire.HeaderLen {
				// COPY data is streamed: what is here goes now.
				if !ls.copyData(h, b[used:]) {
					break
				}
				k := len(b) - used
				ls.crest = n - k
				used += k
				continue
			}
			break
		}
		if !ls.clientMessage(h, b[used:used+n]) {
			break // held back: handled again when it can be
		}
		used += n
		if ls.inMem > 0 && n > bufSize {
			ss.srv.msgMem.release(ls.inMem) // the carry holding it goes with it (run)
			ls.inMem = 0
		}
	}
	return used
}

// discardingToSync reports whether the client's batch is being skipped.
func (ls *loopSess) discardingToSync() bool { return ls.ss.discardToSync }

// copyData starts passing on a CopyData message of which b holds the start;
// false when it is held back (no server connection yet, which never happens
// in COPY: then it is dropped).
func (ls *loopSess) copyData(h wire.Header, b []byte) bool {
	ss := ls.ss
	if ss.be == nil {
		ls.cskip = true // stray COPY data: nothing to send it to
		return true
	}
	ls.cskip = false
	ss.e.Sent(h.Type)
	ls.d.toS = append(ls.d.toS, b...)
	return true
}

// clientMessage handles one whole client message msg with header h. It
// returns false when the message is held back (it waits for a server
// connection, or for answers to drain) and must be handled again later.
// ss.mu is held.
func (ls *loopSess) clientMessage(h wire.Header, msg []byte) bool {
	ss := ls.ss
	d := ls.d
	if ss.discardToSync {
		if h.Type == wire.MsgSync {
			ss.discardToSync = false
			d.toC = append(d.toC, readyIdle...)
		}
		return true
	}
	if h.Type == wire.MsgParse && ss.track && ss.be == nil && len(msg) > wire.HeaderLen && msg[wire.HeaderLen] != 0 {
		if done := ls.deferParse(h, msg); done {
			return true
		}
	}
	var eff engine.QueryEffect
	if h.Type == wire.MsgQuery && ss.pooled {
		q := msg[wire.HeaderLen:]
		if len(q) > 0 && q[len(q)-1] == 0 {
			q = q[:len(q)-1]
		}
		eff = engine.ClassifyQuery(q)
		// LocalTag sets eff.LocalTag; with a server connection attached,
		// engine.Session.Query answers it.
		if ss.track && ss.e.LocalTag(&eff, ss.be != nil, ss.e.Tx == wire.TxFailed) && ss.be == nil {
			// DEALLOCATE of statements only the proxy's registry has.
			ss.e.Drop(&eff)
			d.toC = ss.e.PayOwed(d.toC)
			d.toC = append(d.toC, eff.LocalTag...)
			d.toC = append(d.toC, readyIdle...)
			return true
		}
		if eff.State.Pin != "" && ss.srv.options().PinPolicy == PinPolicyRefuse {
			eff.Refuse = engine.Refusal(eff.State.PinKind) // with a server connection: engine.Session.Query
		}
		if eff.Refuse != nil && ss.be == nil {
			d.toC = ss.e.PayOwed(d.toC)
			d.toC = append(d.toC, eff.Refuse...)
			d.toC = append(d.toC, readyIdle...)
			return true
		}
	}
	be, held, err := ls.attach(h.Type)
	if held {
		return false
	}
	if err != nil {
		ls.failLocally(h, err)
		return true
	}
	_ = be
	if err := ls.send(h, msg, &eff); err != nil {
		ls.end(err)
	}
	return true
}

// deferParse takes a named Parse while no server connection is attached
// (see session.deferParse): true when it was taken.
func (ls *loopSess) deferParse(h wire.Header, msg []byte) bool {
	ss := ls.ss
	body := msg[wire.HeaderLen:]
	i := indexZero(body)
	if i < 0 {
		ls.end(fmt.Errorf("%w: Parse message without a statement name", errProtocol))
		return true
	}
	name := body[:i]
	if ss.e.Owing() > 0 && ss.e.Stmts.Has(name) {
		return false // parsed again in the batch: the server reports it (42P05)
	}
	if ss.kill != killNone {
		return false
	}
	var refusal []byte
	if ss.e.TooLong(h.Len) {
		refusal = ss.e.LimitError(int64(h.Len))
	} else {
		refusal = ss.e.Owe(name, body[i+1:])
	}
	if refusal != nil {
		ls.d.toC = ss.e.PayOwed(ls.d.toC)
		ls.d.toC = append(ls.d.toC, refusal...)
		ss.discardToSync = true
	}
	return true
}

func indexZero(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return -1
}

// attach returns the server connection a message of type t goes to,
// attaching one first if needed, and accounts for the message (see
// session.attach). held says the message waits (for a server connection, or
// for answers to drain); errLocal that it needs none. ss.mu is held.
func (ls *loopSess) attach(t byte) (be *pool.Backend, held bool, err error) {
	ss := ls.ss
	if ss.kill != killNone {
		return nil, false, errKilled
	}
	be = ss.be
	if be != nil && ss.e.Q.Len() >= maxPending {
		ls.pause(pauseAnswers)
		return nil, true, nil
	}
	if !ls.resuming {
		if ss.srv.options().TransactionTimeout > 0 && (be == nil || (ss.e.Tx == wire.TxIdle && ss.e.Between())) {
			ss.txStart = time.Now() // a transaction (or a statement) begins
		}
		if be != nil && !ss.idleSince.IsZero() && ss.e.Between() && ss.e.Tx != wire.TxIdle {
			ss.obs.IdleTransactionDone(time.Since(ss.idleSince))
			ss.idleSince = time.Time{}
		}
	}
	if be == nil {
		switch t {
		case wire.MsgSync, wire.MsgFlush, wire.MsgCopyData, wire.MsgCopyDone, wire.MsgCopyFail:
			return nil, false, errLocal
		}
		if ss.draining {
			return nil, false, errDraining
		}
		if ls.resuming {
			// The outcome of the wait is in: gotBackend attached it, or failed.
			return nil, false, errors.New("pgsidecar: internal error: resumed without a server connection")
		}
		if paused := ss.srv.pauseGate(); paused != nil {
			ls.waitPaused(paused)
			return nil, true, nil
		}
		b, queued, err := ss.pool.AcquireAsync(ss.e.State.WantKey, ss.srv.options().QueryWaitTimeout, &ls.w, ls.waitFn)
		if err != nil {
			return nil, false, err
		}
		if queued {
			ss.waiting = true
			ss.waitSince = time.Now()
			ls.d.enqueue(ss.pool, ls)
			ls.pause(pauseWait)
			return nil, true, nil
		}
		ss.obs.Waited(0)
		if err := ls.attachBackend(b, time.Now()); err != nil {
			return nil, false, err
		}
		be = b
	}
	ls.resuming = false
	ls.release = false // more for this server connection: decided at its next ReadyForQuery
	if ss.e.Sent(t) {
		ss.obs.Query()
	}
	return be, false, nil
}

// waitPaused waits for RESUME of the admin console (PAUSE) off the loop,
// within query-wait-timeout, and then tries again.
func (ls *loopSess) waitPaused(paused <-chan struct{}) {
	ss := ls.ss
	ss.waiting = true
	ss.waitSince = time.Now()
	ls.pause(pauseWait)
	timeout := ss.srv.options().QueryWaitTimeout
	go func() {
		t := time.NewTimer(timeout)
		defer t.Stop()
		var err error
		select {
		case <-paused:
		case <-t.C:
			err = context.DeadlineExceeded
		case <-ss.srv.drainCtx.Done():
			err = errDraining
		case <-ss.killCh:
			err = errKilled
		}
		ls.wmu.Lock()
		ls.werr = err
		ls.wmu.Unlock()
		ls.post(func() { ls.retryAfterPause() })
	}()
}

// retryAfterPause tries the held message again after PAUSE ended.
func (ls *loopSess) retryAfterPause() {
	ls.wmu.Lock()
	err := ls.werr
	ls.werr = nil
	ls.wmu.Unlock()
	ss := ls.ss
	ss.mu.Lock()
	ss.waiting = false
	ss.mu.Unlock()
	if ls.ended {
		return
	}
	if err != nil {
		ls.failHead(err)
		return
	}
	ls.resume(pauseWait)
}

// waited is the pool's callback with the outcome of a wait (under the pool's
// lock, on any goroutine): it hands it to the loop.
func (ls *loopSess) waited(be *pool.Backend, err error) {
	ls.wmu.Lock()
	ls.wb, ls.werr = be, err
	ls.wmu.Unlock()
	if !ls.post(ls.gotFn) && be != nil {
		go be.Pool().Release(be) // the loop has stopped
	}
}

// gotBackend carries out the outcome of a wait, on the loop.
func (ls *loopSess) gotBackend() {
	ls.wmu.Lock()
	be, err := ls.wb, ls.werr
	ls.wb, ls.werr = nil, nil
	ls.wmu.Unlock()
	ss := ls.ss
	ls.d.dequeue(ls)
	ss.mu.Lock()
	ss.waiting = false
	if be != nil {
		ss.obs.Waited(time.Since(ss.waitSince))
	}
	if ls.ended {
		ss.mu.Unlock()
		if be != nil {
			be.Pool().Release(be)
		}
		ls.maybeFinish()
		return
	}
	if err == nil {
		err = ls.attachBackend(be, time.Now())
	}
	ss.mu.Unlock()
	if err != nil {
		ls.failHead(err)
		return
	}
	ls.resuming = true
	ls.resume(pauseWait)
	ls.flush()
}

// handed is a server connection handed over by another loop client
// (loopDriver.place), in the same step: the client's held batch goes to it
// now.
func (ls *loopSess) handed(be *pool.Backend) {
	ss := ls.ss
	ss.mu.Lock()
	ss.waiting = false
	ss.obs.Waited(time.Since(ss.waitSince))
	if ls.ended {
		ss.mu.Unlock()
		ls.d.released = append(ls.d.released, be)
		ls.maybeFinish()
		return
	}
	err := ls.attachBackend(be, time.Now())
	ss.mu.Unlock()
	if err != nil {
		ls.failHead(err)
		return
	}
	ls.resuming = true
	ls.resume(pauseWait)
	ls.flush()
}

// failHead fails the message at the head of in, which waited for a server
// connection in vain.
func (ls *loopSess) failHead(err error) {
	ss := ls.ss
	ss.mu.Lock()
	if h, perr := wire.ParseHeader(ls.in, wire.MaxMessageLength); perr == nil && len(ls.in) >= 1+h.Len {
		ls.failLocally(h, err)
		n := copy(ls.in, ls.in[1+h.Len:])
		ls.in = ls.in[:n]
	} else {
		ls.end(err)
	}
	ss.mu.Unlock()
	ls.resuming = false
	ls.paused &^= pauseWait
	ls.flush()
	if !ls.ended {
		ls.resume(0)
		if len(ls.in) > 0 {
			ls.run()
		}
		if ls.paused == 0 && ls.c != nil {
			ls.c.ResumeRead()
		}
	}
}

// attachBackend makes be the client's server connection: it joins the loop,
// gets the client's settings and the Parses owed. ss.mu is held.
func (ls *loopSess) attachBackend(be *pool.Backend, at time.Time) error {
	ss := ls.ss
	lb := loopBackendOf(be)
	if lb.adopted {
		lb.c.SetHandler(&ls.sh) // handed over by another loop client
	} else {
		// Out of the runtime's network poller first, once per server
		// connection: it would wake an idle thread for every answer.
		err := be.Unpoll()
		fd := -1
		if err == nil {
			fd, err = backendFD(be)
		}
		if err == nil {
			err = ls.d.l.Adopt(&lb.c, fd, &ls.sh)
		}
		if err != nil {
			be.Pool().Destroy(be)
			return fmt.Errorf("pgsidecar: server connection: %w", err)
		}
		lb.adopted = true
	}
	ls.sc = &lb.c
	ss.be = be
	ss.attachedAt = at
	ss.e.Attached(stmtsOf(be))
	ss.swallowing.Store(0)
	ss.doomed = false
	ss.swallow.Store(false)
	ss.fatalForwarded.Store(false)
	ss.streamBroken.Store(false)
	ls.srest, ls.sskip, ls.sin = 0, false, ls.sin[:0]
	if q := ss.replayLocked(be); q != nil {
		ss.e.Outstanding++
		ss.pushSwallowedLocked(&engine.Undo{Fatal: true})
		ls.d.toS = append(ls.d.toS, q...)
	}
	if ss.e.Owing() > 0 {
		ls.d.toS = append(ls.d.toS, ss.e.SendOwed()...)
	}
	if n := be.R.Buffered(); n > 0 {
		// Bytes the server sent while idle, read into the pool's buffer.
		p, _ := be.R.Peek(n)
		ls.serverBytes(p)
		_, _ = be.R.Discard(n)
	}
	return nil
}

// backendFD is the descriptor of a server connection.
func backendFD(be *pool.Backend) (int, error) {
	if fd := be.FD(); fd >= 0 {
		return fd, nil
	}
	return -1, driver.ErrNoFD
}

// failLocally answers a message that got no server connection (see
// session.failLocally). ss.mu is held.
func (ls *loopSess) failLocally(h wire.Header, err error) {
	ss := ls.ss
	d := ls.d
	if errors.Is(err, errLocal) {
		switch h.Type {
		case wire.MsgSync:
			d.toC = ss.e.PayOwed(d.toC)
			d.toC = append(d.toC, readyIdle...)
		case wire.MsgFlush:
			d.toC = ss.e.PayOwed(d.toC)
		}
		return
	}
	if errors.Is(err, errKilled) || errors.Is(err, errDraining) || errors.Is(err, pool.ErrClosed) || errors.Is(err, context.Canceled) {
		ls.end(err)
		return
	}
	code, msg := ss.acquireError(err)
	ss.logNoServer("no server connection for client", err)
	d.toC = ss.e.PayOwed(d.toC)
	d.toC = wire.AppendError(d.toC, wire.SeverityError, code, msg, "")
	switch h.Type {
	case wire.MsgQuery, wire.MsgFunctionCall, wire.MsgSync:
		d.toC = append(d.toC, readyIdle...)
	default:
		ss.discardToSync = true
	}
}

// send writes the client message msg to the server connection, rewritten by
// the engine in transaction mode. ss.mu is held.
func (ls *loopSess) send(h wire.Header, msg []byte, eff *engine.QueryEffect) error {
	ss := ls.ss
	var x engine.Send
	switch h.Type {
	case wire.MsgParse:
		return ls.sendParse(h, msg)
	case wire.MsgBind, wire.MsgDescribe:
		var err error
		if x, err = ss.e.Use(h, msg); err != nil {
			return err
		}
	case wire.MsgClose:
		x = ss.e.CloseMessage(msg)
	case wire.MsgExecute:
		x = ss.e.Execute(msg)
	case wire.MsgQuery:
		if !ss.pooled {
			ss.e.Un.Dropped()
			break
		}
		x = ss.e.Query(eff, msg)
		if x.Swallowed > 0 {
			ss.e.Outstanding += x.Swallowed
			ss.swallowing.Add(int32(x.Swallowed))
		}
	}
	ls.sendAs(msg, x)
	return nil
}

// sendAs appends what x says for msg to the server's output.
func (ls *loopSess) sendAs(msg []byte, x engine.Send) {
	d := ls.d
	d.toS = append(d.toS, x.Pre...)
	if x.From != engine.Drop {
		d.toS = append(d.toS, msg[x.From:]...)
	}
	d.toS = append(d.toS, x.Post...)
}

// sendParse sends a Parse (see session.sendParse). ss.mu is held.
func (ls *loopSess) sendParse(h wire.Header, msg []byte) error {
	ss := ls.ss
	d := ls.d
	if len(msg) <= wire.HeaderLen {
		return fmt.Errorf("%w: empty Parse message", errProtocol)
	}
	if msg[wire.HeaderLen] == 0 {
		big := len(msg) > bufSize
		m := msg
		if !big {
			ss.e.Un.Next = append(ss.e.Un.Next[:0], msg...)
			m = ss.e.Un.Next
		}
		d.toS = append(d.toS, ss.e.ParseUnnamed(m, big, ss.e.Tx == wire.TxFailed)...)
		return nil
	}
	if !ss.track {
		ls.sendAs(msg, ss.e.ParseForward())
		return nil
	}
	if ss.e.TooLong(h.Len) {
		ls.sendAs(msg, ss.e.ParseTooLong(h.Len))
		return nil
	}
	body := msg[wire.HeaderLen:]
	i := indexZero(body)
	if i < 0 {
		return fmt.Errorf("%w: Parse message without a statement name", errProtocol)
	}
	d.toS = append(d.toS, ss.e.ParseNamed(body[:i], body[i+1:])...)
	return nil
}

// Opened of the server side: never called (adopted).
func (s *serverSide) Opened(*driver.Conn) {}

// Data: the server connection sent b.
func (s *serverSide) Data(c *driver.Conn, b []byte) {
	ls := s.ls
	ss := ls.ss
	ss.mu.Lock()
	if len(ls.sin) > 0 {
		ls.sin = append(ls.sin, b...)
		b = ls.sin
	}
	n := ls.serverBytes(b)
	if ss.be != nil {
		rest := b[n:]
		if len(ls.sin) > 0 {
			k := copy(ls.sin, rest)
			ls.sin = ls.sin[:k]
		} else {
			ls.sin = append(ls.sin, rest...)
		}
	}
	drained := ss.e.Q.Len() < resumePending
	ss.mu.Unlock()
	ls.flush()
	if drained && ls.paused&pauseAnswers != 0 {
		ls.resume(pauseAnswers)
	}
	if ls.paused&pauseProbe != 0 && !ls.probing {
		ls.resume(pauseProbe)
	}
	ls.maybeFinish()
}

// Closed: the server connection failed (it is not closed: the pool owns it).
func (s *serverSide) Closed(c *driver.Conn, err error) {
	ls := s.ls
	ss := ls.ss
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	ss.mu.Lock()
	if be := ss.be; be != nil {
		ls.serverFailed(be, err)
	}
	ss.mu.Unlock()
	ls.flush()
	ls.maybeFinish()
}

// Drained: the server took what was sent; a client paused for it goes on.
func (s *serverSide) Drained(c *driver.Conn) { s.ls.resume(pauseServer) }

// serverBytes handles the server's messages in b and returns how many bytes
// it used: the rest is the start of a message that must be whole to be
// handled. ss.mu is held.
func (ls *loopSess) serverBytes(b []byte) int {
	ss := ls.ss
	d := ls.d
	used := 0
	for used < len(b) && ss.be != nil {
		if ls.srest > 0 {
			k := min(ls.srest, len(b)-used)
			if !ls.sskip {
				d.toC = append(d.toC, b[used:used+k]...)
			}
			ls.srest -= k
			used += k
			continue
		}
		if len(b)-used < wire.HeaderLen {
			break
		}
		h, err := wire.ParseHeader(b[used:], wire.MaxMessageLength)
		if err != nil {
			ls.serverFailed(ss.be, fmt.Errorf("bad message from the server: %w", err))
			return len(b)
		}
		n := 1 + h.Len
		whole := len(b)-used >= n
		if ls.probing || h.Type == wire.MsgReadyForQuery || (h.Type == wire.MsgErrorResponse && h.Len < engine.MaxErrorInspect) {
			if !whole {
				if n > maxCarry && ls.probing {
					ls.serverFailed(ss.be, errors.New("probe answer too large"))
					return len(b)
				}
				break
			}
		}
		msg := b[used:min(used+n, len(b))]
		if ls.probing {
			ls.probeMessage(h, msg)
			used += n
			continue
		}
		if h.Type == wire.MsgReadyForQuery {
			used += n
			if h.Len != 5 {
				ls.serverFailed(ss.be, errors.New("bad ReadyForQuery"))
				return len(b)
			}
			ls.ready(msg)
			continue
		}
		var errMsg []byte
		if h.Type == wire.MsgErrorResponse && whole {
			errMsg = msg
		}
		act, repl, doomed := ss.routeLocked(h, errMsg)
		if doomed != "" {
			ss.logReplayFailed(doomed)
			ls.serverFailed(ss.be, errors.New("settings replay failed: "+doomed))
			return len(b)
		}
		if ss.swallow.Load() || ss.dying.Load() {
			act = engine.Swallow
		}
		switch act {
		case engine.Forward:
			d.toC = append(d.toC, msg...)
			ls.sskip = false
		case engine.Replace:
			d.toC = append(d.toC, repl...)
			ls.sskip = true
		default:
			ls.sskip = true
		}
		ls.srest = n - len(msg)
		used += len(msg)
	}
	return used
}

// ready handles the server's ReadyForQuery msg. ss.mu is held.
func (ls *loopSess) ready(msg []byte) {
	ss := ls.ss
	if !ss.swallow.Load() && !ss.dying.Load() {
		if swallow, _ := ss.e.SwallowFront(wire.MsgReadyForQuery); !swallow {
			ls.d.toC = append(ls.d.toC, msg...)
		}
	}
	if ss.e.ReadyForQuery(msg[5]) {
		ss.swallowing.Add(-1)
	}
	ls.decide()
}

// decide carries out the transaction-boundary decision. ss.mu is held.
func (ls *loopSess) decide() {
	ss := ls.ss
	d := engine.Decide(ss.boundaryLocked())
	if (d == engine.Probe || d == engine.Release) && ls.crest > 0 && !ls.cskip {
		// The client is in the middle of a message to the server (COPY data):
		// neither a probe nor another client may come in between. Decided
		// again when it is whole (clientBytes).
		ls.decideLater = true
		return
	}
	switch d {
	case engine.KeepReading:
	case engine.Probe:
		ls.probeQ = ss.e.State.StartProbe()
		ls.probing, ls.probeRw, ls.probeEr = true, nil, nil
		ss.probing = true
		ls.pause(pauseProbe)
		ls.d.toS = append(ls.d.toS, ls.probeQ.Query...)
	case engine.Stay, engine.StayListening:
		if ss.e.Tx != wire.TxIdle {
			ss.armIdleLocked()
		}
	case engine.Release:
		if ss.cancels > 0 {
			ls.release = true // once the cancel request is delivered (cancelDone)
			return
		}
		ls.releaseBackend()
	}
}

// probeMessage handles a message of the probe's answer. ss.mu is held.
func (ls *loopSess) probeMessage(h wire.Header, msg []byte) {
	ss := ls.ss
	switch h.Type {
	case wire.MsgRowDescription:
		ls.probeRw = nil
	case wire.MsgDataRow:
		ls.probeRw = parseDataRow(msg[wire.HeaderLen:])
	case wire.MsgErrorResponse:
		f := wire.ParseError(msg[wire.HeaderLen:])
		ls.probeEr = fmt.Errorf("%w: %s (%s)", engine.ErrProbe, f.Message, f.Code)
	case wire.MsgNotification:
		if !ss.swallow.Load() && !ss.dying.Load() {
			ls.d.toC = append(ls.d.toC, msg...)
		}
	case wire.MsgReadyForQuery:
		ls.probing = false
		ss.probing = false
		err := ls.probeEr
		if err == nil {
			err = ss.finishProbeLocked(ss.be, ls.probeQ, ls.probeRw)
		}
		ls.probeRw, ls.probeEr = nil, nil
		if err != nil {
			ss.srv.log.Warn("could not read session state from a server connection, closing it",
				"client", ss.addr, "user", ss.user, "database", ss.db, "server_pid", ss.be.PID, "error", err)
			ls.serverFailed(ss.be, err)
			return
		}
		ls.decide()
	}
}

// releaseBackend gives the server connection back to its pool. ss.mu is held.
func (ls *loopSess) releaseBackend() {
	ss := ls.ss
	be := ss.be
	ls.release = false
	if ls.sc.Buffered() > 0 || len(ls.sin) > 0 || ls.srest > 0 {
		// Bytes in flight at a boundary: its state is unknown.
		ls.serverFailed(be, errors.New("server connection not idle at a transaction boundary"))
		return
	}
	ss.be = nil
	ss.e.Detached()
	ss.swallowing.Store(0)
	ss.obs.TransactionDone(time.Since(ss.attachedAt))
	ls.d.l.Disarm(&ls.cleanTimer)
	ls.d.released = append(ls.d.released, be) // handed over or released by settle
	if ss.draining && !ss.gone {
		ls.kill(killShutdown)
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

// serverFailed handles a server connection that broke while attached (see
// session.serverFailed). ss.mu is held.
func (ls *loopSess) serverFailed(be *pool.Backend, err error) {
	ss := ls.ss
	if be == nil || ss.be != be {
		return
	}
	lost := ss.e.Outstanding > 0 || ss.e.Partial || ss.e.Tx != wire.TxIdle
	if ls.srest > 0 && !ls.sskip {
		// Part of a message reached the client: anything more would be read as
		// the rest of it. Like PostgreSQL, just close.
		ss.streamBroken.Store(true)
	}
	lb := loopBackendOf(be)
	if lb.adopted {
		lb.c.Detach()
		lb.adopted = false
	}
	ss.be = nil
	ss.e.Detached()
	ss.swallowing.Store(0)
	ls.probing, ss.probing, ls.release, ls.decideLater = false, false, false, false
	ls.srest, ls.sskip, ls.sin = 0, false, ls.sin[:0]
	ls.d.l.Disarm(&ls.cleanTimer)
	if lost && !ss.gone && ss.kill == killNone {
		ss.kill = killServerLost
	}
	be.Pool().Destroy(be)
	if !ss.gone {
		ss.srv.log.Warn("server connection lost", "client", ss.addr, "user", ss.user, "database", ss.db, "server_pid", be.PID, "error", err)
		if lost {
			ls.kill(killServerLost)
		}
	}
	ls.paused &^= pauseProbe | pauseServer | pauseAnswers
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
	if !ss.dying.Load() {
		ss.dying.Store(true)
		close(ss.killCh)
	}
	if ls.ended {
		return
	}
	if ls.paused&pauseWait != 0 && ss.pool.CancelWait(&ls.w) {
		ss.waiting = false
		ls.d.dequeue(ls)
	}
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
	if ls.paused&pauseWait != 0 && ss.pool.CancelWait(&ls.w) {
		ss.waiting = false
		ls.d.dequeue(ls)
	}
	ss.gone = true
	ss.e.ReleaseAll()
	ls.dropIn()
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
		ss.doomed = true
		ls.serverFailed(be, errors.New("client left in the middle of an answer"))
		return
	}
	q := ss.cleanupQueries(be, nil)
	ss.swallow.Store(true)
	ls.d.toS = append(ls.d.toS, q...)
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

// finishCounts does what serveClient does when a client goroutine returns.
func (ls *loopSess) finishCounts() {
	ss := ls.ss
	ss.srv.onLoop.Add(-1)
	ss.srv.unregister(ss)
	ss.srv.clients.Add(-1)
	ss.srv.sessWG.Done()
}
