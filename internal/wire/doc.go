// Package wire owns the PostgreSQL v3 wire protocol framing used on the proxy's hot
// path: peeking a message header, forwarding a message as raw bytes from a reused
// buffer, decoding only the few messages the proxy must understand (ReadyForQuery,
// ErrorResponse, startup, SSL, GSSENC and cancel packets) and encoding the handful
// of messages the proxy writes itself (ErrorResponse, AuthenticationOk,
// ParameterStatus, BackendKeyData, ReadyForQuery, NegotiateProtocolVersion).
// The socket I/O under that framing (RawIO, PeekFD) lives in internal/netio.
//
// The SQL statement scanner that classifies what a statement does to session
// state lives in internal/sqlscan.
//
// Nothing here allocates per forwarded message. The package must not import the
// pool, proxy, metrics or admin packages, nor Prometheus; it depends only on the
// standard library.
package wire
