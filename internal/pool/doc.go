// Package pool owns the server side of pgsidecar: bounded pools of authenticated
// PostgreSQL backend connections, one pool per route (database, user), with FIFO
// waiters, most-recently-released-first reuse, lifetime with jitter, idle timeout,
// liveness checks of idle backends, and dialing through pgconn followed by Hijack so
// that the proxy can speak the raw protocol on the connection afterwards.
//
// Failed dials make a route back off (50ms doubling to 5s, with jitter, one attempt
// at a time, ended by a success): meanwhile acquisitions with nothing open to serve
// them fail at once with ErrBackoff. The Registry keeps a route's back-off state
// and dial failures when DropUnproven removes its pool (bounded: the default route
// keeps its own labels, every other route counts under UnknownRoute), and answers
// readiness probes for the upstream (UpstreamReady).
//
// Pool.Reconfigure and Registry.Reconfigure apply a new configuration to running
// pools (live reload): a new size takes effect without closing a backend a client
// holds, and retire closes every backend of the old upstream or credentials as
// soon as no client holds it, so that none is handed out again.
//
// PgconnDialer dials through a netio.TLSTransport, so that an event loop can
// drive a TLS server connection too: Backend.Unpoll switches its transport to
// the loop and Backend.Codec is what the loop decodes and encodes it with.
//
// Config.Budget, when set, gates every dial on a slot of a budget shared
// beyond the pool (the fleet-wide connection budget, internal/fleet, which
// implements it; the pool never imports it): Take before a dial, Give at every
// close, and released or idle backends closed while Over is positive.
//
// LoginWith is a pgconn AfterNetConnect hook that logs in as a role whose
// password the proxy does not know, with what its client proved (an
// auth.ServerLogin): SCRAM-SHA-256 from the client's ClientKey, or MD5 from
// the role's hash.
//
// The pool never holds its mutex across network I/O. It may import the wire, netio and
// auth packages and pgconn; it must not import the proxy, metrics or admin packages, nor
// Prometheus (metrics read Stats at scrape time).
package pool
