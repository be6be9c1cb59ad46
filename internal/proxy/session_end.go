package proxy

import (
	"errors"
	"io"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/engine"
	"github.com/pgsidecar/pgsidecar/internal/pool"
	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// How a client ends: the proxy ends it (terminate, drain, forceClose) or it
// leaves, and its goroutine then returns its backend to a known state (leave)
// and tells it why (end), all within bounds whatever the client does.

// terminate asks the client goroutine to end the client for reason: it wakes the
// goroutine from its read.
//
// A client that does not read is ended too: writes to it get killWriteGrace to
// finish, and from the next message boundary on no answer is forwarded to it
// (the client goroutine stops reading the backend, a server goroutine drops
// what it reads), so the client goroutine gets to end it: the attached backend,
// in the middle of a response, is closed (PostgreSQL rolls back) and its pool
// slot freed. Waits of the client (for a backend, for message memory, for its
// answers to drain) end at once.
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
	if ss.goSide != nil { // nil: the loop served it and has finished
		ss.cond.Broadcast()
	}
	ss.mu.Unlock()
	ss.killDeadlines()
}

// killDeadlines wakes the client goroutine from its read and bounds the writes
// to a client being ended.
func (ss *session) killDeadlines() {
	if ss.conn == nil {
		return // on the event loop (terminate posts there)
	}
	_ = ss.conn.SetReadDeadline(time.Unix(1, 0))
	_ = ss.conn.SetWriteDeadline(time.Now().Add(killWriteGrace))
}

// forceClose closes the client's connection and the backend it holds now,
// whatever the goroutines serving it are doing: the last resort of Shutdown.
func (ss *session) forceClose() {
	ss.mu.Lock()
	if ls := ss.ls; ls != nil {
		ss.mu.Unlock()
		ls.post(ls.forceClose)
		return
	}
	be := ss.be
	if be != nil {
		ss.doomed = true // never released to another client
	}
	c := ss.conn
	ss.mu.Unlock()
	if c == nil {
		return // the loop served it and has finished
	}
	c.Close()
	if be != nil {
		be.Conn.Close()
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

// end finishes the client goroutine: the attached backend is cleaned up and released,
// the client told why if the proxy ends it, and the connection closed.
func (ss *session) end(cause error) {
	ss.mu.Lock()
	reason := ss.kill
	ss.mu.Unlock()
	if !ss.leave() {
		ss.unsettled = true
		ss.releaseStmts()
		ss.conn.Close()
		return
	}
	ss.releaseStmts()
	ss.held = nil
	ss.releaseBig()
	if ss.idleTimer != nil {
		ss.idleTimer.Stop()
	}
	code, msg := ss.endMessage(reason, cause)
	if code != "" && ss.w != nil && !ss.streamBroken.Load() && ss.cout.err == nil {
		// A client whose last write failed (it does not read) is not waited for again.
		_ = ss.conn.SetWriteDeadline(time.Now().Add(fatalWriteTimeout))
		ss.w.Write(wire.AppendError(nil, wire.SeverityFatal, code, msg, ""))
		ss.w.Flush()
	}
	ss.conn.Close()
	if ss.bw != nil {
		ss.bw.Reset(nil)
		writerPool.Put(ss.bw)
		ss.bw = nil
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

// leave returns the attached backend, if any, to a known state: a backend idle in a
// transaction is rolled back (and in session mode reset with DISCARD ALL) and
// released; one in the middle of a response or a message batch is closed, which
// makes PostgreSQL roll back.
//
// It reports whether every server goroutine of the session has stopped: false
// only when one is stuck even after its backend and the client connection were
// closed under it, so that shutdown cannot hang on it.
func (ss *session) leave() (settled bool) {
	// Whatever reaches the client from now on (the rest of an answer, a FATAL)
	// is not worth waiting long for: a client that left or is being ended may
	// not read.
	_ = ss.conn.SetWriteDeadline(time.Now().Add(killWriteGrace))
	ss.mu.Lock()
	ss.gone = true
	ss.doneWritingLocked()
	be := ss.be
	if be == nil {
		ss.mu.Unlock()
		// A server goroutine may still be finishing (serverFailed): it uses the
		// client writer, so wait before the buffers go back to their pools.
		return ss.awaitReaders(nil)
	}
	clean := ss.e.Between()
	ss.countRollback()
	var q []byte
	if !clean {
		ss.doomed = true
	} else {
		q = ss.cleanupQueries(be, nil)
		ss.swallow.Store(true)
	}
	if !ss.reader {
		// Nobody reads the backend between batches: a server goroutine swallows the
		// cleanup's answers and releases the backend (or destroys a closed one).
		ss.startReaderLocked(be)
	}
	ss.cond.Broadcast()
	ss.mu.Unlock()
	if !clean {
		be.Conn.Close()
	} else if len(q) > 0 {
		_ = be.Conn.SetWriteDeadline(time.Now().Add(cleanupTimeout))
		ss.bw.Write(q)
		if err := ss.bw.Flush(); err != nil || ss.bout.err != nil {
			ss.doom(be)
		}
		_ = be.Conn.SetWriteDeadline(time.Time{})
	}
	return ss.awaitReaders(be)
}

// awaitReaders waits for the session's server goroutine, if any, to stop. After
// cleanupTimeout it closes be (the backend being cleaned up, if any), then the
// client connection; it gives up a second later and reports false.
func (ss *session) awaitReaders(be *pool.Backend) bool {
	done := make(chan struct{})
	go func() { ss.readerWG.Wait(); close(done) }()
	t := time.NewTimer(cleanupTimeout)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
	}
	if be != nil {
		ss.srv.log.Warn("server connection did not finish cleanup in time, closing it", "client", ss.addr, "server_pid", be.PID)
		ss.doom(be)
	}
	_ = ss.conn.SetWriteDeadline(time.Unix(1, 0))
	t.Reset(time.Second)
	select {
	case <-done:
		return true
	case <-t.C:
	}
	ss.conn.Close()
	ss.srv.log.Error("a server goroutine did not stop after its connections were closed; leaving it", "client", ss.addr)
	return false
}

// doom closes be if it is still the attached backend, making sure the server
// goroutine destroys it instead of releasing it.
func (ss *session) doom(be *pool.Backend) {
	ss.mu.Lock()
	mine := ss.be == be
	if mine {
		ss.doomed = true
	}
	ss.mu.Unlock()
	if mine {
		be.Conn.Close()
	}
}
