package pool_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/pool"
)

// ---------------------------------------------------------------------------
// Odds and ends.

func TestServerParamsAndCancelAddr(t *testing.T) {
	f := newFakeDB(t)
	p := newPool(t, f, pool.Config{Size: 2})
	if m := p.ServerParams(); m != nil {
		t.Fatalf("ServerParams before any dial = %v, want nil", m)
	}
	a := mustAcquire(t, p)
	if m := p.ServerParams(); m["backend"] != strconv.Itoa(int(a.PID)) || m["server_version"] != "17.0" {
		t.Fatalf("ServerParams = %v", m)
	}
	b := mustAcquire(t, p)
	if m := p.ServerParams(); m["backend"] != strconv.Itoa(int(b.PID)) {
		t.Fatalf("ServerParams = %v, want those of the newest backend %d", m, b.PID)
	}
	if got, want := a.CancelAddr().String(), f.ln.Addr().String(); got != want {
		t.Fatalf("CancelAddr = %s, want %s", got, want)
	}
	p.Release(a)
	p.Release(b)
}

func TestBackendCloseSendsTerminate(t *testing.T) {
	f := newFakeDB(t)
	b, err := f.Dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if b.Pool() != nil {
		t.Fatal("a backend outside any pool reports a pool")
	}
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	expectTerminated(t, f, b.PID)
}

func TestServerError(t *testing.T) {
	pe := &pgconn.PgError{Code: "28P01", Message: "password authentication failed"}
	err := fmt.Errorf("%w: %w", pool.ErrDial, fmt.Errorf("connect: %w", pe))
	code, msg, ok := pool.ServerError(err)
	if !ok || code != "28P01" || msg != "password authentication failed" {
		t.Fatalf("ServerError = %q, %q, %v", code, msg, ok)
	}
	if code, msg, ok := pool.ServerError(fmt.Errorf("%w: %w", pool.ErrDial, errDown)); ok || code != "" || msg != "" {
		t.Fatalf("ServerError of a non-server error = %q, %q, %v", code, msg, ok)
	}
	if _, _, ok := pool.ServerError(nil); ok {
		t.Fatal("ServerError(nil) reported a server error")
	}
}

// AcquireWait gives up after its timeout (DeadlineExceeded) or when done is
// closed (Canceled), hands over a released backend, and allocates nothing on the
// way. Waits with different timeouts each end on time, whatever their order.
func TestAcquireWait(t *testing.T) {
	f := newFakeDB(t)
	p := newPool(t, f, pool.Config{Size: 1})
	a := mustAcquire(t, p)

	start := time.Now()
	if b, err := p.AcquireWait(50*time.Millisecond, nil); !errors.Is(err, context.DeadlineExceeded) || b != nil {
		t.Fatalf("AcquireWait on a full pool with a timeout = %v, %v; want DeadlineExceeded", b, err)
	}
	if took := time.Since(start); took < 50*time.Millisecond || took > 5*time.Second {
		t.Fatalf("AcquireWait(50ms) gave up after %v", took)
	}
	done := make(chan struct{})
	close(done)
	if b, err := p.AcquireWait(time.Hour, done); !errors.Is(err, context.Canceled) || b != nil {
		t.Fatalf("AcquireWait with done closed = %v, %v; want Canceled", b, err)
	}
	if s := p.Stats(); s.WaitTimeouts != 2 || s.Waiting != 0 {
		t.Fatalf("stats after two give-ups: %+v", s)
	}

	// A long wait queued first does not hold up the expiry of shorter ones behind
	// it, and outlives them.
	long, cancelLong := make(chan error, 1), make(chan struct{})
	go func() {
		_, err := p.AcquireWait(time.Hour, cancelLong)
		long <- err
	}()
	pgtest.EventuallyTrue(t, 5*time.Second, "the long waiter", func() bool { return p.Stats().Waiting == 1 })
	type res struct {
		d    time.Duration
		took time.Duration
		err  error
	}
	short := make(chan res, 3)
	for _, d := range []time.Duration{300 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond} {
		go func() {
			s := time.Now()
			_, err := p.AcquireWait(d, nil)
			short <- res{d, time.Since(s), err}
		}()
	}
	for range 3 {
		r := <-short
		if !errors.Is(r.err, context.DeadlineExceeded) || r.took < r.d || r.took > r.d+3*time.Second {
			t.Fatalf("AcquireWait(%v) = %v after %v", r.d, r.err, r.took)
		}
	}
	if s := p.Stats(); s.Waiting != 1 || s.WaitTimeouts != 5 {
		t.Fatalf("after the short waits expired: %d waiting, %d timeouts; want 1 and 5", s.Waiting, s.WaitTimeouts)
	}
	select {
	case err := <-long:
		t.Fatalf("the long wait ended early: %v", err)
	default:
	}
	close(cancelLong)
	if err := <-long; !errors.Is(err, context.Canceled) {
		t.Fatalf("the long wait = %v, want Canceled", err)
	}

	got := make(chan *pool.Backend, 1)
	go func() {
		b, err := p.AcquireWait(10*time.Second, nil)
		if err != nil {
			t.Errorf("AcquireWait: %v", err)
		}
		got <- b
	}()
	pgtest.EventuallyTrue(t, 5*time.Second, "a waiter", func() bool { return p.Stats().Waiting == 1 })
	p.Release(a)
	b := <-got
	if b != a {
		t.Fatalf("waiter got %v, want the released backend %v", b, a)
	}

	// A wait that gets a backend at once allocates nothing (the proxy's hot path).
	p.Release(b)
	allocs := testing.AllocsPerRun(100, func() {
		b, err := p.AcquireWait(time.Hour, nil)
		if err != nil {
			t.Fatal(err)
		}
		p.Release(b)
	})
	if allocs != 0 {
		t.Errorf("AcquireWait + Release allocated %v times per run, want 0", allocs)
	}
}

// A client gets an idle backend whose state matches its own when one is among
// the most recently released; a released backend goes to a waiter that prefers
// its state, but a waiter is passed over at most twice.
func TestAcquirePrefer(t *testing.T) {
	f := newFakeDB(t)
	p := newPool(t, f, pool.Config{Size: 2})
	a, b := mustAcquire(t, p), mustAcquire(t, p)
	a.StateKey, b.StateKey = 1, 2
	p.Release(a)
	p.Release(b) // most recently released: b
	got, err := p.TryAcquirePrefer(1)
	if err != nil || got != a {
		t.Fatalf("TryAcquirePrefer(1) = %v, %v; want the backend with state 1", got, err)
	}
	got2, _ := p.TryAcquirePrefer(7)
	if got2 != b {
		t.Fatalf("TryAcquirePrefer(7) = %v; want the only idle backend", got2)
	}

	// Waiters: w0 prefers 0, then four that prefer 1. Backend a (state 1) is
	// released again and again: w0 may be passed over twice, then it is served.
	p.Release(got2) // leaves one backend (a) in use, one idle: take the idle one away
	hold := mustAcquire(t, p)
	order := make(chan int, 5)
	start := func(who int, key uint64) {
		go func() {
			be, err := p.AcquirePrefer(key, 10*time.Second, nil, nil)
			if err != nil {
				t.Errorf("waiter %d: %v", who, err)
				order <- -1
				return
			}
			order <- who
			be.StateKey = 1
			p.Release(be)
		}()
	}
	start(0, 0)
	pgtest.EventuallyTrue(t, 5*time.Second, "waiter 0 queued", func() bool { return p.Stats().Waiting == 1 })
	for i := 1; i <= 4; i++ {
		start(i, 1)
		pgtest.EventuallyTrue(t, 5*time.Second, "waiter queued", func() bool { return p.Stats().Waiting == i+1 })
	}
	got.StateKey = 1
	p.Release(got)
	var seq []int
	for range 5 {
		seq = append(seq, <-order)
	}
	// 1 and 2 jump ahead of 0 (twice), then 0 must be next.
	if seq[0] != 1 || seq[1] != 2 || seq[2] != 0 {
		t.Fatalf("service order %v, want 1, 2, then 0 (passed over at most twice)", seq)
	}
	p.Release(hold)
}
