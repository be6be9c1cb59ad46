package engine

import (
	"errors"
	"fmt"
	"github.com/pgsidecar/pgsidecar/internal/sqlscan"
	"maps"
	"slices"
	"strings"

	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// State is what a client's session state is to the proxy in transaction mode
// (docs/design.md section 6): the settings it wants on every server
// connection, what changed since it was attached, and what pins it to its
// server connection.
type State struct {
	// Startup are the client's startup parameters (and "-c" options) that are
	// settings; Want are the settings the client has now, WantKey their
	// SettingsKey (server connections with the same key need no replay).
	Startup, Want Settings
	WantKey       uint64
	// Dirty are the settings changed since the server connection was attached,
	// to read back at the end of the transaction; ResetNames those RESET since,
	// which go back to the client's startup values.
	Dirty      map[string]struct{}
	ResetNames []string
	// Pin is why the client keeps its server connection between transactions
	// ("" when it does not); PinListen: it listens, so notifications reach it
	// while idle; PinPermanent: nothing can undo it (LOAD); PinCheck: a
	// statement may have removed what pins it, so ask the server.
	Pin                               string
	PinListen, PinPermanent, PinCheck bool
	wantOwn                           bool // Want is not Startup's map (it changed)
	// SQLNames are the statements of the client's SQL PREPAREs: they live on
	// its server connection only, so they pin it (reason "sql_prepare").
	SQLNames map[string]struct{}
}

// Init records the client's startup parameters (and the "-c" items of its
// options parameter) as its settings.
func (s *State) Init(st *wire.Startup) {
	s.Startup = Settings{}
	for _, p := range st.Params {
		n := strings.ToLower(p.Name)
		if NotSettings[n] || strings.HasPrefix(n, "_pq_.") {
			continue
		}
		s.Startup[n] = p.Value
	}
	for _, kv := range ParseOptions(st.Param("options")) {
		s.Startup[strings.ToLower(kv[0])] = kv[1]
	}
	s.Want, s.wantOwn = s.Startup, false // copied when it first changes (FinishProbe)
	s.WantKey = SettingsKey(s.Want)
}

// Replay returns the Query that gives a server connection whose settings are
// *have (haveKey: their key, 0 when unknown) the client's settings, or nil when
// they already match, and records the client's settings in *have. The
// connection's key is s.WantKey afterwards.
func (s *State) Replay(have *Settings, haveKey uint64) []byte {
	if *have == nil {
		*have = Settings{}
	}
	h := *have
	if haveKey == s.WantKey && len(h) == len(s.Want) {
		return nil
	}
	var resets, sets []string
	for k := range h {
		if _, ok := s.Want[k]; !ok {
			resets = append(resets, k)
		}
	}
	for k, v := range s.Want {
		if cur, ok := h[k]; !ok || cur != v {
			sets = append(sets, k)
		}
	}
	if len(resets) == 0 && len(sets) == 0 {
		return nil
	}
	slices.Sort(resets)
	slices.SortFunc(sets, func(a, b string) int { return strings.Compare(SetOrder(a), SetOrder(b)) })
	var q strings.Builder
	for _, k := range resets {
		q.WriteString("RESET ")
		q.WriteString(QuoteIdent(k))
		q.WriteString(";")
		delete(h, k)
	}
	if len(sets) > 0 {
		q.WriteString("SELECT ")
		for i, k := range sets {
			if i > 0 {
				q.WriteString(", ")
			}
			fmt.Fprintf(&q, "pg_catalog.set_config(%s, %s, false)", QuoteLiteral(k), QuoteLiteral(s.Want[k]))
			h[k] = s.Want[k]
		}
	}
	return wire.AppendQuery(nil, q.String())
}

// Apply records the effect of a statement forwarded to the server connection
// whose settings are server. It returns the reason the client is pinned now if
// this statement pinned it ("" if it did not, or it already was).
func (s *State) Apply(e *Effect, server Settings) (pinned string) {
	if s.Dirty == nil && (len(e.Dirty) > 0 || e.ResetAll) {
		s.Dirty = map[string]struct{}{}
	}
	for _, n := range e.Dirty {
		s.Dirty[n] = struct{}{}
	}
	for _, n := range e.Resets {
		if _, ok := s.Startup[n]; ok {
			s.ResetNames = append(s.ResetNames, n)
		}
	}
	if e.ResetAll {
		for n := range s.Startup {
			s.ResetNames = append(s.ResetNames, n)
		}
		for n := range s.Want {
			s.Dirty[n] = struct{}{}
		}
		for n := range server {
			s.Dirty[n] = struct{}{}
		}
	}
	if e.Pin != "" {
		// Ask the server at the end of the transaction: a try-lock that failed, a
		// LISTEN rolled back, an error leave nothing to pin for.
		s.PinCheck = true
		pinned = s.PinFor(e.Pin)
		if e.Listen {
			s.PinListen = true
		}
		if e.Permanent {
			s.PinPermanent = true
		}
	}
	if e.UnpinCheck && s.Pin != "" {
		s.PinCheck = true
	}
	return pinned
}

// PinFor pins the client for reason unless it already is pinned; it returns
// reason when it pinned the client, "" otherwise.
func (s *State) PinFor(reason string) string {
	if s.Pin != "" {
		return ""
	}
	s.Pin = reason
	return reason
}

// FixupNames are the settings e resets that have startup values: a RESET goes
// back to the server's default, not to the client's startup value.
func (s *State) FixupNames(e *Effect) []string {
	var names []string
	if e.ResetAll {
		for n := range s.Startup {
			names = append(names, n)
		}
	} else {
		for _, n := range e.Resets {
			if _, ok := s.Startup[n]; ok {
				names = append(names, n)
			}
		}
	}
	return names
}

// FixupQuery returns the Query that puts the client's startup values back after
// e's RESETs, or nil.
func (s *State) FixupQuery(e *Effect) []byte {
	names := s.FixupNames(e)
	if len(names) == 0 {
		return nil
	}
	return wire.AppendQuery(nil, s.FixupSQL(names))
}

// FixupSQL sets the named settings to the client's startup values where the
// session no longer sets them (a RESET took effect; one that failed or was
// rolled back leaves source = 'session'). It sorts names.
func (s *State) FixupSQL(names []string) string {
	slices.Sort(names)
	var q strings.Builder
	q.WriteString("SELECT pg_catalog.set_config(name, CASE lower(name)")
	for _, n := range names {
		fmt.Fprintf(&q, " WHEN %s THEN %s", QuoteLiteral(n), QuoteLiteral(s.Startup[n]))
	}
	q.WriteString(" END, false) FROM pg_catalog.pg_settings WHERE source <> 'session' AND lower(name) IN (")
	for i, n := range names {
		if i > 0 {
			q.WriteString(", ")
		}
		q.WriteString(QuoteLiteral(n))
	}
	q.WriteString(")")
	return q.String()
}

// pinLeftQuery counts what still pins a server connection to its client.
const pinLeftQuery = "(SELECT count(*) FROM pg_catalog.pg_listening_channels())" +
	" + (SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid())" +
	" + (SELECT count(*) FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema())" +
	" + (SELECT count(*) FROM pg_catalog.pg_cursors WHERE is_holdable)" +
	" + (SELECT count(*) FROM pg_catalog.pg_prepared_statements WHERE from_sql)"

// StateProbe is one question to a server connection about session state, between
// transactions: the current values of the settings the last transaction
// touched, and for a pinned client whether anything still pins it.
type StateProbe struct {
	// Query is the simple Query to send; its last row answers.
	Query []byte
	names []string
	check bool
}

// StartProbe builds the probe of what changed since the last one and forgets
// those changes: a probe that fails ends the client's use of the connection.
func (s *State) StartProbe() StateProbe {
	names := make([]string, 0, len(s.Dirty))
	for n := range s.Dirty {
		names = append(names, n)
	}
	check := s.Pin != "" && s.PinCheck && !s.PinPermanent
	resets := s.ResetNames
	s.ResetNames = nil
	for _, n := range resets {
		if _, ok := s.Dirty[n]; !ok {
			names = append(names, n) // read back what the fix-up set
		}
	}
	s.Dirty = nil
	s.PinCheck = false
	slices.Sort(names)
	var q strings.Builder
	if len(resets) > 0 {
		// A RESET returns to the client's startup value, not the server's.
		slices.Sort(resets)
		q.WriteString(s.FixupSQL(slices.Compact(resets)))
		q.WriteString("; ")
	}
	q.WriteString("SELECT ")
	for i, n := range names {
		if i > 0 {
			q.WriteString(", ")
		}
		fmt.Fprintf(&q, "pg_catalog.current_setting(%s, true)", QuoteLiteral(n))
	}
	if check {
		if len(names) > 0 {
			q.WriteString(", ")
		}
		q.WriteString(pinLeftQuery)
	}
	return StateProbe{Query: wire.AppendQuery(nil, q.String()), names: names, check: check}
}

// ErrProbe is the error of a probe whose answer does not fit its question.
var ErrProbe = errors.New("session state probe failed")

// FinishProbe records the probe's answer, row (the columns of its last
// DataRow, nil for NULL), as the client's settings and those of the server
// connection (*server, created if nil). serverKey is the connection's key
// afterwards (0: its settings are no client's); keyChanged says whether it
// must be updated. unpinned is true when nothing pins the client any more.
func (s *State) FinishProbe(p StateProbe, row [][]byte, server *Settings) (serverKey uint64, keyChanged, unpinned bool, err error) {
	want := len(p.names)
	if p.check {
		want++
	}
	if len(row) != want {
		return 0, false, false, fmt.Errorf("%w: %d values for %d settings", ErrProbe, len(row), len(p.names))
	}
	if len(p.names) > 0 && !s.wantOwn {
		s.Want, s.wantOwn = maps.Clone(s.Want), true
		if s.Want == nil {
			s.Want = Settings{}
		}
	}
	for i, n := range p.names {
		if row[i] == nil {
			delete(s.Want, n)
			if server != nil {
				delete(*server, n)
			}
			continue
		}
		v := string(row[i])
		s.Want[n] = v
		if server != nil {
			if *server == nil {
				*server = Settings{}
			}
			(*server)[n] = v
		}
	}
	if len(p.names) > 0 {
		s.WantKey = SettingsKey(s.Want)
		if server != nil {
			serverKey, keyChanged = SettingsKey(*server), true
			if serverKey != s.WantKey {
				serverKey = 0 // not a state any client asks for by key
			}
		}
	}
	if p.check && string(row[len(row)-1]) == "0" {
		s.Pin, s.PinListen = "", false
		s.SQLNames = nil
		unpinned = true
	}
	return serverKey, keyChanged, unpinned, nil
}

// LocalDeallocate reports whether the proxy answers e itself: a lone
// DEALLOCATE of one of the client's protocol-level statements (known says
// the client has one by that name), or DEALLOCATE ALL, while the client has no
// SQL PREPAREd statement, which only the server could drop. In a failed
// transaction (failedTx) PostgreSQL refuses it, and so does the server. It
// sets e.LocalTag to the answer.
func (s *State) LocalDeallocate(e *QueryEffect, known, failedTx bool) bool {
	if !e.Single || failedTx || len(s.SQLNames) > 0 {
		return false
	}
	switch {
	case e.First == sqlscan.KindDeallocate && known:
		e.LocalTag = wire.AppendCommandComplete(nil, "DEALLOCATE")
	case e.First == sqlscan.KindDeallocateAll:
		e.LocalTag = wire.AppendCommandComplete(nil, "DEALLOCATE ALL")
	default:
		return false
	}
	return true
}

// ApplySQLPrepare records the SQL PREPAREs and DEALLOCATEs of a forwarded
// query. pinned is the reason the client is pinned now if this query pinned it
// ("" otherwise); dropAll says it dropped every prepared statement (DEALLOCATE
// ALL, DISCARD ALL), so the caller forgets the client's protocol-level ones
// and those of the server connection. The last SQL statement deallocated
// unpins a client pinned for them.
func (s *State) ApplySQLPrepare(e *QueryEffect) (pinned string, dropAll bool) {
	for _, n := range e.Prepare {
		if s.SQLNames == nil {
			s.SQLNames = make(map[string]struct{})
		}
		s.SQLNames[n] = struct{}{}
		if p := s.PinFor("sql_prepare"); p != "" {
			pinned = p
		}
	}
	for _, n := range e.Dealloc {
		delete(s.SQLNames, n)
	}
	if e.DropAll {
		s.SQLNames = nil
	}
	if s.Pin == "sql_prepare" && len(s.SQLNames) == 0 && (len(e.Dealloc) > 0 || e.DropAll) {
		s.Pin = ""
		s.SQLNames = nil
	}
	return pinned, e.DropAll
}
