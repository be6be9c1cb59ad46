//go:build linux && race

package netio

import "syscall"

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
