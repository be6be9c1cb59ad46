//go:build linux

package netio

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t testing.TB) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- nil
			return
		}
		ch <- c
	}()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b = <-ch
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func TestRawIO(t *testing.T) {
	a, b := tcpPair(t)
	ra, rb := NewRawIO(a), NewRawIO(b)
	if ra == nil || rb == nil {
		t.Fatal("NewRawIO returned nil for a TCP connection")
	}

	// A write bigger than the socket buffers waits for the reader (EAGAIN, then the
	// poller), while the other goroutine reads it all.
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<19) // 8 MiB
	done := make(chan error, 1)
	go func() {
		n, err := ra.Write(big)
		if err == nil && n != len(big) {
			err = io.ErrShortWrite
		}
		done <- err
	}()
	got := make([]byte, 0, len(big))
	buf := make([]byte, 64<<10)
	for len(got) < len(big) {
		n, err := rb.Read(buf)
		if err != nil {
			t.Fatalf("read after %d bytes: %v", len(got), err)
		}
		got = append(got, buf[:n]...)
	}
	if err := <-done; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, big) {
		t.Fatal("bytes read differ from bytes written")
	}

	// Deadlines of the net.Conn apply to a wait.
	_ = b.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := rb.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	var ne net.Error
	_ = b.SetReadDeadline(time.Now().Add(time.Millisecond))
	if _, err := rb.Read(buf); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("timeout is not a net.Error with Timeout(): %v", err)
	}
	_ = b.SetReadDeadline(time.Time{})

	// The peer's close is io.EOF once its data is read; PeekFD sees both.
	if _, err := a.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	a.Close()
	if n, err := rb.Read(buf); err != nil || string(buf[:n]) != "bye" {
		t.Fatalf("read = %q, %v", buf[:n], err)
	}
	if _, err := rb.Read(buf); err != io.EOF {
		t.Fatalf("read after the peer closed: %v, want io.EOF", err)
	}

	// Our own close is net.ErrClosed, as with net.Conn.
	b.Close()
	if _, err := rb.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read on a closed conn: %v, want net.ErrClosed", err)
	}
	if _, err := rb.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write on a closed conn: %v, want net.ErrClosed", err)
	}
}

func TestRawIOPeerReset(t *testing.T) {
	a, b := tcpPair(t)
	rb := NewRawIO(b)
	// Linger 0: the close sends RST, and a write then fails with a system call error.
	_ = a.(*net.TCPConn).SetLinger(0)
	a.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := rb.Write([]byte("x"))
		if err != nil {
			var se *os.SyscallError
			if !errors.As(err, &se) {
				t.Fatalf("write to a reset peer: %T %v, want *os.SyscallError", err, err)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("writes to a reset peer kept succeeding")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestPeekFD(t *testing.T) {
	a, b := tcpPair(t)
	raw, err := b.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	peek := func() (n int, e syscall.Errno) {
		var buf [4]byte
		_ = raw.Control(func(fd uintptr) { n, e = PeekFD(fd, buf[:]) })
		return n, e
	}
	if _, e := peek(); e != syscall.EAGAIN {
		t.Fatalf("peek with nothing sent: errno %v, want EAGAIN", e)
	}
	if _, err := a.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, e := peek()
		if e == 0 && n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("peek after a write: %d, errno %v", n, e)
		}
		time.Sleep(time.Millisecond)
	}
	// Peeking consumed nothing.
	buf := make([]byte, 8)
	if n, err := NewRawIO(b).Read(buf); err != nil || string(buf[:n]) != "hi" {
		t.Fatalf("read after peek = %q, %v", buf[:n], err)
	}
	a.Close()
	for {
		n, e := peek()
		if e == 0 && n == 0 {
			break // the peer's close
		}
		if time.Now().After(deadline) {
			t.Fatalf("peek after the peer closed: %d, errno %v", n, e)
		}
		time.Sleep(time.Millisecond)
	}
}

// BenchmarkRawIO is one small write and its read over loopback, through RawIO and
// through net.Conn for comparison.
func BenchmarkRawIO(b *testing.B) {
	for _, mode := range []string{"raw", "net"} {
		b.Run(mode, func(b *testing.B) {
			c1, c2 := tcpPair(b)
			var w io.Writer = c1
			var r io.Reader = c2
			if mode == "raw" {
				w, r = NewRawIO(c1), NewRawIO(c2)
			}
			msg := []byte("Q\x00\x00\x00\x0dSELECT 1\x00") // a Query message
			buf := make([]byte, 256)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := w.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(r, buf[:len(msg)]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// ConnIO gives a TCP connection a RawIO and hands back a connection without a
// descriptor (net.Pipe, like TLS) as it is.
func TestConnIO(t *testing.T) {
	a, _ := tcpPair(t)
	if _, ok := ConnIO(a).(*RawIO); !ok {
		t.Fatalf("ConnIO(TCP) = %T, want *RawIO", ConnIO(a))
	}
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	if got := ConnIO(p1); got != io.ReadWriter(p1) {
		t.Fatalf("ConnIO(net.Pipe) = %T, want the conn itself", got)
	}
}
