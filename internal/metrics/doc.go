// Package metrics owns pgsidecar's Prometheus metrics: collectors that read pool
// and server figures at scrape time, registered on a registry of our own.
//
// It may import the pool, proxy, reload and fleet packages (for their Stats
// snapshots) and client_golang; nothing on the hot path (wire, pool, proxy) may import it.
package metrics
