//go:build linux

package netio

import (
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func socketpair(t *testing.T) (a, b int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	return fds[0], fds[1]
}

func newPoller(t *testing.T) *Poller {
	t.Helper()
	p, err := NewPoller(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	})
	return p
}

// collect waits once and returns the events by descriptor.
func collect(t *testing.T, p *Poller, timeout time.Duration) (map[int]Event, bool) {
	t.Helper()
	got := map[int]Event{}
	woken, err := p.Wait(timeout, func(fd int, ev Event) { got[fd] |= ev })
	if err != nil {
		t.Fatal(err)
	}
	return got, woken
}

func TestPollerReadableEdge(t *testing.T) {
	p := newPoller(t)
	a, b := socketpair(t)
	if err := p.Add(a, Readable); err != nil {
		t.Fatal(err)
	}
	if got, _ := collect(t, p, 0); len(got) != 0 {
		t.Fatalf("events before any data: %v", got)
	}
	if _, err := unix.Write(b, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	got, woken := collect(t, p, time.Second)
	if got[a] != Readable || woken {
		t.Fatalf("got %v woken %v, want a Readable", got, woken)
	}
	// Edge-triggered: not reported again until new data arrives, even unread.
	if got, _ := collect(t, p, 0); len(got) != 0 {
		t.Fatalf("reported twice: %v", got)
	}
	buf := make([]byte, 16)
	if n, err := unix.Read(a, buf); n != 5 || err != nil {
		t.Fatalf("read %d %v", n, err)
	}
	if _, err := unix.Read(a, buf); !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("second read: %v, want EAGAIN", err)
	}
	// Modify re-arms: asking again for what holds (writable) reports it.
	if err := p.Modify(a, Readable|Writable); err != nil {
		t.Fatal(err)
	}
	if got, _ := collect(t, p, time.Second); got[a]&Writable == 0 {
		t.Fatalf("writable not reported after Modify: %v", got)
	}
	// Hang-up is reported as Closed|Readable.
	unix.Close(b)
	if got, _ := collect(t, p, time.Second); got[a]&(Closed|Readable) != Closed|Readable {
		t.Fatalf("hang-up: %v", got)
	}
	if err := p.Remove(a); err != nil {
		t.Fatal(err)
	}
	if got, _ := collect(t, p, 0); len(got) != 0 {
		t.Fatalf("events after Remove: %v", got)
	}
}

func TestPollerWake(t *testing.T) {
	p := newPoller(t)
	done := make(chan bool)
	go func() {
		_, woken := collect(t, p, -1)
		done <- woken
	}()
	// Wake from another goroutine ends a Wait that has no deadline.
	for range 3 {
		if err := p.Wake(); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case woken := <-done:
		if !woken {
			t.Fatal("Wait returned without woken")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Wake did not end Wait")
	}
	// Several wakes before the drain count as one.
	if _, woken := collect(t, p, 0); woken {
		t.Fatal("a drained wake reported again")
	}
}

func TestPollerTimeout(t *testing.T) {
	p := newPoller(t)
	start := time.Now()
	got, woken := collect(t, p, 30*time.Millisecond)
	if len(got) != 0 || woken {
		t.Fatalf("got %v woken %v", got, woken)
	}
	if d := time.Since(start); d < 25*time.Millisecond {
		t.Fatalf("returned after %s, want about 30ms", d)
	}
}

// Steady state: one readiness event costs no allocation.
func TestPollerWaitAllocs(t *testing.T) {
	p := newPoller(t)
	a, b := socketpair(t)
	if err := p.Add(a, Readable); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	var seen int
	fn := func(fd int, ev Event) { seen++ }
	allocs := testing.AllocsPerRun(100, func() {
		unix.Write(b, buf[:1])
		p.Wait(time.Second, fn)
		unix.Read(a, buf)
	})
	if allocs != 0 || seen < 100 {
		t.Fatalf("%v allocations per event, %d events", allocs, seen)
	}
}
