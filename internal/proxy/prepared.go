package proxy

import (
	"sync"

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

// stmtRegistry is the engine's StatementRegistry, shared by every client,
// behind the lock the engine does not take.
type stmtRegistry struct {
	mu sync.Mutex
	r  engine.StatementRegistry
}

// Intern returns the statement of a Parse body, shared by every client.
func (r *stmtRegistry) Intern(body []byte) *engine.Statement {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.r.Intern(body)
}

// Acquire counts one more registration of st; with Release it makes the
// registry the engine's Refs.
func (r *stmtRegistry) Acquire(st *engine.Statement) {
	r.mu.Lock()
	r.r.Acquire(st)
	r.mu.Unlock()
}

// Release drops one registration of st.
func (r *stmtRegistry) Release(st *engine.Statement) {
	r.mu.Lock()
	r.r.Release(st)
	r.mu.Unlock()
}

func (r *stmtRegistry) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.r.Len()
}

// PreparedStats counts the work of the prepared-statement layer.
type PreparedStats struct {
	ClientParses uint64 // named Parse messages from clients
	ServerParses uint64 // Parse messages sent to backends for named statements
	CacheHits    uint64 // statements a backend already had when a client needed them
	Evictions    uint64 // statements closed on a backend to stay within its bound
	Statements   int    // distinct named statements of the connected clients
}
