package proxy

import "github.com/pgsidecar/pgsidecar/internal/wire"

// ConsoleDatabase is the virtual database of the admin console.
const ConsoleDatabase = "pgsidecar"

// serveConsole serves an admin console client after its startup packet.
func (ss *session) serveConsole(st *wire.Startup, unsupported []string) {
	refuse(ss.conn, wire.CodeFeatureNotSupported, "pgsidecar: the admin console is not available yet")
}
