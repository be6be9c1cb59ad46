package engine

import (
	"fmt"
	"sync/atomic"

	"github.com/pgsidecar/pgsidecar/internal/sqlscan"
	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// Session is the protocol state of one client in transaction mode: its
// session [State], its [Unnamed] statement, its named statements
// ([ClientStatements]), the [AnswerQueue] of the server connection it holds
// and that connection's [ServerStatements]. Its methods take a client message
// (or the start of one) and return the bytes to send to the server
// connection, queueing the answers they expect; and take a server answer and
// say what the client gets for it.
//
// It holds no lock: a driver that calls it from two goroutines serialises the
// calls. Bytes it returns are valid until its next call.
type Session struct {
	State State
	Un    Unnamed
	Stmts ClientStatements
	Q     AnswerQueue
	// Server is the attached server connection's statements (nil while none
	// is attached).
	Server *ServerStatements
	// Outstanding counts the Queries, Syncs and FunctionCalls sent whose
	// ReadyForQuery has not come; Partial says extended-protocol messages went
	// out since the last Sync; SyncsAfterExec counts the Syncs since the last
	// Execute or Query (a server in COPY IN ignores them); Tx is the
	// transaction status of the last ReadyForQuery.
	Outstanding int32
	// Syncs counts the Syncs sent: see StatementSlot.Seg.
	Syncs          uint32
	SyncsAfterExec int32
	Partial        bool
	Tx             byte
	// Track: named statements are rewritten (transaction mode, statement
	// rewriting on); Pooled: transaction mode, session state is tracked.
	Track, Pooled bool

	// Env is what the session shares with every client of its driver: the
	// statement registry, the counters, the bounds in force. The driver points
	// it at a new Env when the configuration changes; never written through.
	Env *Env
	// Hooks, when set, hear of what the driver logs and counts: a pin, a
	// Parse refused by the statement bounds.
	Hooks Hooks

	inj  []byte       // the messages the proxy sends ahead of the client's
	rare *sessionRare // made on first use (x)
	// lastStmt is the start of the client's last statement (leak reports), at
	// most MaxNote bytes: it grows to the longest one noted, so noting is
	// allocation-free once it has, and a client of short statements keeps a
	// short buffer.
	lastStmt []byte
}

// sessionRare is the state of a Session that most clients never need: a
// client of the simple protocol, or of prepared statements alone, does
// without it, and an idle client's session is that much smaller.
type sessionRare struct {
	owed          []*Registration // named Parses taken without a server connection, not answered yet
	owedBuf       []byte          // their Parses when a server connection is attached
	unnamedTag    []byte          // the unnamed statement stands in for a DEALLOCATE: its answer
	unnamedEffect *Effect         // what executing the unnamed statement does to session state
	execFixup     []string        // settings to give their startup values after the next Execute
	portalTag     []byte          // ... and so does the unnamed portal
	limitReached  bool            // a refusal by the statement bounds was reported
}

// x is the session's rare state, made if it has none.
func (s *Session) x() *sessionRare {
	if s.rare == nil {
		s.rare = new(sessionRare)
	}
	return s.rare
}

// Env is what every session of a driver shares (Session.Env).
type Env struct {
	// Registry interns statements for every client; Counters count the work.
	Registry Registry
	Counters *Counters
	// Limits bound the client's statements and the server connection's.
	Limits Limits
}

// Hooks are told of events a driver reports. An interface rather than func
// fields: a driver's session implements it without a closure per client.
type Hooks interface {
	// Pinned: the client is pinned to its server connection for reason.
	Pinned(reason string)
	// StatementLimit: a Parse was refused by the client's statement bounds;
	// first says it is the first time for this client.
	StatementLimit(first bool)
}

// Limits are the bounds a Session enforces.
type Limits struct {
	// MaxPreparedStatements bounds the statements one server connection keeps
	// prepared (least recently used closed first).
	MaxPreparedStatements int
	// MaxClientStatements and MaxClientStatementBytes bound one client's named
	// statements, in number and in bytes of their Parse bodies (the unnamed
	// statement's replay copy included).
	MaxClientStatements     int
	MaxClientStatementBytes int64
	// RefusePins: a statement that would pin the client is refused (the pin
	// policy "refuse").
	RefusePins bool
}

// Registry is the StatementRegistry every client shares, behind the lock its
// user takes.
type Registry interface {
	Refs
	Intern(body []byte) *Statement
}

// Counters count the work of the prepared-statement layer, for every client.
type Counters struct {
	ClientParses, ServerParses, Hits, Evictions, StatementLimit atomic.Uint64
}

// ThrowawayName names a statement the proxy prepares and closes at once.
const ThrowawayName = StatementPrefix + "throwaway"

// Messages the proxy sends on its own.
var (
	// FailParse fails, so that the server skips the rest of the batch as it
	// would after the error the proxy reports in its place. Its text parses
	// and fails only at analysis (an unknown column), which PostgreSQL does
	// after it refuses anything in a failed transaction: there the client gets
	// PostgreSQL's 25P02, as it would for its own message.
	FailParse = wire.AppendParse(nil, StatementPrefix+"fail", "select pgsidecar_failed_on_purpose")
	// noopParseClose closes the statement parsed under ThrowawayName.
	noopParseClose = wire.AppendClose(nil, 'S', ThrowawayName)
	// ParseComplete is a ParseComplete message.
	ParseComplete = []byte{wire.MsgParseComplete, 0, 0, 0, 4}
	// CachedPlanError is PostgreSQL's error for a statement whose result type changed.
	CachedPlanError = wire.AppendError(nil, wire.SeverityError, wire.CodeFeatureNotSupported,
		"cached plan must not change result type", "")
)

// Attached resets the per-server-connection part of the session for a server
// connection whose statements are server.
func (s *Session) Attached(server *ServerStatements) {
	s.Outstanding, s.Partial, s.SyncsAfterExec, s.Tx = 0, false, 0, wire.TxIdle
	s.Q.Reset()
	if server != nil {
		s.Q.Borrow(server.queue) // the queue's buffer stays with the server connection
		server.queue = nil
	}
	s.Server = server
	s.Un.Here = false
	s.Un.Flight = 0
	s.State.Dirty = nil
}

// Register records the client's name for st.
func (s *Session) Register(name string, st *Statement) *Registration {
	return s.Stmts.Register(name, st)
}

// Unregister drops the client's registration rg if it is still current.
func (s *Session) Unregister(rg *Registration) {
	if s.Stmts.Remove(rg) {
		s.Env.Registry.Release(rg.Stmt)
	}
}

// ReleaseAll drops every registration of the client (it left).
func (s *Session) ReleaseAll() {
	s.Stmts.All(func(rg *Registration) { s.Env.Registry.Release(rg.Stmt) })
	s.Stmts.Clear()
}

// Undo takes back registry changes, newest first.
func (s *Session) Undo(ops []UndoOp) {
	TakeBack(ops, &s.Stmts, s.Server, s.Env.Registry)
}

// Room returns nil when the client may register one more statement whose
// Parse body (text and parameter types) has n bytes, else the ErrorResponse
// (54000) it gets: its statements are bounded in number and in bytes.
func (s *Session) Room(n int) []byte {
	if s.Stmts.Len() >= s.Env.Limits.MaxClientStatements {
		s.noteLimit()
		return wire.AppendError(nil, wire.SeverityError, wire.CodeProgramLimitExceeded, fmt.Sprintf(
			"pgsidecar: too many prepared statements: this connection has %d (--max-client-prepared-statements)",
			s.Stmts.Len()), "Close or DEALLOCATE statements that are no longer used.")
	}
	if s.Stmts.Bytes()+int64(len(s.Un.Parse))+int64(n) > s.Env.Limits.MaxClientStatementBytes {
		return s.LimitError(int64(n))
	}
	return nil
}

// TooLong reports whether a Parse of msgLen bytes (its length field) is over
// the statement bytes bound by its text alone: it is refused before it is read.
func (s *Session) TooLong(msgLen int) bool {
	return int64(msgLen) > s.Env.Limits.MaxClientStatementBytes+4
}

// LimitError is the ErrorResponse (54000) of a statement of n bytes over
// MaxClientStatementBytes; it counts the refusal.
func (s *Session) LimitError(n int64) []byte {
	s.noteLimit()
	return wire.AppendError(nil, wire.SeverityError, wire.CodeProgramLimitExceeded, fmt.Sprintf(
		"pgsidecar: prepared statements of this connection would take more than %d bytes with this one of %d bytes (--max-client-prepared-bytes)",
		s.Env.Limits.MaxClientStatementBytes, n), "Close or DEALLOCATE statements that are no longer used.")
}

// noteLimit counts a Parse refused by the statement bounds and reports it.
func (s *Session) noteLimit() {
	s.counters().StatementLimit.Add(1)
	r := s.x()
	first := !r.limitReached
	r.limitReached = true
	if s.Hooks != nil {
		s.Hooks.StatementLimit(first)
	}
}

// AlreadyExists is PostgreSQL's error for a Parse of a name the client has.
func AlreadyExists(name []byte) []byte {
	return wire.AppendError(nil, wire.SeverityError, "42P05",
		fmt.Sprintf("prepared statement \"%s\" already exists", name), "")
}

// FailInstead queues x as the answer to the client's message the proxy does
// not send, and returns what to send in its place (FailParse), so that the
// server skips the rest of the batch as PostgreSQL would after that error.
func (s *Session) FailInstead(x *Undo) []byte {
	s.Q.Push(Pending{Kind: ExpectParse, Action: Replace, Undo: x})
	return FailParse
}

// Prepare makes sure the attached server connection has the statement of rg,
// returning the messages to send for it (valid until the next call) and
// queueing their answers. parse says this is the client's own Parse, which
// gets a ParseComplete either way.
func (s *Session) Prepare(rg *Registration, parse bool) []byte {
	st := rg.Stmt
	bs := s.Server
	inj := s.inj[:0]
	if bs.Dirty {
		bs.All(func(x *Statement) { inj = s.closeOnServer(inj, x) })
		bs.Dirty = false
	}
	gen := st.Gen.Load()
	// Usable: its plans are current, and its Parse was answered or went out after
	// the client's last Sync (an error before that Sync would skip it).
	usable, ok := bs.Use(st, gen, s.Syncs+1)
	if usable {
		s.counters().Hits.Add(1)
		if parse {
			// The server has it: the client's ParseComplete is that of the same
			// text under a throwaway name, closed again at once. A failed
			// transaction refuses that Parse exactly when it would refuse the
			// client's own (25P02 unless it is COMMIT or ROLLBACK, and then the
			// rest of the batch is skipped).
			inj = AppendParse(inj, ThrowawayName, st.Key)
			s.Q.Push(Pending{Kind: ExpectParse, Action: Forward, Undo: &Undo{
				Ops: []UndoOp{{Kind: UndoRegister, Reg: rg}}}})
			inj = append(inj, noopParseClose...)
			s.Q.Push(Pending{Kind: ExpectClose, Action: Swallow})
		}
		s.inj = inj
		return inj
	}
	if ok {
		// An older generation whose plans went stale, or a Parse that an error
		// may still skip: prepare it anew, closed first in case it is there.
		inj = s.closeOnServer(inj, st)
	}
	for bs.Len() >= s.Env.Limits.MaxPreparedStatements {
		inj = s.closeOnServer(inj, bs.Oldest())
		s.counters().Evictions.Add(1)
	}
	inj = append(inj, st.Parse...)
	x := &Undo{Ops: []UndoOp{{Kind: UndoCached, Stmt: st, Seg: s.Syncs + 1}}}
	act := Swallow
	if parse {
		act = Forward
		x.Ops = append(x.Ops, UndoOp{Kind: UndoRegister, Reg: rg})
	} else if rg.Unconfirmed {
		// The client's Parse was answered without a server connection: if this
		// one fails, the name was never valid.
		x.Check = rg
	}
	s.Q.Push(Pending{Kind: ExpectParse, Action: act, Undo: x})
	bs.Add(st, gen, s.Syncs+1)
	s.counters().ServerParses.Add(1)
	s.inj = inj
	return inj
}

// counters returns the Env's Counters.
func (s *Session) counters() *Counters { return s.Env.Counters }

// closeOnServer appends a Close of st to inj, answered to nobody, and forgets
// that the server connection has st (should the Close be skipped, an undo
// remembers that it may).
func (s *Session) closeOnServer(inj []byte, st *Statement) []byte {
	inj = wire.AppendClose(inj, 'S', st.Name)
	s.Q.Push(Pending{Kind: ExpectClose, Action: Swallow, Undo: &Undo{Ops: []UndoOp{{Kind: UndoUncached, Stmt: st}}}})
	s.Server.Forget(st, 0)
	return inj
}

// LocalTag decides whether the proxy answers e itself (DEALLOCATE of
// statements only its registry holds) and sets e.LocalTag. attached says a
// server connection is attached, failed that its transaction has failed.
func (s *Session) LocalTag(e *QueryEffect, attached, failed bool) bool {
	return s.State.LocalDeallocate(e, s.Stmts.Get(e.Name) != nil, attached && failed)
}

// Drop forgets the statements a DEALLOCATE names (all of them for
// DEALLOCATE ALL).
func (s *Session) Drop(e *QueryEffect) {
	if e.First == sqlscan.KindDeallocate {
		if rg := s.Stmts.Get(e.Name); rg != nil {
			s.Unregister(rg)
		}
		return
	}
	var all []*Registration
	s.Stmts.All(func(rg *Registration) { all = append(all, rg) })
	for _, rg := range all {
		s.Unregister(rg)
	}
}

// ApplySQL applies what a forwarded statement does to prepared statements: SQL
// PREPARE pins the client, DEALLOCATE ALL and DISCARD ALL drop its statements
// and may have dropped the proxy's on the server connection.
func (s *Session) ApplySQL(e *QueryEffect) {
	pinned, dropAll := s.State.ApplySQLPrepare(e)
	if pinned != "" && s.Hooks != nil {
		s.Hooks.Pinned(pinned)
	}
	if dropAll {
		s.Drop(&QueryEffect{First: sqlscan.KindDeallocateAll})
		if s.Server != nil {
			s.Server.Dirty = true
		}
	}
}

// Answers reports whether a server message of type t completes a pending
// answer (besides ErrorResponse and ReadyForQuery): the others are forwarded
// as part of an answer.
func Answers(t byte) bool {
	switch t {
	case wire.MsgParseComplete, wire.MsgBindComplete, wire.MsgCloseComplete, wire.MsgRowDescription,
		wire.MsgNoData, wire.MsgEmptyQuery, wire.MsgCommandComplete, wire.MsgPortalSuspended:
		return true
	}
	return false
}

// Answer says what the client gets for a server message of type t other than
// ErrorResponse ([Session.AnswerError]) and ReadyForQuery ([Session.Ready]),
// and takes the pending answer it completes off the queue, recording what the
// answer confirms: a statement now parsed on the server connection, the
// unnamed statement now the client's, a Parse answered without a server
// connection now valid.
func (s *Session) Answer(t byte) (Action, []byte) {
	if !Answers(t) { // DataRow, notices, ParameterStatus, notifications, COPY, ...
		return Forward, nil
	}
	p, act, repl, done := s.Q.Answer(t)
	if !done {
		return act, repl
	}
	if p.Undo != nil && p.Undo.Check != nil {
		p.Undo.Check.Unconfirmed = false // its statement is valid after all
	}
	if p.Unnamed == UnnamedOwn {
		s.Un.Answered(p)
	}
	if p.Kind == ExpectParse && p.Undo != nil && s.Server != nil {
		// The server connection has the statement now, whatever comes after.
		for _, op := range p.Undo.Ops {
			if op.Kind == UndoCached {
				s.Server.Parsed(op.Stmt, op.Seg)
			}
		}
	}
	s.Q.Pop()
	return act, repl
}

// AnswerError says what the client gets for the server's ErrorResponse e. In
// the extended protocol the server then skips everything up to the next Sync,
// so what the failed message and the skipped ones changed in the registries is
// taken back, and their pending answers leave the queue; skippedQueries counts
// the simple Queries among them, for which no ReadyForQuery comes.
func (s *Session) AnswerError(e ServerError) (act Action, repl []byte, skippedQueries int) {
	p := s.Q.Front()
	act, repl, skip := ErrorAnswer(p, e)
	if !skip {
		return act, repl, 0
	}
	if e.CachedPlan && p.Stmt != nil {
		// Its plans are stale on every server connection: each prepares it anew on
		// next use, so the client's next execution works. Other clients that
		// prepared it before get the same error once (stale registration) instead
		// of rows of another type.
		gen := p.Stmt.Gen.Add(1)
		s.Stmts.All(func(rg *Registration) {
			if rg.Stmt == p.Stmt {
				rg.Gen = gen
			}
		})
	}
	if p.Undo != nil && p.Undo.Check != nil && p.Undo.Check.Unconfirmed && !e.NotAboutStatement {
		// The statement of a Parse answered without a server connection does not
		// parse: as with PostgreSQL, the name does not exist. (Refused because the
		// transaction had failed, the statement is still the client's: PostgreSQL
		// parsed it back when the client sent it.)
		s.Unregister(p.Undo.Check)
	}
	s.Un.Failed(p, p.Kind == ExpectClose) // a Close that failed closed nothing
	end := s.Q.SkippedBySync()
	for i := end - 1; i >= 0; i-- {
		e := s.Q.At(i)
		if e.Undo != nil {
			s.Undo(e.Undo.Ops)
		}
		if i > 0 {
			s.Un.Failed(e, true)
		}
		if i > 0 && e.Kind == ExpectQuery {
			skippedQueries++
		}
	}
	for ; end > 0; end-- {
		s.Q.Pop()
	}
	return act, repl, skippedQueries
}

// Ready takes the Sync or Query a ReadyForQuery answers off the queue, with
// the pending answers before it, which got none (the server skipped them):
// what they changed is taken back. swallowedQuery reports that it answered a
// Query the proxy sent on its own.
func (s *Session) Ready() (swallowedQuery bool) {
	for s.Q.Len() > 0 {
		p := s.Q.Front()
		k := p.Kind
		if k != ExpectSync && k != ExpectQuery && p.Undo != nil {
			s.Undo(p.Undo.Ops) // got no answer: skipped
		}
		swallowedQuery = k == ExpectQuery && p.Action == Swallow
		s.Q.Pop()
		if k == ExpectSync || k == ExpectQuery {
			return swallowedQuery
		}
	}
	return false
}

// Sent accounts for a client message of type t sent to the attached server
// connection: the answers it is owed (Parse, Bind, Describe and Close queue
// theirs when they are sent) and where the batch stands. statement reports a
// statement that runs (Query, FunctionCall, Execute).
func (s *Session) Sent(t byte) (statement bool) {
	switch t {
	case wire.MsgQuery, wire.MsgFunctionCall:
		s.Outstanding++
		s.Partial = false
		s.SyncsAfterExec = 0
		s.Q.Push(Pending{Kind: ExpectQuery})
		return true
	case wire.MsgSync:
		s.Outstanding++
		s.Partial = false
		s.SyncsAfterExec++
		s.Syncs++
		s.Q.Push(Pending{Kind: ExpectSync})
	case wire.MsgExecute:
		s.Partial = true
		s.SyncsAfterExec = 0
		s.Q.Push(Pending{Kind: ExpectExecute})
		return true
	case wire.MsgCopyDone, wire.MsgCopyFail:
		// A server in COPY IN ignored the Syncs sent after the Execute that
		// started it.
		s.Outstanding -= s.SyncsAfterExec
		for ; s.SyncsAfterExec > 0; s.SyncsAfterExec-- {
			if b := s.Q.Back(); b != nil && b.Kind == ExpectSync {
				s.Q.PopBack()
			}
		}
	case wire.MsgCopyData, wire.MsgFlush:
	default: // Parse, Bind, Describe, Close
		s.Partial = true
	}
	return false
}

// Between reports whether the client is between statements: nothing is due
// from the server connection and no batch is half sent.
func (s *Session) Between() bool { return s.Outstanding <= 0 && !s.Partial }

// ReadyForQuery accounts for the server's ReadyForQuery with transaction
// status: the batch it ends leaves the queue (see Ready).
func (s *Session) ReadyForQuery(status byte) (swallowedQuery bool) {
	s.Outstanding--
	s.Tx = status
	return s.Ready()
}

// Detached forgets the server connection: it went back to its pool or broke.
func (s *Session) Detached() {
	buf := s.Q.Lend()
	if s.Server != nil && cap(buf) <= 256 { // a burst's queue is not kept
		s.Server.queue = buf
	}
	s.Server = nil
	s.Outstanding, s.Partial = 0, false
}

// Boundary is what the transaction-boundary decision needs to know of the
// client now: sessionMode says it keeps its server connection for the whole
// session, gone that it left.
func (s *Session) Boundary(sessionMode, gone bool) Boundary {
	return Boundary{
		Status:        s.Tx,
		Outstanding:   int(s.Outstanding),
		Partial:       s.Partial,
		SessionMode:   sessionMode,
		Gone:          gone,
		Pinned:        s.State.Pin != "",
		PinListen:     s.State.PinListen,
		PinPermanent:  s.State.PinPermanent,
		DirtySettings: len(s.State.Dirty) > 0,
		PinCheck:      s.State.PinCheck,
	}
}

// SwallowFront reports whether the server message of type t belongs to the
// answer of a Query the proxy sent on its own (a settings replay or fix-up),
// which the client never sees (notifications excepted), and fatal that it is
// the error of a replay the client cannot do without: the server connection
// cannot serve the client.
func (s *Session) SwallowFront(t byte) (swallow, fatal bool) {
	if t == wire.MsgNotification {
		return false, false
	}
	p := s.Q.Front()
	if p == nil || p.Kind != ExpectQuery || p.Action != Swallow {
		return false, false
	}
	return true, t == wire.MsgErrorResponse && p.Undo != nil && p.Undo.Fatal
}
