package proxy

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/engine"
	"github.com/pgsidecar/pgsidecar/internal/pool"
	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// Session state in transaction mode (docs/design.md section 6).
//
// Settings are tracked: each client has the settings it wants (its startup
// parameters plus what its committed SET / RESET / set_config changed), each
// backend the settings the proxy left on it. A backend whose settings differ gets
// the difference (one swallowed Query) before the client's first message there;
// the pool prefers an idle backend whose settings already match. What a client's
// transaction changed is read back from the backend when the transaction is over
// (current_setting), so that rolled-back and failed SETs, SET LOCAL and savepoints
// need no modelling: the backend's word is the truth.
//
// State that cannot move (LISTEN, session advisory locks, temporary tables, WITH
// HOLD cursors, SQL PREPARE, LOAD, set_config with computed arguments) pins the
// client to its backend; after a statement that may have removed it (UNLISTEN,
// unlock, DISCARD, CLOSE, DEALLOCATE) the backend is asked whether anything is
// left, and the client is unpinned when nothing is.

// PinPolicy says what happens to a statement that would pin a client.
type PinPolicy int

const (
	// PinPolicyPin keeps the client on its backend until the state is gone.
	PinPolicyPin PinPolicy = iota
	// PinPolicyRefuse answers the statement with SQLSTATE 0A000 instead.
	PinPolicyRefuse
)

// initSettings records the client's startup parameters as its settings.
func (ss *session) initSettings(st *wire.Startup) {
	ss.startupSet = engine.Settings{}
	for _, p := range st.Params {
		n := strings.ToLower(p.Name)
		if engine.NotSettings[n] || strings.HasPrefix(n, "_pq_.") {
			continue
		}
		ss.startupSet[n] = p.Value
	}
	for _, kv := range engine.ParseOptions(st.Param("options")) {
		ss.startupSet[strings.ToLower(kv[0])] = kv[1]
	}
	ss.want = maps.Clone(ss.startupSet)
	ss.wantKey = engine.SettingsKey(ss.want)
}

// replayLocked returns the Query that gives the attached backend the client's
// settings (nil when they match) and records them as the backend's. ss.mu is
// held.
func (ss *session) replayLocked(be *pool.Backend) []byte {
	bs := ss.bstmts
	if bs.Settings == nil {
		bs.Settings = engine.Settings{}
	}
	if be.StateKey == ss.wantKey && len(bs.Settings) == len(ss.want) {
		return nil
	}
	var resets, sets []string
	for k := range bs.Settings {
		if _, ok := ss.want[k]; !ok {
			resets = append(resets, k)
		}
	}
	for k, v := range ss.want {
		if have, ok := bs.Settings[k]; !ok || have != v {
			sets = append(sets, k)
		}
	}
	if len(resets) == 0 && len(sets) == 0 {
		be.StateKey = ss.wantKey
		return nil
	}
	slices.Sort(resets)
	slices.SortFunc(sets, func(a, b string) int { return strings.Compare(engine.SetOrder(a), engine.SetOrder(b)) })
	var q strings.Builder
	for _, k := range resets {
		q.WriteString("RESET ")
		q.WriteString(engine.QuoteIdent(k))
		q.WriteString(";")
		delete(bs.Settings, k)
	}
	if len(sets) > 0 {
		q.WriteString("SELECT ")
		for i, k := range sets {
			if i > 0 {
				q.WriteString(", ")
			}
			fmt.Fprintf(&q, "pg_catalog.set_config(%s, %s, false)", engine.QuoteLiteral(k), engine.QuoteLiteral(ss.want[k]))
			bs.Settings[k] = ss.want[k]
		}
	}
	be.StateKey = ss.wantKey
	ss.srv.replays.Add(1)
	return wire.AppendQuery(nil, q.String())
}

// applyStateLocked records a forwarded statement's effect. ss.mu is held.
func (ss *session) applyStateLocked(e *engine.Effect) {
	if ss.dirty == nil && (len(e.Dirty) > 0 || e.ResetAll) {
		ss.dirty = map[string]struct{}{}
	}
	for _, n := range e.Dirty {
		ss.dirty[n] = struct{}{}
	}
	for _, n := range e.Resets {
		if _, ok := ss.startupSet[n]; ok {
			ss.resetNames = append(ss.resetNames, n)
		}
	}
	if e.ResetAll {
		for n := range ss.startupSet {
			ss.resetNames = append(ss.resetNames, n)
		}
	}
	if e.ResetAll {
		for n := range ss.want {
			ss.dirty[n] = struct{}{}
		}
		if ss.bstmts != nil {
			for n := range ss.bstmts.Settings {
				ss.dirty[n] = struct{}{}
			}
		}
	}
	if e.Pin != "" {
		// Ask the backend at the end of the transaction: a try-lock that failed, a
		// LISTEN rolled back, an error leave nothing to pin for.
		ss.pinCheck = true
		ss.pinLocked(e.Pin)
		if e.Listen {
			ss.pinListen = true
		}
		if e.Permanent {
			ss.pinPermanent = true
		}
	}
	if e.UnpinCheck && ss.pin != "" {
		ss.pinCheck = true
	}
}

// fixupQuery returns the Query that puts the client's own startup values back
// after a RESET (the backend's defaults are not the client's), or nil.
func (ss *session) fixupQuery(e *engine.Effect) []byte {
	names := ss.fixupNames(e)
	if len(names) == 0 {
		return nil
	}
	return wire.AppendQuery(nil, ss.fixupSQL(names))
}

// fixupNames are the settings e resets that have startup values.
func (ss *session) fixupNames(e *engine.Effect) []string {
	var names []string
	if e.ResetAll {
		for n := range ss.startupSet {
			names = append(names, n)
		}
	} else {
		for _, n := range e.Resets {
			if _, ok := ss.startupSet[n]; ok {
				names = append(names, n)
			}
		}
	}
	return names
}

// fixupSQL sets the named settings to the client's startup values where the
// session no longer sets them (a RESET took effect; one that failed or was
// rolled back leaves source = 'session').
func (ss *session) fixupSQL(names []string) string {
	slices.Sort(names)
	var q strings.Builder
	q.WriteString("SELECT pg_catalog.set_config(name, CASE lower(name)")
	for _, n := range names {
		fmt.Fprintf(&q, " WHEN %s THEN %s", engine.QuoteLiteral(n), engine.QuoteLiteral(ss.startupSet[n]))
	}
	q.WriteString(" END, false) FROM pg_catalog.pg_settings WHERE source <> 'session' AND lower(name) IN (")
	for i, n := range names {
		if i > 0 {
			q.WriteString(", ")
		}
		q.WriteString(engine.QuoteLiteral(n))
	}
	q.WriteString(")")
	return q.String()
}

// probeDueLocked reports whether the backend must be asked about session state
// before it is released (or the client unpinned). ss.mu is held.
func (ss *session) probeDueLocked() bool {
	return ss.boundaryLocked().ProbeDue()
}

// pinLeftQuery counts what still pins a backend to its client.
const pinLeftQuery = "(SELECT count(*) FROM pg_catalog.pg_listening_channels())" +
	" + (SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid())" +
	" + (SELECT count(*) FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema())" +
	" + (SELECT count(*) FROM pg_catalog.pg_cursors WHERE is_holdable)" +
	" + (SELECT count(*) FROM pg_catalog.pg_prepared_statements WHERE from_sql)"

var errProbe = errors.New("session state probe failed")

// probe asks the backend, between transactions, for the current values of the
// settings the client's last transaction touched and, for a pinned client,
// whether anything still pins it; it records the answers. The caller reads be
// (the client goroutine in syncRead, or the server goroutine); the client
// goroutine waits in attach meanwhile.
func (ss *session) probe(be *pool.Backend) error {
	ss.mu.Lock()
	names := make([]string, 0, len(ss.dirty))
	for n := range ss.dirty {
		names = append(names, n)
	}
	check := ss.pin != "" && ss.pinCheck && !ss.pinPermanent
	resets := ss.resetNames
	ss.resetNames = nil
	for _, n := range resets {
		if _, ok := ss.dirty[n]; !ok {
			names = append(names, n) // read back what the fix-up set
		}
	}
	ss.dirty = nil
	ss.pinCheck = false
	ss.probing = true
	ss.mu.Unlock()
	defer func() {
		ss.mu.Lock()
		ss.probing = false
		ss.cond.Broadcast()
		ss.mu.Unlock()
	}()
	slices.Sort(names)
	var q strings.Builder
	if len(resets) > 0 {
		// A RESET returns to the client's startup value, not the backend's.
		slices.Sort(resets)
		q.WriteString(ss.fixupSQL(slices.Compact(resets)))
		q.WriteString("; ")
	}
	q.WriteString("SELECT ")
	for i, n := range names {
		if i > 0 {
			q.WriteString(", ")
		}
		fmt.Fprintf(&q, "pg_catalog.current_setting(%s, true)", engine.QuoteLiteral(n))
	}
	if check {
		if len(names) > 0 {
			q.WriteString(", ")
		}
		q.WriteString(pinLeftQuery)
	}
	_ = be.Conn.SetDeadline(time.Now().Add(cleanupTimeout))
	defer be.Conn.SetDeadline(time.Time{})
	if _, err := be.Conn.Write(wire.AppendQuery(nil, q.String())); err != nil {
		return err
	}
	var row [][]byte
	var failed error
	notified := false
	r := be.R
	for {
		h, err := wire.PeekHeader(r, wire.MaxMessageLength)
		if err != nil {
			return err
		}
		msg, err := r.Peek(1 + h.Len)
		if err != nil {
			return midMessage(err)
		}
		switch h.Type {
		case wire.MsgRowDescription: // the last statement's row counts
			row = nil
		case wire.MsgDataRow:
			row = parseDataRow(msg[wire.HeaderLen:])
		case wire.MsgErrorResponse:
			f := wire.ParseError(msg[wire.HeaderLen:])
			failed = fmt.Errorf("%w: %s (%s)", errProbe, f.Message, f.Code)
		case wire.MsgNotification:
			// A notification for a listening client that the backend sent before
			// the probe's ReadyForQuery: it is the client's, not the probe's. The
			// caller reads be, so the client writer is its own.
			if !ss.swallow.Load() && !ss.dying.Load() {
				ss.w.Write(msg)
				notified = true
			}
		}
		if _, err := r.Discard(1 + h.Len); err != nil {
			return err
		}
		if h.Type == wire.MsgReadyForQuery {
			break
		}
	}
	if notified {
		// Now: a server goroutine that goes on reading an idle listener's backend
		// flushes only after the next message.
		ss.w.Flush()
	}
	if failed != nil {
		return failed
	}
	want := len(names)
	if check {
		want++
	}
	if len(row) != want {
		return fmt.Errorf("%w: %d values for %d settings", errProbe, len(row), len(names))
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	bs := ss.bstmts
	for i, n := range names {
		if row[i] == nil {
			delete(ss.want, n)
			if bs != nil {
				delete(bs.Settings, n)
			}
			continue
		}
		v := string(row[i])
		ss.want[n] = v
		if bs != nil {
			if bs.Settings == nil {
				bs.Settings = engine.Settings{}
			}
			bs.Settings[n] = v
		}
	}
	if len(names) > 0 {
		ss.wantKey = engine.SettingsKey(ss.want)
		if bs != nil {
			be.StateKey = engine.SettingsKey(bs.Settings)
			if be.StateKey != ss.wantKey {
				be.StateKey = 0 // not a state any client asks for by key
			}
		}
	}
	if check && string(row[len(row)-1]) == "0" {
		ss.srv.log.Info("client unpinned from its server connection", "client", ss.addr, "user", ss.user,
			"database", ss.db, "application_name", ss.app, "reason", ss.pin)
		ss.pin, ss.pinListen = "", false
		ss.sqlNames = nil
	}
	return nil
}

// parseDataRow returns the columns of a DataRow body (nil for NULL).
func parseDataRow(b []byte) [][]byte {
	if len(b) < 2 {
		return nil
	}
	n := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	out := make([][]byte, 0, n)
	for i := 0; i < n && len(b) >= 4; i++ {
		l := int(int32(binary.BigEndian.Uint32(b)))
		b = b[4:]
		if l < 0 {
			out = append(out, nil)
			continue
		}
		if l > len(b) {
			return nil
		}
		out = append(out, append([]byte{}, b[:l]...)) // copied: the reader's buffer moves on
		b = b[l:]
	}
	return out
}

// pushSwallowedLocked queues a Query the proxy sends on its own: all of its
// answer is dropped. ss.mu is held.
func (ss *session) pushSwallowedLocked(x *engine.Undo) {
	ss.q.Push(engine.Pending{Kind: engine.ExpectQuery, Action: engine.Swallow, Undo: x})
	ss.swallowing.Add(1)
}

// resetQueueLocked empties the answer queue. ss.mu is held.
func (ss *session) resetQueueLocked() {
	ss.q.Reset()
	ss.q.Trim(256) // a burst's queue is not kept while the client is idle
	ss.swallowing.Store(0)
}

// frontSwallowed reports whether the oldest pending answer belongs to a Query the
// proxy sent on its own.
func (ss *session) frontSwallowed() bool {
	if ss.swallowing.Load() == 0 {
		return false
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	p := ss.q.Front()
	return p != nil && p.Kind == engine.ExpectQuery && p.Action == engine.Swallow
}

// routeSwallowed drops every message of the answer to a Query the proxy sent on
// its own. An error answering the Query that gives the client its settings ends
// the client: it cannot have them on this backend. It reports whether the
// message belongs to such a Query. A notification never does: the backend of a
// listening client sends it whenever it is idle, also before the ReadyForQuery
// of the proxy's Query, and it is the client's.
func (ss *session) routeSwallowed(r *bufio.Reader, h wire.Header) bool {
	if ss.swallowing.Load() == 0 || h.Type == wire.MsgNotification {
		return false
	}
	ss.mu.Lock()
	p := ss.q.Front()
	if p == nil || p.Kind != engine.ExpectQuery || p.Action != engine.Swallow {
		ss.mu.Unlock()
		return false
	}
	if h.Type != wire.MsgErrorResponse || p.Undo == nil || !p.Undo.Fatal {
		ss.mu.Unlock()
		return true
	}
	var msg string
	if m, err := wire.PeekMessage(r, h); err == nil {
		f := wire.ParseError(m[wire.HeaderLen:])
		msg = f.Message + " (" + f.Code + ")"
	}
	be := ss.be
	if ss.kill == killNone {
		ss.kill = killServerLost
	}
	ss.doomed = true
	ss.mu.Unlock()
	ss.srv.log.Warn("could not give a client its settings on a server connection, closing it",
		"client", ss.addr, "user", ss.user, "database", ss.db, "error", msg)
	if be != nil {
		be.Conn.Close()
	}
	return true
}

// settle runs probe while the decision is probeNow and returns the final one.
func (ss *session) settle(be *pool.Backend, act readyAction, async bool) readyAction {
	for act == probeNow {
		if err := ss.probe(be); err != nil {
			ss.srv.log.Warn("could not read session state from a server connection, closing it",
				"client", ss.addr, "user", ss.user, "database", ss.db, "server_pid", be.PID, "error", err)
			ss.doom(be)
		}
		ss.mu.Lock()
		act = ss.decideLocked(be, async)
	}
	return act
}

// refuseLocally answers a statement --pin-policy refuse turns away while no
// backend is attached. With one attached, it leaves e.refuse for sendQuery.
func (ss *session) refuseLocally(e *engine.QueryEffect, h wire.Header) bool {
	e.Refuse = engine.Refusal(e.State.PinKind)
	ss.mu.Lock()
	attached := ss.be != nil
	ss.mu.Unlock()
	if attached {
		return false
	}
	if ss.held != nil {
		ss.held = nil
	} else if _, err := ss.r.Discard(1 + h.Len); err != nil {
		return false
	}
	ss.payOwed()
	ss.w.Write(e.Refuse)
	ss.w.Write(readyIdle)
	ss.w.Flush()
	return true
}

// failQuery fails (a syntax error) in place of a refused statement, so that an
// open transaction fails as it would on PostgreSQL; the client sees the refusal.
var failQuery = wire.AppendQuery(nil, "pgsidecar refused this statement")
