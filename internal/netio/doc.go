// Package netio owns readiness-based I/O on raw descriptors, the bottom of the
// event-loop driver (docs/design.md section 16): [Poller], an edge-triggered
// epoll instance with a wake-up descriptor that other goroutines use to hand
// work to the loop.
//
// It imports only the standard library and golang.org/x/sys/unix, and knows
// nothing of PostgreSQL: framing is internal/wire's, protocol decisions
// internal/engine's.
package netio
