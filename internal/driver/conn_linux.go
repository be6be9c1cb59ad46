//go:build linux

package driver

import (
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pgsidecar/pgsidecar/internal/netio"
)

// Handler receives the events of a Conn, on the loop's goroutine. Its methods
// must not block. The loop never calls them from inside a method of Conn or
// Loop: a handler may close, write to, pause or resume any connection of its
// loop (its own included) and be told of the consequences only after it
// returns.
type Handler interface {
	// Opened: c is registered; its input is delivered from now on.
	Opened(c *Conn)
	// Data: c read b. b is the loop's read buffer, valid only during the
	// call: keep a copy of what is needed later. b is never empty.
	Data(c *Conn, b []byte)
	// Closed: c is closed and its descriptor released; called exactly once
	// per Register that returned nil, last. err is nil after Close or a
	// completed CloseAfterFlush, io.EOF when the peer closed, ErrFlushTimeout,
	// ErrLoopClosed, or the error of a failed read, write or registration
	// (wrapping its errno, for example syscall.ECONNRESET).
	Closed(c *Conn, err error)
}

// Drainer is implemented by a Handler that wants to know when a connection's
// pending output has all been written (Buffered is back to 0), for example to
// resume reading the peer that produced it.
type Drainer interface {
	Drained(c *Conn)
}

// Conn flags.
const (
	fClosed    uint32 = 1 << iota // the descriptor is closed
	fClosing                      // CloseAfterFlush: closes once out drains
	fPaused                       // PauseRead
	fReadReady                    // input may be waiting unread
	fQueued                       // in l.again
	fWantWrite                    // registered for Writable
	fReadDone                     // closing, and the peer closed its side
	fBorrowed                     // Adopt: the descriptor is the caller's, never closed here
)

const (
	// maxKeptOut: a pending-output buffer larger than this is not reused.
	maxKeptOut = 64 << 10
	// maxFreeOut: how many pending-output buffers a loop keeps for reuse.
	maxFreeOut = 64
)

// Conn is a socket registered on a Loop. Its methods are called on the loop's
// goroutine only (from a Handler, a Timer or a posted function).
type Conn struct {
	h     Handler
	loop  *Loop
	out   *outBuf     // pending output; nil when there is none
	cx    *codecState // SetCodec's; nil: the socket's bytes are the handler's
	fd    int32
	flags uint32
}

// outBuf is a connection's pending output, written in this order: b[off:],
// then ref (the caller's bytes, kept by WriteRef without a copy), then tail
// (what was written after ref). The loop keeps a free list of them; one is
// held only while bytes are pending.
type outBuf struct {
	b       []byte
	off     int
	ref     []byte
	refDone func() // runs once ref is written or dropped
	tail    []byte
	c       *Conn
	timer   Timer // CloseAfterFlush's deadline
}

func (o *outBuf) append(b []byte) {
	if o.refDone != nil {
		o.tail = append(o.tail, b...)
		return
	}
	if o.off > 0 && len(o.b)+len(b) > cap(o.b) { // about to grow: drop what was written first
		n := copy(o.b, o.b[o.off:])
		o.b, o.off = o.b[:n], 0
	}
	o.b = append(o.b, b...)
}

// pending is the number of bytes still to write.
func (o *outBuf) pending() int { return len(o.b) - o.off + len(o.ref) + len(o.tail) }

// dropRef forgets ref and runs its done function.
func (o *outBuf) dropRef() {
	done := o.refDone
	o.ref, o.refDone = nil, nil
	if done != nil {
		done()
	}
}

// expire is the timer callback: CloseAfterFlush's deadline passed.
func (o *outBuf) expire(time.Time) {
	if o.c != nil {
		o.c.closeNow(ErrFlushTimeout)
	}
}

// FD takes the socket of c for a Loop: it duplicates its descriptor
// (close-on-exec, non-blocking), closes c and returns the duplicate, which the
// caller passes to Register. Nothing must have been read from c ahead of its
// user (a bufio.Reader's buffered bytes stay there). It returns ErrNoFD for a
// connection without a descriptor (TLS, net.Pipe); on any error c is left
// open and untouched.
func FD(c net.Conn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, ErrNoFD
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, fmt.Errorf("driver: fd: %w: %w", ErrNoFD, err)
	}
	fd, derr := -1, error(nil)
	if err := raw.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, fmt.Errorf("driver: fd: %w", err)
	}
	if derr != nil {
		return -1, fmt.Errorf("driver: fd: %w", os.NewSyscallError("fcntl", derr))
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		return -1, fmt.Errorf("driver: fd: %w", os.NewSyscallError("fcntl", err))
	}
	_ = c.Close() // the duplicate keeps the socket open
	return fd, nil
}

// Fd is the connection's descriptor (no longer valid once it is closed).
func (c *Conn) Fd() int { return int(c.fd) }

// Loop is the loop c is registered on.
func (c *Conn) Loop() *Loop { return c.loop }

// SetHandler makes h receive c's events from now on (Opened excepted).
func (c *Conn) SetHandler(h Handler) { c.h = h }

// IsClosed reports whether c is closed or closing (CloseAfterFlush).
func (c *Conn) IsClosed() bool { return c.flags&(fClosed|fClosing) != 0 }

// Buffered is the number of bytes written to c that the socket has not taken
// yet. A caller producing them applies backpressure on it, for example by
// pausing the peer they come from until Drainer.Drained.
func (c *Conn) Buffered() int {
	if c.out == nil {
		return 0
	}
	return c.out.pending()
}

// Write writes b to c: at once as far as the socket takes it, the rest copied
// to c's pending output and written as the socket drains, in order. b may be
// reused when Write returns. It returns ErrClosed if c is closed or closing;
// if the write fails, c is closed (Handler.Closed receives the same error once
// the caller's callback returns) and the error returned.
func (c *Conn) Write(b []byte) error {
	if c.flags&(fClosed|fClosing) != 0 {
		return ErrClosed
	}
	if len(b) == 0 {
		return nil
	}
	if c.cx != nil {
		return c.writeCodec(b)
	}
	return c.writeSocket(b)
}

// writeSocket writes b, bytes for the socket (plaintext, or what a codec
// encoded), after c's pending output, the rest pending. c is open.
func (c *Conn) writeSocket(b []byte) error {
	if c.out != nil {
		c.out.append(b)
		return nil
	}
	n, e := writeAll(c.fd, b)
	if e == 0 {
		return nil
	}
	if e != unix.EAGAIN {
		return c.fail(e)
	}
	return c.pend(b[n:])
}

// WriteRef writes b to c as Write does, but what the socket does not take at
// once is kept as b itself, not copied: a message of hundreds of megabytes
// is not held twice. b must not change until done runs, on the loop, exactly
// once: when b is written, dropped because c closed (or is detached), or at
// once when WriteRef fails. Bytes written to c after b follow it. A
// connection has at most one such b pending; a second is copied, as Write
// does.
func (c *Conn) WriteRef(b []byte, done func()) error {
	if c.flags&(fClosed|fClosing) != 0 {
		done()
		return ErrClosed
	}
	if c.cx != nil {
		return c.writeRefCodec(b, done)
	}
	return c.writeRef(b, done)
}

// writeRef is WriteRef on an open connection, of bytes for the socket.
func (c *Conn) writeRef(b []byte, done func()) error {
	if c.out != nil {
		if c.out.refDone != nil {
			c.out.append(b)
			done()
			return nil
		}
		c.out.ref, c.out.refDone = b, done
		return nil
	}
	n, e := writeAll(c.fd, b)
	if e == 0 {
		done()
		return nil
	}
	if e != unix.EAGAIN {
		done()
		return c.fail(e)
	}
	if err := c.pend(nil); err != nil {
		done()
		return err
	}
	c.out.ref, c.out.refDone = b[n:], done
	return nil
}

// Writev writes the bufs to c in order, as Write does, with one system call
// when it can.
func (c *Conn) Writev(bufs ...[]byte) error {
	if c.flags&(fClosed|fClosing) != 0 {
		return ErrClosed
	}
	if c.cx != nil {
		return c.writevCodec(bufs)
	}
	if c.out != nil || len(bufs) > maxIovecs {
		for _, b := range bufs {
			if err := c.Write(b); err != nil {
				return err
			}
		}
		return nil
	}
	total := 0
	for _, b := range bufs {
		total += len(b)
	}
	if total == 0 {
		return nil
	}
	var n int
	var e syscall.Errno
	for {
		if n, e = sysWritev(c.fd, bufs, c.loop.iov); e != unix.EINTR {
			break
		}
	}
	switch {
	case e == unix.EAGAIN:
		n = 0
	case e != 0:
		return c.fail(e)
	case n == total:
		return nil
	}
	for i, b := range bufs { // keep what was not written
		if n >= len(b) {
			n -= len(b)
			continue
		}
		if err := c.pend(b[n:]); err != nil {
			return err
		}
		for _, b := range bufs[i+1:] {
			c.out.append(b)
		}
		break
	}
	return nil
}

// writeAll writes b until done or the socket is full (EAGAIN) or fails.
func writeAll(fd int32, b []byte) (int, syscall.Errno) {
	n := 0
	for n < len(b) {
		k, e := sysWrite(fd, b[n:])
		switch {
		case e == unix.EINTR:
		case e != 0:
			return n, e
		case k == 0:
			return n, unix.EIO // never on a socket; do not spin
		default:
			n += k
		}
	}
	return n, 0
}

// fail closes c after a failed write and returns the error.
func (c *Conn) fail(e syscall.Errno) error {
	err := os.NewSyscallError("write", e)
	c.closeNow(err)
	return err
}

// pend starts c's pending output with b and asks for Writable.
func (c *Conn) pend(b []byte) error {
	l := c.loop
	var o *outBuf
	if n := len(l.freeOut); n > 0 {
		o = l.freeOut[n-1]
		l.freeOut[n-1] = nil
		l.freeOut = l.freeOut[:n-1]
	} else {
		o = new(outBuf)
		o.timer.Init(o.expire)
	}
	o.c = c
	o.append(b)
	c.out = o
	if c.flags&fWantWrite == 0 {
		if err := l.poller.Modify(int(c.fd), netio.Readable|netio.Writable); err != nil {
			err = fmt.Errorf("driver: write: %w", err)
			c.closeNow(err)
			return err
		}
		c.flags |= fWantWrite
	}
	return nil
}

// releaseOut gives c's pending-output buffer back to the loop.
func (c *Conn) releaseOut() {
	l, o := c.loop, c.out
	c.out = nil
	l.Disarm(&o.timer)
	o.c, o.off = nil, 0
	o.dropRef()
	if cap(o.tail) > maxKeptOut {
		o.tail = nil
	}
	o.tail = o.tail[:0]
	if cap(o.b) > maxKeptOut || len(l.freeOut) >= maxFreeOut {
		return
	}
	o.b = o.b[:0]
	l.freeOut = append(l.freeOut, o)
}

// flush writes c's pending output (c is Writable).
func (c *Conn) flush() {
	o := c.out
	if o == nil {
		return
	}
	for {
		n, e := writeAll(c.fd, o.b[o.off:])
		o.off += n
		if e == 0 && o.refDone != nil {
			n, e = writeAll(c.fd, o.ref)
			o.ref = o.ref[n:]
			if e == 0 {
				o.dropRef() // written
				o.b, o.tail = o.tail, o.b[:0]
				o.off = 0
				continue
			}
		}
		switch {
		case e == unix.EAGAIN:
			return
		case e != 0:
			c.closeNow(os.NewSyscallError("write", e))
			return
		}
		break
	}
	c.releaseOut()
	if c.flags&fClosing != 0 {
		c.closeNow(nil)
		return
	}
	if err := c.loop.poller.Modify(int(c.fd), netio.Readable); err != nil {
		c.closeNow(fmt.Errorf("driver: write: %w", err))
		return
	}
	c.flags &^= fWantWrite
	if d, ok := c.h.(Drainer); ok {
		d.Drained(c)
	}
}

// PauseRead stops delivering c's input to Handler.Data until ResumeRead; the
// input waits in the socket (whose peer then blocks: backpressure). With a
// codec, input already decoded or read waits in the codec: a handler may
// pause in the middle of a delivery.
func (c *Conn) PauseRead() { c.flags |= fPaused }

// ResumeRead delivers c's input again, including what arrived while paused
// (read after the current callback returns, in the same turn of the loop)
// and what its codec holds, even if the socket gets nothing new.
func (c *Conn) ResumeRead() {
	if c.flags&fPaused == 0 {
		return
	}
	c.flags &^= fPaused
	if c.flags&(fReadReady|fClosed) == fReadReady {
		c.loop.queueRead(c)
	} else if c.cx != nil && c.flags&fClosed == 0 && c.cx.codec.Pending() {
		c.loop.queueRead(c)
	}
}

// Paused reports whether c's reading is paused.
func (c *Conn) Paused() bool { return c.flags&fPaused != 0 }

// Close closes c now, dropping its pending output; Handler.Closed receives
// nil once the current callback returns. Closing a closed Conn does nothing.
func (c *Conn) Close() { c.closeNow(nil) }

// CloseAfterFlush stops c's input (what arrives is read and dropped, so that
// closing does not reset the connection) and closes c once its pending output
// is written; Handler.Closed then receives nil. If that takes longer than
// timeout (the loop's Options.FlushTimeout when 0 or less), c is closed anyway
// and Handler.Closed receives ErrFlushTimeout. Writes are refused from now
// on. Without pending output, it is Close. A connection of the loop's own
// whose codec is a CloseNotifier sends its goodbye first.
func (c *Conn) CloseAfterFlush(timeout time.Duration) {
	if c.flags&(fClosed|fClosing) != 0 {
		return
	}
	if c.cx != nil && c.flags&fBorrowed == 0 {
		if cn, ok := c.cx.codec.(CloseNotifier); ok {
			out := cn.CloseNotify(c.loop.cbuf[:0])
			err := c.writeSocket(out)
			c.loop.keepCipher(out)
			if err != nil {
				return // c is closed
			}
		}
	}
	if c.out == nil {
		c.closeNow(nil)
		return
	}
	if timeout <= 0 {
		timeout = c.loop.opts.FlushTimeout
	}
	c.flags |= fClosing
	c.loop.ArmAfter(&c.out.timer, timeout)
	if c.flags&fReadReady != 0 { // input left while paused: drop it now (a Writable event would report it too)
		c.loop.queueRead(c)
	}
}

// Detach takes an adopted connection (Loop.Adopt) off the loop, dropping its
// pending output, with no Handler call: the caller goes on with its
// descriptor elsewhere, and may adopt it again with the same Conn. It does
// nothing to a connection that was not adopted or is closed.
func (c *Conn) Detach() {
	if c.flags&fBorrowed == 0 || c.flags&fClosed != 0 {
		return
	}
	l := c.loop
	fd := int(c.fd)
	_ = l.poller.Remove(fd)
	l.conns[fd] = nil
	l.nconns--
	if c.out != nil {
		c.releaseOut()
	}
	c.flags = fBorrowed | fClosed
}

// closeNow closes c's descriptor and queues Handler.Closed(c, err).
func (c *Conn) closeNow(err error) {
	if c.flags&fClosed != 0 {
		return
	}
	l := c.loop
	c.flags |= fClosed
	c.flags &^= fClosing | fWantWrite | fReadReady
	fd := int(c.fd)
	_ = l.poller.Remove(fd)
	if c.flags&fBorrowed == 0 {
		_ = unix.Close(fd)
	}
	l.conns[fd] = nil
	l.nconns--
	if c.out != nil {
		c.releaseOut()
	}
	l.notes = append(l.notes, note{c, err})
}

// read reads c until the socket is empty, handing each chunk to its handler.
// Without full, a read that does not fill the buffer ends it: the socket is
// empty then, and new input is a new edge. full (the peer hung up, or the
// reading was deferred) reads until EAGAIN, or end of file.
//
// With a codec, what it still holds is decoded first, and what the socket
// gives goes through it (decode).
func (l *Loop) read(c *Conn, full bool) {
	c.flags &^= fReadReady
	for i := 0; ; i++ {
		if c.flags&fClosed != 0 {
			return
		}
		closing := c.flags&fClosing != 0
		if closing && c.flags&fReadDone != 0 {
			return
		}
		if !closing && c.flags&fPaused != 0 {
			c.flags |= fReadReady
			return
		}
		if i == maxReadsPerTurn {
			l.queueRead(c)
			return
		}
		if c.cx != nil && !closing && c.cx.codec.Pending() && !l.decode(c, c.cx.codec, nil) {
			return
		}
		n, e := sysRead(c.fd, l.rbuf)
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN:
			return
		case e != 0:
			c.closeNow(os.NewSyscallError("read", e))
			return
		case n == 0:
			if closing {
				c.flags |= fReadDone // keep flushing: the peer may still read
				return
			}
			c.closeNow(io.EOF)
			return
		}
		if !closing {
			if c.cx == nil {
				c.h.Data(c, l.rbuf[:n])
			} else if !l.decode(c, c.cx.codec, l.rbuf[:n]) {
				return
			}
		}
		if n < len(l.rbuf) && !full {
			return
		}
	}
}
