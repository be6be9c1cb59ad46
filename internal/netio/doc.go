// Package netio owns the proxy's socket I/O below the protocol framing:
// [RawIO] reads and writes a connection with raw system calls (see its comment
// for why), [ConnIO] picks it or the connection itself, [PeekFD] looks at a
// socket without consuming; and readiness-based I/O for the event-loop driver
// (docs/design.md section 16): [Poller], an edge-triggered epoll instance with a
// wake-up descriptor that other goroutines use to hand work to the loop;
// [FDConn], a socket outside the runtime's network poller; and TLS on the
// loop: [TLSTransport], the net.Conn a crypto/tls connection runs over
// (handshake through the dialed socket, then in-memory), and [TLSCodec],
// which decodes the ciphertext the loop reads and encodes what it writes.
//
// It imports only the standard library and golang.org/x/sys/unix (never
// internal/pool or internal/driver, which import it), and knows
// nothing of PostgreSQL: framing is internal/wire's, protocol decisions
// internal/engine's.
package netio
