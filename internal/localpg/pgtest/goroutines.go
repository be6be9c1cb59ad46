package pgtest

import (
	"runtime"
	"strings"
	"time"
)

// Goroutines returns the stacks of the goroutines whose stack (including the
// "created by" line) contains any of substrs, by "goroutine N" header. Pass
// package paths with a trailing dot, e.g. "pgsidecar/internal/pool.", so that a
// package's tests ("pool_test.") do not match.
func Goroutines(substrs ...string) map[string]string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	out := map[string]string{}
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, s := range substrs {
			if strings.Contains(g, s) {
				head, _, _ := strings.Cut(g, "[") // "goroutine 123 [state]:"
				out[strings.TrimSpace(head)] = g
				break
			}
		}
	}
	return out
}

// LeftGoroutines polls, for up to within, until every goroutine that Goroutines
// reports for substrs was already in before; it returns the stacks of the others
// (none: no leak). Goroutines that end asynchronously after a Close get the time
// to do so without a sleep standing in for the condition.
func LeftGoroutines(before map[string]string, within time.Duration, substrs ...string) []string {
	var left []string
	_ = Poll(within, func() error {
		left = left[:0]
		for id, stack := range Goroutines(substrs...) {
			if _, old := before[id]; !old {
				left = append(left, stack)
			}
		}
		if len(left) > 0 {
			return errNotYet
		}
		return nil
	})
	return left
}
