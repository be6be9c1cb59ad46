//go:build unix && !linux

package netio

import (
	"net"
	"syscall"
)

// RawIO is only implemented on Linux; elsewhere NewRawIO returns nil and callers
// use the net.Conn.
type RawIO struct{}

// NewRawIO returns nil: callers use c itself.
func NewRawIO(c net.Conn) *RawIO { return nil }

// Read is never called: NewRawIO returns nil.
func (r *RawIO) Read(p []byte) (int, error) { return 0, syscall.ENOSYS }

// Write is never called: NewRawIO returns nil.
func (r *RawIO) Write(p []byte) (int, error) { return 0, syscall.ENOSYS }

// PeekFD peeks at socket fd without blocking (see the Linux version).
func PeekFD(fd uintptr, b []byte) (int, syscall.Errno) {
	n, _, err := syscall.Recvfrom(int(fd), b, syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	if err != nil {
		if e, ok := err.(syscall.Errno); ok {
			return n, e
		}
		return n, syscall.EIO
	}
	return n, 0
}
