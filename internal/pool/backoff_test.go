package pool_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/pool"
)

// ---------------------------------------------------------------------------
// Harness: an upstream that is down (a closed loopback port: dials get a real
// "connection refused") or up (a listener that keeps the connections it accepts,
// so that an idle backend sees EOF when the upstream goes down again).

type upstream struct {
	t     *testing.T
	mu    sync.Mutex
	addr  string
	ln    net.Listener
	conns []net.Conn
	wg    sync.WaitGroup

	dials atomic.Int64
	pids  atomic.Uint32
}

// newUpstream returns an upstream that is down.
func newUpstream(t *testing.T) *upstream {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &upstream{t: t, addr: ln.Addr().String()}
	ln.Close()
	t.Cleanup(u.down)
	return u
}

// up starts listening, on the same port when it is still free.
func (u *upstream) up() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.ln != nil {
		return
	}
	ln, err := net.Listen("tcp", u.addr)
	if err != nil {
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			u.t.Fatal(err)
		}
		u.addr = ln.Addr().String()
	}
	u.ln = ln
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.mu.Lock()
			u.conns = append(u.conns, c)
			u.mu.Unlock()
		}
	}()
}

// down stops listening and closes every connection accepted.
func (u *upstream) down() {
	u.mu.Lock()
	ln, conns := u.ln, u.conns
	u.ln, u.conns = nil, nil
	u.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	for _, c := range conns {
		c.Close()
	}
	u.wg.Wait()
}

func (u *upstream) Dial(ctx context.Context) (*pool.Backend, error) {
	u.dials.Add(1)
	u.mu.Lock()
	addr := u.addr
	u.mu.Unlock()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	pid := u.pids.Add(1)
	return pool.NewBackend(c, pid, []byte{1, 2, 3, 4}, map[string]string{"server_version": "17.0"}), nil
}

var (
	warnFailedLine     = regexp.MustCompile(`(?m)^.*level=WARN msg="server connection failed".*$`)
	restoredLine       = regexp.MustCompile(`(?m)^.*level=INFO msg="server connection restored".*$`)
	refusedAttr        = regexp.MustCompile(`clients_refused=(\d+)`)
	attemptAttr        = regexp.MustCompile(` attempt=(\d+)`)
	failedAttemptsAttr = regexp.MustCompile(`failed_attempts=(\d+)`)
)

func intAttr(t *testing.T, re *regexp.Regexp, line string) int {
	t.Helper()
	m := re.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("log line lacks %s: %s", re, line)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// ---------------------------------------------------------------------------

// With the upstream down, clients looping on Acquire make a bounded number of dials
// (one burst, then one attempt per back-off step: without the back-off every
// Acquire dialed, thousands in these 2 s); every refused acquisition fails at once
// with ErrBackoff, ErrDial and the real dial error; the log has one WARN line per
// step with the refusals counted; once the upstream is back, the clients get
// backends within the back-off cap.
func TestBackoffBoundsDials(t *testing.T) {
	checkNoGoroutineLeak(t)
	u := newUpstream(t)
	var logs pgtest.LogBuffer
	const size, clients = 4, 16
	p := pool.New(pool.Config{Size: size, Dial: u.Dial, Logger: logs.Logger(slog.LevelDebug), ConnectTimeout: 2 * time.Second})
	t.Cleanup(func() { closeWithin(t, p, 5*time.Second) })

	var (
		stop      atomic.Bool
		upAt      atomic.Int64 // unix nanos when the upstream came back
		refused   atomic.Int64 // ErrBackoff results
		failed    atomic.Int64 // ErrDial results without ErrBackoff
		slowest   atomic.Int64 // longest refused acquisition, ns
		recovered = make(chan time.Duration, clients)
		wg        sync.WaitGroup
	)
	errc := make(chan error, clients)
	for i := range clients {
		wg.Go(func() {
			for !stop.Load() {
				start := time.Now()
				var b *pool.Backend
				var err error
				switch i % 3 { // every way in
				case 0:
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					b, err = p.Acquire(ctx)
					cancel()
				case 1:
					b, err = p.AcquireWait(5*time.Second, nil)
				default:
					if b, err = p.TryAcquirePrefer(uint64(i)); b == nil && err == nil {
						b, err = p.AcquirePrefer(uint64(i), 5*time.Second, nil, nil)
					}
				}
				took := time.Since(start)
				if err == nil {
					if at := upAt.Load(); at == 0 {
						errc <- errors.New("got a backend while the upstream was down")
					} else {
						recovered <- time.Since(time.Unix(0, at))
					}
					p.Release(b)
					return
				}
				switch {
				case !errors.Is(err, pool.ErrDial) || !errors.Is(err, syscall.ECONNREFUSED):
					errc <- fmt.Errorf("acquire: %v; want ErrDial carrying the dial error (connection refused)", err)
					return
				case errors.Is(err, pool.ErrBackoff):
					refused.Add(1)
					if took > time.Duration(slowest.Load()) {
						slowest.Store(int64(took))
					}
				default:
					failed.Add(1)
				}
				time.Sleep(100 * time.Microsecond) // a client's round trip
			}
		})
	}
	t.Cleanup(func() { stop.Store(true); wg.Wait() })

	// Down for 2 s.
	sawBackoff := false
	downUntil := time.Now().Add(2 * time.Second)
	for time.Now().Before(downUntil) {
		if h := p.Health(); h.BackingOff {
			sawBackoff = true
			if h.Failures < 1 || h.NextAttempt.IsZero() || !errors.Is(h.LastError, syscall.ECONNREFUSED) || h.LastErrorAt.IsZero() {
				t.Fatalf("health while backing off: %+v", h)
			}
		}
		select {
		case err := <-errc:
			t.Fatal(err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	dials := u.dials.Load()
	h := p.Health()
	t.Logf("upstream down 2s, %d clients: %d dials, %d acquisitions refused by the back-off (slowest %v), %d failed with a dial, health %+v",
		clients, dials, refused.Load(), time.Duration(slowest.Load()), failed.Load(), h)
	if dials > 10 {
		t.Errorf("%d dials in 2s with the upstream down, want at most 10", dials)
	}
	if dials < 3 {
		t.Errorf("only %d dials in 2s: the back-off should retry (50ms, 100ms, ...)", dials)
	}
	if !sawBackoff || refused.Load() == 0 {
		t.Errorf("no acquisition refused by the back-off (saw back-off in Health: %v)", sawBackoff)
	}
	if s := time.Duration(slowest.Load()); s > time.Second {
		t.Errorf("a refused acquisition took %v, want it at once", s)
	}
	if h.Failures < 2 || h.Open != 0 || h.LastError == nil || h.Refused == 0 {
		t.Errorf("health: %+v", h)
	}

	// The upstream comes back: every client gets a backend within the back-off cap.
	upAt.Store(time.Now().UnixNano())
	u.up()
	var worst time.Duration
	for range clients {
		select {
		case d := <-recovered:
			worst = max(worst, d)
		case err := <-errc:
			t.Fatal(err)
		case <-time.After(10 * time.Second):
			t.Fatalf("clients still without a backend 10s after the upstream came back: %+v %+v", p.Stats(), p.Health())
		}
	}
	t.Logf("every client served %v after the upstream came back", worst)
	if worst > 5*time.Second+time.Second {
		t.Errorf("recovery took %v, more than the 5s back-off cap", worst)
	}
	h = p.Health()
	if h.BackingOff || h.Failures != 0 || h.LastSuccessAt.IsZero() || !h.NextAttempt.IsZero() {
		t.Errorf("health after recovery: %+v", h)
	}
	// Every client is done: once the dials for the last waiters end, the figures are final.
	pgtest.EventuallyTrue(t, 5*time.Second, "the last dials", func() bool { return p.Stats().Dialing == 0 })
	if s := p.Stats(); s.BackoffRefusals != uint64(refused.Load()) || s.DialFailures+s.Dials != uint64(u.dials.Load()) || s.Dials < 1 {
		t.Errorf("stats: %d refusals (clients saw %d), %d dial failures + %d dials (upstream saw %d)",
			s.BackoffRefusals, refused.Load(), s.DialFailures, s.Dials, u.dials.Load())
	}
	if h := p.Health(); h.Refused != uint64(refused.Load()) {
		t.Errorf("health counts %d refusals, clients saw %d", h.Refused, refused.Load())
	}
	// One WARN line per back-off step, numbered, with the error and the delay, and
	// the refusals since the previous line; the last count is in the INFO line.
	restored := restoredLine.FindAllString(logs.String(), -1)
	if len(restored) != 1 {
		t.Fatalf("%d \"server connection restored\" lines, want 1:\n%s", len(restored), logs.String())
	}
	steps := intAttr(t, failedAttemptsAttr, restored[0])
	warns := warnFailedLine.FindAllString(logs.String(), -1)
	if len(warns) != steps || steps < 2 {
		t.Errorf("%d WARN lines for %d back-off steps (%d dials)", len(warns), steps, u.dials.Load())
	}
	loggedRefused, bad := intAttr(t, refusedAttr, restored[0]), 0
	for i, l := range warns {
		if n := intAttr(t, attemptAttr, l); n != i+1 && bad < 3 {
			bad++
			t.Errorf("WARN line %d says attempt=%d: %s", i+1, n, l)
		}
		if !strings.Contains(l, "retry_in=") || !strings.Contains(l, "connection refused") {
			t.Errorf("WARN line lacks the error or the retry delay: %s", l)
		}
		loggedRefused += intAttr(t, refusedAttr, l)
	}
	if want := int(refused.Load()); loggedRefused != want {
		t.Errorf("the log lines count %d refused acquisitions, the clients saw %d", loggedRefused, want)
	}
}

// A route whose failing pool is dropped (DropUnproven) keeps backing off: its next
// pool refuses at once instead of dialing, for the default route and others alike.
// The failures of the dropped pools stay in the registry's totals, the default
// route's under its own key and every other route's under UnknownRoute.
func TestBackoffSurvivesDropUnproven(t *testing.T) {
	checkNoGoroutineLeak(t)
	pool.SetBackoff(t, 800*time.Millisecond, 5*time.Second) // the checks below fit in the first delay with room
	u := newUpstream(t)
	r := pool.NewRegistry(func(pool.Key) *pool.Pool { return pool.New(pool.Config{Size: 2, Dial: u.Dial}) })
	t.Cleanup(r.Close)
	def := pool.Key{Database: "app", User: "worker"}
	r.SetDefaultRoute(def)
	routes := []pool.Key{def, {Database: "typo", User: "worker"}, {Database: "app", User: "nobody"}}
	for _, k := range routes {
		p := r.Get(k)
		if _, err := p.Acquire(ctxFor(t, 5*time.Second)); !errors.Is(err, pool.ErrDial) || errors.Is(err, pool.ErrBackoff) {
			t.Fatalf("%v: first Acquire = %v, want a dial error", k, err)
		}
		if !r.DropUnproven(k, p) {
			t.Fatalf("%v: DropUnproven refused an unproven pool", k)
		}
		before := u.dials.Load()
		p2 := r.Get(k)
		if p2 == p {
			t.Fatalf("%v: Get returned the dropped pool", k)
		}
		if h := p2.Health(); h.Failures != 1 || !h.BackingOff || !errors.Is(h.LastError, syscall.ECONNREFUSED) {
			t.Fatalf("%v: the route's next pool does not carry on its back-off: %+v", k, h)
		}
		_, err := p2.Acquire(ctxFor(t, 5*time.Second))
		if !errors.Is(err, pool.ErrBackoff) || !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("%v: Acquire on the route's next pool = %v, want ErrBackoff with the last dial error", k, err)
		}
		var be *pool.BackoffError
		if !errors.As(err, &be) || be.Attempts != 1 || be.RetryAt.IsZero() {
			t.Fatalf("%v: %#v is not a *BackoffError of attempt 1", k, err)
		}
		if n := u.dials.Load() - before; n != 0 {
			t.Fatalf("%v: the route's next pool dialed %d times during the back-off", k, n)
		}
		if !r.DropUnproven(k, p2) {
			t.Fatalf("%v: DropUnproven refused the second pool", k)
		}
	}
	pools, dropped := r.Snapshot()
	if len(pools) != 0 {
		t.Fatalf("pools left: %+v", pools)
	}
	want := []pool.DialTotals{{Key: def, DialFailures: 1}, {Key: pool.UnknownRoute, DialFailures: 2}}
	if len(dropped) != len(want) {
		t.Fatalf("dropped totals %+v, want %+v", dropped, want)
	}
	for i := range want { // sorted: "(unknown)" < "app"
		j := len(want) - 1 - i
		if dropped[j].Key != want[i].Key || dropped[j].DialFailures != want[i].DialFailures || dropped[j].DialTime <= 0 {
			t.Fatalf("dropped totals %+v, want %+v (with DialTime > 0)", dropped, want)
		}
	}

	// The upstream comes back: the default route logs in once its delay is over.
	u.up()
	pgtest.Eventually(t, 3*time.Second, "Acquire after the upstream came back", func() error {
		p := r.Get(def)
		b, err := p.Acquire(ctxFor(t, 5*time.Second))
		if err == nil {
			p.Release(b)
			return nil
		}
		if !errors.Is(err, pool.ErrBackoff) {
			t.Fatalf("Acquire after the upstream came back: %v", err)
		}
		r.DropUnproven(def, p)
		return err
	})
	pools, dropped = r.Snapshot()
	if len(pools) != 1 || pools[0].Key != def || pools[0].Stats.Dials != 1 || pools[0].Stats.DialFailures != 0 {
		t.Fatalf("pools after recovery: %+v", pools)
	}
	if dropped[1].Key != def || dropped[1].DialFailures != 1 {
		t.Fatalf("the default route's dropped failures changed: %+v", dropped)
	}
}

// Clients sending random route names cannot grow the registry: pools of failed
// routes are dropped, their back-off states are capped, and their failures all
// add up under UnknownRoute.
func TestBackoffStateBounded(t *testing.T) {
	checkNoGoroutineLeak(t)
	down := errors.New("fake: no such database")
	var dials atomic.Int64
	r := pool.NewRegistry(func(pool.Key) *pool.Pool {
		return pool.New(pool.Config{Size: 1, Dial: func(context.Context) (*pool.Backend, error) {
			dials.Add(1)
			return nil, down
		}})
	})
	t.Cleanup(r.Close)
	def := pool.Key{Database: "app", User: "worker"}
	r.SetDefaultRoute(def)
	fail := func(k pool.Key) {
		p := r.Get(k)
		if _, err := p.Acquire(ctxFor(t, 5*time.Second)); !errors.Is(err, down) {
			t.Fatalf("%v: Acquire = %v", k, err)
		}
		if !r.DropUnproven(k, p) {
			t.Fatalf("%v: not dropped", k)
		}
	}
	fail(def)
	const n = 3000
	var first, last pool.Key
	for i := range n {
		last = pool.Key{Database: fmt.Sprintf("random_%d_%d", i, time.Now().UnixNano()), User: "u"}
		if i == 0 {
			first = last
		}
		fail(last)
	}
	if got := r.BackoffRoutes(); got > 1024 || got < 1 {
		t.Errorf("%d back-off states kept after %d random routes, want 1..1024", got, n)
	}
	if len(r.Pools()) != 0 {
		t.Errorf("%d pools left", len(r.Pools()))
	}
	pools, dropped := r.Snapshot()
	if len(pools) != 0 || len(dropped) != 2 || dropped[0].Key != pool.UnknownRoute || dropped[0].DialFailures != n ||
		dropped[1].Key != def || dropped[1].DialFailures != 1 {
		t.Errorf("totals %+v, want %d failures under %v and 1 under %v", dropped, n, pool.UnknownRoute, def)
	}
	// The newest route and the default route keep their back-off state; the oldest
	// random route's was dropped to make room.
	for _, k := range []pool.Key{last, def} {
		if h := r.Get(k).Health(); h.Failures != 1 || h.NextAttempt.IsZero() || !errors.Is(h.LastError, down) {
			t.Errorf("%v: health of the route's next pool %+v, want its back-off carried on", k, h)
		}
	}
	if h := r.Get(first).Health(); h.Failures != 0 || h.LastError != nil {
		t.Errorf("the first random route's back-off state was kept: %+v", h)
	}
}

// UpstreamReady follows the upstream: an error before the first attempt ended
// and while the upstream is down, nil once a server connection is open (it opens
// one itself, which goes idle into the pool), an error again once the upstream is
// down and the idle backend found dead. It never waits for the network.
func TestUpstreamReady(t *testing.T) {
	checkNoGoroutineLeak(t)
	u := newUpstream(t)
	r := pool.NewRegistry(func(pool.Key) *pool.Pool {
		return pool.New(pool.Config{Size: 2, Dial: u.Dial, ConnectTimeout: 2 * time.Second})
	})
	t.Cleanup(r.Close)
	if err := r.UpstreamReady(); err == nil {
		t.Fatal("UpstreamReady without a default route = nil")
	}
	def := pool.Key{Database: "app", User: "worker"}
	r.SetDefaultRoute(def)

	var slowest time.Duration
	ready := func() error {
		start := time.Now()
		err := r.UpstreamReady()
		slowest = max(slowest, time.Since(start))
		return err
	}
	// pollUntil calls UpstreamReady until cond holds for its result.
	pollUntil := func(what string, cond func(error) bool) error {
		t.Helper()
		var last error
		if pgtest.Poll(8*time.Second, func() error {
			if last = ready(); cond(last) {
				return nil
			}
			return errors.New("not yet")
		}) != nil {
			t.Fatalf("UpstreamReady: waiting for %s, got %v; health %+v", what, last, r.Get(def).Health())
		}
		return last
	}

	if err := ready(); !errors.Is(err, pool.ErrNotChecked) {
		t.Fatalf("first UpstreamReady with the upstream down = %v, want ErrNotChecked", err)
	}
	err := pollUntil("the dial error", func(err error) bool { return !errors.Is(err, pool.ErrNotChecked) })
	if !errors.Is(err, pool.ErrDial) || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("UpstreamReady with the upstream down = %v, want ErrDial carrying connection refused", err)
	}
	dialsDown := u.dials.Load()

	u.up()
	pollUntil("ready", func(err error) bool { return err == nil })
	if s := r.Get(def).Stats(); s.Idle != 1 || s.Open != 1 || s.Dials != 1 {
		t.Fatalf("after the warm-up dial: %+v, want one idle backend", s)
	}
	// Ready again without another dial while the idle backend lives.
	before := u.dials.Load()
	for range 5 {
		if err := ready(); err != nil {
			t.Fatalf("UpstreamReady with an idle backend = %v", err)
		}
	}
	if d := u.dials.Load() - before; d != 0 {
		t.Fatalf("UpstreamReady dialed %d times with a live idle backend", d)
	}

	u.down()
	err = pollUntil("not ready", func(err error) bool { return err != nil })
	if !errors.Is(err, pool.ErrDial) || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("UpstreamReady after the upstream went down = %v, want ErrDial carrying connection refused", err)
	}
	if s := r.Get(def).Stats(); s.Open != 0 || s.Closed != 1 {
		t.Fatalf("the dead idle backend was not closed: %+v", s)
	}
	t.Logf("%d dials while first down, %d in all; slowest UpstreamReady %v", dialsDown, u.dials.Load(), slowest)
	if slowest > 500*time.Millisecond {
		t.Errorf("an UpstreamReady call took %v", slowest)
	}
}

// UpstreamReady returns at once while the dial it started hangs, and starts no
// second one meanwhile.
func TestUpstreamReadyNeverBlocks(t *testing.T) {
	checkNoGoroutineLeak(t)
	var dials atomic.Int64
	r := pool.NewRegistry(func(pool.Key) *pool.Pool {
		return pool.New(pool.Config{Size: 2, ConnectTimeout: time.Minute, Dial: func(ctx context.Context) (*pool.Backend, error) {
			dials.Add(1)
			<-ctx.Done() // a server that never answers
			return nil, ctx.Err()
		}})
	})
	t.Cleanup(r.Close)
	r.SetDefaultRoute(pool.Key{Database: "app", User: "worker"})
	check := func(i int) {
		t.Helper()
		start := time.Now()
		err := r.UpstreamReady()
		if took := time.Since(start); took > 500*time.Millisecond {
			t.Fatalf("UpstreamReady took %v with the dial hanging", took)
		}
		if !errors.Is(err, pool.ErrNotChecked) {
			t.Fatalf("call %d: UpstreamReady = %v, want ErrNotChecked", i, err)
		}
	}
	check(0)
	pgtest.EventuallyTrue(t, 5*time.Second, "the dial UpstreamReady started", func() bool { return dials.Load() == 1 })
	for i := range 20 {
		check(i + 1)
	}
	if s := r.Get(pool.Key{Database: "app", User: "worker"}).Stats(); s.Dialing != 1 {
		t.Fatalf("%d dials in flight, want 1", s.Dialing)
	}
	if d := dials.Load(); d != 1 {
		t.Fatalf("%d dials started, want 1", d)
	}
	done := make(chan struct{})
	go func() { r.Close(); close(done) }()
	pgtest.Recv(t, done, 5*time.Second, "Registry.Close did not abandon the hanging dial")
	if err := r.UpstreamReady(); !errors.Is(err, pool.ErrClosed) {
		t.Fatalf("UpstreamReady after Close = %v, want ErrClosed", err)
	}
}

// A refusal carries PostgreSQL's error of the last attempt (a bad password: 28P01)
// so that the proxy can pass its code on; the sentinels are all there.
func TestBackoffErrorCarriesServerError(t *testing.T) {
	checkNoGoroutineLeak(t)
	pool.SetBackoff(t, time.Second, 5*time.Second) // the second Acquire falls in the first delay
	pe := &pgconn.PgError{Severity: "FATAL", Code: "28P01", Message: `password authentication failed for user "app"`}
	p := pool.New(pool.Config{Size: 2, Dial: func(context.Context) (*pool.Backend, error) {
		return nil, fmt.Errorf("failed to connect: %w", pe)
	}})
	t.Cleanup(func() { closeWithin(t, p, 5*time.Second) })
	if _, err := p.Acquire(ctxFor(t, 5*time.Second)); !errors.Is(err, pool.ErrDial) || errors.Is(err, pool.ErrBackoff) {
		t.Fatalf("first Acquire = %v, want the dial error", err)
	}
	_, err := p.AcquireWait(5*time.Second, nil)
	if !errors.Is(err, pool.ErrBackoff) || !errors.Is(err, pool.ErrDial) || errors.Is(err, pool.ErrClosed) {
		t.Fatalf("Acquire during the back-off = %v, want ErrBackoff and ErrDial", err)
	}
	if code, msg, ok := pool.ServerError(err); !ok || code != "28P01" || msg != pe.Message {
		t.Fatalf("ServerError(%v) = %q, %q, %v; want 28P01 and the server's message", err, code, msg, ok)
	}
	if s := err.Error(); !strings.Contains(s, pool.ErrDial.Error()) || !strings.Contains(s, "password authentication failed") || !strings.Contains(s, "next attempt in") {
		t.Fatalf("refusal message %q lacks the dial error or the retry delay", s)
	}
}
