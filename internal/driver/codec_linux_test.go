//go:build linux

package driver

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pgsidecar/pgsidecar/internal/netio"
	"github.com/pgsidecar/pgsidecar/internal/testcert"
)

// holdConn is a peer's socket whose writes can be held and then written in
// one system call (flush), so that a test knows the loop finds them all in
// the socket at once.
type holdConn struct {
	net.Conn
	mu   sync.Mutex
	hold bool
	buf  []byte
}

func (h *holdConn) Write(p []byte) (int, error) {
	h.mu.Lock()
	if h.hold {
		h.buf = append(h.buf, p...)
		h.mu.Unlock()
		return len(p), nil
	}
	h.mu.Unlock()
	return h.Conn.Write(p)
}

// flush writes what was held, in one write, and returns its length.
func (h *holdConn) flush(t testing.TB) int {
	t.Helper()
	h.mu.Lock()
	b := h.buf
	h.buf = nil
	h.mu.Unlock()
	if _, err := h.Conn.Write(b); err != nil {
		t.Fatal(err)
	}
	return len(b)
}

// tlsSide is a connection on the loop driven through a TLS codec, and its
// peer: a crypto/tls server over loopback.
type tlsSide struct {
	c     *Conn
	fd    int
	codec *netio.TLSCodec
	peer  *tls.Conn
	hc    *holdConn
}

// adoptTLS makes a TLS connection (the handshake done off the loop, through
// the transport's pass-through phase), takes it out of the runtime's poller
// as the pool does, and adopts it on l with h and its codec (paused first
// when asked).
func adoptTLS(t testing.TB, l *Loop, v uint16, h Handler, paused bool) *tlsSide {
	t.Helper()
	scfg, ccfg := tlsConfigs(t, v)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		tc  *tls.Conn
		hc  *holdConn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- res{err: err}
			return
		}
		hc := &holdConn{Conn: c}
		tc := tls.Server(hc, scfg)
		ch <- res{tc, hc, tc.Handshake()}
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	tr := netio.NewTLSTransport(nc)
	tc := tls.Client(tr, ccfg)
	cerr := tc.Handshake()
	r := <-ch
	if cerr != nil || r.err != nil {
		t.Fatalf("handshake: %v, %v", cerr, r.err)
	}
	t.Cleanup(func() { r.tc.Close() })

	rc, _ := tr.SyscallConn()
	dup, derr := -1, error(nil)
	_ = rc.Control(func(fd uintptr) { dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) })
	if derr != nil {
		t.Fatal(derr)
	}
	if err := unix.SetNonblock(dup, true); err != nil {
		t.Fatal(err)
	}
	fc := netio.NewFDConn(dup, nc.LocalAddr(), nc.RemoteAddr())
	if err := tr.EnterMemoryPhase(fc); err != nil {
		t.Fatal(err)
	}
	codec, err := netio.NewTLSCodec(tc)
	if err != nil {
		t.Fatal(err)
	}
	s := &tlsSide{c: new(Conn), fd: dup, codec: codec, peer: r.tc, hc: r.hc}
	onLoop(t, l, func() {
		if err := l.Adopt(s.c, dup, h); err != nil {
			t.Error(err)
			return
		}
		if paused {
			s.c.PauseRead()
		}
		s.c.SetCodec(codec)
	})
	// After the loop: it stops first (Cleanup is last in, first out), then
	// the descriptor, which Adopt borrowed, is closed.
	t.Cleanup(func() { fc.Close() })
	return s
}

var tlsVersions = []struct {
	name string
	v    uint16
}{{"tls13", tls.VersionTLS13}, {"tls12", tls.VersionTLS12}}

// TestTLSCodecEcho: the loop echoes, through a TLS codec, what a crypto/tls
// peer sends: messages up to 1 MiB (more than a socket holds: the echo goes
// through pending output) and many small ones; then the peer's close_notify
// closes the connection with io.EOF.
func TestTLSCodecEcho(t *testing.T) {
	for _, ver := range tlsVersions {
		t.Run(ver.name, func(t *testing.T) {
			l := startLoop(t, Options{})
			h := newRec()
			h.echo = true
			s := adoptTLS(t, l, ver.v, h, false)
			echoThrough(t, s.peer)
			var want, got bytes.Buffer
			werr := make(chan error, 1)
			go func() {
				for i := range 2000 {
					m := []byte(strings.Repeat(string(rune('a'+i%26)), 1+i%300))
					if _, err := s.peer.Write(m); err != nil {
						werr <- err
						return
					}
					want.Write(m)
				}
				werr <- nil
			}()
			total := 0
			for i := range 2000 {
				total += 1 + i%300
			}
			got.Write(readN(t, s.peer, total))
			if err := recv(t, werr, "writes"); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Bytes(), want.Bytes()) {
				t.Fatal("echo of 2000 small messages differs")
			}
			if err := s.peer.Close(); err != nil {
				t.Fatal(err)
			}
			if err := recv(t, h.closed, "Closed"); err != io.EOF {
				t.Fatalf("Closed(%v) after the peer's close_notify, want io.EOF", err)
			}
		})
	}
}

// tlsPauser reports each delivery and pauses after it.
type tlsPauser struct{ data chan []byte }

func (p *tlsPauser) Opened(*Conn)           {}
func (p *tlsPauser) Closed(*Conn, error)    {}
func (p *tlsPauser) Data(c *Conn, b []byte) { p.data <- bytes.Clone(b); c.PauseRead() }

// inq is the number of bytes waiting in socket fd.
func inq(t testing.TB, fd int) int {
	n, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestTLSCodecPauseMidDelivery: a handler pauses after the first chunk of
// plaintext while the rest (three records the loop read at once) is still
// in the codec, partly as ciphertext tls.Conn has not taken yet; each ResumeRead then delivers the next chunk although the
// socket gets nothing new, even after the loop's read buffer was reused.
func TestTLSCodecPauseMidDelivery(t *testing.T) {
	for _, ver := range tlsVersions {
		t.Run(ver.name, func(t *testing.T) {
			l := startLoop(t, Options{})
			h := &tlsPauser{data: make(chan []byte, 100)}
			s := adoptTLS(t, l, ver.v, h, true)
			onLoop(t, l, func() { l.pbuf = l.pbuf[:4096] }) // deliveries smaller than a record

			s.hc.mu.Lock()
			s.hc.hold = true
			s.hc.mu.Unlock()
			var want []byte
			for i, n := range []int{15000, 16000, 9000} {
				m := bytes.Repeat([]byte{byte('A' + i)}, n)
				if _, err := s.peer.Write(m); err != nil {
					t.Fatal(err)
				}
				want = append(want, m...)
			}
			sent := s.hc.flush(t)
			// TLS 1.3 session tickets may be there too: at least what was sent.
			eventually(t, "the records in the socket", func() bool { return inq(t, s.fd) >= sent })

			var got []byte
			for resumes := 0; len(got) < len(want); resumes++ {
				if resumes > len(want) {
					t.Fatalf("%d resumes, %d of %d bytes", resumes, len(got), len(want))
				}
				onLoop(t, l, func() {
					clear(l.rbuf) // the codec must not depend on it any more
					s.c.ResumeRead()
				})
				b := recv(t, h.data, "a delivery")
				if len(b) > 4096 {
					t.Fatalf("a delivery of %d bytes, more than the plaintext buffer", len(b))
				}
				got = append(got, b...)
				if n := inq(t, s.fd); n != 0 {
					t.Fatalf("%d bytes left in the socket: the loop must have read them all at once", n)
				}
				onLoop(t, l, func() { // the turn that delivered it is over
					if resumes == 0 && s.codec.Transport().Buffered() == 0 {
						// What the test is about: ciphertext read from the
						// loop's buffer, kept (Retain) past the pause.
						t.Error("no ciphertext left in the transport after the first delivery")
					}
				})
				none(t, h.data, "delivery while paused")
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("got %d bytes, want %d", len(got), len(want))
			}
			// Nothing left: a resume delivers nothing.
			onLoop(t, l, func() { s.c.ResumeRead() })
			onLoop(t, l, func() {})
			none(t, h.data, "delivery with nothing left")
		})
	}
}

// TestTLSCodecWriteRefWritev: WriteRef (small, and large enough to be kept
// by reference) and Writev (gathered, and not) go through the codec, in
// order, with done called once each.
func TestTLSCodecWriteRefWritev(t *testing.T) {
	l := startLoop(t, Options{})
	h := newRec()
	s := adoptTLS(t, l, tls.VersionTLS13, h, false)
	big := bytes.Repeat([]byte("0123456789"), 300_000) // 3 MB: more than the socket takes
	bigv := bytes.Repeat([]byte("v"), 40_000)
	var dones [2]int
	var want []byte
	for _, b := range [][]byte{[]byte("ref:"), big, []byte("a"), []byte("bc"), []byte("def"), bigv, []byte("tail")} {
		want = append(want, b...)
	}
	if err := unix.SetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 64<<10); err != nil {
		t.Fatal(err)
	}
	onLoop(t, l, func() {
		if err := s.c.WriteRef([]byte("ref:"), func() { dones[0]++ }); err != nil {
			t.Error(err)
		}
		if err := s.c.WriteRef(big, func() { dones[1]++ }); err != nil {
			t.Error(err)
		}
		if err := s.c.Writev([]byte("a"), nil, []byte("bc"), []byte("def")); err != nil {
			t.Error(err)
		}
		if err := s.c.Writev(bigv, []byte("tail")); err != nil {
			t.Error(err)
		}
		if dones != [2]int{1, 1} {
			t.Errorf("done calls %v, want one each", dones)
		}
		if s.c.Buffered() == 0 {
			t.Error("nothing pending after 3 MB: the test wants the socket full")
		}
	})
	got := readN(t, s.peer, len(want))
	if !bytes.Equal(got, want) {
		t.Fatalf("the peer got %d bytes that differ from the %d written (equal prefix %d)", len(got), len(want), prefixLen(got, want))
	}
	eventually(t, "Drained", func() bool { return len(h.drained) > 0 })
	onLoop(t, l, func() {
		if n := s.c.Buffered(); n != 0 {
			t.Errorf("Buffered %d after the peer read everything", n)
		}
	})
}

func prefixLen(a, b []byte) int {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	return i
}

// TestTLSCodecPeerEnds: a peer that closes its socket without close_notify
// ends the connection with io.EOF; one that sends a bad record with the
// codec's error (and gets tls.Conn's alert).
func TestTLSCodecPeerEnds(t *testing.T) {
	t.Run("eof", func(t *testing.T) {
		l := startLoop(t, Options{})
		h := newRec()
		s := adoptTLS(t, l, tls.VersionTLS13, h, false)
		if _, err := s.peer.Write([]byte("last words")); err != nil {
			t.Fatal(err)
		}
		if got := recv(t, h.data, "Data"); string(got) != "last words" {
			t.Fatalf("Data %q", got)
		}
		s.hc.Conn.Close()
		if err := recv(t, h.closed, "Closed"); err != io.EOF {
			t.Fatalf("Closed(%v), want io.EOF", err)
		}
	})
	t.Run("bad-record", func(t *testing.T) {
		l := startLoop(t, Options{})
		h := newRec()
		s := adoptTLS(t, l, tls.VersionTLS13, h, false)
		// An application-data record whose tag cannot match.
		rec := append([]byte{23, 3, 3, 0, 40}, bytes.Repeat([]byte{7}, 40)...)
		if _, err := s.hc.Conn.Write(rec); err != nil {
			t.Fatal(err)
		}
		err := recv(t, h.closed, "Closed")
		if err == nil || errors.Is(err, io.EOF) || !strings.Contains(err.Error(), "driver: decode:") {
			t.Fatalf("Closed(%v), want the decode error", err)
		}
		t.Logf("closed with: %v", err)
		// The alert tls.Conn answered with reached the peer.
		_ = s.peer.SetReadDeadline(time.Now().Add(waitFor))
		if _, rerr := s.peer.Read(make([]byte, 10)); rerr == nil || !strings.Contains(rerr.Error(), "bad record MAC") {
			t.Fatalf("the peer read %v, want the bad_record_mac alert", rerr)
		}
	})
}

// tlsConfigs is testcert.Configs, failing t on error.
func tlsConfigs(t testing.TB, v uint16) (server, client *tls.Config) {
	t.Helper()
	server, client, err := testcert.Configs(v)
	if err != nil {
		t.Fatal(err)
	}
	return server, client
}
