package pgtest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	// crowdTxTimeout bounds one transaction of a crowd client.
	crowdTxTimeout = 20 * time.Second
	// crowdKeep is how many distinct failures a crowd keeps the text of.
	crowdKeep = 20
)

// Crowd is a set of bystander clients: each runs its transaction over and over
// from its own goroutine while the test does something else, to show that what
// the test does leaves the others alone (and that the proxy has traffic to mix
// it with). The crowd counts the transactions completed and keeps what went
// wrong for the test to report.
type Crowd struct {
	// Tolerate, if set, says which errors of a transaction are expected: they
	// are counted (Tolerated), not failures. Set it before the first Go.
	Tolerate func(error) bool

	name            string
	stop            chan struct{}
	once            sync.Once
	wg              sync.WaitGroup
	done, tolerated atomic.Int64

	mu     sync.Mutex
	fails  map[string]int
	order  []string // distinct failures, first seen first
	nFails int
}

// NewCrowd returns a crowd without clients; name stands for it in messages. It
// is halted at cleanup: open the clients' connections before NewCrowd, so that
// (cleanups running last first) the crowd stops before they close.
func NewCrowd(t testing.TB, name string) *Crowd {
	cr := &Crowd{name: name, stop: make(chan struct{}), fails: map[string]int{}}
	t.Cleanup(cr.Halt)
	return cr
}

// quitError is a failure after which a client stops.
type quitError struct{ err error }

func (q quitError) Error() string { return q.err.Error() }
func (q quitError) Unwrap() error { return q.err }

// Quit wraps err so that the client returning it has it recorded as a failure
// and runs no more transactions (its connection is gone, say).
func Quit(err error) error { return quitError{err} }

// Go starts a client: tx runs with i = 0, 1, 2, ... and a context of 20
// seconds each time, until the crowd halts. A nil error counts a transaction
// (Done), an error that Tolerate accepts a tolerated one (Tolerated); any other
// is a failure, after which the client goes on unless the error is a Quit. tx
// may also record failures of its own with Failf and return nil.
func (cr *Crowd) Go(tx func(ctx context.Context, i int) error) {
	cr.wg.Add(1)
	go func() {
		defer cr.wg.Done()
		for i := 0; ; i++ {
			select {
			case <-cr.stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), crowdTxTimeout)
			err := tx(ctx, i)
			cancel()
			var q quitError
			switch {
			case err == nil:
				cr.done.Add(1)
			case cr.Tolerate != nil && cr.Tolerate(err):
				cr.tolerated.Add(1)
			case errors.As(err, &q):
				cr.Failf("%v", q.err)
				return
			default:
				cr.Failf("%v", err)
			}
		}
	}()
}

// Failf records a failure. Repeated failures are kept once, with their count.
func (cr *Crowd) Failf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	cr.mu.Lock()
	defer cr.mu.Unlock()
	cr.nFails++
	if _, seen := cr.fails[msg]; !seen {
		if len(cr.order) >= crowdKeep {
			return
		}
		cr.order = append(cr.order, msg)
	}
	cr.fails[msg]++
}

// Done is the number of transactions completed so far.
func (cr *Crowd) Done() int64 { return cr.done.Load() }

// Tolerated is the number of transactions that failed as Tolerate allows.
func (cr *Crowd) Tolerated() int64 { return cr.tolerated.Load() }

// Progress waits up to within until the crowd has completed n more
// transactions, failing the test with what otherwise.
func (cr *Crowd) Progress(t testing.TB, what string, n int64, within time.Duration) {
	t.Helper()
	from := cr.Done()
	Eventually(t, within, what, func() error {
		if got := cr.Done() - from; got < n {
			return fmt.Errorf("%d of %d transactions", got, n)
		}
		return nil
	})
}

// Halt stops the crowd and waits for its clients to end their transaction; it
// may be called more than once.
func (cr *Crowd) Halt() {
	cr.once.Do(func() { close(cr.stop) })
	cr.wg.Wait()
}

// Failures returns the failures so far, each distinct one once ("3x " in front
// of one seen three times), first seen first; nil when there was none.
func (cr *Crowd) Failures() []string {
	cr.mu.Lock()
	defer cr.mu.Unlock()
	var out []string
	kept := 0
	for _, msg := range cr.order {
		n := cr.fails[msg]
		kept += n
		if n > 1 {
			msg = fmt.Sprintf("%dx %s", n, msg)
		}
		out = append(out, msg)
	}
	if more := cr.nFails - kept; more > 0 {
		out = append(out, fmt.Sprintf("... and %d more failures", more))
	}
	return out
}

// Finish halts the crowd and reports it: every failure fails the test, and so
// does a crowd that completed no transaction (it proved nothing).
func (cr *Crowd) Finish(t testing.TB) {
	t.Helper()
	cr.Halt()
	fails := cr.Failures()
	t.Logf("%s: %d transactions, %d tolerated failures, %d failures", cr.name, cr.Done(), cr.Tolerated(), cr.nFailures())
	if len(fails) > 0 {
		t.Errorf("%s failed:\n%s", cr.name, strings.Join(fails, "\n"))
	}
	if cr.Done() == 0 {
		t.Errorf("%s completed no transaction", cr.name)
	}
}

func (cr *Crowd) nFailures() int {
	cr.mu.Lock()
	defer cr.mu.Unlock()
	return cr.nFails
}
