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
