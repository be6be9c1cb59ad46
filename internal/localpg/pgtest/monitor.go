package pgtest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// monitorEvery is the pause between two samples of a BackendMonitor.
const monitorEvery = 20 * time.Millisecond

// BackendCount counts, on the monitor's own connection c, the backends of a
// test's workload in PostgreSQL: n is the figure the test bounds, nApp an
// optional second one (0 if the test has none) that it only reports.
type BackendCount func(ctx context.Context, c *pgx.Conn) (n, nApp int, err error)

// BackendSamples is what a BackendMonitor saw.
type BackendSamples struct {
	// Max is the largest n sampled, MaxApp the largest nApp.
	Max, MaxApp int
	// Samples counts the samples, Busy those that saw at least one backend (n > 0).
	Samples, Busy int
	// Err is the error of the sample that stopped the monitor early.
	Err error
}

// BackendMonitor samples, every 20 ms from its own goroutine and connection,
// how many backends of a workload PostgreSQL shows (pg_stat_activity), as
// counted by the test's BackendCount: a pool bound holds at every moment, not
// only at the end.
type BackendMonitor struct {
	stop, done chan struct{}
	once       sync.Once
	mu         sync.Mutex
	s          BackendSamples
}

// MonitorBackends starts a monitor counting with count on c, a direct
// connection that only the monitor uses from now on. It stops at the end of the
// test, or earlier with Finish.
func MonitorBackends(t testing.TB, c *pgx.Conn, count BackendCount) *BackendMonitor {
	t.Helper()
	m := &BackendMonitor{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		tick := time.NewTicker(monitorEvery)
		defer tick.Stop()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			n, nApp, err := count(ctx, c)
			cancel()
			m.mu.Lock()
			if err != nil {
				m.s.Err = err
				m.mu.Unlock()
				return
			}
			m.s.Samples++
			if n > 0 {
				m.s.Busy++
			}
			m.s.Max, m.s.MaxApp = max(m.s.Max, n), max(m.s.MaxApp, nApp)
			m.mu.Unlock()
			select {
			case <-m.stop:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() { m.Finish() })
	return m
}

// Sampled returns what the monitor saw so far; it keeps running.
func (m *BackendMonitor) Sampled() BackendSamples {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.s
}

// Finish stops the monitor, waits for it and returns what it saw; it may be
// called more than once.
func (m *BackendMonitor) Finish() BackendSamples {
	m.once.Do(func() { close(m.stop) })
	<-m.done
	return m.Sampled()
}
