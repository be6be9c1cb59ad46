package sqlscan

// This file is the statement classifier: the keyword tables and the grammar
// of every statement kind that changes session state. It is long because the
// kinds are many and each is a small, self-contained rule; they share the
// scanner's state and are read side by side when one changes.

import (
	"bytes"
	"strconv"
	"unicode/utf8"
)

// Kind says how a statement affects session state: state that outlives the
// transaction the statement runs in, which the proxy must either track and
// replay on another backend or pin the client to its backend for.
//
// A Kind comes from the statement's text alone. The server may still reject the
// statement, and a change made inside a transaction that rolls back is undone;
// the caller decides what to do with a Kind once it sees the outcome.
//
// Not detected, because the text does not show it: statements run inside
// function bodies, DO blocks, procedures, triggers, rules or dynamic SQL; objects
// created unqualified while pg_temp is first in search_path; session-level
// functions other than set_config and the advisory-lock family (setseed,
// dblink_connect, ...). Calls to the recognised functions are reported wherever
// they appear as calls (also inside a view definition or a PREPARE/DECLARE body,
// where they run later or never), erring towards pinning.
type Kind uint8

// The kinds. Statement documents which fields each one fills.
const (
	// KindOther cannot change session state: SELECT, INSERT, UPDATE, DELETE,
	// CREATE TABLE, SHOW, SAVEPOINT, ROLLBACK TO SAVEPOINT, PREPARE TRANSACTION,
	// COMMIT PREPARED, ROLLBACK PREPARED, a DECLARE without WITH HOLD, a
	// CREATE TEMP TABLE ... ON COMMIT DROP (gone when its transaction ends), ...
	KindOther Kind = iota
	// KindBegin is BEGIN or START TRANSACTION.
	KindBegin
	// KindCommit is COMMIT or END (also COMMIT AND CHAIN, which opens the next
	// transaction at once). COMMIT PREPARED is KindOther: it finishes a prepared
	// transaction and is not allowed inside a transaction block.
	KindCommit
	// KindRollback is ROLLBACK or ABORT (also AND CHAIN). ROLLBACK TO SAVEPOINT
	// and ROLLBACK PREPARED are KindOther.
	KindRollback
	// KindSet is a session-level SET: SET [SESSION] name {TO|=} value|DEFAULT,
	// SET name FROM CURRENT, SET TIME ZONE, SET ROLE, SET SESSION AUTHORIZATION,
	// SET SCHEMA, SET NAMES, SET XML OPTION, and SET SESSION CHARACTERISTICS AS
	// TRANSACTION (Name "session_characteristics": it changes the session's
	// default_transaction_* settings, so it outlives the transaction).
	KindSet
	// KindSetLocal is SET LOCAL (same Name/Value as KindSet, IsLocal set), and
	// the transaction-scoped SET TRANSACTION (Name "transaction") and
	// SET CONSTRAINTS (Name "constraints").
	KindSetLocal
	// KindReset is RESET name, RESET TIME ZONE, RESET SESSION AUTHORIZATION,
	// RESET TRANSACTION ISOLATION LEVEL (Name "transaction_isolation").
	KindReset
	// KindResetAll is RESET ALL.
	KindResetAll
	// KindSetConfig is a call of set_config(name, value, is_local) anywhere in a
	// statement.
	KindSetConfig
	// KindPrepare is SQL PREPARE name [(types)] AS statement.
	KindPrepare
	// KindExecute is SQL EXECUTE name [(args)], also inside EXPLAIN EXECUTE and
	// CREATE TABLE ... AS EXECUTE.
	KindExecute
	// KindDeallocate is DEALLOCATE [PREPARE] name.
	KindDeallocate
	// KindDeallocateAll is DEALLOCATE [PREPARE] ALL.
	KindDeallocateAll
	// KindDiscardAll is DISCARD ALL.
	KindDiscardAll
	// KindDiscardPlans is DISCARD PLANS.
	KindDiscardPlans
	// KindDiscardSequences is DISCARD SEQUENCES.
	KindDiscardSequences
	// KindDiscardTemp is DISCARD TEMP or DISCARD TEMPORARY.
	KindDiscardTemp
	// KindListen is LISTEN channel.
	KindListen
	// KindUnlisten is UNLISTEN channel.
	KindUnlisten
	// KindUnlistenAll is UNLISTEN *.
	KindUnlistenAll
	// KindDeclareHold is DECLARE name ... CURSOR WITH HOLD FOR ...; a cursor
	// without WITH HOLD ends with its transaction and is KindOther.
	KindDeclareHold
	// KindCloseCursor is CLOSE name.
	KindCloseCursor
	// KindCloseAll is CLOSE ALL.
	KindCloseAll
	// KindTempTable creates a temporary object: CREATE [GLOBAL|LOCAL]
	// TEMP|TEMPORARY TABLE/SEQUENCE/VIEW, any CREATE naming pg_temp.x,
	// SELECT ... INTO [TABLE] TEMP|TEMPORARY|pg_temp.x (not with ON COMMIT DROP).
	KindTempTable
	// KindAdvisoryLock is a call of pg_advisory_lock, pg_advisory_lock_shared,
	// pg_try_advisory_lock or pg_try_advisory_lock_shared (session-level locks;
	// the pg_advisory_xact_* variants end with the transaction and are not
	// reported).
	KindAdvisoryLock
	// KindAdvisoryUnlock is a call of pg_advisory_unlock,
	// pg_advisory_unlock_shared or pg_advisory_unlock_all.
	KindAdvisoryUnlock
	// KindLoad is LOAD 'library'.
	KindLoad

	numKinds
)

var kindNames = [numKinds]string{
	"Other", "Begin", "Commit", "Rollback", "Set", "SetLocal", "Reset", "ResetAll",
	"SetConfig", "Prepare", "Execute", "Deallocate", "DeallocateAll", "DiscardAll",
	"DiscardPlans", "DiscardSequences", "DiscardTemp", "Listen", "Unlisten",
	"UnlistenAll", "DeclareHold", "CloseCursor", "CloseAll", "TempTable",
	"AdvisoryLock", "AdvisoryUnlock", "Load",
}

// String returns the kind's name without the "Kind" prefix, e.g. "SetLocal".
func (k Kind) String() string {
	if k < numKinds {
		return kindNames[k]
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Statement is one session-affecting construct of a query string, or a whole
// statement of kind KindOther when it has none.
//
// Start and End are byte offsets in the query: q[Start:End] is the statement's
// text from its first token to its last, without surrounding whitespace and
// comments and without the terminating ';'. Every record of one statement
// carries the statement's bounds.
//
// Name and Value by Kind (other kinds leave them empty):
//   - KindSet, KindSetLocal: Name is the setting's name lowercased ("timezone"
//     for TIME ZONE, "role", "session_authorization", "search_path" for
//     SCHEMA, "client_encoding" for NAMES, "xmloption", dotted custom names as
//     "a.b"); Value is the SQL text after TO/=/the construct's words, as
//     written (quotes included), e.g. `'UTC'` or `"$user", public`. Default is
//     set, and Value empty, for DEFAULT (and TIME ZONE LOCAL, NAMES without a
//     value). SET name FROM CURRENT has Value "" and Default false.
//     Name "" means the statement starts with SET but was not understood
//     (most likely a syntax error): the caller should treat its effect as
//     unknown. IsLocal is set for KindSetLocal.
//   - KindReset: Name as for KindSet ("" when not understood).
//   - KindSetConfig: Name (lowercased) and Value (the literal's content, escapes
//     resolved) when the first two arguments are string literals, and IsLocal
//     from the third when it is a literal boolean. When any argument is not a
//     literal, Name, Value are "" and IsLocal false: the caller must pin.
//   - KindPrepare: Name; Value is the prepared statement's text after AS.
//   - KindExecute, KindDeallocate, KindListen, KindUnlisten, KindDeclareHold,
//     KindCloseCursor: Name is the identifier as the server reads it (unquoted
//     ASCII letters lowercased, quoted names kept as written, truncated to 63
//     bytes).
//   - KindAdvisoryLock, KindAdvisoryUnlock: Name is the function's name (e.g.
//     "pg_try_advisory_lock_shared", "pg_advisory_unlock_all"); Value is the
//     argument text as written, e.g. "42" or "$1, $2".
//   - KindLoad: Name is the library string.
type Statement struct {
	Kind       Kind
	Start, End int
	Name       string
	Value      string
	IsLocal    bool
	Default    bool
}

// Scanner walks the statements of a simple-query string: several statements
// separated by ';'. It reads text the way PostgreSQL's lexer does: comments
// (nested /* */), '...' and E'...' strings (also continued across a newline),
// "quoted identifiers", U& forms, $tag$ quoting ($1 is a parameter), and a ';'
// inside parentheses or inside a CREATE FUNCTION ... BEGIN ATOMIC ... END body
// does not end a statement. It assumes standard_conforming_strings is on (the
// default): a session that turns it off (a KindSet of that name) should be
// pinned, since backslashes then escape quotes in '...' strings too. Bytes are
// read as ASCII-compatible, which client encodings such as SJIS or BIG5 are
// not inside E'...' strings.
//
// Next yields each non-empty statement at least once: once per
// session-affecting construct in it, in text order (the statement's own kind
// first, then the KindExecute of CREATE TABLE ... AS EXECUTE, then each call of
// set_config or an advisory-lock function), or once with KindOther when it
// has none. So
// `SELECT pg_advisory_lock(1), set_config('a', 'b', false)` yields
// KindAdvisoryLock then KindSetConfig, both with the same Start and End.
//
// A Scanner does not allocate, except for the Name and Value strings of
// session-affecting records. The zero Scanner has no statements.
type Scanner struct {
	q          []byte
	pos        int // where the next statement is looked for
	start, end int // the current statement's bounds
	cur        Statement
	exec       string // a pending KindExecute record's Name (CREATE TABLE ... AS EXECUTE)
	hasExec    bool
	callPos    int  // where to look for the statement's next call; -1 when done
	open       bool // the input ended inside a literal, comment, parenthesis or BEGIN ATOMIC
}

// Reset starts scanning q. The Scanner keeps q: do not modify it until done.
func (s *Scanner) Reset(q []byte) {
	*s = Scanner{q: q, callPos: -1}
}

// Next advances to the next record. Empty statements (";;", only comments) are
// skipped. It returns false at the end of the query.
func (s *Scanner) Next() bool {
	if s.hasExec {
		s.hasExec = false
		s.cur = Statement{Kind: KindExecute, Start: s.start, End: s.end, Name: s.exec}
		return true
	}
	if s.callPos >= 0 && s.nextCall() {
		return true
	}
	if !s.scan() {
		return false
	}
	// The head record is reported unless it is KindOther and calls follow.
	if s.cur.Kind == KindOther && s.callPos >= 0 && !s.nextCall() {
		s.cur = Statement{Start: s.start, End: s.end}
	}
	return true
}

// Statement returns the record Next advanced to.
func (s *Scanner) Statement() Statement { return s.cur }

// ---------------------------------------------------------------------------
// Lexer

type tokKind uint8

const (
	tEOF    tokKind = iota
	tIdent          // unquoted identifier or keyword
	tQIdent         // "quoted" or U&"quoted" identifier
	tString         // '..', E'..', N'..', B'..', X'..', U&'..', $tag$..$tag$
	tNumber         // numeric constant
	tParam          // $1
	tOp             // any other single byte
)

const (
	cSpace = 1 << iota
	cIdentStart
	cIdentCont
	cDigit
	cDolqCont
	cHex
	cPlainOp // a one-byte token that never starts a literal, comment or number
)

var charClass = func() (t [256]uint8) {
	for _, c := range []byte(" \t\n\r\f\v") {
		t[c] |= cSpace
	}
	for c := 0; c < 256; c++ {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_', c >= 0x80:
			t[c] |= cIdentStart | cIdentCont | cDolqCont
		case c >= '0' && c <= '9':
			t[c] |= cDigit | cIdentCont | cDolqCont
		case c == '$':
			t[c] |= cIdentCont
		}
		if c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' {
			t[c] |= cHex
		}
		if c > ' ' && c < 0x7f && t[c]&(cIdentCont|cSpace) == 0 && !bytes.ContainsRune([]byte("'\"$-/."), rune(c)) {
			t[c] |= cPlainOp
		}
	}
	return t
}()

// lexSQL returns the token starting at or after i (skipping whitespace and
// comments) and its bounds. open reports that the token, or a comment before
// the end of input, is not terminated.
func lexSQL(q []byte, i int) (k tokKind, ts, te int, open bool) {
	n := len(q)
	for i < n {
		c := q[i]
		if charClass[c]&cSpace != 0 {
			i++
			continue
		}
		if c == '-' && i+1 < n && q[i+1] == '-' {
			j := i + 2
			for j < n && q[j] != '\n' && q[j] != '\r' {
				j++
			}
			if j >= n {
				return tEOF, n, n, true
			}
			i = j + 1
			continue
		}
		if c == '/' && i+1 < n && q[i+1] == '*' {
			depth := 1
			j := i + 2
			for j < n && depth > 0 {
				switch {
				case q[j] == '*' && j+1 < n && q[j+1] == '/':
					depth--
					j += 2
				case q[j] == '/' && j+1 < n && q[j+1] == '*':
					depth++
					j += 2
				default:
					j++
				}
			}
			if depth > 0 {
				return tEOF, n, n, true
			}
			i = j
			continue
		}
		break
	}
	if i >= n {
		return tEOF, n, n, false
	}
	c := q[i]
	switch {
	case charClass[c]&cIdentStart != 0:
		if i+1 < n {
			switch q[i+1] {
			case '\'':
				switch c {
				case 'e', 'E':
					te, open = scanString(q, i+2, true)
					return tString, i, te, open
				case 'b', 'B', 'x', 'X', 'n', 'N':
					te, open = scanString(q, i+2, false)
					return tString, i, te, open
				}
			case '&':
				if (c == 'u' || c == 'U') && i+2 < n {
					switch q[i+2] {
					case '\'':
						te, open = scanString(q, i+3, false)
						return tString, i, te, open
					case '"':
						te, open = scanQIdent(q, i+3)
						return tQIdent, i, te, open
					}
				}
			}
		}
		j := i + 1
		for j < n && charClass[q[j]]&cIdentCont != 0 {
			j++
		}
		return tIdent, i, j, false
	case c == '\'':
		te, open = scanString(q, i+1, false)
		return tString, i, te, open
	case c == '"':
		te, open = scanQIdent(q, i+1)
		return tQIdent, i, te, open
	case c == '$':
		j := i + 1
		if j < n && charClass[q[j]]&cDigit != 0 {
			for j < n && charClass[q[j]]&cDigit != 0 {
				j++
			}
			return tParam, i, j, false
		}
		if j < n && charClass[q[j]]&cIdentStart != 0 {
			for j < n && charClass[q[j]]&cDolqCont != 0 {
				j++
			}
		}
		if j < n && q[j] == '$' {
			tag := q[i : j+1]
			k := bytes.Index(q[j+1:], tag)
			if k < 0 {
				return tString, i, n, true
			}
			return tString, i, j + 1 + k + len(tag), false
		}
		return tOp, i, i + 1, false
	case charClass[c]&cDigit != 0 || c == '.' && i+1 < n && charClass[q[i+1]]&cDigit != 0:
		return tNumber, i, scanNumber(q, i+1), false
	}
	return tOp, i, i + 1, false
}

// scanNumber returns the end of a numeric constant whose first byte is at i-1.
func scanNumber(q []byte, i int) int {
	n := len(q)
	for i < n && (charClass[q[i]]&cDigit != 0 || q[i] == '_' || q[i] == '.') {
		i++
	}
	if i < n && (q[i] == 'e' || q[i] == 'E') {
		j := i + 1
		if j < n && (q[j] == '+' || q[j] == '-') {
			j++
		}
		if j < n && charClass[q[j]]&cDigit != 0 {
			for j < n && charClass[q[j]]&cDigit != 0 {
				j++
			}
			i = j
		}
	}
	return i
}

// scanString scans a quoted string's body from i (just past the opening
// quote) and returns the offset just past the closing quote. esc selects E'...'
// backslash escapes. Like PostgreSQL it continues the literal across
// whitespace containing a newline followed by another quote.
func scanString(q []byte, i int, esc bool) (int, bool) {
	n := len(q)
	for {
		if esc {
			for i < n {
				c := q[i]
				if c == '\\' {
					i += 2
					continue
				}
				if c == '\'' {
					break
				}
				i++
			}
		} else if j := bytes.IndexByte(q[i:], '\''); j >= 0 {
			i += j
		} else {
			i = n
		}
		if i >= n {
			return n, true
		}
		if i+1 < n && q[i+1] == '\'' {
			i += 2
			continue
		}
		if j, ok := continuation(q, i+1); ok {
			i = j
			continue
		}
		return i + 1, false
	}
}

// continuation reports whether a string literal that closed just before p
// continues: whitespace (and -- comments) including a newline, then a quote.
// It returns the offset just past that quote.
func continuation(q []byte, p int) (int, bool) {
	n := len(q)
	newline := false
	for p < n {
		switch c := q[p]; {
		case c == ' ' || c == '\t' || c == '\f' || c == '\v':
			p++
		case c == '\n' || c == '\r':
			newline = true
			p++
		case c == '-' && p+1 < n && q[p+1] == '-':
			j := p + 2
			for j < n && q[j] != '\n' && q[j] != '\r' {
				j++
			}
			if j >= n {
				return 0, false
			}
			p = j
		case c == '\'' && newline:
			return p + 1, true
		default:
			return 0, false
		}
	}
	return 0, false
}

// scanQIdent scans a quoted identifier's body from i (past the opening '"').
func scanQIdent(q []byte, i int) (int, bool) {
	for {
		j := bytes.IndexByte(q[i:], '"')
		if j < 0 {
			return len(q), true
		}
		i += j + 1
		if i < len(q) && q[i] == '"' {
			i++
			continue
		}
		return i, false
	}
}

// foldEq reports whether b equals the lowercase ASCII word w, ignoring ASCII case.
func foldEq(b []byte, w string) bool {
	if len(b) != len(w) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != w[i] {
			return false
		}
	}
	return true
}

func lowerASCII(b []byte) {
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
}

// ---------------------------------------------------------------------------
// Statement boundaries

// stmtHead is a statement's first keyword, as far as classification cares.
type stmtHead uint8

const (
	hOther stmtHead = iota
	hNoCall
	hSelect
	hBegin
	hStart
	hCommit
	hEnd
	hRollback
	hSet
	hReset
	hPrepare
	hExecute
	hDeallocate
	hDiscard
	hListen
	hUnlisten
	hDeclare
	hClose
	hLoad
	hCreate
	hExplain
)

// Statement heads packed as headOf packs them.
const (
	kwSelect   = 's' | 'e'<<8 | 'l'<<16 | 'e'<<24 | 'c'<<32 | 't'<<40
	kwWith     = 'w' | 'i'<<8 | 't'<<16 | 'h'<<24
	kwValues   = 'v' | 'a'<<8 | 'l'<<16 | 'u'<<24 | 'e'<<32 | 's'<<40
	kwTable    = 't' | 'a'<<8 | 'b'<<16 | 'l'<<24 | 'e'<<32
	kwBegin    = 'b' | 'e'<<8 | 'g'<<16 | 'i'<<24 | 'n'<<32
	kwStart    = 's' | 't'<<8 | 'a'<<16 | 'r'<<24 | 't'<<32
	kwCommit   = 'c' | 'o'<<8 | 'm'<<16 | 'm'<<24 | 'i'<<32 | 't'<<40
	kwEnd      = 'e' | 'n'<<8 | 'd'<<16
	kwRollback = 'r' | 'o'<<8 | 'l'<<16 | 'l'<<24 | 'b'<<32 | 'a'<<40 | 'c'<<48 | 'k'<<56
	kwAbort    = 'a' | 'b'<<8 | 'o'<<16 | 'r'<<24 | 't'<<32
	kwSet      = 's' | 'e'<<8 | 't'<<16
	kwReset    = 'r' | 'e'<<8 | 's'<<16 | 'e'<<24 | 't'<<32
	kwPrepare  = 'p' | 'r'<<8 | 'e'<<16 | 'p'<<24 | 'a'<<32 | 'r'<<40 | 'e'<<48
	kwExecute  = 'e' | 'x'<<8 | 'e'<<16 | 'c'<<24 | 'u'<<32 | 't'<<40 | 'e'<<48
	kwDiscard  = 'd' | 'i'<<8 | 's'<<16 | 'c'<<24 | 'a'<<32 | 'r'<<40 | 'd'<<48
	kwListen   = 'l' | 'i'<<8 | 's'<<16 | 't'<<24 | 'e'<<32 | 'n'<<40
	kwUnlisten = 'u' | 'n'<<8 | 'l'<<16 | 'i'<<24 | 's'<<32 | 't'<<40 | 'e'<<48 | 'n'<<56
	kwDeclare  = 'd' | 'e'<<8 | 'c'<<16 | 'l'<<24 | 'a'<<32 | 'r'<<40 | 'e'<<48
	kwClose    = 'c' | 'l'<<8 | 'o'<<16 | 's'<<24 | 'e'<<32
	kwLoad     = 'l' | 'o'<<8 | 'a'<<16 | 'd'<<24
	kwCreate   = 'c' | 'r'<<8 | 'e'<<16 | 'a'<<24 | 't'<<32 | 'e'<<40
	kwExplain  = 'e' | 'x'<<8 | 'p'<<16 | 'l'<<24 | 'a'<<32 | 'i'<<40 | 'n'<<48
	kwShow     = 's' | 'h'<<8 | 'o'<<16 | 'w'<<24
	kwRelease  = 'r' | 'e'<<8 | 'l'<<16 | 'e'<<24 | 'a'<<32 | 's'<<40 | 'e'<<48
	kwNotify   = 'n' | 'o'<<8 | 't'<<16 | 'i'<<24 | 'f'<<32 | 'y'<<40
	kwFetch    = 'f' | 'e'<<8 | 't'<<16 | 'c'<<24 | 'h'<<32
	kwMove     = 'm' | 'o'<<8 | 'v'<<16 | 'e'<<24
)

// headOf names the statement head for a first token.
func headOf(q []byte, k tokKind, ts, te int) stmtHead {
	if k == tOp && q[ts] == '(' {
		return hSelect
	}
	n := te - ts
	if k != tIdent || n < 3 || n > 10 {
		return hOther
	}
	w := q[ts:te]
	if n > 8 {
		switch {
		case foldEq(w, "deallocate"):
			return hDeallocate
		case foldEq(w, "savepoint"), foldEq(w, "checkpoint"):
			return hNoCall
		}
		return hOther
	}
	// The word lowercased and packed little-endian into a uint64 (bytes that
	// are not letters cannot turn into letters by |0x20).
	var key uint64
	for i := n - 1; i >= 0; i-- {
		key = key<<8 | uint64(w[i]|0x20)
	}
	switch key {
	case kwSelect, kwWith, kwValues, kwTable:
		return hSelect
	case kwBegin:
		return hBegin
	case kwStart:
		return hStart
	case kwCommit:
		return hCommit
	case kwEnd:
		return hEnd
	case kwRollback, kwAbort:
		return hRollback
	case kwSet:
		return hSet
	case kwReset:
		return hReset
	case kwPrepare:
		return hPrepare
	case kwExecute:
		return hExecute
	case kwDiscard:
		return hDiscard
	case kwListen:
		return hListen
	case kwUnlisten:
		return hUnlisten
	case kwDeclare:
		return hDeclare
	case kwClose:
		return hClose
	case kwLoad:
		return hLoad
	case kwCreate:
		return hCreate
	case kwExplain:
		return hExplain
	case kwShow, kwRelease, kwNotify, kwFetch, kwMove:
		return hNoCall
	}
	return hOther
}

// mayCall reports whether a statement with this head can contain a function call.
func (h stmtHead) mayCall() bool {
	switch h {
	case hNoCall, hBegin, hStart, hCommit, hEnd, hRollback, hSet, hReset,
		hDeallocate, hDiscard, hListen, hUnlisten, hClose, hLoad:
		return false
	}
	return true
}

// Flags gathered while finding a statement's end.
const (
	fInto   = 1 << iota // an INTO keyword
	fPgTemp             // a pg_temp identifier
)

// State of the CREATE [OR REPLACE] FUNCTION|PROCEDURE recognition, which
// decides whether BEGIN ATOMIC ... END nests.
const (
	fnNo = iota
	fnCreate
	fnOr
	fnOrReplace
	fnYes
)

// scan finds the next non-empty statement, its bounds and its head record.
func (s *Scanner) scan() bool {
	q := s.q
	k, ts, te, open := lexSQL(q, s.pos)
	for k == tOp && q[ts] == ';' {
		k, ts, te, open = lexSQL(q, te)
	}
	if k == tEOF {
		s.pos = len(q)
		s.open = s.open || open
		return false
	}
	start := ts
	h := headOf(q, k, ts, te)
	calls := h.mayCall()
	fn := fnNo
	if h == hCreate {
		fn = fnCreate
	}
	nIdent := 0
	depth, atomic := 0, 0
	end := te
	callPos := -1
	var flags uint8
	for {
		switch k {
		case tIdent:
			n := te - ts
			// Every candidate starts "pg_" or "set" (its third byte is _ or t).
			if calls && callPos < 0 && n < 32 && callLens>>n&1 != 0 && (q[ts+2] == '_' || q[ts+2]|0x20 == 't') {
				if _, _, ok := callAt(q, k, ts, te); ok {
					callPos = ts
				}
			}
			if n == 4 && foldEq(q[ts:te], "into") {
				flags |= fInto
			} else if n >= 7 && q[ts+2] == '_' && isPgTemp(q[ts:te], true) {
				flags |= fPgTemp
			}
			if fn != fnNo {
				// The first identifiers: CREATE [OR REPLACE] FUNCTION|PROCEDURE.
				w := q[ts:te]
				nIdent++
				switch {
				case fn == fnYes:
				case nIdent == 2 && foldEq(w, "or"):
					fn = fnOr
				case nIdent == 3 && fn == fnOr && foldEq(w, "replace"):
					fn = fnOrReplace
				case (nIdent == 2 || nIdent == 4 && fn == fnOrReplace) &&
					(foldEq(w, "function") || foldEq(w, "procedure")):
					fn = fnYes
				case nIdent > 1:
					fn = fnNo
				}
				if fn == fnYes && depth == 0 {
					switch {
					case foldEq(w, "begin"):
						if k2, ts2, te2, _ := lexSQL(q, te); k2 == tIdent && foldEq(q[ts2:te2], "atomic") {
							atomic++
						}
					case atomic > 0 && foldEq(w, "case"):
						atomic++
					case atomic > 0 && foldEq(w, "end"):
						atomic--
					}
				}
			}
		case tQIdent:
			// Quoted: "name" can be a call only with a candidate length; U&"..."
			// is decoded by callAt.
			if n := te - ts - 2; calls && callPos < 0 &&
				(q[ts] != '"' || n >= 0 && n < 32 && callLens>>n&1 != 0 && (q[ts+1] == 'p' || q[ts+1] == 's')) {
				if _, _, ok := callAt(q, k, ts, te); ok {
					callPos = ts
				}
			}
			if te-ts >= 9 && q[ts+1] == 'p' && isPgTemp(q[ts:te], false) {
				flags |= fPgTemp
			}
		case tOp:
			switch q[ts] {
			case '(':
				depth++
			case ')':
				if depth > 0 {
					depth--
				}
			case ';':
				if depth == 0 && atomic == 0 {
					s.pos = te
					goto done
				}
			}
		}
		end = te
		if open {
			// An unterminated token runs to the end of the input.
			s.pos = len(q)
			s.open = true
			goto done
		}
		// The next token: identifiers, numbers and plain operators are read
		// here, the rest (literals, comments) by lex.
		i := te
		for i < len(q) && charClass[q[i]]&cSpace != 0 {
			i++
		}
		if i < len(q) {
			c := charClass[q[i]]
			switch {
			case c&cIdentStart != 0 && (i+1 == len(q) || q[i+1] != '\'' && q[i+1] != '&'):
				j := i + 1
				for j < len(q) && charClass[q[j]]&cIdentCont != 0 {
					j++
				}
				k, ts, te = tIdent, i, j
				continue
			case c&cPlainOp != 0:
				k, ts, te = tOp, i, i+1
				continue
			case c&cDigit != 0:
				k, ts, te = tNumber, i, scanNumber(q, i+1)
				continue
			case q[i] == '"':
				if j, open := scanQIdent(q, i+1); !open {
					k, ts, te = tQIdent, i, j
					continue
				}
			}
		}
		k, ts, te, open = lexSQL(q, i)
		if k == tEOF {
			s.pos = len(q)
			s.open = open || depth > 0 || atomic > 0
			goto done
		}
	}
done:
	s.start, s.end, s.callPos = start, end, callPos
	if h == hOther || h == hNoCall || h == hSelect && flags&fInto == 0 {
		s.cur = Statement{Start: start, End: end}
		return true
	}
	var st2 Statement
	s.cur, st2 = classifyHead(q[:end], start, h, flags)
	s.cur.Start, s.cur.End = start, end
	s.exec, s.hasExec = st2.Name, st2.Kind == KindExecute
	return true
}

// isPgTemp reports whether an identifier names the temporary schema: pg_temp
// or pg_temp_N (unquoted, any case), or "pg_temp..." quoted.
func isPgTemp(t []byte, unquoted bool) bool {
	if !unquoted {
		if len(t) < 9 || t[0] != '"' {
			return false
		}
		t = t[1 : len(t)-1]
	}
	if len(t) < 7 {
		return false
	}
	for i := 0; i < 7; i++ {
		c := t[i]
		if unquoted && 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != "pg_temp"[i] {
			return false
		}
	}
	if len(t) == 7 {
		return true
	}
	if t[7] != '_' || len(t) == 8 {
		return false
	}
	for _, c := range t[8:] {
		if charClass[c]&cDigit == 0 {
			return false
		}
	}
	return true
}

// ---------------------------------------------------------------------------
// Function calls

var callNames = [...]struct {
	name string
	kind Kind
}{
	{"set_config", KindSetConfig},
	{"pg_advisory_lock", KindAdvisoryLock},
	{"pg_advisory_lock_shared", KindAdvisoryLock},
	{"pg_try_advisory_lock", KindAdvisoryLock},
	{"pg_try_advisory_lock_shared", KindAdvisoryLock},
	{"pg_advisory_unlock", KindAdvisoryUnlock},
	{"pg_advisory_unlock_shared", KindAdvisoryUnlock},
	{"pg_advisory_unlock_all", KindAdvisoryUnlock},
}

// callLens has bit n set when some name in callNames is n bytes long.
var callLens = func() (m uint32) {
	for _, c := range callNames {
		m |= 1 << len(c.name)
	}
	return m
}()

// matchCall returns the index in callNames of the name w (ignoring ASCII case
// when fold), or -1.
func matchCall(w []byte, fold bool) int {
	if len(w) >= 32 || callLens>>len(w)&1 == 0 {
		return -1
	}
	for i, c := range callNames {
		if len(c.name) != len(w) {
			continue
		}
		if fold && foldEq(w, c.name) || !fold && string(w) == c.name {
			return i
		}
	}
	return -1
}

// callAt reports whether the identifier token at [ts, te) is a call of one of
// callNames: the name (unquoted in any case, or quoted exactly) followed by
// '('. It returns the callNames index and the offset just past the '('.
func callAt(q []byte, k tokKind, ts, te int) (idx, after int, ok bool) {
	t := q[ts:te]
	next := te
	switch {
	case k == tIdent:
		idx = matchCall(t, true)
	case t[0] == '"':
		if len(t) < 2 || t[len(t)-1] != '"' {
			return -1, 0, false
		}
		idx = matchCall(t[1:len(t)-1], false)
	default: // U&"..."
		var raw, dec [64]byte
		esc, past, valid := uescapeAt(q, te)
		if !valid {
			return -1, 0, false
		}
		next = past
		if len(t) < 4 || t[len(t)-1] != '"' {
			return -1, 0, false
		}
		r := appendUndoubled(raw[:0], t[3:len(t)-1], '"')
		d, ok := appendUnicodeUnescape(dec[:0], r, esc)
		if !ok {
			return -1, 0, false
		}
		idx = matchCall(d, false)
	}
	if idx < 0 {
		return -1, 0, false
	}
	if k2, ts2, te2, _ := lexSQL(q, next); k2 == tOp && q[ts2] == '(' {
		return idx, te2, true
	}
	return -1, 0, false
}

// nextCall finds the next call in the current statement from s.callPos and
// makes it the current record.
func (s *Scanner) nextCall() bool {
	q := s.q[:s.end]
	c := sqlCursor{q: q, te: s.callPos}
	for c.next(); c.k != tEOF; c.next() {
		if c.k != tIdent && c.k != tQIdent {
			continue
		}
		idx, after, ok := callAt(q, c.k, c.ts, c.te)
		if !ok {
			continue
		}
		s.cur = callRecord(q, idx, after)
		s.cur.Start, s.cur.End = s.start, s.end
		s.callPos = after
		return true
	}
	s.callPos = -1
	return false
}

// callRecord describes the call of callNames[idx] whose arguments start at p.
func callRecord(q []byte, idx, p int) Statement {
	st := Statement{Kind: callNames[idx].kind}
	c := sqlCursor{q: q, te: p}
	c.next()
	if st.Kind != KindSetConfig {
		st.Name = callNames[idx].name
		depth, from, to := 1, -1, p
		for ; c.k != tEOF; c.next() {
			if c.op('(') {
				depth++
			} else if c.op(')') {
				if depth--; depth == 0 {
					break
				}
			}
			if from < 0 {
				from = c.ts
			}
			to = c.te
		}
		if from >= 0 {
			st.Value = string(q[from:to])
		}
		return st
	}
	var nb, vb [64]byte
	name, ok := c.literalArg(nb[:0], false)
	if !ok || !c.op(',') {
		return st
	}
	c.next()
	value, ok := c.literalArg(vb[:0], false)
	if !ok || !c.op(',') {
		return st
	}
	c.next()
	local, ok := c.boolArg()
	if !ok || !c.op(')') || len(name) == 0 {
		return st
	}
	lowerASCII(name)
	st.Name, st.Value, st.IsLocal = string(name), string(value), local
	return st
}

// literalArg reads a function argument that is a string literal, optionally
// cast to text or varchar (to bool or boolean when boolean; a cast that could
// change the value is refused), leaving c after it.
func (c *sqlCursor) literalArg(dst []byte, boolean bool) ([]byte, bool) {
	if c.k != tString {
		return dst, false
	}
	dst, ok := c.appendString(dst)
	if !ok {
		return dst, false
	}
	c.next()
	return dst, c.skipCast(boolean)
}

// skipCast accepts an absent cast or ::[pg_catalog.]text|varchar (or
// bool|boolean when boolean).
func (c *sqlCursor) skipCast(boolean bool) bool {
	if !c.op(':') || c.te >= len(c.q) || c.q[c.te] != ':' {
		return true
	}
	c.next()
	c.next()
	if c.kw("pg_catalog") {
		c.next()
		if !c.op('.') {
			return false
		}
		c.next()
	}
	if boolean && (c.kw("bool") || c.kw("boolean")) || !boolean && (c.kw("text") || c.kw("varchar")) {
		c.next()
		return true
	}
	return false
}

// boolArg reads a literal boolean argument: TRUE, FALSE or a string such as
// 'on' or 'f', optionally cast to boolean.
func (c *sqlCursor) boolArg() (v, ok bool) {
	switch {
	case c.kw("true"):
		v, ok = true, true
		c.next()
		ok = c.skipCast(true)
	case c.kw("false"):
		c.next()
		ok = c.skipCast(true)
	case c.k == tString:
		var buf [16]byte
		b, lit := c.literalArg(buf[:0], true)
		if !lit {
			return false, false
		}
		v, ok = parseBool(b)
	}
	return v, ok
}

// parseBool parses a boolean the way PostgreSQL's boolin does.
func parseBool(b []byte) (v, ok bool) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || len(b) > 5 {
		return false, false
	}
	var buf [5]byte
	w := buf[:len(b)]
	copy(w, b)
	lowerASCII(w)
	prefix := func(full string, min int) bool {
		return len(w) >= min && len(w) <= len(full) && full[:len(w)] == string(w)
	}
	switch {
	case prefix("true", 1), prefix("yes", 1), prefix("on", 2), string(w) == "1":
		return true, true
	case prefix("false", 1), prefix("no", 1), prefix("off", 2), string(w) == "0":
		return false, true
	}
	return false, false
}

// ---------------------------------------------------------------------------
// Statement heads

// sqlCursor walks the tokens of one statement; q is cut at the statement's end.
type sqlCursor struct {
	q      []byte
	k      tokKind
	ts, te int
	open   bool
}

func (c *sqlCursor) next()               { c.k, c.ts, c.te, c.open = lexSQL(c.q, c.te) }
func (c *sqlCursor) peek() sqlCursor     { d := *c; d.next(); return d }
func (c sqlCursor) kw(w string) bool     { return c.k == tIdent && foldEq(c.q[c.ts:c.te], w) }
func (c sqlCursor) op(b byte) bool       { return c.k == tOp && c.q[c.ts] == b }
func (c sqlCursor) eof() bool            { return c.k == tEOF }
func (c sqlCursor) rest() string         { return string(c.q[c.ts:]) }
func (c sqlCursor) assign() bool         { return c.kw("to") || c.op('=') }
func (c sqlCursor) lastToken() bool      { return c.peek().eof() }
func (c sqlCursor) single(w string) bool { return c.kw(w) && c.lastToken() }

// ident returns the identifier at c as PostgreSQL reads it (see appendIdent).
func (c *sqlCursor) ident() (string, bool) {
	var buf [64]byte
	b, ok := c.appendIdent(buf[:0])
	if !ok {
		return "", false
	}
	return string(b), true
}

// appendIdent appends the identifier at c as PostgreSQL reads it: unquoted
// ASCII letters lowercased, quotes removed, U& escapes decoded, truncated to
// 63 bytes. It fails on an empty or malformed identifier. After a U&
// identifier with a UESCAPE clause, c is left on the clause's last token.
func (c *sqlCursor) appendIdent(dst []byte) ([]byte, bool) {
	if c.open {
		return dst, false
	}
	start := len(dst)
	t := c.q[c.ts:c.te]
	switch {
	case c.k == tIdent:
		dst = append(dst, t...)
		lowerASCII(dst[start:])
	case c.k == tQIdent && t[0] == '"':
		dst = appendUndoubled(dst, t[1:len(t)-1], '"')
	case c.k == tQIdent:
		esc, after, ok := uescapeAt(c.q, c.te)
		if !ok {
			return dst, false
		}
		var raw [64]byte
		r := appendUndoubled(raw[:0], t[3:len(t)-1], '"')
		if dst, ok = appendUnicodeUnescape(dst, r, esc); !ok {
			return dst, false
		}
		for c.te < after {
			c.next()
		}
	default:
		return dst, false
	}
	if len(dst)-start > 63 {
		// NAMEDATALEN-1, not splitting a UTF-8 sequence.
		cut := start + 63
		for cut > start && dst[cut]&0xC0 == 0x80 {
			cut--
		}
		dst = dst[:cut]
	}
	return dst, len(dst) > start
}

// appendString appends the content of the string literal at c, escapes
// resolved. Bit strings (B'...', X'...') and malformed literals fail. After a U&
// literal with a UESCAPE clause, c is left on the clause's last token.
func (c *sqlCursor) appendString(dst []byte) ([]byte, bool) {
	if c.k != tString || c.open {
		return dst, false
	}
	t := c.q[c.ts:c.te]
	switch {
	case t[0] == '\'':
		return appendQuoted(dst, c.q[:c.te], c.ts+1), true
	case t[0] == '$':
		tag := bytes.IndexByte(t[1:], '$') + 2
		return append(dst, t[tag:len(t)-tag]...), true
	case t[1] == '\'' && (t[0] == 'e' || t[0] == 'E'):
		return appendEscaped(dst, c.q[:c.te], c.ts+2)
	case t[1] == '\'' && (t[0] == 'n' || t[0] == 'N'):
		return appendQuoted(dst, c.q[:c.te], c.ts+2), true
	case t[1] == '&':
		esc, after, ok := uescapeAt(c.q, c.te)
		if !ok {
			return dst, false
		}
		var raw [64]byte
		r := appendQuoted(raw[:0], c.q[:c.te], c.ts+3)
		if dst, ok = appendUnicodeUnescape(dst, r, esc); !ok {
			return dst, false
		}
		for c.te < after {
			c.next()
		}
		return dst, true
	}
	return dst, false
}

// appendQuoted appends the content of a '...' literal whose body starts at i
// and which ends at len(q): a doubled quote becomes one, continuations are joined.
func appendQuoted(dst, q []byte, i int) []byte {
	for i < len(q) {
		c := q[i]
		if c == '\'' {
			if i+1 < len(q) && q[i+1] == '\'' {
				dst = append(dst, '\'')
				i += 2
				continue
			}
			if j, ok := continuation(q, i+1); ok {
				i = j
				continue
			}
			break
		}
		dst = append(dst, c)
		i++
	}
	return dst
}

// appendEscaped appends the content of an E'...' literal whose body starts at
// i and which ends at len(q), resolving backslash escapes.
func appendEscaped(dst, q []byte, i int) ([]byte, bool) {
	for i < len(q) {
		c := q[i]
		switch c {
		case '\'':
			if i+1 < len(q) && q[i+1] == '\'' {
				dst = append(dst, '\'')
				i += 2
				continue
			}
			j, ok := continuation(q, i+1)
			if !ok {
				return dst, true
			}
			i = j
			continue
		case '\\':
		default:
			dst = append(dst, c)
			i++
			continue
		}
		i++
		if i >= len(q) {
			return dst, false
		}
		c = q[i]
		i++
		switch c {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case '0', '1', '2', '3', '4', '5', '6', '7':
			v := int(c - '0')
			for k := 0; k < 2 && i < len(q) && q[i] >= '0' && q[i] <= '7'; k++ {
				v = v*8 + int(q[i]-'0')
				i++
			}
			dst = append(dst, byte(v))
		case 'x':
			v, k := 0, 0
			for ; k < 2 && i < len(q) && charClass[q[i]]&cHex != 0; k++ {
				v = v*16 + hexVal(q[i])
				i++
			}
			if k == 0 {
				dst = append(dst, 'x')
			} else {
				dst = append(dst, byte(v))
			}
		case 'u', 'U':
			width := 4
			if c == 'U' {
				width = 8
			}
			r, ok := hexRune(q[i:], width)
			if !ok {
				return dst, false
			}
			i += width
			if r >= 0xD800 && r <= 0xDBFF {
				if i+1 >= len(q) || q[i] != '\\' || q[i+1] != 'u' && q[i+1] != 'U' {
					return dst, false
				}
				w2 := 4
				if q[i+1] == 'U' {
					w2 = 8
				}
				lo, ok := hexRune(q[i+2:], w2)
				if !ok || lo < 0xDC00 || lo > 0xDFFF {
					return dst, false
				}
				i += 2 + w2
				r = 0x10000 + (r-0xD800)<<10 + (lo - 0xDC00)
			}
			if !validRune(r) {
				return dst, false
			}
			dst = utf8.AppendRune(dst, r)
		default:
			dst = append(dst, c)
		}
	}
	return dst, true
}

func hexVal(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	default:
		return int(c-'A') + 10
	}
}

func hexRune(b []byte, width int) (rune, bool) {
	if len(b) < width {
		return 0, false
	}
	var r rune
	for _, c := range b[:width] {
		if charClass[c]&cHex == 0 {
			return 0, false
		}
		r = r*16 + rune(hexVal(c))
	}
	return r, true
}

func validRune(r rune) bool {
	return r > 0 && r <= utf8.MaxRune && (r < 0xD800 || r > 0xDFFF)
}

// appendUndoubled appends s with each doubled quote q collapsed to one.
func appendUndoubled(dst, s []byte, q byte) []byte {
	for i := 0; i < len(s); i++ {
		dst = append(dst, s[i])
		if s[i] == q && i+1 < len(s) && s[i+1] == q {
			i++
		}
	}
	return dst
}

// uescapeAt reads an optional UESCAPE 'c' clause after a U& literal ending at
// p. It returns the escape character ('\\' without a clause) and the offset
// past the clause; ok is false for a malformed clause.
func uescapeAt(q []byte, p int) (esc byte, after int, ok bool) {
	k, ts, te, _ := lexSQL(q, p)
	if k != tIdent || !foldEq(q[ts:te], "uescape") {
		return '\\', p, true
	}
	k, ts, te, _ = lexSQL(q, te)
	if k != tString || te-ts != 3 || q[ts] != '\'' {
		return 0, 0, false
	}
	esc = q[ts+1]
	if charClass[esc]&(cHex|cSpace) != 0 || esc == '+' || esc == '\'' || esc == '"' {
		return 0, 0, false
	}
	return esc, te, true
}

// appendUnicodeUnescape decodes the escapes of a U& literal: esc followed by 4
// hex digits, or esc + and 6 hex digits; esc esc is esc itself.
func appendUnicodeUnescape(dst, s []byte, esc byte) ([]byte, bool) {
	escape := func(i int) (rune, int, bool) {
		if i+1 < len(s) && s[i+1] == '+' {
			r, ok := hexRune(s[i+2:], 6)
			return r, i + 8, ok
		}
		r, ok := hexRune(s[i+1:], 4)
		return r, i + 5, ok
	}
	for i := 0; i < len(s); {
		if s[i] != esc {
			dst = append(dst, s[i])
			i++
			continue
		}
		if i+1 < len(s) && s[i+1] == esc {
			dst = append(dst, esc)
			i += 2
			continue
		}
		r, j, ok := escape(i)
		if !ok {
			return dst, false
		}
		i = j
		if r >= 0xD800 && r <= 0xDBFF {
			if i >= len(s) || s[i] != esc {
				return dst, false
			}
			lo, j, ok := escape(i)
			if !ok || lo < 0xDC00 || lo > 0xDFFF {
				return dst, false
			}
			i = j
			r = 0x10000 + (r-0xD800)<<10 + (lo - 0xDC00)
		}
		if !validRune(r) {
			return dst, false
		}
		dst = utf8.AppendRune(dst, r)
	}
	return dst, true
}

// classifyHead classifies the statement starting at pos in q (cut at the
// statement's end) by its leading words. It may find a second construct
// (CREATE TABLE ... AS EXECUTE name).
func classifyHead(q []byte, pos int, h stmtHead, flags uint8) (st, st2 Statement) {
	c := sqlCursor{q: q, te: pos}
	c.next()
	explained, analyze := false, false
	for h == hExplain {
		explained = true
		analyze = c.explainOptions()
		h = headOf(q, c.k, c.ts, c.te)
	}
	switch h {
	case hSelect:
		if flags&fInto != 0 && c.selectIntoTemp() {
			st.Kind = KindTempTable
		}
	case hBegin:
		st.Kind = KindBegin
	case hStart:
		if c.next(); c.kw("transaction") {
			st.Kind = KindBegin
		}
	case hCommit:
		if c.next(); !c.kw("prepared") {
			st.Kind = KindCommit
		}
	case hEnd:
		st.Kind = KindCommit
	case hRollback:
		c.next()
		if c.kw("work") || c.kw("transaction") {
			c.next()
		}
		if !c.kw("prepared") && !c.kw("to") {
			st.Kind = KindRollback
		}
	case hSet:
		st = c.set()
	case hReset:
		st = c.reset()
	case hPrepare:
		c.next()
		if c.kw("transaction") && c.peek().k == tString {
			break
		}
		name, ok := c.ident()
		if !ok {
			break
		}
		st.Kind, st.Name = KindPrepare, name
		if c.next(); c.op('(') {
			for depth := 0; !c.eof(); c.next() {
				if c.op('(') {
					depth++
				} else if c.op(')') {
					if depth--; depth == 0 {
						c.next()
						break
					}
				}
			}
		}
		if c.kw("as") {
			c.next()
			st.Value = c.rest()
		}
	case hExecute:
		c.next()
		if name, ok := c.ident(); ok {
			st.Kind, st.Name = KindExecute, name
		}
	case hDeallocate:
		if c.next(); c.kw("prepare") && !c.lastToken() {
			c.next()
		}
		if c.kw("all") {
			st.Kind = KindDeallocateAll
		} else if name, ok := c.ident(); ok {
			st.Kind, st.Name = KindDeallocate, name
		}
	case hDiscard:
		switch c.next(); {
		case c.kw("all"):
			st.Kind = KindDiscardAll
		case c.kw("plans"):
			st.Kind = KindDiscardPlans
		case c.kw("sequences"):
			st.Kind = KindDiscardSequences
		case c.kw("temp"), c.kw("temporary"):
			st.Kind = KindDiscardTemp
		}
	case hListen:
		c.next()
		if name, ok := c.ident(); ok {
			st.Kind, st.Name = KindListen, name
		}
	case hUnlisten:
		if c.next(); c.op('*') {
			st.Kind = KindUnlistenAll
		} else if name, ok := c.ident(); ok {
			st.Kind, st.Name = KindUnlisten, name
		}
	case hDeclare:
		c.next()
		name, ok := c.ident()
		if !ok {
			break
		}
		for c.next(); c.kw("binary") || c.kw("insensitive") || c.kw("asensitive") ||
			c.kw("no") || c.kw("scroll"); c.next() {
		}
		if c.kw("cursor") {
			if c.next(); c.kw("with") && c.peek().kw("hold") {
				st.Kind, st.Name = KindDeclareHold, name
			}
		}
	case hClose:
		if c.next(); c.kw("all") {
			st.Kind = KindCloseAll
		} else if name, ok := c.ident(); ok {
			st.Kind, st.Name = KindCloseCursor, name
		}
	case hLoad:
		c.next()
		var buf [64]byte
		if b, ok := c.appendString(buf[:0]); ok && len(b) > 0 {
			st.Kind, st.Name = KindLoad, string(b)
		}
	case hCreate:
		st, st2 = c.create(flags)
	}
	if explained {
		// EXPLAIN runs its statement only with ANALYZE, and never declares the
		// cursor of an EXPLAIN [ANALYZE] DECLARE; EXPLAIN EXECUTE needs the
		// prepared statement either way.
		if st.Kind == KindDeclareHold || !analyze && st.Kind != KindExecute {
			st = Statement{}
		}
		if !analyze && st2.Kind != KindExecute {
			st2 = Statement{}
		}
	}
	if st.Kind == KindOther && st2.Kind != KindOther {
		st, st2 = st2, Statement{}
	}
	return st, st2
}

// explainOptions reads EXPLAIN's options from the EXPLAIN keyword and leaves c
// on the explained statement's first token. It reports whether ANALYZE is on.
func (c *sqlCursor) explainOptions() bool {
	c.next()
	analyze := false
	if p := c.peek(); c.op('(') && !p.op('(') && !p.kw("select") && !p.kw("with") &&
		!p.kw("values") && !p.kw("table") {
		c.next()
		for !c.eof() && !c.op(')') {
			isAnalyze := c.kw("analyze") || c.kw("analyse")
			on := true
			for c.next(); !c.eof() && !c.op(',') && !c.op(')'); c.next() {
				var buf [8]byte
				if c.kw("false") || c.kw("off") ||
					c.k == tNumber && string(c.q[c.ts:c.te]) == "0" {
					on = false
				} else if b, ok := c.appendString(buf[:0]); ok {
					if v, ok := parseBool(b); ok && !v {
						on = false
					}
				}
			}
			if isAnalyze {
				analyze = on
			}
			if c.op(',') {
				c.next()
			}
		}
		c.next()
		return analyze
	}
	if c.kw("analyze") || c.kw("analyse") {
		analyze = true
		c.next()
	}
	if c.kw("verbose") {
		c.next()
	}
	return analyze
}

// set parses SET from its first keyword.
func (c *sqlCursor) set() Statement {
	c.next()
	local, modifier := false, false
	if c.kw("local") {
		local, modifier = true, true
		c.next()
	} else if c.kw("session") {
		if p := c.peek(); !p.kw("authorization") && !p.kw("characteristics") {
			modifier = true
			c.next()
		}
	}
	st := Statement{Kind: KindSet, IsLocal: local}
	if local {
		st.Kind = KindSetLocal
	}
	p := c.peek()
	switch {
	case c.kw("transaction") && !p.assign():
		c.next()
		st.Kind, st.IsLocal, st.Name = KindSetLocal, true, "transaction"
		return st.withValue(c, false)
	case c.kw("session") && p.kw("characteristics"):
		c.next()
		c.next()
		if c.kw("as") {
			c.next()
		}
		if c.kw("transaction") {
			c.next()
		}
		st.Name = "session_characteristics"
		return st.withValue(c, false)
	case c.kw("time") && p.kw("zone"):
		c.next()
		c.next()
		st.Name = "timezone"
		if c.single("local") {
			st.Default = true
			return st
		}
		return st.withValue(c, true)
	case c.kw("catalog") && p.k == tString:
		return Statement{} // rejected by the server: SET CATALOG is not supported
	case c.kw("schema") && p.k == tString:
		c.next()
		st.Name = "search_path"
		return st.withValue(c, false)
	case c.kw("names") && !p.assign():
		c.next()
		st.Name = "client_encoding"
		if c.eof() {
			st.Default = true
			return st
		}
		return st.withValue(c, true)
	case c.kw("role") && !p.assign():
		c.next()
		st.Name = "role"
		return st.withValue(c, false)
	case c.kw("session") && p.kw("authorization"):
		c.next()
		c.next()
		st.Name = "session_authorization"
		return st.withValue(c, true)
	case c.kw("xml") && p.kw("option"):
		c.next()
		c.next()
		st.Name = "xmloption"
		return st.withValue(c, false)
	case c.kw("constraints") && !modifier && !p.assign():
		c.next()
		st.Kind, st.IsLocal, st.Name = KindSetLocal, true, "constraints"
		return st.withValue(c, false)
	}
	var buf [64]byte
	name, ok := c.varName(buf[:0])
	if !ok {
		return st
	}
	switch {
	case c.assign():
		c.next()
		st.Name = string(name)
		return st.withValue(c, true)
	case c.kw("from") && c.peek().kw("current") && c.peek().lastToken():
		st.Name = string(name)
	}
	return st
}

// withValue sets st's Value to the rest of the statement from c, or Default for a
// lone DEFAULT when def; an absent value leaves st not understood (Name "").
func (st Statement) withValue(c *sqlCursor, def bool) Statement {
	switch {
	case c.eof():
		st.Name = ""
	case def && c.single("default"):
		st.Default = true
	default:
		st.Value = c.rest()
	}
	return st
}

// varName reads a possibly dotted setting name, lowercased, leaving c after it.
func (c *sqlCursor) varName(dst []byte) ([]byte, bool) {
	dst, ok := c.appendIdent(dst)
	if !ok {
		return dst, false
	}
	for c.next(); c.op('.'); c.next() {
		c.next()
		dst = append(dst, '.')
		if dst, ok = c.appendIdent(dst); !ok {
			return dst, false
		}
	}
	lowerASCII(dst)
	return dst, true
}

// reset parses RESET from its first keyword.
func (c *sqlCursor) reset() Statement {
	c.next()
	st := Statement{Kind: KindReset}
	p := c.peek()
	switch {
	case c.single("all"):
		st.Kind = KindResetAll
	case c.kw("time") && p.kw("zone"):
		st.Name = "timezone"
	case c.kw("session") && p.kw("authorization"):
		st.Name = "session_authorization"
	case c.kw("transaction") && p.kw("isolation"):
		st.Name = "transaction_isolation"
	default:
		var buf [64]byte
		if name, ok := c.varName(buf[:0]); ok && c.eof() {
			st.Name = string(name)
		}
	}
	return st
}

// create classifies CREATE from its first keyword: temporary objects, and
// CREATE TABLE ... AS EXECUTE name.
func (c *sqlCursor) create(flags uint8) (st, st2 Statement) {
	c.next()
	if c.kw("or") {
		if c.next(); c.kw("replace") {
			c.next()
		}
	}
	if c.kw("global") || c.kw("local") {
		c.next()
	}
	temp := c.kw("temp") || c.kw("temporary")
	onCommitDrop := false
	for depth := 0; !c.eof(); c.next() {
		switch c.k {
		case tOp:
			if c.op('(') {
				depth++
			} else if c.op(')') && depth > 0 {
				depth--
			}
		case tIdent, tQIdent:
			if flags&fPgTemp != 0 && isPgTemp(c.q[c.ts:c.te], c.k == tIdent) && c.peek().op('.') {
				temp = true
			}
			if depth > 0 {
				break
			}
			if c.kw("on") {
				if p := c.peek(); p.kw("commit") && p.peek().kw("drop") {
					onCommitDrop = true
				}
			}
			if c.kw("as") && st2.Kind == KindOther {
				if p := c.peek(); p.kw("execute") {
					p.next()
					if name, ok := p.ident(); ok {
						st2.Kind, st2.Name = KindExecute, name
					}
				}
			}
		}
	}
	if temp && !onCommitDrop {
		st.Kind = KindTempTable
	}
	return st, st2
}

// selectIntoTemp reports whether a SELECT-like statement has
// INTO [LOCAL|GLOBAL] TEMP|TEMPORARY [TABLE] name or INTO [TABLE] pg_temp.name.
func (c *sqlCursor) selectIntoTemp() bool {
	afterInsert := false
	for ; !c.eof(); c.next() {
		if c.kw("into") && !afterInsert {
			d := c.peek()
			if d.kw("local") || d.kw("global") {
				d.next()
			}
			if d.kw("temp") || d.kw("temporary") {
				e := d.peek()
				if e.kw("table") || e.k == tQIdent || e.k == tIdent && !notTableName(e.q[e.ts:e.te]) {
					return true
				}
			}
			if d.kw("table") {
				d.next()
			}
			if (d.k == tIdent || d.k == tQIdent) && isPgTemp(d.q[d.ts:d.te], d.k == tIdent) && d.peek().op('.') {
				return true
			}
		}
		afterInsert = c.kw("insert") || c.kw("merge")
	}
	return false
}

// notTableName reports whether a word after INTO TEMP shows that TEMP is the
// table's name rather than the TEMP option.
func notTableName(w []byte) bool {
	for _, s := range [...]string{"from", "where", "group", "having", "window", "order",
		"limit", "offset", "fetch", "for", "union", "intersect", "except", "values",
		"select", "default", "as", "overriding", "with", "on", "returning", "using",
		"options", "into"} {
		if foldEq(w, s) {
			return true
		}
	}
	return false
}
