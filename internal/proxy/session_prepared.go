package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

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
	if len(ss.owed) > 0 {
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
		ss.failDeferred(ss.e.LimitError(int64(h.Len)))
		return true, nil
	}
	name, body, err := ss.readNamedParse(h)
	if err != nil {
		return false, err
	}
	ss.mu.Lock()
	if ss.e.Stmts.Has(name) {
		ss.mu.Unlock()
		// Written without the lock: a client that does not read must not hold up
		// anyone who needs it (metrics, SHOW CLIENTS, the leak watcher).
		ss.failDeferred(engine.AlreadyExists(name))
		return true, nil
	}
	if refusal := ss.e.Room(len(body)); refusal != nil {
		ss.mu.Unlock()
		ss.failDeferred(refusal)
		return true, nil
	}
	rg := ss.e.Register(string(name), ss.srv.stmts.Intern(body))
	rg.Unconfirmed = true
	ss.owed = append(ss.owed, rg) // bounded by the client's statement bounds
	ss.mu.Unlock()
	return true, nil
}

// sendOwedLocked sends the Parses taken without a backend (deferParse) to the
// backend just attached, ahead of the client's message that needed it, and queues
// their answers for the client: ParseComplete, or the error after which the
// backend skips the rest of the batch and the registrations are undone, as
// PostgreSQL would never have had the statements. ss.mu is held; the client
// goroutine attaches.
func (ss *session) sendOwedLocked() {
	for i, rg := range ss.owed {
		rg.Unconfirmed = false // confirmed by the answer, or dropped with the error
		ss.bw.Write(ss.e.Prepare(rg, true))
		ss.owed[i] = nil
	}
	ss.clearOwed()
}

// clearOwed empties the list of owed Parses, whose entries are nil.
func (ss *session) clearOwed() {
	if cap(ss.owed) > 64 {
		ss.owed = nil // a burst of Parses: its list is not kept
	} else {
		ss.owed = ss.owed[:0]
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
// name and the rest of its body (query and parameter types), counted as a client
// parse. Both stay valid until the next read into ss.scratch.
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
	ss.srv.prep.ClientParses.Add(1)
	return msg[wire.HeaderLen : wire.HeaderLen+i], msg[wire.HeaderLen+i+1:], nil
}

// payOwed answers the Parses taken without a backend (deferParse) with
// ParseComplete: their statements are checked at their first use. Client
// goroutine, no backend attached.
func (ss *session) payOwed() {
	if len(ss.owed) == 0 {
		return
	}
	for i := range ss.owed {
		ss.w.Write(engine.ParseComplete)
		ss.owed[i] = nil
	}
	ss.clearOwed()
}

// parseQuery returns the query text of a Parse message.
func parseQuery(msg []byte) []byte {
	b := msg[wire.HeaderLen:]
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil
	}
	b = b[i+1:]
	if j := bytes.IndexByte(b, 0); j >= 0 {
		return b[:j]
	}
	return nil
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
		return ss.sendClose(h)
	case wire.MsgQuery:
		ss.mu.Lock()
		ss.e.Un.Dropped()
		ss.mu.Unlock()
	case wire.MsgExecute:
		if ss.execFixup != nil {
			if err := wire.Forward(ss.bw, ss.r, 1+h.Len); err != nil {
				return err
			}
			return ss.sendExecFixup()
		}
		if ss.portalTag != nil {
			if p, err := ss.r.Peek(wire.HeaderLen + 1); err == nil && p[wire.HeaderLen] == 0 {
				ss.mu.Lock()
				if b := ss.e.Q.Back(); b != nil && b.Kind == engine.ExpectExecute {
					b.Action, b.Undo = engine.Replace, &engine.Undo{Replace: ss.portalTag}
				}
				ss.mu.Unlock()
			}
		}
	}
	return wire.Forward(ss.bw, ss.r, 1+h.Len)
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

func (ss *session) sendParse(h wire.Header) error {
	head, err := ss.r.Peek(wire.HeaderLen + 1)
	if err != nil {
		return midMessage(err)
	}
	if unnamed := head[wire.HeaderLen] == 0; unnamed || !ss.track {
		var msg []byte
		var e engine.QueryEffect
		if unnamed {
			// Kept, so that a Bind in a later batch can find it on any backend.
			if msg, err = ss.readInto(&ss.e.Un.Next, h); err != nil {
				return err
			}
			ss.unnamedTag = nil
			ss.unnamedEffect = nil
			if ss.pooled {
				e = engine.ClassifyQuery(parseQuery(msg))
				if st := &e.State; st.Changes() {
					eff := *st              // allocated only here: most statements change nothing
					ss.unnamedEffect = &eff // applies when the statement is bound
				}
			}
		}
		ss.mu.Lock()
		if ss.e.LocalTag(&e, ss.be != nil, ss.tx == wire.TxFailed) {
			// DEALLOCATE through the extended protocol (psycopg): an empty statement
			// stands in for it and its Execute gets the answer.
			ss.e.Drop(&e)
			msg = wire.AppendParse(msg[:0], "", "")
			ss.unnamedTag = e.LocalTag
		} else if ss.track {
			ss.e.ApplySQL(&e)
		}
		if msg != nil {
			ss.noteStmtLocked(parseQuery(msg))
		}
		if unnamed {
			ss.e.Un.Flight++
			p := engine.Pending{Kind: engine.ExpectParse, Unnamed: engine.UnnamedOwn, Epoch: ss.e.Un.Epoch, UnnamedParse: msg}
			if ss.big != nil && 1+h.Len > ss.r.Size() {
				// msg is in the message budget's buffer, released before the next
				// message: the replay copy is the heap's, within the client's
				// statement bytes and one in flight at a time, or there is none (a
				// Bind in a later transaction on another backend then gets 26000).
				p.UnnamedParse, p.UnnamedBig = nil, true
				if !ss.e.Q.BigInFlight() &&
					ss.e.Stmts.Bytes()+int64(len(ss.e.Un.Parse))+int64(len(msg)) <= ss.srv.options().MaxClientStatementBytes {
					p.UnnamedParse = append([]byte(nil), msg...)
				}
			} else {
				ss.e.Un.Next, ss.e.Un.Spare = ss.e.Un.Spare, nil // msg is the entry's now
			}
			ss.e.Q.Push(p)
		} else {
			ss.e.Q.Push(engine.Pending{Kind: engine.ExpectParse})
		}
		ss.mu.Unlock()
		if msg == nil {
			return wire.Forward(ss.bw, ss.r, 1+h.Len)
		}
		_, err = ss.bw.Write(msg)
		return err
	}
	if ss.e.TooLong(h.Len) {
		// Its text alone is over the bound: refused before it is read.
		ss.mu.Lock()
		if err := ss.failInsteadLocked(&engine.Undo{Replace: ss.e.LimitError(int64(h.Len))}); err != nil {
			return err
		}
		return wire.Skip(ss.r, 1+h.Len)
	}
	name, body, err := ss.readNamedParse(h)
	if err != nil {
		return err
	}
	ss.mu.Lock()
	if ss.e.Stmts.Has(name) {
		x := &engine.Undo{Replace: engine.AlreadyExists(name)}
		return ss.failInsteadLocked(x)
	}
	if refusal := ss.e.Room(len(body)); refusal != nil {
		return ss.failInsteadLocked(&engine.Undo{Replace: refusal})
	}
	rg := ss.e.Register(string(name), ss.srv.stmts.Intern(body))
	inj := ss.e.Prepare(rg, true)
	ss.mu.Unlock()
	_, err = ss.bw.Write(inj)
	return err
}

// failInsteadLocked sends engine.FailParse in place of the client's message, whose
// answer becomes x.replace (PostgreSQL's own 25P02 in a failed transaction, unless
// x.beforeAbort): the backend then skips the rest of the batch as PostgreSQL would
// after that error. ss.mu is held; it is released.
func (ss *session) failInsteadLocked(x *engine.Undo) error {
	b := ss.e.FailInstead(x)
	ss.mu.Unlock()
	_, err := ss.bw.Write(b)
	return err
}

// sendUse sends a Bind or Describe, preparing its statement on the backend first
// when needed and naming it by its server-side name.
func (ss *session) sendUse(h wire.Header) error {
	p, err := ss.peekNames(h)
	if err != nil {
		return err
	}
	var kind engine.Expected
	var ns, ne int // the statement name is p[ns:ne]
	body := p[wire.HeaderLen:]
	if h.Type == wire.MsgBind {
		kind = engine.ExpectBind
		i := bytes.IndexByte(body, 0)
		if i < 0 {
			return fmt.Errorf("%w: Bind message names too long", errProtocol)
		}
		j := bytes.IndexByte(body[i+1:], 0)
		if j < 0 {
			return fmt.Errorf("%w: Bind message names too long", errProtocol)
		}
		ns = wire.HeaderLen + i + 1
		ne = ns + j
	} else {
		if len(body) < 2 {
			return fmt.Errorf("%w: short Describe message", errProtocol)
		}
		if body[0] != 'S' {
			ss.mu.Lock()
			ss.e.Q.Push(engine.Pending{Kind: engine.ExpectDescribePortal})
			ss.mu.Unlock()
			return wire.Forward(ss.bw, ss.r, 1+h.Len)
		}
		kind = engine.ExpectDescribeStatement
		j := bytes.IndexByte(body[1:], 0)
		if j < 0 {
			return fmt.Errorf("%w: Describe message name too long", errProtocol)
		}
		ns = wire.HeaderLen + 1
		ne = ns + j
	}
	if kind == engine.ExpectBind && ns == wire.HeaderLen+1 { // the unnamed portal
		ss.portalTag = nil
		if ns == ne {
			ss.portalTag = ss.unnamedTag
		}
	}
	if ns == ne {
		// The unnamed statement: a backend other than the one the client parsed it
		// on gets the client's last Parse of it first.
		if kind == engine.ExpectBind && ss.unnamedEffect != nil {
			if refused, err := ss.bindEffect(ss.unnamedEffect, h); refused || err != nil {
				return err
			}
		}
		ss.mu.Lock()
		replay := ss.e.Un.Valid && !ss.e.Un.Here && ss.e.Un.Flight == 0
		u := ss.e.Un.Parse
		if replay {
			ss.e.Q.Push(engine.Pending{Kind: engine.ExpectParse, Action: engine.Swallow, Unnamed: engine.UnnamedReplay})
			ss.e.Un.Here = true
		} else if !ss.e.Un.Valid && !ss.e.Un.Here && ss.e.Un.Flight == 0 && ss.pooled {
			// The client has no unnamed statement, but the backend may hold another
			// client's: answer as PostgreSQL would for this client, and make the
			// backend skip to the Sync.
			if err := ss.failInsteadLocked(errNoUnnamed); err != nil {
				return err
			}
			return wire.Skip(ss.r, 1+h.Len)
		}
		ss.e.Q.Push(engine.Pending{Kind: kind})
		ss.mu.Unlock()
		if replay {
			if _, err := ss.bw.Write(u); err != nil {
				return err
			}
		}
		return wire.Forward(ss.bw, ss.r, 1+h.Len)
	}
	ss.mu.Lock()
	rg := ss.e.Stmts.Get(string(p[ns:ne]))
	if rg == nil || !ss.track {
		// Not one of the client's named statements: PostgreSQL answers for it (with
		// "does not exist" in transaction mode).
		ss.e.Q.Push(engine.Pending{Kind: kind})
		ss.mu.Unlock()
		return wire.Forward(ss.bw, ss.r, 1+h.Len)
	}
	st := rg.Stmt
	if kind == engine.ExpectBind && st.Effect != nil {
		ss.mu.Unlock()
		if refused, err := ss.bindEffect(st.Effect, h); refused || err != nil {
			return err
		}
		ss.mu.Lock()
		if ss.e.Stmts.Get(rg.Name) != rg {
			ss.mu.Unlock()
			return fmt.Errorf("%w: statement registry changed under a Bind", errProtocol)
		}
	}
	if kind == engine.ExpectBind && rg.Gen != st.Gen.Load() {
		// The statement's result type changed since the client prepared it: like
		// PostgreSQL, the client's next Bind fails (and the one after works). A
		// failing Parse in the Bind's place makes the backend skip the batch.
		rg.Gen = st.Gen.Load()
		if err := ss.failInsteadLocked(&engine.Undo{Replace: engine.CachedPlanError}); err != nil {
			return err
		}
		return wire.Skip(ss.r, 1+h.Len)
	}
	inj := ss.e.Prepare(rg, false)
	ss.e.Q.Push(engine.Pending{Kind: kind, Stmt: st, Reg: rg})
	if kind == engine.ExpectBind {
		q := st.Key
		if i := strings.IndexByte(q, 0); i >= 0 {
			q = q[:i]
		}
		ss.lastStmtLen = copy(ss.lastStmt[:], q)
	}
	ss.mu.Unlock()
	if _, err := ss.bw.Write(inj); err != nil {
		return err
	}
	// The message again, with the server-side name.
	n := h.Len - (ne - ns) + len(st.Name)
	ss.bw.Write([]byte{h.Type, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
	ss.bw.Write(p[wire.HeaderLen:ns])
	ss.bw.WriteString(st.Name)
	if _, err := ss.r.Discard(ne); err != nil {
		return err
	}
	return wire.Forward(ss.bw, ss.r, 1+h.Len-ne)
}

// sendClose sends a Close. The close of one of the client's named statements is
// the client's business only: its registry forgets the name, and the backend,
// which never had a statement of that name, answers CloseComplete.
func (ss *session) sendClose(h wire.Header) error {
	p, err := ss.peekNames(h)
	if err != nil {
		return err
	}
	body := p[wire.HeaderLen:]
	var x *engine.Undo
	var un uint8
	if len(body) >= 2 && body[0] == 'S' {
		if body[1] == 0 {
			un = engine.UnnamedOwn
		} else if j := bytes.IndexByte(body[1:], 0); j > 0 && ss.track {
			name := body[1 : 1+j]
			ss.mu.Lock()
			if rg := ss.e.Stmts.Get(string(name)); rg != nil {
				ss.e.Stmts.Remove(rg)
				ss.e.Registry.Release(rg.Stmt)
				x = &engine.Undo{Ops: []engine.UndoOp{{Kind: engine.UndoUnregister, Reg: rg}}}
			}
			ss.mu.Unlock()
		}
	}
	ss.mu.Lock()
	if un != 0 {
		ss.e.Un.Flight++
	}
	ss.e.Q.Push(engine.Pending{Kind: engine.ExpectClose, Undo: x, Unnamed: un, Epoch: ss.e.Un.Epoch})
	ss.mu.Unlock()
	return wire.Forward(ss.bw, ss.r, 1+h.Len)
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
	act, repl := ss.route(r, h)
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

// route matches a backend message with the pending answers.
func (ss *session) route(r *bufio.Reader, h wire.Header) (engine.Action, []byte) {
	if ss.routeSwallowed(r, h) {
		return engine.Swallow, nil
	}
	if h.Type == wire.MsgErrorResponse {
		return ss.routeError(r, h)
	}
	ss.mu.Lock()
	act, repl := ss.e.Answer(h.Type)
	ss.answersDrainedLocked()
	ss.mu.Unlock()
	return act, repl
}

// routeError handles an ErrorResponse (engine.Session.AnswerError).
func (ss *session) routeError(r *bufio.Reader, h wire.Header) (engine.Action, []byte) {
	var e engine.ServerError
	if h.Len < engine.MaxErrorInspect { // a long one is not read: forwarded as it is
		if msg, err := wire.PeekMessage(r, h); err == nil {
			e = engine.ReadServerError(msg)
		}
	}
	if e.Fatal {
		ss.fatalForwarded.Store(true)
	}
	ss.mu.Lock()
	act, repl, skipped := ss.e.AnswerError(e)
	ss.outstanding -= skipped // no ReadyForQuery comes for them
	ss.answersDrainedLocked()
	ss.mu.Unlock()
	return act, repl
}

// errNoUnnamed is what a client gets for a Bind or Describe of the unnamed
// statement it does not have.
var errNoUnnamed = &engine.Undo{BeforeAbort: true, Replace: wire.AppendError(nil, wire.SeverityError, "26000",
	"unnamed prepared statement does not exist", "")}

// popReadyLocked takes the Sync or Query a ReadyForQuery answers off the queue.
func (ss *session) popReadyLocked() {
	if ss.e.Ready() {
		ss.swallowing.Add(-1)
	}
	ss.answersDrainedLocked()
}

// emptyQuery stands in for a statement the proxy answers itself while the client
// holds a backend: its EmptyQueryResponse is replaced by the answer.
var emptyQuery = wire.AppendQuery(nil, "")

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
	if !ss.e.LocalTag(e, ss.be != nil, ss.tx == wire.TxFailed) || ss.be != nil {
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
// what e found: a DEALLOCATE the proxy answers goes out as an empty query; SQL
// PREPARE pins the client to its backend until its statements are deallocated;
// DEALLOCATE ALL and DISCARD ALL drop the client's statements and may drop the
// proxy's on the backend.
func (ss *session) sendQuery(e engine.QueryEffect, h wire.Header) error {
	ss.mu.Lock()
	ss.e.Un.Dropped()
	if ss.held != nil {
		ss.noteStmtLocked(ss.held[wire.HeaderLen:])
	} else if p, err := ss.r.Peek(min(1+h.Len, wire.HeaderLen+len(ss.lastStmt))); err == nil {
		ss.noteStmtLocked(p[wire.HeaderLen:])
	}
	if e.LocalTag != nil {
		ss.e.Drop(&e)
		if b := ss.e.Q.Back(); b != nil && b.Kind == engine.ExpectQuery {
			b.Action, b.Undo = engine.Replace, &engine.Undo{Replace: e.LocalTag}
		}
		ss.mu.Unlock()
		if ss.held != nil {
			ss.held = nil
		} else if err := wire.Skip(ss.r, 1+h.Len); err != nil {
			return err
		}
		_, err := ss.bw.Write(emptyQuery)
		return err
	}
	if e.Refuse != nil {
		if b := ss.e.Q.Back(); b != nil && b.Kind == engine.ExpectQuery {
			b.Action, b.Undo = engine.Replace, &engine.Undo{Replace: e.Refuse}
		}
		ss.mu.Unlock()
		if ss.held != nil {
			ss.held = nil
		} else if err := wire.Skip(ss.r, 1+h.Len); err != nil {
			return err
		}
		_, err := ss.bw.Write(failQuery)
		return err
	}
	if ss.track {
		ss.e.ApplySQL(&e)
	}
	ss.applyStateLocked(&e.State)
	fix := ss.e.State.FixupQuery(&e.State)
	if fix != nil {
		ss.outstanding++
		ss.pushSwallowedLocked(nil)
	}
	ss.mu.Unlock()
	var err error
	if m := ss.held; m != nil {
		ss.held = nil
		_, err = ss.bw.Write(m)
	} else {
		err = wire.Forward(ss.bw, ss.r, 1+h.Len)
	}
	if err == nil && fix != nil {
		_, err = ss.bw.Write(fix)
	}
	return err
}

// bindEffect applies what executing a bound statement does to session state, or
// refuses it (--pin-policy refuse): then the Bind is replaced by a failing Parse
// whose error the client sees, and the backend skips the rest of the batch.
func (ss *session) bindEffect(e *engine.Effect, h wire.Header) (refused bool, err error) {
	ss.mu.Lock()
	if e.Pin != "" && ss.srv.options().PinPolicy == PinPolicyRefuse {
		if err := ss.failInsteadLocked(&engine.Undo{Replace: engine.Refusal(e.PinKind)}); err != nil {
			return true, err
		}
		return true, wire.Skip(ss.r, 1+h.Len)
	}
	ss.applyStateLocked(e)
	ss.mu.Unlock()
	if names := ss.e.State.FixupNames(e); len(names) > 0 {
		ss.execFixup = names // sent after the statement's Execute
	}
	return false, nil
}

// sendExecFixup sends, after the Execute of a RESET through the extended
// protocol, what puts the client's startup values back (see engine.State.FixupQuery), as
// extended-protocol messages whose answers the client never sees.
func (ss *session) sendExecFixup() error {
	names := ss.execFixup
	ss.execFixup = nil
	sql := ss.e.State.FixupSQL(names)
	do := "DO $pgsidecar$BEGIN PERFORM " + strings.TrimPrefix(sql, "SELECT ") + "; END$pgsidecar$"
	const name = engine.StatementPrefix + "fixup"
	b := wire.AppendParse(nil, name, do)
	b = wire.AppendBind(b, name, name)
	b = wire.AppendExecute(b, name)
	b = wire.AppendClose(b, 'P', name)
	b = wire.AppendClose(b, 'S', name)
	ss.mu.Lock()
	for _, k := range []engine.Expected{engine.ExpectParse, engine.ExpectBind, engine.ExpectExecute, engine.ExpectClose, engine.ExpectClose} {
		ss.e.Q.Push(engine.Pending{Kind: k, Action: engine.Swallow})
	}
	ss.mu.Unlock()
	_, err := ss.bw.Write(b)
	return err
}

// noteStmtLocked remembers the start of the client's latest statement for leak
// reports. ss.mu is held.
func (ss *session) noteStmtLocked(q []byte) {
	if i := bytes.IndexByte(q, 0); i >= 0 {
		q = q[:i]
	}
	ss.lastStmtLen = copy(ss.lastStmt[:], q)
}
