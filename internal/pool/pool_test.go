package pool_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

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
