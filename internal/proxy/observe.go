package proxy

import (
	"time"

	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// Observer receives the hot path's events for metrics. internal/proxy never
// imports Prometheus: internal/metrics implements this. Implementations must be
// cheap and never block.
type Observer interface {
	// Client returns the event sink of one client, resolved once at login.
	Client(database, user, application string) ClientObserver
}

// ClientObserver receives one client's events.
type ClientObserver interface {
	// Waited: the client got a backend after waiting d (0: one was free).
	Waited(d time.Duration)
	// TransactionDone: the client released a backend it held for hold.
	TransactionDone(hold time.Duration)
	// IdleTransactionDone: an idle-in-transaction episode of d ended.
	IdleTransactionDone(d time.Duration)
	// Query: the client sent a simple Query or an Execute.
	Query()
}

type nopObserver struct{}

func (nopObserver) Client(string, string, string) ClientObserver { return nopObserver{} }
func (nopObserver) Waited(time.Duration)                         {}
func (nopObserver) TransactionDone(time.Duration)                {}
func (nopObserver) IdleTransactionDone(time.Duration)            {}
func (nopObserver) Query()                                       {}

// Client states, as pgsidecar_clients{state} reports them.
const (
	StateIdle                     = "idle"
	StateWaiting                  = "waiting"
	StateActive                   = "active"
	StateIdleInTransaction        = "idle_in_transaction"
	StateIdleInTransactionAborted = "idle_in_transaction_aborted"
)

// ClientCount is the number of clients of a route in one state.
type ClientCount struct {
	Database, User, State string
	N                     int
}

// Clients counts the logged-in clients by route and state, now.
func (s *Server) Clients() []ClientCount {
	type k struct{ db, user, state string }
	m := map[k]int{}
	for _, ss := range s.snapshot() {
		ss.mu.Lock()
		st := ss.stateLocked()
		ss.mu.Unlock()
		m[k{ss.db, ss.user, st}]++
	}
	out := make([]ClientCount, 0, len(m))
	for key, n := range m {
		out = append(out, ClientCount{Database: key.db, User: key.user, State: key.state, N: n})
	}
	return out
}

// PinnedServers counts the backends held by pinned clients, by route.
func (s *Server) PinnedServers() map[[2]string]int {
	out := map[[2]string]int{}
	for _, ss := range s.snapshot() {
		ss.mu.Lock()
		if ss.be != nil && ss.e.State.Pin != "" {
			out[[2]string{ss.db, ss.user}]++
		}
		ss.mu.Unlock()
	}
	return out
}

// stateLocked is the client's state. ss.mu is held.
func (ss *session) stateLocked() string {
	switch {
	case ss.waiting:
		return StateWaiting
	case ss.be == nil:
		return StateIdle
	case ss.e.Outstanding > 0 || ss.e.Partial:
		return StateActive
	case ss.e.Tx == wire.TxFailed:
		return StateIdleInTransactionAborted
	case ss.e.Tx != wire.TxIdle:
		return StateIdleInTransaction
	}
	return StateIdle // attached between batches (session mode, pinned)
}
