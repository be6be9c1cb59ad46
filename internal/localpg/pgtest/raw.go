package pgtest

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// Raw is a client that speaks the PostgreSQL protocol as raw messages, for the
// tests that need what no driver does: never read its answers, claim a length
// it never sends, pipeline without a Sync.
type Raw struct {
	T    testing.TB
	Conn net.Conn
	R    *bufio.Reader
	// PID and Key are the BackendKeyData received by Login.
	PID uint32
	Key []byte
}

// Dial connects a Raw client to addr; the connection is closed at cleanup.
func Dial(t testing.TB, addr string) *Raw {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return &Raw{T: t, Conn: c, R: bufio.NewReader(c)}
}

// StartTLS sends an SSLRequest and, when the server answers 'S', runs the
// client side of the TLS handshake with cfg within 5 seconds; from then on
// the client talks over TLS. It returns the server's answer ('S' or 'N')
// and the handshake's error.
func (rc *Raw) StartTLS(cfg *tls.Config) (byte, error) {
	rc.T.Helper()
	rc.Send(wire.AppendStartup(nil, wire.SSLRequestCode))
	_ = rc.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := rc.R.ReadByte()
	if err != nil || b != 'S' {
		return b, err
	}
	if rc.R.Buffered() > 0 {
		return b, errors.New("bytes after the SSLRequest's answer")
	}
	tc := tls.Client(rc.Conn, cfg)
	_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		return b, err
	}
	_ = tc.SetDeadline(time.Time{})
	rc.Conn, rc.R = tc, bufio.NewReader(tc)
	return b, nil
}

// Send writes b within 5 seconds.
func (rc *Raw) Send(b []byte) {
	rc.T.Helper()
	_ = rc.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := rc.Conn.Write(b); err != nil {
		rc.T.Fatalf("write: %v", err)
	}
}

// Read reads one message; the read deadline is the caller's. Of a message cut
// short it returns the part received with the error.
func (rc *Raw) Read() (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(rc.R, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n < 4 || n > 1<<20 {
		return hdr[0], nil, fmt.Errorf("message %q with length %d", hdr[0], n)
	}
	body := make([]byte, n-4)
	if k, err := io.ReadFull(rc.R, body); err != nil {
		return hdr[0], body[:k], err
	}
	return hdr[0], body, nil
}

// Next reads one message within d.
func (rc *Raw) Next(d time.Duration) (byte, []byte, error) {
	_ = rc.Conn.SetReadDeadline(time.Now().Add(d))
	return rc.Read()
}

// Login sends a StartupMessage for user postgres, database db and
// application_name app, and reads up to ReadyForQuery.
func (rc *Raw) Login(db, app string) {
	rc.T.Helper()
	rc.Send(wire.AppendStartup(nil, wire.ProtocolVersion30,
		wire.StartupParam{Name: "user", Value: "postgres"},
		wire.StartupParam{Name: "database", Value: db},
		wire.StartupParam{Name: "application_name", Value: app}))
	for {
		typ, body, err := rc.Next(10 * time.Second)
		if err != nil {
			rc.T.Fatalf("raw login: %v", err)
		}
		switch typ {
		case wire.MsgErrorResponse:
			rc.T.Fatalf("raw login refused: %+v", wire.ParseError(body))
		case wire.MsgBackendKeyData:
			if len(body) >= 8 {
				rc.PID = binary.BigEndian.Uint32(body[:4])
				rc.Key = append([]byte(nil), body[4:]...)
			}
		case wire.MsgReadyForQuery:
			return
		}
	}
}

// Query runs sql with the simple protocol; it returns the first ErrorResponse
// (nil if none) and the transaction status of the ReadyForQuery.
func (rc *Raw) Query(sql string) (*wire.ErrorFields, byte) {
	rc.T.Helper()
	rc.Send(wire.AppendQuery(nil, sql))
	return rc.UntilReady(10*time.Second, fmt.Sprintf("raw query %q", sql))
}

// UntilReady reads messages up to the next ReadyForQuery, each within d; it
// returns the first ErrorResponse (nil if none) and the transaction status. A
// read error fails the test, with what naming the wait.
func (rc *Raw) UntilReady(d time.Duration, what string) (*wire.ErrorFields, byte) {
	rc.T.Helper()
	var first *wire.ErrorFields
	for {
		typ, body, err := rc.Next(d)
		if err != nil {
			rc.T.Fatalf("%s: %v", what, err)
		}
		switch typ {
		case wire.MsgErrorResponse:
			if first == nil {
				f := wire.ParseError(body)
				first = &f
			}
		case wire.MsgReadyForQuery:
			if len(body) != 1 {
				rc.T.Fatalf("%s: bad ReadyForQuery %v", what, body)
			}
			return first, body[0]
		}
	}
}

// MustQuery runs sql and fails on an error or an unexpected transaction status.
func (rc *Raw) MustQuery(sql string, wantTx byte) {
	rc.T.Helper()
	if f, tx := rc.Query(sql); f != nil || tx != wantTx {
		rc.T.Fatalf("raw query %q: error %+v, tx status %q (want %q)", sql, f, tx, wantTx)
	}
}

// Header is the header of a message of type typ whose body has n bytes: what
// a client claims, whether or not it sends the body.
func Header(typ byte, n int) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(n+4))
	return b
}

// literalHead and literalTail are the text around the literal of StreamLiteral's query.
const literalHead, literalTail = "SELECT length('", "')\x00"

// StreamLiteral sends a Query `SELECT length('xxx...')` whose literal has n
// bytes, from a 1 MiB buffer, writing for at most within; it returns the first
// write error (the peer refused it, say). The answer is n.
func (rc *Raw) StreamLiteral(n int, within time.Duration) error {
	_ = rc.Conn.SetWriteDeadline(time.Now().Add(within))
	if _, err := rc.Conn.Write(append(Header(wire.MsgQuery, len(literalHead)+n+len(literalTail)), literalHead...)); err != nil {
		return err
	}
	chunk := bytes.Repeat([]byte("x"), min(n, 1<<20))
	for n > 0 {
		k := min(n, len(chunk))
		if _, err := rc.Conn.Write(chunk[:k]); err != nil {
			return err
		}
		n -= k
	}
	_, err := rc.Conn.Write([]byte(literalTail))
	return err
}

// Closed reports whether err, of a read or a write, says that the peer closed
// the connection.
func Closed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)
}

// ReadToClose reads messages until the peer closes the connection, which must
// happen within d. It returns the ErrorResponses seen, the arrival time of the
// first one, and the types of the other messages.
func (rc *Raw) ReadToClose(d time.Duration) (errs []wire.ErrorFields, firstAt time.Time, others []byte) {
	rc.T.Helper()
	_ = rc.Conn.SetReadDeadline(time.Now().Add(d))
	for i := 0; ; i++ {
		typ, body, err := rc.Read()
		if err != nil {
			if Closed(err) {
				return errs, firstAt, others
			}
			rc.T.Fatalf("connection not closed within %s: %v (errors so far: %+v, other messages %q)", d, err, errs, others)
		}
		if i > 1000 {
			rc.T.Fatalf("the peer keeps sending messages, types %q", others)
		}
		if typ == wire.MsgErrorResponse {
			if errs == nil {
				firstAt = time.Now()
			}
			errs = append(errs, wire.ParseError(body))
		} else {
			others = append(others, typ)
		}
	}
}

// ExpectFatal reads to the end of the connection (within d) and checks that the
// peer sent exactly one ErrorResponse, FATAL with SQLSTATE code. It returns when
// the error arrived.
func (rc *Raw) ExpectFatal(code string, d time.Duration) time.Time {
	rc.T.Helper()
	errs, at, others := rc.ReadToClose(d)
	if len(errs) != 1 {
		rc.T.Fatalf("got %d ErrorResponses %+v (other messages %q), want one FATAL %s", len(errs), errs, others, code)
	}
	if errs[0].Severity != wire.SeverityFatal || errs[0].Code != code {
		rc.T.Fatalf("got error %+v, want severity FATAL, SQLSTATE %s", errs[0], code)
	}
	return at
}

// BigSelect streams about 200 MB: far more than the socket buffers hold.
const BigSelect = "SELECT repeat('x', 1000) FROM generate_series(1, 200000)"

// Stuck makes rc, logged in to database db, a client that does not read: it
// opens a transaction, starts BigSelect and never reads the answer. It returns
// once PostgreSQL, as chk (a direct connection) sees it, is blocked writing:
// the proxy in between is then blocked writing to rc. began is when the
// transaction began.
func (rc *Raw) Stuck(chk *pgx.Conn, db string) (began time.Time) {
	rc.T.Helper()
	began = time.Now()
	rc.MustQuery("BEGIN", wire.TxActive)
	if tcp, ok := rc.Conn.(*net.TCPConn); ok {
		_ = tcp.SetReadBuffer(64 << 10) // fill up sooner
	}
	rc.Send(wire.AppendQuery(nil, BigSelect))
	Eventually(rc.T, 20*time.Second, "the backend blocked writing to the proxy", func() error {
		n, err := Int(chk, `SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event = 'ClientWrite' AND query = $2`, db, BigSelect)
		if err == nil && n != 1 {
			err = fmt.Errorf("%d backends in ClientWrite", n)
		}
		return err
	})
	return began
}
