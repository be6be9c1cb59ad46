package proxy

import (
	"encoding/binary"
	"fmt"
	"maps"
	"sync"
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

// replayLocked returns the Query that gives the attached backend the client's
// settings (nil when they match) and records them as the backend's. ss.mu is
// held.
func (ss *session) replayLocked(be *pool.Backend) []byte {
	q := ss.e.State.Replay(&ss.e.Server.Settings, be.StateKey)
	be.StateKey = ss.e.State.WantKey
	if q != nil {
		ss.srv.replays.Add(1)
	}
	return q
}

// startupCache interns the startup settings of clients: an application's
// connections usually start with the same ones, and the engine never changes
// a client's startup map (its wanted settings are copied before they change),
// so they share one map. It keeps at most maxStartupMaps maps.
type startupCache struct {
	mu   sync.Mutex
	maps map[uint64][]engine.Settings
	n    int
}

const maxStartupMaps = 1024

// intern returns a map equal to m (whose SettingsKey is key), m itself when
// none is kept yet.
func (c *startupCache) intern(m engine.Settings, key uint64) engine.Settings {
	if len(m) == 0 {
		return m
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, have := range c.maps[key] {
		if maps.Equal(have, m) {
			return have
		}
	}
	if c.n < maxStartupMaps {
		if c.maps == nil {
			c.maps = make(map[uint64][]engine.Settings)
		}
		c.maps[key] = append(c.maps[key], m)
		c.n++
	}
	return m
}

// initEngine connects the client's protocol engine to the server's shared
// statements, counters and log.
func (ss *session) initEngine() {
	st := &ss.e.State
	st.Startup = ss.srv.startups.intern(st.Startup, st.WantKey)
	st.Want = st.Startup
	ss.e.Env = ss.srv.options().engineEnv()
	ss.e.Track, ss.e.Pooled = ss.track, ss.pooled
	ss.e.Hooks = ss
}

// StatementLimit is the engine's Hooks.StatementLimit: the first refusal is
// logged.
func (ss *session) StatementLimit(first bool) {
	if !first {
		return
	}
	// A client that keeps preparing new statements is usually an application
	// that leaks them.
	ss.srv.log.Warn("client reached its prepared-statement bounds; further statements refused (54000)",
		"client", ss.addr, "user", ss.user, "database", ss.db, "application_name", ss.app,
		"statements", ss.e.Stmts.Len(), "bytes", ss.e.Stmts.Bytes(),
		"max_statements", ss.e.Env.Limits.MaxClientStatements, "max_bytes", ss.e.Env.Limits.MaxClientStatementBytes)
}

// Pinned is the engine's Hooks.Pinned: the client was just pinned for reason
// (engine.State decides it: state that cannot move to another server
// connection); counted and logged.
func (ss *session) Pinned(reason string) {
	ss.srv.countPin(reason)
	ss.srv.log.Info("client pinned to its server connection", "client", ss.addr, "user", ss.user,
		"database", ss.db, "application_name", ss.app, "reason", reason)
}

// probeDueLocked reports whether the backend must be asked about session state
// before it is released (or the client unpinned). ss.mu is held.
func (ss *session) probeDueLocked() bool {
	return ss.boundaryLocked().ProbeDue()
}

// probe asks the backend, between transactions, for the current values of the
// settings the client's last transaction touched and, for a pinned client,
// whether anything still pins it; it records the answers. The caller reads be
// (the client goroutine in syncRead, or the server goroutine); the client
// goroutine waits in attach meanwhile.
func (ss *session) probe(be *pool.Backend) error {
	ss.mu.Lock()
	pr := ss.e.State.StartProbe()
	ss.probing = true
	ss.mu.Unlock()
	defer func() {
		ss.mu.Lock()
		ss.probing = false
		ss.cond.Broadcast()
		ss.mu.Unlock()
	}()
	_ = be.Conn.SetDeadline(time.Now().Add(cleanupTimeout))
	defer be.Conn.SetDeadline(time.Time{})
	if _, err := be.Conn.Write(pr.Query); err != nil {
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
			failed = fmt.Errorf("%w: %s (%s)", engine.ErrProbe, f.Message, f.Code)
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
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.finishProbeLocked(be, pr, row)
}

// finishProbeLocked records the probe's answer: the values of row (the last
// DataRow), a new state key for be, a client unpinned. ss.mu is held.
func (ss *session) finishProbeLocked(be *pool.Backend, pr engine.StateProbe, row [][]byte) error {
	var server *engine.Settings
	if ss.e.Server != nil {
		server = &ss.e.Server.Settings
	}
	pin := ss.e.State.Pin
	key, keyChanged, unpinned, err := ss.e.State.FinishProbe(pr, row, server)
	if err != nil {
		return err
	}
	if keyChanged {
		be.StateKey = key
	}
	if unpinned {
		ss.srv.log.Info("client unpinned from its server connection", "client", ss.addr, "user", ss.user,
			"database", ss.db, "application_name", ss.app, "reason", pin)
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
	ss.e.Q.Push(engine.Pending{Kind: engine.ExpectQuery, Action: engine.Swallow, Undo: x})
	ss.swallowing.Add(1)
}

// frontSwallowed reports whether the oldest pending answer belongs to a Query the
// proxy sent on its own.
func (ss *session) frontSwallowed() bool {
	if ss.swallowing.Load() == 0 {
		return false
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	swallow, _ := ss.e.SwallowFront(wire.MsgReadyForQuery)
	return swallow
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
