package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/internal/fleet"
)

// FleetRoute is one route's share of the fleet-wide connection budget.
type FleetRoute struct {
	Database, User string
	Stats          fleet.Stats
}

// FleetCollector exports the fleet-wide connection budget (--fleet-budget),
// read at scrape time from routes.
type FleetCollector struct {
	routes                                             func() []FleetRoute
	budget, held, fleetHeld, used, up, failures, waits *prometheus.Desc
	lost, overshoot, floor                             *prometheus.Desc
}

// NewFleetCollector returns a collector of the routes' shares.
func NewFleetCollector(routes func() []FleetRoute) *FleetCollector {
	l := []string{"database", "user"}
	return &FleetCollector{
		routes: routes,
		budget: prometheus.NewDesc("pgsidecar_fleet_budget", "The fleet's budget of server connections for the route (--fleet-budget).", l, nil),
		floor: prometheus.NewDesc("pgsidecar_fleet_min",
			"The slots this sidecar keeps even when idle (--fleet-min); slots_held below it means the floor cannot be met now.", l, nil),
		held: prometheus.NewDesc("pgsidecar_fleet_slots_held", "Slots of the fleet's budget this sidecar holds (advisory locks on its coordination connection).", l, nil),
		fleetHeld: prometheus.NewDesc("pgsidecar_fleet_slots_held_by_fleet",
			"Slots the whole fleet held at the last check (pg_locks, once a second).", l, nil),
		used: prometheus.NewDesc("pgsidecar_fleet_slots_used", "Server connections this sidecar has open or opening under the budget.", l, nil),
		up:   prometheus.NewDesc("pgsidecar_fleet_coordination_up", "1 while the route's coordination connection is up (without it no server connection is opened).", l, nil),
		failures: prometheus.NewDesc("pgsidecar_fleet_slot_acquire_failures_total",
			"Attempts to take a slot that found the fleet's budget full.", l, nil),
		waits: prometheus.NewDesc("pgsidecar_fleet_slot_wait_seconds",
			"Time a pool with a client waiting went without a slot, until it got one.", l, nil),
		lost: prometheus.NewDesc("pgsidecar_fleet_coordination_lost_total",
			"Coordination connections lost (PostgreSQL released their slots).", l, nil),
		overshoot: prometheus.NewDesc("pgsidecar_fleet_overshoot_seconds_total",
			"Time this sidecar had more server connections open than slots held (after its coordination was lost).", l, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *FleetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.budget, c.floor, c.held, c.fleetHeld, c.used, c.up, c.failures, c.waits, c.lost, c.overshoot} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *FleetCollector) Collect(ch chan<- prometheus.Metric) {
	for _, r := range c.routes() {
		st, lv := r.Stats, []string{r.Database, r.User}
		ch <- prometheus.MustNewConstMetric(c.budget, prometheus.GaugeValue, float64(st.Budget), lv...)
		ch <- prometheus.MustNewConstMetric(c.floor, prometheus.GaugeValue, float64(st.Min), lv...)
		ch <- prometheus.MustNewConstMetric(c.held, prometheus.GaugeValue, float64(st.Held), lv...)
		if st.FleetHeld >= 0 {
			ch <- prometheus.MustNewConstMetric(c.fleetHeld, prometheus.GaugeValue, float64(st.FleetHeld), lv...)
		}
		ch <- prometheus.MustNewConstMetric(c.used, prometheus.GaugeValue, float64(st.Used), lv...)
		up := 0.0
		if st.Up {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up, lv...)
		ch <- prometheus.MustNewConstMetric(c.failures, prometheus.CounterValue, float64(st.AcquireFailures), lv...)
		buckets := make(map[float64]uint64, len(fleet.WaitBounds))
		var cum uint64
		for i, b := range fleet.WaitBounds {
			cum += st.WaitBuckets[i]
			buckets[b.Seconds()] = cum
		}
		ch <- prometheus.MustNewConstHistogram(c.waits, st.Waits, st.WaitTime.Seconds(), buckets, lv...)
		ch <- prometheus.MustNewConstMetric(c.lost, prometheus.CounterValue, float64(st.CoordinationLost), lv...)
		ch <- prometheus.MustNewConstMetric(c.overshoot, prometheus.CounterValue, st.Overshoot.Seconds(), lv...)
	}
}
