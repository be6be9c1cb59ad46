package proxy

// This file is client TLS: the answer to a client's SSLRequest, the
// handshake on the login's goroutine, and the refusal of plaintext clients
// when TLS is required. After the login the event loop drives the session
// through a netio.TLSCodec (toLoop), as it drives a TLS server connection.

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/netio"
	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// TLSMode says whether clients may or must use TLS.
type TLSMode uint8

const (
	// TLSDisable answers SSLRequest with 'N': clients use plaintext.
	TLSDisable TLSMode = iota
	// TLSAllow answers SSLRequest with 'S' and a TLS handshake; clients that
	// do not ask log in in plaintext.
	TLSAllow
	// TLSRequire is TLSAllow, and a client that logs in without TLS is
	// refused with SQLSTATE 28000 before it authenticates.
	TLSRequire
)

// String is the mode's --client-tls name.
func (m TLSMode) String() string {
	switch m {
	case TLSAllow:
		return "allow"
	case TLSRequire:
		return "require"
	}
	return "disable"
}

// ClientTLS is how the proxy serves TLS to clients.
type ClientTLS struct {
	// Mode says whether clients may or must use TLS.
	Mode TLSMode
	// Config is the server side of the handshake: the certificate, and the
	// client CAs that verify a client certificate. It must not be nil unless
	// Mode is TLSDisable, and is not modified: a new certificate comes with
	// new Options (Server.Reconfigure), for the handshakes after it.
	Config *tls.Config
	// ClientCert: a TLS client must present a certificate. Config verifies
	// one that is given (tls.VerifyClientCertIfGiven: a bad one fails the
	// handshake); a client that gives none is refused after the handshake
	// with 28000 "connection requires a valid client certificate", as
	// PostgreSQL's clientcert=verify-ca does, so that its driver reports a
	// clear error rather than a TLS alert.
	ClientCert bool
}

// tlsFor is the TLS clients get now: nil when they get none.
func (s *Server) tlsFor() *ClientTLS {
	t := s.options().TLS
	if t == nil || t.Mode == TLSDisable || t.Config == nil {
		return nil
	}
	return t
}

// startTLS answers an SSLRequest with 'S' and runs the server side of the
// handshake over the client's socket, within the login's deadline. From
// then on the login reads and writes through the tls.Conn. It reports false,
// the client being closed, when the handshake fails.
func (ss *session) startTLS(t *ClientTLS) bool {
	if _, err := ss.conn.Write([]byte{'S'}); err != nil {
		return false
	}
	tr := netio.NewTLSTransport(ss.sock)
	tc := tls.Server(tr, t.Config)
	if err := tc.Handshake(); err != nil {
		ss.srv.tlsFailed.Add(1)
		var ne net.Error
		if !errors.Is(err, io.EOF) && !(errors.As(err, &ne) && ne.Timeout() && ss.srv.Draining()) {
			ss.srv.authLog.note(ss.srv.log, "client TLS handshake failed", "client", ss.addr, "error", err)
		}
		// crypto/tls sent its alert where it could; the client must get to
		// read it (lingerClose).
		lingerClose(ss.sock)
		return false
	}
	ss.mu.Lock()
	ss.conn, ss.tlsTr = tc, tr
	ss.mu.Unlock()
	ss.cio = tc
	ss.cout.c = tc
	ss.r.Reset(tc)
	return true
}

// lingerClose ends a connection whose last bytes (a TLS alert) the peer
// must read: closing a socket with unread input sends a reset, which can
// reach the peer before what was written (with TLS 1.3 a client writes its
// Finished and its startup packet before it learns that the handshake
// failed). The write side is shut, what arrives is read and dropped for a
// moment, then the socket is closed.
func lingerClose(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
		_ = c.SetReadDeadline(time.Now().Add(lingerTime))
		_, _ = io.CopyN(io.Discard, c, lingerBytes)
	}
	_ = c.Close()
}

// How long, and how many bytes at most, lingerClose drains.
const (
	lingerTime  = 250 * time.Millisecond
	lingerBytes = 64 << 10
)

// requireTLS refuses a plaintext client when TLS is required, as PostgreSQL
// refuses a connection no pg_hba.conf "hostssl" line allows, and a TLS
// client without a certificate when one is required. It reports false when
// the client was refused.
func (ss *session) requireTLS() bool {
	t := ss.srv.tlsFor()
	if t == nil {
		return true
	}
	if ss.tlsTr != nil {
		if !t.ClientCert {
			return true
		}
		if tc, ok := ss.conn.(*tls.Conn); ok && len(tc.ConnectionState().PeerCertificates) > 0 {
			return true // verified by the handshake
		}
		ss.srv.tlsRequired.Add(1)
		ss.srv.authLog.note(ss.srv.log, "client refused: no client certificate", "client", ss.addr, "user", ss.user, "database", ss.db)
		refuse(ss.conn, wire.CodeInvalidAuthorization, "connection requires a valid client certificate")
		return false
	}
	if t.Mode != TLSRequire {
		return true
	}
	ss.srv.tlsRequired.Add(1)
	ss.srv.authLog.note(ss.srv.log, "client refused: TLS is required", "client", ss.addr, "user", ss.user, "database", ss.db)
	refuse(ss.conn, wire.CodeInvalidAuthorization,
		fmt.Sprintf("pgsidecar: connection without TLS refused for user %q, database %q (--client-tls require): connect with sslmode=require or verify-full", ss.user, ss.db))
	return false
}
