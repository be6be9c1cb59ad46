package tlsmeasure

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// session is a relay for one case with k peer clients connected through it.
type session struct {
	p  *peer
	r  *relay
	k  int
	id string
}

var sessionIDs atomic.Int64

func startRelayFor(p *peer, rc relayCase) (*relay, error) {
	up, ccfg := p.plainAddr, (*tls.Config)(nil)
	if rc.ver != plain {
		up, ccfg = p.tlsAddr, p.cert.clientConfig(rc.ver)
	}
	return startRelay(rc.model, up, ccfg, 0)
}

func (p *peer) connect(r *relay, k int) (*session, error) {
	id := strconv.FormatInt(sessionIDs.Add(1), 10)
	if _, err := p.call("dial", id, r.addr(), k); err != nil {
		return nil, err
	}
	if err := r.waitPairs(int64(k), 60*time.Second); err != nil {
		return nil, err
	}
	return &session{p: p, r: r, k: k, id: id}, nil
}

// run does n round trips (size "s" or "l") and returns the peer's answer.
func (s *session) run(n int, size string) ([]string, error) {
	return s.p.call("run", s.id, n, size)
}

// end closes the clients and the relay.
func (s *session) end() error {
	if _, err := s.p.call("close", s.id); err != nil {
		return err
	}
	if err := s.r.waitPairs(0, 30*time.Second); err != nil {
		return err
	}
	return s.r.close()
}

// sample is one timed run of round trips.
type sample struct {
	n       int
	wall    time.Duration // the peer's wall time for the run
	cpu     time.Duration // the relay process's user+sys
	peerCPU time.Duration
	mallocs uint64
	bytes   uint64
	others  float64 // share of the host's CPU capacity other processes used meanwhile
}

func (s sample) cpuPerRT() float64  { return float64(s.cpu.Nanoseconds()) / 1e3 / float64(s.n) }
func (s sample) wallPerRT() float64 { return float64(s.wall.Nanoseconds()) / float64(s.n) }
func (s sample) peerPerRT() float64 { return float64(s.peerCPU.Nanoseconds()) / 1e3 / float64(s.n) }

// parseRun reads the peer's "ok WALL CPU" answer.
func parseRun(f []string) (wall, cpu time.Duration, err error) {
	if len(f) != 2 {
		return 0, 0, fmt.Errorf("run answer %v", f)
	}
	w, err1 := strconv.ParseInt(f[0], 10, 64)
	c, err2 := strconv.ParseInt(f[1], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("run answer %v", f)
	}
	return time.Duration(w), time.Duration(c), nil
}

func (s *session) measure(n int) (sample, error) {
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	busy0 := hostBusy()
	cpu0 := cpuTime()
	f, err := s.run(n, "s")
	cpu := cpuTime() - cpu0
	busy := hostBusy() - busy0
	runtime.ReadMemStats(&m1)
	if err != nil {
		return sample{}, err
	}
	wall, pcpu, err := parseRun(f)
	if err != nil {
		return sample{}, err
	}
	return sample{n: n, wall: wall, cpu: cpu, peerCPU: pcpu,
		mallocs: m1.Mallocs - m0.Mallocs, bytes: m1.TotalAlloc - m0.TotalAlloc,
		others: max(0, float64(busy-cpu-pcpu)/float64(wall)/float64(runtime.NumCPU())),
	}, nil
}

// BenchmarkRelay: b.N round trips (60 B out, 200 B back) through the relay,
// spread over 1 or 16 client connections. ns/op is wall time per round trip,
// allocs/op the relay's allocations per round trip, cpu-µs/rt the relay
// process's user+sys CPU per round trip.
func BenchmarkRelay(b *testing.B) {
	for _, rc := range relayCases {
		for _, k := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s/conns=%d", rc.name, k), func(b *testing.B) {
				p := getPeer(b)
				r, err := startRelayFor(p, rc)
				if err != nil {
					b.Fatal(err)
				}
				s, err := p.connect(r, k)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := s.run(50*k, "s"); err != nil { // warm up
					b.Fatal(err)
				}
				b.ReportAllocs()
				cpu0 := cpuTime()
				b.ResetTimer()
				f, err := s.run(b.N, "s")
				b.StopTimer()
				cpu := cpuTime() - cpu0
				if err != nil {
					b.Fatal(err)
				}
				_, pcpu, err := parseRun(f)
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(cpu.Nanoseconds())/1e3/float64(b.N), "cpu-µs/rt")
				b.ReportMetric(float64(pcpu.Nanoseconds())/1e3/float64(b.N), "peer-cpu-µs/rt")
				if err := s.end(); err != nil {
					b.Fatal(err)
				}
			})
		}
	}
}

// BenchmarkHandshake: one full handshake (no resumption) per op, with the
// relay as the TLS client (the upstream's sslmode) and as the TLS server (client
// TLS); "plain" is the TCP connect and close alone, to subtract. cpu-µs/op is
// this process's CPU per handshake; the other end runs in the peer.
func BenchmarkHandshake(b *testing.B) {
	for _, v := range []ver{plain, tls13, tls12} {
		b.Run("client-"+v.String(), func(b *testing.B) {
			p := getPeer(b)
			b.ReportAllocs()
			cpu0 := cpuTime()
			b.ResetTimer()
			if err := clientHandshakes(p, v, b.N); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/1e3/float64(b.N), "cpu-µs/op")
		})
		b.Run("server-"+v.String(), func(b *testing.B) {
			p := getPeer(b)
			hs, err := startHandshakeServer(p.cert, v)
			if err != nil {
				b.Fatal(err)
			}
			defer hs.close()
			b.ReportAllocs()
			cpu0 := cpuTime()
			b.ResetTimer()
			if _, err := p.call("hs", hs.addr(), b.N, v); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/1e3/float64(b.N), "cpu-µs/op")
		})
	}
}

// clientHandshakes dials the peer's upstream n times and handshakes (none for plain).
func clientHandshakes(p *peer, v ver, n int) error {
	addr, cfg := p.plainAddr, p.cert.clientConfig(v)
	if v != plain {
		addr = p.tlsAddr
	}
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		if v != plain {
			if err := tls.Client(c, cfg).Handshake(); err != nil {
				c.Close()
				return err
			}
		}
		c.Close()
	}
	return nil
}

// startHandshakeServer accepts, handshakes as the TLS server and closes.
func startHandshakeServer(cp *certPair, v ver) (*server, error) {
	cfg := cp.serverConfig()
	return startServer(func(c net.Conn) {
		if v != plain {
			tls.Server(c, cfg).Handshake()
		}
	})
}

// idle is the memory the relay process holds per idle connection.
type idle struct {
	heap, stack, goroutines float64
}

func gc() {
	runtime.GC()
	runtime.GC()
}

// measureIdle connects n clients through a relay for rc, does one round trip on
// each (big: a 100 KiB answer), and reports what the relay holds per pair.
func measureIdle(p *peer, rc relayCase, n int, big bool) (idle, error) {
	r, err := startRelayFor(p, rc)
	if err != nil {
		return idle{}, err
	}
	var m0, m1 runtime.MemStats
	gc()
	runtime.ReadMemStats(&m0)
	g0 := runtime.NumGoroutine()
	s, err := p.connect(r, n)
	if err != nil {
		r.close()
		return idle{}, err
	}
	size := "s"
	if big {
		size = "l"
	}
	if _, err := s.run(n, size); err != nil {
		s.end()
		return idle{}, err
	}
	time.Sleep(50 * time.Millisecond)
	gc()
	runtime.ReadMemStats(&m1)
	g1 := runtime.NumGoroutine()
	if err := s.end(); err != nil {
		return idle{}, err
	}
	return idle{
		heap:       (float64(m1.HeapAlloc) - float64(m0.HeapAlloc)) / float64(n),
		stack:      (float64(m1.StackInuse) - float64(m0.StackInuse)) / float64(n),
		goroutines: float64(g1-g0) / float64(n),
	}, nil
}

// measureIdleTLS holds n client tls.Conns to the peer's upstream after one round
// trip each: over the *net.TCPConn (model a), or over a memConn whose descriptor
// is detached (model b, the socket's net.Conn gone).
func measureIdleTLS(p *peer, v ver, n int, detach, big bool) (float64, error) {
	cfg := p.cert.clientConfig(v)
	var m0, m1 runtime.MemStats
	gc()
	runtime.ReadMemStats(&m0)
	conns := make([]*tls.Conn, 0, n)
	defer func() {
		for _, tc := range conns {
			tc.Close()
		}
	}()
	req, resp := make([]byte, reqSize), make([]byte, bigRespSize)
	want := respSize
	req[0] = reqSmall
	if big {
		req[0], want = reqBig, bigRespSize
	}
	for range n {
		c, err := net.Dial("tcp", p.tlsAddr)
		if err != nil {
			return 0, err
		}
		var tc *tls.Conn
		var mc *memConn
		if detach {
			mc = newMemConn(c)
			tc = tls.Client(mc, cfg)
		} else {
			tc = tls.Client(c, cfg)
		}
		conns = append(conns, tc)
		if _, err := tc.Write(req); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(tc, resp[:want]); err != nil {
			return 0, err
		}
		if detach {
			if _, err := mc.detach(); err != nil {
				return 0, err
			}
		}
	}
	req, resp = nil, nil
	gc()
	runtime.ReadMemStats(&m1)
	runtime.KeepAlive(conns)
	return (float64(m1.HeapAlloc) - float64(m0.HeapAlloc) - float64(cap(conns)*8)) / float64(n), nil
}

// TestMeasure prints the numbers for the design decision. It takes a few
// minutes, so it runs only with PGSIDECAR_TLS_MEASURE=1 (and not under -race).
func TestMeasure(t *testing.T) {
	if testing.Short() || os.Getenv("PGSIDECAR_TLS_MEASURE") != "1" {
		t.Skip("set PGSIDECAR_TLS_MEASURE=1 to measure")
	}
	if raceEnabled {
		t.Skip("numbers under the race detector mean nothing")
	}
	p := getPeer(t)
	// The host is shared: other processes' load changes the numbers from one run
	// to the next. So every case keeps its relay and clients open, the rounds
	// run the cases one after the other (starting at a different case each
	// round), and the table shows the minimum and the median over the rounds.
	const n = 20000
	reps := 5
	if v, err := strconv.Atoi(os.Getenv("PGSIDECAR_TLS_MEASURE_ROUNDS")); err == nil && v > 0 {
		reps = v
	}
	var out strings.Builder
	fmt.Fprintf(&out, "GOMAXPROCS %d, NumCPU %d, %s; %d round trips per run, %d rounds; load average at start %s\n",
		runtime.GOMAXPROCS(0), runtime.NumCPU(), runtime.Version(), n, reps, loadavg())
	type row struct {
		rc relayCase
		k  int
		s  *session
		ss []sample
	}
	var rows []*row
	for _, rc := range relayCases {
		for _, k := range []int{1, 16} {
			r, err := startRelayFor(p, rc)
			if err != nil {
				t.Fatal(err)
			}
			s, err := p.connect(r, k)
			if err != nil {
				t.Fatal(err)
			}
			rows = append(rows, &row{rc: rc, k: k, s: s})
		}
	}
	for round := range reps {
		for i := range rows {
			x := rows[(i+round)%len(rows)]
			if _, err := x.s.run(100*x.k, "s"); err != nil { // warm up
				t.Fatal(err)
			}
			sm, err := x.s.measure(n)
			if err != nil {
				t.Fatal(err)
			}
			x.ss = append(x.ss, sm)
		}
	}
	fmt.Fprintf(&out, "%-20s %5s | %-17s | %-17s | %7s %7s | %-9s | %s\n", "case", "conns",
		"relay cpu µs/rt", "wall ns/rt", "allocs", "B", "peer cpu", "others")
	fmt.Fprintf(&out, "%-20s %5s | %8s %8s | %8s %8s | %7s %7s | %9s | %s\n", "", "", "min", "median", "min", "median", "/rt", "/rt", "µs/rt", "median")
	for _, x := range rows {
		if err := x.s.end(); err != nil {
			t.Fatal(err)
		}
		byCPU := slices.Clone(x.ss)
		slices.SortFunc(byCPU, func(a, b sample) int { return int(a.cpu - b.cpu) })
		byWall := slices.Clone(x.ss)
		slices.SortFunc(byWall, func(a, b sample) int { return int(a.wall - b.wall) })
		med := byCPU[len(byCPU)/2]
		others := make([]float64, 0, len(x.ss))
		for _, sm := range x.ss {
			others = append(others, sm.others)
		}
		slices.Sort(others)
		fmt.Fprintf(&out, "%-20s %5d | %8.2f %8.2f | %8.0f %8.0f | %7.2f %7.1f | %9.2f | %3.0f%%   (cpu:", x.rc.name, x.k,
			byCPU[0].cpuPerRT(), med.cpuPerRT(), byWall[0].wallPerRT(), byWall[len(byWall)/2].wallPerRT(),
			float64(med.mallocs)/n, float64(med.bytes)/n, med.peerPerRT(), 100*others[len(others)/2])
		for _, sm := range x.ss {
			fmt.Fprintf(&out, " %.1f", sm.cpuPerRT())
		}
		fmt.Fprintf(&out, ")\n")
	}
	fmt.Fprintf(&out, "load average at end %s\n", loadavg())

	// Handshakes: n sequential, this process's CPU per handshake.
	const nh = 300
	fmt.Fprintf(&out, "\nhandshake (full, no resumption), %d sequential, this process's CPU per op:\n", nh)
	hsCPU := map[string]float64{}
	for _, v := range []ver{plain, tls13, tls12} {
		for _, side := range []string{"client", "server"} {
			var runs []float64
			var wall time.Duration
			for range 5 {
				cpu0, t0 := cpuTime(), time.Now()
				if side == "client" {
					if err := clientHandshakes(p, v, nh); err != nil {
						t.Fatal(err)
					}
				} else {
					hs, err := startHandshakeServer(p.cert, v)
					if err != nil {
						t.Fatal(err)
					}
					if _, err := p.call("hs", hs.addr(), nh, v); err != nil {
						t.Fatal(err)
					}
					hs.close()
				}
				runs = append(runs, float64((cpuTime()-cpu0).Nanoseconds())/1e3/nh)
				wall += time.Since(t0)
			}
			slices.Sort(runs)
			med := runs[len(runs)/2]
			hsCPU[side+v.String()] = med
			extra := ""
			if v != plain {
				extra = fmt.Sprintf(" (minus TCP connect/close: %.0f)", med-hsCPU[side+"plain"])
			}
			fmt.Fprintf(&out, "  %-6s %-5s cpu %7.1f µs%s, wall %6.0f µs\n", side, v, med, extra,
				float64(wall.Microseconds())/float64(5*nh))
		}
	}
	cs := connState(t, p, tls13)
	fmt.Fprintf(&out, "  tls13 negotiated: %s, group %s; tls12: ECDHE-ECDSA-AES128-GCM-SHA256\n",
		tls.CipherSuiteName(cs.CipherSuite), cs.CurveID)

	// Idle memory.
	const ni = 1000
	fmt.Fprintf(&out, "\nidle, %d connections, after one round trip each (heap: HeapAlloc delta; stack: StackInuse delta):\n", ni)
	for _, rc := range relayCases {
		for _, big := range []bool{false, true} {
			if big && rc.ver != tls13 {
				continue
			}
			id, err := measureIdle(p, rc, ni, big)
			if err != nil {
				t.Fatal(err)
			}
			what := "200 B answer"
			if big {
				what = "100 KiB answer"
			}
			fmt.Fprintf(&out, "  relay pair %-20s %-15s heap %7.0f B  stack %6.0f B  goroutines %.2f  total %7.0f B\n",
				rc.name, what, id.heap, id.stack, id.goroutines, id.heap+id.stack)
		}
	}
	for _, detach := range []bool{false, true} {
		for _, big := range []bool{false, true} {
			b, err := measureIdleTLS(p, tls13, ni, detach, big)
			if err != nil {
				t.Fatal(err)
			}
			what := "tls.Conn over *net.TCPConn"
			if detach {
				what = "tls.Conn over memConn (fd)"
			}
			ans := "200 B answer"
			if big {
				ans = "100 KiB answer"
			}
			fmt.Fprintf(&out, "  alone %-28s %-15s heap %7.0f B\n", what, ans, b)
		}
	}
	t.Log("\n" + out.String())
}

func connState(t *testing.T, p *peer, v ver) tls.ConnectionState {
	c, err := net.Dial("tcp", p.tlsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tc := tls.Client(c, p.cert.clientConfig(v))
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	return tc.ConnectionState()
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// hostBusy is the CPU time all processes used, from /proc/stat (in USER_HZ
// ticks, assumed 100 per second).
func hostBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	var ticks int64
	for i, x := range f[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		if i >= 8 { // guest time is already in user
			break
		}
		v, _ := strconv.ParseInt(x, 10, 64)
		ticks += v
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}
