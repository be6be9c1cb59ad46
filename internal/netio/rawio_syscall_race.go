//go:build linux && race

package netio

import (
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// sysRead is syscall.Read under the race detector: unlike a raw call it tells
// the detector that the kernel wrote p, so races on read buffers are reported.
func sysRead(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Read(int(fd), p)
	return max(n, 0), errno(err)
}

// sysWrite is syscall.Write under the race detector (see sysRead).
func sysWrite(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Write(int(fd), p)
	return max(n, 0), errno(err)
}

func errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	if e, ok := err.(syscall.Errno); ok {
		return e
	}
	return syscall.EIO
}

// pollNow is a zero-timeout unix.EpollWait under the race detector (see
// sysRead).
func pollNow(epfd int, events []unix.EpollEvent) (int, syscall.Errno) {
	n, err := unix.EpollWait(epfd, events, 0)
	return max(n, 0), errno(err)
}

// pollBriefly is pollNow under the race detector: the race detector's
// builds do not hold the P in a raw system call.
func pollBriefly(epfd int, events []unix.EpollEvent, _ time.Duration) (int, syscall.Errno) {
	return pollNow(epfd, events)
}

// epollCtl is unix.EpollCtl under the race detector (see sysRead).
func epollCtl(epfd, op, fd int, ev *unix.EpollEvent) syscall.Errno {
	return errno(unix.EpollCtl(epfd, op, fd, ev))
}

// drainEventfd reads an eventfd's counter.
func drainEventfd(fd int) {
	var buf [8]byte
	_, _ = unix.Read(fd, buf[:])
}
