package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
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
	time.Sleep(3 * time.Second)
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
	time.Sleep(3 * time.Second) // steady state
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
		time.Sleep(time.Second)
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
	time.Sleep(2 * time.Second)
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
	time.Sleep(2 * time.Second)
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
	time.Sleep(4 * time.Second)
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
	time.Sleep(3 * time.Second)
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
