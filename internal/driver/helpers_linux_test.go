//go:build linux

package driver

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// waitFor is how long a test waits for something that should happen at once.
const waitFor = 10 * time.Second

// startLoop runs a new loop until the test ends, then checks that Run
// returned nil.
func startLoop(t testing.TB, opts Options) *Loop {
	t.Helper()
	l, err := NewLoop(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- l.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-ran:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(waitFor):
			t.Errorf("Run did not return after cancel")
		}
		if err := l.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return l
}

// onLoop runs fn on the loop and waits until it has.
func onLoop(t testing.TB, l *Loop, fn func()) {
	t.Helper()
	done := make(chan struct{})
	if err := l.Post(func() { fn(); close(done) }); err != nil {
		t.Fatalf("Post: %v", err)
	}
	select {
	case <-done:
	case <-time.After(waitFor):
		t.Fatal("posted function did not run")
	}
}

// recv waits for a value on ch.
func recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitFor):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// none checks that nothing is waiting on ch.
func none[T any](t testing.TB, ch <-chan T, what string) {
	t.Helper()
	select {
	case v := <-ch:
		t.Fatalf("unexpected %s: %v", what, v)
	default:
	}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// socketpair returns a non-blocking descriptor for Register and its peer as
// a net.Conn (closed when the test ends).
func socketpair(t testing.TB) (int, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[1]), "peer")
	peer, err := net.FileConn(f)
	f.Close()
	if err != nil {
		unix.Close(fds[0])
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	return fds[0], peer
}

// tcpPair returns a loopback TCP connection's server side, taken with FD, and
// its client side (closed when the test ends).
func tcpPair(t testing.TB) (int, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	fd, err := FD(server)
	if err != nil {
		server.Close()
		t.Fatal(err)
	}
	return fd, client.(*net.TCPConn)
}

// rec is a Handler that reports what happens on channels (the loop never
// blocks on them: they are buffered) or echoes.
type rec struct {
	echo        bool // Data writes b back and reports nothing
	pauseOnOpen bool
	opened      chan *Conn
	data        chan []byte
	closed      chan error
	drained     chan int
	nclosed     atomic.Int32
}

func newRec() *rec {
	return &rec{
		opened:  make(chan *Conn, 16),
		data:    make(chan []byte, 4096),
		closed:  make(chan error, 16),
		drained: make(chan int, 16),
	}
}

func (r *rec) Opened(c *Conn) {
	if r.pauseOnOpen {
		c.PauseRead()
	}
	r.opened <- c
}

func (r *rec) Data(c *Conn, b []byte) {
	if r.echo {
		if err := c.Write(b); err != nil && !errors.Is(err, ErrClosed) {
			panic(err)
		}
		return
	}
	r.data <- bytes.Clone(b)
}

func (r *rec) Closed(c *Conn, err error) {
	r.nclosed.Add(1)
	r.closed <- err
}

func (r *rec) Drained(c *Conn) { r.drained <- c.Buffered() }

// register registers fd with h and waits for Opened.
func register(t testing.TB, l *Loop, fd int, h recHandler) *Conn {
	t.Helper()
	if err := l.Register(fd, h); err != nil {
		t.Fatal(err)
	}
	return recv(t, h.openedCh(), "Opened")
}

// recHandler is a rec, or a Handler embedding one.
type recHandler interface {
	Handler
	openedCh() chan *Conn
}

func (r *rec) openedCh() chan *Conn { return r.opened }

// readN reads n bytes from c (with a deadline).
func readN(t testing.TB, c net.Conn, n int) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(waitFor))
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}
