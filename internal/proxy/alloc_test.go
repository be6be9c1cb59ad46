package proxy_test

import (
	"encoding/binary"
	"fmt"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
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
	rc := pgtest.Dial(t, addr)
	rc.Login(db, "fault_raw")
	if rc.R.Buffered() > 0 {
		t.Fatal("data after ReadyForQuery at login")
	}
	return &allocClient{c: rc.Conn, buf: make([]byte, 64<<10)}
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

// The proxy's steady state allocates nothing per transaction (docs/design.md section
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

// An idle client holds no read or write buffer (docs/design.md section 3: idle clients
// cost a goroutine and little else): after a query, its 16 KiB writers for the
// client and the backend go back to their pools while it waits.
func TestIdleClientMemory(t *testing.T) {
	if raceEnabled {
		t.Skip("heap sizes are meaningless under the race detector")
	}
	db := newDatabase(t)
	tp := startProxy(t, db, proxyOpts{PoolSize: 2})
	heap := func() uint64 {
		// Two collections: sync.Pool keeps what it holds for one more cycle.
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	const n = 200
	for range n {
		rc := pgtest.Dial(t, tp.addr)
		rc.Login(db, "fault_raw")
		rc.MustQuery("SELECT 1", wire.TxIdle) // attaches a backend, then idles
	}
	// Per client this counts the test's own side too (a 4 KiB bufio.Reader and
	// the connection, about 6 KiB); holding the two writers would add 32 KiB.
	var per float64
	pgtest.Eventually(t, 10*time.Second, "idle clients to shed their buffers", func() error {
		per = (float64(heap()) - float64(before)) / n
		if per > 16<<10 {
			return fmt.Errorf("heap grew %.1f KiB per idle client, want under 16", per/1024)
		}
		return nil
	})
	t.Logf("heap per idle client (proxy and test side): %.1f KiB", per/1024)
}
