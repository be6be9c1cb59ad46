package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/internal/reload"
)

// ReloadCollector exports the figures of configuration reloads, read at
// scrape time from stats (reload.Reloader.Stats).
type ReloadCollector struct {
	stats                  func() reload.Stats
	total, lastOK, lastSec *prometheus.Desc
}

// NewReloadCollector returns a collector of stats' figures.
func NewReloadCollector(stats func() reload.Stats) *ReloadCollector {
	return &ReloadCollector{
		stats: stats,
		total: prometheus.NewDesc("pgsidecar_config_reloads_total",
			"Configuration reloads (SIGHUP, the console's RELOAD, a changed file) by result: success (applied) or error (rejected as a whole, the previous configuration stays in force).",
			[]string{"result"}, nil),
		lastOK: prometheus.NewDesc("pgsidecar_config_last_reload_successful",
			"1 if the last configuration reload was applied (or none happened yet), 0 if it was rejected.", nil, nil),
		lastSec: prometheus.NewDesc("pgsidecar_config_last_reload_success_timestamp_seconds",
			"Unix time of the last applied configuration reload, or of the start.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *ReloadCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.total
	ch <- c.lastOK
	ch <- c.lastSec
}

// Collect implements prometheus.Collector.
func (c *ReloadCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.stats()
	ch <- prometheus.MustNewConstMetric(c.total, prometheus.CounterValue, float64(st.Successes), "success")
	ch <- prometheus.MustNewConstMetric(c.total, prometheus.CounterValue, float64(st.Failures), "error")
	ok := 0.0
	if st.LastOK {
		ok = 1
	}
	ch <- prometheus.MustNewConstMetric(c.lastOK, prometheus.GaugeValue, ok)
	ch <- prometheus.MustNewConstMetric(c.lastSec, prometheus.GaugeValue, float64(st.LastSuccess.UnixNano())/1e9)
}
