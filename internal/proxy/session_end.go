package proxy

import (
	"errors"
	"io"
	"net"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/engine"
	"github.com/pgsidecar/pgsidecar/internal/pool"
	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// How a client ends: the proxy ends it (terminate, drain, forceClose) or it
// leaves; the loop then returns its server connection to a known state
// (loopSess.leave) and tells it why (loopSess.end), all within bounds
// whatever the client does.

// terminate ends the client for reason: on the loop when the loop serves it
// (loopSess.kill), else (logging in, the console) by waking its goroutine
// from its read.
//
// A client that does not read is ended too: writes to it get killWriteGrace to
// finish, and from the next message boundary on no answer is forwarded to it,
// so that the attached server connection, in the middle of a response, is
// closed (PostgreSQL rolls back) and its pool slot freed. Waits of the client
// (for a backend, for message memory, for its answers to drain) end at once.
func (ss *session) terminate(reason killReason) {
	ss.mu.Lock()
	if ss.kill == killNone {
		ss.kill = reason
	}
	if ls := ss.ls; ls != nil {
		// The event loop serves the client: it ends it there.
		ss.mu.Unlock()
		ls.post(ls.killed)
		return
	}
	ss.markDyingLocked()
	ss.mu.Unlock()
	ss.killDeadlines()
}

// killDeadlines wakes the goroutine of a client logging in (or of the console)
// from its read and bounds the writes to a client being ended.
func (ss *session) killDeadlines() {
	ss.mu.Lock()
	c := ss.conn
	ss.mu.Unlock()
	if c == nil {
		return // on the event loop (terminate posts there)
	}
	_ = c.SetReadDeadline(time.Unix(1, 0))
	_ = c.SetWriteDeadline(time.Now().Add(killWriteGrace))
}

// forceClose closes the client's connection and the server connection it
// holds now, whatever it is doing: the last resort of Shutdown.
func (ss *session) forceClose() {
	ss.mu.Lock()
	if ls := ss.ls; ls != nil {
		ss.mu.Unlock()
		ls.post(ls.forceClose)
		return
	}
	var c net.Conn // logging in, or the console: no server connection
	if ss.conn != nil {
		c = ss.sock // not a TLS conn's Close, which may wait to send close_notify
	}
	ss.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// drain is called at the start of Shutdown: a client between transactions is ended
// now, one inside a transaction when its backend is released.
func (ss *session) drain() {
	ss.mu.Lock()
	ss.draining = true
	idle := ss.be == nil
	ss.mu.Unlock()
	if idle {
		ss.terminate(killShutdown)
	}
}

// endMessage is the FATAL a client ended for reason or cause gets (code ""
// when none), counting and logging what the proxy refused.
func (ss *session) endMessage(reason killReason, cause error) (code, msg string) {
	switch {
	case reason == killShutdown, errors.Is(cause, errDraining):
		code, msg = wire.CodeAdminShutdown, "terminating connection: pgsidecar is shutting down"
	case reason == killIdleTx:
		code, msg = wire.CodeIdleInTransactionTimout, "terminating connection due to idle-in-transaction timeout"
	case reason == killTxTimeout:
		code, msg = wire.CodeTransactionTimeout, "terminating connection due to transaction timeout"
	case reason == killAdmin:
		code, msg = wire.CodeAdminShutdown, "terminated by the admin console"
	case reason == killServerLost:
		if !ss.fatalForwarded {
			code, msg = wire.CodeConnectionFailure, "pgsidecar: server connection lost"
		}
	case errors.Is(cause, errMsgTooBig):
		ss.srv.tooLarge.Add(1)
		ss.srv.log.Warn("client message too large, closing the client", "client", ss.addr, "user", ss.user, "database", ss.db,
			"application_name", ss.app, "error", cause)
		code, msg = wire.CodeProgramLimitExceeded, "pgsidecar: "+cause.Error()
	case errors.Is(cause, errMsgMemory):
		ss.srv.memTimeout.Add(1)
		ss.srv.log.Warn("no memory for a client message, closing the client", "client", ss.addr, "user", ss.user,
			"database", ss.db, "application_name", ss.app, "error", cause)
		code, msg = wire.CodeOutOfMemory, "pgsidecar: "+cause.Error()
	case errors.Is(cause, errProtocol), errors.Is(cause, wire.ErrInvalidLength):
		ss.srv.protoErr.Add(1)
		ss.srv.log.Info("client protocol violation", "client", ss.addr, "user", ss.user, "database", ss.db, "error", cause)
		code, msg = wire.CodeProtocolViolation, cause.Error()
	case errors.Is(cause, io.ErrUnexpectedEOF):
		ss.srv.log.Debug("client disconnected mid-message", "client", ss.addr)
	}
	return code, msg
}

// countRollback counts why a transaction the client did not end is rolled
// back. ss.mu is held.
func (ss *session) countRollback() {
	if ss.e.Between() && ss.e.Tx == wire.TxIdle {
		return
	}
	switch ss.kill {
	case killIdleTx:
		ss.srv.rollbacks[rbIdleTimeout].Add(1)
	case killShutdown:
		ss.srv.rollbacks[rbShutdown].Add(1)
	case killTxTimeout:
		ss.srv.rollbacks[rbTxTimeout].Add(1)
	case killAdmin:
		ss.srv.rollbacks[rbAdmin].Add(1)
	case killServerLost:
	default:
		ss.srv.rollbacks[rbDisconnect].Add(1)
	}
}

// cleanupQueries appends to q what returns be, attached and between
// statements, to a known state when the client leaves (ROLLBACK, DISCARD ALL
// or RESET ALL, else a Sync), queueing their answers to be dropped. ss.mu is
// held.
func (ss *session) cleanupQueries(be *pool.Backend, q []byte) []byte {
	start := len(q)
	if ss.e.Tx != wire.TxIdle {
		q = wire.AppendQuery(q, "ROLLBACK")
		ss.e.Outstanding++
		ss.pushSwallowedLocked(nil)
	}
	if ss.srv.options().Mode == ModeSession || ss.e.State.Pin != "" {
		q = wire.AppendQuery(q, "DISCARD ALL")
		ss.e.Outstanding++
		ss.pushSwallowedLocked(nil)
		if ss.e.Server != nil {
			ss.e.Server.Dirty = true   // DISCARD ALL dropped the proxy's statements too
			ss.e.Server.Settings = nil // ... and reset every setting
			be.StateKey = 0
		}
	} else if len(ss.e.State.Dirty) > 0 {
		// Settings changed and not read back: back to the backend's defaults.
		q = wire.AppendQuery(q, "RESET ALL")
		ss.e.Outstanding++
		ss.pushSwallowedLocked(nil)
		if ss.e.Server != nil {
			ss.e.Server.Settings = nil
			be.StateKey = 0
		}
	}
	if len(q) == start {
		// Attached while idle: a Sync brings the ReadyForQuery at which the
		// backend is released.
		q = wire.AppendSync(q)
		ss.e.Outstanding++
		ss.e.Q.Push(engine.Pending{Kind: engine.ExpectSync, Action: engine.Swallow})
	}
	return q
}
