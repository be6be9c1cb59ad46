package proxy_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// backendCounter counts, on the monitor's own direct connection c, the backends a
// test's workload has in PostgreSQL: n is the figure the test bounds, nApp an
// optional second one (0 if the test has none) that it only reports.
type backendCounter func(ctx context.Context, c *pgx.Conn) (n, nApp int, err error)

// backendMonitor samples, every 20ms from its own goroutine and direct connection,
// how many backends of the workload pg_stat_activity shows, as counted by the test's
// backendCounter.
type backendMonitor struct {
	stop, done chan struct{}
	// max is the largest n seen, maxApp the largest nApp; busy counts the samples
	// that saw at least one backend (n > 0).
	max, maxApp, samples, busy int
	// err is the error of the sample that stopped the monitor early.
	err error
}

// monitorBackends starts a monitor on database db; it stops at the end of the test,
// or earlier with finish.
func monitorBackends(t *testing.T, db string, count backendCounter) *backendMonitor {
	t.Helper()
	c := direct(t, db)
	m := &backendMonitor{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			n, nApp, err := count(ctx, c)
			cancel()
			if err != nil {
				m.err = err
				return
			}
			m.samples++
			if n > 0 {
				m.busy++
			}
			m.max, m.maxApp = max(m.max, n), max(m.maxApp, nApp)
			select {
			case <-m.stop:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(m.finish)
	return m
}

// finish stops the monitor and waits for it; it may be called more than once.
func (m *backendMonitor) finish() {
	select {
	case <-m.stop:
	default:
		close(m.stop)
	}
	<-m.done
}
