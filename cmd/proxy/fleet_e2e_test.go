package main

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
)

// The harness (pods, sampler, clients, logger) is in fleet_harness_e2e_test.go.

// Issue 15 points 1 and 2: five pods, skewed load; the fleet never has more
// than the budget's server connections, the busy pods end up with most slots
// once the idle pods' connections time out, every transaction completes; a
// SIGKILLed busy pod's slots are free at once and the other busy pod takes
// them.
func TestFleetBudget(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("needs /proc (Linux) to find a pod's coordination connection")
	}
	began := time.Now()
	cl := fleetE2ESetup(t)
	pods := fleetE2EStartPods(t, cl, 5, 2)
	s := fleetE2EStartSampler(t, cl)
	logger := fleetE2EStartLogger(t, pods, s)

	// Point 1. First the idle pods have a burst of their own (4 more clients
	// each) so that they hold slots the idle timeout must give back.
	busy, idle, bursts := fleetE2EStartLoad(t, pods, true)
	time.Sleep(3 * time.Second) // the bursts run this long (a load window, not a condition)
	for _, b := range bursts {
		b.stop()
	}
	burstEnd := time.Now()
	t.Logf("t=%5.1fs the idle pods' bursts stop (server idle timeout %s)", s.since(burstEnd).Seconds(), fleetE2EIdle)
	var st []fleetE2EStats
	var busyHeld int
	fleetE2EPoll(t, 15*time.Second, "the busy pods hold at least 8 slots", func() error {
		busyHeld, st = fleetE2EBusyHeld(pods)
		if busyHeld < 8 {
			return fmt.Errorf("busy pods hold %d", busyHeld)
		}
		return nil
	})
	t.Logf("t=%5.1fs the busy pods hold %d of %d slots, %.1fs after the bursts stopped", s.since(time.Now()).Seconds(),
		busyHeld, fleetE2EBudget, time.Since(burstEnd).Seconds())
	time.Sleep(3 * time.Second) // steady state: the sampler watches this window
	busyHeld, st = fleetE2EBusyHeld(pods)
	if busyHeld < 8 {
		t.Errorf("steady state: the busy pods hold %d slots, want at least 8", busyHeld)
	}
	for i, x := range st {
		if !x.ok || x.up != 1 || x.held < fleetE2EFloor || x.budgetMetric != fleetE2EBudget {
			t.Errorf("%s: %+v: want its share up, holding at least the floor, budget %d", pods[i].name, x, fleetE2EBudget)
		}
	}
	// An idle pod gives back what it does not use: after the idle timeout it
	// holds max(floor, used) (more only for a moment, while a slot it took
	// for a waiting client is on its way).
	hoard := map[string][]string{}
	for range 3 {
		for i, x := range fleetE2EAllStats(pods) {
			if !pods[i].busy && x.ok && x.held > max(fleetE2EFloor, x.used) {
				hoard[pods[i].name] = append(hoard[pods[i].name], fmt.Sprintf("held %d used %d", x.held, x.used))
			}
		}
		time.Sleep(time.Second) // one look a second over a 3 s window
	}
	for name, seen := range hoard {
		if len(seen) == 3 {
			t.Errorf("%s holds slots it does not use, for 3s on end (%s), while the busy pods wait for slots",
				name, strings.Join(seen, ", "))
		}
	}
	w1 := s.window(0, 0, fleetE2EBudget)
	t.Logf("point 1: %d samples, max server connections %d (budget %d), max slots held %d, coordination connections %d",
		w1.samples, w1.maxConns, fleetE2EBudget, w1.maxLocks, w1.maxCoord)

	// Point 2: SIGKILL a busy pod.
	direct := pgtest.Connect(t, cl.URL("postgres"), 0, map[string]string{"application_name": "fleet_e2e_direct"})
	// The victim is the busy pod holding more slots, the heir the other one.
	vi := fleetE2EMostHeld(pods)
	victim, heir := pods[vi], pods[1-vi]
	victimClients, heirClients := busy[vi], busy[1-vi]
	coordPID := fleetE2ECoordPID(t, direct, victim)
	before := victim.stats()
	heirBefore := heir.stats()
	victimClients.tolerate.Store(true) // its clients lose their proxy
	killAt := time.Now()
	if err := victim.p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	victimClients.stop()
	t.Logf("t=%5.1fs SIGKILL %s (holding %d slots, %d used; coordination backend pid %d); %s holds %d",
		s.since(killAt).Seconds(), victim.name, before.held, before.used, coordPID, heir.name, heirBefore.held)
	// Every 10 ms: the victim's locks (freed), the fleet's locks; every 50 ms
	// the heir's slots. The freed slots are taken when the heir, which has
	// clients waiting, is at its pool size, or the fleet is full again.
	var freed, full, heirFull time.Duration
	minLocks := fleetE2EBudget
	var heirAfter fleetE2EStats
	lastScrape := time.Time{}
	deadline := killAt.Add(15 * time.Second)
	// Until the heir is at its pool size; once the fleet is full again, at
	// most 5s after the kill (slots other pods keep can hold it below).
	for time.Now().Before(deadline) && (freed == 0 || heirFull == 0 && (full == 0 || time.Since(killAt) < 5*time.Second)) {
		var mine, total int
		err := direct.QueryRow(context.Background(), `SELECT
 (SELECT count(*)::int FROM pg_locks WHERE locktype = 'advisory' AND pid = $1),
 (SELECT count(*)::int FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND mode = 'ExclusiveLock'
   AND database = (SELECT oid FROM pg_database WHERE datname = $2))`, coordPID, fleetE2EDB).Scan(&mine, &total)
		if err != nil {
			t.Fatal(err)
		}
		d := time.Since(killAt)
		if freed == 0 && mine == 0 {
			freed = d
		}
		if freed > 0 {
			minLocks = min(minLocks, total)
			if full == 0 && total >= fleetE2EBudget {
				full = d
			}
		}
		if heirFull == 0 && time.Since(lastScrape) >= fleetE2EEvery {
			lastScrape = time.Now()
			if heirAfter = heir.stats(); heirAfter.held >= fleetE2EPoolSize {
				heirFull = d
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	heirAfter = heir.stats()
	t.Logf("point 2: the killed pod's %d slots were free %s after SIGKILL (pg_locks, polled every 10ms); "+
		"the fleet held %d slots at the lowest, %d again: %s; %s held %d, at its pool size %d: %s (%d after %s)",
		before.held, fleetE2EDur(freed), minLocks, fleetE2EBudget, fleetE2EDur(full),
		heir.name, heirBefore.held, fleetE2EPoolSize, fleetE2EDur(heirFull), heirAfter.held,
		time.Since(killAt).Round(100*time.Millisecond))
	switch {
	case freed == 0:
		t.Errorf("the killed pod's slots were not freed within 15s")
	case freed > 2*time.Second:
		t.Errorf("the killed pod's slots were freed %v after SIGKILL, want within 2s", freed)
	}
	if heirFull == 0 && full == 0 {
		t.Errorf("the freed slots were not taken within 15s: %s holds %d with clients waiting, the fleet %d at the lowest",
			heir.name, heirAfter.held, minLocks)
	}
	time.Sleep(2 * time.Second) // the sampler watches the heir under load a little longer
	logger.stop()
	for _, cs := range append([]*fleetE2EClients{heirClients}, idle...) {
		cs.stop()
	}
	s.finish()
	fleetE2EShowFleet(t, pods)
	fleetE2EFleetLogs(t, pods)

	all := s.window(0, 0, fleetE2EBudget)
	w2 := s.window(s.since(killAt), 0, fleetE2EBudget)
	t.Logf("point 2 window: %d samples, max server connections %d", w2.samples, w2.maxConns)
	t.Logf("sampler: %d samples every %v, %d errors, max server connections %d (budget %d), max slots held %d",
		all.samples, fleetE2EEvery, s.errors(), all.maxConns, fleetE2EBudget, all.maxLocks)
	if all.maxConns > fleetE2EBudget {
		t.Errorf("the sampler saw %d server connections of the fleet (%d samples above %d, first at %.2fs, last at %.2fs), budget %d:\n%s",
			all.maxConns, all.above, fleetE2EBudget, all.firstAbove.Seconds(), all.lastAbove.Seconds(), fleetE2EBudget,
			strings.Join(s.overDetails(), "\n"))
	}
	if all.maxLocks > fleetE2EBudget {
		t.Errorf("%d slots held, budget %d", all.maxLocks, fleetE2EBudget)
	}
	if all.samples < 100 {
		t.Errorf("only %d samples", all.samples)
	}
	for _, cs := range append([]*fleetE2EClients{heirClients}, idle...) {
		cs.report(t)
	}
	for _, cs := range bursts {
		cs.report(t)
	}
	t.Logf("clients of %s (killed): %d transactions before the kill", victim.name, victimClients.done())
	fleetE2ECheckRows(t, cl, append(append([]*fleetE2EClients{heirClients}, idle...), bursts...)...)
	t.Logf("TestFleetBudget took %v", time.Since(began).Round(100*time.Millisecond))
}

// Issue 15 point 3: a busy pod's coordination connection terminated, then a
// PostgreSQL restart. The overshoot above the budget stays within the
// documented bound (at most the slots of the pod whose coordination died, for
// about a transaction after it notices), the bound holds afterwards, and every
// pod recovers without a restart.
func TestFleetBudgetRecovery(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("needs /proc (Linux) to find a pod's coordination connection")
	}
	began := time.Now()
	cl := fleetE2ESetup(t)
	pods := fleetE2EStartPods(t, cl, 5, 2)
	s := fleetE2EStartSampler(t, cl)
	logger := fleetE2EStartLogger(t, pods, s)
	busy, idle, _ := fleetE2EStartLoad(t, pods, false)
	groups := append(append([]*fleetE2EClients(nil), busy...), idle...)
	fleetE2EPoll(t, 15*time.Second, "the busy pods hold at least 8 slots", func() error {
		if b, _ := fleetE2EBusyHeld(pods); b < 8 {
			return fmt.Errorf("busy pods hold %d", b)
		}
		return nil
	})
	time.Sleep(2 * time.Second) // a sampled window before the terminate
	direct := pgtest.Connect(t, cl.URL("postgres"), 0, map[string]string{"application_name": "fleet_e2e_direct"})

	// (a) pg_terminate_backend of a busy pod's coordination connection.
	vi := fleetE2EMostHeld(pods) // the busy pod with more slots: the one whose loss matters most
	victim := pods[vi]
	coordPID := fleetE2ECoordPID(t, direct, victim)
	before := victim.stats()
	termAt := time.Now()
	if ok := pgtest.MustInt(t, direct, "SELECT pg_terminate_backend($1)::int", coordPID); ok != 1 {
		t.Fatalf("pg_terminate_backend(%d) = %d", coordPID, ok)
	}
	t.Logf("t=%5.1fs pg_terminate_backend(%d): %s's coordination connection (it held %d slots, used %d)",
		s.since(termAt).Seconds(), coordPID, victim.name, before.held, before.used)
	var downAt, upAt, heldAt time.Duration
	var last fleetE2EStats
	fleetE2EPoll(t, 15*time.Second, victim.name+" has its coordination back", func() error {
		last = victim.stats()
		d := time.Since(termAt)
		if last.lost >= 1 && downAt == 0 {
			downAt = d
		}
		if last.lost >= 1 && last.up == 1 && upAt == 0 {
			upAt = d
		}
		if upAt > 0 && last.held >= fleetE2EFloor && heldAt == 0 {
			heldAt = d
		}
		if heldAt == 0 {
			return fmt.Errorf("%+v", last)
		}
		return nil
	})
	upWall := termAt.Add(upAt)
	fleetE2EPoll(t, 10*time.Second, victim.name+" serves its clients again", func() error {
		if !busy[vi].allOKSince(upWall) {
			return errors.New("not every client has completed a transaction")
		}
		return nil
	})
	served := time.Since(termAt)
	time.Sleep(4 * time.Second) // the window after the terminate that the overshoot checks read
	afterTerm := victim.stats()
	wa := s.window(s.since(termAt), 0, fleetE2EBudget)
	waFloor := s.window(s.since(termAt), 0, fleetE2EBudget+fleetE2EFloor)
	settled := s.window(s.since(termAt)+3*time.Second, 0, fleetE2EBudget)
	t.Logf("point 3a: coordination loss seen (lost_total) <= %v, coordination up again <= %v, holding slots <= %v, "+
		"every client of %s served again %v after pg_terminate_backend (metrics polled every ~50ms)",
		downAt.Round(time.Millisecond), upAt.Round(time.Millisecond), heldAt.Round(time.Millisecond), victim.name,
		served.Round(time.Millisecond))
	t.Logf("point 3a overshoot: sampler max %d (budget %d, bound %d = budget + the %d slots %s held); "+
		"%d samples above the budget for ~%v (first %.2fs, last %.2fs after the terminate); above budget+floor: %d samples ~%v; "+
		"pgsidecar_fleet_overshoot_seconds_total of %s: %.3fs; coordination_lost_total %d; after 3s: max %d",
		wa.maxConns, fleetE2EBudget, fleetE2EBudget+before.held, before.held, victim.name,
		wa.above, wa.aboveFor.Round(time.Millisecond), fleetE2EAfter(wa.firstAbove, s.since(termAt)),
		fleetE2EAfter(wa.lastAbove, s.since(termAt)), waFloor.above, waFloor.aboveFor.Round(time.Millisecond),
		victim.name, afterTerm.overshoot-before.overshoot, afterTerm.lost, settled.maxConns)
	if wa.maxConns > fleetE2EBudget+before.held {
		t.Errorf("after the terminate the sampler saw %d server connections, above the documented bound %d:\n%s",
			wa.maxConns, fleetE2EBudget+before.held, strings.Join(s.overDetails(), "\n"))
	}
	if wa.aboveFor > 2*time.Second {
		t.Errorf("the fleet stayed above its budget for ~%v after the terminate", wa.aboveFor)
	}
	if settled.maxConns > fleetE2EBudget {
		t.Errorf("3s after the terminate the sampler still saw %d server connections (budget %d)", settled.maxConns, fleetE2EBudget)
	}
	if afterTerm.lost != 1 {
		t.Errorf("%s: coordination_lost_total %d, want 1", victim.name, afterTerm.lost)
	}

	// (b) PostgreSQL restart.
	for _, cs := range groups {
		cs.tolerate.Store(true)
	}
	statsBefore := fleetE2EAllStats(pods)
	stopAt := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := cl.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	stopped := time.Since(stopAt)
	if err := cl.Start(ctx); err != nil {
		t.Fatal(err)
	}
	startAt := time.Now()
	t.Logf("t=%5.1fs PostgreSQL restarted: stop took %v, down for %v", s.since(startAt).Seconds(),
		stopped.Round(time.Millisecond), startAt.Sub(stopAt).Round(time.Millisecond))
	coordUp := make([]time.Duration, len(pods))
	servedAt := make([]time.Duration, len(pods))
	clientsAt := make([]time.Duration, len(pods))
	// Recovery is asserted, not its speed: it takes 0.3-2.3 s, but once in
	// about 25 runs under -race an idle pod's client waited ~20 s for its
	// first server connection after the restart (its slot held, none used;
	// not explained yet: see the issue 15 note), so the bound is loose.
	fleetE2EPoll(t, 45*time.Second, "every pod recovers", func() error {
		st := fleetE2EAllStats(pods)
		d := time.Since(startAt)
		var missing []string
		for i, pod := range pods {
			cs := groups[i]
			if coordUp[i] == 0 && st[i].ok && st[i].up == 1 && st[i].lost > statsBefore[i].lost {
				coordUp[i] = d
			}
			if servedAt[i] == 0 && cs.anyOKSince(startAt) {
				servedAt[i] = d
			}
			if clientsAt[i] == 0 && cs.allOKSince(startAt) {
				clientsAt[i] = d
			}
			if coordUp[i] == 0 || clientsAt[i] == 0 {
				missing = append(missing, fmt.Sprintf("%s %+v", pod.name, st[i]))
			}
		}
		if len(missing) > 0 {
			return errors.New(strings.Join(missing, "; "))
		}
		return nil
	})
	recovered := time.Now()
	for _, cs := range groups {
		cs.tolerate.Store(false)
	}
	for i, pod := range pods {
		t.Logf("point 3b: %s: coordination up %s, first transaction %s, every client served %s after PostgreSQL was back",
			pod.name, fleetE2EDur(coordUp[i]), fleetE2EDur(servedAt[i]), fleetE2EDur(clientsAt[i]))
	}
	var busyHeld int
	fleetE2EPoll(t, 15*time.Second, "the busy pods hold at least 8 slots again", func() error {
		if busyHeld, _ = fleetE2EBusyHeld(pods); busyHeld < 8 {
			return fmt.Errorf("busy pods hold %d", busyHeld)
		}
		return nil
	})
	t.Logf("point 3b: every pod recovered %v after PostgreSQL was back; busy pods hold %d slots %v after it",
		recovered.Sub(startAt).Round(time.Millisecond), busyHeld, time.Since(startAt).Round(time.Millisecond))
	time.Sleep(3 * time.Second) // a sampled window after the recovery
	logger.stop()
	for _, cs := range groups {
		cs.stop()
	}
	s.finish()
	fleetE2EShowFleet(t, pods)
	fleetE2EFleetLogs(t, pods)

	wb := s.window(s.since(startAt), 0, fleetE2EBudget)
	gap := s.window(s.since(stopAt), s.since(startAt), fleetE2EBudget)
	all := s.window(0, 0, fleetE2EBudget)
	final := fleetE2EAllStats(pods)
	var overs []string
	for i, x := range final {
		overs = append(overs, fmt.Sprintf("%s %.3fs (lost %d, held %d, used %d)", pods[i].name, x.overshoot, x.lost, x.held, x.used))
	}
	t.Logf("point 3b: after the restart %d samples, max server connections %d (budget %d), %d samples above it "+
		"for ~%v (first %.2fs, last %.2fs after PostgreSQL was back); %d samples while PostgreSQL was down; sampler errors %d",
		wb.samples, wb.maxConns, fleetE2EBudget, wb.above, wb.aboveFor.Round(time.Millisecond),
		fleetE2EAfter(wb.firstAbove, s.since(startAt)), fleetE2EAfter(wb.lastAbove, s.since(startAt)), gap.samples, s.errors())
	t.Logf("pgsidecar_fleet_overshoot_seconds_total: %s", strings.Join(overs, ", "))
	t.Logf("sampler over the whole test: %d samples, max server connections %d, max slots held %d",
		all.samples, all.maxConns, all.maxLocks)
	if wb.maxConns > fleetE2EBudget {
		t.Errorf("after the restart the sampler saw %d server connections (budget %d) in %d samples, for ~%v:\n%s",
			wb.maxConns, fleetE2EBudget, wb.above, wb.aboveFor.Round(time.Millisecond), strings.Join(s.overDetails(), "\n"))
	}
	if all.maxLocks > fleetE2EBudget {
		t.Errorf("%d slots held, budget %d", all.maxLocks, fleetE2EBudget)
	}
	for _, cs := range groups {
		cs.report(t)
	}
	t.Logf("TestFleetBudgetRecovery took %v", time.Since(began).Round(100*time.Millisecond))
}

// fleetE2EMostHeld returns the index of the busy pod holding the most slots.
