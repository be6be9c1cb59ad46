package engine

import (
	"bytes"
	"errors"
	"fmt"
	"math/bits"
	"strings"

	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// What the client's extended-protocol messages become on the server connection
// in transaction mode (docs/design.md section 5). Each method takes the start of
// a client message (head: at least its statement and portal names; the whole
// message where it says so) and returns a [Send] that says what to write: the
// messages the proxy puts ahead, the client's message or part of it, and what
// follows. It queues the answers the server owes for all of them.

// Send says how one client message goes to the server connection: Pre, then the
// client's message from byte From to its end (none of it when From is Drop),
// then Post. Pre and Post are the Session's buffers, valid until its next call.
type Send struct {
	Pre  []byte
	From int
	Post []byte
	// Swallowed counts Queries among Pre and Post whose whole answer the client
	// never sees (a fix-up of settings): each gets a ReadyForQuery of its own.
	Swallowed int
}

// Drop as Send.From: the client's message is not sent.
const Drop = -1

// ErrProtocol is a client message the engine cannot read: the client is ended
// with a protocol violation.
var ErrProtocol = errors.New("protocol violation")

var (
	// errNoUnnamed is what a client gets for a Bind or Describe of the unnamed
	// statement it does not have.
	errNoUnnamed = &Undo{BeforeAbort: true, Replace: wire.AppendError(nil, wire.SeverityError, "26000",
		"unnamed prepared statement does not exist", "")}
	// EmptyQuery stands in for a statement the proxy answers itself while the
	// client holds a server connection: its EmptyQueryResponse is replaced by
	// the answer.
	EmptyQuery = wire.AppendQuery(nil, "")
	// FailQuery fails (a syntax error) in place of a refused statement, so that
	// an explicit transaction fails as PostgreSQL would fail it.
	FailQuery = wire.AppendQuery(nil, "pgsidecar refused this statement")
)

// forward sends the client's message as it is.
var forward = Send{}

// Note remembers the start of the client's latest statement q (up to a NUL)
// for leak reports.
func (s *Session) Note(q []byte) {
	if i := bytes.IndexByte(q, 0); i >= 0 {
		q = q[:i]
	}
	s.note(q)
}

// note keeps the start of q as the client's latest statement.
func (s *Session) note(q []byte) { s.lastStmt = noteInto(s.lastStmt, q) }

// noteInto is buf holding the start of q (at most MaxNote bytes). buf grows
// to the next power of two (at least 32, at most MaxNote) when q needs more:
// a few steps, then none.
func noteInto[T string | []byte](buf []byte, q T) []byte {
	q = q[:min(len(q), MaxNote)]
	if len(q) > cap(buf) {
		buf = make([]byte, 0, min(MaxNote, max(32, 1<<bits.Len(uint(len(q)-1)))))
	}
	return append(buf[:0], q...)
}

// LastStatement is the start of the client's latest statement.
func (s *Session) LastStatement() string { return string(s.lastStmt) }

// MaxNote is how much of a statement Note keeps.
const MaxNote = 200

// ApplyState records a forwarded statement's effect on session state, with
// the settings the server connection has.
func (s *Session) ApplyState(e *Effect) {
	var server Settings
	if s.Server != nil {
		server = s.Server.Settings
	}
	if reason := s.State.Apply(e, server); reason != "" && s.Hooks != nil {
		s.Hooks.Pinned(reason)
	}
}

// Use sends a Bind or Describe with header h whose start is head: its statement
// is prepared on the server connection first when needed and named by its
// server-side name there.
func (s *Session) Use(h wire.Header, head []byte) (Send, error) {
	t := h.Type
	var kind Expected
	var ns, ne int // the statement name is head[ns:ne]
	body := head[wire.HeaderLen:]
	if t == wire.MsgBind {
		kind = ExpectBind
		i := bytes.IndexByte(body, 0)
		if i < 0 {
			return forward, fmt.Errorf("%w: Bind message names too long", ErrProtocol)
		}
		j := bytes.IndexByte(body[i+1:], 0)
		if j < 0 {
			return forward, fmt.Errorf("%w: Bind message names too long", ErrProtocol)
		}
		ns = wire.HeaderLen + i + 1
		ne = ns + j
	} else {
		if len(body) < 2 {
			return forward, fmt.Errorf("%w: short Describe message", ErrProtocol)
		}
		if body[0] != 'S' {
			s.Q.Push(Pending{Kind: ExpectDescribePortal})
			return forward, nil
		}
		kind = ExpectDescribeStatement
		j := bytes.IndexByte(body[1:], 0)
		if j < 0 {
			return forward, fmt.Errorf("%w: Describe message name too long", ErrProtocol)
		}
		ns = wire.HeaderLen + 1
		ne = ns + j
	}
	if kind == ExpectBind && ns == wire.HeaderLen+1 { // the unnamed portal
		if r := s.rare; r != nil {
			r.portalTag = nil
			if ns == ne {
				r.portalTag = r.unnamedTag
			}
		}
	}
	if ns == ne {
		return s.useUnnamed(kind), nil
	}
	rg := s.Stmts.Get(string(head[ns:ne]))
	if rg == nil || !s.Track {
		// Not one of the client's named statements: PostgreSQL answers for it
		// (with "does not exist" in transaction mode).
		s.Q.Push(Pending{Kind: kind})
		return forward, nil
	}
	st := rg.Stmt
	if kind == ExpectBind && st.Effect != nil {
		if x, refused := s.bindEffect(st.Effect); refused {
			return x, nil
		}
	}
	if kind == ExpectBind && rg.Gen != st.Gen.Load() {
		// The statement's result type changed since the client prepared it: like
		// PostgreSQL, the client's next Bind fails (and the one after works). A
		// failing Parse in the Bind's place makes the server skip the batch.
		rg.Gen = st.Gen.Load()
		return Send{Pre: s.FailInstead(&Undo{Replace: CachedPlanError}), From: Drop}, nil
	}
	pre := s.Prepare(rg, false)
	s.Q.Push(Pending{Kind: kind, Stmt: st, Reg: rg})
	if kind == ExpectBind {
		q := st.Key
		if i := strings.IndexByte(q, 0); i >= 0 {
			q = q[:i]
		}
		s.lastStmt = noteInto(s.lastStmt, q)
	}
	// The message again, with the server-side name; the rest follows from ne.
	n := h.Len - (ne - ns) + len(st.Name)
	pre = append(pre, t, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	pre = append(pre, head[wire.HeaderLen:ns]...)
	pre = append(pre, st.Name...)
	s.inj = pre
	return Send{Pre: pre, From: ne}, nil
}

// useUnnamed sends a Bind or Describe of the unnamed statement: a server
// connection other than the one the client parsed it on gets the client's last
// Parse of it first.
func (s *Session) useUnnamed(kind Expected) Send {
	if r := s.rare; kind == ExpectBind && r != nil && r.unnamedEffect != nil {
		if x, refused := s.bindEffect(r.unnamedEffect); refused {
			return x
		}
	}
	replay := s.Un.Valid && !s.Un.Here && s.Un.Flight == 0
	if replay {
		s.Q.Push(Pending{Kind: ExpectParse, Action: Swallow, Unnamed: UnnamedReplay})
		s.Un.Here = true
	} else if !s.Un.Valid && !s.Un.Here && s.Un.Flight == 0 && s.Pooled {
		// The client has no unnamed statement, but the server connection may hold
		// another client's: answer as PostgreSQL would for this client, and make
		// the server skip to the Sync.
		return Send{Pre: s.FailInstead(errNoUnnamed), From: Drop}
	}
	s.Q.Push(Pending{Kind: kind})
	if replay {
		return Send{Pre: s.Un.Parse}
	}
	return forward
}

// bindEffect applies what executing a bound statement does to session state,
// or refuses it (RefusePins): then the Bind is replaced by a failing Parse
// whose error the client sees, and the server skips the rest of the batch.
func (s *Session) bindEffect(e *Effect) (Send, bool) {
	if e.Pin != "" && s.Env.Limits.RefusePins {
		return Send{Pre: s.FailInstead(&Undo{Replace: Refusal(e.PinKind)}), From: Drop}, true
	}
	s.ApplyState(e)
	if names := s.State.FixupNames(e); len(names) > 0 {
		s.x().execFixup = names // sent after the statement's Execute
	}
	return forward, false
}

// Execute sends an Execute whose start is head: after the Execute of a
// RESET, what puts the client's startup values back; the Execute of an empty
// statement standing in for a DEALLOCATE gets that DEALLOCATE's answer.
func (s *Session) Execute(head []byte) Send {
	r := s.rare
	if r == nil {
		return forward
	}
	if r.execFixup != nil {
		return Send{Post: s.execFixupMessages()}
	}
	if r.portalTag != nil && len(head) > wire.HeaderLen && head[wire.HeaderLen] == 0 {
		if b := s.Q.Back(); b != nil && b.Kind == ExpectExecute {
			b.Action, b.Undo = Replace, &Undo{Replace: r.portalTag}
		}
	}
	return forward
}

// execFixupMessages are, after the Execute of a RESET through the extended
// protocol, what puts the client's startup values back (see
// State.FixupQuery), as extended-protocol messages whose answers the client
// never sees.
func (s *Session) execFixupMessages() []byte {
	names := s.rare.execFixup // set: see Execute
	s.rare.execFixup = nil
	sql := s.State.FixupSQL(names)
	do := "DO $pgsidecar$BEGIN PERFORM " + strings.TrimPrefix(sql, "SELECT ") + "; END$pgsidecar$"
	const name = StatementPrefix + "fixup"
	b := wire.AppendParse(s.inj[:0], name, do)
	b = wire.AppendBind(b, name, name)
	b = wire.AppendExecute(b, name)
	b = wire.AppendClose(b, 'P', name)
	b = wire.AppendClose(b, 'S', name)
	for _, k := range []Expected{ExpectParse, ExpectBind, ExpectExecute, ExpectClose, ExpectClose} {
		s.Q.Push(Pending{Kind: k, Action: Swallow})
	}
	s.inj = b
	return b
}

// CloseMessage sends a Close whose start is head. The close of one of the
// client's named statements is the client's business only: its registry
// forgets the name, and the server, which never had a statement of that name,
// answers CloseComplete.
func (s *Session) CloseMessage(head []byte) Send {
	body := head[wire.HeaderLen:]
	var x *Undo
	var un uint8
	if len(body) >= 2 && body[0] == 'S' {
		if body[1] == 0 {
			un = UnnamedOwn
		} else if j := bytes.IndexByte(body[1:], 0); j > 0 && s.Track {
			if rg := s.Stmts.Get(string(body[1 : 1+j])); rg != nil {
				s.Stmts.Remove(rg)
				s.Env.Registry.Release(rg.Stmt)
				x = &Undo{Ops: []UndoOp{{Kind: UndoUnregister, Reg: rg}}}
			}
		}
	}
	if un != 0 {
		s.Un.Flight++
	}
	s.Q.Push(Pending{Kind: ExpectClose, Undo: x, Unnamed: un, Epoch: s.Un.Epoch})
	return forward
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

// ParseUnnamed sends the client's Parse of the unnamed statement, msg whole:
// read into Un.Next, or (big) into a buffer the caller releases before the
// next message. It returns what to send in its place: msg, or an empty
// statement standing in for a DEALLOCATE the proxy answers at its Execute.
// The client's last answered Parse is kept for replay where a later Bind
// lands; a big one only within the client's statement bytes and one in flight
// at a time (without a copy, a Bind in a later transaction on another server
// connection gets 26000). failedTx says the server connection's transaction
// has failed (a DEALLOCATE is then PostgreSQL's to refuse).
func (s *Session) ParseUnnamed(msg []byte, big, failedTx bool) []byte {
	return s.ParseUnnamedAs(msg, nil, big, failedTx)
}

// ClassifyParse classifies the statement of an unnamed Parse msg, as
// ParseUnnamed does. A driver calls it away from its event loop for a large
// statement, and passes the result to ParseUnnamedAs.
func ClassifyParse(msg []byte) QueryEffect { return ClassifyQuery(parseQuery(msg)) }

// ParseUnnamedAs is ParseUnnamed with the statement classified already by
// ClassifyParse (classified), or, when classified is nil, here.
func (s *Session) ParseUnnamedAs(msg []byte, classified *QueryEffect, big, failedTx bool) []byte {
	var e QueryEffect
	if r := s.rare; r != nil {
		r.unnamedTag, r.unnamedEffect = nil, nil
	}
	if s.Pooled {
		if classified != nil {
			e = *classified
		} else {
			e = ClassifyParse(msg)
		}
		if st := &e.State; st.Changes() {
			eff := *st                 // allocated only here: most statements change nothing
			s.x().unnamedEffect = &eff // applies when the statement is bound
		}
	}
	if s.LocalTag(&e, true, failedTx) {
		// DEALLOCATE through the extended protocol (psycopg): an empty statement
		// stands in for it and its Execute gets the answer.
		s.Drop(&e)
		msg = wire.AppendParse(msg[:0], "", "")
		s.x().unnamedTag = e.LocalTag
	} else if s.Track {
		s.ApplySQL(&e)
	}
	s.Note(parseQuery(msg))
	s.Un.Flight++
	p := Pending{Kind: ExpectParse, Unnamed: UnnamedOwn, Epoch: s.Un.Epoch, UnnamedParse: msg}
	if big {
		p.UnnamedParse, p.UnnamedBig = nil, true
		if !s.Q.BigInFlight() &&
			s.Stmts.Bytes()+int64(len(s.Un.Parse))+int64(len(msg)) <= s.Env.Limits.MaxClientStatementBytes {
			p.UnnamedParse = append([]byte(nil), msg...)
		}
	} else {
		s.Un.Next, s.Un.Spare = s.Un.Spare, nil // msg is the entry's now
	}
	s.Q.Push(p)
	return msg
}

// ParseForward sends a Parse of a named statement as it is (no rewriting:
// session mode, or rewriting turned off).
func (s *Session) ParseForward() Send {
	s.Q.Push(Pending{Kind: ExpectParse})
	return forward
}

// ParseTooLong refuses a named Parse whose text alone is over the statement
// bytes bound (msgLen: its length field); it is not read.
func (s *Session) ParseTooLong(msgLen int) Send {
	return Send{Pre: s.FailInstead(&Undo{Replace: s.LimitError(int64(msgLen))}), From: Drop}
}

// ParseNamed registers the client's Parse of statement name, whose body is
// its query text and parameter types, and returns what to send in its place:
// the statement prepared under its server-side name (or a throwaway name when
// the server connection has it), or a failing Parse whose error (42P05, the
// statement bounds) the client gets.
func (s *Session) ParseNamed(name, body []byte) []byte {
	s.counters().ClientParses.Add(1)
	if s.Stmts.Has(name) {
		return s.FailInstead(&Undo{Replace: AlreadyExists(name)})
	}
	if refusal := s.Room(len(body)); refusal != nil {
		return s.FailInstead(&Undo{Replace: refusal})
	}
	rg := s.Register(string(name), s.Env.Registry.Intern(body))
	return s.Prepare(rg, true)
}

// Owe takes the client's Parse of statement name while it holds no server
// connection: the statement is registered at once and its answer is owed
// until the client's next message decides who gives it (see PayOwed and
// SendOwed). refusal is the ErrorResponse the client gets instead (42P05, the
// statement bounds).
func (s *Session) Owe(name, body []byte) (refusal []byte) {
	s.counters().ClientParses.Add(1)
	if s.Stmts.Has(name) {
		return AlreadyExists(name)
	}
	if refusal := s.Room(len(body)); refusal != nil {
		return refusal
	}
	rg := s.Register(string(name), s.Env.Registry.Intern(body))
	rg.Unconfirmed = true
	r := s.x()
	r.owed = append(r.owed, rg) // bounded by the client's statement bounds
	return nil
}

// Owing is the number of Parses taken without a server connection and not
// answered yet.
func (s *Session) Owing() int {
	if s.rare == nil {
		return 0
	}
	return len(s.rare.owed)
}

// SendOwed returns the Parses taken without a server connection, for the one
// just attached, ahead of the client's message that needed it, and queues
// their answers for the client: ParseComplete, or the error after which the
// server skips the rest of the batch and the registrations are undone, as
// PostgreSQL would never have had the statements.
func (s *Session) SendOwed() []byte {
	r := s.rare
	if r == nil {
		return nil
	}
	b := r.owedBuf[:0]
	for i, rg := range r.owed {
		rg.Unconfirmed = false // confirmed by the answer, or dropped with the error
		b = append(b, s.Prepare(rg, true)...)
		r.owed[i] = nil
	}
	r.clearOwed()
	if cap(b) > 64<<10 {
		r.owedBuf = nil // a burst's buffer is not kept
	} else {
		r.owedBuf = b
	}
	return b
}

// PayOwed appends a ParseComplete to dst for each Parse taken without a
// server connection: their statements are checked at their first use.
func (s *Session) PayOwed(dst []byte) []byte {
	r := s.rare
	if r == nil {
		return dst
	}
	for i := range r.owed {
		dst = append(dst, ParseComplete...)
		r.owed[i] = nil
	}
	r.clearOwed()
	return dst
}

// clearOwed empties the list of owed Parses, whose entries are nil.
func (r *sessionRare) clearOwed() {
	if cap(r.owed) > 64 {
		r.owed = nil // a burst of Parses: its list is not kept
	} else {
		r.owed = r.owed[:0]
	}
}

// Query sends the client's simple Query in transaction mode (its answer is
// queued already), whose statements do e, and whose start is head: a DEALLOCATE
// the proxy answers goes out as an empty query, a refused statement as a
// failing one; SQL PREPARE pins the client; DEALLOCATE ALL and DISCARD ALL drop
// the client's statements and may drop the proxy's on the server connection;
// a RESET is followed by what puts the client's startup values back.
func (s *Session) Query(e *QueryEffect, head []byte) Send {
	s.Un.Dropped()
	s.Note(head[wire.HeaderLen:])
	if e.LocalTag != nil {
		s.Drop(e)
		if b := s.Q.Back(); b != nil && b.Kind == ExpectQuery {
			b.Action, b.Undo = Replace, &Undo{Replace: e.LocalTag}
		}
		return Send{Pre: EmptyQuery, From: Drop}
	}
	if e.Refuse != nil {
		if b := s.Q.Back(); b != nil && b.Kind == ExpectQuery {
			b.Action, b.Undo = Replace, &Undo{Replace: e.Refuse}
		}
		return Send{Pre: FailQuery, From: Drop}
	}
	if s.Track {
		s.ApplySQL(e)
	}
	s.ApplyState(&e.State)
	if fix := s.State.FixupQuery(&e.State); fix != nil {
		s.Q.Push(Pending{Kind: ExpectQuery, Action: Swallow})
		return Send{Post: fix, Swallowed: 1}
	}
	return forward
}
