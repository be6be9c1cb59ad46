// Package sqlscan owns the SQL statement scanner and classifier: given the
// text of a Query or Parse message, it splits it into statements and says what
// each does to session state (SET, RESET, LISTEN, PREPARE, DEALLOCATE,
// advisory locks, temporary tables, ...; see Kind), which the proxy tracks and
// replays or pins the client for (docs/design.md section 6).
//
// It reads the text alone, allocates nothing per statement in steady state, and
// imports only the standard library: it knows no socket and no message framing
// (internal/wire's) and takes no decision (the proxy's).
package sqlscan
