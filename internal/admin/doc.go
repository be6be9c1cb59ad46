// Package admin owns the proxy's HTTP surface: /livez, /readyz and /startupz for
// Kubernetes probes and /metrics for Prometheus (the handler is passed in, so this
// package does not depend on how metrics are collected). The SQL admin console will
// live here too.
//
// It must not be imported by the hot path (wire, pool, proxy).
package admin
