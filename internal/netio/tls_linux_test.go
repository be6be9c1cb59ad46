//go:build linux

package netio_test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pgsidecar/pgsidecar/internal/netio"
	"github.com/pgsidecar/pgsidecar/internal/testcert"
)

var versions = []struct {
	name string
	v    uint16
}{{"tls13", tls.VersionTLS13}, {"tls12", tls.VersionTLS12}}

// memoryPhase takes tr out of its pass-through phase the way the pool does:
// an FDConn over a duplicate of the socket's descriptor replaces the dialed
// connection. It returns that FDConn: the socket, for the test to move
// ciphertext through.
func memoryPhase(t testing.TB, tr *netio.TLSTransport) *netio.FDConn {
	t.Helper()
	rc, err := tr.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	dup, derr := -1, error(nil)
	if err := rc.Control(func(fd uintptr) { dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil || derr != nil {
		t.Fatal(err, derr)
	}
	if err := unix.SetNonblock(dup, true); err != nil {
		t.Fatal(err)
	}
	nc := tr.NetConn()
	fc := netio.NewFDConn(dup, nc.LocalAddr(), nc.RemoteAddr())
	if err := tr.EnterMemoryPhase(fc); err != nil {
		t.Fatal(err)
	}
	if err := tr.EnterMemoryPhase(fc); err == nil {
		t.Fatal("EnterMemoryPhase twice succeeded")
	}
	t.Cleanup(func() { fc.Close() })
	return fc
}

// side is one end of a TLS connection driven through a codec, and its
// socket.
type side struct {
	codec *netio.TLSCodec
	sock  *netio.FDConn
}

// dialTLS connects to a crypto/tls server running handle and does the
// handshake through a transport still in its pass-through phase.
func dialTLS(t testing.TB, v uint16, handle func(*tls.Conn)) (*netio.TLSTransport, *tls.Conn) {
	t.Helper()
	scfg, ccfg := tlsConfigs(t, v)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		ln.Close()
		if err != nil {
			return
		}
		defer c.Close()
		tc := tls.Server(c, scfg)
		if tc.Handshake() == nil {
			handle(tc)
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	tr := netio.NewTLSTransport(nc)
	tc := tls.Client(tr, ccfg)
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	if tc.ConnectionState().Version != v {
		t.Fatalf("version %x, want %x", tc.ConnectionState().Version, v)
	}
	return tr, tc
}

// dialCodec is dialTLS, then the transport switched to its memory phase.
func dialCodec(t testing.TB, v uint16, handle func(*tls.Conn)) side {
	t.Helper()
	tr, tc := dialTLS(t, v, handle)
	fc := memoryPhase(t, tr)
	codec, err := netio.NewTLSCodec(tc)
	if err != nil {
		t.Fatal(err)
	}
	return side{codec, fc}
}

// codecPair is a client and a server codec, both in their memory phase: the
// test moves ciphertext between them directly, on one goroutine.
func codecPair(t testing.TB, v uint16) (client, server side) {
	t.Helper()
	scfg, ccfg := tlsConfigs(t, v)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		tc  *tls.Conn
		tr  *netio.TLSTransport
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- res{err: err}
			return
		}
		tr := netio.NewTLSTransport(c)
		tc := tls.Server(tr, scfg)
		ch <- res{tc, tr, tc.Handshake()}
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	ctr := netio.NewTLSTransport(nc)
	ctc := tls.Client(ctr, ccfg)
	cerr := ctc.Handshake()
	r := <-ch
	if cerr != nil || r.err != nil {
		t.Fatalf("handshake: client %v, server %v", cerr, r.err)
	}
	cc, _ := netio.NewTLSCodec(ctc)
	sc, _ := netio.NewTLSCodec(r.tc)
	return side{cc, memoryPhase(t, ctr)}, side{sc, memoryPhase(t, r.tr)}
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7+i/251)
	}
	return b
}

// decodeAll feeds in to s in pieces of the given sizes (cycled) and decodes
// into a p of size psize until the codec needs more after each piece. With
// clobber, after every plaintext chunk it Retains and overwrites the piece
// fed, as a loop reusing its read buffer after a pause does.
func decodeAll(t testing.TB, s side, in []byte, sizes []int, psize int, clobber bool) []byte {
	t.Helper()
	var plain []byte
	p := make([]byte, psize)
	for i := 0; len(in) > 0; i++ {
		k := min(sizes[i%len(sizes)], len(in))
		piece := append([]byte(nil), in[:k]...)
		in = in[k:]
		feed := piece
		for {
			n, err := s.codec.Decode(feed, p)
			feed = nil
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if n == 0 {
				break
			}
			plain = append(plain, p[:n]...)
			if clobber {
				s.codec.Retain()
				for j := range piece {
					piece[j] = 0xA5
				}
			}
		}
		if s.codec.Pending() {
			t.Fatal("Pending after Decode returned 0")
		}
		if b := s.codec.Transport().Buffered(); b != 0 {
			t.Fatalf("%d ciphertext bytes left in the transport after Decode returned 0", b)
		}
	}
	return plain
}

func encode(t testing.TB, s side, msgs ...[]byte) []byte {
	t.Helper()
	var out []byte
	for _, m := range msgs {
		var err error
		if out, err = s.codec.Encode(out, m); err != nil {
			t.Fatalf("Encode: %v", err)
		}
	}
	return out
}

// records counts the TLS records in c (whole records only).
func records(c []byte) int {
	n := 0
	for len(c) >= 5 {
		l := 5 + (int(c[3])<<8 | int(c[4]))
		if l > len(c) {
			break
		}
		c = c[l:]
		n++
	}
	return n
}

// TestTLSCodecSplitRecords: ciphertext fed one byte at a time (every record
// header and body split at every position, a message of three records among
// them), in mixed pieces, and with the fed buffer overwritten after each
// plaintext chunk (Retain), comes out intact; after each piece Decode ends
// with nothing left in the transport.
func TestTLSCodecSplitRecords(t *testing.T) {
	for _, ver := range versions {
		t.Run(ver.name, func(t *testing.T) {
			client, server := codecPair(t, ver.v)
			for _, tc := range []struct {
				name    string
				sizes   []int
				psize   int
				clobber bool
			}{
				{"bytes", []int{1}, 1000, false},
				{"mixed", []int{1, 2, 3, 4, 5, 7, 11, 64, 1000, 3, 17000}, 700, false},
				{"retained", []int{3000, 5, 20000, 1}, 100, true},
				{"whole", []int{1 << 20}, 64 << 10, true},
			} {
				m1, m2, m3 := pattern(100, 1), pattern(40000, 2), pattern(1, 3)
				c := encode(t, server, m1, m2, m3)
				if r := records(c); r < 5 {
					t.Fatalf("%s: %d records for 3 messages of 100, 40000 and 1 bytes", tc.name, r)
				}
				want := append(append(append([]byte(nil), m1...), m2...), m3...)
				got := decodeAll(t, client, c, tc.sizes, tc.psize, tc.clobber)
				if !bytes.Equal(got, want) {
					t.Fatalf("%s: got %d bytes, want %d", tc.name, len(got), len(want))
				}
			}
		})
	}
}

// TestTLSCodecEcho: a real crypto/tls peer over loopback echoes what the
// codec encodes (small messages and one of 100 KB), through the socket.
func TestTLSCodecEcho(t *testing.T) {
	for _, ver := range versions {
		t.Run(ver.name, func(t *testing.T) {
			s := dialCodec(t, ver.v, func(tc *tls.Conn) { _, _ = io.Copy(tc, tc) })
			msgs := [][]byte{[]byte("hello"), pattern(200, 9), pattern(100<<10, 4), []byte("x")}
			var want []byte
			for _, m := range msgs {
				want = append(want, m...)
			}
			c := encode(t, s, msgs...)
			if _, err := s.sock.Write(c); err != nil {
				t.Fatal(err)
			}
			got := readPlain(t, s, len(want))
			if !bytes.Equal(got, want) {
				t.Fatalf("echo: %d bytes, want %d (equal prefix %d)", len(got), len(want), commonPrefix(got, want))
			}
		})
	}
}

// readPlain reads the socket and decodes until it has n plaintext bytes.
func readPlain(t testing.TB, s side, n int) []byte {
	t.Helper()
	var plain []byte
	buf := make([]byte, 64<<10)
	p := make([]byte, 16<<10)
	deadline := time.Now().Add(10 * time.Second)
	_ = s.sock.SetReadDeadline(deadline)
	for len(plain) < n {
		k, err := s.sock.Read(buf)
		if err != nil {
			t.Fatalf("socket read with %d of %d bytes: %v", len(plain), n, err)
		}
		feed := buf[:k]
		for {
			m, err := s.codec.Decode(feed, p)
			feed = nil
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if m == 0 {
				break
			}
			plain = append(plain, p[:m]...)
		}
		if out := s.codec.Output(nil); len(out) > 0 {
			if _, err := s.sock.Write(out); err != nil {
				t.Fatal(err)
			}
		}
	}
	return plain
}

func commonPrefix(a, b []byte) int {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	return i
}

// TestTLSTransportWouldBlock: inside a codec call an empty transport answers
// ErrWouldBlock, a temporary net.Error that tls.Conn does not keep: Decode
// says it needs more, and the connection keeps working. Outside codec calls
// the memory phase is a blocking connection through the socket (what a
// goroutine holding the connection meanwhile uses).
func TestTLSTransportWouldBlock(t *testing.T) {
	var ne net.Error
	if !errors.As(netio.ErrWouldBlock, &ne) || !ne.Temporary() || !ne.Timeout() {
		t.Fatalf("ErrWouldBlock = %#v: want a net.Error, Temporary and Timeout", netio.ErrWouldBlock)
	}
	s := dialCodec(t, tls.VersionTLS13, func(tc *tls.Conn) { _, _ = io.Copy(tc, tc) })
	p := make([]byte, 100)
	for range 3 {
		if n, err := s.codec.Decode(nil, p); n != 0 || err != nil {
			t.Fatalf("Decode with nothing = %d, %v; want 0, nil", n, err)
		}
	}
	if s.codec.Pending() {
		t.Fatal("Pending with nothing fed")
	}
	// The TLS 1.3 server's session tickets arrive after the handshake: the
	// echo below reads them first, in whatever pieces the socket gives.
	c := encode(t, s, []byte("ping"))
	if _, err := s.sock.Write(c); err != nil {
		t.Fatal(err)
	}
	if got := readPlain(t, s, 4); string(got) != "ping" {
		t.Fatalf("echo after would-blocks = %q", got)
	}

	// Blocking use between codec calls.
	tc := s.codec.Conn()
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := tc.Write([]byte("blocking")); err != nil {
		t.Fatalf("blocking Write in the memory phase: %v", err)
	}
	got := make([]byte, 8)
	if _, err := io.ReadFull(tc, got); err != nil || string(got) != "blocking" {
		t.Fatalf("blocking Read in the memory phase = %q, %v", got, err)
	}
	_ = tc.SetDeadline(time.Time{})
	// And the codec again after it.
	if _, err := s.sock.Write(encode(t, s, []byte("again"))); err != nil {
		t.Fatal(err)
	}
	if got := readPlain(t, s, 5); string(got) != "again" {
		t.Fatalf("echo after blocking use = %q", got)
	}
}

// TestTLSCodecCloseNotify: the peer's close_notify ends the stream with
// io.EOF after the plaintext before it; Close sends the last bytes and
// close_notify without blocking and closes the socket.
func TestTLSCodecCloseNotify(t *testing.T) {
	for _, ver := range versions {
		t.Run(ver.name, func(t *testing.T) {
			client, server := codecPair(t, ver.v)
			if err := server.codec.Close([]byte("bye")); err != nil {
				t.Fatalf("Close: %v", err)
			}
			_ = client.sock.SetReadDeadline(time.Now().Add(10 * time.Second))
			var c []byte
			buf := make([]byte, 4096)
			for {
				n, err := client.sock.Read(buf)
				c = append(c, buf[:n]...)
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("socket read: %v", err)
				}
			}
			p := make([]byte, 100)
			var plain []byte
			var end error
			for feed := c; ; feed = nil {
				n, err := client.codec.Decode(feed, p)
				plain = append(plain, p[:n]...)
				if err != nil {
					end = err
					break
				}
				if n == 0 {
					break
				}
			}
			if string(plain) != "bye" || end != io.EOF {
				t.Fatalf("decoded %q then %v; want \"bye\" then EOF", plain, end)
			}
			if n, err := client.codec.Decode(nil, p); n != 0 || err != io.EOF {
				t.Fatalf("Decode after EOF = %d, %v", n, err)
			}
			if !client.codec.Pending() {
				t.Fatal("Pending is false with the end of stream not yet taken")
			}
		})
	}
}

// TestTLSCodecBadRecord: a corrupted record ends the stream with tls.Conn's
// error, the alert it answers with waits in Output, and the error stays.
func TestTLSCodecBadRecord(t *testing.T) {
	client, server := codecPair(t, tls.VersionTLS13)
	c := encode(t, server, []byte("hello, world"))
	c[len(c)-3] ^= 0xFF
	p := make([]byte, 100)
	n, err := client.codec.Decode(c, p)
	if n != 0 || err == nil || err == io.EOF {
		t.Fatalf("Decode of a corrupted record = %d, %v; want an error", n, err)
	}
	if out := client.codec.Output(nil); records(out) != 1 {
		t.Fatalf("Output after a bad record: %d bytes, %d records; want an alert", len(out), records(out))
	}
	if _, err2 := client.codec.Decode(nil, p); err2 != err {
		t.Fatalf("Decode after the error = %v, want %v again", err2, err)
	}
	t.Logf("bad record: %v", err)
}

// TestTLSCodecAllocs: in steady state Encode allocates nothing; Decode of
// a message allocates only what tls.Conn does on each refill of its record
// buffer from the transport (an atLeastReader, conn.go readFromUntil: one
// for the record, one for the read that finds nothing more).
func TestTLSCodecAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates on its own")
	}
	for _, ver := range versions {
		t.Run(ver.name, func(t *testing.T) {
			client, server := codecPair(t, ver.v)
			q := pattern(200, 1)
			cbuf := make([]byte, 0, 4096)
			p := make([]byte, 64<<10)
			var c []byte
			enc := func() {
				var err error
				if c, err = client.codec.Encode(cbuf[:0], q); err != nil {
					t.Fatal(err)
				}
			}
			dec := func() {
				got := 0
				for feed := c; ; feed = nil {
					n, err := server.codec.Decode(feed, p)
					if err != nil {
						t.Fatal(err)
					}
					if n == 0 {
						break
					}
					got += n
				}
				if got != len(q) {
					t.Fatalf("decoded %d bytes, want %d", got, len(q))
				}
			}
			for range 50 { // past dynamic record sizing's first records
				enc()
				dec()
			}
			both := testing.AllocsPerRun(1000, func() { enc(); dec() })
			// Last: what the server misses from now on breaks its stream.
			encAllocs := testing.AllocsPerRun(1000, enc)
			decAllocs := both - encAllocs
			t.Logf("allocations per 200-byte message: Encode %v, Decode %v", encAllocs, decAllocs)
			if encAllocs != 0 {
				t.Errorf("Encode allocated %v times per message, want 0", encAllocs)
			}
			if decAllocs > 2 {
				t.Errorf("Decode allocated %v times per message, want at most 2", decAllocs)
			}
		})
	}
}

// TestTLSCodecNotMemoryPhase: the codec refuses a transport still passing
// through, and NewTLSCodec a tls.Conn over anything else.
func TestTLSCodecNotMemoryPhase(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, err := netio.NewTLSCodec(tls.Client(a, &tls.Config{})); err == nil {
		t.Fatal("NewTLSCodec over a plain net.Conn succeeded")
	}
	tr := netio.NewTLSTransport(a)
	codec, err := netio.NewTLSCodec(tls.Client(tr, &tls.Config{}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := codec.Decode([]byte("x"), make([]byte, 10)); err == nil {
		t.Fatal("Decode in the pass-through phase succeeded")
	}
	if _, err := codec.Encode(nil, []byte("x")); err == nil {
		t.Fatal("Encode in the pass-through phase succeeded")
	}
	if _, err := tr.SyscallConn(); err == nil {
		t.Fatal("SyscallConn of a pipe succeeded")
	}
	var _ syscall.Conn = tr
}

// A Read of the pass-through phase still blocked when the transport enters
// its memory phase (pgconn's background reader, started by a slow login
// write, is left in one): EnterMemoryPhase wakes it and waits for it, and
// the codec then decodes as usual. Closing the dialed connection under it
// instead would leave tls.Conn with a permanent "use of closed network
// connection" error for the first Decode.
func TestTLSTransportReadLeftBehind(t *testing.T) {
	for _, ver := range versions {
		t.Run(ver.name, func(t *testing.T) {
			send := make(chan []byte, 1)
			tr, tc := dialTLS(t, ver.v, func(tc *tls.Conn) {
				for b := range send {
					_, _ = tc.Write(b)
				}
			})
			t.Cleanup(func() { close(send) }) // before dialTLS's, which waits for the server
			readErr := make(chan error, 1)
			go func() {
				_, err := tc.Read(make([]byte, 10)) // the server sends nothing yet
				readErr <- err
			}()
			for deadline := time.Now().Add(5 * time.Second); tr.PassReads() == 0; {
				if time.Now().After(deadline) {
					t.Fatal("the reader never reached the socket")
				}
				runtime.Gosched()
			}
			fc := memoryPhase(t, tr)
			select {
			case err := <-readErr:
				if err == nil {
					t.Fatal("the left-behind read returned data")
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the left-behind read was not woken")
			}
			codec, err := netio.NewTLSCodec(tc)
			if err != nil {
				t.Fatal(err)
			}
			send <- []byte("after the switch")
			if got := readPlain(t, side{codec, fc}, 16); string(got) != "after the switch" {
				t.Fatalf("decoded %q", got)
			}
		})
	}
}

// Holds, which the pool's liveness check uses, is false for a codec that
// never decoded (Pending, for the loop, says "may have" there), false once
// a Decode took everything, and true while plaintext is left inside
// tls.Conn by a Decode that stopped early.
func TestTLSCodecHolds(t *testing.T) {
	s := dialCodec(t, tls.VersionTLS13, func(tc *tls.Conn) { _, _ = io.Copy(tc, tc) })
	if s.codec.Holds() || !s.codec.Pending() {
		t.Fatalf("fresh codec: Holds %v (want false), Pending %v (want true)", s.codec.Holds(), s.codec.Pending())
	}
	if n, err := s.codec.Decode(nil, make([]byte, 64)); n != 0 || err != nil {
		t.Fatalf("Decode with nothing fed: %d, %v", n, err)
	}
	if s.codec.Holds() || s.codec.Pending() {
		t.Fatalf("after an empty Decode: Holds %v, Pending %v, want both false", s.codec.Holds(), s.codec.Pending())
	}
	c := encode(t, s, pattern(100, 3))
	if _, err := s.sock.Write(c); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	_ = s.sock.SetReadDeadline(time.Now().Add(10 * time.Second))
	var cipher []byte
	for len(cipher) < len(c) { // the echo is the same length
		k, err := s.sock.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		cipher = append(cipher, buf[:k]...)
	}
	if n, err := s.codec.Decode(cipher, make([]byte, 10)); n != 10 || err != nil {
		t.Fatalf("Decode into 10 bytes: %d, %v", n, err)
	}
	s.codec.Retain()
	if !s.codec.Holds() {
		t.Fatal("90 bytes left inside tls.Conn, Holds false")
	}
	rest := make([]byte, 200)
	n, err := s.codec.Decode(nil, rest)
	if n != 90 || err != nil {
		t.Fatalf("the rest: %d, %v", n, err)
	}
	if n, _ := s.codec.Decode(nil, rest); n != 0 || s.codec.Holds() {
		t.Fatalf("after everything was taken: %d more, Holds %v", n, s.codec.Holds())
	}
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
