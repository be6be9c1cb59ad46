package metrics_test

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgsidecar/pgsidecar/internal/fleet"
	"github.com/pgsidecar/pgsidecar/internal/metrics"
)

// The fleet collector exports each route's share, its wait histogram with
// cumulative buckets, and leaves out the fleet-wide count before the first
// check.
func TestFleetCollector(t *testing.T) {
	st := fleet.Stats{Budget: 12, Min: 1, Held: 3, Used: 2, Up: true, FleetHeld: 11, AcquireFailures: 4,
		Waits: 3, WaitTime: 30 * time.Millisecond, CoordinationLost: 1, Overshoot: 1500 * time.Millisecond}
	st.WaitBuckets[1], st.WaitBuckets[3] = 2, 1 // <= 5ms twice, <= 100ms once
	routes := []metrics.FleetRoute{{Database: "app", User: "worker", Stats: st}}
	c := metrics.NewFleetCollector(func() []metrics.FleetRoute { return routes })
	want := `
# HELP pgsidecar_fleet_slots_held Slots of the fleet's budget this sidecar holds (advisory locks on its coordination connection).
# TYPE pgsidecar_fleet_slots_held gauge
pgsidecar_fleet_slots_held{database="app",user="worker"} 3
# HELP pgsidecar_fleet_slot_wait_seconds Time a pool with a client waiting went without a slot, until it got one.
# TYPE pgsidecar_fleet_slot_wait_seconds histogram
pgsidecar_fleet_slot_wait_seconds_bucket{database="app",user="worker",le="0.001"} 0
pgsidecar_fleet_slot_wait_seconds_bucket{database="app",user="worker",le="0.005"} 2
pgsidecar_fleet_slot_wait_seconds_bucket{database="app",user="worker",le="0.025"} 2
pgsidecar_fleet_slot_wait_seconds_bucket{database="app",user="worker",le="0.1"} 3
pgsidecar_fleet_slot_wait_seconds_bucket{database="app",user="worker",le="0.5"} 3
pgsidecar_fleet_slot_wait_seconds_bucket{database="app",user="worker",le="2"} 3
pgsidecar_fleet_slot_wait_seconds_bucket{database="app",user="worker",le="10"} 3
pgsidecar_fleet_slot_wait_seconds_bucket{database="app",user="worker",le="+Inf"} 3
pgsidecar_fleet_slot_wait_seconds_sum{database="app",user="worker"} 0.03
pgsidecar_fleet_slot_wait_seconds_count{database="app",user="worker"} 3
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "pgsidecar_fleet_slots_held", "pgsidecar_fleet_slot_wait_seconds"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(c); n != 10 {
		t.Errorf("%d series, want 10", n)
	}
	routes[0].Stats.FleetHeld = -1
	if n := testutil.CollectAndCount(c, "pgsidecar_fleet_slots_held_by_fleet"); n != 0 {
		t.Errorf("slots_held_by_fleet before the first check: %d series, want 0", n)
	}
}
