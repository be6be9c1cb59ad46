package pool

// This file is the pool itself: acquiring (blocking, non-blocking and
// asynchronous), releasing, dialing with back-off, reconfiguring and reaping.
// It is above 800 lines because these share one lock and one waiter queue
// whose invariants are easier to check in one place than across files.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Sentinel errors callers branch on.
var (
	// ErrClosed is returned by Acquire on a closed pool.
	ErrClosed = errors.New("pool is closed")
	// ErrDial wraps a failure to open a backend connection.
	ErrDial = errors.New("could not connect to the server")
)

// idleCheckAfter is how long a backend must have been idle before Acquire spends a
// syscall on checking that it is still alive. A backend that died within this time of
// being released is found by its next user, as with a direct connection.
const idleCheckAfter = 10 * time.Millisecond

// defaultConnectTimeout is ConnectTimeout when Config leaves it <= 0.
const defaultConnectTimeout = 5 * time.Second

// Config configures a Pool. Pool.Reconfigure changes it while the pool runs.
type Config struct {
	// Size is the most backends open at once (dialing ones included). It must be
	// at least 1; neither New nor Reconfigure checks it (the caller validates it).
	Size int
	// Lifetime is how long a backend may live (0 = unlimited); each backend gets it
	// with a random jitter of +-10% so that backends do not all expire together.
	// A backend gets its expiry when its dial ends.
	Lifetime time.Duration
	// IdleTimeout closes backends idle for longer (0 = never).
	IdleTimeout time.Duration
	// ConnectTimeout bounds one dial (<= 0: 5s).
	ConnectTimeout time.Duration
	// Dial opens a backend.
	Dial DialFunc
	// Logger receives pool events (nil: discarded).
	Logger *slog.Logger
	// Budget, when set, must grant a slot for every backend the pool opens,
	// beyond Size (a fleet-wide connection budget: internal/fleet). nil: no
	// budget. New takes it for the pool's life; Reconfigure ignores it.
	Budget Budget
}

// Budget is a share of server connections the pool must hold before it opens
// one. Its methods are called with the pool's lock held: they must not block
// or call into the pool (wake runs later, on another goroutine).
type Budget interface {
	// Take reserves a slot for one more backend. When none is free it
	// returns false, keeps u, and calls u.Wake once a slot may be (the pool
	// then asks again for the clients still waiting); it may ask u.Wanting
	// meanwhile whether the pool still wants one.
	Take(u BudgetUser) bool
	// Give returns n slots: backends closed, dials that failed.
	Give(n int)
	// Over is how many of the backends the pool has are beyond its slots
	// (slots lost with the budget's coordination): they are closed when
	// released, or when idle, until it is 0. Called at every release, so it
	// must cost no more than an atomic load.
	Over() int
}

// BudgetUser is the pool as its Budget sees it. Its methods take the pool's
// lock: the budget calls them without holding a lock Take, Give or Over
// take.
type BudgetUser interface {
	// Wake makes the pool open backends for its waiting clients again, as
	// far as the budget grants slots.
	Wake()
	// Wanting reports whether the pool would open a backend now for a
	// waiting client, had it a slot.
	Wanting() bool
}

// budgetUser is a pool's BudgetUser.
type budgetUser struct{ p *Pool }

func (u *budgetUser) Wake() { u.p.budgetWoke() }

func (u *budgetUser) Wanting() bool {
	p := u.p
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.closed && p.nwait > p.dialing-p.staleDials && p.open < p.cfg.Size
}

// Stats is a snapshot of a pool's figures.
type Stats struct {
	Size     int // configured maximum
	Open     int // backends open or being opened
	Idle     int // open and idle in the pool
	InUse    int // open and held by a client
	Dialing  int // being opened
	Waiting  int // Acquire calls queued
	MaxWait  time.Duration
	Acquires uint64 // successful Acquire calls
	// Waited counts Acquire calls that had to queue; WaitTime is their total wait.
	Waited       uint64
	WaitTime     time.Duration
	WaitTimeouts uint64 // Acquire calls that gave up (context done)
	Dials        uint64 // backends opened
	DialFailures uint64
	// DialTime is the total time spent opening backends, failed attempts included.
	DialTime time.Duration
	Closed   uint64 // backends closed (expired, idle, dead, destroyed, retired)
	// Retired counts the backends among Closed that Reconfigure closed: those
	// opened before a Reconfigure that retired them (closed idle at the call, at
	// their release or when their dial ended), and those above a reduced Size
	// (closed idle at the call, or at their release or the end of their dial
	// while more than Size were open).
	Retired uint64
	// BudgetWaits counts the times the pool wanted to open a backend for a
	// waiting client and its Budget had no slot; BudgetClosed the backends
	// closed because the pool had more than its budget's slots.
	BudgetWaits, BudgetClosed uint64
	// Exhausted is the total time clients were waiting for a backend (every
	// backend busy or being opened).
	Exhausted time.Duration
	// BackoffRefusals counts acquisitions refused at once (ErrBackoff) because the
	// route was backing off after failed dials with nothing open to serve them.
	BackoffRefusals uint64
}

// Health is a snapshot of a pool's ability to reach its server.
type Health struct {
	Open    int // backends open (logged in), idle or held; dialing ones excluded
	Dialing int // backends being opened
	// Failures is the number of consecutive failed dials of the route (0: the last
	// one succeeded, or none ended yet).
	Failures int
	// LastError is the error of the route's last failed dial and LastErrorAt its
	// time (nil, zero: none); they stay after a later success.
	LastError     error
	LastErrorAt   time.Time
	LastSuccessAt time.Time // the route's last successful dial (zero: none)
	// BackingOff is true while acquisitions that would need a dial are refused
	// (ErrBackoff) or wait for the one attempt in flight; NextAttempt is when the
	// delay after the last failure ends (zero: no back-off).
	BackingOff  bool
	NextAttempt time.Time
	// Refused counts acquisitions this pool refused because of the back-off.
	Refused uint64
}

type result struct {
	b   *Backend
	err error
}

// mono is a monotonic instant, nanoseconds since epoch: 8 bytes where a
// time.Time takes 24 (an event loop's client embeds a Waiter).
type mono int64

// epoch is the zero of mono.
var epoch = time.Now()

func monoNow() mono                     { return mono(time.Since(epoch)) }
func (m mono) time() time.Time          { return epoch.Add(time.Duration(m)) }
func (m mono) add(d time.Duration) mono { return m + mono(d) }

// elapsed is the time since m.
func (m mono) elapsed() time.Duration { return time.Duration(monoNow() - m) }

type waiter struct {
	ch       chan result
	key      uint64 // the StateKey it prefers
	skipped  int    // times a backend went to a waiter behind it
	since    mono
	deadline mono // when it gives up (zero: never; see expire)
	next     *waiter
	prev     *waiter
	gone     bool // removed from the queue
	// fn, when set, gets the outcome instead of ch (AcquireAsync), under the
	// pool's lock.
	fn Outcome
}

// deliver hands the waiter, just taken off the queue, its outcome. p.mu is held.
func (p *Pool) deliverLocked(w *waiter, r result) {
	if w.fn == nil {
		w.ch <- r // buffered, never blocks
		return
	}
	if r.err == errExpired {
		w.fn.Outcome(nil, context.DeadlineExceeded)
		return
	}
	p.noteWaitLocked(w, r.err == nil)
	w.fn.Outcome(r.b, r.err)
}

// Outcome receives what an AcquireAsync wait came to. An interface rather
// than a func: an event loop's client implements it without a closure each.
type Outcome interface {
	Outcome(*Backend, error)
}

// OutcomeFunc adapts a function to Outcome.
type OutcomeFunc func(*Backend, error)

// Outcome calls f.
func (f OutcomeFunc) Outcome(b *Backend, err error) { f(b, err) }

// Waiter is a wait for a backend whose outcome goes to an Outcome rather than
// to a goroutine blocked in Acquire (AcquireAsync): an event loop's client
// waits with one, at the cost of its struct. The zero value is ready; a
// Waiter serves one wait at a time.
type Waiter struct{ w waiter }

// AcquireAsync returns an idle backend at once if there is one (queued false).
// Otherwise it queues w (queued true) and dials if the pool has room, and fn
// later gets the outcome Acquire would have returned: a backend, or an error
// (context.DeadlineExceeded after timeout, 0: never; ErrClosed; a dial or
// back-off error). While the route backs off with nothing open, it fails at
// once as Acquire does.
//
// fn runs under the pool's lock on whichever goroutine hands the backend over
// (a Release, a dial, the expiry timer, Close): it must only record the outcome
// and pass it to its owner, never call the pool. CancelWait withdraws the wait.
func (p *Pool) AcquireAsync(key uint64, timeout time.Duration, w *Waiter, fn Outcome) (b *Backend, queued bool, err error) {
	p.mu.Lock()
	for len(p.idle) > 0 && !p.closed {
		b := p.popIdleLocked(key)
		p.mu.Unlock()
		if p.usable(b) {
			return b, false, nil
		}
		p.mu.Lock()
	}
	if p.closed {
		p.mu.Unlock()
		return nil, false, ErrClosed
	}
	if p.open == 0 {
		if err := p.bo.refuse(time.Now(), 1); err != nil {
			p.stats.BackoffRefusals++
			p.mu.Unlock()
			return nil, false, err
		}
	}
	ww := &w.w
	*ww = waiter{since: monoNow(), key: key, fn: fn}
	if timeout > 0 {
		ww.deadline = ww.since.add(timeout)
		p.armLocked(ww.deadline.time())
	}
	p.enqueueLocked(ww)
	p.dialIfNeededLocked()
	p.mu.Unlock()
	return nil, true, nil
}

// HandOver gives b, a backend the caller holds and would Release, straight to
// the queued wait w, without calling its function: the caller carries the
// outcome over itself (an event loop serving both clients hands the server
// connection and the waiting client's batch over in one step). It reports
// false, leaving b with the caller, when w is not queued (its outcome is on
// its way), when b is expired, retired or above the pool's size, or when the
// pool is closed: then the caller calls Release.
func (p *Pool) HandOver(w *Waiter, b *Backend) bool {
	if b.expired(time.Now()) {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	ww := &w.w
	if p.closed || ww.gone || ww.fn == nil || b.gen != p.gen || p.open > p.cfg.Size {
		return false
	}
	p.removeLocked(ww)
	p.noteWaitLocked(ww, true)
	return true
}

// CancelWait withdraws w's wait (the client gave up): true when it was still
// queued, and fn will not be called; false when fn has been or is being called
// with the outcome, which the owner then handles (a backend goes back with
// Release).
func (p *Pool) CancelWait(w *Waiter) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if w.w.gone || w.w.fn == nil {
		return false
	}
	p.removeLocked(&w.w)
	p.stats.WaitTimeouts++
	p.stats.Waited++
	p.stats.WaitTime += w.w.since.elapsed()
	return true
}

var waiterPool = sync.Pool{New: func() any { return &waiter{ch: make(chan result, 1)} }}

// Pool is a bounded pool of backends for one route.
type Pool struct {
	// log is cfg.Logger, readable without the lock.
	log atomic.Pointer[slog.Logger]

	budget Budget      // cfg.Budget, New's for the pool's life (read without mu)
	bu     *budgetUser // what budget sees of the pool

	mu sync.Mutex
	// cfg may change under mu (Reconfigure): read it under mu only; a dial takes
	// its Dial and ConnectTimeout when it starts.
	cfg     Config
	idle    []*Backend // stack: the top is the most recently released
	open    int        // open + dialing
	dialing int
	// gen is the generation of the configuration: Reconfigure with retire
	// increments it, and a backend of an older one (Backend.gen) is closed rather
	// than handed out or kept idle. staleDials counts the dials in flight of older
	// generations (included in dialing): they serve no waiter. retired is closed
	// when gen increments, to abandon those dials.
	gen        uint64
	staleDials int
	retired    chan struct{}
	head       *waiter // FIFO queue of waiters
	tail       *waiter
	nwait      int
	// exhaustedSince is when the current stretch with waiters began.
	exhaustedSince time.Time
	// expiry fires by the earliest deadline of a waiter when it was armed; see
	// expire.
	expiry wakeup
	closed bool
	params map[string]string // ParameterStatus of the newest backend
	stats  Stats
	// acquires is atomic so that the uncontended Acquire path takes the lock once.
	acquires atomic.Uint64
	// bo is the route's dial back-off (shared with the Registry, which keeps it
	// across the route's pools). retry fires when the back-off ends, to dial for
	// waiters it kept waiting while backends were held.
	bo    *backoff
	retry wakeup

	done chan struct{}
	wg   sync.WaitGroup
}

// New creates a pool and starts its maintenance loop; Close stops it.
func New(cfg Config) *Pool {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = defaultConnectTimeout
	}
	p := &Pool{cfg: cfg, done: make(chan struct{}), retired: make(chan struct{}), bo: &backoff{}}
	p.bu, p.budget = &budgetUser{p}, cfg.Budget
	p.log.Store(cfg.Logger)
	p.expiry.fn, p.retry.fn = p.expire, p.retryDial
	p.wg.Add(1)
	go p.maintain()
	return p
}

// Acquire returns an idle backend, a newly dialed one, or waits in FIFO order for
// one to be released until ctx is done. A dead idle backend is replaced without the
// caller seeing an error. The error wraps ErrDial when the server cannot be reached
// and no other backend can serve the caller, ErrClosed when the pool is closed, or
// ctx.Err() when the wait ran out.
//
// After a failed dial the route backs off (50ms doubling to 5s, with jitter; a
// successful dial ends it): until the delay has passed no dial starts, and then
// only one at a time. Meanwhile an Acquire that finds nothing open (no backend,
// no dial) fails at once with a *BackoffError, which wraps ErrBackoff, ErrDial and
// the last dial error; with backends open it waits for one as usual.
func (p *Pool) Acquire(ctx context.Context) (*Backend, error) {
	return p.acquire(ctx, ctx.Done(), nil, 0, 0)
}

// AcquireWait is Acquire for the hot path: a wait allocates nothing and arms no
// timer of its own. It gives up with context.DeadlineExceeded after timeout (0:
// never) and with context.Canceled when done is closed.
func (p *Pool) AcquireWait(timeout time.Duration, done <-chan struct{}) (*Backend, error) {
	return p.acquire(nil, done, nil, timeout, 0)
}

// AcquirePrefer is AcquireWait that prefers a backend whose StateKey is key, idle
// or being released (see TryAcquirePrefer). A wait also ends, with
// context.Canceled, when stop is closed (nil: never): a caller's own reason to
// give up, besides done.
func (p *Pool) AcquirePrefer(key uint64, timeout time.Duration, done, stop <-chan struct{}) (*Backend, error) {
	return p.acquire(nil, done, stop, timeout, key)
}

func (p *Pool) acquire(ctx context.Context, done, stop <-chan struct{}, timeout time.Duration, key uint64) (*Backend, error) {
	p.mu.Lock()
	for len(p.idle) > 0 && !p.closed {
		b := p.popIdleLocked(key)
		p.mu.Unlock()
		if p.usable(b) {
			return b, nil
		}
		p.mu.Lock()
	}
	if p.closed {
		p.mu.Unlock()
		return nil, ErrClosed
	}
	if p.open == 0 {
		// Nothing open or being opened could serve a waiter: while the route
		// backs off, say so now rather than queue.
		if err := p.bo.refuse(time.Now(), 1); err != nil {
			p.stats.BackoffRefusals++
			p.mu.Unlock()
			return nil, err
		}
	}
	w := waiterPool.Get().(*waiter)
	w.since = monoNow()
	w.gone = false
	w.key = key
	w.skipped = 0
	w.deadline = 0
	if timeout > 0 {
		w.deadline = w.since.add(timeout)
		p.armLocked(w.deadline.time())
	}
	p.enqueueLocked(w)
	p.dialIfNeededLocked()
	p.mu.Unlock()
	return p.wait(ctx, w, done, stop)
}

// errExpired is what expire hands a waiter whose deadline passed.
var errExpired = errors.New("pool wait expired")

// armLocked makes sure the expiry timer fires by t. Waiters queue in about the
// order of their deadlines, so a wait rarely touches the timer: one timer serves
// the whole queue instead of one per wait.
func (p *Pool) armLocked(t time.Time) { p.expiry.armBy(t) }

// wakeup runs fn, on a timer of its own, by the earliest time it was armed for
// since it last fired. Arming it for a later time changes nothing, so it costs a
// timer operation only when the time moves earlier. The owner's lock guards it;
// fn calls fired under that lock.
type wakeup struct {
	fn    func()
	timer *time.Timer
	at    time.Time // zero: not armed
}

func (w *wakeup) armBy(t time.Time) {
	if !w.at.IsZero() && !t.Before(w.at) {
		return
	}
	w.at = t
	d := time.Until(t)
	if w.timer == nil {
		w.timer = time.AfterFunc(d, w.fn)
	} else {
		w.timer.Reset(d)
	}
}

// fired says fn runs: the next armBy arms it again.
func (w *wakeup) fired() { w.at = time.Time{} }

func (w *wakeup) stop() {
	if w.timer != nil {
		w.timer.Stop()
	}
}

// expire ends the waits whose deadline passed and arms the timer for the
// earliest deadline left.
func (p *Pool) expire() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.expiry.fired()
	if p.closed {
		return
	}
	now := monoNow()
	var next mono
	for w := p.head; w != nil; {
		nx := w.next
		switch {
		case w.deadline == 0:
		case w.deadline <= now:
			p.removeLocked(w)
			p.stats.WaitTimeouts++
			p.stats.Waited++
			p.stats.WaitTime += time.Duration(now - w.since)
			p.deliverLocked(w, result{err: errExpired})
		case next == 0 || w.deadline < next:
			next = w.deadline
		}
		w = nx
	}
	if next != 0 {
		p.armLocked(next.time())
	}
}

// TryAcquire returns an idle backend, or nil when none is idle; it never waits and
// never dials. Dead or expired idle backends are closed on the way.
func (p *Pool) TryAcquire() (*Backend, error) { return p.TryAcquirePrefer(0) }

// preferScan bounds how many idle backends TryAcquirePrefer looks at;
// preferWaiters how many waiters a released backend may skip for one that
// prefers its state.
const (
	preferScan    = 32
	preferWaiters = 8
	maxSkips      = 2
)

// TryAcquirePrefer is TryAcquire that prefers, among the most recently released
// idle backends, one whose StateKey is key, so that a client gets a backend whose
// session state already matches its own.
func (p *Pool) TryAcquirePrefer(key uint64) (*Backend, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrClosed
		}
		if len(p.idle) == 0 {
			p.mu.Unlock()
			return nil, nil
		}
		b := p.popIdleLocked(key)
		p.mu.Unlock()
		if p.usable(b) {
			return b, nil
		}
	}
}

// popIdleLocked takes the most recently released idle backend, or among the
// preferScan most recent one whose StateKey is key. p.idle is not empty.
func (p *Pool) popIdleLocked(key uint64) *Backend {
	n := len(p.idle)
	i := n - 1
	if p.idle[i].StateKey != key {
		for j := n - 2; j >= 0 && j >= n-preferScan; j-- {
			if p.idle[j].StateKey == key {
				i = j
				break
			}
		}
	}
	b := p.idle[i]
	copy(p.idle[i:], p.idle[i+1:])
	p.idle[n-1] = nil
	p.idle = p.idle[:n-1]
	return b
}

// usable checks a backend just taken off the idle stack and counts the acquire;
// a dead or expired one is closed instead.
func (p *Pool) usable(b *Backend) bool {
	now := time.Now()
	if b.expired(now) || (now.Sub(b.idleSince) >= idleCheckAfter && !b.alive()) {
		p.log.Load().Debug("server connection closed", "pid", b.PID, "reason", "dead or expired while idle")
		p.Destroy(b)
		return false
	}
	p.acquires.Add(1)
	return true
}

func (p *Pool) wait(ctx context.Context, w *waiter, done, stop <-chan struct{}) (*Backend, error) {
	var giveUp error
	select {
	case r := <-w.ch:
		if r.err == errExpired { // counted by expire
			waiterPool.Put(w)
			return nil, context.DeadlineExceeded
		}
		p.mu.Lock()
		p.noteWaitLocked(w, r.err == nil)
		p.mu.Unlock()
		waiterPool.Put(w)
		return r.b, r.err
	case <-done:
		giveUp = context.Canceled
		if ctx != nil {
			giveUp = ctx.Err()
		}
	case <-stop:
		giveUp = context.Canceled
	}
	p.mu.Lock()
	if !w.gone {
		p.removeLocked(w)
		p.stats.WaitTimeouts++
		p.stats.Waited++
		p.stats.WaitTime += w.since.elapsed()
		p.mu.Unlock()
		waiterPool.Put(w)
		return nil, giveUp
	}
	p.mu.Unlock()
	// A result was handed to us as the context ended: give a backend back.
	r := <-w.ch
	waiterPool.Put(w)
	if r.b != nil {
		p.Release(r.b)
	}
	if r.err == errExpired {
		return nil, context.DeadlineExceeded
	}
	if r.err != nil {
		return nil, r.err
	}
	return nil, giveUp
}

func (p *Pool) noteWaitLocked(w *waiter, ok bool) {
	p.stats.Waited++
	p.stats.WaitTime += w.since.elapsed()
	if ok {
		p.acquires.Add(1)
	}
}

func (p *Pool) enqueueLocked(w *waiter) {
	if p.nwait == 0 {
		p.exhaustedSince = time.Now()
	}
	w.prev, w.next = p.tail, nil
	if p.tail != nil {
		p.tail.next = w
	} else {
		p.head = w
	}
	p.tail = w
	p.nwait++
}

func (p *Pool) removeLocked(w *waiter) {
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		p.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		p.tail = w.prev
	}
	w.prev, w.next, w.gone = nil, nil, true
	p.nwait--
	if p.nwait == 0 {
		p.stats.Exhausted += time.Since(p.exhaustedSince)
	}
}

// handLocked gives r to the oldest waiter, if any.
func (p *Pool) handLocked(r result) bool {
	w := p.head
	if w == nil {
		return false
	}
	if r.b != nil && w.key != r.b.StateKey && w.skipped < maxSkips {
		// Among the first few waiters, one whose state the backend already has
		// goes first: a little unfairness saves replaying session state. A waiter
		// is passed over at most maxSkips times.
		n := 0
		for x := w.next; x != nil && n < preferWaiters; x, n = x.next, n+1 {
			if x.key == r.b.StateKey {
				for y := w; y != x; y = y.next {
					y.skipped++
				}
				w = x
				break
			}
		}
	}
	p.removeLocked(w)
	p.deliverLocked(w, r)
	return true
}

// dialIfNeededLocked starts dials while waiters outnumber dials in flight (of the
// current generation: the others serve no waiter) and the pool has room, as far as
// the route's back-off allows.
func (p *Pool) dialIfNeededLocked() {
	for p.nwait > p.dialing-p.staleDials && p.open < p.cfg.Size && !p.closed {
		if p.budget != nil && !p.budget.Take(p.bu) {
			p.stats.BudgetWaits++
			return // the budget wakes the pool when a slot may be free
		}
		now := time.Now()
		ok, probe, retryAt := p.bo.permit(now)
		if !ok {
			if p.budget != nil {
				p.budget.Give(1)
			}
			if p.open == 0 {
				// Nothing open could ever serve the waiters: tell them now.
				err := p.bo.refuse(now, p.nwait)
				if err == nil {
					continue // the back-off ended just now: ask again
				}
				p.stats.BackoffRefusals += uint64(p.nwait)
				for p.handLocked(result{err: err}) {
				}
			} else if !retryAt.IsZero() {
				p.retry.armBy(retryAt)
			}
			return
		}
		p.startDialLocked(probe)
	}
}

func (p *Pool) startDialLocked(probe bool) {
	p.open++
	p.dialing++
	p.wg.Add(1)
	go p.dial(probe, dialGen{fn: p.cfg.Dial, timeout: p.cfg.ConnectTimeout, gen: p.gen, retired: p.retired})
}

// dialGen is what a dial takes from the configuration when it starts.
type dialGen struct {
	fn      DialFunc
	timeout time.Duration
	gen     uint64
	retired <-chan struct{} // closed when Reconfigure retires gen
}

// budgetWoke runs dialIfNeededLocked again when the budget may have a slot
// (Budget.Take's wake).
func (p *Pool) budgetWoke() {
	p.mu.Lock()
	p.dialIfNeededLocked()
	p.mu.Unlock()
}

// dropOpenLocked takes n backends out of the open count (closed, or dials
// that failed) and returns their slots to the budget. p.mu is held.
func (p *Pool) dropOpenLocked(n int) {
	p.open -= n
	if p.budget != nil && n > 0 {
		p.budget.Give(n)
	}
}

// OverBudget reports whether the pool has backends beyond its Budget's
// slots: a backend released now is to be closed (Release does), not handed
// to a waiting client. It needs no lock (budget is New's).
func (p *Pool) OverBudget() bool { return p.budget != nil && p.budget.Over() > 0 }

// retryDial runs dialIfNeededLocked again when the back-off ends (p.retry,
// armed by dialIfNeededLocked): waiters kept waiting by it while backends are
// held get their dial then rather than only when a held backend comes back.
func (p *Pool) retryDial() {
	p.mu.Lock()
	p.retry.fired()
	p.dialIfNeededLocked()
	p.mu.Unlock()
}

// dial opens one backend with g's dial function; probe says it is the one attempt
// the back-off allowed. A dial whose generation Reconfigure retired meanwhile is
// stale: abandoned, its backend closed, its failure reported to nobody.
func (p *Pool) dial(probe bool, g dialGen) {
	defer p.wg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), g.timeout)
	go func() { // a closing pool, or a retiring Reconfigure, abandons dials in flight
		select {
		case <-p.done:
			cancel()
		case <-g.retired:
			cancel()
		case <-ctx.Done():
		}
	}()
	start := time.Now()
	b, err := g.fn(ctx)
	cancel()
	took := time.Since(start)
	p.mu.Lock()
	p.dialing--
	p.stats.DialTime += took
	stale := g.gen != p.gen
	if stale {
		p.staleDials--
	}
	if err != nil {
		p.dropOpenLocked(1)
		p.stats.DialFailures++
		if stale {
			// It says nothing about the current configuration: no back-off step
			// (only its probe, if it was one, ends), no waiter told.
			p.bo.failed(start, start.Add(took), err, probe, true)
			p.dialIfNeededLocked()
			p.mu.Unlock()
			p.log.Load().Debug("server connection failed", "error", err, "elapsed", took, "reason", "retired by reconfiguration")
			return
		}
		st := p.bo.failed(start, start.Add(took), err, probe, p.closed)
		err = fmt.Errorf("%w: %w", ErrDial, err)
		if p.open == 0 {
			// Nothing open could ever serve the waiters: tell them all now.
			for p.handLocked(result{err: err}) {
			}
		} else {
			p.handLocked(result{err: err})
			// The failed dial freed a slot: waiters still queued get a dial of their own
			// rather than waiting for a held backend to come back (after the back-off).
			p.dialIfNeededLocked()
		}
		p.mu.Unlock()
		// One line per back-off step: the failures of a burst of dials and of the
		// acquisitions refused meanwhile are summed up in the next one.
		if st.log {
			p.log.Load().Warn("server connection failed", "error", err, "attempt", st.attempts,
				"retry_in", st.delay.Round(time.Millisecond), "clients_refused", st.refused, "elapsed", took)
		} else {
			p.log.Load().Debug("server connection failed", "error", err, "elapsed", took)
		}
		return
	}
	b.pool = p
	b.gen = g.gen
	if p.cfg.Lifetime > 0 {
		j := 0.9 + 0.2*rand.Float64()
		b.expiresAt = b.CreatedAt.Add(time.Duration(float64(p.cfg.Lifetime) * j))
	}
	p.stats.Dials++
	var st step
	if stale {
		p.bo.failed(start, start.Add(took), nil, probe, true) // ends its probe only
	} else {
		p.params = b.Params
		st = p.bo.succeeded(start.Add(took), probe)
	}
	if p.closed {
		p.dropOpenLocked(1)
		p.stats.Closed++
		p.mu.Unlock()
		_ = b.Close()
		return
	}
	if stale || p.open > p.cfg.Size {
		// Retired while dialing, or Reconfigure made the pool smaller.
		p.dropOpenLocked(1)
		p.stats.Closed++
		p.stats.Retired++
		p.dialIfNeededLocked()
		p.mu.Unlock()
		p.log.Load().Debug("server connection closed", "pid", b.PID, "reason", "reconfigured")
		_ = b.Close()
		return
	}
	if !p.handLocked(result{b: b}) {
		b.idleSince = time.Now()
		p.idle = append(p.idle, b)
	}
	if st.log {
		// The back-off held back dials for waiters that queued meanwhile.
		p.dialIfNeededLocked()
	}
	p.mu.Unlock()
	if st.log {
		p.log.Load().Info("server connection restored", "pid", b.PID, "failed_attempts", st.attempts,
			"down_for", st.downFor.Round(time.Millisecond), "clients_refused", st.refused)
	}
	p.log.Load().Debug("server connection opened", "pid", b.PID, "elapsed", took)
}

func (b *Backend) expired(now time.Time) bool {
	return !b.expiresAt.IsZero() && now.After(b.expiresAt)
}

// Release returns a backend that is idle (ReadyForQuery 'I', nothing in flight) to
// the pool: to the oldest waiter, or onto the idle stack. An expired backend is
// closed, and so is one that Reconfigure retired or one released while more than
// Size backends are open (after Reconfigure made the pool smaller).
func (p *Pool) Release(b *Backend) {
	now := time.Now()
	if b.expired(now) {
		p.Destroy(b)
		return
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		p.Destroy(b)
		return
	}
	if b.gen != p.gen || p.open > p.cfg.Size {
		p.dropOpenLocked(1)
		p.stats.Closed++
		p.stats.Retired++
		p.dialIfNeededLocked() // a retired backend's slot may serve a waiter
		p.mu.Unlock()
		p.log.Load().Debug("server connection closed", "pid", b.PID, "reason", "reconfigured")
		_ = b.Close()
		return
	}
	if p.OverBudget() {
		p.dropOpenLocked(1)
		p.stats.Closed++
		p.stats.BudgetClosed++
		p.mu.Unlock()
		p.log.Load().Debug("server connection closed", "pid", b.PID, "reason", "over the fleet budget")
		_ = b.Close()
		return
	}
	if !p.handLocked(result{b: b}) {
		b.idleSince = now
		p.idle = append(p.idle, b)
	}
	p.mu.Unlock()
}

// Destroy closes a backend whose state is unknown or broken and frees its slot; a
// waiter, if any, gets a fresh dial.
func (p *Pool) Destroy(b *Backend) {
	_ = b.Close()
	p.mu.Lock()
	p.dropOpenLocked(1)
	p.stats.Closed++
	p.dialIfNeededLocked()
	p.mu.Unlock()
}

// Reconfigure applies cfg to the running pool, for a live reload of the
// configuration. Size, Lifetime, IdleTimeout and ConnectTimeout are taken as New
// takes them (ConnectTimeout <= 0: the default); Dial and Logger only when not
// nil (nil keeps the current ones). It is safe to call at any time, concurrently
// with every other method. It never waits for a dial or a client; it closes the
// idle backends it takes out of the pool before it returns (outside the pool's
// lock; each close sends Terminate, bounded to a second).
//
//   - Size: a larger pool dials at once for the clients queued in Acquire. In a
//     smaller one the idle backends above the new size are closed at once (the
//     least recently used first), and backends held by clients or being dialed
//     are closed when released or when their dial ends while more than Size are
//     open, instead of going idle or to a waiter: the pool shrinks to the new
//     size without closing a backend a client holds.
//   - Lifetime applies to backends whose dial ends after the call; the others keep
//     their expiry. IdleTimeout applies from the next maintenance pass (at most a
//     second), ConnectTimeout and Dial to dials that start after the call.
//   - retire (the upstream's address or credentials changed): every backend
//     opened or being opened before the call is retired. Idle ones are closed at
//     once, held ones when released (a client keeps the one it holds until then),
//     and dials in flight are abandoned (their context is canceled) and what they
//     open is closed: once Reconfigure returns, no backend of the old
//     configuration is handed out again. The route's back-off ends, since its
//     failures were those of the old configuration; failures of abandoned dials
//     are not counted in it and not reported to clients.
//
// Backends closed this way count in Stats.Closed and Stats.Retired.
func (p *Pool) Reconfigure(cfg Config, retire bool) {
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = defaultConnectTimeout
	}
	if cfg.Logger != nil {
		p.log.Store(cfg.Logger)
	}
	p.mu.Lock()
	if cfg.Dial == nil {
		cfg.Dial = p.cfg.Dial
	}
	if cfg.Logger == nil {
		cfg.Logger = p.cfg.Logger
	}
	p.cfg = cfg
	var doomed []*Backend
	if retire {
		p.gen++
		p.staleDials = p.dialing
		close(p.retired)
		p.retired = make(chan struct{})
		p.bo.reset()
		doomed = p.dropIdleLocked(func(*Backend) bool { return true })
	}
	if n := min(p.open-cfg.Size, len(p.idle)); n > 0 {
		// p.idle[0] is the least recently released.
		doomed = append(doomed, p.dropIdleLocked(func(*Backend) bool { n--; return n >= 0 })...)
	}
	p.stats.Retired += uint64(len(doomed))
	p.dialIfNeededLocked()
	open, size := p.open, cfg.Size
	p.mu.Unlock()
	log := p.log.Load()
	log.Debug("pool reconfigured", "size", size, "open", open, "retire", retire, "closed_idle", len(doomed))
	for _, b := range doomed {
		log.Debug("server connection closed", "pid", b.PID, "reason", "reconfigured")
		_ = b.Close()
	}
}

// ServerParams returns the ParameterStatus values of the newest backend, or nil if
// none was ever opened. The map must not be modified.
func (p *Pool) ServerParams() map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.params
}

// Stats returns a snapshot of the pool's figures.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stats
	s.Acquires = p.acquires.Load()
	s.Size = p.cfg.Size
	s.Open = p.open
	s.Idle = len(p.idle)
	s.Dialing = p.dialing
	s.InUse = p.open - s.Idle - p.dialing
	s.Waiting = p.nwait
	if p.head != nil {
		s.MaxWait = p.head.since.elapsed()
	}
	if p.nwait > 0 {
		s.Exhausted += time.Since(p.exhaustedSince)
	}
	return s
}

// Health returns a snapshot of the pool's backends and of its route's dial history
// and back-off.
func (p *Pool) Health() Health {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	h := Health{Open: p.open - p.dialing, Dialing: p.dialing, Refused: p.stats.BackoffRefusals}
	p.bo.fill(&h, now)
	return h
}

// ready is Registry.UpstreamReady for this pool: nil while a backend is open
// (idle ones are checked for life first and closed when dead) or the last dial
// succeeded. With nothing open it starts one dial unless one is in flight or the
// back-off forbids it; the backend goes idle into the pool. It never waits for I/O.
func (p *Pool) ready() error {
	now := time.Now()
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return ErrClosed
	}
	var dead []*Backend
	if p.open-p.dialing == len(p.idle) { // none held: is an idle one still alive?
		dead = p.dropIdleLocked(func(b *Backend) bool { return b.expired(now) || !b.alive() })
	}
	var err error
	if p.open-p.dialing == 0 {
		if p.dialing == p.staleDials && p.open < p.cfg.Size && (p.budget == nil || p.budget.Take(p.bu)) {
			if ok, probe, _ := p.bo.permit(now); ok {
				p.startDialLocked(probe)
			} else if p.budget != nil {
				p.budget.Give(1)
			}
		}
		err = p.bo.readyErr()
	}
	p.mu.Unlock()
	if len(dead) > 0 {
		go func() { // Close writes: keep the caller (an HTTP probe) from waiting
			for _, b := range dead {
				p.log.Load().Debug("server connection closed", "pid", b.PID, "reason", "dead or expired while idle")
				_ = b.Close()
			}
		}()
	}
	return err
}

// setBackoff makes p use the route's back-off state bo.
func (p *Pool) setBackoff(bo *backoff) {
	p.mu.Lock()
	p.bo = bo
	p.mu.Unlock()
}

// backoffState returns the back-off state p uses.
func (p *Pool) backoffState() *backoff {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.bo
}

// Close closes idle backends, fails waiters with ErrClosed and makes later Acquire
// calls fail; backends still held are closed when released. It waits for the
// maintenance loop and dials in flight to end.
func (p *Pool) Close() { p.close(false) }

// close is Close; with unproven it closes p only if p never logged in and holds
// nothing, checked under the same lock that marks p closed.
func (p *Pool) close(unproven bool) bool {
	p.mu.Lock()
	if p.closed || unproven && (p.params != nil || p.open != 0 || p.nwait != 0) {
		p.mu.Unlock()
		return false
	}
	p.closed = true
	p.expiry.stop()
	p.retry.stop()
	idle := p.idle
	p.idle = nil
	p.dropOpenLocked(len(idle))
	p.stats.Closed += uint64(len(idle))
	for p.handLocked(result{err: ErrClosed}) {
	}
	p.mu.Unlock()
	close(p.done)
	for _, b := range idle {
		_ = b.Close()
	}
	p.wg.Wait()
	return true
}

func (p *Pool) maintain() {
	defer p.wg.Done()
	interval := time.Second
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-p.done:
			return
		case now := <-t.C:
			p.reap(now)
		}
	}
}

// dropIdleLocked takes the idle backends for which drop is true off the idle
// stack and out of the open count, and returns them for the caller to close
// outside the lock. p.mu is held.
func (p *Pool) dropIdleLocked(drop func(*Backend) bool) []*Backend {
	var out []*Backend
	kept := p.idle[:0]
	for _, b := range p.idle {
		if drop(b) {
			out = append(out, b)
			continue
		}
		kept = append(kept, b)
	}
	for i := len(kept); i < len(p.idle); i++ {
		p.idle[i] = nil
	}
	p.idle = kept
	p.dropOpenLocked(len(out))
	p.stats.Closed += uint64(len(out))
	return out
}

// reap closes idle backends past their lifetime or idle timeout.
func (p *Pool) reap(now time.Time) {
	p.mu.Lock()
	doomed := p.dropIdleLocked(func(b *Backend) bool {
		return b.expired(now) || (p.cfg.IdleTimeout > 0 && now.Sub(b.idleSince) > p.cfg.IdleTimeout)
	})
	if p.budget != nil {
		// Beyond the budget's slots (its coordination was lost): the least
		// recently used idle backends go.
		over := p.budget.Over()
		extra := p.dropIdleLocked(func(*Backend) bool {
			over--
			return over >= 0
		})
		p.stats.BudgetClosed += uint64(len(extra))
		doomed = append(doomed, extra...)
	}
	p.mu.Unlock()
	for _, b := range doomed {
		p.log.Load().Debug("server connection closed", "pid", b.PID, "reason", "idle timeout or lifetime")
		_ = b.Close()
	}
}
