package tlsmeasure

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// model is how the relay drives its connections.
type model int

const (
	goroutines model = iota // (a): a goroutine per direction, blocking Read/Write
	epoll                   // (b): one epoll loop; TLS through memConn
)

func (m model) String() string {
	if m == epoll {
		return "loop"
	}
	return "goroutines"
}

// goroutineBuf is the buffer each relay goroutine of model (a) reads into.
const goroutineBuf = 4 << 10

// relay accepts plaintext clients and relays each to its own upstream
// connection, plaintext or TLS, the way the proxy relays a client to a server
// connection (1:1, no protocol logic).
type relay struct {
	ln    net.Listener
	model model
	up    string
	ccfg  *tls.Config // nil: plaintext upstream
	lp    *loop

	pairs atomic.Int64 // established, not yet closed
	wg    sync.WaitGroup
	mu    sync.Mutex
	err   error
}

func startRelay(m model, upAddr string, ccfg *tls.Config, sndbuf int) (*relay, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &relay{ln: ln, model: m, up: upAddr, ccfg: ccfg}
	if m == epoll {
		r.lp, err = newLoop(&r.pairs)
		if err != nil {
			ln.Close()
			return nil, err
		}
		r.lp.sndbuf = sndbuf
		r.lp.start()
	}
	r.wg.Add(1)
	go r.accept()
	return r, nil
}

func (r *relay) addr() string { return r.ln.Addr().String() }

func (r *relay) fail(err error) {
	r.mu.Lock()
	if r.err == nil {
		r.err = err
	}
	r.mu.Unlock()
}

func (r *relay) failed() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

func (r *relay) accept() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			if err := r.setup(c); err != nil {
				c.Close()
				r.fail(err)
			}
		}()
	}
}

// setup dials the upstream and does the TLS handshake off the loop in both models.
func (r *relay) setup(c net.Conn) error {
	uc, err := net.Dial("tcp", r.up)
	if err != nil {
		return err
	}
	switch r.model {
	case goroutines:
		var up net.Conn = uc
		if r.ccfg != nil {
			tc := tls.Client(uc, r.ccfg)
			if err := tc.Handshake(); err != nil {
				uc.Close()
				return err
			}
			up = tc
		}
		r.pairs.Add(1)
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			copyConn(up, c)
		}()
		copyConn(c, up)
		r.pairs.Add(-1)
		return nil
	default:
		var tc *tls.Conn
		var mc *memConn
		if r.ccfg != nil {
			mc = newMemConn(uc)
			tc = tls.Client(mc, r.ccfg)
			if err := tc.Handshake(); err != nil {
				uc.Close()
				return err
			}
		}
		var upFD int
		if mc != nil {
			upFD, err = mc.detach()
		} else {
			upFD, err = detachFD(uc)
		}
		if err != nil {
			uc.Close()
			return err
		}
		cFD, err := detachFD(c)
		if err != nil {
			closeFD(upFD)
			return err
		}
		p, err := newLoopPair(cFD, upFD, tc, mc)
		if err != nil {
			return err
		}
		r.pairs.Add(1)
		r.lp.add(p)
		return nil
	}
}

// copyConn is one direction of model (a); when it ends it closes both sides, so
// that the other direction ends too.
func copyConn(dst, src net.Conn) {
	buf := make([]byte, goroutineBuf)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	dst.Close()
	src.Close()
}

// waitPairs waits until n pairs are established (and no more).
func (r *relay) waitPairs(n int64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if err := r.failed(); err != nil {
			return err
		}
		got := r.pairs.Load()
		if got == n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("relay: %d pairs, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func (r *relay) close() error {
	r.ln.Close()
	if r.lp != nil {
		r.lp.stop()
	}
	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		return errors.New("relay: goroutines did not end")
	}
	return r.failed()
}
