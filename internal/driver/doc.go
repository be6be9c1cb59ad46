// Package driver owns the event loop of the proxy's epoll driver (docs/design.md
// section 16): readiness, buffers, timers and the hand-off of work from other
// goroutines. It is the generic core: it moves bytes between sockets and
// handlers and knows nothing of PostgreSQL; a later step plugs the protocol
// engine into it as a [Handler].
//
// A [Loop] is one epoll instance ([netio.Poller]) run by [Loop.Run] on a
// goroutine locked to its OS thread. Sockets are registered with
// [Loop.Register] from any goroutine (take the descriptor of a net.Conn with
// [FD]); each becomes a [Conn] whose [Handler] is told, on the loop, when it is
// open, what it read and when it closed. Reads go into one buffer the loop owns
// and lends to [Handler.Data] for the duration of the call; writes that do not
// fit in the socket are kept per connection until the socket takes them, in a
// buffer borrowed from the loop and given back when drained. An idle
// connection is a descriptor and a small struct: no goroutine, no buffer.
//
// [Timer]s run on the loop, keyed by deadline in a min-heap whose earliest
// deadline bounds the loop's wait; arming one allocates nothing. [Loop.Post]
// hands a function to the loop from any goroutine: this is how work that
// blocks (server login, DNS, the console) runs elsewhere and gives its result
// back.
//
// Everything about a Conn, a Timer or the handlers runs on the loop's
// goroutine; only [Loop.Register], [Loop.Post], [Loop.Run] and [Loop.Close]
// may be called from others. Handlers and posted functions must not block:
// while one runs, no other connection of the loop is served.
//
// Errors are wrapped with %w; callers branch with errors.Is on the sentinels
// [ErrLoopClosed], [ErrClosed], [ErrFlushTimeout] and [ErrNoFD], on io.EOF
// (the peer closed) and on the errno of a failed read or write (for example
// syscall.ECONNRESET).
//
// A connection may have a [Codec] ([Conn.SetCodec]): TLS, whose handshake
// is done elsewhere (netio.TLSCodec). Its socket's bytes are then decoded
// into a second loop-owned buffer before Handler.Data, and what is written
// is encoded before the socket; a handler that pauses in the middle of a
// delivery leaves the rest in the codec until ResumeRead. The driver knows
// only the interface.
//
// The loop is Linux-only (pgsidecar serves clients only on it). This
// package imports the standard library,
// golang.org/x/sys/unix and internal/netio only: never internal/proxy,
// internal/pool, internal/engine or internal/wire (it knows nothing of
// PostgreSQL), nor Prometheus.
package driver
