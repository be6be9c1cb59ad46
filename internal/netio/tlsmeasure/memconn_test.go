package tlsmeasure

import (
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// wouldBlockError is what memConn.Read returns when it holds no bytes. crypto/tls
// leaves its connection usable after a transport Read error only if the error is
// a net.Error whose Temporary() is true (conn.go, readRecordOrCCS); Timeout() alone
// is not enough (see TestTLSStickyErrors).
type wouldBlockError struct{}

func (wouldBlockError) Error() string   { return "would block" }
func (wouldBlockError) Timeout() bool   { return true }
func (wouldBlockError) Temporary() bool { return true }

var errWouldBlock error = wouldBlockError{}

// memConn is the transport a loop-driven tls.Conn runs over.
//
// During the handshake, off the loop, it is a pass-through to a blocking net.Conn.
// detach then takes the socket's descriptor from that net.Conn and from then on
// Read hands out the ciphertext the loop put in `in` (errWouldBlock when there is
// none) and Write appends to `out`, which the loop writes to the socket. Write
// never fails: crypto/tls makes every transport Write error permanent.
type memConn struct {
	nc     net.Conn // handshake phase only
	fd     int      // on the loop: the socket, owned
	in     []byte   // ciphertext read by the loop, not yet taken by tls.Conn
	out    []byte   // ciphertext written by tls.Conn, not yet written to the socket
	laddr  net.Addr
	raddr  net.Addr
	blocks int // would-block answers, for the tests
}

func newMemConn(nc net.Conn) *memConn {
	return &memConn{nc: nc, fd: -1, laddr: nc.LocalAddr(), raddr: nc.RemoteAddr()}
}

// detach ends the pass-through phase: the descriptor is duplicated and the
// net.Conn closed, which takes it out of the runtime's poller.
func (m *memConn) detach() (int, error) {
	fd, err := detachFD(m.nc)
	if err != nil {
		return -1, err
	}
	m.nc, m.fd = nil, fd
	return fd, nil
}

func (m *memConn) Read(p []byte) (int, error) {
	if m.nc != nil {
		return m.nc.Read(p)
	}
	if len(m.in) == 0 {
		m.blocks++
		return 0, errWouldBlock
	}
	n := copy(p, m.in)
	m.in = m.in[n:]
	return n, nil
}

func (m *memConn) Write(p []byte) (int, error) {
	if m.nc != nil {
		return m.nc.Write(p)
	}
	m.out = append(m.out, p...)
	return len(p), nil
}

func (m *memConn) Close() error {
	if m.nc != nil {
		return m.nc.Close()
	}
	if m.fd >= 0 {
		fd := m.fd
		m.fd = -1
		return unix.Close(fd)
	}
	return nil
}

func (m *memConn) LocalAddr() net.Addr  { return m.laddr }
func (m *memConn) RemoteAddr() net.Addr { return m.raddr }

func (m *memConn) SetDeadline(t time.Time) error {
	if m.nc != nil {
		return m.nc.SetDeadline(t)
	}
	return nil
}

func (m *memConn) SetReadDeadline(t time.Time) error {
	if m.nc != nil {
		return m.nc.SetReadDeadline(t)
	}
	return nil
}

func (m *memConn) SetWriteDeadline(t time.Time) error {
	if m.nc != nil {
		return m.nc.SetWriteDeadline(t)
	}
	return nil
}

// detachFD returns a duplicate of c's descriptor (non-blocking, as the runtime set
// it: the flag belongs to the open file, shared by both descriptors) and closes c,
// which removes c's descriptor from the runtime's epoll set.
func detachFD(c net.Conn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, syscall.EINVAL
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd, derr := -1, error(nil)
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, derr
	}
	c.Close()
	return nfd, nil
}

func closeFD(fd int) { _ = unix.Close(fd) }
