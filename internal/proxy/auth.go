package proxy

import (
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/pgsidecar/pgsidecar/internal/auth"
	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// ClientAuth is how clients prove who they are (Options.Auth).
type ClientAuth struct {
	// Method is the exchange every client goes through; auth.Trust asks for
	// nothing.
	Method auth.Method
	// Lookup returns what is known of user's password, and false for a role
	// it does not know (whose login then fails like a wrong password); an
	// error when it cannot tell now (an auth query failed): the client is
	// refused with 08006. It is called on the login goroutine, never on the
	// event loop, may block (within the login's deadline), and must be safe
	// for concurrent use.
	Lookup func(user string) (auth.Secret, bool, error)
	// Proved, when set, receives what each client that authenticated proved
	// (auth.Exchange.ServerLogin), for the proxy to log in to PostgreSQL as
	// that role without its password. Called on the login goroutine.
	Proved func(user string, l auth.ServerLogin)
	// MockKey makes the fake exchange of an unknown role look like a real
	// one, the same way every time for the same name (a random key per
	// process is right).
	MockKey []byte
}

// RoutePolicy decides which (database, user) pools clients may use
// (Options.Routes).
type RoutePolicy interface {
	// Allow returns "" when an authenticated user may use the pool of
	// database, else the SQLSTATE and message of the refusal (28000 for a role
	// that may use no database here, 3D000 for a database it may not use).
	Allow(database, user string) (code, msg string)
}

// maxAuthMessage is the longest password message a client may send while
// it authenticates: a SCRAM message is about 200 bytes, an md5 answer 36. It
// fits the login reader, so a message is read whole from its buffer.
const maxAuthMessage = loginBufSize - 1

// authenticate runs the client's password exchange of s's method before it
// may have a pool. It reports whether the client is in; when not, the client
// has been told why (FATAL 28P01 for a wrong password or an unknown role,
// 08P01 for a malformed exchange) and counted.
func (ss *session) authenticate() bool {
	a := ss.srv.options().Auth
	if a == nil || a.Method == auth.Trust {
		return true
	}
	sec, known := auth.Secret{}, false
	if a.Lookup != nil {
		var err error
		if sec, known, err = a.Lookup(ss.user); err != nil {
			ss.srv.authFailed.Add(1)
			ss.srv.authLog.note(ss.srv.log, "client authentication impossible: the role's password cannot be looked up",
				"client", ss.addr, "user", ss.user, "database", ss.db, "error", err)
			refuse(ss.conn, wire.CodeConnectionFailure,
				fmt.Sprintf("pgsidecar: the password of user %q cannot be checked now (see the proxy's log)", ss.user))
			return false
		}
	}
	x := auth.NewExchange(a.Method, ss.user, sec, known, a.MockKey, rand.Reader)
	if _, err := ss.conn.Write(x.Start()); err != nil {
		return false
	}
	for {
		h, err := wire.PeekHeader(ss.r, maxAuthMessage)
		if err != nil {
			if errors.Is(err, wire.ErrInvalidLength) {
				ss.authProtocolError("invalid password packet size", "")
			} else {
				ss.startupError(err)
			}
			return false
		}
		if h.Type != 'p' {
			if h.Type != wire.MsgTerminate { // a client giving up (no password to give) just goes
				var pe *auth.ProtocolError
				if errors.As(x.UnexpectedMessage(h.Type), &pe) {
					ss.authProtocolError(pe.Message, pe.Detail)
				}
			}
			return false
		}
		msg, err := wire.PeekMessage(ss.r, h)
		if err != nil {
			ss.startupError(err)
			return false
		}
		out, done, err := x.Next(msg[wire.HeaderLen:])
		_, _ = ss.r.Discard(len(msg))
		var pe *auth.ProtocolError
		switch {
		case errors.As(err, &pe):
			ss.authProtocolError(pe.Message, pe.Detail)
			return false
		case err != nil:
			ss.authFailed()
			return false
		}
		if len(out) > 0 {
			if _, err := ss.conn.Write(out); err != nil {
				return false
			}
		}
		if done {
			if a.Proved != nil {
				if l, ok := x.ServerLogin(); ok {
					a.Proved(ss.user, l)
				}
			}
			return true
		}
	}
}

// authFailed refuses a client whose password did not prove its role, with
// PostgreSQL's own message: the same whether the role is unknown or the
// password wrong.
func (ss *session) authFailed() {
	ss.srv.authFailed.Add(1)
	ss.srv.authLog.note(ss.srv.log, "client authentication failed", "client", ss.addr, "user", ss.user, "database", ss.db)
	refuse(ss.conn, wire.CodeInvalidPassword, fmt.Sprintf("password authentication failed for user %q", ss.user))
}

// authProtocolError refuses a client whose authentication messages were
// malformed or out of order.
func (ss *session) authProtocolError(msg, detail string) {
	ss.srv.authFailed.Add(1)
	ss.srv.authLog.note(ss.srv.log, "client authentication failed", "client", ss.addr, "user", ss.user,
		"database", ss.db, "error", msg)
	refuseDetail(ss.conn, wire.CodeProtocolViolation, msg, detail)
}

// allowRoute applies Options.Routes to the client's database and user, and
// refuses the client when its route is not allowed.
func (ss *session) allowRoute() bool {
	p := ss.srv.options().Routes
	if p == nil {
		return true
	}
	code, msg := p.Allow(ss.db, ss.user)
	if code == "" {
		return true
	}
	ss.srv.routeRefused.Add(1)
	ss.srv.authLog.note(ss.srv.log, "client route refused", "client", ss.addr, "user", ss.user, "database", ss.db)
	refuse(ss.conn, code, msg)
	return false
}
