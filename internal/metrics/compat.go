package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/internal/pool"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
)

// PgBouncerCompat exports, next to pgsidecar's own metrics, the names that
// prometheus-community's pgbouncer_exporter publishes for pools and stats, with
// the same meanings, so that existing PgBouncer dashboards and alerts work
// unchanged (--metrics-compat pgbouncer). Figures PgBouncer has and pgsidecar
// does not measure (bytes sent and received, time spent in queries) are not
// exported rather than faked.
//
// Pools (labels database, user): pgbouncer_pools_client_active_connections,
// _client_waiting_connections, _server_active_connections,
// _server_idle_connections, _server_used_connections (always 0),
// _server_testing_connections (always 0), _server_login_connections,
// _client_maxwait_seconds. Stats (label database):
// pgbouncer_stats_sql_transactions_pooled_total, _queries_pooled_total,
// _client_wait_seconds_total, _server_in_transaction_seconds_total. And
// pgbouncer_up.
type PgBouncerCompat struct {
	pools  *pool.Registry
	server *proxy.Server
	obs    *Observer

	up, clActive, clWaiting, svActive, svIdle, svUsed, svTested, svLogin, maxwait *prometheus.Desc
}

// NewPgBouncerCompat returns the compatibility collector. obs must have been
// made with compatibility counters (NewObserver's compat argument).
func NewPgBouncerCompat(pools *pool.Registry, server *proxy.Server, obs *Observer) *PgBouncerCompat {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("pgbouncer_"+name, help, labels, nil)
	}
	return &PgBouncerCompat{
		pools: pools, server: server, obs: obs,
		up:        d("up", "The pooler is up (pgsidecar, PgBouncer-compatible name)."),
		clActive:  d("pools_client_active_connections", "Client connections not waiting for a server connection.", poolLabels...),
		clWaiting: d("pools_client_waiting_connections", "Client connections waiting for a server connection.", poolLabels...),
		svActive:  d("pools_server_active_connections", "Server connections linked to a client.", poolLabels...),
		svIdle:    d("pools_server_idle_connections", "Server connections idle and ready for a client.", poolLabels...),
		svUsed:    d("pools_server_used_connections", "Always 0: pgsidecar checks idle connections without a check query.", poolLabels...),
		svTested:  d("pools_server_testing_connections", "Always 0: pgsidecar runs no server_reset_query or server_check_query state.", poolLabels...),
		svLogin:   d("pools_server_login_connections", "Server connections logging in.", poolLabels...),
		maxwait:   d("pools_client_maxwait_seconds", "Age of the oldest waiting client.", poolLabels...),
	}
}

// Describe implements prometheus.Collector.
func (c *PgBouncerCompat) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.clActive, c.clWaiting, c.svActive, c.svIdle, c.svUsed, c.svTested, c.svLogin, c.maxwait} {
		ch <- d
	}
	if c.obs != nil && c.obs.pgbXacts != nil {
		c.obs.pgbXacts.Describe(ch)
		c.obs.pgbQueries.Describe(ch)
		c.obs.pgbWait.Describe(ch)
		c.obs.pgbXactTime.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (c *PgBouncerCompat) Collect(ch chan<- prometheus.Metric) {
	gauge := prometheus.GaugeValue
	ch <- prometheus.MustNewConstMetric(c.up, gauge, 1)
	waiting := map[[2]string]int{}
	active := map[[2]string]int{}
	for _, cc := range c.server.Clients() {
		k := [2]string{cc.Database, cc.User}
		if cc.State == proxy.StateWaiting {
			waiting[k] += cc.N
		} else {
			active[k] += cc.N // PgBouncer's cl_active: logged in and not waiting
		}
	}
	for _, r := range c.pools.Pools() {
		s := r.Pool.Stats()
		k := [2]string{r.Key.Database, r.Key.User}
		l := []string{r.Key.Database, r.Key.User}
		ch <- prometheus.MustNewConstMetric(c.clActive, gauge, float64(active[k]), l...)
		ch <- prometheus.MustNewConstMetric(c.clWaiting, gauge, float64(waiting[k]), l...)
		ch <- prometheus.MustNewConstMetric(c.svActive, gauge, float64(s.InUse), l...)
		ch <- prometheus.MustNewConstMetric(c.svIdle, gauge, float64(s.Idle), l...)
		ch <- prometheus.MustNewConstMetric(c.svUsed, gauge, 0, l...)
		ch <- prometheus.MustNewConstMetric(c.svTested, gauge, 0, l...)
		ch <- prometheus.MustNewConstMetric(c.svLogin, gauge, float64(s.Dialing), l...)
		ch <- prometheus.MustNewConstMetric(c.maxwait, gauge, s.MaxWait.Seconds(), l...)
	}
	if c.obs != nil && c.obs.pgbXacts != nil {
		c.obs.pgbXacts.Collect(ch)
		c.obs.pgbQueries.Collect(ch)
		c.obs.pgbWait.Collect(ch)
		c.obs.pgbXactTime.Collect(ch)
	}
}
