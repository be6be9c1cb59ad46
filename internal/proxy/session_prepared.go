package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/pgsidecar/pgsidecar/internal/engine"
	"github.com/pgsidecar/pgsidecar/internal/pool"
	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// deferParse takes a client's Parse of a named statement while it holds no
// backend: the statement is registered at once and its answer is owed until the
// client's next message decides who gives it.
//
//   - A Sync or Flush (a lone Parse, nothing else in the batch): the proxy
//     answers ParseComplete itself (payOwed) and prepares the statement on a
//     backend at its first use, where an error in it surfaces instead. A client
//     that prepares outside a transaction then never waits for a backend for it,
//     which also keeps a client program that prepares synchronously (pgbench -M
//     prepared) from waiting for a backend that another of its connections holds
//     in a transaction.
//   - A message that needs a backend (the Describe or Bind of it: pgx's Prepare,
//     a pipeline): the Parse goes to the backend attached for that message ahead
//     of it (sendOwedLocked), and the client gets the backend's answer, as from
//     PostgreSQL: an ErrorResponse in place of the ParseComplete, and nothing
//     else up to the ReadyForQuery.
func (ss *session) deferParse(h wire.Header) (bool, error) {
	head, err := ss.r.Peek(wire.HeaderLen + 1)
	if err != nil || head[wire.HeaderLen] == 0 {
		return false, nil
	}
	var again []byte
	if ss.e.Owing() > 0 {
		// A name parsed again in the batch (42P05) goes to a backend behind the
		// owed Parses: should the first Parse fail, PostgreSQL reports that
		// error and skips this one.
		if p, err := ss.peekNames(h); err == nil {
			if i := bytes.IndexByte(p[wire.HeaderLen:], 0); i >= 0 {
				again = p[wire.HeaderLen : wire.HeaderLen+i]
			}
		}
	}
	ss.mu.Lock()
	free := ss.be == nil && ss.kill == killNone
	if again != nil {
		dup := ss.e.Stmts.Has(again)
		free = free && !dup
	}
	ss.mu.Unlock()
	if !free {
		return false, nil
	}
	if ss.e.TooLong(h.Len) {
		// Its text alone is over the bound: refused before it is read.
		if err := wire.Skip(ss.r, 1+h.Len); err != nil {
			return false, err
		}
		ss.mu.Lock()
		refusal := ss.e.LimitError(int64(h.Len))
		ss.mu.Unlock()
		ss.failDeferred(refusal)
		return true, nil
	}
	name, body, err := ss.readNamedParse(h)
	if err != nil {
		return false, err
	}
	ss.mu.Lock()
	refusal := ss.e.Owe(name, body)
	ss.mu.Unlock()
	if refusal != nil {
		// Written without the lock: a client that does not read must not hold up
		// anyone who needs it (metrics, SHOW CLIENTS, the leak watcher).
		ss.failDeferred(refusal)
	}
	return true, nil
}

// sendOwedLocked sends the Parses taken without a backend (deferParse) to the
// backend just attached (engine.Session.SendOwed). ss.mu is held; the client
// goroutine attaches.
func (ss *session) sendOwedLocked() {
	if ss.e.Owing() > 0 {
		ss.bw.Write(ss.e.SendOwed())
	}
}

// failDeferred answers a Parse taken without a backend with the ErrorResponse
// msg, after the ParseCompletes owed for earlier ones, and skips the rest of the
// batch up to its Sync, as PostgreSQL does after an error. Client goroutine, no
// lock held.
func (ss *session) failDeferred(msg []byte) {
	ss.payOwed()
	ss.w.Write(msg)
	ss.w.Flush()
	ss.discardToSync = true
}

// midMessage turns io.EOF into io.ErrUnexpectedEOF: the connection ended inside a
// message whose header was already read.
func midMessage(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// readNamedParse reads a client's Parse of a named statement whole and returns the
// name and the rest of its body (query and parameter types). Both stay valid
// until the next read into ss.scratch.
func (ss *session) readNamedParse(h wire.Header) (name, body []byte, err error) {
	msg, err := ss.readInto(&ss.scratch, h)
	if err != nil {
		return nil, nil, err
	}
	if cap(ss.scratch) > 64*1024 {
		ss.scratch = nil // msg stays valid; a huge buffer is not kept
	}
	i := bytes.IndexByte(msg[wire.HeaderLen:], 0)
	if i < 0 {
		return nil, nil, fmt.Errorf("%w: Parse message without a statement name", errProtocol)
	}
	return msg[wire.HeaderLen : wire.HeaderLen+i], msg[wire.HeaderLen+i+1:], nil
}

// payOwed answers the Parses taken without a backend (deferParse) with
// ParseComplete: their statements are checked at their first use. Client
// goroutine, no backend attached.
func (ss *session) payOwed() {
	ss.mu.Lock()
	if ss.e.Owing() == 0 {
		ss.mu.Unlock()
		return
	}
	b := ss.e.PayOwed(ss.owedReply[:0])
	ss.mu.Unlock()
	ss.w.Write(b)
	if cap(b) <= 4<<10 {
		ss.owedReply = b[:0]
	}
}

// stmtsOf returns the prepared-statement record of a backend.
func stmtsOf(be *pool.Backend) *engine.ServerStatements {
	bs, _ := be.Ext.(*engine.ServerStatements)
	if bs == nil {
		bs = engine.NewServerStatements()
		be.Ext = bs
	}
	return bs
}

// send writes the client message with header h to be, rewriting statement names
// in transaction mode, and queues the answers it expects.
func (ss *session) send(be *pool.Backend, h wire.Header) error {
	switch h.Type {
	case wire.MsgParse:
		return ss.sendParse(h)
	case wire.MsgBind, wire.MsgDescribe:
		return ss.sendUse(h)
	case wire.MsgClose:
		p, err := ss.peekNames(h)
		if err != nil {
			return err
		}
		ss.mu.Lock()
		x := ss.e.CloseMessage(p)
		ss.mu.Unlock()
		return ss.sendAs(h, x)
	case wire.MsgQuery:
		ss.mu.Lock()
		ss.e.Un.Dropped()
		ss.mu.Unlock()
	case wire.MsgExecute:
		p, err := ss.peekNames(h)
		if err != nil {
			return err
		}
		ss.mu.Lock()
		x := ss.e.Execute(p)
		ss.mu.Unlock()
		return ss.sendAs(h, x)
	}
	return wire.Forward(ss.bw, ss.r, 1+h.Len)
}

// sendAs writes to the backend what the engine says for the client message
// with header h: x.Pre, the message from x.From (none of it with engine.Drop;
// from ss.held when the message was read whole there), then x.Post.
func (ss *session) sendAs(h wire.Header, x engine.Send) error {
	if len(x.Pre) > 0 {
		ss.bw.Write(x.Pre)
	}
	n := 1 + h.Len
	var err error
	switch {
	case ss.held != nil:
		if x.From != engine.Drop {
			ss.bw.Write(ss.held[x.From:])
		}
		ss.held = nil
	case x.From == engine.Drop:
		err = wire.Skip(ss.r, n)
	default:
		if x.From > 0 {
			if _, err = ss.r.Discard(x.From); err != nil {
				return midMessage(err)
			}
		}
		err = wire.Forward(ss.bw, ss.r, n-x.From)
	}
	if err == nil && len(x.Post) > 0 {
		_, err = ss.bw.Write(x.Post)
	}
	return err
}

// readInto reads the whole message with header h into *buf (reused) and returns it.
//
// A message larger than the client reader goes into a buffer of the message
// budget instead (readBig), which the session keeps until the next message: the
// caller copies what must outlive it.
func (ss *session) readInto(buf *[]byte, h wire.Header) ([]byte, error) {
	n := 1 + h.Len
	if n > ss.r.Size() {
		return ss.readBig(n)
	}
	if cap(*buf) < n {
		*buf = make([]byte, n)
	}
	b := (*buf)[:n]
	if _, err := io.ReadFull(ss.r, b); err != nil {
		return nil, midMessage(err)
	}
	*buf = b
	return b, nil
}

// peekNames returns the start of the message with header h as far as the buffer
// holds it (enough for the names at its start).
func (ss *session) peekNames(h wire.Header) ([]byte, error) {
	p, err := ss.r.Peek(min(1+h.Len, ss.r.Size()))
	return p, midMessage(err)
}

// sendParse sends a Parse: the unnamed statement's is kept for replay, a named
// one is registered and prepared under the proxy's name
// (engine.Session.ParseNamed).
func (ss *session) sendParse(h wire.Header) error {
	head, err := ss.r.Peek(wire.HeaderLen + 1)
	if err != nil {
		return midMessage(err)
	}
	if head[wire.HeaderLen] == 0 {
		// Kept, so that a Bind in a later batch can find it on any backend.
		msg, err := ss.readInto(&ss.e.Un.Next, h)
		if err != nil {
			return err
		}
		big := ss.big != nil && 1+h.Len > ss.r.Size() // msg is in the message budget's buffer
		ss.mu.Lock()
		msg = ss.e.ParseUnnamed(msg, big, ss.e.Tx == wire.TxFailed)
		ss.mu.Unlock()
		_, err = ss.bw.Write(msg)
		return err
	}
	if !ss.track {
		ss.mu.Lock()
		x := ss.e.ParseForward()
		ss.mu.Unlock()
		return ss.sendAs(h, x)
	}
	if ss.e.TooLong(h.Len) {
		// Its text alone is over the bound: refused before it is read.
		ss.mu.Lock()
		x := ss.e.ParseTooLong(h.Len)
		ss.mu.Unlock()
		return ss.sendAs(h, x)
	}
	name, body, err := ss.readNamedParse(h)
	if err != nil {
		return err
	}
	ss.mu.Lock()
	b := ss.e.ParseNamed(name, body)
	ss.mu.Unlock()
	_, err = ss.bw.Write(b)
	return err
}

// sendUse sends a Bind or Describe, preparing its statement on the backend first
// when needed and naming it by its server-side name (engine.Session.Use).
func (ss *session) sendUse(h wire.Header) error {
	p, err := ss.peekNames(h)
	if err != nil {
		return err
	}
	ss.mu.Lock()
	x, err := ss.e.Use(h, p)
	ss.mu.Unlock()
	if err != nil {
		return err
	}
	return ss.sendAs(h, x)
}

// releaseStmts drops the client's registrations when it leaves.
func (ss *session) releaseStmts() {
	ss.mu.Lock()
	ss.e.ReleaseAll()
	ss.mu.Unlock()
}

// relay passes one backend message (not ReadyForQuery) whose header h was peeked
// on to the client: forwarded, dropped or replaced, as its pending entry says.
// When it fails, rest bytes of the message are left, to be dropped (skip) or
// forwarded.
func (ss *session) relay(r *bufio.Reader, h wire.Header) (rest int, skip bool, err error) {
	var msg []byte
	if h.Type == wire.MsgErrorResponse && h.Len < engine.MaxErrorInspect { // a long one is not read: forwarded as it is
		msg, _ = wire.PeekMessage(r, h)
	}
	act, repl := ss.route(h, msg)
	if ss.swallow.Load() || ss.dying.Load() {
		// The client left, or the proxy ends it: nothing more but the FATAL.
		act = engine.Swallow
	}
	n := 1 + h.Len
	switch act {
	case engine.Forward:
		rest, err = wire.ForwardRest(ss.w, r, n)
		return rest, false, err
	case engine.Replace:
		ss.w.Write(repl)
	}
	d, err := r.Discard(n)
	return n - d, true, midMessage(err)
}

// route matches a backend message with header h with the pending answers.
// msg is the whole message when it is a short ErrorResponse, else nil.
func (ss *session) route(h wire.Header, msg []byte) (engine.Action, []byte) {
	if ss.swallowing.Load() == 0 && h.Type != wire.MsgErrorResponse && !engine.Answers(h.Type) {
		return engine.Forward, nil // DataRow and the like: no lock needed
	}
	ss.mu.Lock()
	act, repl, doomed := ss.routeLocked(h, msg)
	be := ss.be
	ss.mu.Unlock()
	if doomed != "" {
		ss.logReplayFailed(doomed)
		if be != nil {
			be.Conn.Close()
		}
	}
	return act, repl
}

// routeLocked is route with ss.mu held. doomed, when not empty, is the error
// of the replay of the client's settings: the client cannot have them on this
// backend, which is to be closed and the client ended (ss.kill and ss.doomed
// are set).
func (ss *session) routeLocked(h wire.Header, msg []byte) (act engine.Action, repl []byte, doomed string) {
	if ss.swallowing.Load() > 0 {
		swallow, fatal := ss.e.SwallowFront(h.Type)
		if fatal {
			doomed = "(unknown)"
			if msg != nil {
				f := wire.ParseError(msg[wire.HeaderLen:])
				doomed = f.Message + " (" + f.Code + ")"
			}
			if ss.kill == killNone {
				ss.kill = killServerLost
			}
			ss.doomed = true
			return engine.Swallow, nil, doomed
		}
		if swallow {
			return engine.Swallow, nil, ""
		}
	}
	if h.Type == wire.MsgErrorResponse {
		var e engine.ServerError
		if msg != nil {
			e = engine.ReadServerError(msg)
		}
		if e.Fatal {
			ss.fatalForwarded = true
		}
		var skipped int
		act, repl, skipped = ss.e.AnswerError(e)
		ss.e.Outstanding -= int32(skipped) // no ReadyForQuery comes for them
	} else {
		act, repl = ss.e.Answer(h.Type)
	}
	ss.answersDrainedLocked()
	return act, repl, ""
}

// logReplayFailed logs a client that could not have its settings on a
// server connection (routeLocked).
func (ss *session) logReplayFailed(msg string) {
	ss.srv.log.Warn("could not give a client its settings on a server connection, closing it",
		"client", ss.addr, "user", ss.user, "database", ss.db, "error", msg)
}

// classifyQuery finds the statements of the client's Query with header h that
// affect prepared statements. A Query too big for the client reader is read
// whole into ss.held.
func (ss *session) classifyQuery(h wire.Header) (engine.QueryEffect, error) {
	var msg []byte
	n := 1 + h.Len
	if n <= ss.r.Size() {
		p, err := ss.r.Peek(n)
		if err != nil {
			return engine.QueryEffect{}, midMessage(err)
		}
		msg = p
	} else {
		m, err := ss.readBig(n)
		if err != nil {
			return engine.QueryEffect{}, err
		}
		ss.held = m // in ss.big: released before the next message
		msg = m
	}
	q := msg[wire.HeaderLen:]
	if len(q) > 0 && q[len(q)-1] == 0 {
		q = q[:len(q)-1]
	}
	return engine.ClassifyQuery(q), nil
}

// answerLocally answers DEALLOCATE of the client's protocol-level statements
// (psycopg deallocates with SQL): they exist only in the proxy's registry. It
// reports whether the query was answered and consumed; with a backend attached
// it leaves e.localTag for sendQuery instead.
func (ss *session) answerLocally(e *engine.QueryEffect, h wire.Header) bool {
	ss.mu.Lock()
	if !ss.e.LocalTag(e, ss.be != nil, ss.e.Tx == wire.TxFailed) || ss.be != nil {
		ss.mu.Unlock()
		return false
	}
	ss.e.Drop(e)
	ss.mu.Unlock()
	if ss.held != nil {
		ss.held = nil
	} else if _, err := ss.r.Discard(1 + h.Len); err != nil {
		return false
	}
	ss.payOwed()
	ss.w.Write(e.LocalTag)
	ss.w.Write(readyIdle)
	ss.w.Flush()
	return true
}

// sendQuery sends the client's Query (after attach queued its answer), applying
// what e found (engine.Session.Query).
func (ss *session) sendQuery(e engine.QueryEffect, h wire.Header) error {
	head := ss.held
	if head == nil {
		var err error
		if head, err = ss.r.Peek(min(1+h.Len, wire.HeaderLen+engine.MaxNote)); err != nil {
			return midMessage(err)
		}
	}
	ss.mu.Lock()
	x := ss.e.Query(&e, head)
	if x.Swallowed > 0 {
		ss.e.Outstanding += int32(x.Swallowed)
		ss.swallowing.Add(int32(x.Swallowed))
	}
	ss.mu.Unlock()
	return ss.sendAs(h, x)
}
