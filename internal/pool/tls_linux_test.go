//go:build linux

package pool_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/driver"
	"github.com/pgsidecar/pgsidecar/internal/localpg"
	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/netio"
	"github.com/pgsidecar/pgsidecar/internal/pool"
)

// runLoop runs a driver loop until the test ends.
func runLoop(t *testing.T) *driver.Loop {
	t.Helper()
	l, err := driver.NewLoop(driver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- l.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-ran; err != nil {
			t.Errorf("Run: %v", err)
		}
		_ = l.Close()
	})
	return l
}

// onLoop runs fn on l and waits for it.
func onLoop(t *testing.T, l *driver.Loop, fn func()) {
	t.Helper()
	done := make(chan struct{})
	if err := l.Post(func() { fn(); close(done) }); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("posted function did not run")
	}
}

// pgAnswer is a Handler that gathers a server connection's bytes up to a
// ReadyForQuery.
type pgAnswer struct {
	buf    []byte // on the loop
	ready  chan []byte
	closed chan error
}

func newPGAnswer() *pgAnswer {
	return &pgAnswer{ready: make(chan []byte, 4), closed: make(chan error, 4)}
}

func (h *pgAnswer) Opened(*driver.Conn) {}

func (h *pgAnswer) Data(_ *driver.Conn, b []byte) {
	h.buf = append(h.buf, b...)
	if n := len(h.buf); n >= 6 && h.buf[n-6] == 'Z' && binary.BigEndian.Uint32(h.buf[n-5:]) == 5 {
		h.ready <- h.buf
		h.buf = nil
	}
}

func (h *pgAnswer) Closed(_ *driver.Conn, err error) { h.closed <- err }

// messages splits protocol messages into their types and bodies.
func messages(t *testing.T, b []byte) (types string, bodies [][]byte) {
	t.Helper()
	for len(b) > 0 {
		if len(b) < 5 {
			t.Fatalf("a partial message header: %q", b)
		}
		n := int(binary.BigEndian.Uint32(b[1:5]))
		if n < 4 || 1+n > len(b) {
			t.Fatalf("message %q of length %d in %d bytes", b[0], n, len(b))
		}
		types += string(b[0])
		bodies = append(bodies, b[5:1+n])
		b = b[1+n:]
	}
	return types, bodies
}

// selectOneOnLoop adopts be on l (its codec when it has one), sends a simple
// Query "select 1" as raw protocol bytes and checks the answer; it leaves be
// adopted in c and returns its handler.
func selectOneOnLoop(t *testing.T, l *driver.Loop, be *pool.Backend, c *driver.Conn) *pgAnswer {
	t.Helper()
	h := newPGAnswer()
	q := append([]byte{'Q', 0, 0, 0, 0}, "select 1\x00"...)
	binary.BigEndian.PutUint32(q[1:], uint32(len(q)-1))
	onLoop(t, l, func() {
		if err := l.Adopt(c, be.FD(), h); err != nil {
			t.Error(err)
			return
		}
		if cd := be.Codec(); cd != nil {
			c.SetCodec(cd)
		}
		if err := c.Write(q); err != nil {
			t.Error(err)
		}
	})
	var answer []byte
	select {
	case answer = <-h.ready:
	case err := <-h.closed:
		t.Fatalf("closed before the answer: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no answer to select 1")
	}
	types, bodies := messages(t, answer)
	if types != "TDCZ" {
		t.Fatalf("answer messages %q, want RowDescription, DataRow, CommandComplete, ReadyForQuery", types)
	}
	// DataRow: one column, "1".
	if d := bodies[1]; len(d) != 2+4+1 || binary.BigEndian.Uint16(d) != 1 || string(d[6:]) != "1" {
		t.Fatalf("DataRow %q", d)
	}
	if string(bodies[2]) != "SELECT 1\x00" || string(bodies[3]) != "I" {
		t.Fatalf("CommandComplete %q, ReadyForQuery %q", bodies[2], bodies[3])
	}
	return h
}

// sessions counts the server sessions with pid, seen from another
// connection.
func sessions(ctx context.Context, url string, pid uint32) (int, error) {
	conn, err := pgconn.Connect(ctx, url)
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	res := conn.ExecParams(ctx, "select count(*) from pg_stat_activity where pid = $1",
		[][]byte{[]byte(strconv.Itoa(int(pid)))}, nil, nil, nil).Read()
	if res.Err != nil {
		return 0, res.Err
	}
	return strconv.Atoi(string(res.Rows[0][0]))
}

func waitSessionGone(t *testing.T, url string, pid uint32) {
	t.Helper()
	pgtest.Eventually(t, 10*time.Second, fmt.Sprintf("server session %d ended", pid), func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		n, err := sessions(ctx, url, pid)
		if err == nil && n != 0 {
			err = fmt.Errorf("%d sessions with pid %d", n, pid)
		}
		return err
	})
}

// TestTLSBackendOnLoop: a server connection dialed by PgconnDialer with
// sslmode=require is TLS and has a descriptor; after Unpoll a loop drives it
// through its codec (a simple Query and its answer), and closing it ends the
// server session. The pool's liveness check still works on it.
func TestTLSBackendOnLoop(t *testing.T) {
	c := pgtest.Start(t, localpg.Options{TLS: true})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg, err := pgconn.ParseConfig(c.URLSSL("postgres", "require"))
	if err != nil {
		t.Fatal(err)
	}
	p := pool.New(pool.Config{Size: 1, Dial: pool.PgconnDialer(cfg)})
	defer p.Close()
	be, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !be.TLS() || be.FD() < 0 {
		t.Fatalf("TLS %v, FD %d: want a TLS connection with a descriptor", be.TLS(), be.FD())
	}
	if be.Codec() != nil {
		t.Fatal("a codec before Unpoll")
	}
	if n, err := sessions(ctx, c.URL("postgres"), be.PID); err != nil || n != 1 {
		t.Fatalf("sessions of the backend: %d, %v", n, err)
	}
	fd := be.FD()
	if err := be.Unpoll(); err != nil {
		t.Fatalf("Unpoll: %v", err)
	}
	if be.FD() < 0 || be.FD() == fd || be.Codec() == nil {
		t.Fatalf("after Unpoll: FD %d (was %d), codec %v", be.FD(), fd, be.Codec())
	}
	if err := be.Unpoll(); err != nil {
		t.Fatalf("a second Unpoll: %v", err)
	}
	if !be.TLS() {
		t.Fatal("not TLS after Unpoll")
	}

	l := runLoop(t)
	var conn driver.Conn
	selectOneOnLoop(t, l, be, &conn)
	onLoop(t, l, func() { conn.Detach() })

	// A backend used on the loop and handed back: the pool's peek on the
	// raw descriptor sees nothing while the server says nothing, and the
	// server's goodbye when it terminates the session.
	p.Release(be)
	// Acquire checks the life of a backend idle for IdleCheckAfter: the
	// wait is what makes it check, not a stand-in for a condition.
	time.Sleep(pool.IdleCheckAfter + 5*time.Millisecond)
	again, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if again != be {
		t.Fatalf("a quiet TLS backend was not reused (pid %d, want %d)", again.PID, be.PID)
	}
	p.Release(again)
	kill, err := pgconn.Connect(ctx, c.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer kill.Close(ctx)
	if _, err := kill.Exec(ctx, fmt.Sprintf("select pg_terminate_backend(%d)", be.PID)).ReadAll(); err != nil {
		t.Fatal(err)
	}
	pgtest.EventuallyTrue(t, 10*time.Second, "the terminated backend replaced after the liveness check", func() bool {
		b, err := p.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		p.Release(b)
		return b != be
	})
}

// TestTLSBackendCloseOnLoop: Close of a TLS backend the loop drove sends
// Terminate and close_notify without blocking and closes the descriptor:
// the server session ends.
func TestTLSBackendCloseOnLoop(t *testing.T) {
	c := pgtest.Start(t, localpg.Options{TLS: true})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg, err := pgconn.ParseConfig(c.URLSSL("postgres", "verify-full"))
	if err != nil {
		t.Fatal(err)
	}
	be, err := pool.PgconnDialer(cfg)(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := be.Unpoll(); err != nil {
		t.Fatal(err)
	}
	fd := be.FD()
	l := runLoop(t)
	var conn driver.Conn
	selectOneOnLoop(t, l, be, &conn)
	// As the proxy's OnClose does: off the loop, then closed, on the loop.
	onLoop(t, l, func() {
		conn.Detach()
		if err := be.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	if _, err := netio.PeekFD(uintptr(fd), make([]byte, 1)); err == 0 {
		t.Error("the descriptor is still open after Close")
	}
	waitSessionGone(t, c.URL("postgres"), be.PID)
	if tail := c.LogTail(20); containsAny(tail, "unexpected EOF", "could not receive data") {
		t.Errorf("the server saw an unclean end:\n%s", tail)
	}
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		for i := 0; i+len(sub) <= len(s); i++ {
			if s[i:i+len(sub)] == sub {
				return true
			}
		}
	}
	return false
}

// TestPlainBackendUnchanged: a plain connection dialed by PgconnDialer is
// the dialed TCP connection itself (not the TLS transport), and Unpoll and
// the loop work on it as before, with no codec.
func TestPlainBackendUnchanged(t *testing.T) {
	c := pgtest.Start(t, localpg.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg, err := pgconn.ParseConfig(c.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	be, err := pool.PgconnDialer(cfg)(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := be.Conn.(*net.TCPConn); !ok {
		t.Fatalf("Conn is %T, want *net.TCPConn", be.Conn)
	}
	if be.TLS() || be.FD() < 0 || be.Codec() != nil || be.RawConn() == nil {
		t.Fatalf("TLS %v, FD %d, codec %v, raw %v", be.TLS(), be.FD(), be.Codec(), be.RawConn())
	}
	if err := be.Unpoll(); err != nil {
		t.Fatal(err)
	}
	if _, ok := be.Conn.(*netio.FDConn); !ok || be.FD() < 0 || be.Codec() != nil {
		t.Fatalf("after Unpoll: Conn %T, FD %d, codec %v", be.Conn, be.FD(), be.Codec())
	}
	l := runLoop(t)
	var conn driver.Conn
	selectOneOnLoop(t, l, be, &conn)
	onLoop(t, l, func() {
		if conn.Codec() != nil {
			t.Error("a plain connection has a codec")
		}
		conn.Detach()
	})
	if err := be.Close(); err != nil {
		t.Fatal(err)
	}
	waitSessionGone(t, c.URL("postgres"), be.PID)
}
