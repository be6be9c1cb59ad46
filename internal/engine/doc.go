// Package engine is the socket-free protocol engine of docs/design.md section
// 16, shared by the proxy's two drivers (goroutines and the event loop). It
// never touches a socket, a goroutine, a timer or a lock: it takes statement
// text, messages and the current time, and returns decisions and bytes to send.
//
// A client's [Session] holds its protocol state and says what each client
// message becomes on the server connection (a [Send]: bytes ahead, from where
// the message goes on, bytes after; client.go) and what the client gets for
// each server answer (Answer, AnswerError, ReadyForQuery, SwallowFront), with
// the facts of the transaction-boundary decision (Boundary, [Decide]).
//
// Its parts: taking back what skipped or failed messages changed in the
// statement registries ([TakeBack]); the client's [Unnamed] statement (kept for replay where its
// Bind lands); what the client gets for each server answer
// ([AnswerQueue.Answer]) and for a server error ([ErrorAnswer] on a
// [ServerError]) and how much of the batch it takes back; the leak and timeout bookkeeping on a client's [Activity]
// (idle in transaction, leak suspect, idle-transaction and transaction
// timeouts, at a time the caller gives); the client's session [State] (settings it wants, what changed,
// what pins it; replay, fix-up and probe queries and their answers); the
// transaction-boundary decision ([Decide] on a [Boundary]:
// keep reading, probe session state, stay attached, release); the [AnswerQueue] of [Pending] answers a server connection
// owes, each with its [Action] and what to [Undo] when the server skips it;
// [Effect], what a statement does to session state (settings to
// read back, resets, what pins a client, refusals); [QueryEffect] and
// [ClassifyQuery], what a simple Query does to prepared statements; the
// [StatementRegistry] that interns statements ([Statement]), a client's [Registration] and
// its [ClientStatements] with their byte count, a server connection's
// [ServerStatements]); and the settings tracker's pieces
// ([Settings], [ParseOptions], [SettingsKey], quoting for replay queries).
//
// The [StatementRegistry] is shared by every client: it takes no lock itself,
// and its caller serialises its use (Statement.Refs is counted under that
// lock).
//
// It imports internal/wire (framing, the messages it writes), internal/sqlscan
// (statement classification) and the standard library, never internal/proxy,
// internal/pool, net, sync or time's timers.
package engine
