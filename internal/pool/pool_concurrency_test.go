package pool_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/pool"
)

// ---------------------------------------------------------------------------
// 12. Concurrency.

// checkIdleWork takes the n idle backends of p at once, checks that each works
// (and passes check, if not nil) and gives them back.
func checkIdleWork(t *testing.T, f *fakeDB, p *pool.Pool, n int, check func(b *pool.Backend)) {
	t.Helper()
	var got []*pool.Backend
	for range n {
		b, err := p.TryAcquire()
		if err != nil || b == nil {
			t.Fatalf("TryAcquire = %v, %v", b, err)
		}
		if check != nil {
			check(b)
		}
		checkWorks(t, f, b)
		got = append(got, b)
	}
	for _, b := range got {
		p.Release(b)
	}
}

// awaitGate is a dial hook's wait: until gate is closed, when the dial ends with
// result, or until the dial's context ends.
func awaitGate(ctx context.Context, gate <-chan struct{}, result error) error {
	select {
	case <-gate:
		return result
	case <-ctx.Done():
		return ctx.Err()
	}
}

// violations counts what went wrong in the goroutines of a concurrency test and
// keeps the first of it.
type violations struct {
	n     atomic.Int64
	first atomic.Pointer[string]
}

func (v *violations) add(format string, args ...any) {
	v.n.Add(1)
	s := fmt.Sprintf(format, args...)
	v.first.CompareAndSwap(nil, &s)
}

// check fails the test if anything went wrong: "<n> <what>; first: <message>".
func (v *violations) check(t *testing.T, what string) {
	t.Helper()
	if n := v.n.Load(); n > 0 {
		t.Fatalf("%d %s; first: %s", n, what, *v.first.Load())
	}
}

// holders knows which backends the workers hold, by a key of the backend.
type holders struct{ m sync.Map } // key -> *atomic.Bool: set while held

// hold marks b (known by key) held; a backend handed to two holders at once is
// a violation. It returns the release of the mark.
func (h *holders) hold(key any, b *pool.Backend, v *violations) (unhold func()) {
	flag, _ := h.m.LoadOrStore(key, new(atomic.Bool))
	if !flag.(*atomic.Bool).CompareAndSwap(false, true) {
		v.add("backend %d handed to two holders", b.PID)
	}
	return func() { flag.(*atomic.Bool).Store(false) }
}

// sampleStats checks p.Stats from its own goroutine, every 50µs until stop is
// closed: no count negative, at most maxOpen open, and idle + in use + dialing
// = open. Once stopped it sends the number of samples on the channel.
func sampleStats(p *pool.Pool, maxOpen int, v *violations, stop <-chan struct{}) <-chan int {
	sampled := make(chan int, 1)
	go func() {
		n := 0
		defer func() { sampled <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			s := p.Stats()
			n++
			if s.Open > maxOpen || s.Open < 0 || s.Idle < 0 || s.InUse < 0 || s.Dialing < 0 || s.Waiting < 0 {
				v.add("bad stats sample: %+v", s)
			}
			if s.Idle+s.InUse+s.Dialing != s.Open {
				v.add("inconsistent stats sample: %+v", s)
			}
			time.Sleep(50 * time.Microsecond)
		}
	}()
	return sampled
}

func TestConcurrentAcquireRelease(t *testing.T) {
	const (
		size    = 4
		workers = 50
		cycles  = 200
	)
	f := newFakeDB(t)
	p := newPool(t, f, pool.Config{Size: size})

	var held holders
	var bad violations
	stop := make(chan struct{})
	sampled := sampleStats(p, size, &bad, stop)

	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			for range cycles {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				b, err := p.Acquire(ctx)
				cancel()
				if err != nil {
					bad.add("Acquire: %v", err)
					return
				}
				unhold := held.hold(b.PID, b, &bad)
				switch rng.IntN(4) {
				case 0:
					time.Sleep(time.Duration(rng.IntN(100)) * time.Microsecond)
				case 1:
					runtime.Gosched()
				}
				unhold()
				p.Release(b)
			}
		})
	}
	wg.Wait()
	close(stop)
	if n := <-sampled; n == 0 {
		t.Error("Stats never sampled")
	}
	bad.check(t, "violations")
	s := p.Stats()
	if s.Idle != s.Open || s.InUse != 0 || s.Waiting != 0 || s.Dialing != 0 {
		t.Fatalf("not all backends idle at the end: %+v", s)
	}
	if s.Open < 1 || s.Open > size || s.Dials > size || s.Closed != 0 || s.DialFailures != 0 {
		t.Fatalf("stats: %+v", s)
	}
	if s.Acquires != workers*cycles {
		t.Fatalf("Acquires = %d, want %d", s.Acquires, workers*cycles)
	}
	checkAccounting(t, s)
}

// Concurrency with waiters giving up and backends being destroyed: no backend may be
// lost or handed out twice, and every slot must be accounted for at the end.
func TestConcurrentTimeoutsAndDestroys(t *testing.T) {
	const (
		size    = 3
		workers = 20
		cycles  = 200
	)
	f := newFakeDB(t)
	p := newPool(t, f, pool.Config{Size: size})
	var held holders
	var bad violations
	var ok, timedOut atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for range cycles {
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rng.IntN(2000))*time.Microsecond)
				b, err := p.Acquire(ctx)
				cancel()
				if err != nil {
					if !errors.Is(err, context.DeadlineExceeded) {
						bad.add("Acquire: %v", err)
						return
					}
					timedOut.Add(1)
					continue
				}
				ok.Add(1)
				unhold := held.hold(b.PID, b, &bad)
				if rng.IntN(3) == 0 {
					time.Sleep(time.Duration(rng.IntN(200)) * time.Microsecond)
				}
				unhold()
				if rng.IntN(20) == 0 {
					p.Destroy(b)
				} else {
					p.Release(b)
				}
			}
		})
	}
	wg.Wait()
	bad.check(t, "failures")
	// Dials started for waiters that left may still be landing.
	pgtest.EventuallyTrue(t, 5*time.Second, "dials to settle", func() bool { return p.Stats().Dialing == 0 })
	s := p.Stats()
	if s.Idle != s.Open || s.InUse != 0 || s.Waiting != 0 || s.Open > size {
		t.Fatalf("slots lost: %+v", s)
	}
	if s.Acquires != uint64(ok.Load()) {
		t.Fatalf("Acquires = %d, want %d", s.Acquires, ok.Load())
	}
	if s.WaitTimeouts > uint64(timedOut.Load()) {
		t.Fatalf("WaitTimeouts = %d > %d timed-out Acquire calls", s.WaitTimeouts, timedOut.Load())
	}
	checkAccounting(t, s)
	// Every idle backend still works.
	checkIdleWork(t, f, p, s.Idle, nil)
	t.Logf("%d acquired, %d timed out, stats %+v", ok.Load(), timedOut.Load(), s)
}
