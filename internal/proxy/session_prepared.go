package proxy

import (
	"github.com/pgsidecar/pgsidecar/internal/engine"
	"github.com/pgsidecar/pgsidecar/internal/pool"
	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// stmtsOf returns the prepared-statement record of a backend.
func stmtsOf(be *pool.Backend) *engine.ServerStatements {
	bs, _ := be.Ext.(*engine.ServerStatements)
	if bs == nil {
		bs = engine.NewServerStatements()
		be.Ext = bs
	}
	return bs
}

// routeLocked says what becomes of the server message of type h.Type (msg:
// the whole message when it is an ErrorResponse the engine must read). doomed,
// when not empty, is the error of the replay of the client's settings: the
// client cannot have them on this server connection, which is to be closed
// and the client ended (ss.kill is set). ss.mu is held.
func (ss *session) routeLocked(h wire.Header, msg []byte) (act engine.Action, repl []byte, doomed string) {
	if ss.swallowing.Load() > 0 {
		swallow, fatal := ss.e.SwallowFront(h.Type)
		if fatal {
			doomed = "(unknown)"
			if msg != nil {
				f := wire.ParseError(msg[wire.HeaderLen:])
				doomed = f.Message + " (" + f.Code + ")"
			}
			if ss.kill == killNone {
				ss.kill = killServerLost
			}
			return engine.Swallow, nil, doomed
		}
		if swallow {
			return engine.Swallow, nil, ""
		}
	}
	if h.Type == wire.MsgErrorResponse {
		var e engine.ServerError
		if msg != nil {
			e = engine.ReadServerError(msg)
		}
		if e.Fatal {
			ss.fatalForwarded = true
		}
		var skipped int
		act, repl, skipped = ss.e.AnswerError(e)
		ss.e.Outstanding -= int32(skipped) // no ReadyForQuery comes for them
	} else {
		act, repl = ss.e.Answer(h.Type)
	}
	return act, repl, ""
}

// logReplayFailed logs a client that could not have its settings on a
// server connection (routeLocked).
func (ss *session) logReplayFailed(msg string) {
	ss.srv.log.Warn("could not give a client its settings on a server connection, closing it",
		"client", ss.addr, "user", ss.user, "database", ss.db, "error", msg)
}
