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
// event loop that waits for its readiness itself: a plain Conn becomes a
// netio.FDConn over a duplicate of its descriptor; a TLS one keeps its
// tls.Conn, whose transport switches to its memory phase over that FDConn
// (Codec is then what the loop drives it with). The original descriptor is
// closed. An event loop calls it while it holds the backend, nothing
// buffered, before it first adopts the descriptor (FD changes). It does
// nothing to a backend already taken out, and fails for one without a
// descriptor (TLS not dialed by PgconnDialer) or with bytes buffered.
func (b *Backend) Unpoll() error {
	if b.tr != nil {
		if b.tr.InMemoryPhase() {
			return nil
		}
	} else if _, ok := b.Conn.(*netio.FDConn); ok {
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
	if b.tr != nil {
		// tls.Conn stays Conn (and R's source): a goroutine holding the
		// backend later still reads and writes it, blocking, through fc.
		if err := b.tr.EnterMemoryPhase(fc); err != nil {
			_ = fc.Close()
			return fmt.Errorf("pool: unpoll: %w", err)
		}
	} else {
		_ = old.Close() // the duplicate keeps the socket open
		b.Conn = fc
		b.RW = fc
		b.R.Reset(fc)
	}
	b.raw = nil
	b.initPeek()
	b.fd = dup
	return nil
}
