package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/localpg"
	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
)

// End-to-end tests of the fleet-wide connection budget (issue 15): five proxy
// processes ("pods") in front of one PostgreSQL share --fleet-budget 12 server
// connections, with --pool-size 8 each. Helpers are prefixed with fleetE2E.
//
// What the tests count in PostgreSQL: the fleet's server connections are the
// client backends of the database fleetE2EDB other than the coordination
// connections (application_name "pgsidecar fleet"). The test's own direct
// connections (the sampler, the lock poller) use the database postgres, and the
// sampler excludes its own backend too.

const (
	fleetE2EBudget   = 12
	fleetE2EPoolSize = 8
	fleetE2EFloor    = 1 // --fleet-min's default
	fleetE2EDB       = "fleetdb"
	fleetE2EName     = "e2e"
	fleetE2ECoordApp = "pgsidecar fleet"
	fleetE2EIdle     = 2 * time.Second // --server-idle-timeout
	fleetE2EEvery    = 50 * time.Millisecond
)

// fleetE2EPod is one proxy process of the fleet.
type fleetE2EPod struct {
	name         string
	busy         bool
	listen, http string
	p            *proxyProcess
}

// fleetE2EStartPods starts n proxies of one fleet in front of cl's fleetE2EDB
// (the first nBusy are the busy pods) and waits until they listen.
func fleetE2EStartPods(t *testing.T, cl *localpg.Cluster, n, nBusy int) []*fleetE2EPod {
	t.Helper()
	pods := make([]*fleetE2EPod, n)
	for i := range pods {
		kind := "idle"
		if i < nBusy {
			kind = "busy"
		}
		pod := &fleetE2EPod{name: fmt.Sprintf("%s%d", kind, i), busy: i < nBusy,
			listen: pgtest.FreeAddr(t), http: pgtest.FreeAddr(t)}
		pod.p = startProxy(t, nil, "--listen", pod.listen, "--http-listen", pod.http, "--log-format", "json",
			"--upstream", cl.URL(fleetE2EDB), "--pool-size", strconv.Itoa(fleetE2EPoolSize),
			"--fleet-budget", strconv.Itoa(fleetE2EBudget), "--fleet-name", fleetE2EName,
			"--server-idle-timeout", fleetE2EIdle.String(), "--admin-users", "postgres")
		pods[i] = pod
	}
	for _, pod := range pods {
		pod.p.waitFor(t, `"msg":"pgsidecar listening"`, 1, 30*time.Second)
	}
	return pods
}

// fleetE2EStats is a pod's fleet metrics (its one route).
type fleetE2EStats struct {
	ok                        bool // scraped, and the route's share exists
	held, used, fleetHeld, up int
	failures, lost            int
	overshoot                 float64
	waits                     uint64
	budgetMetric              int
	scrapeErr                 string
}

func (pod *fleetE2EPod) stats() fleetE2EStats {
	ms, err := pgtest.ScrapeMetrics(pod.http)
	if err != nil {
		return fleetE2EStats{scrapeErr: err.Error()}
	}
	route := map[string]string{"database": fleetE2EDB, "user": "postgres"}
	v := func(name string) (int, bool) {
		x, n := ms.Value(name, route)
		return int(x), n > 0
	}
	var st fleetE2EStats
	st.held, st.ok = v("pgsidecar_fleet_slots_held")
	st.used, _ = v("pgsidecar_fleet_slots_used")
	st.up, _ = v("pgsidecar_fleet_coordination_up")
	st.failures, _ = v("pgsidecar_fleet_slot_acquire_failures_total")
	st.lost, _ = v("pgsidecar_fleet_coordination_lost_total")
	st.budgetMetric, _ = v("pgsidecar_fleet_budget")
	fh, ok := v("pgsidecar_fleet_slots_held_by_fleet")
	if !ok {
		fh = -1
	}
	st.fleetHeld = fh
	st.overshoot, _ = ms.Value("pgsidecar_fleet_overshoot_seconds_total", route)
	st.waits, _, _ = ms.Histogram("pgsidecar_fleet_slot_wait_seconds", route)
	return st
}

// fleetE2EAllStats scrapes every pod (a dead one gives !ok).
func fleetE2EAllStats(pods []*fleetE2EPod) []fleetE2EStats {
	out := make([]fleetE2EStats, len(pods))
	var wg sync.WaitGroup
	for i, pod := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = pod.stats()
		}()
	}
	wg.Wait()
	return out
}

// fleetE2ESample is one look at pg_stat_activity and pg_locks.
type fleetE2ESample struct {
	at    time.Duration // since the sampler started
	conns int           // the fleet's server connections
	locks int           // the fleet's slots (advisory locks held)
	coord int           // coordination connections
}

// fleetE2ESampler counts the fleet's server connections every 50 ms on a direct
// connection of its own, reconnecting when PostgreSQL went away.
type fleetE2ESampler struct {
	cl    *localpg.Cluster
	start time.Time
	stop  chan struct{}
	done  chan struct{}

	mu      sync.Mutex
	samples []fleetE2ESample
	errs    int
	over    []string // what PostgreSQL showed in samples above the budget (the first few)
}

const fleetE2ESamplerApp = "fleet_e2e_sampler"

const fleetE2ESampleSQL = `SELECT
 (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND datname = $1
   AND application_name <> '` + fleetE2ECoordApp + `' AND application_name <> '` + fleetE2ESamplerApp + `' AND pid <> pg_backend_pid()),
 (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND mode = 'ExclusiveLock'
   AND database = (SELECT oid FROM pg_database WHERE datname = $1)),
 (SELECT count(*) FROM pg_stat_activity WHERE application_name = '` + fleetE2ECoordApp + `')`

const fleetE2EOverSQL = `SELECT string_agg(format('pid=%s app=%s state=%s port=%s age=%s since_state=%s',
   pid, application_name, state, client_port, now() - backend_start, now() - state_change), '; ' ORDER BY backend_start)
 FROM pg_stat_activity WHERE backend_type = 'client backend' AND datname = $1
   AND application_name <> '` + fleetE2ECoordApp + `' AND pid <> pg_backend_pid()`

func fleetE2EStartSampler(t *testing.T, cl *localpg.Cluster) *fleetE2ESampler {
	s := &fleetE2ESampler{cl: cl, start: time.Now(), stop: make(chan struct{}), done: make(chan struct{})}
	go s.run()
	t.Cleanup(s.finish)
	return s
}

func (s *fleetE2ESampler) run() {
	defer close(s.done)
	var c *pgx.Conn
	defer func() {
		if c != nil {
			c.Close(context.Background())
		}
	}()
	tick := time.NewTicker(fleetE2EEvery)
	defer tick.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		var err error
		if c == nil {
			c, err = pgx.Connect(ctx, s.cl.URL("postgres")+"&application_name="+fleetE2ESamplerApp)
			if err != nil {
				c = nil
			}
		}
		if c != nil {
			var smp fleetE2ESample
			at := time.Since(s.start)
			err = c.QueryRow(ctx, fleetE2ESampleSQL, fleetE2EDB).Scan(&smp.conns, &smp.locks, &smp.coord)
			if err == nil {
				smp.at = at
				var detail string
				if smp.conns > fleetE2EBudget && len(s.over) < 10 {
					_ = c.QueryRow(ctx, fleetE2EOverSQL, fleetE2EDB).Scan(&detail)
				}
				s.mu.Lock()
				s.samples = append(s.samples, smp)
				if detail != "" {
					s.over = append(s.over, fmt.Sprintf("t=%.2fs n=%d: %s", at.Seconds(), smp.conns, detail))
				}
				s.mu.Unlock()
			} else {
				c.Close(context.Background())
				c = nil
			}
		}
		cancel()
		if err != nil {
			s.mu.Lock()
			s.errs++
			s.mu.Unlock()
		}
		select {
		case <-s.stop:
			return
		case <-tick.C:
		}
	}
}

func (s *fleetE2ESampler) finish() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
}

// since is the sampler's clock.
func (s *fleetE2ESampler) since(t time.Time) time.Duration { return t.Sub(s.start) }

// window summarizes the samples taken in [from, to) (to <= 0: up to now).
type fleetE2EWindow struct {
	samples, maxConns, maxLocks, maxCoord int
	above                                 int           // samples with more connections than limit
	aboveFor                              time.Duration // time covered by those samples (each until the next sample)
	firstAbove, lastAbove                 time.Duration
}

func (s *fleetE2ESampler) window(from, to time.Duration, limit int) fleetE2EWindow {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := fleetE2EWindow{firstAbove: -1, lastAbove: -1}
	for i, smp := range s.samples {
		if smp.at < from || to > 0 && smp.at >= to {
			continue
		}
		w.samples++
		w.maxConns = max(w.maxConns, smp.conns)
		w.maxLocks = max(w.maxLocks, smp.locks)
		w.maxCoord = max(w.maxCoord, smp.coord)
		if smp.conns > limit {
			w.above++
			next := smp.at + fleetE2EEvery
			if i+1 < len(s.samples) {
				next = s.samples[i+1].at
			}
			w.aboveFor += next - smp.at
			if w.firstAbove < 0 {
				w.firstAbove = smp.at
			}
			w.lastAbove = smp.at
		}
	}
	return w
}

// lastMax is the largest count in the last d.
func (s *fleetE2ESampler) lastMax(d time.Duration) int {
	return s.window(time.Since(s.start)-d, 0, fleetE2EBudget).maxConns
}

func (s *fleetE2ESampler) overDetails() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.over...)
}

func (s *fleetE2ESampler) errors() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.errs
}

// fleetE2EClients are a pod's clients: each runs short transactions on its
// own connection to the pod (reconnecting after an error) until stopped,
// pausing between two transactions.
type fleetE2EClients struct {
	pod      *fleetE2EPod
	ids      []int // the fleet_e2e rows they update, one each
	ok       []atomic.Int64
	lastOK   []atomic.Int64 // unix nanoseconds of each client's last success
	failed   atomic.Int64
	tol      atomic.Int64
	tolerate atomic.Bool // errors are expected (and only counted) while set
	stopc    chan struct{}
	wg       sync.WaitGroup

	mu    sync.Mutex
	fails map[string]int
}

func fleetE2ERun(t *testing.T, pod *fleetE2EPod, firstID, n int, pause time.Duration) *fleetE2EClients {
	cs := &fleetE2EClients{pod: pod, ok: make([]atomic.Int64, n), lastOK: make([]atomic.Int64, n),
		stopc: make(chan struct{}), fails: map[string]int{}}
	for i := range n {
		cs.ids = append(cs.ids, firstID+i)
	}
	for i := range n { // after ids is complete: the clients read it
		cs.wg.Add(1)
		go cs.client(i, pause)
	}
	t.Cleanup(cs.stop)
	return cs
}

func (cs *fleetE2EClients) fail(err error) {
	if cs.tolerate.Load() {
		cs.tol.Add(1)
		return
	}
	cs.failed.Add(1)
	msg := err.Error()
	cs.mu.Lock()
	if _, seen := cs.fails[msg]; seen || len(cs.fails) < 10 {
		cs.fails[msg]++
	}
	cs.mu.Unlock()
}

func (cs *fleetE2EClients) client(i int, pause time.Duration) {
	defer cs.wg.Done()
	id := cs.ids[i]
	url := fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable&application_name=fleet_%s_%d",
		cs.pod.listen, fleetE2EDB, cs.pod.name, i)
	var c *pgx.Conn
	defer func() {
		if c != nil {
			c.Close(context.Background())
		}
	}()
	for {
		select {
		case <-cs.stopc:
			return
		default:
		}
		if c == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			var err error
			c, err = pgx.Connect(ctx, url)
			cancel()
			if err != nil {
				c = nil
				cs.fail(fmt.Errorf("connect: %w", err))
				if !cs.sleep(100 * time.Millisecond) {
					return
				}
				continue
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err := pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "UPDATE fleet_e2e SET n = n + 1 WHERE id = $1", id); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "SELECT pg_sleep(0.005)")
			return err
		})
		cancel()
		if err != nil {
			cs.fail(err)
			c.Close(context.Background())
			c = nil
		} else {
			cs.ok[i].Add(1)
			cs.lastOK[i].Store(time.Now().UnixNano())
		}
		if pause > 0 && !cs.sleep(pause) {
			return
		}
	}
}

func (cs *fleetE2EClients) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-cs.stopc:
		return false
	case <-t.C:
		return true
	}
}

func (cs *fleetE2EClients) stop() {
	select {
	case <-cs.stopc:
	default:
		close(cs.stopc)
	}
	cs.wg.Wait()
}

func (cs *fleetE2EClients) done() int64 {
	var n int64
	for i := range cs.ok {
		n += cs.ok[i].Load()
	}
	return n
}

// allOKSince reports whether every client completed a transaction after t.
func (cs *fleetE2EClients) allOKSince(t time.Time) bool {
	for i := range cs.lastOK {
		if cs.lastOK[i].Load() <= t.UnixNano() {
			return false
		}
	}
	return true
}

// anyOKSince reports whether some client completed a transaction after t.
func (cs *fleetE2EClients) anyOKSince(t time.Time) bool {
	for i := range cs.lastOK {
		if cs.lastOK[i].Load() > t.UnixNano() {
			return true
		}
	}
	return false
}

func (cs *fleetE2EClients) failures() string {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	var out []string
	for msg, n := range cs.fails {
		out = append(out, fmt.Sprintf("%dx %s", n, msg))
	}
	return strings.Join(out, "\n")
}

// report logs the clients' counts and fails the test on untolerated failures.
func (cs *fleetE2EClients) report(t *testing.T) {
	t.Helper()
	t.Logf("clients of %s: %d clients, %d transactions, %d failures, %d tolerated failures",
		cs.pod.name, len(cs.ok), cs.done(), cs.failed.Load(), cs.tol.Load())
	if n := cs.failed.Load(); n > 0 {
		t.Errorf("clients of %s: %d transactions failed:\n%s", cs.pod.name, n, cs.failures())
	}
	if cs.done() == 0 {
		t.Errorf("clients of %s completed no transaction", cs.pod.name)
	}
}

// fleetE2ESetup starts the cluster with the database and the clients' table.
func fleetE2ESetup(t *testing.T) *localpg.Cluster {
	t.Helper()
	cl := pgtest.Start(t, localpg.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cl.CreateDatabase(ctx, fleetE2EDB); err != nil {
		t.Fatal(err)
	}
	c := pgtest.Connect(t, cl.URL(fleetE2EDB), 0, nil)
	if _, err := c.Exec(ctx, "CREATE TABLE fleet_e2e (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0); "+
		"INSERT INTO fleet_e2e (id) SELECT generate_series(0, 999)"); err != nil {
		t.Fatal(err)
	}
	if mc := pgtest.MustInt(t, c, "SELECT current_setting('max_connections')::int"); mc < fleetE2EBudget+5+10 {
		t.Fatalf("max_connections %d is too small", mc)
	}
	c.Close(ctx)
	return cl
}

// fleetE2ECheckRows checks that each client's row counts its successful
// transactions (after the sampler stopped: this connects to fleetE2EDB).
func fleetE2ECheckRows(t *testing.T, cl *localpg.Cluster, groups ...*fleetE2EClients) {
	t.Helper()
	c := pgtest.Connect(t, cl.URL(fleetE2EDB), 0, nil)
	defer c.Close(context.Background())
	bad := 0
	for _, cs := range groups {
		for i, id := range cs.ids {
			n := pgtest.MustInt(t, c, "SELECT n::int FROM fleet_e2e WHERE id = $1", id)
			if want := cs.ok[i].Load(); int64(n) != want {
				bad++
				if bad <= 5 {
					t.Errorf("%s client %d: row says %d transactions, the client completed %d", cs.pod.name, i, n, want)
				}
			}
		}
	}
}

// fleetE2ELogger logs the slot distribution every second while it runs.
type fleetE2ELogger struct {
	stopc, done chan struct{}
}

func fleetE2EStartLogger(t *testing.T, pods []*fleetE2EPod, s *fleetE2ESampler) *fleetE2ELogger {
	l := &fleetE2ELogger{stopc: make(chan struct{}), done: make(chan struct{})}
	names := make([]string, len(pods))
	for i, pod := range pods {
		names[i] = pod.name
	}
	t.Logf("slot distribution every second, per pod (%s); '-' = pod down; sampler = max server connections seen in the last second",
		strings.Join(names, " "))
	go func() {
		defer close(l.done)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-l.stopc:
				return
			case <-tick.C:
			}
			st := fleetE2EAllStats(pods)
			var held, used, up []string
			sum, busy := 0, 0
			fleetHeld := -1
			for i, x := range st {
				if !x.ok {
					held, used, up = append(held, "-"), append(used, "-"), append(up, "-")
					continue
				}
				held, used, up = append(held, strconv.Itoa(x.held)), append(used, strconv.Itoa(x.used)), append(up, strconv.Itoa(x.up))
				sum += x.held
				if pods[i].busy {
					busy += x.held
				}
				fleetHeld = max(fleetHeld, x.fleetHeld)
			}
			t.Logf("t=%5.1fs held=[%s] sum=%2d busy=%2d | used=[%s] | coord_up=[%s] | held_by_fleet(pg_locks)=%d | sampler=%d",
				s.since(time.Now()).Seconds(), strings.Join(held, " "), sum, busy, strings.Join(used, " "),
				strings.Join(up, " "), fleetHeld, s.lastMax(time.Second))
		}
	}()
	t.Cleanup(l.stop)
	return l
}

func (l *fleetE2ELogger) stop() {
	select {
	case <-l.stopc:
	default:
		close(l.stopc)
	}
	<-l.done
}

// fleetE2EBusyHeld sums the slots the busy pods hold (-1 if a scrape failed).
func fleetE2EBusyHeld(pods []*fleetE2EPod) (busy int, st []fleetE2EStats) {
	st = fleetE2EAllStats(pods)
	for i, x := range st {
		if pods[i].busy && x.ok {
			busy += x.held
		}
	}
	return busy, st
}

// fleetE2ECoordPID finds the PostgreSQL pid of pod's coordination connection:
// the backend whose client port is one of the proxy process's sockets (Linux:
// /proc). c is a direct connection.
func fleetE2ECoordPID(t *testing.T, c *pgx.Conn, pod *fleetE2EPod) int {
	t.Helper()
	ports, err := fleetE2ELocalPorts(pod.p.cmd.Process.Pid)
	if err != nil {
		t.Fatalf("sockets of %s: %v", pod.name, err)
	}
	rows, err := c.Query(context.Background(), "SELECT pid, client_port FROM pg_stat_activity WHERE application_name = $1",
		fleetE2ECoordApp)
	if err != nil {
		t.Fatal(err)
	}
	var found []int
	for rows.Next() {
		var pid, port int
		if err := rows.Scan(&pid, &port); err != nil {
			t.Fatal(err)
		}
		if ports[port] {
			found = append(found, pid)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(found) != 1 {
		t.Fatalf("%s: %d coordination connections (%v), want 1", pod.name, len(found), found)
	}
	return found[0]
}

// fleetE2ELocalPorts returns the local ports of the TCP sockets process pid has
// open.
func fleetE2ELocalPorts(pid int) (map[int]bool, error) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return nil, err
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		l, err := os.Readlink(filepath.Join(fmt.Sprintf("/proc/%d/fd", pid), fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	ports := map[int]bool{}
	for _, name := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(name)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 10 || !inodes[fs[9]] {
				continue
			}
			i := strings.LastIndexByte(fs[1], ':')
			if p, err := strconv.ParseUint(fs[1][i+1:], 16, 16); err == nil {
				ports[int(p)] = true
			}
		}
		f.Close()
	}
	if len(ports) == 0 {
		return nil, errors.New("no TCP sockets found")
	}
	return ports, nil
}

// fleetE2EShowFleet logs each live pod's SHOW FLEET.
func fleetE2EShowFleet(t *testing.T, pods []*fleetE2EPod) {
	t.Helper()
	for _, pod := range pods {
		select {
		case <-pod.p.exited:
			continue
		default:
		}
		c, err := pgtest.TryConnect(t, "postgres://postgres@"+pod.listen+"/pgsidecar?sslmode=disable",
			pgx.QueryExecModeSimpleProtocol, nil)
		if err != nil {
			t.Errorf("%s: console: %v", pod.name, err)
			continue
		}
		rows, err := c.Query(context.Background(), "SHOW FLEET")
		if err != nil {
			t.Errorf("%s: SHOW FLEET: %v", pod.name, err)
			c.Close(context.Background())
			continue
		}
		var lines []string
		cols := rows.FieldDescriptions()
		for rows.Next() {
			vals, err := rows.Values()
			if err != nil {
				t.Errorf("%s: SHOW FLEET: %v", pod.name, err)
				break
			}
			var kv []string
			for i, v := range vals {
				kv = append(kv, fmt.Sprintf("%s=%v", cols[i].Name, v))
			}
			lines = append(lines, strings.Join(kv, " "))
		}
		if err := rows.Err(); err != nil {
			t.Errorf("%s: SHOW FLEET: %v", pod.name, err)
		}
		t.Logf("%s SHOW FLEET: %s", pod.name, strings.Join(lines, " | "))
		c.Close(context.Background())
	}
}

// fleetE2EFleetLogs logs what each pod logged about the fleet, the warnings
// and errors (repeated lines counted once, the first few).
func fleetE2EFleetLogs(t *testing.T, pods []*fleetE2EPod) {
	t.Helper()
	for _, pod := range pods {
		seen := map[string]int{}
		var order []string
		for _, l := range strings.Split(pod.p.output(), "\n") {
			if !strings.Contains(l, `"fleet"`) && !strings.Contains(l, "fleet ") {
				continue
			}
			if !strings.Contains(l, `"level":"WARN"`) && !strings.Contains(l, `"level":"ERROR"`) && !strings.Contains(l, "coordination up") {
				continue
			}
			rec := map[string]any{}
			if json.Unmarshal([]byte(l), &rec) != nil {
				continue
			}
			key := fmt.Sprint(rec["level"], " ", rec["msg"], " ", rec["reason"], rec["error"])
			if seen[key] == 0 {
				order = append(order, key)
			}
			seen[key]++
		}
		var out []string
		for _, k := range order {
			out = append(out, fmt.Sprintf("%dx %s", seen[k], k))
		}
		t.Logf("%s fleet log: %s", pod.name, strings.Join(out, " | "))
	}
}

// fleetE2EStartLoad starts the skewed load: 32 clients on each busy pod, one
// client every second on each idle pod (plus, with burst, 4 more clients on
// each idle pod that the caller stops later).
func fleetE2EStartLoad(t *testing.T, pods []*fleetE2EPod, burst bool) (busy, idle, bursts []*fleetE2EClients) {
	id := 0
	for _, pod := range pods {
		if pod.busy {
			busy = append(busy, fleetE2ERun(t, pod, id, 32, 0))
			id += 32
			continue
		}
		idle = append(idle, fleetE2ERun(t, pod, id, 1, time.Second))
		id++
		if burst {
			bursts = append(bursts, fleetE2ERun(t, pod, id, 4, 0))
			id += 4
		}
	}
	return busy, idle, bursts
}

func fleetE2EMostHeld(pods []*fleetE2EPod) int {
	best, most := -1, -1
	for i, x := range fleetE2EAllStats(pods) {
		if pods[i].busy && x.held > most {
			best, most = i, x.held
		}
	}
	return best
}

// fleetE2EPoll waits up to within for cond, like pgtest.Eventually, but a
// timeout is an error, not fatal: the test goes on and reports its numbers.
func fleetE2EPoll(t *testing.T, within time.Duration, what string, cond func() error) bool {
	t.Helper()
	if err := pgtest.Poll(within, cond); err != nil {
		t.Errorf("%s: not true within %v: %v", what, within, err)
		return false
	}
	return true
}

// fleetE2EDur formats a measured time, 0 being "never".
func fleetE2EDur(d time.Duration) string {
	if d == 0 {
		return "never"
	}
	return d.Round(time.Millisecond).String()
}

// fleetE2EAfter is a sampler time relative to ref, in seconds (-1 for none).
func fleetE2EAfter(at, ref time.Duration) float64 {
	if at < 0 {
		return -1
	}
	return (at - ref).Seconds()
}
