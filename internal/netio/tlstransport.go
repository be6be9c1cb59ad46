package netio

import (
	"errors"
	"net"
	"sync"
	"syscall"
	"time"
)

// ErrWouldBlock is what a TLSTransport's Read returns inside a TLSCodec call
// when it holds no ciphertext: a net.Error whose Temporary() is true. That
// is the only kind of transport Read error crypto/tls does not keep
// (conn.go, readRecordOrCCS): it returns it and keeps a partial record
// until more bytes come. Timeout() alone would not do (the measurement in
// tlsmeasure/transport_test.go, TestTLSStickyErrors).
var ErrWouldBlock error = wouldBlockError{}

type wouldBlockError struct{}

func (wouldBlockError) Error() string   { return "netio: would block" }
func (wouldBlockError) Timeout() bool   { return true }
func (wouldBlockError) Temporary() bool { return true }

// errNotMemoryPhase: a TLSCodec call on a transport still passing through.
var errNotMemoryPhase = errors.New("netio: tls codec: the transport is not in its memory phase")

// TLSTransport is the net.Conn a crypto/tls connection runs over when an
// event loop is to drive it (docs/design.md section 16, "TLS"). It has two
// phases:
//
//   - Pass-through, from NewTLSTransport: every call goes to the dialed
//     connection, so the TLS handshake and the login run as usual, blocking,
//     on whatever goroutine does them.
//   - Memory, from EnterMemoryPhase: inside a TLSCodec call (on the loop),
//     Read hands out the ciphertext the loop fed and, when it has none,
//     returns ErrWouldBlock; Write appends to a buffer the loop writes to the
//     socket, and never fails, because crypto/tls makes every transport Write
//     error permanent (conn.go, Write). Outside codec calls the transport is
//     a blocking connection again, through the net.Conn given to
//     EnterMemoryPhase (ciphertext fed but not yet taken is read first), so
//     that a goroutine holding the connection between two loop holders still
//     gets working, blocking Reads and Writes.
//
// Deadlines always go to the current connection. A TLSTransport is used by
// one holder at a time; as for any net.Conn, one Read and one Write may run
// concurrently in the blocking modes.
type TLSTransport struct {
	// mu orders the pass-through Reads against EnterMemoryPhase: pgconn's
	// background reader (started when a login's write is slow) can be
	// blocked in a Read of the dialed connection when the login is over.
	// EnterMemoryPhase wakes it with a deadline in the past, which tls.Conn
	// does not keep (a Temporary error), and waits for it (passReads) before
	// it closes that connection: closing under it would give tls.Conn a
	// permanent "use of closed network connection" that the loop's first
	// Decode would meet.
	mu        sync.Mutex
	passDone  sync.Cond // passReads went down
	passReads int       // pass-through Reads in progress (under mu)

	nc  net.Conn // the socket: the dialed connection, then EnterMemoryPhase's
	mem bool     // in the memory phase (written under mu)
	nb  bool     // inside a TLSCodec call: Read would block, Write buffers

	// starved: the last Read inside a codec call found nothing, so tls.Conn
	// holds no whole record (it reads the transport only when it needs one).
	starved bool
	owned   bool   // in is the transport's own copy (Retain), not the caller's
	in      []byte // ciphertext fed, not yet taken by tls.Conn
	out     []byte // ciphertext tls.Conn wrote on its own, not yet taken (Output)
}

// NewTLSTransport returns a transport in its pass-through phase over nc.
func NewTLSTransport(nc net.Conn) *TLSTransport {
	t := &TLSTransport{nc: nc}
	t.passDone.L = &t.mu
	return t
}

// NetConn is the connection the transport goes through now: the dialed one,
// then the one given to EnterMemoryPhase.
func (t *TLSTransport) NetConn() net.Conn { return t.nc }

// InMemoryPhase reports whether EnterMemoryPhase was called.
func (t *TLSTransport) InMemoryPhase() bool { return t.mem }

// EnterMemoryPhase ends the pass-through phase: nc (the same socket, for
// example a FDConn over a duplicate of its descriptor that the runtime's
// network poller does not watch) replaces the dialed connection, which is
// closed. The caller must hold the connection and nothing may be reading or
// writing it. It fails if the transport already is in its memory phase.
func (t *TLSTransport) EnterMemoryPhase(nc net.Conn) error {
	t.mu.Lock()
	if t.mem {
		t.mu.Unlock()
		return errors.New("netio: tls transport: already in its memory phase")
	}
	old := t.nc
	t.nc, t.mem = nc, true
	if t.passReads > 0 {
		// A Read left behind by the login (see mu): woken, with an error
		// tls.Conn does not keep, and waited for, within a bound.
		_ = old.SetReadDeadline(time.Unix(1, 0))
		stop := time.AfterFunc(passReadWait, func() {
			t.mu.Lock()
			t.passDone.Broadcast()
			t.mu.Unlock()
		})
		deadline := time.Now().Add(passReadWait)
		for t.passReads > 0 && time.Now().Before(deadline) {
			t.passDone.Wait()
		}
		stop.Stop()
	}
	t.mu.Unlock()
	_ = old.Close() // nc keeps the socket; a failure leaves nothing to undo
	return nil
}

// passReadWait bounds EnterMemoryPhase's wait for a pass-through Read that
// its deadline woke. It runs on the event loop; pool.PgconnDialer stops
// pgconn's background reader before the hand-over (SyncConn), so this is
// a second line of defence.
const passReadWait = 100 * time.Millisecond

// Buffered is the number of ciphertext bytes fed to the transport that
// tls.Conn has not taken yet.
func (t *TLSTransport) Buffered() int { return len(t.in) }

// Read: see TLSTransport.
func (t *TLSTransport) Read(p []byte) (int, error) {
	if t.nb {
		if len(t.in) == 0 {
			t.starved = true
			return 0, ErrWouldBlock
		}
		return t.take(p), nil
	}
	t.mu.Lock()
	nc, mem := t.nc, t.mem
	if mem {
		if len(t.in) > 0 {
			n := t.take(p)
			t.mu.Unlock()
			return n, nil
		}
		// tls.Conn may keep some of what it reads now: a later codec call
		// must not take it for starved.
		t.starved = false
		t.mu.Unlock()
		return nc.Read(p)
	}
	t.passReads++
	t.mu.Unlock()
	n, err := nc.Read(p)
	t.mu.Lock()
	t.passReads--
	t.passDone.Broadcast()
	t.mu.Unlock()
	return n, err
}

// take copies fed ciphertext into p.
func (t *TLSTransport) take(p []byte) int {
	n := copy(p, t.in)
	t.in = t.in[n:]
	if len(t.in) == 0 {
		t.in, t.owned = nil, false // drop the caller's buffer, or our copy
	}
	return n
}

// feed adds ciphertext for tls.Conn to read.
func (t *TLSTransport) feed(b []byte) {
	t.starved = false
	switch {
	case len(t.in) == 0:
		t.in, t.owned = b, false
	case t.owned:
		t.in = append(t.in, b...)
	default:
		t.in = append(append(make([]byte, 0, len(t.in)+len(b)), t.in...), b...)
		t.owned = true
	}
}

// retain makes the ciphertext not taken yet the transport's own.
func (t *TLSTransport) retain() {
	if len(t.in) > 0 && !t.owned {
		t.in = append([]byte(nil), t.in...)
		t.owned = true
	}
}

// Write: see TLSTransport.
func (t *TLSTransport) Write(p []byte) (int, error) {
	if t.nb {
		t.out = append(t.out, p...)
		return len(p), nil
	}
	if t.mem && len(t.out) > 0 { // what tls.Conn wrote on the loop goes first
		if _, err := t.nc.Write(t.out); err != nil {
			return 0, err
		}
		t.out = t.out[:0]
	}
	return t.nc.Write(p)
}

// Close closes the current connection.
func (t *TLSTransport) Close() error { return t.nc.Close() }

// LocalAddr is the current connection's.
func (t *TLSTransport) LocalAddr() net.Addr { return t.nc.LocalAddr() }

// RemoteAddr is the current connection's.
func (t *TLSTransport) RemoteAddr() net.Addr { return t.nc.RemoteAddr() }

// SetDeadline sets the current connection's deadlines.
func (t *TLSTransport) SetDeadline(d time.Time) error { return t.nc.SetDeadline(d) }

// SetReadDeadline sets the current connection's read deadline.
func (t *TLSTransport) SetReadDeadline(d time.Time) error { return t.nc.SetReadDeadline(d) }

// SetWriteDeadline sets the current connection's write deadline.
func (t *TLSTransport) SetWriteDeadline(d time.Time) error { return t.nc.SetWriteDeadline(d) }

// SyscallConn is the current connection's raw access, for a liveness peek
// or taking its descriptor: the ciphertext socket.
func (t *TLSTransport) SyscallConn() (syscall.RawConn, error) {
	sc, ok := t.nc.(syscall.Conn)
	if !ok {
		return nil, errors.New("netio: tls transport: the connection has no descriptor")
	}
	return sc.SyscallConn()
}
