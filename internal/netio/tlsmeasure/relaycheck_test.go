package tlsmeasure

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// relayCase is one row of the measurement.
type relayCase struct {
	name  string
	model model
	ver   ver
}

var relayCases = []relayCase{
	{"1-plain-goroutines", goroutines, plain},
	{"1b-plain-loop", epoll, plain},
	{"2-tls13-goroutines", goroutines, tls13},
	{"3-tls13-loop", epoll, tls13},
	{"2-tls12-goroutines", goroutines, tls12},
	{"3-tls12-loop", epoll, tls12},
}

// TestRelayIntact runs every model in-process with a few clients: small and
// large answers (records split across socket reads) come back intact.
func TestRelayIntact(t *testing.T) {
	cp, err := newCert()
	if err != nil {
		t.Fatal(err)
	}
	ps, err := startServer(serveRR(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer ps.close()
	ts, err := startServer(serveRR(cp.serverConfig()))
	if err != nil {
		t.Fatal(err)
	}
	defer ts.close()
	for _, rc := range relayCases {
		t.Run(rc.name, func(t *testing.T) {
			up, ccfg := ps.addr(), (*tls.Config)(nil)
			if rc.ver != plain {
				up, ccfg = ts.addr(), cp.clientConfig(rc.ver)
			}
			r, err := startRelay(rc.model, up, ccfg, 0)
			if err != nil {
				t.Fatal(err)
			}
			const k = 4
			cl, err := dialClients(r.addr(), k)
			if err != nil {
				t.Fatal(err)
			}
			if err := r.waitPairs(k, 10*time.Second); err != nil {
				t.Fatal(err)
			}
			if err := cl.run(400, false); err != nil {
				t.Fatal(err)
			}
			if err := cl.run(2*k, true); err != nil {
				t.Fatal(err)
			}
			if err := cl.run(100, false); err != nil {
				t.Fatal(err)
			}
			cl.close()
			if err := r.waitPairs(0, 10*time.Second); err != nil {
				t.Fatal(err)
			}
			if err := r.close(); err != nil {
				t.Fatal(err)
			}
			if lp := r.lp; lp != nil {
				if n := lp.stats.leftover.Load(); n != 0 {
					t.Fatalf("%d would-blocks with ciphertext not taken", n)
				}
				if rc.ver != plain && lp.stats.wouldBlock.Load() == 0 {
					t.Fatal("no would-block Read: the in-memory transport was not exercised")
				}
				t.Logf("loop: %d would-block Reads, %d blocked writes (tls %d, plain %d), %d resumed",
					lp.stats.wouldBlock.Load(), lp.stats.blockedTLS.Load()+lp.stats.blockedPlain.Load(),
					lp.stats.blockedTLS.Load(), lp.stats.blockedPlain.Load(), lp.stats.resumed.Load())
			}
		})
	}
}

// TestLoopLargeWrites: the loop relays 4 MiB each way through TLS while the
// receiver does not read for a while and the socket buffers are small, so that
// writes of both ciphertext (to the upstream) and plaintext (to the client) would
// block; the bytes wait in the side's pending buffer, EPOLLOUT finishes them, and
// everything arrives intact. (64 KiB, not less: a receive buffer below the
// loopback MSS of ~64 KiB makes TCP wait for its persist timer, which only
// slows the test down.)
func TestLoopLargeWrites(t *testing.T) {
	size := 4 << 20
	if raceEnabled {
		size = 2 << 20
	}
	cp, err := newCert()
	if err != nil {
		t.Fatal(err)
	}
	scfg := cp.serverConfig()
	upData := pattern(size, 9)
	upSum := sha256.Sum256(upData)
	// The upstream: sleeps before reading, reads the client's length-prefixed
	// data, answers its SHA-256 and then its own data.
	ts, err := startServer(func(c net.Conn) {
		c.(*net.TCPConn).SetReadBuffer(64 << 10)
		tc := tls.Server(c, scfg)
		if tc.Handshake() != nil {
			return
		}
		time.Sleep(150 * time.Millisecond)
		var hdr [8]byte
		if _, err := io.ReadFull(tc, hdr[:]); err != nil {
			return
		}
		h := sha256.New()
		if _, err := io.CopyN(h, tc, int64(binary.BigEndian.Uint64(hdr[:]))); err != nil {
			return
		}
		tc.Write(h.Sum(nil))
		tc.Write(upData)
		io.Copy(io.Discard, tc)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ts.close()

	for _, v := range []ver{tls13, tls12} {
		t.Run(v.String(), func(t *testing.T) {
			r, err := startRelay(epoll, ts.addr(), cp.clientConfig(v), 64<<10)
			if err != nil {
				t.Fatal(err)
			}
			c, err := net.Dial("tcp", r.addr())
			if err != nil {
				t.Fatal(err)
			}
			c.(*net.TCPConn).SetReadBuffer(64 << 10)
			if err := r.waitPairs(1, 10*time.Second); err != nil {
				t.Fatal(err)
			}
			data := pattern(size, 5)
			sum := sha256.Sum256(data)
			werr := make(chan error, 1)
			go func() {
				var hdr [8]byte
				binary.BigEndian.PutUint64(hdr[:], uint64(len(data)))
				_, err := c.Write(append(hdr[:], data...))
				werr <- err
			}()
			if err := <-werr; err != nil {
				t.Fatal(err)
			}
			time.Sleep(150 * time.Millisecond) // let the upstream's answer pile up in the relay
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			got := make([]byte, sha256.Size)
			if _, err := io.ReadFull(c, got); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, sum[:]) {
				t.Fatal("upstream received different bytes")
			}
			h := sha256.New()
			if n, err := io.CopyN(h, c, int64(size)); err != nil {
				t.Fatalf("after %d bytes: %v", n, err)
			}
			if !bytes.Equal(h.Sum(nil), upSum[:]) {
				t.Fatal("client received different bytes")
			}
			c.Close()
			if err := r.waitPairs(0, 10*time.Second); err != nil {
				t.Fatal(err)
			}
			if err := r.close(); err != nil {
				t.Fatal(err)
			}
			st := &r.lp.stats
			msg := fmt.Sprintf("blocked writes: tls %d, plain %d; resumed on EPOLLOUT %d; ciphertext held %d; would-block Reads %d",
				st.blockedTLS.Load(), st.blockedPlain.Load(), st.resumed.Load(), st.held.Load(), st.wouldBlock.Load())
			t.Log(msg)
			if st.blockedTLS.Load() == 0 || st.blockedPlain.Load() == 0 || st.resumed.Load() == 0 {
				t.Fatal("a direction never blocked: " + msg)
			}
			if st.leftover.Load() != 0 {
				t.Fatal("would-block with ciphertext not taken")
			}
		})
	}
}
