//go:build linux

package driver

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// echoThrough writes messages of growing sizes (up to 1 MiB, more than a
// socket holds, so the echo goes through pending output) to peer and checks
// they come back whole and in order.
func echoThrough(t *testing.T, peer net.Conn) {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	for _, size := range []int{1, 5, 64, 4096, 65536, 65537, 300_000, 1 << 20} {
		msg := make([]byte, size)
		for i := range msg {
			msg[i] = byte(rng.Uint32())
		}
		werr := make(chan error, 1)
		go func() { _, err := peer.Write(msg); werr <- err }()
		got := readN(t, peer, size)
		if err := recv(t, werr, "write"); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("echo of %d bytes differs", size)
		}
	}
}

func TestEchoTCP(t *testing.T) {
	l := startLoop(t, Options{})
	fd, client := tcpPair(t)
	h := newRec()
	h.echo = true
	register(t, l, fd, h)
	echoThrough(t, client)
	client.Close()
	if err := recv(t, h.closed, "Closed"); err != io.EOF {
		t.Fatalf("Closed(%v), want io.EOF", err)
	}
	onLoop(t, l, func() {
		if n := l.Len(); n != 0 {
			t.Errorf("Len %d after close, want 0", n)
		}
	})
}

func TestEchoSocketpair(t *testing.T) {
	l := startLoop(t, Options{ReadBuffer: 4096}) // several reads per message
	fd, peer := socketpair(t)
	h := newRec()
	h.echo = true
	register(t, l, fd, h)
	echoThrough(t, peer)
}

func TestWritev(t *testing.T) {
	l := startLoop(t, Options{})
	fd, peer := socketpair(t)
	h := newRec()
	c := register(t, l, fd, h)
	big := bytes.Repeat([]byte("x"), 2<<20) // more than the socket takes
	var want []byte
	onLoop(t, l, func() {
		for _, bufs := range [][][]byte{{[]byte("ab"), nil, []byte("cd")}, {big, []byte("tail")}, {[]byte("after")}} {
			if err := c.Writev(bufs...); err != nil {
				t.Errorf("Writev: %v", err)
			}
			want = append(want, bytes.Join(bufs, nil)...)
		}
		if c.Buffered() == 0 {
			t.Errorf("nothing pending after writing %d bytes to a socket nobody reads", len(want))
		}
	})
	if got := readN(t, peer, len(want)); !bytes.Equal(got, want) {
		t.Fatal("Writev's bytes differ")
	}
	if n := recv(t, h.drained, "Drained"); n != 0 {
		t.Fatalf("Buffered %d when drained", n)
	}
}

// TestSlowReader: a peer that stops reading makes the output pile up, does
// not stop the loop serving others, and CloseAfterFlush's deadline closes it.
func TestSlowReader(t *testing.T) {
	l := startLoop(t, Options{})
	fd, _ := socketpair(t) // the peer never reads
	slow := newRec()
	c := register(t, l, fd, slow)
	const total = 4 << 20
	chunk := make([]byte, 64<<10)
	onLoop(t, l, func() {
		for range total / len(chunk) {
			if err := c.Write(chunk); err != nil {
				t.Errorf("Write: %v", err)
			}
		}
	})
	var buffered int
	onLoop(t, l, func() { buffered = c.Buffered() })
	if buffered < total/2 || buffered > total {
		t.Fatalf("Buffered %d after writing %d to a peer that does not read", buffered, total)
	}

	fd2, peer2 := socketpair(t)
	echo := newRec()
	echo.echo = true
	register(t, l, fd2, echo)
	for range 100 {
		if _, err := peer2.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		if got := readN(t, peer2, 4); string(got) != "ping" {
			t.Fatalf("echo %q", got)
		}
	}

	start := time.Now()
	onLoop(t, l, func() {
		c.CloseAfterFlush(50 * time.Millisecond)
		if err := c.Write([]byte("late")); !errors.Is(err, ErrClosed) {
			t.Errorf("Write after CloseAfterFlush: %v, want ErrClosed", err)
		}
		if !c.IsClosed() {
			t.Error("IsClosed false while closing")
		}
	})
	if err := recv(t, slow.closed, "Closed"); !errors.Is(err, ErrFlushTimeout) {
		t.Fatalf("Closed(%v), want ErrFlushTimeout", err)
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Fatalf("closed after %v, before its deadline", d)
	}
	onLoop(t, l, func() {
		if c.Buffered() != 0 || l.Len() != 1 {
			t.Errorf("after close: Buffered %d, Len %d; want 0, 1", c.Buffered(), l.Len())
		}
	})
}

// TestCloseAfterFlush: with a reading peer, everything arrives, then EOF, and
// Closed(nil); input sent meanwhile is dropped, not delivered.
func TestCloseAfterFlush(t *testing.T) {
	l := startLoop(t, Options{})
	fd, peer := socketpair(t)
	h := newRec()
	c := register(t, l, fd, h)
	want := bytes.Repeat([]byte("0123456789"), 300_000)
	onLoop(t, l, func() {
		if err := c.Write(want); err != nil {
			t.Error(err)
		}
		c.CloseAfterFlush(time.Minute)
	})
	if _, err := peer.Write([]byte("ignored")); err != nil {
		t.Fatal(err)
	}
	peer.SetReadDeadline(time.Now().Add(waitFor))
	got, err := io.ReadAll(peer)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes, want %d", len(got), len(want))
	}
	if err := recv(t, h.closed, "Closed"); err != nil {
		t.Fatalf("Closed(%v), want nil", err)
	}
	none(t, h.data, "Data while closing")
	none(t, h.drained, "Drained while closing")
}

func TestEOFOnce(t *testing.T) {
	l := startLoop(t, Options{})
	fd, peer := socketpair(t)
	h := newRec()
	register(t, l, fd, h)
	if _, err := peer.Write([]byte("last words")); err != nil {
		t.Fatal(err)
	}
	peer.Close()
	if got := recv(t, h.data, "Data"); string(got) != "last words" {
		t.Fatalf("Data %q", got)
	}
	if err := recv(t, h.closed, "Closed"); err != io.EOF {
		t.Fatalf("Closed(%v), want io.EOF", err)
	}
	onLoop(t, l, func() {}) // a turn later: nothing more
	if n := h.nclosed.Load(); n != 1 {
		t.Fatalf("Closed %d times", n)
	}
}

func TestResetOnce(t *testing.T) {
	l := startLoop(t, Options{})
	fd, client := tcpPair(t)
	h := newRec()
	register(t, l, fd, h)
	if err := client.SetLinger(0); err != nil { // close sends RST
		t.Fatal(err)
	}
	client.Close()
	if err := recv(t, h.closed, "Closed"); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("Closed(%v), want ECONNRESET", err)
	}
	onLoop(t, l, func() {
		if l.Len() != 0 {
			t.Errorf("Len %d", l.Len())
		}
	})
	if n := h.nclosed.Load(); n != 1 {
		t.Fatalf("Closed %d times", n)
	}
}

// TestWriteToClosedPeer: a write that fails closes the Conn, reports the error
// once, and later writes are refused.
func TestWriteToClosedPeer(t *testing.T) {
	l := startLoop(t, Options{})
	fd, peer := socketpair(t)
	h := newRec()
	c := register(t, l, fd, h)
	peer.Close()
	var werr error
	eventually(t, "a failed write", func() bool {
		onLoop(t, l, func() { werr = c.Write([]byte("x")) })
		return werr != nil
	})
	if !errors.Is(werr, syscall.EPIPE) && !errors.Is(werr, ErrClosed) {
		t.Fatalf("Write: %v, want EPIPE (or ErrClosed if EOF came first)", werr)
	}
	err := recv(t, h.closed, "Closed")
	if !errors.Is(err, syscall.EPIPE) && err != io.EOF {
		t.Fatalf("Closed(%v)", err)
	}
	onLoop(t, l, func() {
		if err := c.Write([]byte("x")); !errors.Is(err, ErrClosed) {
			t.Errorf("Write after close: %v", err)
		}
		c.Close() // no second Closed
	})
	if n := h.nclosed.Load(); n != 1 {
		t.Fatalf("Closed %d times", n)
	}
}

// fence returns a registered connection and a func that waits until the loop
// has handled every readiness event caused before the call: epoll reports
// ready descriptors in the order they became ready.
func fence(t *testing.T, l *Loop) func() {
	fd, peer := socketpair(t)
	h := newRec()
	register(t, l, fd, h)
	return func() {
		t.Helper()
		if _, err := peer.Write([]byte{'!'}); err != nil {
			t.Fatal(err)
		}
		recv(t, h.data, "fence")
	}
}

func TestPauseResume(t *testing.T) {
	l := startLoop(t, Options{})
	sync := fence(t, l)
	fd, peer := socketpair(t)
	h := newRec()
	h.pauseOnOpen = true
	c := register(t, l, fd, h)

	for _, s := range []string{"hello ", "paused ", "world"} {
		if _, err := peer.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
		sync()
	}
	none(t, h.data, "Data while paused")
	peer.Close() // EOF while paused: reported after the data
	sync()
	none(t, h.closed, "Closed while paused")

	onLoop(t, l, func() {
		if !c.Paused() {
			t.Error("not Paused")
		}
		c.ResumeRead()
	})
	var got []byte
	for len(got) < len("hello paused world") {
		got = append(got, recv(t, h.data, "Data after resume")...)
	}
	if string(got) != "hello paused world" {
		t.Fatalf("got %q", got)
	}
	if err := recv(t, h.closed, "Closed"); err != io.EOF {
		t.Fatalf("Closed(%v), want io.EOF", err)
	}
}

// pauser pauses its Conn in Data, after the first chunk.
type pauser struct {
	*rec
}

func (p pauser) Data(c *Conn, b []byte) {
	c.PauseRead()
	p.rec.Data(c, b)
}

// TestPauseInData: pausing inside Data stops the reads of the same turn; what
// is left is read on resume.
func TestPauseInData(t *testing.T) {
	l := startLoop(t, Options{ReadBuffer: 16})
	fd, peer := socketpair(t)
	h := newRec()
	c := register(t, l, fd, pauser{h})
	msg := []byte("0123456789abcdefghijklmnopqrstuvwxyz") // 3 reads of 16
	if _, err := peer.Write(msg); err != nil {
		t.Fatal(err)
	}
	var got []byte
	for len(got) < len(msg) {
		b := recv(t, h.data, "Data")
		if len(b) > 16 {
			t.Fatalf("chunk of %d bytes from a 16-byte buffer", len(b))
		}
		got = append(got, b...)
		onLoop(t, l, func() {}) // had the pause not held, the next chunk would be here
		none(t, h.data, "Data while paused")
		onLoop(t, l, c.ResumeRead)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("got %q", got)
	}
}

func TestRegisterErrors(t *testing.T) {
	l := startLoop(t, Options{})
	if err := l.Register(-1, newRec()); err == nil {
		t.Error("Register(-1) succeeded")
	}
	// Not a socket epoll accepts: a regular file.
	f, err := unix.Open(t.TempDir()+"/f", unix.O_CREAT|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	h := newRec()
	if err := l.Register(f, h); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, h.closed, "Closed"); !errors.Is(err, unix.EPERM) {
		t.Fatalf("Closed(%v), want EPERM", err)
	}
	none(t, h.opened, "Opened")
	// The same descriptor twice: the second is refused, the first unharmed.
	fd, peer := socketpair(t)
	h1, h2 := newRec(), newRec()
	register(t, l, fd, h1)
	if err := l.Register(fd, h2); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, h2.closed, "Closed"); err == nil {
		t.Fatal("second Register of a descriptor: Closed(nil)")
	}
	if _, err := peer.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if got := recv(t, h1.data, "Data"); string(got) != "x" {
		t.Fatalf("Data %q", got)
	}
}

func TestFD(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, err := FD(a); !errors.Is(err, ErrNoFD) {
		t.Fatalf("FD(pipe): %v, want ErrNoFD", err)
	}
	fd, client := tcpPair(t)
	defer unix.Close(fd)
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil || flags&unix.O_NONBLOCK == 0 {
		t.Fatalf("flags %#x, %v: want O_NONBLOCK", flags, err)
	}
	if fdf, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil || fdf&unix.FD_CLOEXEC == 0 {
		t.Fatalf("fd flags %#x, %v: want FD_CLOEXEC", fdf, err)
	}
	// The socket outlives the net.Conn FD closed.
	if _, err := client.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	var b2 [2]byte
	eventually(t, "data on the duplicate", func() bool {
		n, err := unix.Read(fd, b2[:])
		return n == 2 && err == nil
	})
	if string(b2[:]) != "hi" {
		t.Fatalf("read %q", b2[:])
	}
}

// TestPostManyGoroutines: functions posted from many goroutines all run, on
// the loop, each goroutine's in order (the race detector checks the loop-only
// state they touch).
func TestPostManyGoroutines(t *testing.T) {
	l := startLoop(t, Options{})
	const goroutines, each = 8, 2000
	next := make([]int, goroutines) // loop-only
	var bad int                     // loop-only
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				if err := l.Post(func() {
					if next[g] != i {
						bad++
					}
					next[g] = i + 1
					if i%100 == 0 { // a post from the loop itself
						_ = l.Post(func() {})
					}
				}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	onLoop(t, l, func() {
		for g, n := range next {
			if n != each {
				t.Errorf("goroutine %d: %d of %d ran", g, n, each)
			}
		}
		if bad != 0 {
			t.Errorf("%d functions ran out of order", bad)
		}
	})
}

// chunkCounter counts Data calls and bytes (loop-only fields).
type chunkCounter struct {
	*rec
	calls, bytes int
	done         chan struct{}
	want         int
}

func (h *chunkCounter) Data(c *Conn, b []byte) {
	h.calls++
	h.bytes += len(b)
	if h.bytes == h.want {
		close(h.done)
	}
}

// TestReadFairness: a connection with much input is read a bounded number of
// times per turn; the loop serves its other work in between.
func TestReadFairness(t *testing.T) {
	l := startLoop(t, Options{ReadBuffer: 16})
	fd, peer := socketpair(t)
	const total = 64 << 10
	h := &chunkCounter{rec: newRec(), done: make(chan struct{}), want: total}
	register(t, l, fd, h)

	held, release := make(chan struct{}), make(chan struct{})
	if err := l.Post(func() { close(held); <-release }); err != nil { // hold the loop
		t.Fatal(err)
	}
	// What is posted from now on waits for the loop's next turn.
	recv(t, held, "the loop held")
	if _, err := peer.Write(make([]byte, total)); err != nil { // fits in the socket
		t.Fatal(err)
	}
	seen := make(chan int, 1)
	if err := l.Post(func() { seen <- h.calls }); err != nil {
		t.Fatal(err)
	}
	close(release)
	if n := recv(t, seen, "posted function"); n == 0 || n > maxReadsPerTurn {
		t.Fatalf("%d reads before the posted function ran, want 1 to %d", n, maxReadsPerTurn)
	}
	recv(t, h.done, "all input")
}

// TestCloseAfterFlushPaused: input left unread while paused is dropped when
// closing, so the close is an orderly one (a socket closed with unread input
// resets the connection, and the peer may lose what it was sent).
func TestCloseAfterFlushPaused(t *testing.T) {
	l := startLoop(t, Options{})
	sync := fence(t, l)
	fd, client := tcpPair(t)
	h := newRec()
	h.pauseOnOpen = true
	c := register(t, l, fd, h)
	want := bytes.Repeat([]byte("z"), 8<<20)
	onLoop(t, l, func() { // more than the sockets hold: pending output
		if err := c.Write(want); err != nil {
			t.Error(err)
		}
	})
	if _, err := client.Write([]byte("unread")); err != nil {
		t.Fatal(err)
	}
	sync()
	onLoop(t, l, func() { c.CloseAfterFlush(time.Minute) })
	client.SetReadDeadline(time.Now().Add(waitFor))
	got, err := io.ReadAll(client)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read %d of %d bytes, %v", len(got), len(want), err)
	}
	if err := recv(t, h.closed, "Closed"); err != nil {
		t.Fatalf("Closed(%v)", err)
	}
	none(t, h.data, "Data")
}

func TestAdoptDetach(t *testing.T) {
	l := startLoop(t, Options{})
	fd, peer := tcpPair(t)
	defer unix.Close(fd)
	r := newRec()
	var c Conn
	onLoop(t, l, func() {
		if err := l.Adopt(&c, fd, r); err != nil {
			t.Error(err)
		}
	})
	peer.Write([]byte("hello"))
	if got := recv(t, r.data, "data on the adopted conn"); string(got) != "hello" {
		t.Fatalf("data %q", got)
	}
	// Detached: no Closed, the descriptor stays open and usable.
	onLoop(t, l, func() { c.Detach() })
	peer.Write([]byte("more"))
	var buf [16]byte
	var n int
	eventually(t, "a read of the detached descriptor", func() bool {
		k, err := unix.Read(fd, buf[:])
		if k > 0 {
			n = k
		}
		return err == nil && k > 0
	})
	if string(buf[:n]) != "more" {
		t.Fatalf("read after Detach: %q", buf[:n])
	}
	none(t, r.data, "data after Detach")
	// Adopted again with the same struct; Close leaves the descriptor open.
	onLoop(t, l, func() {
		if err := l.Adopt(&c, fd, r); err != nil {
			t.Error(err)
		}
		c.Close()
	})
	if err := recv(t, r.closed, "Closed after Close"); err != nil {
		t.Fatalf("Closed(%v)", err)
	}
	if _, err := unix.Write(fd, []byte("x")); err != nil {
		t.Fatalf("the adopted descriptor was closed: %v", err)
	}
	none(t, r.closed, "a second Closed")
}

// TestWriteRef: a large buffer written by reference is kept, not copied
// (Buffered counts it, done runs once it is written and not before), bytes
// written after it follow it in order, and a second reference is copied. A
// connection closed with a reference pending runs its done function.
func TestWriteRef(t *testing.T) {
	l := startLoop(t, Options{})
	fd, peer := socketpair(t)
	h := newRec()
	c := register(t, l, fd, h)
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB, more than the socket takes
	var dones atomic.Int32
	onLoop(t, l, func() {
		if err := c.Write([]byte("head:")); err != nil {
			t.Error(err)
		}
		if err := c.WriteRef(big, func() { dones.Add(1) }); err != nil {
			t.Error(err)
		}
		if err := c.Write([]byte(":tail")); err != nil {
			t.Error(err)
		}
		if err := c.WriteRef([]byte(":second"), func() { dones.Add(10) }); err != nil {
			t.Error(err)
		}
		if c.Buffered() < len(big)/2 {
			t.Errorf("Buffered %d, want most of the %d bytes referenced", c.Buffered(), len(big))
		}
		if c.out == nil || &c.out.ref[len(c.out.ref)-1] != &big[len(big)-1] {
			t.Error("the pending output does not refer to the caller's buffer")
		}
	})
	if got := dones.Load(); got != 10 {
		t.Fatalf("done calls %d before the peer read, want only the copied second one (10)", got)
	}
	want := append(append(append([]byte("head:"), big...), ":tail"...), ":second"...)
	if got := readN(t, peer, len(want)); !bytes.Equal(got, want) {
		t.Fatalf("peer read %d bytes, not what was written in order", len(got))
	}
	recv(t, h.drained, "Drained")
	if got := dones.Load(); got != 11 {
		t.Fatalf("done calls %d after the peer read everything, want 11", got)
	}

	// Closed with a reference pending: done runs, once.
	dones.Store(0)
	onLoop(t, l, func() {
		if err := c.WriteRef(big, func() { dones.Add(1) }); err != nil {
			t.Error(err)
		}
		c.Close()
		if err := c.WriteRef(big, func() { dones.Add(1) }); !errors.Is(err, ErrClosed) {
			t.Errorf("WriteRef after Close: %v, want ErrClosed", err)
		}
	})
	recv(t, h.closed, "Closed")
	if got := dones.Load(); got != 2 {
		t.Fatalf("done calls %d after Close, want 2 (the pending one and the refused one)", got)
	}
}
