//go:build linux

package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pgsidecar/pgsidecar/internal/netio"
)

// Sentinel errors; compare with errors.Is.
var (
	// ErrLoopClosed: the loop has stopped or was closed. Post and Register
	// return it, and Handler.Closed receives it for the connections the loop
	// closed when it stopped.
	ErrLoopClosed = errors.New("driver: loop closed")
	// ErrClosed: a write to a connection that is closed or closing.
	ErrClosed = errors.New("driver: connection closed")
	// ErrFlushTimeout: Handler.Closed receives it when CloseAfterFlush's
	// deadline passed with output still pending (the peer stopped reading).
	ErrFlushTimeout = errors.New("driver: flush deadline passed")
	// ErrNoFD: FD was given a connection without a file descriptor (TLS, a
	// pipe); the caller drives it some other way.
	ErrNoFD = errors.New("driver: connection has no file descriptor")
)

// Defaults of Options.
const (
	// DefaultReadBuffer is Options.ReadBuffer's default, in bytes.
	DefaultReadBuffer = 64 << 10
	// DefaultEvents is Options.Events's default.
	DefaultEvents = 128
	// DefaultFlushTimeout is Options.FlushTimeout's default.
	DefaultFlushTimeout = 5 * time.Second
)

const (
	// maxReadsPerTurn bounds how many reads of one connection one readiness
	// event makes before the loop serves the others; the rest is read at the
	// end of the turn.
	maxReadsPerTurn = 16
	// maxIovecs is the largest Writev done in one system call.
	maxIovecs = 64
	// maxKeptQueue: a post queue that grew beyond this is not reused.
	maxKeptQueue = 1024
)

// Options configure a Loop; the zero value is the defaults.
type Options struct {
	// ReadBuffer is the size of the loop's read buffer, the most one
	// Handler.Data call receives (DefaultReadBuffer when 0).
	ReadBuffer int
	// Events is how many readiness events one wait reports at most
	// (DefaultEvents when 0).
	Events int
	// FlushTimeout is CloseAfterFlush's deadline when it is given none
	// (DefaultFlushTimeout when 0).
	FlushTimeout time.Duration
	// BriefWait is how long the loop waits for the next event holding its
	// thread's P before it waits as a system call the scheduler knows about
	// (netio.Poller.SetBriefWait; 0: never).
	BriefWait time.Duration
}

// Loop is one event loop: an epoll instance, the connections registered on
// it, its timers and the queue of functions posted to it. Create it with
// NewLoop, run it with Run, release it with Close.
type Loop struct {
	poller  *netio.Poller
	epoch   time.Time                    // the zero of mono; has a monotonic reading
	onEvent func(fd int, ev netio.Event) // l.event, made once
	opts    Options

	// Owned by the loop goroutine.
	conns    []*Conn // by descriptor
	nconns   int
	rbuf     []byte   // the read buffer lent to Handler.Data
	pbuf     []byte   // with a codec: plaintext lent to Handler.Data (made on first SetCodec)
	cbuf     []byte   // with a codec: what Encode and Output produce, before the socket
	wbuf     []byte   // with a codec: Writev's small buffers gathered into one record
	timers   []*Timer // min-heap on when
	again    []*Conn  // connections with input left to read this turn
	again2   []*Conn  // the previous again, emptied, for reuse
	notes    []note   // Handler.Closed calls due once the current callback returns
	freeOut  []*outBuf
	iov      []unix.Iovec
	stopping bool // shutting down: registrations are refused

	stop atomic.Bool // Run must return
	done chan struct{}

	mu      sync.Mutex
	queue   []Task // posted, not yet run
	spare   []Task // the previous queue, emptied, for reuse
	started bool   // Run was called, or Close before it
	byRun   bool   // Run was called first
	stopped bool   // Post refuses
	closed  bool   // the poller is closed
}

// note is a Handler.Closed call to make.
type note struct {
	c   *Conn
	err error
}

// NewLoop returns a Loop ready to Run.
func NewLoop(opts Options) (*Loop, error) {
	if opts.ReadBuffer <= 0 {
		opts.ReadBuffer = DefaultReadBuffer
	}
	if opts.Events <= 0 {
		opts.Events = DefaultEvents
	}
	if opts.FlushTimeout <= 0 {
		opts.FlushTimeout = DefaultFlushTimeout
	}
	p, err := netio.NewPoller(opts.Events)
	if err != nil {
		return nil, fmt.Errorf("driver: new loop: %w", err)
	}
	p.SetBriefWait(opts.BriefWait)
	l := &Loop{
		poller: p,
		epoch:  time.Now(),
		opts:   opts,
		rbuf:   make([]byte, opts.ReadBuffer),
		iov:    make([]unix.Iovec, 0, maxIovecs),
		done:   make(chan struct{}),
	}
	l.onEvent = l.event
	return l, nil
}

// Run runs the loop on the calling goroutine, locked to its OS thread, until
// ctx is done or Close is called. Before it returns, it closes every
// connection (Handler.Closed receives ErrLoopClosed) and runs the functions
// posted until then. It returns nil when stopped that way, an error if the
// poller failed, and ErrLoopClosed if the loop already ran or was closed: a
// Loop runs once.
func (l *Loop) Run(ctx context.Context) error {
	l.mu.Lock()
	if l.started {
		l.mu.Unlock()
		return ErrLoopClosed
	}
	l.started, l.byRun = true, true
	l.mu.Unlock()
	defer close(l.done)

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cancel := context.AfterFunc(ctx, l.wakeToStop)
	defer cancel()

	var err error
	l.runPosted()
	for !l.stop.Load() {
		timeout := l.waitTimeout()
		if len(l.again) > 0 {
			timeout = 0
		}
		if _, err = l.poller.Wait(timeout, l.onEvent); err != nil {
			err = fmt.Errorf("driver: loop: %w", err)
			break
		}
		l.runTimers()
		l.runPosted()
		l.runAgain()
	}
	l.shutdown()
	return err
}

// wakeToStop makes Run return.
func (l *Loop) wakeToStop() {
	l.stop.Store(true)
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		_ = l.poller.Wake() // fails only if the eventfd is gone, and then Run is too
	}
}

// Close stops the loop if it runs, waits for Run to finish, and releases the
// poller. Connections registered and functions posted before are handled as
// Run describes, even if Run never ran (they then run on the caller's
// goroutine). Close may be called more than once, from any goroutine but the
// loop's own (it would wait for itself: a handler stops the loop by cancelling
// Run's context instead).
func (l *Loop) Close() error {
	l.mu.Lock()
	claim := !l.started // this call shuts down a loop that never ran
	l.started = true
	byRun := l.byRun
	l.mu.Unlock()
	switch {
	case byRun:
		l.wakeToStop()
	case claim:
		l.shutdown()
		close(l.done)
	}
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	return l.poller.Close()
}

// Post queues fn to run on the loop's goroutine, after the current turn's
// readiness events; functions posted by one goroutine run in the order posted.
// It may be called from any goroutine, the loop's included, and returns
// ErrLoopClosed (without queuing fn) once the loop has stopped. fn runs on the
// loop: it must not block, and may use the loop's connections and timers.
func (l *Loop) Post(fn func()) error { return l.PostTask(Func(fn)) }

// Task is work posted to a loop (PostTask).
type Task interface{ Run() }

// Func adapts a function to Task.
type Func func()

// Run calls f.
func (f Func) Run() { f() }

// PostTask is Post for a Task: a connection's owner that posts the same work
// again and again implements Task (on a small named type of itself) instead
// of keeping a func value, which costs a closure per connection.
func (l *Loop) PostTask(t Task) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return ErrLoopClosed
	}
	l.queue = append(l.queue, t)
	if len(l.queue) == 1 { // otherwise a wake is pending: the loop takes the whole queue
		if err := l.poller.Wake(); err != nil {
			return fmt.Errorf("driver: post: %w", err)
		}
	}
	return nil
}

// runPosted runs the queued functions.
func (l *Loop) runPosted() {
	l.mu.Lock()
	q := l.queue
	l.queue = l.spare[:0]
	l.mu.Unlock()
	if len(q) == 0 {
		l.spare = q
		return
	}
	for i, t := range q {
		q[i] = nil
		t.Run()
		l.settle()
	}
	if cap(q) > maxKeptQueue { // a burst: let it go
		q = nil
	}
	l.mu.Lock()
	l.spare = q[:0]
	l.mu.Unlock()
}

// Register hands socket fd to the loop with its handler; it may be called from
// any goroutine. fd must be a stream socket (see FD; Register makes it
// non-blocking), and belongs to the loop from then on, whatever the outcome:
// the loop closes it. On the loop, h.Opened is called once the socket is
// registered with epoll; if that fails, or the loop stops first, h.Closed is
// called instead. Either way h.Closed is called exactly once. Register returns
// an error, having closed fd, when the loop has stopped (ErrLoopClosed) or fd
// is not a descriptor.
func (l *Loop) Register(fd int, h Handler) error { return l.RegisterCodec(fd, h, nil) }

// RegisterCodec is Register of a connection whose bytes go through cd (see
// Conn.SetCodec) from the first: a client's TLS session, established before
// the loop took the connection over, whose codec may hold input already.
// A nil cd is Register.
func (l *Loop) RegisterCodec(fd int, h Handler, cd Codec) error {
	if fd < 0 {
		return fmt.Errorf("driver: register: bad descriptor %d", fd)
	}
	if err := unix.SetNonblock(fd, true); err != nil { // a blocking one would stall the loop
		_ = unix.Close(fd)
		return fmt.Errorf("driver: register: %w", os.NewSyscallError("fcntl", err))
	}
	c := &Conn{loop: l, h: h, fd: int32(fd)}
	if err := l.Post(func() { l.attach(c, cd) }); err != nil {
		_ = unix.Close(fd)
		return err
	}
	return nil
}

// Adopt registers fd, a socket the caller keeps, as c with handler h, at
// once: on the loop's goroutine only, and without Handler.Opened. c is the
// caller's struct (a zero Conn, or one it detached), so that adopting
// allocates nothing. It works as any other Conn, except that closing it
// (Close, a failed read or write, the loop stopping) only takes fd off the
// loop and never closes it: the caller, which owns it, closes it after
// Handler.Closed; and Detach takes it off the loop with no Handler call at
// all. This is how a connection that lives longer than its time on the loop
// (a pooled server connection, held by one client at a time) is driven by it.
// fd must be non-blocking already (the descriptor of a net.Conn is): Adopt
// makes no system call but epoll_ctl.
func (l *Loop) Adopt(c *Conn, fd int, h Handler) error {
	if fd < 0 {
		return fmt.Errorf("driver: adopt: bad descriptor %d", fd)
	}
	if l.stopping {
		return ErrLoopClosed
	}
	if fd < len(l.conns) && l.conns[fd] != nil {
		return fmt.Errorf("driver: adopt: descriptor %d is already registered", fd)
	}
	if err := l.poller.Add(fd, netio.Readable); err != nil {
		return fmt.Errorf("driver: adopt: %w", err)
	}
	*c = Conn{loop: l, h: h, fd: int32(fd), flags: fBorrowed}
	if fd >= len(l.conns) {
		l.conns = append(l.conns, make([]*Conn, fd+1-len(l.conns))...)
	}
	l.conns[fd] = c
	l.nconns++
	return nil
}

// attach registers c with epoll and tells its handler.
func (l *Loop) attach(c *Conn, cd Codec) {
	fd := int(c.fd)
	if fd < len(l.conns) && l.conns[fd] != nil {
		// The descriptor is another Conn's: a caller's bug. Not closed: it is
		// not this Conn's to close.
		c.flags |= fClosed
		l.notes = append(l.notes, note{c, fmt.Errorf("driver: register: descriptor %d is already registered", fd)})
		return
	}
	var err error
	if l.stopping {
		err = ErrLoopClosed
	} else if err = l.poller.Add(fd, netio.Readable); err != nil {
		err = fmt.Errorf("driver: register: %w", err)
	}
	if err != nil {
		c.flags |= fClosed
		_ = unix.Close(fd)
		l.notes = append(l.notes, note{c, err})
		return
	}
	if fd >= len(l.conns) {
		l.conns = append(l.conns, make([]*Conn, fd+1-len(l.conns))...)
	}
	l.conns[fd] = c
	l.nconns++
	if cd != nil {
		c.SetCodec(cd) // what it holds is decoded once Opened returned
	}
	c.h.Opened(c)
}

// Len is the number of connections registered on the loop. Loop goroutine
// only.
func (l *Loop) Len() int { return l.nconns }

// event handles the readiness of one descriptor.
func (l *Loop) event(fd int, ev netio.Event) {
	if fd >= len(l.conns) {
		return
	}
	c := l.conns[fd]
	if c == nil {
		return
	}
	if ev&netio.Writable != 0 && c.flags&fWantWrite != 0 {
		c.flush()
	}
	if ev&netio.Readable != 0 && c.flags&fClosed == 0 {
		l.read(c, ev&netio.Closed != 0)
	}
	l.settle()
}

// runAgain reads the connections that still had input when their turn ended,
// or whose reading resumed.
func (l *Loop) runAgain() {
	if len(l.again) == 0 {
		return
	}
	q := l.again
	l.again = l.again2[:0]
	for i, c := range q {
		q[i] = nil
		c.flags &^= fQueued
		if c.flags&(fClosed|fReadReady) == fReadReady {
			l.read(c, true)
			l.settle()
		}
	}
	l.again2 = q[:0]
}

// queueRead makes the loop read c at the end of the turn.
func (l *Loop) queueRead(c *Conn) {
	c.flags |= fReadReady
	if c.flags&fQueued == 0 {
		c.flags |= fQueued
		l.again = append(l.again, c)
	}
}

// settle makes the Handler.Closed calls that are due, including those the
// calls themselves cause.
func (l *Loop) settle() {
	for i := 0; i < len(l.notes); i++ {
		n := l.notes[i]
		l.notes[i] = note{}
		n.c.h.Closed(n.c, n.err)
	}
	l.notes = l.notes[:0]
}

// shutdown closes every connection and runs what was posted (registrations
// then find the loop stopping and close their descriptors).
func (l *Loop) shutdown() {
	l.stopping = true
	l.mu.Lock()
	l.stopped = true
	l.mu.Unlock()
	for _, c := range l.conns {
		if c != nil {
			c.closeNow(ErrLoopClosed)
		}
	}
	l.settle()
	for {
		l.mu.Lock()
		n := len(l.queue)
		l.mu.Unlock()
		if n == 0 {
			break
		}
		l.runPosted()
	}
	l.disarmAll()
	clear(l.again)
	l.again = l.again[:0]
}
