package pool_test

import (
	"sync"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/pool"
)

// fakeBudget grants slots up to free; over is what Over reports.
type fakeBudget struct {
	mu         sync.Mutex
	free, used int
	over       int
	user       pool.BudgetUser
}

func (b *fakeBudget) Take(u pool.BudgetUser) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used < b.free {
		b.used++
		return true
	}
	b.user = u
	return false
}

func (b *fakeBudget) Give(n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= n
}

func (b *fakeBudget) Over() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.over
}

// grant adds a slot and wakes the pool, as a fleet share does.
func (b *fakeBudget) grant() {
	b.mu.Lock()
	b.free++
	u := b.user
	b.user = nil
	b.mu.Unlock()
	if u != nil {
		u.Wake()
	}
}

func (b *fakeBudget) state() (used, free int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used, b.free
}

// With a Budget the pool opens a backend only with a slot, below its Size:
// a waiter beyond the slots waits (no dial) until the budget grants one and
// wakes the pool; every closed backend gives its slot back; while the budget
// reports the pool over, a released backend is closed instead of kept, and
// the idle ones go at the next maintenance pass.
func TestBudget(t *testing.T) {
	f := newFakeDB(t)
	bud := &fakeBudget{free: 1}
	p := newPool(t, f, pool.Config{Size: 3, Budget: bud})
	a := mustAcquire(t, p)
	ch := make(chan acq, 1)
	acquireAsync(p, ctxFor(t, 10*time.Second), 2, ch)
	pgtest.EventuallyTrue(t, 2*time.Second, "the second Acquire to queue", func() bool { return p.Stats().Waiting == 1 })
	noRecv(t, ch, 50*time.Millisecond)
	bud.mu.Lock()
	u := bud.user
	bud.mu.Unlock()
	if u == nil || !u.Wanting() {
		t.Fatal("the refused pool is not Wanting")
	}
	if n := f.calls.Load(); n != 1 {
		t.Fatalf("%d dials with one slot, want 1", n)
	}
	if s := p.Stats(); s.BudgetWaits == 0 {
		t.Errorf("BudgetWaits = 0 after a refused slot")
	}
	bud.grant()
	r := recv(t, ch, 2*time.Second)
	if r.err != nil {
		t.Fatalf("Acquire after the grant: %v", r.err)
	}
	if used, _ := bud.state(); used != 2 || f.calls.Load() != 2 {
		t.Fatalf("after the grant: %d slots used, %d dials; want 2, 2", used, f.calls.Load())
	}
	if u.Wanting() {
		t.Error("Wanting with no client waiting")
	}

	// Over: the released backend is closed and its slot given back.
	bud.mu.Lock()
	bud.over = 1
	bud.mu.Unlock()
	p.Release(r.b)
	if s := p.Stats(); s.Open != 1 || s.BudgetClosed != 1 {
		t.Fatalf("release while over: open %d, BudgetClosed %d; want 1, 1", s.Open, s.BudgetClosed)
	}
	if used, _ := bud.state(); used != 1 {
		t.Fatalf("slots used after the close: %d, want 1", used)
	}
	// Not over: the next one is kept idle; over again: the idle one goes at
	// the next maintenance pass (once a second).
	bud.mu.Lock()
	bud.over = 0
	bud.mu.Unlock()
	p.Release(a)
	if s := p.Stats(); s.Idle != 1 {
		t.Fatalf("idle after release: %d, want 1", s.Idle)
	}
	bud.mu.Lock()
	bud.over = 1
	bud.mu.Unlock()
	pgtest.EventuallyTrue(t, 3*time.Second, "the idle backend closed while over", func() bool { return p.Stats().Open == 0 })
	if used, _ := bud.state(); used != 0 {
		t.Fatalf("slots used with nothing open: %d", used)
	}
}
