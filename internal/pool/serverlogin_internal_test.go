package pool

import (
	"bytes"
	"io"
	"net"
	"testing"

	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// loginConn hands pgconn what the login left (replay) before the socket's
// bytes, and drops pgconn's startup packet however its writes split it,
// passing on whatever follows it; unwrap refuses while either is pending.
func TestLoginConn(t *testing.T) {
	startup := wire.AppendStartup(nil, wire.ProtocolVersion30, wire.StartupParam{Name: "user", Value: "u"})
	for _, split := range []int{1, 3, 4, 5, len(startup) - 1, len(startup)} {
		a, b := net.Pipe()
		lc := &loginConn{Conn: a, replay: []byte("R-and-more"), skip: -1}
		if _, err := lc.unwrap(); err == nil {
			t.Fatal("unwrap with bytes to replay")
		}
		got := make([]byte, 4)
		if n, _ := lc.Read(got); string(got[:n]) != "R-an" {
			t.Fatalf("first read %q", got[:n])
		}
		if rest, _ := io.ReadAll(io.LimitReader(lc, 6)); string(rest) != "d-more" {
			t.Fatalf("replay rest %q", rest)
		}
		after := wire.AppendQuery(nil, "SELECT 1")
		done := make(chan []byte)
		go func() {
			buf := make([]byte, len(after))
			_, _ = io.ReadFull(b, buf)
			done <- buf
		}()
		for _, part := range [][]byte{startup[:split], append(append([]byte(nil), startup[split:]...), after...)} {
			if n, err := lc.Write(part); err != nil || n != len(part) {
				t.Fatalf("split %d: Write = %d, %v", split, n, err)
			}
		}
		if got := <-done; !bytes.Equal(got, after) {
			t.Fatalf("split %d: the server got %q, want %q", split, got, after)
		}
		if c, err := lc.unwrap(); err != nil || c != a {
			t.Fatalf("split %d: unwrap = %v, %v", split, c, err)
		}
		a.Close()
		b.Close()
	}
}
