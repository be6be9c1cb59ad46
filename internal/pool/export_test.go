package pool

import (
	"testing"
	"time"
)

// IdleCheckAfter exposes idleCheckAfter to the external tests.
const IdleCheckAfter = idleCheckAfter

// ExpiresAt returns when b's lifetime ends (zero = never).
func (b *Backend) ExpiresAt() time.Time { return b.expiresAt }

// Reap runs one pass of the maintenance loop as if the clock read now.
func (p *Pool) Reap(now time.Time) { p.reap(now) }

// BackoffRoutes is the number of back-off states r keeps for routes without a pool.
func (r *Registry) BackoffRoutes() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.backoffs)
}

// SetBackoff changes the back-off's first delay and cap for the rest of the test.
func SetBackoff(t *testing.T, first, cap time.Duration) {
	oldMin, oldMax := backoffMin, backoffMax
	backoffMin, backoffMax = first, cap
	t.Cleanup(func() { backoffMin, backoffMax = oldMin, oldMax })
}
