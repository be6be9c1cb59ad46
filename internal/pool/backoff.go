package pool

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// ErrBackoff marks an acquisition refused without a dial: the route's last
// attempts to open a server connection failed, its back-off has not ended and
// nothing open could serve the caller. An error wrapping it (a *BackoffError) also
// wraps ErrDial and the last dial error, so ServerError finds a PostgreSQL error
// (28P01, 3D000, ...) in it.
var ErrBackoff = errors.New("server connection attempts are backing off")

// ErrNotChecked is what UpstreamReady returns before the first attempt to open a
// server connection of the upstream has ended.
var ErrNotChecked = errors.New("no server connection of the upstream attempted yet")

// Back-off between failed attempts to open a server connection of one route: the
// delay doubles from backoffMin with each consecutive failure up to backoffMax, less
// a random 0-25% so that pods and routes do not retry in step. (Variables for the
// tests only.)
var (
	backoffMin = 50 * time.Millisecond
	backoffMax = 5 * time.Second
)

// BackoffError is the error of an acquisition refused by the back-off.
type BackoffError struct {
	// Err is the last dial error, as the dialer returned it.
	Err error
	// Attempts is the number of consecutive failed attempts.
	Attempts int
	// RetryAt is the earliest time of the next attempt.
	RetryAt time.Time
}

func (e *BackoffError) Error() string {
	return fmt.Sprintf("%v: %v (failed %d times in a row, next attempt in %v)",
		ErrDial, e.Err, e.Attempts, max(0, time.Until(e.RetryAt)).Round(time.Millisecond))
}

// Unwrap makes errors.Is see ErrBackoff, ErrDial and the last dial error.
func (e *BackoffError) Unwrap() []error { return []error{ErrBackoff, ErrDial, e.Err} }

// backoff is the dial state of one route: the consecutive failures and when the
// next attempt may start. It outlives the route's pool: the Registry keeps it when
// DropUnproven removes the pool, and hands it to the route's next pool, so that a
// client retrying a route whose login fails cannot make the proxy dial at once.
// Lock order: Pool.mu, then backoff.mu.
type backoff struct {
	mu        sync.Mutex
	failures  int       // consecutive failed attempts; 0: dial freely
	firstFail time.Time // first failure of the current run
	lastFail  time.Time // when the last failure was recorded
	until     time.Time // no attempt before
	delay     time.Duration
	probing   bool // the one attempt allowed after the delay is in flight
	lastErr   error
	lastErrAt time.Time
	lastOK    time.Time // last successful dial
	refused   uint64    // acquisitions refused since the last log line
	refusal   *BackoffError
}

// permit says whether a dial may start now. While backing off it allows one
// attempt (a probe) once the delay has passed; otherwise retryAt is when to ask
// again (zero: when the probe in flight ends).
func (bo *backoff) permit(now time.Time) (ok, probe bool, retryAt time.Time) {
	bo.mu.Lock()
	defer bo.mu.Unlock()
	switch {
	case bo.failures == 0:
		return true, false, time.Time{}
	case bo.probing:
		return false, false, time.Time{}
	case now.Before(bo.until):
		return false, false, bo.until
	}
	bo.probing = true
	return true, true, time.Time{}
}

// refuse returns the error for n acquisitions refused because the route is backing
// off, or nil when it is not.
func (bo *backoff) refuse(now time.Time, n int) error {
	bo.mu.Lock()
	defer bo.mu.Unlock()
	if bo.failures == 0 || bo.refusal == nil || !bo.probing && !now.Before(bo.until) {
		return nil
	}
	bo.refused += uint64(n)
	return bo.refusal
}

// step is what a failed or successful dial reports for the log.
type step struct {
	log      bool // a new back-off step (failure) or the end of one (success)
	attempts int
	delay    time.Duration
	refused  uint64
	downFor  time.Duration
}

// failed records a dial that started at start and failed with err at now. Failures
// of dials that started before the last recorded failure (several dials of one
// burst) count once: the step advances once per attempt after a delay.
func (bo *backoff) failed(start, now time.Time, err error, probe, abandoned bool) step {
	bo.mu.Lock()
	defer bo.mu.Unlock()
	if probe {
		bo.probing = false
	}
	if abandoned { // the pool was closed under the dial: says nothing about the server
		return step{}
	}
	bo.lastErr, bo.lastErrAt = err, now
	if bo.failures > 0 && start.Before(bo.lastFail) {
		bo.refusal = &BackoffError{Err: err, Attempts: bo.failures, RetryAt: bo.until}
		return step{attempts: bo.failures, delay: bo.delay}
	}
	if bo.failures == 0 {
		bo.firstFail = now
	}
	bo.failures++
	bo.lastFail = now
	bo.delay = backoffDelay(bo.failures)
	bo.until = now.Add(bo.delay)
	bo.refusal = &BackoffError{Err: err, Attempts: bo.failures, RetryAt: bo.until}
	s := step{log: true, attempts: bo.failures, delay: bo.delay, refused: bo.refused}
	bo.refused = 0
	return s
}

// succeeded records a successful dial; it ends the back-off.
func (bo *backoff) succeeded(now time.Time, probe bool) step {
	bo.mu.Lock()
	defer bo.mu.Unlock()
	if probe {
		bo.probing = false
	}
	bo.lastOK = now
	if bo.failures == 0 {
		return step{}
	}
	s := step{log: true, attempts: bo.failures, refused: bo.refused, downFor: now.Sub(bo.firstFail)}
	bo.failures, bo.until, bo.delay, bo.refused, bo.refusal = 0, time.Time{}, 0, 0, nil
	return s
}

// reset ends the back-off, for a new configuration of the route (its address or
// credentials): the failures so far were those of the old one. The history
// (last error, last success) stays. A probe of the old configuration still in
// flight no longer holds up the next attempt.
func (bo *backoff) reset() {
	bo.mu.Lock()
	defer bo.mu.Unlock()
	bo.failures, bo.until, bo.delay, bo.probing, bo.refused, bo.refusal = 0, time.Time{}, 0, false, 0, nil
}

// readyErr is UpstreamReady's answer from the dial history alone: nil when the last
// attempt succeeded, the refusal (the last dial error) while failing,
// ErrNotChecked before any attempt ended.
func (bo *backoff) readyErr() error {
	bo.mu.Lock()
	defer bo.mu.Unlock()
	switch {
	case bo.failures > 0 && bo.refusal != nil:
		return bo.refusal
	case !bo.lastOK.IsZero():
		return nil
	}
	return ErrNotChecked
}

// stale reports whether keeping bo for a route without a pool is pointless: no
// failure, or its delay ended more than backoffMax ago.
func (bo *backoff) stale(now time.Time) bool {
	bo.mu.Lock()
	defer bo.mu.Unlock()
	return bo.failures == 0 || !bo.probing && now.After(bo.until.Add(backoffMax))
}

func (bo *backoff) retryAt() time.Time {
	bo.mu.Lock()
	defer bo.mu.Unlock()
	return bo.until
}

// fill copies the back-off figures into h.
func (bo *backoff) fill(h *Health, now time.Time) {
	bo.mu.Lock()
	defer bo.mu.Unlock()
	h.Failures = bo.failures
	h.LastError = bo.lastErr
	h.LastErrorAt = bo.lastErrAt
	h.LastSuccessAt = bo.lastOK
	if bo.failures > 0 {
		h.NextAttempt = bo.until
		h.BackingOff = bo.probing || now.Before(bo.until)
	}
}

// backoffDelay is the delay after the n-th consecutive failure (n >= 1).
func backoffDelay(n int) time.Duration {
	d := backoffMin
	for i := 1; i < n && d < backoffMax; i++ {
		d *= 2
	}
	d = min(d, backoffMax)
	return d - rand.N(d/4+1)
}
