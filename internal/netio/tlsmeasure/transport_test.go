package tlsmeasure

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// faultConn lets a test make the transport fail once.
type faultConn struct {
	*memConn
	readErr, writeErr error
}

func (f *faultConn) Read(p []byte) (int, error) {
	if err := f.readErr; err != nil {
		f.readErr = nil
		return 0, err
	}
	return f.memConn.Read(p)
}

func (f *faultConn) Write(p []byte) (int, error) {
	if err := f.writeErr; err != nil {
		f.writeErr = nil
		return 0, err
	}
	return f.memConn.Write(p)
}

// timeoutOnly is a net.Error with Timeout() true and Temporary() false.
type timeoutOnly struct{}

func (timeoutOnly) Error() string   { return "timeout, not temporary" }
func (timeoutOnly) Timeout() bool   { return true }
func (timeoutOnly) Temporary() bool { return false }

var _ net.Error = timeoutOnly{}

// memSetup is a client tls.Conn over a memConn, handshaken through the socket and
// then switched to the in-memory phase; the test moves ciphertext between raw
// (the socket) and the memConn itself.
type memSetup struct {
	tc  *tls.Conn
	mc  *memConn
	fc  *faultConn
	raw net.Conn
	srv *server
	buf []byte
}

func newMemSetup(t *testing.T, v ver, handle func(*tls.Conn)) *memSetup {
	t.Helper()
	cp, err := newCert()
	if err != nil {
		t.Fatal(err)
	}
	scfg := cp.serverConfig()
	srv, err := startServer(func(c net.Conn) {
		tc := tls.Server(c, scfg)
		if tc.Handshake() == nil {
			handle(tc)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.close)
	raw, err := net.Dial("tcp", srv.addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	mc := newMemConn(raw)
	fc := &faultConn{memConn: mc}
	tc := tls.Client(fc, cp.clientConfig(v))
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	if got := tc.ConnectionState().Version; got != map[ver]uint16{tls13: tls.VersionTLS13, tls12: tls.VersionTLS12}[v] {
		t.Fatalf("version %x", got)
	}
	mc.nc = nil // the in-memory phase: the test is the loop
	return &memSetup{tc: tc, mc: mc, fc: fc, raw: raw, srv: srv, buf: make([]byte, 64<<10)}
}

// readCipher reads what the socket has (waiting up to d for the first byte).
func (m *memSetup) readCipher(t *testing.T, d time.Duration) []byte {
	t.Helper()
	m.raw.SetReadDeadline(time.Now().Add(d))
	n, err := m.raw.Read(m.buf)
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal(err)
	}
	return append([]byte(nil), m.buf[:n]...)
}

// drain feeds data to the tls.Conn in pieces of the given sizes (cycled), calling
// Read until it would block after each piece, and returns the plaintext.
func (m *memSetup) drain(t *testing.T, data []byte, sizes []int) (plain []byte, blocks int) {
	t.Helper()
	out := make([]byte, 1000) // smaller than a record: Read is called several times per record
	for i := 0; len(data) > 0; i++ {
		k := min(sizes[i%len(sizes)], len(data))
		m.mc.in = data[:k]
		data = data[k:]
		for {
			n, err := m.tc.Read(out)
			plain = append(plain, out[:n]...)
			if err == errWouldBlock {
				blocks++
				break
			}
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
		}
		if len(m.mc.in) != 0 {
			t.Fatalf("would block with %d bytes not taken", len(m.mc.in))
		}
	}
	return plain, blocks
}

// flush writes what the tls.Conn wrote to the memConn to the socket.
func (m *memSetup) flush(t *testing.T) {
	t.Helper()
	if _, err := m.raw.Write(m.mc.out); err != nil {
		t.Fatal(err)
	}
	m.mc.out = m.mc.out[:0]
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7+i/251)
	}
	return b
}

// TestTransportPartialRecords: ciphertext fed a few bytes at a time (record
// headers and bodies split anywhere, records larger than the output buffer, a
// TLS 1.3 NewSessionTicket among them) comes out intact; every would-block is
// followed by more data and a successful Read; Write works after would-blocks.
func TestTransportPartialRecords(t *testing.T) {
	for _, v := range []ver{tls13, tls12} {
		t.Run(v.String(), func(t *testing.T) {
			m1, m2, m3 := pattern(100, 1), pattern(40000, 2), pattern(1, 3) // m2: three records
			want := append(append(append([]byte(nil), m1...), m2...), m3...)
			m := newMemSetup(t, v, func(tc *tls.Conn) {
				// Wait for "g": with TLS 1.2 the client's handshake can read the
				// server's first records with the Finished (the loop must hence
				// call Read once after the handshake, before any readiness).
				g := make([]byte, 1)
				if _, err := io.ReadFull(tc, g); err != nil {
					return
				}
				for _, b := range [][]byte{m1, m2, m3} {
					if _, err := tc.Write(b); err != nil {
						return
					}
				}
				ping := make([]byte, 4)
				if _, err := io.ReadFull(tc, ping); err != nil || string(ping) != "ping" {
					return
				}
				tc.Write([]byte("pong"))
				io.Copy(io.Discard, tc)
			})

			// Nothing there yet: would block, and the connection stays usable.
			if n, err := m.tc.Read(make([]byte, 10)); n != 0 || err != errWouldBlock {
				t.Fatalf("empty Read = %d, %v; want 0, would block", n, err)
			}
			if _, err := m.tc.Write([]byte("g")); err != nil {
				t.Fatal(err)
			}
			m.flush(t)

			var cipher []byte
			for deadline := time.Now().Add(5 * time.Second); ; {
				cipher = append(cipher, m.readCipher(t, 50*time.Millisecond)...)
				if len(cipher) >= len(want)+3*22 || time.Now().After(deadline) {
					// 22: the smallest per-record overhead of either version; then a
					// short wait for anything else (tickets).
					cipher = append(cipher, m.readCipher(t, 100*time.Millisecond)...)
					break
				}
			}
			plain, blocks := m.drain(t, cipher, []int{1, 2, 3, 4, 5, 7, 11, 64, 1000, 3})
			if !bytes.Equal(plain, want) {
				t.Fatalf("got %d bytes, want %d (equal prefix %d)", len(plain), len(want), commonPrefix(plain, want))
			}
			if blocks < len(cipher)/1000 {
				t.Fatalf("only %d would-blocks for %d bytes fed in small pieces", blocks, len(cipher))
			}
			t.Logf("%d ciphertext bytes in pieces: %d would-blocks, %d plaintext bytes intact", len(cipher), blocks, len(plain))

			// Write after all those would-block Reads.
			if _, err := m.tc.Write([]byte("ping")); err != nil {
				t.Fatalf("Write after would-block Reads: %v", err)
			}
			m.flush(t)
			got, _ := m.drain(t, m.readCipher(t, 5*time.Second), []int{2})
			if string(got) != "pong" {
				t.Fatalf("answer %q, want pong", got)
			}
		})
	}
}

func commonPrefix(a, b []byte) int {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	return i
}

// TestTLSStickyErrors pins down what crypto/tls does with transport errors
// (conn.go: readRecordOrCCS, Write, halfConn.setErrorLocked):
//   - a Read error is kept (every later Read returns it) unless it is a net.Error
//     whose Temporary() is true: a would-block must say Temporary, Timeout alone
//     is not enough;
//   - any Write error is kept, temporary or not, wrapped so that Temporary() is
//     false: the transport's Write must never fail.
func TestTLSStickyErrors(t *testing.T) {
	echo := func(tc *tls.Conn) { io.Copy(tc, tc) }

	t.Run("read-temporary-recovers", func(t *testing.T) {
		m := newMemSetup(t, tls13, echo)
		m.fc.readErr = errWouldBlock
		if _, err := m.tc.Read(make([]byte, 10)); err != errWouldBlock {
			t.Fatalf("Read = %v", err)
		}
		roundTrip(t, m, "after a temporary Read error")
	})

	t.Run("read-timeout-not-temporary-sticks", func(t *testing.T) {
		m := newMemSetup(t, tls13, echo)
		m.fc.readErr = timeoutOnly{}
		if _, err := m.tc.Read(make([]byte, 10)); err != (timeoutOnly{}) {
			t.Fatalf("Read = %v", err)
		}
		if _, err := m.tc.Write([]byte("x")); err != nil {
			t.Fatalf("Write: %v", err) // the write half is separate
		}
		m.flush(t)
		m.mc.in = m.readCipher(t, 5*time.Second)
		_, err := m.tc.Read(make([]byte, 10))
		var ne net.Error
		if err == nil || !errors.As(err, &ne) || ne.Temporary() {
			t.Fatalf("Read with data after a Timeout()-only error = %v; want the kept error", err)
		}
		t.Logf("kept: %v (Timeout %v, Temporary %v)", err, ne.Timeout(), ne.Temporary())
	})

	t.Run("write-temporary-sticks", func(t *testing.T) {
		m := newMemSetup(t, tls13, echo)
		m.fc.writeErr = errWouldBlock
		_, err := m.tc.Write([]byte("x"))
		if err == nil {
			t.Fatal("Write succeeded")
		}
		_, err = m.tc.Write([]byte("y")) // the transport would take it now
		var ne net.Error
		if err == nil || !errors.As(err, &ne) || ne.Temporary() {
			t.Fatalf("second Write = %v; want the kept error", err)
		}
		t.Logf("kept: %v (Timeout %v, Temporary %v)", err, ne.Timeout(), ne.Temporary())
	})
}

func roundTrip(t *testing.T, m *memSetup, what string) {
	t.Helper()
	if _, err := m.tc.Write([]byte("hello")); err != nil {
		t.Fatalf("Write %s: %v", what, err)
	}
	m.flush(t)
	var got []byte
	for deadline := time.Now().Add(5 * time.Second); len(got) < 5 && time.Now().Before(deadline); {
		p, _ := m.drain(t, m.readCipher(t, 100*time.Millisecond), []int{3})
		got = append(got, p...)
	}
	if string(got) != "hello" {
		t.Fatalf("echo %s = %q", what, got)
	}
}
