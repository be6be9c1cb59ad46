package engine

import "github.com/pgsidecar/pgsidecar/internal/wire"

// The answer queue (docs/design.md section 5): every message sent to a server
// connection that gets an answer is queued with what to do with that answer
// (forward it, swallow it because the proxy sent the message, replace it), so
// that the client sees exactly the answers to what it sent, in the protocol's
// order, and registry changes of messages the server skipped after an error are
// undone.

// Expected is a message sent to a backend that gets an answer.
type Expected uint8

const (
	ExpectParse Expected = iota + 1
	ExpectBind
	ExpectDescribeStatement
	ExpectDescribePortal
	ExpectExecute
	ExpectClose
	ExpectSync
	ExpectQuery // a simple Query or FunctionCall: answered up to its ReadyForQuery
)

// AnsweredBy reports whether a server message of type t completes the answer
// to a message of kind k. (A simple Query's answer ends with its
// ReadyForQuery, which the caller counts.)
func (k Expected) AnsweredBy(t byte) bool {
	switch t {
	case wire.MsgParseComplete:
		return k == ExpectParse
	case wire.MsgBindComplete:
		return k == ExpectBind
	case wire.MsgCloseComplete:
		return k == ExpectClose
	case wire.MsgRowDescription, wire.MsgNoData:
		return k == ExpectDescribeStatement || k == ExpectDescribePortal
	case wire.MsgEmptyQuery, wire.MsgCommandComplete, wire.MsgPortalSuspended:
		return k == ExpectExecute
	}
	return false
}

// Answer matches a server message of type t (other than ErrorResponse, see
// ErrorAnswer) against the oldest pending answer p. act and repl say what the
// client gets; done says t completes p, which the caller pops once it has
// recorded what the answer confirms (a statement now parsed, the unnamed
// statement now the client's).
func (q *AnswerQueue) Answer(t byte) (p *Pending, act Action, repl []byte, done bool) {
	p = q.Front()
	if p == nil {
		return nil, Forward, nil, false
	}
	if t == wire.MsgEmptyQuery && p.Kind == ExpectQuery && p.Action == Replace {
		// The empty query that stands in for a statement the proxy answered.
		return p, Replace, p.Undo.Replace, false
	}
	if !p.Kind.AnsweredBy(t) {
		// Part of a simple query's answer (or an answer nothing waits for).
		return p, Forward, nil, false
	}
	if p.Action == Replace {
		repl = p.Undo.Replace
	}
	return p, p.Action, repl, true
}

// Action is what happens to an answer.
type Action uint8

const (
	Forward Action = iota
	Swallow        // the proxy sent the message; the client never did (a Query: all of its answer)
	Replace        // the client gets Pending.Undo.Replace instead
)

// Values of Pending.Unnamed.
const (
	UnnamedOwn    = 1 + iota // the client's Parse or Close of the unnamed statement
	UnnamedReplay            // the proxy's replay of the client's last one
)

// Pending is a message sent to the server connection whose answer is due.
type Pending struct {
	Kind   Expected
	Action Action
	// Unnamed marks a Parse or Close of the unnamed statement: the client's own
	// (UnnamedOwn) or the proxy's replay of its last one (UnnamedReplay).
	// UnnamedParse is the client's Parse (nil: a Close), which becomes its unnamed
	// statement when answered unless a simple query (Epoch) dropped it since.
	Unnamed      uint8
	Epoch        uint32
	UnnamedParse []byte
	// UnnamedBig: a Parse of the unnamed statement too large for the client reader;
	// without UnnamedParse it has no replay copy.
	UnnamedBig bool
	Stmt       *Statement    // the statement a Bind or Describe used (cached-plan errors)
	Reg        *Registration // the client's name for Stmt: errors that name Stmt get it back
	Undo       *Undo         // rarely set
}

// Undo holds what a pending message changed in the registries, taken back
// when the server skips or fails the message, and a replacement answer.
type Undo struct {
	Replace []byte
	Ops     []UndoOp
	// Check is an unconfirmed registration this Parse confirms, or drops when it
	// fails.
	Check *Registration
	// Fatal: an error answering this (swallowed) Query means the client cannot
	// have its session state on this backend.
	Fatal bool
	// BeforeAbort: PostgreSQL reports the replacement error even in a failed
	// transaction (a missing statement), instead of 25P02.
	BeforeAbort bool
}

// UndoKind is what an UndoOp takes back.
type UndoKind uint8

const (
	UndoRegister   UndoKind = iota + 1 // the client's Parse registered Reg: drop it
	UndoUnregister                     // the client's Close dropped Reg: restore it
	UndoCached                         // Stmt was added to the server's statements: drop it
	UndoUncached                       // Stmt was closed on the server: it may still be there
)

// UndoOp is one registry change to take back.
type UndoOp struct {
	Kind UndoKind
	Reg  *Registration
	Stmt *Statement
	// Seg is the StatementSlot.Seg an UndoCached op set: a later Parse of the same
	// statement owns the slot, and it is not dropped.
	Seg uint32
}

// AnswerQueue is a FIFO of pending answers (a ring buffer that grows).
type AnswerQueue struct {
	buf  []Pending
	head int32 // int32s: the queue is bounded far below (maxPending)
	n    int32
}

// Push queues p as the newest pending answer.
func (q *AnswerQueue) Push(p Pending) {
	if int(q.n) == len(q.buf) {
		nb := make([]Pending, max(16, 2*len(q.buf)))
		for i := 0; i < int(q.n); i++ {
			nb[i] = *q.At(i)
		}
		q.buf, q.head = nb, 0
	}
	*q.At(int(q.n)) = p
	q.n++
}

// Front is the oldest pending answer, or nil.
func (q *AnswerQueue) Front() *Pending {
	if q.n == 0 {
		return nil
	}
	return &q.buf[q.head]
}

// At is the i-th oldest pending answer.
func (q *AnswerQueue) At(i int) *Pending { return &q.buf[(int(q.head)+i)&(len(q.buf)-1)] }

// Pop drops the oldest pending answer.
func (q *AnswerQueue) Pop() {
	q.buf[q.head] = Pending{}
	q.head = (q.head + 1) & int32(len(q.buf)-1)
	q.n--
}

// Back is the newest pending answer, or nil.
func (q *AnswerQueue) Back() *Pending {
	if q.n == 0 {
		return nil
	}
	return q.At(int(q.n) - 1)
}

// PopBack drops the newest pending answer.
func (q *AnswerQueue) PopBack() {
	*q.At(int(q.n) - 1) = Pending{}
	q.n--
}

// Len is the number of pending answers.
func (q *AnswerQueue) Len() int { return int(q.n) }

// Trim drops the buffer of an empty queue that grew beyond max entries, so
// that a burst's queue is not kept by an idle client.
func (q *AnswerQueue) Trim(max int) {
	if q.n == 0 && len(q.buf) > max {
		q.buf, q.head = nil, 0
	}
}

// Lend gives the queue's empty ring buffer away (nil when it has none) and
// leaves the queue without one; Borrow takes one (empty, from Lend) back. A
// client's queue lives only while it holds a server connection, so the
// buffer stays with the server connection between its clients: an idle
// client holds none, and a busy one allocates none.
func (q *AnswerQueue) Lend() []Pending {
	q.Reset()
	b := q.buf
	q.buf, q.head = nil, 0
	return b
}

// Borrow takes buf, a ring buffer from Lend, for an empty queue; it keeps its
// own if it has one.
func (q *AnswerQueue) Borrow(buf []Pending) {
	if q.n == 0 && q.buf == nil {
		q.buf, q.head = buf, 0
	}
}

// Reset empties the queue.
func (q *AnswerQueue) Reset() {
	for q.n > 0 {
		q.Pop()
	}
	q.head = 0
}

// Refs counts the registrations of shared statements (the StatementRegistry,
// behind its caller's lock).
type Refs interface {
	Acquire(*Statement)
	Release(*Statement)
}

// TakeBack undoes ops, newest first: what messages the server skipped or
// failed changed in the client's statements, in the server connection's (nil
// when none is attached) and in the shared counts.
func TakeBack(ops []UndoOp, client *ClientStatements, server *ServerStatements, refs Refs) {
	for i := len(ops) - 1; i >= 0; i-- {
		op := ops[i]
		switch op.Kind {
		case UndoRegister:
			if client.Remove(op.Reg) {
				refs.Release(op.Reg.Stmt)
			}
		case UndoUnregister:
			if client.Restore(op.Reg) {
				refs.Acquire(op.Reg.Stmt)
			}
		case UndoCached:
			if server != nil {
				server.Forget(op.Stmt, op.Seg)
			}
		case UndoUncached:
			if server != nil {
				// Maybe still there: remembered as stale, closed before next use.
				server.MarkStale(op.Stmt)
			}
		}
	}
}
