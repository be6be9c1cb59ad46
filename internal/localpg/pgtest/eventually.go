package pgtest

import (
	"errors"
	"testing"
	"time"
)

// pollMax is the longest pause between two checks of a condition.
const pollMax = 10 * time.Millisecond

// Poll calls cond until it returns nil or within has passed, and returns cond's
// last error (nil: the condition holds). It checks again after 1 ms, then
// doubles the pause up to 10 ms: a condition about to hold costs no long
// sleep, and a slow one does not keep a CPU busy. It is what a test does
// instead of sleeping for a condition, when it reports a timeout itself.
func Poll(within time.Duration, cond func() error) error {
	deadline := time.Now().Add(within)
	pause := time.Millisecond
	for {
		err := cond()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(pause)
		pause = min(2*pause, pollMax)
	}
}

// Eventually polls cond (see Poll) until it returns nil, and fails the test
// with cond's last error when that has not happened within the given time.
func Eventually(t testing.TB, within time.Duration, what string, cond func() error) {
	t.Helper()
	if err := Poll(within, cond); err != nil {
		t.Fatalf("%s: not true within %s: %v", what, within, err)
	}
}

// errNotYet is the error of a boolean condition that does not hold.
var errNotYet = errors.New("still false")

// EventuallyTrue is Eventually for a condition that has no error to tell.
func EventuallyTrue(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	Eventually(t, within, what, func() error {
		if !cond() {
			return errNotYet
		}
		return nil
	})
}

// Recv returns the value received from ch, failing the test with the message
// what when none arrives within d.
func Recv[T any](t testing.TB, ch <-chan T, d time.Duration, what string) T {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("%s", what)
		var zero T
		return zero
	}
}
