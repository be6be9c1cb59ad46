package pgtest

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

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
	var first *wire.ErrorFields
	for {
		typ, body, err := rc.Next(10 * time.Second)
		if err != nil {
			rc.T.Fatalf("raw query %q: %v", sql, err)
		}
		switch typ {
		case wire.MsgErrorResponse:
			if first == nil {
				f := wire.ParseError(body)
				first = &f
			}
		case wire.MsgReadyForQuery:
			if len(body) != 1 {
				rc.T.Fatalf("raw query %q: bad ReadyForQuery %v", sql, body)
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

// Eventually calls cond every 10 ms until it returns nil, and fails the test
// with cond's last error when that has not happened within the given time. It
// is what a test does instead of sleeping for a condition.
func Eventually(t testing.TB, within time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true within %s: %v", what, within, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
