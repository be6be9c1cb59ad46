package engine

import "github.com/pgsidecar/pgsidecar/internal/wire"

// MaxErrorInspect bounds the ErrorResponse the engine reads (its length field):
// the errors it acts on are short, and a long one is forwarded as it is.
const MaxErrorInspect = 4096

// ServerError is what the engine reads of an ErrorResponse from a server
// connection.
type ServerError struct {
	// Msg is the whole message, nil when it was not read (too long).
	Msg []byte
	// Fatal: FATAL or PANIC, the server connection ends.
	Fatal bool
	// CachedPlan: "cached plan must not change result type" (0A000).
	CachedPlan bool
	// NotAboutStatement: the message was refused for a reason other than its
	// statement (a failed transaction, the server or the connection).
	NotAboutStatement bool
	// AbortedTx: 25P02, the transaction had failed before.
	AbortedTx bool
}

// ReadServerError reads msg, a whole ErrorResponse (header included), when it
// is short enough for the engine to act on; a longer one yields a zero
// ServerError and is forwarded unchanged.
func ReadServerError(msg []byte) ServerError {
	if len(msg) < wire.HeaderLen || len(msg) > MaxErrorInspect {
		return ServerError{}
	}
	f := wire.ParseError(msg[wire.HeaderLen:])
	return ServerError{
		Msg:               msg,
		Fatal:             f.Severity == wire.SeverityFatal || f.Severity == "PANIC",
		CachedPlan:        f.Code == wire.CodeFeatureNotSupported && f.Message == "cached plan must not change result type",
		NotAboutStatement: NotAboutStatement(f.Code),
		AbortedTx:         f.Code == "25P02",
	}
}

// NotAboutStatement reports whether an error with SQLSTATE code refused a
// message for a reason other than its statement: a failed transaction (25P02)
// or a condition of the server or the connection (classes 08, 53, 57, 58, XX).
func NotAboutStatement(code string) bool {
	if code == "25P02" {
		return true
	}
	if len(code) != 5 {
		return false
	}
	switch code[:2] {
	case "08", "53", "57", "58", "XX":
		return true
	}
	return false
}

// ErrorAnswer is what the client gets for an ErrorResponse that answers p, the
// oldest pending answer (nil when none is due): the error as it is (Forward),
// or a replacement (Replace: a refusal the proxy queued, or the error with the
// statement's server-side name put back to the client's own). skip reports
// whether the error makes the server skip the rest of the batch up to its
// Sync, so that the pending answers up to there are taken back (an extended
// protocol message failed; a simple Query or a Sync has nothing after it).
func ErrorAnswer(p *Pending, e ServerError) (act Action, repl []byte, skip bool) {
	if p != nil && p.Kind == ExpectQuery && p.Action == Replace && p.Undo != nil {
		return Replace, p.Undo.Replace, false // a refused statement
	}
	if p == nil || p.Kind == ExpectSync || p.Kind == ExpectQuery {
		return Forward, nil, false
	}
	switch {
	case p.Action == Replace && (!e.AbortedTx || p.Undo.BeforeAbort):
		return Replace, p.Undo.Replace, true
	case p.Action == Replace:
		// A refusal in a failed transaction: PostgreSQL's 25P02 stands.
	case p.Reg != nil && p.Stmt != nil && e.Msg != nil && p.Reg.Name != p.Stmt.Name:
		// The server knows the statement by the proxy's name: the client gets an
		// error that names it by its own.
		if m := wire.RewriteErrorText(e.Msg, `"`+p.Stmt.Name+`"`, `"`+p.Reg.Name+`"`); m != nil {
			return Replace, m, true
		}
	}
	return Forward, nil, true
}

// SkippedBySync is the number of pending answers, from the oldest, that an
// error in the extended protocol takes away: up to, not including, the next
// Sync (all of them when no Sync is queued).
func (q *AnswerQueue) SkippedBySync() int {
	end := 0
	for end < q.Len() && q.At(end).Kind != ExpectSync {
		end++
	}
	return end
}
