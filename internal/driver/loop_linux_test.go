//go:build linux

package driver

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestRunStopsOnCancel: cancelling Run's context closes every connection
// (ErrLoopClosed), runs what was posted, and refuses what comes after.
func TestRunStopsOnCancel(t *testing.T) {
	l, err := NewLoop(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- l.Run(ctx) }()

	const n = 10
	hs := make([]*rec, n)
	peers := make([]net.Conn, n)
	for i := range n {
		fd, peer := socketpair(t)
		hs[i], peers[i] = newRec(), peer
		register(t, l, fd, hs[i])
	}
	var tm Timer
	tm.Init(func(time.Time) { t.Error("timer fired after shutdown") })
	onLoop(t, l, func() { l.ArmAfter(&tm, time.Hour) })

	cancel()
	if err := recv(t, ran, "Run"); err != nil {
		t.Fatalf("Run: %v", err)
	}
	for i, h := range hs {
		if err := recv(t, h.closed, "Closed"); !errors.Is(err, ErrLoopClosed) {
			t.Errorf("conn %d: Closed(%v), want ErrLoopClosed", i, err)
		}
		peers[i].SetReadDeadline(time.Now().Add(waitFor))
		if _, err := peers[i].Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("peer %d read %v, want EOF", i, err)
		}
	}
	if tm.Armed() {
		t.Error("timer still armed")
	}
	if err := l.Post(func() {}); !errors.Is(err, ErrLoopClosed) {
		t.Errorf("Post after stop: %v", err)
	}
	fd, _ := socketpair(t)
	if err := l.Register(fd, newRec()); !errors.Is(err, ErrLoopClosed) {
		t.Errorf("Register after stop: %v", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); !errors.Is(err, unix.EBADF) {
		t.Errorf("refused descriptor not closed: %v", err)
	}
	if err := l.Run(context.Background()); !errors.Is(err, ErrLoopClosed) {
		t.Errorf("second Run: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Error(err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestCloseStopsRun: Close from another goroutine stops Run and waits for it.
func TestCloseStopsRun(t *testing.T) {
	l, err := NewLoop(Options{})
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- l.Run(context.Background()) }()
	fd, _ := socketpair(t)
	h := newRec()
	register(t, l, fd, h)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select { // Close waited for Run's shutdown
	case err := <-h.closed:
		if !errors.Is(err, ErrLoopClosed) {
			t.Fatalf("Closed(%v)", err)
		}
	default:
		t.Fatal("Close returned before the loop closed its connections")
	}
	if err := recv(t, ran, "Run"); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// TestCloseBeforeRun: what was registered and posted to a loop that never ran
// is handled by Close.
func TestCloseBeforeRun(t *testing.T) {
	l, err := NewLoop(Options{})
	if err != nil {
		t.Fatal(err)
	}
	fd, peer := socketpair(t)
	h := newRec()
	if err := l.Register(fd, h); err != nil {
		t.Fatal(err)
	}
	posted := false
	if err := l.Post(func() { posted = true }); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if !posted {
		t.Error("posted function did not run")
	}
	if err := recv(t, h.closed, "Closed"); !errors.Is(err, ErrLoopClosed) {
		t.Fatalf("Closed(%v)", err)
	}
	none(t, h.opened, "Opened")
	peer.SetReadDeadline(time.Now().Add(waitFor))
	if _, err := peer.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("peer read %v, want EOF", err)
	}
	if err := l.Run(context.Background()); !errors.Is(err, ErrLoopClosed) {
		t.Errorf("Run after Close: %v", err)
	}
}
