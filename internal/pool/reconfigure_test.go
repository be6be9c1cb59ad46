package pool_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/pool"
)

// markedDial dials f and marks the backend's Params with mark, so that a test
// can tell which dial function opened a backend.
func markedDial(f *fakeDB, mark string) pool.DialFunc {
	return func(ctx context.Context) (*pool.Backend, error) {
		b, err := f.Dial(ctx)
		if b != nil {
			b.Params["dialer"] = mark
		}
		return b, err
	}
}

// gatedHook makes f's dials wait for gate to be closed; with honourCtx they give
// up when their context ends.
func gatedHook(gate <-chan struct{}, honourCtx bool) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		if !honourCtx {
			<-gate
			return nil
		}
		return awaitGate(ctx, gate, nil)
	}
}

// pending returns the Acquire result in ch if there is one already.
func pending(ch <-chan acq) (acq, bool) {
	select {
	case r := <-ch:
		return r, true
	default:
		return acq{}, false
	}
}

// Shrinking never closes a held backend: the ones in use are closed as they come
// back while more than Size are open, the idle ones above Size at once.
func TestReconfigureShrink(t *testing.T) {
	t.Run("all in use", func(t *testing.T) {
		f := newFakeDB(t)
		p := newPool(t, f, pool.Config{Size: 4})
		held := []*pool.Backend{mustAcquire(t, p), mustAcquire(t, p), mustAcquire(t, p), mustAcquire(t, p)}
		p.Reconfigure(pool.Config{Size: 2}, false)
		s := p.Stats()
		if s.Size != 2 || s.Open != 4 || s.InUse != 4 || s.Closed != 0 || s.Retired != 0 {
			t.Fatalf("stats after shrinking with 4 in use: %+v", s)
		}
		for _, b := range held {
			checkWorks(t, f, b) // still open: no Terminate, data flows both ways
		}
		// A client queued meanwhile is served only once the pool is down to its size.
		ch := make(chan acq, 1)
		acquireAsync(p, ctxFor(t, 10*time.Second), 0, ch)
		pgtest.EventuallyTrue(t, 2*time.Second, "a waiter", func() bool { return p.Stats().Waiting == 1 })

		for i, b := range held[:2] {
			p.Release(b)
			expectTerminated(t, f, b.PID)
			if s := p.Stats(); s.Open != 3-i || s.Idle != 0 || s.Retired != uint64(i+1) || s.Waiting != 1 {
				t.Fatalf("stats after releasing %d: %+v", i+1, s)
			}
			if r, ok := pending(ch); ok {
				t.Fatalf("waiter served while the pool was above its size: %v, %v", r.b, r.err)
			}
		}
		checkWorks(t, f, held[2])
		checkWorks(t, f, held[3])
		p.Release(held[2]) // Open == Size: this one goes to the waiter
		r := recv(t, ch, 2*time.Second)
		if r.err != nil || r.b != held[2] {
			t.Fatalf("waiter got %v, %v; want the released backend %d", r.b, r.err, held[2].PID)
		}
		p.Release(r.b)
		p.Release(held[3])
		s = p.Stats()
		if s.Open != 2 || s.Idle != 2 || s.InUse != 0 || s.Closed != 2 || s.Retired != 2 || s.Dials != 4 {
			t.Fatalf("final stats: %+v", s)
		}
		checkAccounting(t, s)
		if n := f.calls.Load(); n != 4 {
			t.Fatalf("%d dials, want 4", n)
		}
	})

	t.Run("idle above size closed at once", func(t *testing.T) {
		f := newFakeDB(t)
		p := newPool(t, f, pool.Config{Size: 4})
		a, b, c, d := mustAcquire(t, p), mustAcquire(t, p), mustAcquire(t, p), mustAcquire(t, p)
		p.Release(c)
		p.Release(d)
		p.Reconfigure(pool.Config{Size: 2}, false)
		// Synchronous: by the time Reconfigure returns both idle ones are closed.
		s := p.Stats()
		if s.Size != 2 || s.Open != 2 || s.Idle != 0 || s.InUse != 2 || s.Closed != 2 || s.Retired != 2 {
			t.Fatalf("stats after shrinking with 2 idle, 2 in use: %+v", s)
		}
		expectTerminated(t, f, c.PID)
		expectTerminated(t, f, d.PID)
		checkWorks(t, f, a)
		checkWorks(t, f, b)
		p.Release(a)
		p.Release(b)
		if s := p.Stats(); s.Open != 2 || s.Idle != 2 || s.Retired != 2 {
			t.Fatalf("stats after releasing at size: %+v", s)
		}

		// Shrinking below the idle count keeps the most recently released.
		p.Reconfigure(pool.Config{Size: 1}, false)
		expectTerminated(t, f, a.PID)
		if got := mustAcquire(t, p); got != b {
			t.Fatalf("kept backend %d, want the most recently released %d", got.PID, b.PID)
		}
		p.Release(b)
		s = p.Stats()
		if s.Open != 1 || s.Idle != 1 || s.Retired != 3 || s.Closed != 3 {
			t.Fatalf("stats: %+v", s)
		}
		checkAccounting(t, s)
	})

	t.Run("dial landing above size", func(t *testing.T) {
		f := newFakeDB(t)
		gate := make(chan struct{})
		f.setHook(gatedHook(gate, true))
		p := newPool(t, f, pool.Config{Size: 3, ConnectTimeout: time.Minute})
		ch := make(chan acq, 3)
		ctx := ctxFor(t, 10*time.Second)
		for i := range 3 {
			acquireAsync(p, ctx, i, ch)
		}
		pgtest.EventuallyTrue(t, 2*time.Second, "3 dials", func() bool { s := p.Stats(); return s.Dialing == 3 && s.Waiting == 3 })
		p.Reconfigure(pool.Config{Size: 1}, false)
		close(gate)
		r := recv(t, ch, 2*time.Second) // the one dial that lands at Size
		if r.err != nil {
			t.Fatalf("Acquire: %v", r.err)
		}
		pgtest.EventuallyTrue(t, 2*time.Second, "the dials to end", func() bool { return p.Stats().Dialing == 0 })
		s := p.Stats()
		if s.Open != 1 || s.InUse != 1 || s.Waiting != 2 || s.Dials != 3 || s.Retired != 2 {
			t.Fatalf("stats: %+v", s)
		}
		if _, ok := pending(ch); ok {
			t.Fatal("a second client served above the pool's size")
		}
		b := r.b
		for range 2 {
			p.Release(b)
			r := recv(t, ch, 2*time.Second)
			if r.err != nil || r.b != b {
				t.Fatalf("waiter got %v, %v; want backend %d", r.b, r.err, b.PID)
			}
		}
		p.Release(b)
		checkAccounting(t, p.Stats())
	})
}

// Growing dials at once for the clients already queued, without waiting for a
// release.
func TestReconfigureGrow(t *testing.T) {
	f := newFakeDB(t)
	gate := make(chan struct{})
	f.setHook(gatedHook(gate, true))
	p := newPool(t, f, pool.Config{Size: 1, ConnectTimeout: time.Minute})
	ch := make(chan acq, 3)
	ctx := ctxFor(t, 10*time.Second)
	for i := range 3 {
		acquireAsync(p, ctx, i, ch)
	}
	pgtest.EventuallyTrue(t, 2*time.Second, "3 waiters and 1 dial", func() bool { s := p.Stats(); return s.Waiting == 3 && s.Dialing == 1 })
	p.Reconfigure(pool.Config{Size: 3}, false)
	// Synchronous: Reconfigure started the dials.
	if s := p.Stats(); s.Size != 3 || s.Dialing != 3 || s.Open != 3 {
		t.Fatalf("stats after growing: %+v", s)
	}
	close(gate)
	seen := map[*pool.Backend]bool{}
	for range 3 {
		r := recv(t, ch, 5*time.Second)
		if r.err != nil || r.b == nil || seen[r.b] {
			t.Fatalf("waiter %d got %v, %v", r.i, r.b, r.err)
		}
		seen[r.b] = true
		checkWorks(t, f, r.b)
	}
	s := p.Stats()
	if s.Open != 3 || s.InUse != 3 || s.Dials != 3 || s.Waiting != 0 || s.Retired != 0 {
		t.Fatalf("stats: %+v", s)
	}
	checkAccounting(t, s)
	for b := range seen {
		p.Release(b)
	}

	// Growing without anyone waiting dials nothing.
	p.Reconfigure(pool.Config{Size: 10}, false)
	if s := p.Stats(); s.Dialing != 0 || s.Open != 3 || s.Size != 10 {
		t.Fatalf("stats after growing an idle pool: %+v", s)
	}
}

// Retiring closes every backend of the old dial function as soon as no client
// holds it, including one whose dial was in flight; everything handed out after
// Reconfigure returns comes from the new dial function.
func TestReconfigureRetire(t *testing.T) {
	f1, f2 := newFakeDB(t), newFakeDB(t)
	p := newPool(t, f1, pool.Config{Size: 5, Dial: markedDial(f1, "old"), ConnectTimeout: time.Minute})
	a, b, c, d := mustAcquire(t, p), mustAcquire(t, p), mustAcquire(t, p), mustAcquire(t, p)

	// A dial of the old function in flight that ignores its context (so it lands
	// after Reconfigure rather than being abandoned): a client queues, the dial
	// starts, and the client is served by a release instead.
	gate1 := make(chan struct{})
	f1.setHook(gatedHook(gate1, false))
	f1.ignoreCtx.Store(true)
	t.Cleanup(func() {
		select {
		case <-gate1:
		default:
			close(gate1)
		}
	})
	ch := make(chan acq, 1)
	acquireAsync(p, ctxFor(t, 10*time.Second), 0, ch)
	pgtest.EventuallyTrue(t, 2*time.Second, "the old dial in flight", func() bool { s := p.Stats(); return s.Dialing == 1 && s.Waiting == 1 })
	p.Release(c)
	if r := recv(t, ch, 2*time.Second); r.err != nil || r.b != c {
		t.Fatalf("waiter got %v, %v; want %d", r.b, r.err, c.PID)
	}
	p.Release(c)
	p.Release(d)
	if s := p.Stats(); s.Open != 5 || s.Idle != 2 || s.InUse != 2 || s.Dialing != 1 {
		t.Fatalf("stats before Reconfigure: %+v", s)
	}

	gate2 := make(chan struct{})
	f2.setHook(gatedHook(gate2, true))
	p.Reconfigure(pool.Config{Size: 5, Dial: markedDial(f2, "new"), ConnectTimeout: time.Minute}, true)
	s := p.Stats()
	if s.Open != 3 || s.Idle != 0 || s.InUse != 2 || s.Dialing != 1 || s.Retired != 2 || s.Closed != 2 {
		t.Fatalf("stats after Reconfigure: %+v", s)
	}
	expectTerminated(t, f1, c.PID)
	expectTerminated(t, f1, d.PID)
	checkWorks(t, f1, a) // held: untouched
	checkWorks(t, f1, b)

	// A client now: the old dial in flight must not serve it, so it gets a dial of
	// the new function at once (held up by gate2 until the old dial has landed).
	ch = make(chan acq, 1)
	acquireAsync(p, ctxFor(t, 10*time.Second), 1, ch)
	pgtest.EventuallyTrue(t, 2*time.Second, "a new dial for the waiter", func() bool { s := p.Stats(); return s.Waiting == 1 && s.Dialing == 2 })
	if n := f2.calls.Load(); n != 1 {
		t.Fatalf("%d dials of the new function, want 1", n)
	}
	close(gate1)
	pgtest.EventuallyTrue(t, 2*time.Second, "the old dial to land and be closed", func() bool { return p.Stats().Retired == 3 })
	oldPID := uint32(5)
	expectTerminated(t, f1, oldPID)
	if r, ok := pending(ch); ok {
		t.Fatalf("the waiter got the backend of the retired dial: %v, %v", r.b, r.err)
	}
	close(gate2)
	r := recv(t, ch, 2*time.Second)
	if r.err != nil || r.b.Params["dialer"] != "new" {
		t.Fatalf("waiter got %v, %v; want a backend of the new dial function", r.b, r.err)
	}
	checkWorks(t, f2, r.b)
	n := r.b

	// Held old backends are closed when released, never handed out again.
	p.Release(a)
	expectTerminated(t, f1, a.PID)
	p.Release(b)
	expectTerminated(t, f1, b.PID)
	s = p.Stats()
	if s.Open != 1 || s.InUse != 1 || s.Idle != 0 || s.Retired != 5 || s.Dials != 6 || s.DialFailures != 0 {
		t.Fatalf("stats after the old backends came back: %+v", s)
	}
	checkAccounting(t, s)
	p.Release(n)
	var got []*pool.Backend
	for range 5 {
		x := mustAcquire(t, p)
		if x.Params["dialer"] != "new" {
			t.Fatalf("Acquire after Reconfigure returned a backend of the old dial function (pid %d)", x.PID)
		}
		got = append(got, x)
	}
	for _, x := range got {
		p.Release(x)
	}
	if n := f1.calls.Load(); n != 5 {
		t.Fatalf("%d dials of the old function, want 5", n)
	}
	if s := p.Stats(); s.Open != 5 || s.Idle != 5 {
		t.Fatalf("final stats: %+v", s)
	}
}

// A dial of the old function that honours its context is abandoned at once;
// its failure is told to no client and counts nothing in the back-off.
func TestReconfigureRetireAbandonsDial(t *testing.T) {
	f1, f2 := newFakeDB(t), newFakeDB(t)
	block := make(chan struct{}) // never closed: only the context ends the dial
	f1.setHook(gatedHook(block, true))
	p := newPool(t, f1, pool.Config{Size: 2, ConnectTimeout: time.Minute})
	ch := make(chan acq, 1)
	acquireAsync(p, ctxFor(t, 10*time.Second), 0, ch)
	pgtest.EventuallyTrue(t, 2*time.Second, "the old dial", func() bool { return p.Stats().Dialing == 1 })
	p.Reconfigure(pool.Config{Size: 2, Dial: markedDial(f2, "new")}, true)
	r := recv(t, ch, 5*time.Second)
	if r.err != nil || r.b.Params["dialer"] != "new" {
		t.Fatalf("waiter got %v, %v; want a backend of the new dial function", r.b, r.err)
	}
	pgtest.EventuallyTrue(t, 2*time.Second, "the old dial to be abandoned", func() bool { return f1.inflight.Load() == 0 })
	pgtest.EventuallyTrue(t, 2*time.Second, "the old dial to be counted", func() bool { return p.Stats().Dialing == 0 })
	if h := p.Health(); h.Failures != 0 || h.BackingOff {
		t.Fatalf("the abandoned dial counted in the back-off: %+v", h)
	}
	s := p.Stats()
	if s.DialFailures != 1 || s.Open != 1 || s.InUse != 1 || s.Dials != 1 {
		t.Fatalf("stats: %+v", s)
	}
	p.Release(r.b)
}

// Retiring ends the back-off of the old configuration: a client need not wait out
// the delay of failures that were those of the old credentials.
func TestReconfigureRetireEndsBackoff(t *testing.T) {
	pool.SetBackoff(t, time.Hour, time.Hour)
	f := newFakeDB(t)
	f.setHook(func(context.Context) error { return errDown })
	p := newPool(t, f, pool.Config{Size: 2, Dial: markedDial(f, "old")})
	if _, err := p.Acquire(ctxFor(t, 5*time.Second)); !errors.Is(err, errDown) {
		t.Fatalf("Acquire = %v, want %v", err, errDown)
	}
	if _, err := p.Acquire(ctxFor(t, 5*time.Second)); !errors.Is(err, pool.ErrBackoff) {
		t.Fatalf("Acquire while backing off = %v, want ErrBackoff", err)
	}
	// Without retire, the back-off goes on.
	p.Reconfigure(pool.Config{Size: 3}, false)
	if _, err := p.Acquire(ctxFor(t, 5*time.Second)); !errors.Is(err, pool.ErrBackoff) {
		t.Fatalf("Acquire after Reconfigure without retire = %v, want ErrBackoff", err)
	}
	f.setHook(nil)
	p.Reconfigure(pool.Config{Size: 3, Dial: markedDial(f, "new")}, true)
	b := mustAcquire(t, p)
	if b.Params["dialer"] != "new" {
		t.Fatalf("backend of dialer %q", b.Params["dialer"])
	}
	if h := p.Health(); h.Failures != 0 || h.BackingOff || h.LastError == nil {
		t.Fatalf("health after a successful dial: %+v", h)
	}
	p.Release(b)
}

// Reconfigure keeps New's defaults for what it leaves out, and its new
// ConnectTimeout and Lifetime apply to later dials.
func TestReconfigureTimeouts(t *testing.T) {
	f := newFakeDB(t)
	p := newPool(t, f, pool.Config{Size: 2, Lifetime: time.Hour})
	a := mustAcquire(t, p)
	if d := a.ExpiresAt().Sub(a.CreatedAt); d < 54*time.Minute {
		t.Fatalf("lifetime %v", d)
	}
	hang := make(chan struct{})
	f.setHook(gatedHook(hang, true))
	p.Reconfigure(pool.Config{Size: 2, Lifetime: 0, ConnectTimeout: 50 * time.Millisecond}, false)
	if d := a.ExpiresAt().Sub(a.CreatedAt); d < 54*time.Minute {
		t.Fatalf("an open backend's expiry changed: %v", d)
	}
	start := time.Now()
	if _, err := p.Acquire(ctxFor(t, 10*time.Second)); !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, pool.ErrDial) {
		t.Fatalf("Acquire with a hanging dial = %v", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("the new ConnectTimeout did not apply: the dial took %v", took)
	}
	// ConnectTimeout 0 means the default (5s), not "expire at once"; Dial nil keeps
	// the dial function.
	pool.SetBackoff(t, time.Millisecond, time.Millisecond)
	f.setHook(nil)
	p.Reconfigure(pool.Config{Size: 2}, false)
	var b *pool.Backend
	pgtest.EventuallyTrue(t, 5*time.Second, "a dial with the default timeout", func() bool {
		var err error
		b, err = p.Acquire(ctxFor(t, 5*time.Second))
		return err == nil
	})
	if !b.ExpiresAt().IsZero() {
		t.Fatalf("backend dialed after Lifetime 0 expires at %v", b.ExpiresAt())
	}
	p.Release(a)
	p.Release(b)
}

// Reconfigure races Acquire and Release from many goroutines, with sizes going
// up and down and retiring now and then: no deadlock, no backend handed to two
// clients, Open never above the largest size, no backend of a retired
// generation handed out once its Reconfigure returned, and consistent figures
// at the end.
func TestReconfigureConcurrent(t *testing.T) {
	const (
		workers = 24
		cycles  = 150
	)
	sizes := []int{2, 6, 1, 4, 3, 7, 2, 5}
	maxSize := 7
	f := newFakeDB(t)
	// A retiring Reconfigure cancels the dials in flight; a fake TCP connect
	// canceled after the kernel connected would leave an orphan in the listener's
	// backlog and mismatch every later pair. Dials that ignore their context land
	// and are closed as retired instead.
	f.ignoreCtx.Store(true)

	var gen atomic.Int64 // the generation whose Reconfigure has returned
	dialFor := func(g int64) pool.DialFunc { return markedDial(f, strconv.FormatInt(g, 10)) }
	p := newPool(t, f, pool.Config{Size: sizes[0], Dial: dialFor(0)})

	var held holders
	var bad violations

	stop := make(chan struct{})
	var bg sync.WaitGroup
	reconfigs := atomic.Int64{}
	bg.Go(func() { // the reloader
		rng := rand.New(rand.NewPCG(1, 2))
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			size := sizes[i%len(sizes)]
			if rng.IntN(10) == 0 {
				g := gen.Load() + 1
				p.Reconfigure(pool.Config{Size: size, Dial: dialFor(g)}, true)
				gen.Store(g)
			} else {
				p.Reconfigure(pool.Config{Size: size}, false)
			}
			reconfigs.Add(1)
			time.Sleep(time.Duration(rng.IntN(300)) * time.Microsecond)
		}
	})
	sampled := sampleStats(p, maxSize, &bad, stop)

	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 9))
			for range cycles {
				g0 := gen.Load()
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				b, err := p.Acquire(ctx)
				cancel()
				if err != nil {
					bad.add("Acquire: %v", err)
					return
				}
				if g, _ := strconv.ParseInt(b.Params["dialer"], 10, 64); g < g0 {
					bad.add("backend %d of generation %d handed out after generation %d took over", b.PID, g, g0)
				}
				unhold := held.hold(b, b, &bad)
				if rng.IntN(3) == 0 {
					time.Sleep(time.Duration(rng.IntN(200)) * time.Microsecond)
				}
				unhold()
				if rng.IntN(30) == 0 {
					p.Destroy(b)
				} else {
					p.Release(b)
				}
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatalf("workers stuck (deadlock?): %+v", p.Stats())
	}
	close(stop)
	bg.Wait()
	<-sampled
	bad.check(t, "failures")

	p.Reconfigure(pool.Config{Size: 3}, false)
	pgtest.EventuallyTrue(t, 5*time.Second, "dials to settle", func() bool { return p.Stats().Dialing == 0 })
	s := p.Stats()
	if s.Size != 3 || s.Open > 3 || s.Idle != s.Open || s.InUse != 0 || s.Waiting != 0 {
		t.Fatalf("final stats: %+v", s)
	}
	if s.Acquires != workers*cycles {
		t.Fatalf("Acquires = %d, want %d", s.Acquires, workers*cycles)
	}
	if s.Retired > s.Closed {
		t.Fatalf("Retired %d > Closed %d", s.Retired, s.Closed)
	}
	checkAccounting(t, s)
	// Every idle backend works and is of the last generation.
	checkIdleWork(t, f, p, s.Idle, func(b *pool.Backend) {
		if g := b.Params["dialer"]; g != strconv.FormatInt(gen.Load(), 10) {
			t.Fatalf("idle backend of generation %s, want %d", g, gen.Load())
		}
	})
	t.Logf("%d reconfigurations (generation %d), stats %+v", reconfigs.Load(), gen.Load(), s)
}

// Registry.Reconfigure reaches every pool with the configuration of its key, and
// with retire ends the back-off kept for routes without a pool.
func TestRegistryReconfigure(t *testing.T) {
	pool.SetBackoff(t, time.Hour, time.Hour)
	f := newFakeDB(t)
	type conf struct {
		size int
		mark string
	}
	var cur atomic.Pointer[conf]
	cur.Store(&conf{size: 2, mark: "old"})
	cfgFor := func(k pool.Key) pool.Config {
		c := cur.Load()
		size := c.size
		if k.User == "big" {
			size *= 2
		}
		return pool.Config{Size: size, Dial: markedDial(f, c.mark)}
	}
	r := pool.NewRegistry(func(k pool.Key) *pool.Pool { return pool.New(cfgFor(k)) })
	t.Cleanup(r.Close)

	k1, k2 := pool.Key{Database: "d", User: "u"}, pool.Key{Database: "d", User: "big"}
	p1, p2 := r.Get(k1), r.Get(k2)
	b1 := mustAcquire(t, p1)
	b2 := mustAcquire(t, p2)
	p2.Release(b2)

	// A route whose login fails leaves only its back-off behind.
	kBad := pool.Key{Database: "bad", User: "u"}
	f.setHook(func(context.Context) error { return errDown })
	pb := r.Get(kBad)
	if _, err := pb.Acquire(ctxFor(t, 5*time.Second)); !errors.Is(err, errDown) {
		t.Fatalf("Acquire = %v", err)
	}
	if !r.DropUnproven(kBad, pb) || r.BackoffRoutes() != 1 {
		t.Fatalf("route not dropped with its back-off kept (%d)", r.BackoffRoutes())
	}
	if _, err := r.Get(kBad).Acquire(ctxFor(t, 5*time.Second)); !errors.Is(err, pool.ErrBackoff) {
		t.Fatalf("Acquire on the route's next pool = %v, want ErrBackoff", err)
	}
	if !r.DropUnproven(kBad, r.Get(kBad)) {
		t.Fatal("route not dropped")
	}
	f.setHook(nil)

	cur.Store(&conf{size: 5, mark: "new"}) // the factory first, then the pools
	r.Reconfigure(cfgFor, true)
	if s := p1.Stats(); s.Size != 5 || s.Open != 1 || s.InUse != 1 {
		t.Fatalf("pool 1 after Reconfigure: %+v", s)
	}
	if s := p2.Stats(); s.Size != 10 || s.Open != 0 || s.Retired != 1 {
		t.Fatalf("pool 2 after Reconfigure: %+v", s)
	}
	expectTerminated(t, f, b2.PID)
	if n := r.BackoffRoutes(); n != 0 {
		t.Fatalf("%d back-off states kept after retiring", n)
	}
	p1.Release(b1)
	expectTerminated(t, f, b1.PID)
	for _, k := range []pool.Key{k1, k2, kBad, {Database: "later", User: "u"}} {
		b := mustAcquire(t, r.Get(k))
		if b.Params["dialer"] != "new" {
			t.Fatalf("route %v: backend of dialer %q", k, b.Params["dialer"])
		}
		r.Get(k).Release(b)
	}
	if s := r.Get(pool.Key{Database: "later", User: "big"}).Stats(); s.Size != 10 {
		t.Fatalf("a pool created after Reconfigure has size %d, want 10", s.Size)
	}
}
