package proxy

import (
	"bytes"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/pgsidecar/pgsidecar/internal/engine"
)

// Named prepared statements in transaction mode (docs/design.md section 5).
//
// A client's named statements live in its registry (session.stmts: client name ->
// *stmt). Every distinct statement (query text and parameter types) is one *stmt
// with a server-side name of its own, shared by all clients that prepared it. Each
// backend remembers which statements it has prepared (backendStmts, bounded, least
// recently used evicted with a Close). Before a Bind or Describe reaches a backend
// that lacks the statement, the proxy sends the Parse first and drops its
// ParseComplete; the Bind or Describe goes out with the server-side name.
//
// Every message sent to a backend that gets an answer is queued (respQueue) with
// what to do with that answer: forward it, drop it (a message the proxy added), or
// replace it. The reader of the backend walks the queue with the answers, so that
// the client sees exactly the answers to what it sent, in the protocol's order, and
// registry changes of messages the backend skipped after an error are undone.

// stmtRegistry interns statements: one *stmt per distinct query text and parameter
// types among the clients connected now.
type stmtRegistry struct {
	mu    sync.Mutex
	byKey map[string]*engine.Statement
	seq   uint64
}

// intern returns the statement for the Parse body after the name, counting one
// more registration.
func (r *stmtRegistry) intern(body []byte) *engine.Statement {
	r.mu.Lock()
	defer r.mu.Unlock()
	if st, ok := r.byKey[string(body)]; ok {
		st.Refs++
		return st
	}
	if r.byKey == nil {
		r.byKey = make(map[string]*engine.Statement)
	}
	r.seq++
	st := &engine.Statement{Name: engine.StatementPrefix + strconv.FormatUint(r.seq, 36), Key: string(body), Refs: 1}
	if i := bytes.IndexByte(body, 0); i >= 0 {
		if e := engine.ClassifyQuery(body[:i]).State; e.Changes() {
			st.Effect = &e
		}
	}
	st.Gen.Store(1)
	st.Parse = engine.AppendParse(make([]byte, 0, 5+len(st.Name)+1+len(body)), st.Name, st.Key)
	r.byKey[st.Key] = st
	return st
}

// acquire counts one more registration of st (an undone Close).
func (r *stmtRegistry) acquire(st *engine.Statement) {
	r.mu.Lock()
	st.Refs++
	if _, ok := r.byKey[st.Key]; !ok {
		r.byKey[st.Key] = st
	}
	r.mu.Unlock()
}

// release drops one registration; a statement no client has any more leaves the
// registry (backends keep it until evicted).
func (r *stmtRegistry) release(st *engine.Statement) {
	r.mu.Lock()
	st.Refs--
	if st.Refs <= 0 && r.byKey[st.Key] == st {
		delete(r.byKey, st.Key)
	}
	r.mu.Unlock()
}

// len is the number of interned statements.
func (r *stmtRegistry) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.byKey)
}

// respKind is a message sent to a backend that gets an answer.
type respKind uint8

const (
	rkParse respKind = iota + 1
	rkBind
	rkDescribeStmt
	rkDescribePortal
	rkExecute
	rkClose
	rkSync
	rkQuery // a simple Query or FunctionCall: answered up to its ReadyForQuery
)

// respAction is what happens to an answer.
type respAction uint8

const (
	actForward respAction = iota
	actSwallow            // the proxy sent the message; the client never did (a Query: all of its answer)
	actReplace            // the client gets pending.x.replace instead
)

const (
	unnamedOwn    = 1 + iota // the client's Parse or Close of the unnamed statement
	unnamedReplay            // the proxy's replay of the client's last one
)

// pending is a message sent to the backend whose answer is due.
type pending struct {
	kind   respKind
	action respAction
	// unnamed marks a Parse or Close of the unnamed statement: the client's own
	// (unnamedOwn) or the proxy's replay of its last one (unnamedReplay). ubuf is
	// the client's Parse (nil: a Close), which becomes its unnamed statement when
	// answered unless a simple query (epoch) dropped it since.
	unnamed uint8
	epoch   uint32
	ubuf    []byte
	// ubig: a Parse of the unnamed statement too large for the client reader;
	// without ubuf it has no replay copy (see sendParse).
	ubig bool
	st   *engine.Statement    // the statement a Bind or Describe used (cached-plan errors)
	rg   *engine.Registration // the client's name for st: errors that name st get it back
	x    *pendingUndo         // rarely set
}

// pendingUndo holds what a pending message changed in the registries, taken back
// when the backend skips or fails the message, and a replacement answer.
type pendingUndo struct {
	replace []byte
	ops     []undoOp
	// check is an unconfirmed registration this Parse confirms, or drops when it
	// fails.
	check *engine.Registration
	// fatal: an error answering this (swallowed) Query means the client cannot
	// have its session state on this backend.
	fatal bool
	// beforeAbort: PostgreSQL reports the replacement error even in a failed
	// transaction (a missing statement), instead of 25P02.
	beforeAbort bool
}

type undoKind uint8

const (
	undoRegister   undoKind = iota + 1 // the client's Parse registered rg: drop it
	undoUnregister                     // the client's Close dropped rg: restore it
	undoCached                         // st was added to the backend's statements: drop it
	undoUncached                       // st was closed on the backend: it may still be there
)

type undoOp struct {
	kind undoKind
	rg   *engine.Registration
	st   *engine.Statement
	// seg is the stmtSlot.seg an undoCached op set: a later Parse of the same
	// statement owns the slot, and it is not dropped.
	seg uint32
}

// respQueue is a FIFO of pending answers (a ring buffer that grows).
type respQueue struct {
	buf  []pending
	head int
	n    int
}

func (q *respQueue) push(p pending) {
	if q.n == len(q.buf) {
		nb := make([]pending, max(16, 2*len(q.buf)))
		for i := 0; i < q.n; i++ {
			nb[i] = q.buf[(q.head+i)&(len(q.buf)-1)]
		}
		q.buf, q.head = nb, 0
	}
	q.buf[(q.head+q.n)&(len(q.buf)-1)] = p
	q.n++
}

// front is the oldest pending answer, or nil.
func (q *respQueue) front() *pending {
	if q.n == 0 {
		return nil
	}
	return &q.buf[q.head]
}

// at is the i-th oldest pending answer.
func (q *respQueue) at(i int) *pending { return &q.buf[(q.head+i)&(len(q.buf)-1)] }

func (q *respQueue) pop() {
	q.buf[q.head] = pending{}
	q.head = (q.head + 1) & (len(q.buf) - 1)
	q.n--
}

// back is the newest pending answer, or nil.
func (q *respQueue) back() *pending {
	if q.n == 0 {
		return nil
	}
	return q.at(q.n - 1)
}

func (q *respQueue) popBack() {
	*q.at(q.n - 1) = pending{}
	q.n--
}

func (q *respQueue) reset() {
	for q.n > 0 {
		q.pop()
	}
	q.head = 0
}

// PreparedStats counts the work of the prepared-statement layer.
type PreparedStats struct {
	ClientParses uint64 // named Parse messages from clients
	ServerParses uint64 // Parse messages sent to backends for named statements
	CacheHits    uint64 // statements a backend already had when a client needed them
	Evictions    uint64 // statements closed on a backend to stay within its bound
	Statements   int    // distinct named statements of the connected clients
}

type preparedCounters struct {
	clientParses, serverParses, hits, evictions atomic.Uint64
}
