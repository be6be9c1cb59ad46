//go:build linux

package driver

import (
	"io"
	"runtime"
	"sync/atomic"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// counter is a Handler shared by many connections: it counts them.
type counter struct{ opened, closed atomic.Int64 }

func (h *counter) Opened(*Conn)        { h.opened.Add(1) }
func (h *counter) Data(*Conn, []byte)  {}
func (h *counter) Closed(*Conn, error) { h.closed.Add(1) }

// TestIdleConnMemory: a registered idle connection costs its Conn and a slot
// of the descriptor table, no buffer.
func TestIdleConnMemory(t *testing.T) {
	const n = 5000
	l := startLoop(t, Options{})
	fds := make([]int, 0, n)
	peers := make([]int, 0, n)
	t.Cleanup(func() {
		for _, fd := range peers {
			unix.Close(fd)
		}
	})
	for range n {
		p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatalf("socketpair: %v (descriptor limit?)", err)
		}
		fds, peers = append(fds, p[0]), append(peers, p[1])
	}
	h := new(counter)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for _, fd := range fds {
		if err := l.Register(fd, h); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "all Opened", func() bool { return h.opened.Load() == n })
	onLoop(t, l, func() {}) // the registration queue is emptied
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / n
	t.Logf("heap per idle registered conn: %.0f bytes (unsafe.Sizeof(Conn) = %d, %d conns)",
		per, unsafe.Sizeof(Conn{}), n)
	if per >= 1024 {
		t.Fatalf("%.0f bytes per idle conn, want < 1024", per)
	}
	runtime.KeepAlive(fds)
	onLoop(t, l, func() {
		if l.Len() != n {
			t.Errorf("Len %d, want %d", l.Len(), n)
		}
	})
}

// TestEchoAllocs: a message read by the loop and echoed allocates nothing.
func TestEchoAllocs(t *testing.T) {
	l := startLoop(t, Options{})
	fd, client := tcpPair(t)
	h := newRec()
	h.echo = true
	register(t, l, fd, h)
	msg := make([]byte, 64)
	buf := make([]byte, 64)
	roundTrip := func() {
		if _, err := client.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(client, buf); err != nil {
			t.Fatal(err)
		}
	}
	for range 100 { // warm up
		roundTrip()
	}
	if a := testing.AllocsPerRun(2000, roundTrip); a != 0 {
		t.Fatalf("%v allocations per echoed message, want 0", a)
	}
}
