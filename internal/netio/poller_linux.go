//go:build linux

package netio

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Event is what a descriptor is ready for, as Poller.Wait reports it.
type Event uint32

// Readiness bits of an Event.
const (
	// Readable: data, or the end of the stream, can be read without blocking.
	Readable Event = 1 << iota
	// Writable: some bytes can be written without blocking.
	Writable
	// Closed: the peer hung up or the descriptor is in error; a read reports which.
	Closed
)

// Poller is an edge-triggered epoll instance. Add, Modify, Remove and Wake are
// safe from any goroutine; Wait is called by one goroutine at a time, the loop.
//
// Edge-triggered means an event is reported once per change of readiness: after
// a Readable event the loop reads until the call would block (EAGAIN), after a
// Writable one it writes until then, or it sees no further event for that
// descriptor.
type Poller struct {
	epfd   int
	wakefd int // eventfd: Wake writes it, Wait drains it
	events []unix.EpollEvent
	brief  time.Duration // see SetBriefWait
}

// NewPoller returns a Poller that reports up to batch events per Wait
// (at least 1; 128 when batch is 0).
func NewPoller(batch int) (*Poller, error) {
	if batch <= 0 {
		batch = 128
	}
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("eventfd", err)
	}
	p := &Poller{epfd: epfd, wakefd: wakefd, events: make([]unix.EpollEvent, batch)}
	if err := p.ctl(unix.EPOLL_CTL_ADD, wakefd, unix.EPOLLIN|unix.EPOLLET); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

func (p *Poller) ctl(op, fd int, events uint32) error {
	ev := unix.EpollEvent{Events: events, Fd: int32(fd)}
	if e := epollCtl(p.epfd, op, fd, &ev); e != 0 {
		return os.NewSyscallError("epoll_ctl", e)
	}
	return nil
}

// interest is the epoll event set for what: always edge-triggered, always
// hang-up and error.
func interest(what Event) uint32 {
	ev := uint32(unix.EPOLLET | unix.EPOLLRDHUP)
	if what&Readable != 0 {
		ev |= unix.EPOLLIN
	}
	if what&Writable != 0 {
		ev |= unix.EPOLLOUT
	}
	return ev
}

// Add registers fd for the readiness in what (Readable, Writable or both).
// fd must be non-blocking.
func (p *Poller) Add(fd int, what Event) error { return p.ctl(unix.EPOLL_CTL_ADD, fd, interest(what)) }

// Modify changes what fd is registered for. With edge triggering, asking again
// for a readiness that holds now reports it once more.
func (p *Poller) Modify(fd int, what Event) error {
	return p.ctl(unix.EPOLL_CTL_MOD, fd, interest(what))
}

// Remove unregisters fd; closing fd also does, once no other descriptor
// refers to its file.
func (p *Poller) Remove(fd int) error {
	return p.ctl(unix.EPOLL_CTL_DEL, fd, 0)
}

// Wake makes the current or next Wait return with woken true. Wakes that
// arrive before Wait drains them count as one.
func (p *Poller) Wake() error {
	var one = [8]byte{1}
	for {
		_, err := unix.Write(p.wakefd, one[:])
		switch {
		case err == nil, errors.Is(err, unix.EAGAIN): // EAGAIN: the counter is full, a wake is pending anyway
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		default:
			return os.NewSyscallError("write eventfd", err)
		}
	}
}

// Wait waits up to timeout (negative: forever; 0: does not block) for
// readiness, calls fn for each ready descriptor, and reports whether Wake was
// called. fn runs on the calling goroutine and may call Add, Modify and Remove.
func (p *Poller) Wait(timeout time.Duration, fn func(fd int, ev Event)) (woken bool, err error) {
	ms := -1
	if timeout >= 0 {
		ms = int((timeout + time.Millisecond - 1) / time.Millisecond)
	}
	// First without blocking and without telling the scheduler (pollNow):
	// a busy loop finds events there. Only an idle one waits, as a system
	// call the scheduler knows about.
	n, e := pollNow(p.epfd, p.events)
	if n <= 0 && ms != 0 && p.brief > 0 && e != unix.ENOSYS {
		var e2 syscall.Errno
		if n, e2 = pollBriefly(p.epfd, p.events, min(p.brief, timeoutOr(timeout, p.brief))); e2 == unix.ENOSYS {
			p.brief = 0 // an old kernel
		} else {
			e = e2
		}
	}
	if e != 0 && e != unix.EINTR && e != unix.ENOSYS {
		return false, os.NewSyscallError("epoll_wait", e)
	}
	for n <= 0 && ms != 0 {
		n, err = unix.EpollWait(p.epfd, p.events, ms)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		return false, os.NewSyscallError("epoll_wait", err)
	}
	n = max(n, 0)
	for i := range n {
		e := p.events[i]
		fd := int(e.Fd)
		if fd == p.wakefd {
			drainEventfd(p.wakefd)
			woken = true
			continue
		}
		var ev Event
		if e.Events&(unix.EPOLLIN|unix.EPOLLPRI) != 0 {
			ev |= Readable
		}
		if e.Events&unix.EPOLLOUT != 0 {
			ev |= Writable
		}
		if e.Events&(unix.EPOLLHUP|unix.EPOLLRDHUP|unix.EPOLLERR) != 0 {
			ev |= Closed | Readable // the read says what happened
		}
		fn(fd, ev)
	}
	return woken, nil
}

// timeoutOr is t, or d when t waits forever.
func timeoutOr(t, d time.Duration) time.Duration {
	if t < 0 {
		return d
	}
	return t
}

// SetBriefWait makes Wait, when it finds no event at once, wait up to d
// holding its thread's P before it waits as a system call the scheduler knows
// about (0: never). A busy loop then rarely hands its P over and back, at the
// cost of that P for at most d while idle. It is not safe to call while Wait
// runs.
func (p *Poller) SetBriefWait(d time.Duration) { p.brief = d }

// Close releases the epoll instance and the wake-up descriptor.
func (p *Poller) Close() error {
	err1 := unix.Close(p.wakefd)
	err2 := unix.Close(p.epfd)
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("netio: close poller: %w", err)
	}
	return nil
}
