package engine

import (
	"time"

	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// Activity is what the leak and timeout bookkeeping needs to know of a client
// (docs/design.md sections 7 and 11). The engine keeps no timer: the driver
// asks at the times it chooses, with the current time.
type Activity struct {
	// Attached: the client holds a server connection.
	Attached bool
	// Status is the transaction status of the last ReadyForQuery; Outstanding
	// counts the ReadyForQuery messages still due, Partial says a message to
	// the server is half written.
	Status      byte
	Outstanding int
	Partial     bool
	// Gone: the client has left; Ending: it is already being ended.
	Gone, Ending bool
	// IdleSince is when the client went idle inside its transaction (zero: it
	// is not idle); TxStart when its transaction, or statement outside one,
	// began.
	IdleSince, TxStart time.Time
}

// IdleInTransaction reports whether the client holds a server connection
// while idle inside a transaction, and since when.
func (a Activity) IdleInTransaction() (bool, time.Time) {
	if !a.Attached || a.Outstanding > 0 || a.Partial || a.Status == wire.TxIdle || a.Gone || a.IdleSince.IsZero() {
		return false, time.Time{}
	}
	return true, a.IdleSince
}

// LeakSuspect reports whether the client is a leak suspect at now: idle inside
// a transaction for at least threshold (> 0), not reported yet in this idle
// episode. age is how long it has been idle.
func (a Activity) LeakSuspect(now time.Time, threshold time.Duration, reported bool) (suspect bool, age time.Duration) {
	idle, since := a.IdleInTransaction()
	if !idle || threshold <= 0 {
		return false, 0
	}
	age = now.Sub(since)
	return !reported && age >= threshold, age
}

// IdleTimedOut reports whether --idle-transaction-timeout d (> 0) ends the
// client at now.
func (a Activity) IdleTimedOut(now time.Time, d time.Duration) bool {
	return d > 0 && a.Attached && a.Outstanding <= 0 && !a.Partial && a.Status != wire.TxIdle &&
		!a.IdleSince.IsZero() && now.Sub(a.IdleSince) >= d && !a.Gone && !a.Ending
}

// TransactionTimedOut reports whether --transaction-timeout d (> 0) ends the
// client at now: its transaction, or statement outside one, is older than d.
// age is the transaction's age. Transaction mode only: the caller asks only
// then.
func (a Activity) TransactionTimedOut(now time.Time, d time.Duration) (expired bool, age time.Duration) {
	inTx := a.Attached && (a.Status != wire.TxIdle || a.Outstanding > 0 || a.Partial)
	age = now.Sub(a.TxStart)
	return d > 0 && inTx && !a.Gone && !a.Ending && age >= d, age
}
