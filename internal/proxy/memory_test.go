package proxy_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// Memory under hostile or careless clients (issue 11, points 2 and 3), measured
// as the resident memory of the whole test process, which serves the proxy
// in-process (PostgreSQL runs apart; the clients below stream their messages
// from small buffers). make test runs these without the race detector, whose
// shadow memory would swamp the figures.

// memRSS returns the process's resident and peak resident memory, in bytes.
func memRSS(t *testing.T) (rss, peak int64) {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skipf("no /proc/self/status: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb << 10
		case "VmHWM:":
			peak = kb << 10
		}
	}
	return rss, peak
}

// memResetPeak makes VmHWM start again from the current resident memory.
func memResetPeak(t *testing.T) {
	t.Helper()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		t.Skipf("cannot reset the peak resident memory: %v", err)
	}
}

// memSettled collects garbage and returns freed memory to the system, then
// reads the resident memory.
func memSettled(t *testing.T) int64 {
	t.Helper()
	runtime.GC()
	debug.FreeOSMemory()
	rss, _ := memRSS(t)
	return rss
}

const mib = 1 << 20

// 20 clients each claim a 1 GiB message and 4 send a real 200 MB Query, while a
// bystander runs queries: with the default bounds everything over 64 MiB is
// refused at its header; with the bound raised, the 200 MB queries go through
// one at a time within --max-message-memory. Either way the process stays
// under 300 MB and the bystander is answered.
func TestMemoryHugeMessages(t *testing.T) {
	if raceEnabled {
		t.Skip("resident memory is meaningless under the race detector")
	}
	db := newDatabase(t)
	for _, tc := range []struct {
		name          string
		opt           proxy.Options
		wantQueriesOK bool
	}{
		{"Defaults", proxy.Options{}, false},
		{"Raised", proxy.Options{MaxMessageSize: 256 * mib, MaxMessageMemory: 256 * mib, QueryWaitTimeout: time.Minute}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A server connection for each of the four big queries and one for
			// the bystander: its answer time measures the proxy, not a wait for
			// a backend that PostgreSQL holds parsing 200 MB.
			tp := startProxy(t, db, proxyOpts{PoolSize: 5, Opt: tc.opt})
			by := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
			memSettled(t)
			memResetPeak(t)
			start, _ := memRSS(t)

			var wg sync.WaitGroup
			for i := 0; i < 20; i++ {
				rc := pgtest.Dial(t, tp.addr)
				rc.Login(db, "fault_raw")
				rc.Send(append(pgtest.Header(wire.MsgQuery, 1<<30-5), "SELECT 1"...))
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs, _, _ := rc.ReadToClose(10 * time.Second)
					if len(errs) != 1 || errs[0].Code != wire.CodeProgramLimitExceeded {
						t.Errorf("1 GiB claim: %+v, want FATAL 54000", errs)
					}
				}()
			}
			const size = 200_000_000
			results := make(chan string, 4)
			for i := 0; i < 4; i++ {
				rc := pgtest.Dial(t, tp.addr)
				rc.Login(db, "fault_raw")
				wg.Add(1)
				go func() {
					defer wg.Done()
					sendErr := memStream(rc, size)
					val, ef, err := limitsAnswer(rc, 2*time.Minute)
					switch {
					case err != nil:
						results <- "read: " + err.Error()
					case ef != nil:
						results <- ef.Code
					case sendErr != nil:
						results <- "send: " + sendErr.Error()
					default:
						results <- val
					}
				}()
			}
			limitsBystander(t, by)
			// The bystander's query every 20ms; slowest is read once it has halted.
			var slowest time.Duration
			bystander := pgtest.NewCrowd(t, "bystander")
			bystander.Go(func(ctx context.Context, _ int) error {
				time.Sleep(20 * time.Millisecond)
				t0 := time.Now()
				var n int
				if err := by.QueryRow(ctx, "SELECT 42").Scan(&n); err != nil {
					return pgtest.Quit(err)
				}
				slowest = max(slowest, time.Since(t0))
				return nil
			})
			wg.Wait()
			bystander.Halt()
			limitsBystander(t, by)
			close(results)
			for r := range results {
				want := wire.CodeProgramLimitExceeded
				if tc.wantQueriesOK {
					want = fmt.Sprint(size - len("SELECT length('')"))
				}
				if r != want {
					t.Errorf("200 MB query: %q, want %q", r, want)
				}
			}
			_, peak := memRSS(t)
			t.Logf("resident memory: %d MiB at the start, peak %d MiB; bystander's slowest answer %s",
				start/mib, peak/mib, slowest.Round(time.Millisecond))
			if fails := bystander.Failures(); len(fails) > 0 {
				t.Fatalf("bystander: %s", strings.Join(fails, "; "))
			}
			if peak > 300*mib {
				t.Errorf("peak resident memory %d MiB, want under 300", peak/mib)
			}
			// 20-70 ms on a quiet 2-core machine; a compile beside it gave 117.
			// What this bound catches is the loop stalled for the whole
			// message (a quarter of a second and more for 200 MB).
			if slowest > 250*time.Millisecond {
				t.Errorf("bystander's slowest answer took %s, want under 250ms", slowest)
			}
			if st := tp.srv.MessageMemory(); st.Used != 0 || st.Waiting != 0 {
				t.Errorf("message memory after: %+v", st)
			}
		})
	}
}

// memStream sends a Query of size bytes, `SELECT length('xxx...')`, from a
// small buffer; it stops at the first write error (the proxy refused it).
func memStream(rc *pgtest.Raw, size int) error {
	return rc.StreamLiteral(size-len("SELECT length('')"), 2*time.Minute) // the NUL is not counted in size
}

// A client that sends 200 MB of Parse messages with no Sync, each naming a new
// statement: the proxy answers them without a server connection, so only its
// bounds keep them from piling up. Past --max-client-prepared-statements they
// are refused and the rest of the batch skipped; the memory stays bounded, and
// goes when the client does.
func TestMemoryPreparedFlood(t *testing.T) {
	if raceEnabled {
		t.Skip("resident memory is meaningless under the race detector")
	}
	db := newDatabase(t)
	tp := startProxy(t, db, proxyOpts{PoolSize: 2})
	by := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
	start := memSettled(t)
	memResetPeak(t)

	rc := pgtest.Dial(t, tp.addr)
	rc.Login(db, "fault_raw")
	filler := strings.Repeat("x", 1000)
	var batch []byte
	sent, seq := 0, 0
	_ = rc.Conn.SetWriteDeadline(time.Now().Add(2 * time.Minute))
	for sent < 200_000_000 {
		batch = batch[:0]
		for len(batch) < mib {
			seq++
			batch = wire.AppendParse(batch, fmt.Sprintf("flood_%d", seq), fmt.Sprintf("SELECT %d -- %s", seq, filler))
		}
		if _, err := rc.Conn.Write(batch); err != nil {
			t.Fatalf("after %d MB: %v", sent/1e6, err)
		}
		sent += len(batch)
	}
	rc.Send(wire.AppendSync(nil))
	ef, _ := rc.UntilReady(time.Minute, "reading the answers")
	if ef == nil || ef.Code != wire.CodeProgramLimitExceeded {
		t.Fatalf("flood of %d statements: %+v, want 54000", seq, ef)
	}
	limitsBystander(t, by)
	_, peak := memRSS(t)
	during := memSettled(t)
	rc.Conn.Close()
	pgtest.Eventually(t, 10*time.Second, "the client gone", func() error {
		if n := tp.srv.Stats().Clients; n != 1 {
			return fmt.Errorf("%d clients", n)
		}
		return nil
	})
	after := memSettled(t)
	t.Logf("%d statements sent (%d MB): resident memory %d MiB at the start, peak %d MiB, %d MiB with the client, %d MiB after it left",
		seq, sent/1e6, start/mib, peak/mib, during/mib, after/mib)
	if peak-start > 100*mib {
		t.Errorf("peak resident memory grew by %d MiB", (peak-start)/mib)
	}
	if after-start > 20*mib {
		t.Errorf("resident memory after the client left is %d MiB above the start", (after-start)/mib)
	}
}
