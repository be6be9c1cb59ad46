//go:build linux && !race

package driver

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The loop's reads and writes are raw system calls: they never block (the
// descriptors are non-blocking), so telling the scheduler about them would only
// let it hand the loop's P to another thread (see netio.RawIO). Under the race
// detector they go through the syscall package instead (sys_race_linux.go).

// The loop's descriptors are sockets: recvfrom(2) and sendto(2) skip the
// file layer that read(2) and write(2) go through (the file position lock,
// the iov_iter setup of vfs_read and vfs_write), about 1 µs of kernel time
// per transaction at 8 clients; PgBouncer uses recv and send for the same
// reason. MSG_NOSIGNAL: a peer that has gone gets EPIPE, never SIGPIPE.

// sysRead is recv(2); p is not empty.
func sysRead(fd int32, p []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), 0, 0, 0)
	return int(n), e
}

// sysWrite is send(2); p is not empty.
func sysWrite(fd int32, p []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), unix.MSG_NOSIGNAL, 0, 0)
	return int(n), e
}

// sysWritev is writev(2) of bufs, using iov (len(bufs) <= cap(iov)) for the
// vector; it returns iov emptied of pointers.
func sysWritev(fd int32, bufs [][]byte, iov []unix.Iovec) (int, syscall.Errno) {
	iov = iov[:0]
	for _, b := range bufs {
		if len(b) == 0 {
			continue
		}
		v := unix.Iovec{Base: &b[0]}
		v.SetLen(len(b))
		iov = append(iov, v)
	}
	if len(iov) == 0 {
		return 0, 0
	}
	n, _, e := syscall.RawSyscall(syscall.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
	clear(iov)
	return int(n), e
}
