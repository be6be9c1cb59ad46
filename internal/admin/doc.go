// Package admin owns the proxy's HTTP surface: /livez, /readyz and /startupz for
// Kubernetes probes, /metrics for Prometheus (the handler is passed in, so this
// package does not depend on how metrics are collected) and the status page (/ and
// /status.json). The SQL admin console (SHOW ..., database "pgsidecar") is not
// here: it speaks the wire protocol on the proxy's own listener, so it lives in
// internal/proxy (console.go).
//
// It must not be imported by the hot path (wire, pool, proxy).
package admin
