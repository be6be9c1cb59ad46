package netio

import (
	"crypto/tls"
	"errors"
	"io"
	"time"
)

// TLSCodec drives an established tls.Conn over a TLSTransport from an event
// loop: the loop reads ciphertext from the socket and Decodes it, Encodes
// what it writes, and writes out the ciphertext tls.Conn produces on its own
// (Output). Its methods are for the connection's holder only (the loop's
// goroutine), with the transport in its memory phase.
//
// It keeps no buffer of its own: undecoded ciphertext stays in the caller's
// buffer during a Decode sequence (copied only when the caller stops in the
// middle, Retain), plaintext stays inside tls.Conn until asked for, and
// Encode writes into the caller's dst. A steady-state Decode or Encode
// allocates nothing.
type TLSCodec struct {
	tc      *tls.Conn
	t       *TLSTransport
	err     error // ends the stream once the plaintext before it is out
	decoded bool  // Decode ran (Holds)
}

// NewTLSCodec returns the codec of tc, whose transport must be a
// TLSTransport (tc.NetConn()).
func NewTLSCodec(tc *tls.Conn) (*TLSCodec, error) {
	t, ok := tc.NetConn().(*TLSTransport)
	if !ok {
		return nil, errors.New("netio: tls codec: the connection does not run over a TLSTransport")
	}
	return &TLSCodec{tc: tc, t: t}, nil
}

// Conn is the codec's tls.Conn.
func (c *TLSCodec) Conn() *tls.Conn { return c.tc }

// Transport is the codec's transport.
func (c *TLSCodec) Transport() *TLSTransport { return c.t }

// Decode feeds in (ciphertext read from the socket; nil for none) to
// tls.Conn and reads plaintext into p, record after record, until p is full
// or tls.Conn needs more ciphertext. It returns n > 0 while it produced
// plaintext: call it again (with nil) for more, until it returns 0 and nil,
// which means it took all the ciphertext fed and holds at most a partial
// record. An error ends the stream: io.EOF when the peer sent close_notify,
// else what tls.Conn reported (a bad record, an alert); it comes only after
// the plaintext before it.
//
// Until Decode returns 0 or an error, the codec may still refer to in: a
// caller that stops earlier (the reader paused) and reuses in's memory
// calls Retain first. Ciphertext tls.Conn wrote meanwhile (a KeyUpdate
// answer, an alert) waits in Output.
func (c *TLSCodec) Decode(in, p []byte) (int, error) {
	t := c.t
	if !t.mem {
		return 0, errNotMemoryPhase
	}
	c.decoded = true
	if len(in) > 0 {
		t.feed(in)
	}
	if c.err != nil {
		return 0, c.err
	}
	if t.starved || len(p) == 0 {
		return 0, nil
	}
	t.nb = true
	n := 0
	for n < len(p) {
		k, err := c.tc.Read(p[n:])
		n += k
		if err == ErrWouldBlock {
			break
		}
		if err != nil {
			c.err = err
			break
		}
		if k == 0 {
			break // never from a tls.Conn with room in p; do not spin
		}
	}
	t.nb = false
	if n > 0 {
		return n, nil
	}
	return 0, c.err
}

// Retain makes the codec keep a copy of ciphertext fed to Decode that
// tls.Conn has not taken yet, so that the caller may reuse the buffer it
// fed. It allocates only when there is such ciphertext; the copy goes once
// tls.Conn has taken it.
func (c *TLSCodec) Retain() { c.t.retain() }

// Pending reports whether Decode may have something to return without new
// ciphertext: plaintext inside tls.Conn, ciphertext fed and not taken, or
// the error that ends the stream.
func (c *TLSCodec) Pending() bool {
	return !c.t.starved || len(c.t.in) > 0 || c.err != nil
}

// Holds reports whether the codec is known to hold input its reader has
// not had: ciphertext fed and not taken, plaintext left inside tls.Conn by
// a Decode that stopped early, or the error that ends the stream. Unlike
// Pending it is false for a codec that never decoded (whatever tls.Conn
// kept from the login is not known without reading it): a liveness check
// uses it, where Pending's "may have" would condemn every fresh codec.
func (c *TLSCodec) Holds() bool {
	return len(c.t.in) > 0 || c.err != nil || (c.decoded && !c.t.starved)
}

// Encode appends to dst the ciphertext of p (one or more records), after
// any ciphertext tls.Conn produced on its own and the caller has not taken
// with Output: the peer must get them in that order (a KeyUpdate answer
// precedes what the new keys encrypt). An error means tls.Conn can no
// longer write (it was closed, or an earlier write failed).
func (c *TLSCodec) Encode(dst, p []byte) ([]byte, error) {
	t := c.t
	if !t.mem {
		return dst, errNotMemoryPhase
	}
	if len(t.out) > 0 {
		dst = append(dst, t.out...)
		t.out = t.out[:0]
	}
	if len(p) == 0 {
		return dst, nil
	}
	own := t.out
	t.out, t.nb = dst, true // tls.Conn appends its records to the caller's buffer
	_, err := c.tc.Write(p)
	dst = t.out
	t.out, t.nb = own, false
	return dst, err
}

// Output appends to dst the ciphertext tls.Conn wrote on its own during
// Decode (answers to the peer: KeyUpdate, alerts) and forgets it; the caller
// writes it to the socket.
func (c *TLSCodec) Output(dst []byte) []byte {
	t := c.t
	if len(t.out) == 0 {
		return dst
	}
	dst = append(dst, t.out...)
	t.out = t.out[:0]
	return dst
}

// CloseNotify appends to dst, after what Output would return, a
// close_notify alert: the goodbye of a connection its loop closes, which
// tells the peer the stream ended where it meant to (libpq otherwise
// reports "SSL SYSCALL error: EOF detected"). tls.Conn writes nothing
// after it; an error of tls.Conn's leaves dst without the alert.
func (c *TLSCodec) CloseNotify(dst []byte) []byte {
	t := c.t
	if !t.mem {
		return dst
	}
	t.nb = true
	_ = c.tc.CloseWrite()
	t.nb = false
	return c.Output(dst)
}

// Close ends the connection without ever blocking: it encodes last (the
// application's goodbye; may be empty), adds a close_notify alert, writes
// what is pending with one non-blocking attempt (what the socket does not
// take is dropped) and closes the socket. The codec is unusable afterwards.
func (c *TLSCodec) Close(last []byte) error {
	t := c.t
	if !t.mem {
		return c.tc.Close()
	}
	t.nb = true
	if len(last) > 0 {
		_, _ = c.tc.Write(last)
	}
	_ = c.tc.CloseWrite() // close_notify, appended to out
	t.nb = false
	out := t.out
	t.out, t.in, t.owned = nil, nil, false
	if len(out) > 0 {
		// A deadline in the past: one write attempt, never a wait (FDConn
		// tries the write first; a runtime-polled conn gives up at once).
		_ = t.nc.SetWriteDeadline(time.Unix(1, 0))
		_, _ = t.nc.Write(out)
	}
	if c.err == nil {
		c.err = io.ErrClosedPipe
	}
	return c.tc.Close() // close_notify is sent already: this closes the transport
}
