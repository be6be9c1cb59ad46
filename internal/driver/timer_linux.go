//go:build linux

package driver

import "time"

// Timer is a callback the loop runs at a deadline. Embed it in the struct it
// belongs to, give it its callback once with Init, then arm and disarm it with
// [Loop.Arm], [Loop.ArmAfter] and [Loop.Disarm] as often as needed: arming
// allocates nothing and starts no goroutine. A Timer belongs to one loop and
// is used on that loop's goroutine only; the zero Timer is not armed.
type Timer struct {
	fn    func(now time.Time)
	when  int64 // deadline: nanoseconds since the loop's epoch
	index int32 // position in the loop's heap plus one; 0 when not armed
}

// Init sets the function the loop calls, on its goroutine, when the timer
// fires; now is the loop's clock at that moment (with a monotonic reading).
// fn must not block. Init an armed Timer only after disarming it.
func (t *Timer) Init(fn func(now time.Time)) { t.fn = fn }

// Armed reports whether the timer is waiting to fire.
func (t *Timer) Armed() bool { return t.index != 0 }

// Arm makes t fire at at (now, at the loop's next turn, if at has passed). An
// armed timer is moved to the new deadline. Loop goroutine only.
func (l *Loop) Arm(t *Timer, at time.Time) { l.arm(t, int64(at.Sub(l.epoch))) }

// ArmAfter makes t fire d from now (see Arm).
func (l *Loop) ArmAfter(t *Timer, d time.Duration) { l.arm(t, l.mono()+int64(d)) }

// Disarm stops t from firing and reports whether it was armed. Loop goroutine
// only.
func (l *Loop) Disarm(t *Timer) bool {
	if t.index == 0 {
		return false
	}
	l.heapRemove(int(t.index - 1))
	return true
}

func (l *Loop) arm(t *Timer, when int64) {
	if t.fn == nil {
		panic("driver: Arm of a Timer without Init")
	}
	t.when = when
	if t.index != 0 {
		l.heapFix(int(t.index - 1))
		return
	}
	l.timers = append(l.timers, t)
	i := len(l.timers) - 1
	t.index = int32(i + 1)
	l.heapUp(i)
}

// mono is the loop's clock: nanoseconds since its epoch, monotonic.
func (l *Loop) mono() int64 { return int64(time.Since(l.epoch)) }

// timeAt turns a reading of mono into a time.Time.
func (l *Loop) timeAt(mono int64) time.Time { return l.epoch.Add(time.Duration(mono)) }

// waitTimeout is how long the loop may wait for readiness: until the earliest
// deadline, forever without one.
func (l *Loop) waitTimeout() time.Duration {
	if len(l.timers) == 0 {
		return -1
	}
	return time.Duration(max(l.timers[0].when-l.mono(), 0))
}

// runTimers fires the timers whose deadline has passed, earliest first. A timer
// re-armed by its own callback for a deadline that has also passed fires at the
// next turn, not in this one, so a callback cannot keep the loop here.
func (l *Loop) runTimers() {
	if len(l.timers) == 0 {
		return
	}
	now := l.mono()
	for n := len(l.timers); n > 0 && len(l.timers) > 0 && l.timers[0].when <= now; n-- {
		t := l.timers[0]
		l.heapRemove(0)
		t.fn(l.timeAt(now))
		l.settle()
	}
}

// disarmAll empties the heap (the loop is shutting down).
func (l *Loop) disarmAll() {
	for _, t := range l.timers {
		t.index = 0
	}
	clear(l.timers)
	l.timers = l.timers[:0]
}

// The heap: l.timers is a binary min-heap on when; each Timer knows its index.

func (l *Loop) heapSwap(i, j int) {
	h := l.timers
	h[i], h[j] = h[j], h[i]
	h[i].index = int32(i + 1)
	h[j].index = int32(j + 1)
}

func (l *Loop) heapUp(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if l.timers[p].when <= l.timers[i].when {
			return
		}
		l.heapSwap(i, p)
		i = p
	}
}

// heapDown sifts i down and reports whether it moved.
func (l *Loop) heapDown(i int) bool {
	i0, n := i, len(l.timers)
	for {
		c := 2*i + 1
		if c >= n {
			break
		}
		if r := c + 1; r < n && l.timers[r].when < l.timers[c].when {
			c = r
		}
		if l.timers[i].when <= l.timers[c].when {
			break
		}
		l.heapSwap(i, c)
		i = c
	}
	return i > i0
}

func (l *Loop) heapFix(i int) {
	if !l.heapDown(i) {
		l.heapUp(i)
	}
}

func (l *Loop) heapRemove(i int) {
	last := len(l.timers) - 1
	t := l.timers[i]
	if i != last {
		l.heapSwap(i, last)
	}
	l.timers[last] = nil
	l.timers = l.timers[:last]
	t.index = 0
	if i != last {
		l.heapFix(i)
	}
}
