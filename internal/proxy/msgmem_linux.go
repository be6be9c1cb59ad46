//go:build linux

package proxy

import "syscall"

// mapMessage returns n bytes of anonymous mapped memory: no page is resident
// until written, so a message's memory grows only as its bytes arrive, and
// unmapMessage gives it back to the system at once. ok is false when the
// mapping failed (the caller then uses the heap).
func mapMessage(n int) (b []byte, ok bool) {
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE,
		syscall.MAP_ANON|syscall.MAP_PRIVATE|syscall.MAP_NORESERVE)
	if err != nil {
		return nil, false
	}
	return b, true
}

// unmapMessage releases a buffer of mapMessage. Nothing may refer to it after.
func unmapMessage(b []byte) { _ = syscall.Munmap(b) }
