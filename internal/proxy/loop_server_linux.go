//go:build linux

package proxy

import (
	"errors"
	"fmt"
	"io"

	"github.com/pgsidecar/pgsidecar/internal/driver"
	"github.com/pgsidecar/pgsidecar/internal/engine"
	"github.com/pgsidecar/pgsidecar/internal/pool"
	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// The loop driver's server side: the answers of the server connection a client
// holds, the transaction boundary, the probe, release and failure (loop_linux.go
// has the overview).

// Opened of the server side: never called (adopted).
func (s *serverSide) Opened(*driver.Conn) {}

// Data: the server connection sent b.
func (s *serverSide) Data(c *driver.Conn, b []byte) {
	ls := s.ls
	ss := ls.ss
	ss.mu.Lock()
	if len(ls.sin) > 0 {
		ls.sin = append(ls.sin, b...)
		b = ls.sin
	}
	n := ls.serverBytes(b)
	if ss.be != nil {
		rest := b[n:]
		if len(ls.sin) > 0 {
			k := copy(ls.sin, rest)
			ls.sin = ls.sin[:k]
		} else {
			ls.sin = append(ls.sin, rest...)
		}
	}
	drained := ss.e.Q.Len() < resumePending
	ss.mu.Unlock()
	ls.flush()
	if drained && ls.paused&pauseAnswers != 0 {
		ls.resume(pauseAnswers)
	}
	if ls.paused&pauseProbe != 0 && !ls.probing {
		ls.resume(pauseProbe)
	}
	ls.maybeFinish()
}

// Closed: the server connection failed (it is not closed: the pool owns it).
func (s *serverSide) Closed(c *driver.Conn, err error) {
	ls := s.ls
	ss := ls.ss
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	ss.mu.Lock()
	if be := ss.be; be != nil {
		ls.serverFailed(be, err)
	}
	ss.mu.Unlock()
	ls.flush()
	ls.maybeFinish()
}

// Drained: the server took what was sent; a client paused for it goes on.
func (s *serverSide) Drained(c *driver.Conn) { s.ls.resume(pauseServer) }

// serverBytes handles the server's messages in b and returns how many bytes
// it used: the rest is the start of a message that must be whole to be
// handled. ss.mu is held.
func (ls *loopSess) serverBytes(b []byte) int {
	ss := ls.ss
	d := ls.d
	used := 0
	for used < len(b) && ss.be != nil {
		if ls.srest > 0 {
			k := min(ls.srest, len(b)-used)
			if !ls.sskip {
				d.toC = append(d.toC, b[used:used+k]...)
			}
			ls.srest -= k
			used += k
			continue
		}
		if len(b)-used < wire.HeaderLen {
			break
		}
		h, err := wire.ParseHeader(b[used:], wire.MaxMessageLength)
		if err != nil {
			ls.serverFailed(ss.be, fmt.Errorf("bad message from the server: %w", err))
			return len(b)
		}
		n := 1 + h.Len
		whole := len(b)-used >= n
		if ls.probing || h.Type == wire.MsgReadyForQuery || (h.Type == wire.MsgErrorResponse && h.Len < engine.MaxErrorInspect) {
			if !whole {
				if n > maxCarry && ls.probing {
					ls.serverFailed(ss.be, errors.New("probe answer too large"))
					return len(b)
				}
				break
			}
		}
		msg := b[used:min(used+n, len(b))]
		if ls.probing {
			ls.probeMessage(h, msg)
			used += n
			continue
		}
		if h.Type == wire.MsgReadyForQuery {
			used += n
			if h.Len != 5 {
				ls.serverFailed(ss.be, errors.New("bad ReadyForQuery"))
				return len(b)
			}
			ls.ready(msg)
			continue
		}
		var errMsg []byte
		if h.Type == wire.MsgErrorResponse && whole {
			errMsg = msg
		}
		act, repl, doomed := ss.routeLocked(h, errMsg)
		if doomed != "" {
			ss.logReplayFailed(doomed)
			ls.serverFailed(ss.be, errors.New("settings replay failed: "+doomed))
			return len(b)
		}
		if ss.swallow.Load() || ss.dying.Load() {
			act = engine.Swallow
		}
		switch act {
		case engine.Forward:
			d.toC = append(d.toC, msg...)
			ls.sskip = false
		case engine.Replace:
			d.toC = append(d.toC, repl...)
			ls.sskip = true
		default:
			ls.sskip = true
		}
		ls.srest = n - len(msg)
		used += len(msg)
	}
	return used
}

// ready handles the server's ReadyForQuery msg. ss.mu is held.
func (ls *loopSess) ready(msg []byte) {
	ss := ls.ss
	if !ss.swallow.Load() && !ss.dying.Load() {
		if swallow, _ := ss.e.SwallowFront(wire.MsgReadyForQuery); !swallow {
			ls.d.toC = append(ls.d.toC, msg...)
		}
	}
	if ss.e.ReadyForQuery(msg[5]) {
		ss.swallowing.Add(-1)
	}
	ls.decide()
}

// decide carries out the transaction-boundary decision. ss.mu is held.
func (ls *loopSess) decide() {
	ss := ls.ss
	d := engine.Decide(ss.boundaryLocked())
	if (d == engine.Probe || d == engine.Release) && ls.crest > 0 && !ls.cskip {
		// The client is in the middle of a message to the server (COPY data):
		// neither a probe nor another client may come in between. Decided
		// again when it is whole (clientBytes).
		ls.decideLater = true
		return
	}
	switch d {
	case engine.KeepReading:
	case engine.Probe:
		ls.probe = &loopProbe{q: ss.e.State.StartProbe()} // allocates anyway (StartProbe)
		ls.probing = true
		ss.probing = true
		ls.pause(pauseProbe)
		ls.d.toS = append(ls.d.toS, ls.probe.q.Query...)
	case engine.Stay, engine.StayListening:
		if ss.e.Tx != wire.TxIdle {
			ss.armIdleLocked()
		}
	case engine.Release:
		if ss.cancels > 0 {
			ls.release = true // once the cancel request is delivered (cancelDone)
			return
		}
		ls.releaseBackend()
	}
}

// probeMessage handles a message of the probe's answer. ss.mu is held.
func (ls *loopSess) probeMessage(h wire.Header, msg []byte) {
	ss := ls.ss
	switch h.Type {
	case wire.MsgRowDescription:
		ls.probe.row = nil
	case wire.MsgDataRow:
		ls.probe.row = parseDataRow(msg[wire.HeaderLen:])
	case wire.MsgErrorResponse:
		f := wire.ParseError(msg[wire.HeaderLen:])
		ls.probe.err = fmt.Errorf("%w: %s (%s)", engine.ErrProbe, f.Message, f.Code)
	case wire.MsgNotification:
		if !ss.swallow.Load() && !ss.dying.Load() {
			ls.d.toC = append(ls.d.toC, msg...)
		}
	case wire.MsgReadyForQuery:
		ls.probing = false
		ss.probing = false
		pr := ls.probe
		ls.probe = nil
		err := pr.err
		if err == nil {
			err = ss.finishProbeLocked(ss.be, pr.q, pr.row)
		}
		if err != nil {
			ss.srv.log.Warn("could not read session state from a server connection, closing it",
				"client", ss.addr, "user", ss.user, "database", ss.db, "server_pid", ss.be.PID, "error", err)
			ls.serverFailed(ss.be, err)
			return
		}
		ls.decide()
	}
}

// releaseBackend gives the server connection back to its pool. ss.mu is held.
func (ls *loopSess) releaseBackend() {
	ss := ls.ss
	be := ss.be
	ls.release = false
	if ls.sc.Buffered() > 0 || len(ls.sin) > 0 || ls.srest > 0 {
		// Bytes in flight at a boundary: its state is unknown.
		ls.serverFailed(be, errors.New("server connection not idle at a transaction boundary"))
		return
	}
	ss.be = nil
	ss.e.Detached()
	ss.swallowing.Store(0)
	ss.obs.TransactionDone(ss.attachedAt.Since())
	ls.d.l.Disarm(&ls.cleanTimer)
	ls.d.released = append(ls.d.released, be) // handed over or released by settle
	if ss.draining && !ss.gone {
		ls.kill(killShutdown)
	}
}

// serverFailed handles a server connection that broke while attached (see
// session.serverFailed). ss.mu is held.
func (ls *loopSess) serverFailed(be *pool.Backend, err error) {
	ss := ls.ss
	if be == nil || ss.be != be {
		return
	}
	// In session mode the client's whole session was on it.
	lost := ss.e.Outstanding > 0 || ss.e.Partial || ss.e.Tx != wire.TxIdle || !ss.pooled
	if ls.srest > 0 && !ls.sskip {
		// Part of a message reached the client: anything more would be read as
		// the rest of it. Like PostgreSQL, just close.
		ss.streamBroken.Store(true)
	}
	lb := ls.d.loopBackendOf(be)
	if lb.adopted {
		lb.c.Detach()
		lb.adopted = false
	}
	ss.be = nil
	ss.e.Detached()
	ss.swallowing.Store(0)
	ls.probing, ss.probing, ls.release, ls.decideLater = false, false, false, false
	ls.srest, ls.sskip, ls.sin = 0, false, ls.sin[:0]
	ls.d.l.Disarm(&ls.cleanTimer)
	if lost && !ss.gone && ss.kill == killNone {
		ss.kill = killServerLost
	}
	be.Pool().Destroy(be)
	if !ss.gone {
		ss.srv.log.Warn("server connection lost", "client", ss.addr, "user", ss.user, "database", ss.db, "server_pid", be.PID, "error", err)
		if lost {
			ls.kill(killServerLost)
		}
	}
	ls.paused &^= pauseProbe | pauseServer | pauseAnswers
}
