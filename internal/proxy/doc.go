// Package proxy owns the client side of pgsidecar: the Server (Serve, Shutdown,
// Close), the client login (startup, SSL/GSSENC refusal, protocol negotiation,
// cancel requests), and the per-client session state machine that attaches a pooled
// backend at the first message that needs one and releases it at the transaction
// boundary (transaction mode) or at disconnect (session mode), forwarding raw bytes
// in both directions. A client logs in on a goroutine (session.go), proving its
// password first (auth.go, internal/auth); after that
// one epoll event loop serves it (loop*_linux.go, Linux only), the admin console
// excepted (console.go). The protocol decisions are internal/engine's.
//
// It is the hot path: it may import the engine, driver, wire, netio, sqlscan, auth and pool packages and the standard
// library; it must not import Prometheus, the metrics or admin packages (they observe
// it through the Observer interface and Stats snapshots).
package proxy
