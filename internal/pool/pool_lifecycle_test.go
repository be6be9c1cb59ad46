package pool_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/pool"
)

// ---------------------------------------------------------------------------
// 6. Dead idle backends are replaced without error.

func TestDeadIdleBackendReplaced(t *testing.T) {
	for _, tc := range []struct {
		name string
		kill func(s net.Conn)
	}{
		{"server closed", func(s net.Conn) { s.Close() }},
		// An idle backend only speaks to say it is terminating.
		{"unexpected data", func(s net.Conn) { _, _ = s.Write([]byte{'E'}) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeDB(t)
			p := newPool(t, f, pool.Config{Size: 2})
			a := mustAcquire(t, p)
			pidA := a.PID
			p.Release(a)
			released := time.Now()
			tc.kill(f.server(pidA))
			for time.Since(released) < 3*pool.IdleCheckAfter {
				time.Sleep(time.Millisecond)
			}
			b, err := p.Acquire(ctxFor(t, 5*time.Second))
			if err != nil {
				t.Fatalf("Acquire with a dead idle backend: %v", err)
			}
			if b == a || b.PID == pidA {
				t.Fatalf("Acquire handed out the dead backend %d", pidA)
			}
			checkWorks(t, f, b)
			s := p.Stats()
			if s.Closed != 1 || s.Dials != 2 || s.Open != 1 || s.InUse != 1 || s.Idle != 0 {
				t.Fatalf("stats: %+v", s)
			}
			checkAccounting(t, s)
			// The dead backend's connection was closed on our side too.
			if _, err := a.Conn.Write([]byte{0}); !errors.Is(err, net.ErrClosed) {
				t.Errorf("write to the discarded backend: %v, want net.ErrClosed", err)
			}
			p.Release(b)
		})
	}
}

// ---------------------------------------------------------------------------
// 7. Lifetime.

func TestLifetimeJitter(t *testing.T) {
	const n = 100
	const life = 50 * time.Millisecond
	f := newFakeDB(t)
	p := newPool(t, f, pool.Config{Size: n, Lifetime: life})
	held := make([]*pool.Backend, 0, n)
	lo, hi := time.Duration(1<<62), time.Duration(0)
	for range n {
		b := mustAcquire(t, p)
		held = append(held, b)
		if b.ExpiresAt().IsZero() {
			t.Fatalf("backend %d has no expiry with Lifetime %v", b.PID, life)
		}
		d := b.ExpiresAt().Sub(b.CreatedAt)
		if d < life*9/10 || d > life*11/10 {
			t.Fatalf("backend %d expires %v after creation, want within [%v, %v]", b.PID, d, life*9/10, life*11/10)
		}
		lo, hi = min(lo, d), max(hi, d)
	}
	// 100 uniform draws over [45ms, 55ms]: all landing in one 8ms window is
	// practically impossible unless the jitter is missing.
	if lo > 47*time.Millisecond || hi < 53*time.Millisecond {
		t.Fatalf("expiries span only [%v, %v]: no jitter?", lo, hi)
	}
	for _, b := range held {
		p.Release(b)
	}

	// No lifetime, no expiry.
	p0 := newPool(t, f, pool.Config{Size: 1})
	b := mustAcquire(t, p0)
	if !b.ExpiresAt().IsZero() {
		t.Fatalf("ExpiresAt = %v with Lifetime 0", b.ExpiresAt())
	}
	p0.Release(b)
}

// acquireFresh acquires a backend and releases it while it is still within its
// lifetime, so that it lands on the idle stack.
func releaseFresh(t *testing.T, p *pool.Pool, b *pool.Backend) {
	t.Helper()
	if time.Now().After(b.ExpiresAt().Add(-5 * time.Millisecond)) {
		t.Skip("machine too slow: backend expired before the test could release it")
	}
	p.Release(b)
}

func TestLifetimeExpiredNotHandedOut(t *testing.T) {
	f := newFakeDB(t)
	p := newPool(t, f, pool.Config{Size: 1, Lifetime: 50 * time.Millisecond})
	a := mustAcquire(t, p)
	releaseFresh(t, p, a)
	if s := p.Stats(); s.Idle != 1 {
		t.Fatalf("stats after release: %+v", s)
	}
	for !time.Now().After(a.ExpiresAt()) {
		time.Sleep(time.Millisecond)
	}
	if b, err := p.TryAcquire(); b != nil || err != nil {
		t.Fatalf("TryAcquire after expiry = %v, %v; want nil, nil", b, err)
	}
	s := p.Stats()
	if s.Closed != 1 || s.Open != 0 || s.Idle != 0 {
		t.Fatalf("stats: %+v", s)
	}
	expectTerminated(t, f, a.PID)
	b := mustAcquire(t, p)
	if b.PID == a.PID {
		t.Fatal("Acquire handed out the expired backend")
	}
	p.Release(b)
}

func TestLifetimeExpiredOnRelease(t *testing.T) {
	f := newFakeDB(t)
	p := newPool(t, f, pool.Config{Size: 1, Lifetime: 50 * time.Millisecond})
	a := mustAcquire(t, p)
	ch := make(chan acq, 1)
	acquireAsync(p, ctxFor(t, 10*time.Second), 0, ch)
	pgtest.EventuallyTrue(t, 2*time.Second, "a waiter", func() bool { return p.Stats().Waiting == 1 })
	for !time.Now().After(a.ExpiresAt()) {
		time.Sleep(time.Millisecond)
	}
	p.Release(a) // expired: closed, and the waiter gets a fresh dial
	r := recv(t, ch, 2*time.Second)
	if r.err != nil || r.b == a || r.b.PID == a.PID {
		t.Fatalf("waiter got %v, %v; want a new backend", r.b, r.err)
	}
	expectTerminated(t, f, a.PID)
	s := p.Stats()
	if s.Closed != 1 || s.Dials != 2 || s.Open != 1 || s.InUse != 1 {
		t.Fatalf("stats: %+v", s)
	}
	checkWorks(t, f, r.b)
	p.Release(r.b)
}

func TestLifetimeReapedByMaintenance(t *testing.T) {
	f := newFakeDB(t)
	p := newPool(t, f, pool.Config{Size: 2, Lifetime: 50 * time.Millisecond})
	a, b := mustAcquire(t, p), mustAcquire(t, p)
	releaseFresh(t, p, a)
	releaseFresh(t, p, b)
	if s := p.Stats(); s.Idle != 2 {
		t.Fatalf("stats after release: %+v", s)
	}
	pgtest.EventuallyTrue(t, 3*time.Second, "the maintenance loop to close expired backends", func() bool { return p.Stats().Open == 0 })
	s := p.Stats()
	if s.Closed != 2 || s.Idle != 0 {
		t.Fatalf("stats: %+v", s)
	}
	expectTerminated(t, f, a.PID)
	expectTerminated(t, f, b.PID)
}

// ---------------------------------------------------------------------------
// 8. Idle timeout.

func TestIdleTimeout(t *testing.T) {
	f := newFakeDB(t)
	p := newPool(t, f, pool.Config{Size: 3, IdleTimeout: 100 * time.Millisecond})
	a, b, c := mustAcquire(t, p), mustAcquire(t, p), mustAcquire(t, p)
	p.Release(a)
	p.Release(b)
	// c stays in use: the idle timeout must not touch it.
	pgtest.EventuallyTrue(t, 3*time.Second, "idle backends to be closed", func() bool { s := p.Stats(); return s.Idle == 0 && s.Open == 1 })
	s := p.Stats()
	if s.Closed != 2 || s.InUse != 1 {
		t.Fatalf("stats: %+v", s)
	}
	expectTerminated(t, f, a.PID)
	expectTerminated(t, f, b.PID)
	checkWorks(t, f, c)
	p.Release(c)
	pgtest.EventuallyTrue(t, 3*time.Second, "Open to drop to 0", func() bool { return p.Stats().Open == 0 })
	if s := p.Stats(); s.Closed != 3 {
		t.Fatalf("stats: %+v", s)
	}
	expectTerminated(t, f, c.PID)
}

// reap itself, driven with a fake clock.
func TestReap(t *testing.T) {
	f := newFakeDB(t)
	t.Run("nothing to do without limits", func(t *testing.T) {
		p := newPool(t, f, pool.Config{Size: 2})
		a, b := mustAcquire(t, p), mustAcquire(t, p)
		p.Release(a)
		p.Release(b)
		p.Reap(time.Now().Add(1000 * time.Hour))
		if s := p.Stats(); s.Idle != 2 || s.Closed != 0 {
			t.Fatalf("stats: %+v", s)
		}
	})
	t.Run("idle timeout keeps the fresh ones", func(t *testing.T) {
		p := newPool(t, f, pool.Config{Size: 3, IdleTimeout: time.Hour})
		a, b, c := mustAcquire(t, p), mustAcquire(t, p), mustAcquire(t, p)
		p.Release(a)
		p.Release(b)
		p.Reap(time.Now().Add(time.Hour + time.Minute)) // a and b idle past the timeout
		if s := p.Stats(); s.Idle != 0 || s.Open != 1 || s.Closed != 2 {
			t.Fatalf("stats: %+v", s)
		}
		p.Release(c)
		p.Reap(time.Now().Add(time.Minute))
		if s := p.Stats(); s.Idle != 1 || s.Closed != 2 {
			t.Fatalf("fresh idle backend reaped: %+v", s)
		}
		if got := mustAcquire(t, p); got != c {
			t.Fatalf("got %d, want %d", got.PID, c.PID)
		}
		p.Release(c)
	})
	t.Run("lifetime", func(t *testing.T) {
		p := newPool(t, f, pool.Config{Size: 2, Lifetime: time.Hour})
		a, b := mustAcquire(t, p), mustAcquire(t, p)
		p.Release(b)
		p.Release(a)
		p.Reap(time.Now().Add(30 * time.Minute))
		if s := p.Stats(); s.Idle != 2 {
			t.Fatalf("stats: %+v", s)
		}
		p.Reap(time.Now().Add(2 * time.Hour))
		if s := p.Stats(); s.Idle != 0 || s.Open != 0 || s.Closed != 2 {
			t.Fatalf("stats: %+v", s)
		}
	})
}

// ---------------------------------------------------------------------------
// 9. Close.

func TestCloseWithWaitersAndHeldBackends(t *testing.T) {
	f := newFakeDB(t)
	p := newPool(t, f, pool.Config{Size: 2})
	a, b := mustAcquire(t, p), mustAcquire(t, p)
	got := make(chan acq, 2)
	ctx := ctxFor(t, 10*time.Second)
	for i := range 2 {
		acquireAsync(p, ctx, i, got)
		pgtest.EventuallyTrue(t, 2*time.Second, "waiters", func() bool { return p.Stats().Waiting == i+1 })
	}
	closeWithin(t, p, 2*time.Second)
	for range 2 {
		r := recv(t, got, 2*time.Second)
		if r.b != nil || !errors.Is(r.err, pool.ErrClosed) {
			t.Fatalf("waiter %d = %v, %v; want ErrClosed", r.i, r.b, r.err)
		}
		if r.elapsed > 5*time.Second {
			t.Fatalf("waiter %d took %v", r.i, r.elapsed)
		}
	}
	if x, err := p.Acquire(ctx); x != nil || !errors.Is(err, pool.ErrClosed) {
		t.Fatalf("Acquire after Close = %v, %v; want ErrClosed", x, err)
	}
	if x, err := p.TryAcquire(); x != nil || !errors.Is(err, pool.ErrClosed) {
		t.Fatalf("TryAcquire after Close = %v, %v; want ErrClosed", x, err)
	}
	s := p.Stats()
	if s.Open != 2 || s.InUse != 2 || s.Waiting != 0 {
		t.Fatalf("stats after Close with held backends: %+v", s)
	}
	// Held backends are closed when they come back.
	p.Release(a)
	expectTerminated(t, f, a.PID)
	if s := p.Stats(); s.Open != 1 || s.Idle != 0 || s.Closed != 1 {
		t.Fatalf("stats after Release: %+v", s)
	}
	p.Destroy(b)
	expectTerminated(t, f, b.PID)
	if s := p.Stats(); s.Open != 0 || s.Closed != 2 {
		t.Fatalf("stats after Destroy: %+v", s)
	}
	if n := f.calls.Load(); n != 2 {
		t.Fatalf("%d dials, want 2 (nothing dials after Close)", n)
	}
	closeWithin(t, p, time.Second) // idempotent
}

func TestCloseClosesIdle(t *testing.T) {
	f := newFakeDB(t)
	p := newPool(t, f, pool.Config{Size: 2})
	a, b := mustAcquire(t, p), mustAcquire(t, p)
	p.Release(a)
	p.Release(b)
	closeWithin(t, p, 2*time.Second)
	if s := p.Stats(); s.Open != 0 || s.Idle != 0 || s.Closed != 2 {
		t.Fatalf("stats: %+v", s)
	}
	expectTerminated(t, f, a.PID)
	expectTerminated(t, f, b.PID)
}

// Close abandons a dial in flight by canceling its context.
func TestCloseAbandonsDial(t *testing.T) {
	f := newFakeDB(t)
	f.setHook(func(ctx context.Context) error {
		<-ctx.Done()
		return ctx.Err()
	})
	p := newPool(t, f, pool.Config{Size: 1, ConnectTimeout: time.Minute})
	ch := make(chan acq, 1)
	acquireAsync(p, ctxFor(t, time.Minute), 0, ch)
	pgtest.EventuallyTrue(t, 2*time.Second, "a dial in flight", func() bool { return p.Stats().Dialing == 1 })
	closeWithin(t, p, 2*time.Second)
	if n := f.inflight.Load(); n != 0 {
		t.Fatalf("%d dials still running after Close returned", n)
	}
	r := recv(t, ch, 2*time.Second)
	if !errors.Is(r.err, pool.ErrClosed) {
		t.Fatalf("waiter = %v, %v; want ErrClosed", r.b, r.err)
	}
	if s := p.Stats(); s.Open != 0 || s.Dialing != 0 {
		t.Fatalf("stats: %+v", s)
	}
}

// Close waits for a dial that ignores its context; the backend it brings is closed.
func TestCloseWaitsForDialAndClosesLateBackend(t *testing.T) {
	f := newFakeDB(t)
	gate := make(chan struct{})
	var once sync.Once
	open := func() { once.Do(func() { close(gate) }) }
	f.setHook(func(ctx context.Context) error { <-gate; return nil })
	f.ignoreCtx.Store(true)
	p := newPool(t, f, pool.Config{Size: 1})
	t.Cleanup(open) // runs before the pool's Close if the test fails early
	ch := make(chan acq, 1)
	acquireAsync(p, ctxFor(t, time.Minute), 0, ch)
	pgtest.EventuallyTrue(t, 2*time.Second, "a dial in flight", func() bool { return p.Stats().Dialing == 1 })
	closed := make(chan struct{})
	go func() {
		p.Close()
		close(closed)
	}()
	r := recv(t, ch, 2*time.Second) // the waiter is told at once
	if !errors.Is(r.err, pool.ErrClosed) {
		t.Fatalf("waiter = %v, %v; want ErrClosed", r.b, r.err)
	}
	select {
	case <-closed:
		t.Fatal("Close returned while a dial was still running")
	case <-time.After(50 * time.Millisecond):
	}
	open()
	pgtest.Recv(t, closed, 2*time.Second, "Close did not return after the dial ended")
	expectTerminated(t, f, 1)
	s := p.Stats()
	if s.Open != 0 || s.Dialing != 0 || s.Idle != 0 || s.Dials != 1 {
		t.Fatalf("stats: %+v", s)
	}
	checkAccounting(t, s)
}

// ---------------------------------------------------------------------------
// 10. Registry.

func TestRegistry(t *testing.T) {
	f := newFakeDB(t)
	var made atomic.Int64
	var mu sync.Mutex
	var all []*pool.Pool
	r := pool.NewRegistry(func(k pool.Key) *pool.Pool {
		made.Add(1)
		p := pool.New(pool.Config{Size: 1, Dial: f.Dial})
		mu.Lock()
		all = append(all, p)
		mu.Unlock()
		return p
	})
	closed := false
	t.Cleanup(func() {
		if !closed {
			r.Close()
		}
	})

	k1 := pool.Key{Database: "b", User: "x"}
	p1 := r.Get(k1)
	if p1 == nil || r.Get(k1) != p1 || r.Get(pool.Key{Database: "b", User: "x"}) != p1 {
		t.Fatal("Get does not return the same pool for the same key")
	}
	keys := []pool.Key{{"a", "z"}, {"c", "a"}, {"a", "y"}, {"b", "w"}}
	for _, k := range keys {
		if p := r.Get(k); p == nil || p == p1 {
			t.Fatalf("Get(%v) = %p, want a new pool", k, p)
		}
	}
	if n := made.Load(); n != 5 {
		t.Fatalf("newPool called %d times, want 5", n)
	}
	// Concurrent first use of a key creates one pool.
	kc := pool.Key{Database: "conc", User: "u"}
	var wg sync.WaitGroup
	res := make([]*pool.Pool, 20)
	for i := range res {
		wg.Go(func() { res[i] = r.Get(kc) })
	}
	wg.Wait()
	for _, p := range res {
		if p == nil || p != res[0] {
			t.Fatal("concurrent Get returned different pools for one key")
		}
	}
	if n := made.Load(); n != 6 {
		t.Fatalf("newPool called %d times, want 6", n)
	}

	routes := r.Pools()
	want := []pool.Key{{"a", "y"}, {"a", "z"}, {"b", "w"}, {"b", "x"}, {"c", "a"}, {"conc", "u"}}
	if len(routes) != len(want) {
		t.Fatalf("Pools() has %d routes, want %d", len(routes), len(want))
	}
	for i, rt := range routes {
		if rt.Key != want[i] {
			t.Fatalf("Pools()[%d].Key = %v, want %v (sorted by database, then user)", i, rt.Key, want[i])
		}
		if rt.Pool != r.Get(rt.Key) {
			t.Fatalf("Pools()[%d].Pool is not the pool Get returns", i)
		}
	}

	b := mustAcquire(t, p1)
	p1.Release(b)

	closed = true
	done := make(chan struct{})
	go func() { r.Close(); close(done) }()
	pgtest.Recv(t, done, 5*time.Second, "Registry.Close did not return")
	expectTerminated(t, f, b.PID)
	for i, p := range all {
		if _, err := p.TryAcquire(); !errors.Is(err, pool.ErrClosed) {
			t.Fatalf("pool %d not closed by Registry.Close: %v", i, err)
		}
	}
	if p := r.Get(k1); p != nil {
		t.Fatal("Get after Close returned a pool")
	}
	if p := r.Get(pool.Key{Database: "new", User: "u"}); p != nil {
		t.Fatal("Get of a new key after Close returned a pool")
	}
	if n := made.Load(); n != 6 {
		t.Fatalf("newPool called after Close (%d calls)", n)
	}
	if n := len(r.Pools()); n != 0 {
		t.Fatalf("Pools() after Close has %d routes", n)
	}
	r.Close() // idempotent
}

// ---------------------------------------------------------------------------
// 11. Destroy.

func TestDestroyWithWaiterDials(t *testing.T) {
	f := newFakeDB(t)
	p := newPool(t, f, pool.Config{Size: 1})
	a := mustAcquire(t, p)
	ch := make(chan acq, 1)
	acquireAsync(p, ctxFor(t, 10*time.Second), 0, ch)
	pgtest.EventuallyTrue(t, 2*time.Second, "a waiter", func() bool { return p.Stats().Waiting == 1 })
	if s := p.Stats(); s.Dialing != 0 || f.calls.Load() != 1 {
		t.Fatalf("a full pool dialed for a waiter: %+v", s)
	}
	p.Destroy(a)
	r := recv(t, ch, 2*time.Second)
	if r.err != nil || r.b == a || r.b.PID == a.PID {
		t.Fatalf("waiter got %v, %v; want a newly dialed backend", r.b, r.err)
	}
	checkWorks(t, f, r.b)
	expectTerminated(t, f, a.PID)
	s := p.Stats()
	if f.calls.Load() != 2 || s.Dials != 2 || s.Closed != 1 || s.Open != 1 || s.InUse != 1 || s.Waiting != 0 {
		t.Fatalf("stats: %+v", s)
	}
	checkAccounting(t, s)

	// Without waiters, Destroy only frees the slot.
	p.Destroy(r.b)
	if s := p.Stats(); s.Open != 0 || s.Closed != 2 || s.Dialing != 0 || f.calls.Load() != 2 {
		t.Fatalf("stats after Destroy without waiters: %+v", s)
	}
}
