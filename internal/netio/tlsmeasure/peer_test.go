package tlsmeasure

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The peer is the test binary re-executed: it runs the upstream servers and the
// load-generating clients, so that the test process's CPU and allocations are the
// relay's alone. It takes line commands on stdin and answers "ok ..." or "err ...":
//
//	dial ID ADDR K     open K plaintext client connections to ADDR (the relay), set ID
//	run ID N SIZE      N round trips over set ID, all connections at once (SIZE s:
//	                   200 B answers, l: 100 KiB); answers the peer's wall and CPU ns
//	close ID           close set ID
//	hs ADDR N VER      N sequential TLS client handshakes (VER tls13, tls12, plain)
//	                   to ADDR, each read to EOF
//
// It exits when stdin closes.
const (
	peerEnv = "PGSIDECAR_TLSMEASURE_PEER"
	certEnv = "PGSIDECAR_TLSMEASURE_CERT"
	keyEnv  = "PGSIDECAR_TLSMEASURE_KEY"
)

func TestMain(m *testing.M) {
	if os.Getenv(peerEnv) == "1" {
		if err := runPeer(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "peer:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func runPeer(in io.Reader, out io.Writer) error {
	certDER, err := base64.StdEncoding.DecodeString(os.Getenv(certEnv))
	if err != nil {
		return err
	}
	keyDER, err := base64.StdEncoding.DecodeString(os.Getenv(keyEnv))
	if err != nil {
		return err
	}
	cp, err := loadCert(certDER, keyDER)
	if err != nil {
		return err
	}
	ps, err := startServer(serveRR(nil))
	if err != nil {
		return err
	}
	ts, err := startServer(serveRR(cp.serverConfig()))
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "addrs %s %s\n", ps.addr(), ts.addr())
	sets := map[string]*clients{} // by session id
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		var err error
		reply := "ok"
		switch {
		case f[0] == "dial" && len(f) == 4:
			var k int
			if k, err = strconv.Atoi(f[3]); err == nil {
				if cl := sets[f[1]]; cl != nil {
					cl.close()
				}
				sets[f[1]], err = dialClients(f[2], k)
			}
		case f[0] == "run" && len(f) == 4 && sets[f[1]] != nil:
			var n int
			if n, err = strconv.Atoi(f[2]); err == nil {
				cpu0, t0 := cpuTime(), time.Now()
				err = sets[f[1]].run(n, f[3] == "l")
				reply = fmt.Sprintf("ok %d %d", time.Since(t0).Nanoseconds(), (cpuTime() - cpu0).Nanoseconds())
			}
		case f[0] == "close" && len(f) == 2:
			if cl := sets[f[1]]; cl != nil {
				cl.close()
				delete(sets, f[1])
			}
		case f[0] == "hs" && len(f) == 4:
			var n int
			if n, err = strconv.Atoi(f[2]); err == nil {
				err = handshakes(f[1], n, parseVer(f[3]), cp)
			}
		default:
			err = fmt.Errorf("bad command %q", sc.Text())
		}
		if err != nil {
			reply = "err " + strings.ReplaceAll(err.Error(), "\n", "; ")
		}
		fmt.Fprintln(out, reply)
	}
	return sc.Err()
}

func parseVer(s string) ver {
	switch s {
	case "tls13":
		return tls13
	case "tls12":
		return tls12
	}
	return plain
}

// handshakes dials addr n times, one after the other, completes a TLS handshake
// (none for plain) and reads until the server closes.
func handshakes(addr string, n int, v ver, cp *certPair) error {
	buf := make([]byte, 64)
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		var r io.Reader = c
		if v != plain {
			tc := tls.Client(c, cp.clientConfig(v))
			if err := tc.Handshake(); err != nil {
				c.Close()
				return err
			}
			r = tc
		}
		for {
			if _, err := r.Read(buf); err != nil {
				break
			}
		}
		c.Close()
	}
	return nil
}

func cpuTime() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// peer is the parent's handle on the child process.
type peer struct {
	mu        sync.Mutex
	cmd       *exec.Cmd
	in        io.WriteCloser
	out       *bufio.Scanner
	plainAddr string
	tlsAddr   string
	cert      *certPair
}

var (
	peerOnce sync.Once
	thePeer  *peer
	peerErr  error
)

// getPeer starts the child process once per test binary; it lives until the
// binary exits (its stdin then closes).
func getPeer(tb testing.TB) *peer {
	tb.Helper()
	peerOnce.Do(func() { thePeer, peerErr = startPeer() })
	if peerErr != nil {
		tb.Fatal(peerErr)
	}
	return thePeer
}

func startPeer() (*peer, error) {
	cp, err := newCert()
	if err != nil {
		return nil, err
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(),
		peerEnv+"=1",
		certEnv+"="+base64.StdEncoding.EncodeToString(cp.certDER),
		keyEnv+"="+base64.StdEncoding.EncodeToString(cp.keyDER))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &peer{cmd: cmd, in: in, out: bufio.NewScanner(out), cert: cp}
	if !p.out.Scan() {
		return nil, errors.New("peer: no address line")
	}
	f := strings.Fields(p.out.Text())
	if len(f) != 3 || f[0] != "addrs" {
		return nil, fmt.Errorf("peer: bad first line %q", p.out.Text())
	}
	p.plainAddr, p.tlsAddr = f[1], f[2]
	return p, nil
}

// call sends one command and returns the fields after "ok".
func (p *peer) call(args ...any) ([]string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := fmt.Fprintln(p.in, args...); err != nil {
		return nil, err
	}
	if !p.out.Scan() {
		return nil, fmt.Errorf("peer: no answer to %v: %v", args, p.out.Err())
	}
	line := p.out.Text()
	if rest, ok := strings.CutPrefix(line, "ok"); ok {
		return strings.Fields(rest), nil
	}
	return nil, fmt.Errorf("peer: %v: %s", args, line)
}
