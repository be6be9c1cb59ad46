package pgtest_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
)

// The harness's own tests: each helper fails a test when it should (reported
// to a fakeT) and passes when it should, without PostgreSQL.

// fakeT records what a helper reports instead of failing the real test; its
// Fatalf ends the goroutine, as the real one does.
type fakeT struct {
	testing.TB
	mu     sync.Mutex
	errs   []string
	fatal  bool
	logged []string
}

func (f *fakeT) Helper() {}

func (f *fakeT) Errorf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errs = append(f.errs, fmt.Sprintf(format, args...))
}

func (f *fakeT) Fatalf(format string, args ...any) {
	f.Errorf(format, args...)
	f.mu.Lock()
	f.fatal = true
	f.mu.Unlock()
	runtime.Goexit()
}

func (f *fakeT) Logf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.logged = append(f.logged, fmt.Sprintf(format, args...))
}

// runFake runs fn with a fakeT in a goroutine of its own, as a test runs, and
// returns the fakeT once fn has returned or called Fatalf.
func runFake(t *testing.T, fn func(ft *fakeT)) *fakeT {
	ft := &fakeT{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(ft)
	}()
	<-done
	return ft
}

// wantFailure checks that ft failed (fatally or not, as fatal says) with a
// message containing each of subs.
func wantFailure(t *testing.T, ft *fakeT, fatal bool, subs ...string) {
	t.Helper()
	all := strings.Join(ft.errs, "\n")
	if len(ft.errs) == 0 || ft.fatal != fatal {
		t.Fatalf("failures %q (fatal %v), want one (fatal %v)", ft.errs, ft.fatal, fatal)
	}
	for _, s := range subs {
		if !strings.Contains(all, s) {
			t.Errorf("failure %q does not contain %q", all, s)
		}
	}
}

func TestEventually(t *testing.T) {
	calls := 0
	ft := runFake(t, func(ft *fakeT) {
		pgtest.Eventually(ft, 5*time.Second, "third call", func() error {
			if calls++; calls < 3 {
				return fmt.Errorf("call %d", calls)
			}
			return nil
		})
	})
	if len(ft.errs) > 0 || calls != 3 {
		t.Fatalf("Eventually of a condition true at the third call: %d calls, failures %q", calls, ft.errs)
	}
	ft = runFake(t, func(ft *fakeT) {
		pgtest.Eventually(ft, 30*time.Millisecond, "never", func() error { return errors.New("still not") })
	})
	wantFailure(t, ft, true, "never: not true within 30ms: still not")
	ft = runFake(t, func(ft *fakeT) {
		pgtest.EventuallyTrue(ft, 30*time.Millisecond, "never true", func() bool { return false })
	})
	wantFailure(t, ft, true, "never true: not true within 30ms")
	// Poll with no time at all checks once.
	calls = 0
	if err := pgtest.Poll(0, func() error { calls++; return errors.New("no") }); err == nil || calls != 1 {
		t.Errorf("Poll(0) = %v after %d calls, want the error after 1", err, calls)
	}
}

func TestRecv(t *testing.T) {
	ch := make(chan int, 1)
	ch <- 7
	var got int
	ft := runFake(t, func(ft *fakeT) { got = pgtest.Recv(ft, ch, time.Second, "no value") })
	if got != 7 || len(ft.errs) > 0 {
		t.Fatalf("Recv = %d, failures %q; want 7", got, ft.errs)
	}
	ft = runFake(t, func(ft *fakeT) { pgtest.Recv(ft, ch, 10*time.Millisecond, "no value within 10ms") })
	wantFailure(t, ft, true, "no value within 10ms")
}

func TestCrowd(t *testing.T) {
	tolerated := errors.New("tolerated")
	var cr *pgtest.Crowd
	ft := runFake(t, func(ft *fakeT) {
		cr = pgtest.NewCrowd(ft, "test crowd")
		cr.Tolerate = func(err error) bool { return errors.Is(err, tolerated) }
		cr.Go(func(ctx context.Context, i int) error { // the good client
			if _, ok := ctx.Deadline(); !ok {
				return errors.New("no deadline")
			}
			return nil
		})
		cr.Go(func(_ context.Context, i int) error { // fails twice the same way, then quits
			switch {
			case i < 2:
				return errors.New("same failure")
			case i == 2:
				return tolerated
			default:
				return pgtest.Quit(fmt.Errorf("gone at %d", i))
			}
		})
		cr.Progress(ft, "progress", 50, 5*time.Second)
		pgtest.EventuallyTrue(ft, 5*time.Second, "the second client quits", func() bool { return len(cr.Failures()) == 2 })
		cr.Finish(ft)
	})
	wantFailure(t, ft, false, "test crowd failed:\n2x same failure\ngone at 3")
	if n := cr.Tolerated(); n != 1 {
		t.Errorf("Tolerated = %d, want 1", n)
	}
	if n := cr.Done(); n < 50 {
		t.Errorf("Done = %d after Progress(50)", n)
	}
	if f := cr.Failures(); len(f) != 2 {
		t.Errorf("Failures = %q, want 2 distinct", f)
	}

	// A crowd that completed nothing proved nothing; one that never progresses
	// fails Progress.
	ft = runFake(t, func(ft *fakeT) {
		cr := pgtest.NewCrowd(ft, "idle crowd")
		cr.Go(func(context.Context, int) error { return pgtest.Quit(errors.New("at once")) })
		pgtest.EventuallyTrue(ft, 5*time.Second, "the client quits", func() bool { return len(cr.Failures()) == 1 })
		cr.Finish(ft)
	})
	wantFailure(t, ft, false, "idle crowd failed:\nat once", "idle crowd completed no transaction")
	ft = runFake(t, func(ft *fakeT) {
		cr := pgtest.NewCrowd(ft, "stuck crowd")
		cr.Go(func(context.Context, int) error { time.Sleep(time.Millisecond); return errors.New("no") })
		cr.Progress(ft, "stuck crowd progress", 1, 30*time.Millisecond)
	})
	wantFailure(t, ft, true, "stuck crowd progress: not true within 30ms: 0 of 1 transactions")
}

func TestBackendMonitor(t *testing.T) {
	var mu sync.Mutex
	counts := []int{0, 2, 5, 1}
	mon := pgtest.MonitorBackends(t, nil, func(context.Context, *pgx.Conn) (int, int, error) {
		mu.Lock()
		defer mu.Unlock()
		if len(counts) == 0 {
			return 0, 0, errors.New("no more samples")
		}
		n := counts[0]
		counts = counts[1:]
		return n, 2 * n, nil
	})
	pgtest.EventuallyTrue(t, 5*time.Second, "the monitor stops on its error", func() bool { return mon.Sampled().Err != nil })
	s := mon.Finish()
	if s.Max != 5 || s.MaxApp != 10 || s.Samples != 4 || s.Busy != 3 || s.Err == nil {
		t.Fatalf("monitor saw %+v, want Max 5, MaxApp 10, 4 samples, 3 busy and the error", s)
	}
	if again := mon.Finish(); again != s {
		t.Errorf("second Finish = %+v, want %+v", again, s)
	}
}

func TestMetrics(t *testing.T) {
	const page = `# TYPE x_total counter
x_total{route="a",state="idle"} 2
x_total{route="b",state="idle"} 3
x_total{route="b",state="busy"} 4
# TYPE g gauge
g 1.5
# TYPE h histogram
h_bucket{le="1"} 1
h_bucket{le="+Inf"} 3
h_sum 4.5
h_count 3
`
	ms, err := pgtest.ParseMetrics(page)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		sum    float64
		n      int
	}{
		{"x_total", nil, 9, 3},
		{"x_total", map[string]string{"state": "idle"}, 5, 2},
		{"x_total", map[string]string{"route": "b", "state": "busy"}, 4, 1},
		{"x_total", map[string]string{"route": "c"}, 0, 0},
		{"g", nil, 1.5, 1},
		{"missing", nil, 0, 0},
	} {
		if sum, n := ms.Value(c.name, c.labels); sum != c.sum || n != c.n {
			t.Errorf("Value(%s, %v) = %v, %d; want %v, %d", c.name, c.labels, sum, n, c.sum, c.n)
		}
	}
	if count, sum, buckets := ms.Histogram("h", nil); count != 3 || sum != 4.5 || buckets[1] != 1 {
		t.Errorf("Histogram(h) = %d, %v, %v; want 3, 4.5, 1 at le=1", count, sum, buckets)
	}
	if _, err := pgtest.ParseMetrics("not a metrics page {"); err == nil {
		t.Error("ParseMetrics of garbage: no error")
	}

	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "y_total", Help: "y"}, []string{"k"})
	reg.MustRegister(c)
	c.WithLabelValues("v").Add(3)
	if v, n := pgtest.Gather(t, reg).Value("y_total", map[string]string{"k": "v"}); v != 3 || n != 1 {
		t.Errorf("gathered y_total{k=v} = %v (%d series), want 3", v, n)
	}

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, page)
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	if ms, err := pgtest.ScrapeMetrics(addr); err != nil {
		t.Errorf("ScrapeMetrics: %v", err)
	} else if v, _ := ms.Value("g", nil); v != 1.5 {
		t.Errorf("scraped g = %v, want 1.5", v)
	}
	if code, _ := pgtest.HTTPGet(addr, "/other"); code != 404 {
		t.Errorf("GET /other: %d, want 404", code)
	}
	if code, body := pgtest.HTTPGet(pgtest.FreeAddr(t), "/metrics"); code != 0 || !strings.Contains(body, "refused") {
		t.Errorf("GET from a free address: %d %q, want 0 and the connection refused", code, body)
	}
	if _, err := pgtest.ScrapeMetrics(pgtest.FreeAddr(t)); err == nil {
		t.Error("ScrapeMetrics of a free address: no error")
	}
}

func TestLogBuffer(t *testing.T) {
	var b pgtest.LogBuffer
	log := b.Logger(slog.LevelInfo)
	log.Debug("hidden", "k", 1)
	log.Info("client pinned", "client", "a")
	log.Info("client pinned", "client", "b")
	log.Warn("client unpinned", "client", "a")
	if n := b.Count("client pinned"); n != 2 {
		t.Errorf("Count(client pinned) = %d, want 2", n)
	}
	if n := b.Count("client", "client=a"); n != 2 {
		t.Errorf("Count(client, client=a) = %d, want 2", n)
	}
	if n := b.Count("hidden"); n != 0 {
		t.Errorf("a Debug line was kept at level Info")
	}
	if l := b.Lines("unpinned"); strings.Count(l, "\n") != 0 || !strings.Contains(l, "level=WARN") {
		t.Errorf("Lines(unpinned) = %q, want the one WARN line", l)
	}
}
