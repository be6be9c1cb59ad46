package proxy_test

import (
	"encoding/binary"
	"fmt"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/metrics"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// allocClient runs pre-encoded transactions over the raw protocol without
// allocating, so that a count of the process's allocations is the proxy's.
type allocClient struct {
	c   net.Conn
	buf []byte
}

func newAllocClient(t *testing.T, addr, db string) *allocClient {
	rc := faultDial(t, addr)
	rc.login(db)
	if rc.r.Buffered() > 0 {
		t.Fatal("data after ReadyForQuery at login")
	}
	return &allocClient{c: rc.c, buf: make([]byte, 64<<10)}
}

// run sends batch and reads until the ReadyForQuery that ends its answer; it
// fails on an ErrorResponse.
func (ac *allocClient) run(batch []byte) error {
	if _, err := ac.c.Write(batch); err != nil {
		return err
	}
	n := 0
	for {
		k, err := ac.c.Read(ac.buf[n:])
		if err != nil {
			return err
		}
		n += k
		// Walk the complete messages received so far.
		for off := 0; off+5 <= n; {
			l := int(binary.BigEndian.Uint32(ac.buf[off+1:]))
			if off+1+l > n {
				break
			}
			switch ac.buf[off] {
			case wire.MsgErrorResponse:
				return fmt.Errorf("ErrorResponse: %+v", wire.ParseError(ac.buf[off+5:off+1+l]))
			case wire.MsgReadyForQuery:
				if off+1+l != n {
					return fmt.Errorf("%d bytes after ReadyForQuery", n-off-1-l)
				}
				return nil
			}
			off += 1 + l
		}
		if n == len(ac.buf) {
			return fmt.Errorf("answer larger than %d bytes", n)
		}
	}
}

// The proxy's steady state allocates nothing per transaction (DESIGN.md section
// 3): simple and extended protocol (pgbench's -M extended: an unnamed Parse, Bind,
// Describe, Execute and Sync), with clients waiting for the pool's only backend,
// with and without the metrics observer and the leak watcher.
//
// make test runs it without the race detector too: under it the counts mean
// nothing.
func TestSteadyStateAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	db := newDatabase(t)
	plain := startProxy(t, db, proxyOpts{PoolSize: 1})
	metered := startProxy(t, db, proxyOpts{PoolSize: 1, Opt: proxy.Options{
		Observer:      metrics.NewObserver(10, false),
		LeakThreshold: time.Minute,
	}})

	simple := wire.AppendQuery(nil, "SELECT 1")
	var ext []byte
	ext = wire.AppendParse(ext, "", "SELECT 7::int")
	ext = wire.AppendBind(ext, "", "")
	ext = append(ext, wire.MsgDescribe, 0, 0, 0, 6, 'P', 0)
	ext = wire.AppendExecute(ext, "")
	ext = wire.AppendSync(ext)

	for _, tc := range []struct {
		name    string
		tp      *testProxy
		batch   []byte
		clients int
	}{
		{"simple", plain, simple, 1},
		{"extended", plain, ext, 1},
		{"simple_waiting", plain, simple, 4},
		{"extended_waiting", plain, ext, 4},
		{"metrics_extended_waiting", metered, ext, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs := make([]*allocClient, tc.clients)
			for i := range cs {
				cs[i] = newAllocClient(t, tc.tp.addr, db)
			}
			const warm, n = 300, 2000
			runAll := func(per int) error {
				var wg sync.WaitGroup
				errs := make(chan error, len(cs))
				for _, c := range cs {
					wg.Add(1)
					go func() {
						defer wg.Done()
						_ = c.c.SetDeadline(time.Now().Add(60 * time.Second))
						for range per {
							if err := c.run(tc.batch); err != nil {
								errs <- err
								return
							}
						}
					}()
				}
				wg.Wait()
				close(errs)
				return <-errs
			}
			if err := runAll(warm); err != nil {
				t.Fatalf("warm-up: %v", err)
			}
			var m0, m1 runtime.MemStats
			runtime.ReadMemStats(&m0)
			if err := runAll(n); err != nil {
				t.Fatal(err)
			}
			runtime.ReadMemStats(&m1)
			txs := n * len(cs)
			per := float64(m1.Mallocs-m0.Mallocs) / float64(txs)
			t.Logf("%d transactions by %d client(s) on a pool of 1: %d allocations, %.4f per transaction",
				txs, len(cs), m1.Mallocs-m0.Mallocs, per)
			// A few allocations of the test's own goroutines and the runtime's
			// timers are noise; one per transaction is a leak on the hot path.
			if per > 0.05 {
				t.Errorf("%.3f allocations per transaction, want 0 (at most 0.05 of noise)", per)
			}
		})
	}
}
