//go:build linux

package pool

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/pgsidecar/pgsidecar/internal/netio"
)

// Unpoll takes the connection out of the runtime's network poller, for an
// event loop that waits for its readiness itself: Conn becomes a
// netio.FDConn over a duplicate of its descriptor, and the original is
// closed. An event loop calls it while it holds the backend, nothing
// buffered, before it first adopts the descriptor (FD changes). It does
// nothing to a backend already taken out, and fails for one without a
// descriptor (TLS) or with bytes buffered.
func (b *Backend) Unpoll() error {
	if _, ok := b.Conn.(*netio.FDConn); ok {
		return nil
	}
	if b.fd < 0 {
		return errors.New("pool: unpoll: the connection has no descriptor")
	}
	if b.R.Buffered() > 0 {
		return errors.New("pool: unpoll: bytes are buffered")
	}
	dup, err := unix.FcntlInt(uintptr(b.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("pool: unpoll: %w", os.NewSyscallError("fcntl", err))
	}
	if err := unix.SetNonblock(dup, true); err != nil {
		_ = unix.Close(dup)
		return fmt.Errorf("pool: unpoll: %w", os.NewSyscallError("fcntl", err))
	}
	old := b.Conn
	fc := netio.NewFDConn(dup, old.LocalAddr(), old.RemoteAddr())
	_ = old.Close() // the duplicate keeps the socket open
	b.Conn = fc
	b.RW = fc
	b.R.Reset(fc)
	b.raw = nil
	b.initPeek()
	b.fd = dup
	return nil
}
