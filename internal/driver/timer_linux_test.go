//go:build linux

package driver

import (
	"math/rand/v2"
	"testing"
	"time"
)

func TestTimersOrderAndDisarm(t *testing.T) {
	l := startLoop(t, Options{})
	type firing struct {
		i        int
		now, due time.Time
	}
	fired := make(chan firing, 16)
	var ts [6]Timer
	due := make([]time.Time, len(ts)) // loop-only
	for i := range ts {
		ts[i].Init(func(now time.Time) { fired <- firing{i, now, due[i]} })
	}
	onLoop(t, l, func() {
		now := time.Now()
		for i, d := range []time.Duration{30, 10, 20, 15, 0, 40} {
			due[i] = now.Add(d * time.Millisecond)
			l.Arm(&ts[i], due[i])
		}
		l.Arm(&ts[4], now.Add(time.Hour)) // moved out
		due[4] = time.Now().Add(25 * time.Millisecond)
		l.Arm(&ts[4], due[4]) // and back in
		if !l.Disarm(&ts[3]) || ts[3].Armed() {
			t.Error("Disarm of an armed timer")
		}
		if l.Disarm(&ts[3]) {
			t.Error("Disarm of a disarmed timer reported it armed")
		}
		if !ts[0].Armed() {
			t.Error("armed timer not Armed")
		}
	})
	for _, want := range []int{1, 2, 4, 0, 5} {
		f := recv(t, fired, "timer")
		if f.i != want {
			t.Fatalf("timer %d fired, want %d", f.i, want)
		}
		if f.now.Before(f.due) {
			t.Errorf("timer %d fired at %v, %v before its deadline", f.i, f.now, f.due.Sub(f.now))
		}
	}
	none(t, fired, "disarmed timer") // 3 was due before 5, which fired
	onLoop(t, l, func() {
		for i := range ts {
			if ts[i].Armed() {
				t.Errorf("timer %d Armed after it fired", i)
			}
		}
	})
}

// TestTimersRandom checks the heap: many timers, some disarmed or moved, fire
// in deadline order, each once, the disarmed never.
func TestTimersRandom(t *testing.T) {
	l := startLoop(t, Options{})
	const n = 500
	rng := rand.New(rand.NewPCG(3, 4))
	ts := make([]Timer, n)
	when := make([]time.Time, n) // loop-only
	var order []int              // loop-only
	done := make(chan struct{})
	want := 0
	for i := range ts {
		ts[i].Init(func(time.Time) {
			order = append(order, i)
			if len(order) == want {
				close(done)
			}
		})
	}
	onLoop(t, l, func() {
		now := time.Now()
		for i := range ts {
			when[i] = now.Add(time.Duration(rng.IntN(20_000)) * time.Microsecond)
			l.Arm(&ts[i], when[i])
		}
		for i := range ts {
			switch i % 5 {
			case 0:
				l.Disarm(&ts[i])
			case 1:
				when[i] = now.Add(time.Duration(rng.IntN(20_000)) * time.Microsecond)
				l.Arm(&ts[i], when[i])
				want++
			default:
				want++
			}
		}
	})
	recv(t, done, "all timers")
	onLoop(t, l, func() {
		seen := make([]bool, n)
		for k, i := range order {
			if seen[i] || i%5 == 0 {
				t.Fatalf("timer %d fired twice or while disarmed", i)
			}
			seen[i] = true
			if k > 0 && when[i].Before(when[order[k-1]]) {
				t.Fatalf("timer %d (at %v) fired after timer %d (at %v)", i, when[i], order[k-1], when[order[k-1]])
			}
		}
	})
}

// TestTimerRearmsItself: a timer re-armed by its callback for now fires again
// at the next turn; the loop keeps serving posts meanwhile.
func TestTimerRearmsItself(t *testing.T) {
	l := startLoop(t, Options{})
	var tm Timer
	count := 0 // loop-only
	done := make(chan struct{})
	tm.Init(func(time.Time) {
		count++
		if count == 1000 {
			close(done)
			return
		}
		l.ArmAfter(&tm, 0)
	})
	onLoop(t, l, func() { l.ArmAfter(&tm, 0) })
	onLoop(t, l, func() {}) // served while the timer spins
	recv(t, done, "1000 firings")
}

func TestArmWithoutInit(t *testing.T) {
	l, err := NewLoop(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	defer func() {
		if recover() == nil {
			t.Error("Arm without Init did not panic")
		}
	}()
	var tm Timer
	l.ArmAfter(&tm, time.Second)
}
