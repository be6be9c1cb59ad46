//go:build linux && race

package driver

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// Under the race detector the loop's reads and writes go through the syscall
// package, which tells the detector what the kernel read and wrote, so races on
// the buffers are reported (see sys_linux.go).

func sysRead(fd int32, p []byte) (int, syscall.Errno) {
	n, err := syscall.Read(int(fd), p)
	return max(n, 0), errno(err)
}

func sysWrite(fd int32, p []byte) (int, syscall.Errno) {
	n, err := syscall.Write(int(fd), p)
	return max(n, 0), errno(err)
}

func sysWritev(fd int32, bufs [][]byte, _ []unix.Iovec) (int, syscall.Errno) {
	n, err := unix.Writev(int(fd), bufs)
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
