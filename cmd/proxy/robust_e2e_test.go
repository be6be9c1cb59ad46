package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/localpg"
	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// End-to-end robustness tests of the proxy binary (issue 11): running out of
// file descriptors, shutting down with a client that does not read, and
// readiness in front of a dead upstream. Each runs the re-executed test binary
// (see TestMain) as a child process. Helpers are prefixed with robust.

// robustStart starts the proxy like startProxy; with nofile > 0 it runs under
// a shell that first sets both the soft and the hard limit on open files to
// nofile (the shell's exec keeps the pid, so the cleanup kills the proxy).
//
// In a race-enabled build the race runtime sleeps a second before the process
// exits (GORACE atexit_sleep_ms, default 1000), which would count against the
// shutdown bounds measured here: the child runs without that sleep.
func robustStart(t *testing.T, nofile int, env []string, args ...string) *proxyProcess {
	t.Helper()
	env = append([]string{"GORACE=" + strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0")}, env...)
	if nofile <= 0 {
		return startProxy(t, env, args...)
	}
	script := fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, nofile)
	cmd := exec.Command("/bin/sh", append([]string{"-c", script, os.Args[0]}, args...)...)
	return startProxyCmd(t, cmd, env)
}

// robustRunning fails the test if the proxy has exited.
func robustRunning(t *testing.T, p *proxyProcess) {
	t.Helper()
	select {
	case <-p.exited:
		t.Fatalf("proxy exited (%v):\n%s", p.err, p.output())
	default:
	}
}

// robustExit waits at most within for the proxy to exit and returns how long
// that took from since and the exit error (nil for status 0).
func robustExit(t *testing.T, p *proxyProcess, since time.Time, within time.Duration) (time.Duration, error) {
	t.Helper()
	select {
	case <-p.exited:
		return time.Since(since), p.err
	case <-time.After(within):
		t.Fatalf("proxy still running %s after the signal:\n%s", within, p.output())
		return 0, nil
	}
}

// robustURL is a client URL of the proxy listening on addr.
func robustURL(addr string) string {
	return fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable&application_name=robust_client", addr)
}

// robustConnect connects with pgx within 5s.
func robustConnect(addr string) (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return pgx.Connect(ctx, robustURL(addr))
}

// robustBackends counts the client backends of the cluster other than the
// checking connection's own: with only the proxy in front of the throwaway
// cluster, those are the proxy's server connections.
const robustBackends = `SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()`

// robustStuck makes a client that does not read (pgtest.Raw.Stuck, as in
// internal/proxy's hang_test.go).
func robustStuck(t *testing.T, listen string, chk *pgx.Conn) *pgtest.Raw {
	t.Helper()
	rc := pgtest.Dial(t, listen)
	rc.Login("postgres", "robust_stuck")
	rc.Stuck(chk, "postgres")
	return rc
}

// robustFDs counts the open descriptors of pid ("?" when unreadable).
func robustFDs(pid int) string {
	des, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return "?"
	}
	return strconv.Itoa(len(des))
}

// Issue 11 point 4: out of file descriptors, the proxy keeps running, retries
// accept with a rate-limited log, keeps serving its logged-in clients, and
// takes new ones once descriptors are free again. --max-client-conn refuses
// before the startup packet is read.
func TestBinaryOutOfFileDescriptors(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("needs ulimit and /proc (Linux)")
	}
	cl := pgtest.Start(t, localpg.Options{})

	t.Run("AcceptRetries", func(t *testing.T) {
		const (
			nofile = 64
			k      = 10  // logged-in clients
			extra  = 100 // raw connections that exhaust the descriptors
		)
		listen := pgtest.FreeAddr(t)
		p := robustStart(t, nofile, []string{"DATABASE_URL=" + cl.URL("postgres")},
			"--listen", listen, "--http-listen", "off", "--pool-size", "2",
			"--shutdown-timeout", "2s", "--log-format", "json")
		p.waitFor(t, `"msg":"pgsidecar listening"`, 1, 30*time.Second)
		lim := record(t, p.waitFor(t, `"msg":"open files limit"`, 1, 0))
		if lim["soft"] != float64(nofile) || lim["hard"] != float64(nofile) {
			t.Fatalf("open files limit logged as %v, want soft = hard = %d", lim, nofile)
		}
		pid := p.cmd.Process.Pid

		// K clients, each running a query; concurrent sleeps make the pool
		// open both its server connections now, so that none is dialed while
		// descriptors are out.
		clients := make([]*pgx.Conn, k)
		for i := range clients {
			c, err := robustConnect(listen)
			if err != nil {
				t.Fatalf("client %d: %v", i, err)
			}
			t.Cleanup(func() { c.Close(context.Background()) })
			clients[i] = c
		}
		var wg sync.WaitGroup
		errs := make([]error, k)
		for i, c := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_, errs[i] = c.Exec(ctx, "SELECT pg_sleep(0.05)")
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("queries of the logged-in clients: %v", err)
		}
		chk := pgtest.Connect(t, cl.URL("postgres"), 0, map[string]string{"application_name": "robust_check"})
		pgtest.Eventually(t, 5*time.Second, "both server connections open", func() error {
			n, err := pgtest.Int(chk, robustBackends)
			if err == nil && n != 2 {
				err = fmt.Errorf("%d server connections", n)
			}
			return err
		})
		t.Logf("proxy has %s descriptors open with %d clients logged in", robustFDs(pid), k)

		// Exhaust the descriptors: the connections the proxy cannot accept
		// wait in the listen backlog (the kernel completes their handshake).
		conns := make([]net.Conn, 0, extra)
		closeExtra := func() {
			for _, c := range conns {
				c.Close()
			}
			conns = conns[:0]
		}
		t.Cleanup(closeExtra)
		for i := 0; i < extra; i++ {
			c, err := net.DialTimeout("tcp", listen, 5*time.Second)
			if err != nil {
				t.Fatalf("extra connection %d: %v", i, err)
			}
			conns = append(conns, c)
		}
		exhausted := time.Now()
		first := record(t, p.waitFor(t, `"msg":"accept failed, retrying"`, 1, 10*time.Second))
		if msg, _ := first["error"].(string); !strings.Contains(msg, "too many open files") {
			t.Fatalf("accept failed with %q, want too many open files", msg)
		}
		t.Logf("proxy has %s descriptors open (limit %d) after %d extra connections", robustFDs(pid), nofile, extra)
		// A second line a second later: the proxy keeps retrying, rate-limited.
		second := record(t, p.waitFor(t, `"msg":"accept failed, retrying"`, 2, 10*time.Second))
		if f, _ := second["failures"].(float64); f < 2 {
			t.Errorf("second accept-failure line counts %v failures, want several retries folded into it: %v", second["failures"], second)
		}
		robustRunning(t, p)
		// The logged-in clients are not affected.
		for round := 0; round < 3; round++ {
			for i, c := range clients {
				if err := pgtest.SelectInt(c, 100*round+i); err != nil {
					t.Fatalf("client %d while out of descriptors: %v", i, err)
				}
			}
		}
		robustRunning(t, p)

		closeExtra()
		freed := time.Now()
		c, err := robustConnect(listen)
		if err != nil {
			t.Fatalf("new client after the descriptors were freed: %v", err)
		}
		defer c.Close(context.Background())
		if err := pgtest.SelectInt(c, 42); err != nil {
			t.Fatalf("new client's query: %v", err)
		}
		took := time.Since(freed)
		t.Logf("new client logged in and queried %s after the extra connections closed (out of descriptors for %s)",
			took.Round(time.Millisecond), freed.Sub(exhausted).Round(time.Millisecond))
		if took > 5*time.Second {
			t.Errorf("new client took %s after the descriptors were freed", took)
		}
		again := record(t, p.waitFor(t, `"msg":"accepting clients again"`, 1, 5*time.Second))
		t.Logf("recovery line: %v", again)
		for i, c := range clients {
			if err := pgtest.SelectInt(c, i); err != nil {
				t.Fatalf("client %d after recovery: %v", i, err)
			}
		}
		// Rate-limited: at most about one line a second of exhaustion.
		lines := p.matching(`"msg":"accept failed, retrying"`)
		bound := int(time.Since(exhausted)/time.Second) + 2
		t.Logf("%d accept-failure lines over %s", len(lines), time.Since(exhausted).Round(time.Millisecond))
		if len(lines) > bound {
			t.Errorf("%d accept-failure lines, want at most %d:\n%s", len(lines), bound, strings.Join(lines, "\n"))
		}
		// One recovery line per failure line at most, not one per accept.
		if n := len(p.matching(`"msg":"accepting clients again"`)); n > len(lines) {
			t.Errorf("%d recovery lines for %d failure lines", n, len(lines))
		}

		// And it still stops cleanly.
		c.Close(context.Background())
		for _, c := range clients {
			c.Close(context.Background())
		}
		start := time.Now()
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if _, err := robustExit(t, p, start, 10*time.Second); err != nil {
			t.Fatalf("exit: %v\n%s", err, p.output())
		}
	})

	t.Run("RefusalsWhileOutOfDescriptors", func(t *testing.T) {
		// Connections beyond --max-client-conn are accepted, refused and closed
		// in turn while descriptors run out: accepts fail and succeed by turns,
		// and the log must not get a line for each.
		const nofile = 64
		listen := pgtest.FreeAddr(t)
		p := robustStart(t, nofile, []string{"DATABASE_URL=" + cl.URL("postgres")},
			"--listen", listen, "--http-listen", "off", "--pool-size", "1", "--max-client-conn", "2",
			"--shutdown-timeout", "1s", "--log-format", "json")
		p.waitFor(t, `"msg":"pgsidecar listening"`, 1, 30*time.Second)
		start := time.Now()
		var conns []net.Conn
		t.Cleanup(func() {
			for _, c := range conns {
				c.Close()
			}
		})
		for time.Since(start) < 2*time.Second { // bounded: about 400 connections
			c, err := net.DialTimeout("tcp", listen, time.Second)
			if err == nil {
				conns = append(conns, c)
			}
			if len(conns) >= 80 {
				for _, c := range conns[:40] {
					c.Close()
				}
				conns = append(conns[:0], conns[40:]...)
			}
			time.Sleep(5 * time.Millisecond) // pacing of the load, not a condition
		}
		fails := p.matching(`"msg":"accept failed, retrying"`)
		agains := p.matching(`"msg":"accepting clients again"`)
		refused := p.matching(`"msg":"client refused: max-client-conn reached"`)
		t.Logf("in %s: %d accept-failure, %d recovery and %d refusal lines", time.Since(start).Round(time.Millisecond),
			len(fails), len(agains), len(refused))
		if len(fails) == 0 {
			t.Fatal("the proxy never ran out of descriptors: the test did not test anything")
		}
		if len(agains) > len(fails) || len(fails) > 5 || len(refused) > 5 {
			t.Errorf("log lines not rate-limited: %d accept-failure, %d recovery, %d refusal lines",
				len(fails), len(agains), len(refused))
		}
		robustRunning(t, p)
	})

	t.Run("MaxClientConnBeforeStartup", func(t *testing.T) {
		const k = 3
		listen, httpAddr := pgtest.FreeAddr(t), pgtest.FreeAddr(t)
		p := robustStart(t, 0, []string{"DATABASE_URL=" + cl.URL("postgres")},
			"--listen", listen, "--http-listen", httpAddr, "--pool-size", "2",
			"--max-client-conn", strconv.Itoa(k+1), "--shutdown-timeout", "2s", "--log-format", "json")
		p.waitFor(t, `"msg":"pgsidecar listening"`, 1, 30*time.Second)
		clients := make([]*pgx.Conn, k)
		for i := range clients {
			c, err := robustConnect(listen)
			if err != nil {
				t.Fatalf("client %d: %v", i, err)
			}
			t.Cleanup(func() { c.Close(context.Background()) })
			if err := pgtest.SelectInt(c, i); err != nil {
				t.Fatal(err)
			}
			clients[i] = c
		}
		// The (K+1)th client has not sent its startup packet: it counts.
		silent, err := net.DialTimeout("tcp", listen, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer silent.Close()
		pgtest.Eventually(t, 5*time.Second, "K+1 clients counted", func() error {
			m, err := pgtest.ScrapeMetrics(httpAddr)
			if err != nil {
				return err
			}
			if n, series := m.Value("pgsidecar_client_connections_open", nil); series == 0 || n != k+1 {
				return fmt.Errorf("/metrics: %v clients open", n)
			}
			return nil
		})

		// One more: refused at once, before it sends anything.
		rc := pgtest.Dial(t, listen)
		start := time.Now()
		typ, body, err := rc.Next(5 * time.Second)
		if err != nil {
			t.Fatalf("reading the refusal without sending anything: %v", err)
		}
		got := time.Since(start)
		if typ != wire.MsgErrorResponse {
			t.Fatalf("beyond the limit got message %q, want ErrorResponse", typ)
		}
		f := wire.ParseError(body)
		if f.Code != wire.CodeTooManyConnections || f.Severity != wire.SeverityFatal {
			t.Fatalf("refusal %+v, want FATAL %s", f, wire.CodeTooManyConnections)
		}
		t.Logf("refused with %+v %s after connecting, nothing sent", f, got.Round(time.Microsecond))
		if got > time.Second {
			t.Errorf("refusal took %s", got)
		}
		if _, _, err := rc.Next(5 * time.Second); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("after the refusal: %v, want the connection closed", err)
		}

		// pgx gets the same.
		if c, err := robustConnect(listen); err == nil {
			c.Close(context.Background())
			t.Fatal("pgx logged in beyond --max-client-conn")
		} else if code := pgtest.SQLState(err); code != wire.CodeTooManyConnections {
			t.Fatalf("pgx beyond the limit: %v (SQLSTATE %q), want %s", err, code, wire.CodeTooManyConnections)
		}
		if len(p.matching("client refused: max-client-conn reached")) == 0 {
			t.Errorf("no refusal logged:\n%s", p.output())
		}
		if m, err := pgtest.ScrapeMetrics(httpAddr); err != nil {
			t.Errorf("clients_refused_total: %v", err)
		} else if n, _ := m.Value("pgsidecar_clients_refused_total", nil); n != 2 {
			t.Errorf("clients_refused_total = %v, want 2", n)
		}

		// A place freed is a place taken.
		silent.Close()
		pgtest.Eventually(t, 5*time.Second, "a client logs in once the silent one left", func() error {
			c, err := robustConnect(listen)
			if err != nil {
				return err
			}
			defer c.Close(context.Background())
			return pgtest.SelectInt(c, 7)
		})
	})
}

// Issue 11 point 1: SIGTERM ends the process within --shutdown-timeout plus
// about a second even with a client that does not read, and a second SIGTERM
// ends it at once; no server connection is left behind.
func TestBinaryShutdownWithStuckClient(t *testing.T) {
	cl := pgtest.Start(t, localpg.Options{})
	chk := pgtest.Connect(t, cl.URL("postgres"), 0, map[string]string{"application_name": "robust_check"})

	// setup starts the proxy and gives it a stuck client and an idle one.
	setup := func(t *testing.T, shutdownTimeout string) (*proxyProcess, *pgx.Conn) {
		listen := pgtest.FreeAddr(t)
		p := robustStart(t, 0, []string{"DATABASE_URL=" + cl.URL("postgres")},
			"--listen", listen, "--http-listen", "off", "--pool-size", "2",
			"--shutdown-timeout", shutdownTimeout, "--log-format", "json")
		p.waitFor(t, `"msg":"pgsidecar listening"`, 1, 30*time.Second)
		idle, err := robustConnect(listen)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { idle.Close(context.Background()) })
		if err := pgtest.SelectInt(idle, 1); err != nil {
			t.Fatal(err)
		}
		robustStuck(t, listen, chk)
		n, err := pgtest.Int(chk, robustBackends)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%d server connections before the signal", n)
		return p, idle
	}
	// gone checks that the idle client was ended and that PostgreSQL has no
	// backend of the proxy left.
	gone := func(t *testing.T, idle *pgx.Conn) {
		if err := pgtest.SelectInt(idle, 2); err == nil {
			t.Errorf("the idle client still runs queries after the proxy exited")
		}
		start := time.Now()
		pgtest.Eventually(t, 3*time.Second, "no backend of the proxy left", func() error {
			n, err := pgtest.Int(chk, robustBackends)
			if err == nil && n != 0 {
				err = fmt.Errorf("%d backends left", n)
			}
			return err
		})
		t.Logf("no backend left %s after the exit", time.Since(start).Round(time.Millisecond))
	}

	t.Run("ShutdownTimeout", func(t *testing.T) {
		p, idle := setup(t, "2s")
		start := time.Now()
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		took, err := robustExit(t, p, start, 15*time.Second)
		t.Logf("exited %s after SIGTERM (--shutdown-timeout 2s): %v", took.Round(time.Millisecond), err)
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, p.output())
		}
		if took > 3500*time.Millisecond {
			t.Errorf("exit took %s, want at most 2s + 1s (+0.5s slack)\n%s", took, p.output())
		}
		if len(p.matching("shutdown timeout reached")) == 0 {
			t.Errorf("no shutdown timeout logged:\n%s", p.output())
		}
		if len(p.matching(`"msg":"pgsidecar stopped"`)) == 0 {
			t.Errorf("no clean stop logged:\n%s", p.output())
		}
		gone(t, idle)
	})

	t.Run("SecondSignal", func(t *testing.T) {
		p, idle := setup(t, "30s")
		first := time.Now()
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		p.waitFor(t, `"msg":"shutting down`, 1, 5*time.Second)
		// The second signal 300ms after the first, as an impatient operator.
		time.Sleep(time.Until(first.Add(300 * time.Millisecond)))
		robustRunning(t, p)
		second := time.Now()
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		took, err := robustExit(t, p, second, 15*time.Second)
		t.Logf("exited %s after the second SIGTERM (%s after the first): %v",
			took.Round(time.Millisecond), time.Since(first).Round(time.Millisecond), err)
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, p.output())
		}
		if took > 1500*time.Millisecond {
			t.Errorf("exit took %s after the second signal, want at most 1.5s\n%s", took, p.output())
		}
		if len(p.matching("second signal: closing every client now")) == 0 {
			t.Errorf("second signal not logged:\n%s", p.output())
		}
		gone(t, idle)
	})
}

// Issue 11 point 5: with --readiness-checks-upstream /readyz reports a dead
// upstream (and /livez does not); without it /readyz stays 200 and clients get
// 08006 at once, the proxy backing off its dials instead of dialing for each.
func TestBinaryReadinessChecksUpstream(t *testing.T) {
	dead := pgtest.FreeAddr(t)
	deadURL := "postgres://postgres@" + dead + "/postgres?sslmode=disable"

	t.Run("DeadUpstreamNotReady", func(t *testing.T) {
		listen, httpAddr := pgtest.FreeAddr(t), pgtest.FreeAddr(t)
		p := robustStart(t, 0, nil, "--listen", listen, "--http-listen", httpAddr,
			"--upstream", deadURL, "--readiness-checks-upstream", "--log-format", "json")
		p.waitFor(t, `"msg":"pgsidecar listening"`, 1, 30*time.Second)
		var body string
		pgtest.Eventually(t, 10*time.Second, "/readyz 503 naming the connection error", func() error {
			var code int
			code, body = pgtest.HTTPGet(httpAddr, "/readyz")
			if code != 503 || !strings.Contains(body, "connection refused") {
				return fmt.Errorf("/readyz %d: %q", code, body)
			}
			return nil
		})
		t.Logf("/readyz: %s", strings.TrimSpace(body))
		if !strings.Contains(body, dead) {
			t.Errorf("/readyz body %q does not name the upstream %s", body, dead)
		}
		if code, body := pgtest.HTTPGet(httpAddr, "/livez"); code != 200 {
			t.Errorf("/livez = %d %q, want 200", code, body)
		}
		robustRunning(t, p)
	})

	t.Run("DeadUpstreamWithoutCheck", func(t *testing.T) {
		listen, httpAddr := pgtest.FreeAddr(t), pgtest.FreeAddr(t)
		p := robustStart(t, 0, nil, "--listen", listen, "--http-listen", httpAddr,
			"--upstream", deadURL, "--log-format", "json")
		p.waitFor(t, `"msg":"pgsidecar listening"`, 1, 30*time.Second)
		pgtest.Eventually(t, 10*time.Second, "/readyz 200", func() error {
			if code, body := pgtest.HTTPGet(httpAddr, "/readyz"); code != 200 {
				return fmt.Errorf("/readyz %d: %q", code, body)
			}
			return nil
		})
		start := time.Now()
		_, err := robustConnect(listen)
		took := time.Since(start)
		t.Logf("pgx against a dead upstream: %v after %s", err, took.Round(time.Millisecond))
		if code := pgtest.SQLState(err); code != wire.CodeConnectionFailure {
			t.Fatalf("pgx: %v (SQLSTATE %q), want %s", err, code, wire.CodeConnectionFailure)
		}
		if took > 2*time.Second {
			t.Errorf("the error took %s", took)
		}

		// A few clients retrying in a loop for a second.
		const loopers = 4
		var attempts, others atomic.Int64
		var firstOther atomic.Value
		end := time.Now().Add(time.Second)
		var wg sync.WaitGroup
		for range loopers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(end) {
					c, err := robustConnect(listen)
					attempts.Add(1)
					if err == nil {
						c.Close(context.Background())
						err = errors.New("logged in")
					}
					if pgtest.SQLState(err) != wire.CodeConnectionFailure {
						others.Add(1)
						firstOther.CompareAndSwap(nil, err.Error())
					}
				}
			}()
		}
		wg.Wait()
		if n := others.Load(); n > 0 {
			t.Errorf("%d of %d attempts did not fail with %s, first: %v", n, attempts.Load(), wire.CodeConnectionFailure, firstOther.Load())
		}
		m, err := pgtest.ScrapeMetrics(httpAddr)
		if err != nil {
			t.Fatal(err)
		}
		failures, series := m.Value("pgsidecar_server_connect_failures_total", nil)
		t.Logf("%d client attempts in 1s by %d clients: %v server connect failures", attempts.Load()+1, loopers, failures)
		if series == 0 || failures < 1 {
			_, body := pgtest.HTTPGet(httpAddr, "/metrics")
			t.Fatalf("/metrics: no server_connect_failures_total:\n%s", body)
		}
		if attempts.Load() < 20 {
			t.Errorf("only %d client attempts in 1s: the loop proves nothing", attempts.Load())
		}
		if failures > 10 {
			t.Errorf("%v server connect failures for %d client attempts, want at most 10 (back-off)", failures, attempts.Load()+1)
		}
		robustRunning(t, p)
	})

	t.Run("LiveUpstreamReady", func(t *testing.T) {
		cl := pgtest.Start(t, localpg.Options{})
		listen, httpAddr := pgtest.FreeAddr(t), pgtest.FreeAddr(t)
		p := robustStart(t, 0, nil, "--listen", listen, "--http-listen", httpAddr,
			"--upstream", cl.URL("postgres"), "--readiness-checks-upstream", "--log-format", "json")
		p.waitFor(t, `"msg":"pgsidecar listening"`, 1, 30*time.Second)
		start := time.Now()
		pgtest.Eventually(t, 10*time.Second, "/readyz 200", func() error {
			if code, body := pgtest.HTTPGet(httpAddr, "/readyz"); code != 200 {
				return fmt.Errorf("/readyz %d: %q", code, body)
			}
			return nil
		})
		t.Logf("/readyz 200 %s after listening", time.Since(start).Round(time.Millisecond))
		c, err := robustConnect(listen)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(context.Background())
		if err := pgtest.SelectInt(c, 3); err != nil {
			t.Fatal(err)
		}
	})
}
