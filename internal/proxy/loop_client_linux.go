//go:build linux

package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/driver"
	"github.com/pgsidecar/pgsidecar/internal/engine"
	"github.com/pgsidecar/pgsidecar/internal/pool"
	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// The loop driver's client side: the bytes a client sends, framed and handled
// message by message; waiting for a server connection; what each message
// becomes on it (loop_linux.go has the overview).

// Data: the client sent b.
func (ls *loopSess) Data(c *driver.Conn, b []byte) {
	if ls.ended {
		return
	}
	if hd := ls.head; hd != nil && ls.hfill < len(hd.b) {
		k := copy(hd.b[ls.hfill:], b)
		ls.hfill += k
		b = b[k:]
		if ls.hfill < len(hd.b) {
			return
		}
		ls.run() // the head is whole
		if len(b) == 0 || ls.ended {
			return
		}
	}
	if len(ls.in) > 0 || ls.paused != 0 || ls.head != nil {
		ls.in = append(ls.in, b...)
		ls.run()
		return
	}
	ss := ls.ss
	ss.mu.Lock()
	n := ls.clientBytes(b)
	ss.mu.Unlock()
	if n < len(b) && !ls.ended {
		ls.in = append(ls.in, b[n:]...)
	}
	ls.flush()
}

// run handles the head, once it is whole, and what in holds.
func (ls *loopSess) run() {
	if hd := ls.head; hd != nil {
		if ls.hfill < len(hd.b) {
			return // the rest of it is still to come (in is empty)
		}
		ls.runHead()
		if ls.head != nil || ls.ended {
			ls.flush()
			return
		}
	}
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

// A client's unhandled bytes (in) are bounded by what the proxy chose to
// buffer: nothing more is read while in holds a whole message that cannot be
// handled yet (the client is paused), and a message larger than bufSize waits
// only with its size reserved in the message budget (reserve).

// reserve makes sure a message of n bytes (larger than bufSize) that is not
// whole yet has its room in the message budget (--max-message-memory). It
// reports false when the client must wait for room (paused until it is
// granted) or was ended. ss.mu is held.
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
	drain, kill := ss.srv.drainCtx.Done(), ss.killChanLocked()
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

// startHead makes the message of n bytes that start begins the head: its
// room in the budget is the one reserve granted.
func (ls *loopSess) startHead(n int, start []byte) {
	ls.head = newBigMsg(n, ls.inMem)
	ls.inMem = 0
	ls.hfill = copy(ls.head.b, start)
}

// runHead handles the whole head message unless something holds it back. Its
// header was checked when it began (clientBytes).
func (ls *loopSess) runHead() {
	if ls.paused != 0 || ls.ended {
		return
	}
	ss := ls.ss
	ss.mu.Lock()
	msg := ls.head.b
	h, err := wire.ParseHeader(msg, wire.MaxMessageLength)
	if err != nil {
		ls.end(err)
	} else if ls.clientMessage(h, msg) {
		ls.releaseHead() // unless it went to the server by reference
	}
	ss.mu.Unlock()
}

// takeHead returns the head and forgets it.
func (ls *loopSess) takeHead() *bigMsg {
	hd := ls.head
	ls.head, ls.hfill, ls.headEff = nil, 0, nil
	return hd
}

// releaseHead frees the head, or leaves that to the goroutine classifying
// it (classified).
func (ls *loopSess) releaseHead() {
	if hd := ls.takeHead(); hd != nil && !ls.classifying {
		ls.ss.srv.msgMem.free(hd)
	}
}

// isHead reports whether b is the head or a suffix of it (the client's
// message from where the engine says it continues).
func (ls *loopSess) isHead(b []byte) bool {
	hd := ls.head
	return hd != nil && len(b) > 0 && &b[len(b)-1] == &hd.b[len(hd.b)-1]
}

// toServer appends b to the server connection's output. The head, or what is
// sent of it, goes by reference instead, after what was appended so far: the
// server connection's registration keeps it until it is written, then frees
// it. ss.mu is held.
func (ls *loopSess) toServer(b []byte) {
	d := ls.d
	if !ls.isHead(b) {
		d.toS = append(d.toS, b...)
		return
	}
	hd := ls.takeHead()
	mm := &ls.ss.srv.msgMem
	if ls.ss.be == nil || ls.sc.IsClosed() {
		mm.free(hd)
		return
	}
	if len(d.toS) > 0 {
		_ = ls.sc.Write(d.toS)
		d.toS = d.toS[:0]
	}
	_ = ls.sc.WriteRef(b, func() { mm.free(hd) })
	if ls.sc.Buffered() > outHighWater {
		ls.pause(pauseServer)
	}
}

// classify classifies the statement of the head, a Query or an unnamed Parse
// of type t, on a goroutine, with the client paused; classified goes on.
func (ls *loopSess) classify(t byte) {
	hd := ls.head
	ls.classifying = true
	ls.pause(pauseClassify)
	mm := &ls.ss.srv.msgMem
	go func() {
		var e engine.QueryEffect
		if t == wire.MsgQuery {
			e = engine.ClassifyQuery(queryText(hd.b))
		} else {
			e = engine.ClassifyParse(hd.b)
		}
		if !ls.post(func() { ls.classified(hd, &e) }) {
			mm.free(hd) // the loop has stopped: nothing else frees it
		}
	}()
}

// classified carries out classify's outcome, on the loop.
func (ls *loopSess) classified(hd *bigMsg, e *engine.QueryEffect) {
	ls.classifying = false
	if ls.head != hd { // the client ended meanwhile
		ls.ss.srv.msgMem.free(hd)
		return
	}
	ls.headEff = e
	ls.resume(pauseClassify)
	ls.flush()
}

// queryText is the SQL of a Query message.
func queryText(msg []byte) []byte {
	q := msg[wire.HeaderLen:]
	if len(q) > 0 && q[len(q)-1] == 0 {
		q = q[:len(q)-1]
	}
	return q
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
		ss.e.Env = opt.engineEnv() // a reload may have changed the bounds
		if err := checkClientHeader(h, opt); err != nil {
			ls.end(err)
			return used
		}
		if h.Type == wire.MsgTerminate {
			ls.end(io.EOF)
			return used
		}
		n := 1 + h.Len
		if len(b)-used < n && n > bufSize && h.Type != wire.MsgCopyData {
			if ls.reserve(n) {
				ls.startHead(n, b[used:])
				used = len(b)
			}
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
	if len(msg) > classifyOffLoop && ls.headEff == nil && ss.pooled && ls.isHead(msg) &&
		(h.Type == wire.MsgQuery || h.Type == wire.MsgParse && msg[wire.HeaderLen] == 0) {
		ls.classify(h.Type)
		return false
	}
	if h.Type == wire.MsgParse && ss.track && ss.be == nil && len(msg) > wire.HeaderLen && msg[wire.HeaderLen] != 0 {
		if done := ls.deferParse(h, msg); done {
			return true
		}
	}
	var eff engine.QueryEffect
	if h.Type == wire.MsgQuery && ss.pooled {
		if ls.headEff != nil && ls.isHead(msg) {
			eff = *ls.headEff
		} else {
			eff = engine.ClassifyQuery(queryText(msg))
		}
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
		ss.statementBeginsLocked(be != nil)
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
		wt := ls.d.waitFor(ls)
		b, queued, err := ss.pool.AcquireAsync(ss.e.State.WantKey, ss.srv.options().QueryWaitTimeout, &wt.w, wt)
		if !queued {
			ls.d.dropWait(ls)
		}
		if err != nil {
			return nil, false, err
		}
		if queued {
			ss.waiting = true
			ss.waitSince = stampNow()
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
			ss.e.Outstanding += int32(x.Swallowed)
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
		ls.toServer(msg[x.From:])
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
		var eff *engine.QueryEffect
		if ls.isHead(m) {
			eff = ls.headEff
		}
		ls.toServer(ss.e.ParseUnnamedAs(m, eff, big, ss.e.Tx == wire.TxFailed))
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
