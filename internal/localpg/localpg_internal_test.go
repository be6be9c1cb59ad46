package localpg

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// TestStartRetriesTakenPort makes the first picked port one that is already
// bound and checks that Start moves on to another port, and that Close
// leaves no waiter goroutine behind.
// It is not parallel because it replaces pickPort.
func TestStartRetriesTakenPort(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	taken := l.Addr().(*net.TCPAddr).Port

	var picks int
	pickPort = func() (int, error) {
		picks++
		if picks == 1 {
			return taken, nil
		}
		return freePort()
	}
	defer func() { pickPort = freePort }()

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	c, err := Start(ctx, Options{})
	if errors.Is(err, ErrNoBinaries) && os.Getenv("CI") != "true" {
		t.Skipf("PostgreSQL binaries not available: %v", err)
	}
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer c.Close()
	if picks != 2 || c.Port == taken {
		t.Fatalf("picks = %d, port = %d (taken %d): want a retry on a new port", picks, c.Port, taken)
	}
	if n := strings.Count(c.LogTail(1000), "could not bind"); n != 1 {
		t.Fatalf("log has %d bind failures, want 1", n)
	}

	c.mu.Lock()
	p := c.proc
	c.mu.Unlock()
	if p == nil {
		t.Fatal("no running process after Start")
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case <-p.done: // the reaper goroutine has finished
	default:
		t.Fatal("Close returned before the postmaster was reaped")
	}
	if p.err != nil {
		t.Errorf("postmaster exit after fast shutdown: %v, want clean exit", p.err)
	}
}
