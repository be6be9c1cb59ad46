package fleet

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/pool"
)

// Config configures a Share.
type Config struct {
	// Budget is N, the fleet's server connections for the route; at least 1.
	Budget int
	// Min is the floor: slots the Share keeps even when idle, and server
	// connections it keeps while its coordination is down.
	Min int
	// Key is the first key of the route's advisory locks (KeyOf).
	Key int32
	// Connect opens the coordination connection (the route's database).
	Connect func(ctx context.Context) (*pgconn.PgConn, error)
	// ConnectTimeout bounds a connect and each coordination query (<= 0: 5s).
	ConnectTimeout time.Duration
	// Logger receives the Share's events (nil: discarded).
	Logger *slog.Logger
}

// KeyOf derives a route's first advisory-lock key from the fleet's name and
// the route: every sidecar of the fleet derives the same one.
func KeyOf(fleet, database, user string) int32 {
	h := fnv.New32a()
	h.Write([]byte(fleet))
	h.Write([]byte{0})
	h.Write([]byte(database))
	h.Write([]byte{0})
	h.Write([]byte(user))
	return int32(h.Sum32())
}

// Stats is a snapshot of a Share.
type Stats struct {
	Budget int  // N
	Min    int  // the floor
	Held   int  // slots held here
	Used   int  // server connections open (or being opened) here
	Up     bool // the coordination connection is up
	// FleetHeld is the slots the whole fleet held at the last check
	// (pg_locks), -1 before the first.
	FleetHeld int
	// AcquireFailures counts attempts to take a slot that found none free.
	AcquireFailures uint64
	// Waits and WaitTime count the waits for a slot (from the first refused
	// Take to the slot) and their total; WaitBuckets their distribution over
	// WaitBounds.
	Waits       uint64
	WaitTime    time.Duration
	WaitBuckets [len(WaitBounds) + 1]uint64
	// CoordinationLost counts the coordination connections lost; Overshoot
	// the total time server connections stayed open beyond the slots held.
	CoordinationLost uint64
	Overshoot        time.Duration
}

// WaitBounds are the upper bounds of Stats.WaitBuckets (the last bucket is
// above them).
var WaitBounds = [...]time.Duration{time.Millisecond, 5 * time.Millisecond, 25 * time.Millisecond,
	100 * time.Millisecond, 500 * time.Millisecond, 2 * time.Second, 10 * time.Second}

// Share is one route's part of the fleet's budget in this sidecar: the slots
// it holds on its coordination connection. Take, Give and Over make it the
// route pool's pool.Budget.
type Share struct {
	cfg Config
	log *slog.Logger

	mu          sync.Mutex
	held        []int32         // slots locked on conn
	used        int             // slots the pool took
	user        pool.BudgetUser // the pool, known from its first refused Take
	promised    int             // slots taken for a woken pool that has not taken them yet
	promiseAt   time.Time       // when the last was promised (promiseGrace)
	waitSince   time.Time       // the first refused Take not served yet
	up          bool
	regaining   bool      // up again, taking back slots for the connections open
	yielding    bool      // giving a slot up for a sidecar below its floor
	yieldedAt   time.Time // when it last gave one up
	othersBelow int       // sidecars below their floor at the last check (hunger locks)
	hungry      bool      // this one holds the hunger lock (below its floor); run's only
	floorWarned time.Time // the last "floor cannot be met" log line
	overSince   time.Time // used > allowed since
	st          Stats

	over atomic.Int32 // max(0, used - allowed), for Over
	kick chan struct{}
	done chan struct{}
	wg   sync.WaitGroup
}

// New starts a Share: its goroutine connects and takes the floor's slots.
func New(cfg Config) *Share {
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	cfg.Min = max(0, min(cfg.Min, cfg.Budget))
	s := &Share{cfg: cfg, log: cfg.Logger, kick: make(chan struct{}, 1), done: make(chan struct{})}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.st.FleetHeld = -1
	s.wg.Add(1)
	go s.run()
	return s
}

// Take implements pool.Budget: a slot held and not used, else false; the
// goroutine then works on a slot for u while u is Wanting, and wakes it.
func (s *Share) Take(u pool.BudgetUser) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.up && s.used < s.allowedLocked() {
		s.used++
		s.promised = max(0, s.promised-1)
		s.updateLocked()
		return true
	}
	s.user = u
	if s.waitSince.IsZero() {
		// A pool starts wanting: the goroutine tries at once, then keeps
		// trying on its own schedule (a full fleet's back-off) while the
		// pool is Wanting, whatever more refused Takes say meanwhile.
		s.waitSince = time.Now()
		s.kickLocked()
	}
	return false
}

// Give implements pool.Budget.
func (s *Share) Give(n int) {
	s.mu.Lock()
	s.used = max(0, s.used-n)
	s.updateLocked()
	if len(s.held) > max(s.cfg.Min, s.used+s.promised) {
		s.kickLocked() // a slot to give back to the fleet (unless the pool wants it)
	}
	s.mu.Unlock()
}

// Over implements pool.Budget.
func (s *Share) Over() int { return int(s.over.Load()) }

// allowedLocked is how many server connections the Share may have now.
func (s *Share) allowedLocked() int {
	switch {
	case s.up && s.regaining:
		return max(len(s.held), s.used) // no closing while slots are taken back
	case s.up && s.yielding:
		return len(s.held) - 1 // one goes to a sidecar below its floor
	case s.up:
		return len(s.held)
	}
	return s.cfg.Min
}

// updateLocked recomputes over, and the time spent beyond the slots.
func (s *Share) updateLocked() {
	o := max(0, s.used-s.allowedLocked())
	s.over.Store(int32(o))
	now := time.Now()
	if o > 0 && s.overSince.IsZero() {
		s.overSince = now
	} else if o == 0 && !s.overSince.IsZero() {
		s.st.Overshoot += now.Sub(s.overSince)
		s.overSince = time.Time{}
	}
}

func (s *Share) kickLocked() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Stats returns a snapshot.
func (s *Share) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.st
	st.Budget, st.Min, st.Held, st.Used, st.Up = s.cfg.Budget, s.cfg.Min, len(s.held), s.used, s.up
	if !s.overSince.IsZero() {
		st.Overshoot += time.Since(s.overSince)
	}
	return st
}

// Close stops the Share and closes its coordination connection, which frees
// its slots.
func (s *Share) Close() {
	select {
	case <-s.done:
		return
	default:
	}
	close(s.done)
	s.wg.Wait()
}

// floorWarnEvery spaces the log lines saying the floor cannot be met.
const floorWarnEvery = 30 * time.Second

// promiseGrace is how long a slot taken for a woken pool is kept for it
// before it may be freed again.
const promiseGrace = 2 * time.Second

// checkEvery is how often the coordination connection is checked (and the
// fleet's slots counted) when nothing else happens.
const checkEvery = time.Second

// run is the Share's goroutine: it keeps the coordination connection, takes
// slots while the pool wants them, and frees those above max(Min, used).
func (s *Share) run() {
	defer s.wg.Done()
	var conn *pgconn.PgConn
	defer func() {
		if conn != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = conn.Close(ctx)
			cancel()
		}
	}()
	retry := 50 * time.Millisecond // the next wait after a failure (jittered)
	var lastCheck time.Time
	for {
		wait := checkEvery
		if conn == nil || conn.IsClosed() {
			if conn != nil {
				s.lost("the coordination connection closed")
			}
			conn = s.connect()
			if conn == nil {
				wait = retry
				retry = min(2*retry, 5*time.Second)
			} else {
				retry = 50 * time.Millisecond
			}
		}
		if conn != nil {
			var err error
			var again bool
			if again, err = s.step(conn); err == nil && time.Since(lastCheck) >= checkEvery {
				err = s.check(conn)
				lastCheck = time.Now()
			}
			if err != nil {
				s.log.Warn("fleet coordination failed", "error", err)
				_ = conn.Close(context.Background())
				conn = nil
				s.lost(err.Error())
				wait = 0
			} else if again {
				wait = 0
			} else if s.belowFloor() {
				// Below the floor: others give up a slot for it (they see its
				// hunger lock at their next check); be there to take it.
				wait = 50*time.Millisecond + rand.N(100*time.Millisecond)
			} else if s.demand() {
				// The fleet is full: try again after a jittered pause.
				wait = retry/2 + rand.N(retry)
				retry = min(2*retry, time.Second)
			} else {
				retry = 50 * time.Millisecond
			}
		}
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-s.done:
				t.Stop()
				return
			case <-s.kick:
			case <-t.C:
			}
			t.Stop()
		} else {
			select {
			case <-s.done:
				return
			default:
			}
		}
	}
}

// demand reports whether the pool wants a slot it has not got (asked
// without s.mu: Wanting takes the pool's lock).
func (s *Share) demand() bool {
	s.mu.Lock()
	u := s.user
	s.mu.Unlock()
	return u != nil && u.Wanting()
}

// belowFloor reports whether the Share holds less than its floor.
func (s *Share) belowFloor() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.held) < s.cfg.Min
}

// connect opens the coordination connection; nil after a failure (logged).
func (s *Share) connect() *pgconn.PgConn {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ConnectTimeout)
	defer cancel()
	c, err := s.cfg.Connect(ctx)
	if err != nil {
		s.log.Warn("fleet coordination connection failed", "error", err)
		return nil
	}
	s.hungry = false // its locks went with the old connection
	s.mu.Lock()
	s.up, s.held = true, s.held[:0]
	s.regaining = s.used > 0
	s.yielding, s.othersBelow = false, 0
	s.updateLocked()
	s.mu.Unlock()
	s.log.Info("fleet coordination up", "budget", s.cfg.Budget, "min", s.cfg.Min)
	return c
}

// lost records a lost coordination connection: PostgreSQL released its locks.
func (s *Share) lost(why string) {
	s.mu.Lock()
	if s.up {
		s.st.CoordinationLost++
	}
	s.up, s.held = false, s.held[:0]
	s.updateLocked()
	used := s.used
	s.mu.Unlock()
	s.log.Warn("fleet coordination down: no new server connections until it is back", "reason", why,
		"server_connections", used, "kept", min(used, s.cfg.Min))
}

// step takes one slot when the pool (or the floor) wants one, or frees the
// slots above what is needed; while another sidecar is below its floor and
// this one above its own, it takes none and gives one up. again: there may
// be more to do at once.
func (s *Share) step(conn *pgconn.PgConn) (again bool, err error) {
	wanting := s.demand()
	s.mu.Lock()
	if s.promised > 0 && time.Since(s.promiseAt) > promiseGrace {
		s.promised = 0 // the woken pool did not come for them
	}
	have := len(s.held)
	want := max(s.cfg.Min, s.used+s.promised)
	if wanting {
		want = max(want, s.used+s.promised+1)
	} else {
		s.waitSince = time.Time{} // served by a released connection, or gone
	}
	want = min(want, s.cfg.Budget)
	if s.othersBelow > 0 {
		// Another sidecar is below its floor: take nothing beyond our own
		// floor, and give one slot up per check (its hunger lock is counted
		// again at the next).
		want = min(want, max(have, s.cfg.Min))
		if have > s.cfg.Min && time.Since(s.yieldedAt) >= checkEvery {
			s.yielding = true
		}
	}
	if s.yielding {
		want = min(want, have-1)
	}
	if s.regaining && have >= s.used {
		s.regaining = false
	}
	s.updateLocked()
	target := max(want, s.used) // a slot in use is freed once its connection closes
	held := slices.Clone(s.held)
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ConnectTimeout)
	defer cancel()
	switch {
	case have < want:
		slot, ok, err := s.tryLock(ctx, conn, held)
		if err != nil {
			return false, err
		}
		if !ok {
			return false, s.full(ctx, conn, have)
		}
		s.mu.Lock()
		s.held = append(s.held, slot)
		s.updateLocked()
		u := s.user
		woke := wanting && u != nil
		if woke {
			s.promised++
			s.promiseAt = time.Now()
			if !s.waitSince.IsZero() {
				s.recordWaitLocked(time.Since(s.waitSince))
				s.waitSince = time.Time{}
			}
		}
		satisfied := len(s.held) >= s.cfg.Min
		s.mu.Unlock()
		if s.hungry && satisfied {
			if err := s.hunger(ctx, conn, false); err != nil {
				return false, err
			}
		}
		if woke {
			u.Wake()
		}
		return true, nil
	case have > target:
		free := held[target:]
		if err := s.unlock(ctx, conn, free); err != nil {
			return false, err
		}
		s.mu.Lock()
		s.held = slices.DeleteFunc(s.held, func(x int32) bool { return slices.Contains(free, x) })
		if s.yielding {
			// Given up: no other slot until the next check, and none taken
			// while it says someone still starves.
			s.yielding, s.yieldedAt = false, time.Now()
		}
		s.updateLocked()
		s.mu.Unlock()
		return false, nil
	}
	return false, nil
}

// full records an attempt that found the fleet's budget full; below the
// floor, it also takes the hunger lock, which tells the other sidecars to
// give a slot up.
func (s *Share) full(ctx context.Context, conn *pgconn.PgConn, have int) error {
	s.mu.Lock()
	s.st.AcquireFailures++
	if s.regaining {
		// The fleet took the slots meanwhile: the connections beyond those
		// held go as they are released.
		s.regaining = false
		s.updateLocked()
	}
	below := have < s.cfg.Min
	s.mu.Unlock()
	if !below {
		return nil
	}
	if time.Since(s.floorWarned) > floorWarnEvery {
		s.floorWarned = time.Now()
		s.log.Warn("fleet budget full: this sidecar holds less than its floor; the others give slots up for it",
			"held", have, "min", s.cfg.Min, "budget", s.cfg.Budget)
	}
	if !s.hungry {
		return s.hunger(ctx, conn, true)
	}
	return nil
}

// hungerSlot is the second key of the hunger lock: a shared lock each
// sidecar below its floor holds, counted by the others' checks.
const hungerSlot = -1

// hunger takes (on) or drops the hunger lock.
func (s *Share) hunger(ctx context.Context, conn *pgconn.PgConn, on bool) error {
	q := `SELECT pg_advisory_unlock_shared($1::int4, $2::int4)`
	if on {
		q = `SELECT pg_advisory_lock_shared($1::int4, $2::int4)` // shared: never waits on another shared holder
	}
	args := [][]byte{[]byte(strconv.Itoa(int(s.cfg.Key))), []byte(strconv.Itoa(hungerSlot))}
	if res := conn.ExecParams(ctx, q, args, nil, nil, nil).Read(); res.Err != nil {
		return fmt.Errorf("fleet: hunger lock: %w", res.Err)
	}
	s.hungry = on
	return nil
}

func (s *Share) recordWaitLocked(d time.Duration) {
	s.st.Waits++
	s.st.WaitTime += d
	i := 0
	for i < len(WaitBounds) && d > WaitBounds[i] {
		i++
	}
	s.st.WaitBuckets[i]++
}

// tryLock takes one free slot of the fleet, starting at a random one, and
// never one held here already (a session's advisory locks are re-entrant):
// CASE fixes the order of evaluation, and LIMIT 1 stops the scan at the
// first lock taken.
func (s *Share) tryLock(ctx context.Context, conn *pgconn.PgConn, held []int32) (int32, bool, error) {
	n := s.cfg.Budget
	start := rand.N(n)
	args := [][]byte{
		[]byte(strconv.Itoa(int(s.cfg.Key))),
		[]byte(strconv.Itoa(n)),
		[]byte(strconv.Itoa(start)),
		[]byte(int4Array(held)),
	}
	res := conn.ExecParams(ctx, `SELECT x.s FROM (SELECT ((g + $3::int4) % $2::int4)::int4 AS s FROM generate_series(0, $2::int4 - 1) AS g) x
WHERE CASE WHEN x.s = ANY($4::int4[]) THEN false ELSE pg_try_advisory_lock($1::int4, x.s) END LIMIT 1`, args, nil, nil, nil).Read()
	if res.Err != nil {
		return 0, false, fmt.Errorf("fleet: take a slot: %w", res.Err)
	}
	if len(res.Rows) == 0 {
		return 0, false, nil
	}
	v, err := strconv.Atoi(string(res.Rows[0][0]))
	if err != nil {
		return 0, false, fmt.Errorf("fleet: take a slot: %w", err)
	}
	return int32(v), true, nil
}

// unlock frees slots.
func (s *Share) unlock(ctx context.Context, conn *pgconn.PgConn, slots []int32) error {
	args := [][]byte{[]byte(strconv.Itoa(int(s.cfg.Key))), []byte(int4Array(slots))}
	res := conn.ExecParams(ctx, `SELECT pg_advisory_unlock($1::int4, s) FROM unnest($2::int4[]) AS s`, args, nil, nil, nil).Read()
	if res.Err != nil {
		return fmt.Errorf("fleet: free slots: %w", res.Err)
	}
	return nil
}

// check makes sure the coordination connection works and counts the
// fleet's slots (pg_locks: the two-key form has objsubid 2).
func (s *Share) check(conn *pgconn.PgConn) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ConnectTimeout)
	defer cancel()
	args := [][]byte{[]byte(strconv.Itoa(int(s.cfg.Key)))}
	res := conn.ExecParams(ctx, `SELECT count(*) FILTER (WHERE objid::int8 <> 4294967295 AND mode = 'ExclusiveLock'),
count(*) FILTER (WHERE objid::int8 = 4294967295 AND mode = 'ShareLock')
FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2
AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
AND classid::int8 = ($1::int4::int8 & 4294967295)`, args, nil, nil, nil).Read()
	if res.Err != nil {
		return fmt.Errorf("fleet: check: %w", res.Err)
	}
	if len(res.Rows) != 1 || len(res.Rows[0]) != 2 {
		return errors.New("fleet: check: no row")
	}
	n, err1 := strconv.Atoi(string(res.Rows[0][0]))
	h, err2 := strconv.Atoi(string(res.Rows[0][1]))
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("fleet: check: %w", err)
	}
	if s.hungry {
		h-- // not ourselves
	}
	s.mu.Lock()
	s.st.FleetHeld, s.othersBelow = n, max(0, h)
	s.mu.Unlock()
	return nil
}

// int4Array is the text form of an int4[].
func int4Array(xs []int32) string {
	b := []byte{'{'}
	for i, x := range xs {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, int64(x), 10)
	}
	return string(append(b, '}'))
}
