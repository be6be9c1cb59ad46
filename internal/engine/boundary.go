package engine

import "github.com/pgsidecar/pgsidecar/internal/wire"

// Boundary is what the engine knows of a client when its server connection
// sends ReadyForQuery: the facts the transaction-boundary decision rests on.
type Boundary struct {
	// Status is the ReadyForQuery's transaction status: wire.TxIdle,
	// wire.TxActive or wire.TxFailed.
	Status byte
	// Outstanding counts the ReadyForQuery messages still due (more batches
	// were sent); Partial says a message to the server is half written.
	Outstanding int
	Partial     bool
	// SessionMode: the client keeps its server connection until it leaves.
	SessionMode bool
	// Gone: the client has left; its server connection only has to be cleaned.
	Gone bool
	// Pinned: something (LISTEN, an advisory lock, a temporary table, ...) ties
	// the client to this server connection; PinListen says one of them is
	// LISTEN, PinPermanent that nothing can undo it (LOAD).
	Pinned, PinListen, PinPermanent bool
	// DirtySettings: settings changed in the transaction and not read back;
	// PinCheck: a statement may have removed what pins the client.
	DirtySettings bool
	PinCheck      bool
}

// Decision is what happens at a ReadyForQuery.
type Decision uint8

const (
	// KeepReading: more answers are due; nothing is decided yet.
	KeepReading Decision = iota
	// Probe: ask the server connection about session state (settings to read
	// back, whether anything still pins the client), then decide again.
	Probe
	// Stay: the client keeps its server connection (a transaction is open, or
	// it is pinned or in session mode); nothing more is read from the server
	// until the client sends again.
	Stay
	// StayListening is Stay where the server may send on its own while the
	// client is idle (notifications of a LISTEN, session mode): the reader of
	// the server connection goes on.
	StayListening
	// Release: the client is at a transaction boundary with nothing that ties
	// it to the server connection, which goes back to its pool.
	Release
)

// String names the decision.
func (d Decision) String() string {
	switch d {
	case KeepReading:
		return "keep-reading"
	case Probe:
		return "probe"
	case Stay:
		return "stay"
	case StayListening:
		return "stay-listening"
	case Release:
		return "release"
	}
	return "Decision(?)"
}

// ProbeDue reports whether the server connection must be asked about session
// state before the client can be released or unpinned: in transaction mode,
// when settings changed or a statement may have removed what pins the client.
func (b Boundary) ProbeDue() bool {
	return !b.Gone && !b.SessionMode && (b.DirtySettings || (b.PinCheck && !b.PinPermanent))
}

// Decide is the transaction-boundary decision of transaction pooling
// (docs/design.md section 4).
func Decide(b Boundary) Decision {
	switch {
	case b.Outstanding > 0 || b.Partial:
		return KeepReading
	case b.Status == wire.TxIdle && b.ProbeDue():
		return Probe
	}
	session := b.SessionMode && !b.Gone
	if b.Status != wire.TxIdle || session || (b.Pinned && !b.Gone) {
		if session || (b.PinListen && b.Status == wire.TxIdle && !b.Gone) {
			return StayListening
		}
		return Stay
	}
	return Release
}
