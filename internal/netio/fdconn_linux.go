//go:build linux

package netio

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// FDConn is a net.Conn over a non-blocking socket descriptor that the
// runtime's network poller does not watch. A connection that an event loop
// drives (internal/driver) needs one: a descriptor the runtime also watches
// wakes an idle thread of the runtime for every byte that arrives, only to
// find nobody waiting for it.
//
// Read and Write work for the rare user that is not the loop (a server
// connection's Terminate, a health check): they wait for readiness with
// poll(2), in slices of at most pollSlice so that a deadline set or a Close
// made meanwhile takes effect, and fail with os.ErrDeadlineExceeded after the
// deadline. It is safe for concurrent use as a net.Conn is, except that
// reads (and writes) must not run concurrently with each other.
type FDConn struct {
	fd           int
	laddr, raddr net.Addr
	closed       atomic.Bool
	rdl, wdl     atomic.Int64 // deadlines, UnixNano; 0: none
}

// pollSlice bounds one wait of Read or Write.
const pollSlice = 50 * time.Millisecond

// NewFDConn returns a connection over fd (non-blocking, owned by the
// FDConn from now on) whose addresses are laddr and raddr.
func NewFDConn(fd int, laddr, raddr net.Addr) *FDConn {
	return &FDConn{fd: fd, laddr: laddr, raddr: raddr}
}

// Fd is the descriptor.
func (c *FDConn) Fd() int { return c.fd }

// wait waits until fd is ready for events or the deadline passes.
func (c *FDConn) wait(events int16, deadline *atomic.Int64) error {
	for {
		if c.closed.Load() {
			return net.ErrClosed
		}
		d := pollSlice
		if dl := deadline.Load(); dl != 0 {
			left := time.Until(time.Unix(0, dl))
			if left <= 0 {
				return os.ErrDeadlineExceeded
			}
			d = min(d, left)
		}
		fds := []unix.PollFd{{Fd: int32(c.fd), Events: events}}
		n, err := unix.Poll(fds, int(d/time.Millisecond)+1)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return os.NewSyscallError("poll", err)
		}
		if n > 0 {
			return nil
		}
	}
}

// Read reads into p, waiting for data up to the read deadline.
func (c *FDConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if c.closed.Load() {
			return 0, net.ErrClosed
		}
		n, err := unix.Read(c.fd, p)
		switch {
		case err == nil && n == 0:
			return 0, io.EOF
		case err == nil:
			return n, nil
		case errors.Is(err, unix.EINTR):
		case errors.Is(err, unix.EAGAIN):
			if err := c.wait(unix.POLLIN, &c.rdl); err != nil {
				return 0, err
			}
		default:
			return 0, os.NewSyscallError("read", err)
		}
	}
}

// Write writes p, waiting for room up to the write deadline.
func (c *FDConn) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		if c.closed.Load() {
			return done, net.ErrClosed
		}
		n, err := unix.Write(c.fd, p[done:])
		switch {
		case err == nil:
			done += n
		case errors.Is(err, unix.EINTR):
		case errors.Is(err, unix.EAGAIN):
			if err := c.wait(unix.POLLOUT, &c.wdl); err != nil {
				return done, err
			}
		default:
			return done, os.NewSyscallError("write", err)
		}
	}
	return done, nil
}

// Close closes the descriptor, once.
func (c *FDConn) Close() error {
	if c.closed.Swap(true) {
		return net.ErrClosed
	}
	return unix.Close(c.fd)
}

// LocalAddr is the local address given to NewFDConn.
func (c *FDConn) LocalAddr() net.Addr { return c.laddr }

// RemoteAddr is the remote address given to NewFDConn.
func (c *FDConn) RemoteAddr() net.Addr { return c.raddr }

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// SetDeadline sets both deadlines.
func (c *FDConn) SetDeadline(t time.Time) error {
	c.rdl.Store(nanos(t))
	c.wdl.Store(nanos(t))
	return nil
}

// SetReadDeadline sets the read deadline (zero: none).
func (c *FDConn) SetReadDeadline(t time.Time) error { c.rdl.Store(nanos(t)); return nil }

// SetWriteDeadline sets the write deadline (zero: none).
func (c *FDConn) SetWriteDeadline(t time.Time) error { c.wdl.Store(nanos(t)); return nil }

// SyscallConn gives raw access to the descriptor; its Read and Write wait
// for readiness with poll(2) between calls of their function.
func (c *FDConn) SyscallConn() (syscall.RawConn, error) { return fdRaw{c}, nil }

// fdRaw is FDConn's syscall.RawConn.
type fdRaw struct{ c *FDConn }

func (r fdRaw) Control(f func(fd uintptr)) error {
	if r.c.closed.Load() {
		return net.ErrClosed
	}
	f(uintptr(r.c.fd))
	return nil
}

func (r fdRaw) Read(f func(fd uintptr) bool) error {
	for !f(uintptr(r.c.fd)) {
		if err := r.c.wait(unix.POLLIN, &r.c.rdl); err != nil {
			return err
		}
	}
	return nil
}

func (r fdRaw) Write(f func(fd uintptr) bool) error {
	for !f(uintptr(r.c.fd)) {
		if err := r.c.wait(unix.POLLOUT, &r.c.wdl); err != nil {
			return err
		}
	}
	return nil
}
