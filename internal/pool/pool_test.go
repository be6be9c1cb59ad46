package pool_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/pool"
)

// ---------------------------------------------------------------------------
// Test harness: a fake database whose "connections" are loopback TCP pairs, so
// that the pool's liveness check peeks at a real socket.

type fakeDB struct {
	t  *testing.T
	ln net.Listener

	dialMu sync.Mutex // serializes dial+accept so that both ends match

	mu      sync.Mutex
	servers map[uint32]net.Conn // server end by backend PID
	hook    func(ctx context.Context) error

	ignoreCtx atomic.Bool // connect even if the dial's context is done

	pids     atomic.Uint32
	calls    atomic.Int64 // Dial calls
	inflight atomic.Int64 // Dial calls not yet returned
}

// newFakeDB starts the fake database. It also installs (first, so that it runs
// last) a check that the test leaves no goroutine behind.
func newFakeDB(t *testing.T) *fakeDB {
	t.Helper()
	checkNoGoroutineLeak(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeDB{t: t, ln: ln, servers: make(map[uint32]net.Conn)}
	t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, c := range f.servers {
			c.Close()
		}
	})
	return f
}

// setHook installs a function run at the start of every Dial; a non-nil error
// fails the dial. It may block (it should honour ctx).
func (f *fakeDB) setHook(h func(ctx context.Context) error) {
	f.mu.Lock()
	f.hook = h
	f.mu.Unlock()
}

func (f *fakeDB) Dial(ctx context.Context) (*pool.Backend, error) {
	f.calls.Add(1)
	f.inflight.Add(1)
	defer f.inflight.Add(-1)
	f.mu.Lock()
	h := f.hook
	f.mu.Unlock()
	if h != nil {
		if err := h(ctx); err != nil {
			return nil, err
		}
	}
	f.dialMu.Lock()
	defer f.dialMu.Unlock()
	if f.ignoreCtx.Load() {
		ctx = context.Background()
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", f.ln.Addr().String())
	if err != nil {
		return nil, err
	}
	s, err := f.ln.Accept()
	if err != nil {
		c.Close()
		return nil, err
	}
	if s.RemoteAddr().String() != c.LocalAddr().String() {
		c.Close()
		s.Close()
		return nil, fmt.Errorf("fakeDB: mismatched pair %v / %v", s.RemoteAddr(), c.LocalAddr())
	}
	pid := f.pids.Add(1)
	f.mu.Lock()
	f.servers[pid] = s
	f.mu.Unlock()
	params := map[string]string{"server_version": "17.0", "backend": strconv.Itoa(int(pid))}
	return pool.NewBackend(c, pid, []byte{byte(pid), 2, 3, 4}, params), nil
}

// server returns the server end of the backend with the given PID.
func (f *fakeDB) server(pid uint32) net.Conn {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.servers[pid]
	if s == nil {
		f.t.Fatalf("no server end for pid %d", pid)
	}
	return s
}

// newPool creates a pool dialing f (unless cfg.Dial is set) and closes it at the
// end of the test, checking that Close returns and that no dial is left running.
func newPool(t *testing.T, f *fakeDB, cfg pool.Config) *pool.Pool {
	t.Helper()
	if cfg.Dial == nil {
		cfg.Dial = f.Dial
	}
	p := pool.New(cfg)
	t.Cleanup(func() {
		closeWithin(t, p, 5*time.Second)
		if n := f.inflight.Load(); n != 0 {
			t.Errorf("%d dials still running after Close", n)
		}
	})
	return p
}

func closeWithin(t *testing.T, p *pool.Pool, d time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		p.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Errorf("Close did not return within %v", d)
	}
}

func checkNoGoroutineLeak(t *testing.T) {
	base := runtime.NumGoroutine()
	t.Cleanup(func() {
		err := pgtest.Poll(3*time.Second, func() error {
			if n := runtime.NumGoroutine(); n > base {
				return fmt.Errorf("%d goroutines at the end, %d at the start", n, base)
			}
			return nil
		})
		if err != nil {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Errorf("goroutine leak: %v\n%s", err, buf)
		}
	})
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func mustAcquire(t *testing.T, p *pool.Pool) *pool.Backend {
	t.Helper()
	b, err := p.Acquire(ctxFor(t, 5*time.Second))
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if b == nil {
		t.Fatal("Acquire returned a nil backend and no error")
	}
	if b.Pool() != p {
		t.Fatalf("backend belongs to %p, want %p", b.Pool(), p)
	}
	return b
}

type acq struct {
	i       int
	b       *pool.Backend
	err     error
	elapsed time.Duration
}

func acquireAsync(p *pool.Pool, ctx context.Context, i int, out chan<- acq) {
	go func() {
		start := time.Now()
		b, err := p.Acquire(ctx)
		out <- acq{i: i, b: b, err: err, elapsed: time.Since(start)}
	}()
}

func recv(t *testing.T, ch <-chan acq, d time.Duration) acq {
	t.Helper()
	return pgtest.Recv(t, ch, d, fmt.Sprintf("no Acquire result within %v", d))
}

func noRecv(t *testing.T, ch <-chan acq, d time.Duration) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("Acquire returned unexpectedly: backend %v, err %v", r.b, r.err)
	case <-time.After(d):
	}
}

// checkWorks exchanges bytes both ways between b and its server end.
func checkWorks(t *testing.T, f *fakeDB, b *pool.Backend) {
	t.Helper()
	s := f.server(b.PID)
	_ = s.SetDeadline(time.Now().Add(2 * time.Second))
	_ = b.Conn.SetDeadline(time.Now().Add(2 * time.Second))
	defer s.SetDeadline(time.Time{})
	defer b.Conn.SetDeadline(time.Time{})
	if _, err := b.Conn.Write([]byte("ping")); err != nil {
		t.Fatalf("write to backend %d: %v", b.PID, err)
	}
	var buf [4]byte
	if _, err := io.ReadFull(s, buf[:]); err != nil || string(buf[:]) != "ping" {
		t.Fatalf("server end of %d read %q, %v", b.PID, buf[:], err)
	}
	if _, err := s.Write([]byte("pong")); err != nil {
		t.Fatalf("server end of %d write: %v", b.PID, err)
	}
	if _, err := io.ReadFull(b.R, buf[:]); err != nil || string(buf[:]) != "pong" {
		t.Fatalf("backend %d read %q, %v", b.PID, buf[:], err)
	}
}

// expectTerminated checks that the server end of pid received Terminate and then EOF.
func expectTerminated(t *testing.T, f *fakeDB, pid uint32) {
	t.Helper()
	s := f.server(pid)
	_ = s.SetReadDeadline(time.Now().Add(2 * time.Second))
	got, err := io.ReadAll(s)
	if err != nil {
		t.Fatalf("server end of %d: %v (read %q)", pid, err, got)
	}
	if want := []byte{'X', 0, 0, 0, 4}; !bytes.Equal(got, want) {
		t.Fatalf("server end of %d read %q before EOF, want Terminate %q", pid, got, want)
	}
}

// checkAccounting checks the figures that must always agree while no dial is in flight.
func checkAccounting(t *testing.T, s pool.Stats) {
	t.Helper()
	if s.Idle+s.InUse+s.Dialing != s.Open {
		t.Errorf("Idle %d + InUse %d + Dialing %d != Open %d", s.Idle, s.InUse, s.Dialing, s.Open)
	}
	if s.Open < 0 || s.Idle < 0 || s.InUse < 0 || s.Dialing < 0 || s.Waiting < 0 {
		t.Errorf("negative figure in %+v", s)
	}
	if s.Size > 0 && s.Open > s.Size {
		t.Errorf("Open %d > Size %d", s.Open, s.Size)
	}
	if int64(s.Open) != int64(s.Dials)-int64(s.Closed)+int64(s.Dialing) {
		t.Errorf("Open %d != Dials %d - Closed %d + Dialing %d", s.Open, s.Dials, s.Closed, s.Dialing)
	}
}

var errDown = errors.New("fake: connection refused")

// ---------------------------------------------------------------------------
// 1. Bounded size.

func TestBoundedSize(t *testing.T) {
	f := newFakeDB(t)
	p := newPool(t, f, pool.Config{Size: 3})

	var held []*pool.Backend
	seen := map[uint32]bool{}
	for range 3 {
		b := mustAcquire(t, p)
		if seen[b.PID] {
			t.Fatalf("backend %d handed out twice", b.PID)
		}
		seen[b.PID] = true
		held = append(held, b)
	}
	ch := make(chan acq, 1)
	acquireAsync(p, ctxFor(t, 10*time.Second), 4, ch)
	pgtest.EventuallyTrue(t, 2*time.Second, "the 4th Acquire to queue", func() bool { return p.Stats().Waiting == 1 })
	noRecv(t, ch, 50*time.Millisecond)

	s := p.Stats()
	if s.Size != 3 || s.Open != 3 || s.InUse != 3 || s.Idle != 0 || s.Dialing != 0 || s.Waiting != 1 {
		t.Fatalf("stats with a waiter: %+v", s)
	}
	if s.MaxWait <= 0 {
		t.Errorf("MaxWait = %v with a waiter queued", s.MaxWait)
	}
	if n := f.calls.Load(); n != 3 {
		t.Fatalf("%d dials, want 3 (the waiter must not dial past Size)", n)
	}
	checkAccounting(t, s)

	p.Release(held[1])
	r := recv(t, ch, 2*time.Second)
	if r.err != nil || r.b != held[1] {
		t.Fatalf("waiter got %v, %v; want the released backend %d", r.b, r.err, held[1].PID)
	}
	held[1] = r.b
	s = p.Stats()
	// Waited counts every Acquire that queued: 3 for their own dial, then ours.
	if s.Open != 3 || s.InUse != 3 || s.Waiting != 0 || s.Waited != 4 || s.Acquires != 4 || s.Dials != 3 || s.MaxWait != 0 {
		t.Fatalf("stats after hand-off: %+v", s)
	}
	checkWorks(t, f, r.b)
	for _, b := range held {
		p.Release(b)
	}
	s = p.Stats()
	if s.Idle != 3 || s.InUse != 0 || s.Open != 3 {
		t.Fatalf("stats after releasing all: %+v", s)
	}
	checkAccounting(t, s)
}

// ---------------------------------------------------------------------------
// 2. FIFO waiters.

func TestWaitersServedFIFO(t *testing.T) {
	f := newFakeDB(t)
	p := newPool(t, f, pool.Config{Size: 1})
	a := mustAcquire(t, p)

	const n = 5
	got := make(chan acq, n)
	ctx := ctxFor(t, 10*time.Second)
	for i := range n {
		acquireAsync(p, ctx, i, got)
		pgtest.EventuallyTrue(t, 2*time.Second, fmt.Sprintf("waiter %d to queue", i), func() bool { return p.Stats().Waiting == i+1 })
	}
	cur := a
	for i := range n {
		p.Release(cur)
		r := recv(t, got, 2*time.Second)
		if r.err != nil {
			t.Fatalf("waiter %d: %v", r.i, r.err)
		}
		if r.i != i {
			t.Fatalf("release %d served waiter %d, want %d (FIFO)", i, r.i, i)
		}
		if r.b != a {
			t.Fatalf("waiter %d got backend %d, want %d", r.i, r.b.PID, a.PID)
		}
		if w := p.Stats().Waiting; w != n-1-i {
			t.Fatalf("after serving waiter %d, Waiting = %d, want %d", i, w, n-1-i)
		}
		cur = r.b
	}
	p.Release(cur)
	s := p.Stats()
	if s.Dials != 1 || s.Waited != n+1 || s.Acquires != n+1 || s.Idle != 1 || s.WaitTime <= 0 {
		t.Fatalf("stats: %+v", s)
	}
}

// ---------------------------------------------------------------------------
// 3. LIFO idle reuse.

func TestIdleReuseLIFO(t *testing.T) {
	f := newFakeDB(t)
	p := newPool(t, f, pool.Config{Size: 3})
	a, b, c := mustAcquire(t, p), mustAcquire(t, p), mustAcquire(t, p)
	p.Release(a)
	p.Release(b)
	p.Release(c)
	for _, want := range []*pool.Backend{c, b, a} {
		got := mustAcquire(t, p)
		if got != want {
			t.Fatalf("Acquire returned backend %d, want %d (most recently released first)", got.PID, want.PID)
		}
	}
	if n := f.calls.Load(); n != 3 {
		t.Fatalf("%d dials, want 3", n)
	}
	// TryAcquire follows the same order and never dials.
	p.Release(b)
	p.Release(a)
	if got, err := p.TryAcquire(); err != nil || got != a {
		t.Fatalf("TryAcquire = %v, %v; want backend %d", got, err, a.PID)
	}
	if got, err := p.TryAcquire(); err != nil || got != b {
		t.Fatalf("TryAcquire = %v, %v; want backend %d", got, err, b.PID)
	}
	if got, err := p.TryAcquire(); err != nil || got != nil {
		t.Fatalf("TryAcquire on an empty pool = %v, %v; want nil, nil", got, err)
	}
	if n := f.calls.Load(); n != 3 {
		t.Fatalf("TryAcquire dialed: %d dials, want 3", n)
	}
	p.Release(a)
	p.Release(b)
	p.Release(c)
}

// ---------------------------------------------------------------------------
// 4. Wait timeout.

func TestWaitTimeout(t *testing.T) {
	f := newFakeDB(t)
	p := newPool(t, f, pool.Config{Size: 1})
	a := mustAcquire(t, p)

	const d = 100 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	start := time.Now()
	b, err := p.Acquire(ctx)
	elapsed := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) || b != nil {
		t.Fatalf("Acquire on a full pool = %v, %v; want context.DeadlineExceeded", b, err)
	}
	if elapsed < d-5*time.Millisecond || elapsed > d+time.Second {
		t.Fatalf("Acquire gave up after %v, want about %v", elapsed, d)
	}
	s := p.Stats()
	if s.WaitTimeouts != 1 || s.Waiting != 0 || s.Waited != 2 || s.MaxWait != 0 || s.Acquires != 1 {
		t.Fatalf("stats after the timeout: %+v", s)
	}
	if s.WaitTime < d-5*time.Millisecond {
		t.Errorf("WaitTime = %v, want >= %v", s.WaitTime, d)
	}

	// The release goes to the idle stack, not to the waiter that left.
	p.Release(a)
	s = p.Stats()
	if s.Idle != 1 || s.InUse != 0 || s.Open != 1 || s.Waiting != 0 {
		t.Fatalf("stats after release: %+v", s)
	}
	if got := mustAcquire(t, p); got != a {
		t.Fatalf("Acquire returned %d, want the released %d", got.PID, a.PID)
	}
	if n := f.calls.Load(); n != 1 {
		t.Fatalf("%d dials, want 1", n)
	}
	p.Release(a)
}

// A waiter that leaves while a dial started for it is in flight: the new backend
// goes to the idle stack and is reused without another dial.
func TestWaiterLeavesDuringDial(t *testing.T) {
	f := newFakeDB(t)
	gate := make(chan struct{})
	f.setHook(gatedHook(gate, true))
	p := newPool(t, f, pool.Config{Size: 1})
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan acq, 1)
	acquireAsync(p, ctx, 0, ch)
	pgtest.EventuallyTrue(t, 2*time.Second, "a dial in flight", func() bool { s := p.Stats(); return s.Dialing == 1 && s.Waiting == 1 })
	cancel()
	r := recv(t, ch, 2*time.Second)
	if !errors.Is(r.err, context.Canceled) || r.b != nil {
		t.Fatalf("canceled Acquire = %v, %v; want context.Canceled", r.b, r.err)
	}
	close(gate)
	pgtest.EventuallyTrue(t, 2*time.Second, "the dialed backend to become idle", func() bool { return p.Stats().Idle == 1 })
	s := p.Stats()
	if s.Open != 1 || s.Dialing != 0 || s.Waiting != 0 || s.WaitTimeouts != 1 || s.Dials != 1 {
		t.Fatalf("stats: %+v", s)
	}
	b := mustAcquire(t, p)
	if n := f.calls.Load(); n != 1 {
		t.Fatalf("%d dials, want 1", n)
	}
	checkWorks(t, f, b)
	p.Release(b)
}

// ---------------------------------------------------------------------------
// 5. Dial failure reported promptly.

func TestDialFailureReportedPromptly(t *testing.T) {
	f := newFakeDB(t)
	var down atomic.Bool
	down.Store(true)
	f.setHook(func(ctx context.Context) error {
		if down.Load() {
			return errDown
		}
		return nil
	})
	p := newPool(t, f, pool.Config{Size: 3})

	const n = 5
	ctx := ctxFor(t, 10*time.Second)
	got := make(chan acq, n)
	for i := range n {
		acquireAsync(p, ctx, i, got)
	}
	for range n {
		r := recv(t, got, 5*time.Second)
		if r.b != nil || !errors.Is(r.err, pool.ErrDial) || !errors.Is(r.err, errDown) {
			t.Fatalf("Acquire %d = %v, %v; want an error wrapping ErrDial and the dial error", r.i, r.b, r.err)
		}
		if r.elapsed >= 2*time.Second {
			t.Fatalf("Acquire %d took %v to report the dial failure", r.i, r.elapsed)
		}
	}
	s := p.Stats()
	calls := f.calls.Load()
	if calls < 1 || calls > n || s.DialFailures != uint64(calls) || s.Dials != 0 {
		t.Fatalf("%d dial calls, stats %+v", calls, s)
	}
	if s.Open != 0 || s.Waiting != 0 || s.Dialing != 0 || s.Acquires != 0 {
		t.Fatalf("stats after failures: %+v", s)
	}

	// The database comes back: the route is backing off, so until the delay after
	// the failure ends an Acquire is refused at once; then it dials and works.
	down.Store(false)
	var b *pool.Backend
	pgtest.Eventually(t, 2*time.Second, "Acquire after the database came back", func() error {
		var err error
		b, err = p.Acquire(ctxFor(t, 5*time.Second))
		if err != nil && (!errors.Is(err, pool.ErrBackoff) || !errors.Is(err, errDown)) {
			t.Fatalf("Acquire after the database came back: %v", err)
		}
		return err
	})
	checkWorks(t, f, b)
	s = p.Stats()
	if s.Open != 1 || s.Dials != 1 || s.InUse != 1 {
		t.Fatalf("stats after recovery: %+v", s)
	}
	p.Release(b)
}

// More waiters than the pool has room for queue while the dials hang, then every
// dial fails: the waiters that got no dial of their own must be told too.
func TestDialFailureReachesAllQueuedWaiters(t *testing.T) {
	f := newFakeDB(t)
	gate := make(chan struct{})
	f.setHook(func(ctx context.Context) error { return awaitGate(ctx, gate, errDown) })
	p := newPool(t, f, pool.Config{Size: 3})
	const n = 5
	ctx := ctxFor(t, 10*time.Second)
	got := make(chan acq, n)
	for i := range n {
		acquireAsync(p, ctx, i, got)
		pgtest.EventuallyTrue(t, 2*time.Second, fmt.Sprintf("waiter %d to queue", i), func() bool { return p.Stats().Waiting == i+1 })
	}
	if s := p.Stats(); s.Dialing != 3 || s.Open != 3 || f.calls.Load() != 3 {
		t.Fatalf("stats with %d waiters: %+v", n, s)
	}
	close(gate)
	for range n {
		r := recv(t, got, 5*time.Second)
		if r.b != nil || !errors.Is(r.err, pool.ErrDial) || !errors.Is(r.err, errDown) {
			t.Fatalf("Acquire %d = %v, %v; want an error wrapping ErrDial", r.i, r.b, r.err)
		}
		if r.elapsed >= 2*time.Second {
			t.Fatalf("Acquire %d took %v to report the dial failure", r.i, r.elapsed)
		}
	}
	s := p.Stats()
	if s.Open != 0 || s.Waiting != 0 || s.Dialing != 0 || s.DialFailures != uint64(f.calls.Load()) || s.DialFailures < 3 {
		t.Fatalf("stats after the failures: %+v (dial calls %d)", s, f.calls.Load())
	}
}

// A dial that hangs is bounded by ConnectTimeout.
func TestConnectTimeout(t *testing.T) {
	f := newFakeDB(t)
	f.setHook(func(ctx context.Context) error {
		<-ctx.Done()
		return ctx.Err()
	})
	p := newPool(t, f, pool.Config{Size: 2, ConnectTimeout: 100 * time.Millisecond})
	start := time.Now()
	b, err := p.Acquire(ctxFor(t, 10*time.Second))
	elapsed := time.Since(start)
	if b != nil || !errors.Is(err, pool.ErrDial) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire = %v, %v; want ErrDial wrapping context.DeadlineExceeded", b, err)
	}
	if elapsed < 90*time.Millisecond || elapsed > 2*time.Second {
		t.Fatalf("dial gave up after %v, want about 100ms", elapsed)
	}
	if s := p.Stats(); s.DialFailures != 1 || s.Open != 0 {
		t.Fatalf("stats: %+v", s)
	}
}

// A transient dial failure while another backend is in use: the failed dial's error
// goes to one waiter, but a second waiter must not be left waiting for the held
// backend when the pool has a free slot and the server is reachable again.
func TestDialFailureDoesNotStrandWaiterWithFreeSlot(t *testing.T) {
	f := newFakeDB(t)
	gate := make(chan struct{})
	var failNext atomic.Bool
	f.setHook(func(ctx context.Context) error {
		if failNext.CompareAndSwap(true, false) {
			return awaitGate(ctx, gate, errDown)
		}
		return nil
	})
	p := newPool(t, f, pool.Config{Size: 2})
	a := mustAcquire(t, p) // held for the whole test, like a long transaction

	failNext.Store(true)
	ctx := ctxFor(t, 10*time.Second)
	w1, w2 := make(chan acq, 1), make(chan acq, 1)
	acquireAsync(p, ctx, 1, w1)
	pgtest.EventuallyTrue(t, 2*time.Second, "waiter 1 and its dial", func() bool { s := p.Stats(); return s.Waiting == 1 && s.Dialing == 1 })
	acquireAsync(p, ctx, 2, w2)
	pgtest.EventuallyTrue(t, 2*time.Second, "waiter 2", func() bool { return p.Stats().Waiting == 2 })
	if s := p.Stats(); s.Open != 2 || s.Dialing != 1 {
		t.Fatalf("stats before the failure: %+v", s)
	}
	close(gate) // the dial fails; the server is reachable again from now on

	r1 := recv(t, w1, 2*time.Second)
	if !errors.Is(r1.err, pool.ErrDial) {
		t.Fatalf("waiter 1 = %v, %v; want ErrDial", r1.b, r1.err)
	}
	select {
	case r2 := <-w2:
		if r2.err != nil || r2.b == nil || r2.b == a {
			t.Fatalf("waiter 2 = %v, %v; want a newly dialed backend", r2.b, r2.err)
		}
		p.Release(r2.b)
	case <-time.After(2 * time.Second):
		t.Fatalf("waiter 2 stranded although the pool has room and the server is up: %+v (dial calls %d)",
			p.Stats(), f.calls.Load())
	}
	p.Release(a)
}
