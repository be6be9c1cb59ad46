package proxy

import (
	"encoding/binary"
	"maps"
	"sync"

	"github.com/pgsidecar/pgsidecar/internal/engine"
	"github.com/pgsidecar/pgsidecar/internal/pool"
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
