// Package netio owns the proxy's socket I/O below the protocol framing:
// [RawIO] reads and writes a connection with raw system calls (see its comment
// for why), [ConnIO] picks it or the connection itself, [PeekFD] looks at a
// socket without consuming; and readiness-based I/O for the event-loop driver
// (docs/design.md section 16): [Poller], an edge-triggered epoll instance with a
// wake-up descriptor that other goroutines use to hand work to the loop.
//
// It imports only the standard library and golang.org/x/sys/unix, and knows
// nothing of PostgreSQL: framing is internal/wire's, protocol decisions
// internal/engine's.
package netio
