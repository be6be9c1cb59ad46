//go:build linux

package netio

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// RawIO reads and writes a socket with raw read(2) and write(2) calls made from
// syscall.RawConn callbacks, and waits for readiness through the runtime's
// network poller like net.Conn does.
//
// Why: a proxy's reads and writes are non-blocking calls that return at once, but
// a write wakes its reader, which often preempts the writer's thread before it
// returns to user space. Made through net.Conn, the call is a Go system call: while
// the thread is off the CPU, the scheduler's monitor sees a P stuck in a system
// call, hands it to another thread and keeps itself awake (every 20 µs) to do so.
// On a busy host this doubled the proxy's context switches. A raw call leaves the
// P where it is; the goroutine simply resumes with its thread.
//
// Deadlines set on the net.Conn apply; errors of a wait are net.Conn's own
// (*net.OpError, os.ErrDeadlineExceeded, net.ErrClosed), errors of a call are
// *os.SyscallError, and a read of 0 bytes is io.EOF.
//
// Like net.Conn, it is safe for concurrent use: each Read and each Write is whole.
// Under the race detector the calls go through syscall.Read and syscall.Write,
// which tell the detector what the kernel read and wrote.
type RawIO struct {
	raw syscall.RawConn
	rd  rawOp
	wr  rawOp
}

// rawOp is the state of one read or write: the callback reads it, so that a call
// allocates no closure.
type rawOp struct {
	mu  sync.Mutex
	fn  func(uintptr) bool
	p   []byte
	n   int
	err error
}

// NewRawIO returns a RawIO over c, or nil when c has no file descriptor (a TLS
// connection, a net.Pipe): the caller then uses c itself (see ConnIO).
func NewRawIO(c net.Conn) *RawIO {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	r := &RawIO{raw: raw}
	r.rd.fn, r.wr.fn = r.read, r.write
	return r
}

func (r *RawIO) read(fd uintptr) bool {
	o := &r.rd
	for {
		n, e := sysRead(fd, o.p)
		switch e {
		case 0:
			o.n = n
			if n == 0 {
				o.err = io.EOF
			}
			return true
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			o.err = os.NewSyscallError("read", e)
			return true
		}
	}
}

func (r *RawIO) write(fd uintptr) bool {
	o := &r.wr
	for o.n < len(o.p) {
		n, e := sysWrite(fd, o.p[o.n:])
		switch e {
		case 0:
			if n == 0 {
				o.err = io.ErrShortWrite // never on a socket; do not spin
				return true
			}
			o.n += n
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			o.err = os.NewSyscallError("write", e)
			return true
		}
	}
	return true
}

// Read reads what the socket holds into p, waiting until it holds something.
func (r *RawIO) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	o := &r.rd
	o.mu.Lock()
	defer o.mu.Unlock()
	o.p, o.n, o.err = p, 0, nil
	err := r.raw.Read(o.fn)
	o.p = nil
	if err == nil {
		err = o.err
	}
	return o.n, err
}

// Write writes all of p.
func (r *RawIO) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	o := &r.wr
	o.mu.Lock()
	defer o.mu.Unlock()
	o.p, o.n, o.err = p, 0, nil
	err := r.raw.Write(o.fn)
	o.p = nil
	if err == nil {
		err = o.err
	}
	return o.n, err
}

// PeekFD looks at up to len(b) bytes waiting on socket fd without consuming them
// and without blocking: 0 bytes with errno 0 means the peer closed, EAGAIN that
// nothing is there yet. For RawConn callbacks.
func PeekFD(fd uintptr, b []byte) (int, syscall.Errno) {
	for {
		n, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		if e != syscall.EINTR {
			return int(n), e
		}
	}
}
