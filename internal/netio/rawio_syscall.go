//go:build linux && !race

package netio

import (
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sysRead is read(2) without telling the scheduler (see RawIO). p is not empty.
func sysRead(fd uintptr, p []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	return int(n), e
}

// sysWrite is write(2) without telling the scheduler (see RawIO). p is not empty.
func sysWrite(fd uintptr, p []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	return int(n), e
}

// pollNow is epoll_wait(2) with a zero timeout, without telling the scheduler:
// it never blocks, and under load it finds events, so the loop's thread keeps
// its P instead of handing it over for a wait that does not happen.
func pollNow(epfd int, events []unix.EpollEvent) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])),
		uintptr(len(events)), 0, 0, 0)
	return int(n), e
}

// pollBriefly is epoll_pwait2(2) with a timeout of d, without telling the
// scheduler (see pollNow): the loop's thread keeps its P for at most d,
// waiting for the next event of a busy loop that found none just now.
// ENOSYS on kernels before 5.11.
func pollBriefly(epfd int, events []unix.EpollEvent, d time.Duration) (int, syscall.Errno) {
	ts := unix.NsecToTimespec(int64(d))
	n, _, e := syscall.RawSyscall6(unix.SYS_EPOLL_PWAIT2, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])),
		uintptr(len(events)), uintptr(unsafe.Pointer(&ts)), 0, 0)
	return int(n), e
}

// epollCtl is epoll_ctl(2) without telling the scheduler: it never blocks.
func epollCtl(epfd, op, fd int, ev *unix.EpollEvent) syscall.Errno {
	_, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_CTL, uintptr(epfd), uintptr(op), uintptr(fd),
		uintptr(unsafe.Pointer(ev)), 0, 0)
	return e
}

// drainEventfd reads an eventfd's counter without telling the scheduler.
func drainEventfd(fd int) {
	var buf [8]byte
	_, _ = sysRead(uintptr(fd), buf[:])
}
