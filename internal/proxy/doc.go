// Package proxy owns the client side of pgsidecar: the Server (Serve, Shutdown,
// Close), the client login (startup, SSL/GSSENC refusal, protocol negotiation,
// cancel requests), and the per-client session state machine that attaches a pooled
// backend at the first message that needs one and releases it at the transaction
// boundary (transaction mode) or at disconnect (session mode), forwarding raw bytes
// in both directions. A client is served by one of two drivers (Options.Driver):
// its own goroutines (session*.go) or, on Linux in transaction mode, the event
// loop (loop*_linux.go); the protocol decisions of both are internal/engine's.
//
// It is the hot path: it may import the engine, driver, wire, netio, sqlscan and pool packages and the standard
// library; it must not import Prometheus, the metrics or admin packages (they observe
// it through the Observer interface and Stats snapshots).
package proxy
