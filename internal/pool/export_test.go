package pool

import "time"

// IdleCheckAfter exposes idleCheckAfter to the external tests.
const IdleCheckAfter = idleCheckAfter

// ExpiresAt returns when b's lifetime ends (zero = never).
func (b *Backend) ExpiresAt() time.Time { return b.expiresAt }

// Reap runs one pass of the maintenance loop as if the clock read now.
func (p *Pool) Reap(now time.Time) { p.reap(now) }
