//go:build linux

package driver

import (
	"io"
	"net"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pingPong measures a 64-byte round trip through the loop's echo handler.
func pingPong(b *testing.B, client net.Conn) {
	msg := make([]byte, 64)
	buf := make([]byte, 64)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	cpu0 := cpuTime(b)
	for b.Loop() {
		if _, err := client.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(client, buf); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
}

// cpuTime is the process's CPU time (user and system) so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func BenchmarkPingPongTCP(b *testing.B) {
	l := startLoop(b, Options{})
	fd, client := tcpPair(b)
	h := newRec()
	h.echo = true
	register(b, l, fd, h)
	pingPong(b, client)
}

func BenchmarkPingPongSocketpair(b *testing.B) {
	l := startLoop(b, Options{})
	fd, peer := socketpair(b)
	h := newRec()
	h.echo = true
	register(b, l, fd, h)
	pingPong(b, peer)
}

// BenchmarkPost: functions posted from 4 goroutines.
func BenchmarkPost(b *testing.B) {
	l := startLoop(b, Options{})
	var wg sync.WaitGroup
	fn := func() {}
	b.ReportAllocs()
	b.ResetTimer()
	per := b.N/4 + 1
	for range 4 {
		wg.Go(func() {
			for range per {
				if err := l.Post(fn); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	onLoop(b, l, func() {})
}

// BenchmarkTimerArmDisarm: arming and disarming with 1000 other timers armed.
func BenchmarkTimerArmDisarm(b *testing.B) {
	l, err := NewLoop(Options{}) // not run: the benchmark is its goroutine
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	others := make([]Timer, 1000)
	now := time.Now()
	for i := range others {
		others[i].Init(func(time.Time) {})
		l.Arm(&others[i], now.Add(time.Duration(i)*time.Millisecond+time.Hour))
	}
	var tm Timer
	tm.Init(func(time.Time) {})
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		l.Arm(&tm, now.Add(time.Duration(i%2000)*time.Millisecond+time.Hour))
		l.Disarm(&tm)
		i++
	}
}

// BenchmarkPingPongTCPGoroutine is the baseline: the same round trip echoed by
// a goroutine reading and writing a net.Conn.
func BenchmarkPingPongTCPGoroutine(b *testing.B) {
	pingPong(b, goroutineEcho(b))
}

// goroutineEcho returns a loopback TCP connection echoed by a goroutine.
func goroutineEcho(b *testing.B) net.Conn {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { client.Close() })
	server, err := ln.Accept()
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		defer server.Close()
		buf := make([]byte, 64<<10)
		for {
			n, err := server.Read(buf)
			if err != nil {
				return
			}
			if _, err := server.Write(buf[:n]); err != nil {
				return
			}
		}
	}()
	return client
}

// pingPongThread is pingPong with the client on its own OS thread making
// blocking system calls, as a client process would: the echo side is woken
// across threads whatever drives it, so the loop and the goroutine echo
// compare fairly (in pingPong the goroutine echo often runs on the client's
// own thread, without a context switch).
func pingPongThread(b *testing.B, client net.Conn) {
	fd, err := FD(client)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.SetNonblock(fd, false); err != nil {
		b.Fatal(err)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	msg := make([]byte, 64)
	buf := make([]byte, 64)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	cpu0 := cpuTime(b)
	for b.Loop() {
		if _, err := unix.Write(fd, msg); err != nil {
			b.Fatal(err)
		}
		for n := 0; n < len(buf); {
			k, err := unix.Read(fd, buf[n:])
			if err != nil || k == 0 {
				b.Fatalf("read: %d, %v", k, err)
			}
			n += k
		}
	}
	b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
}

func BenchmarkPingPongTCPThread(b *testing.B) {
	l := startLoop(b, Options{})
	fd, client := tcpPair(b)
	h := newRec()
	h.echo = true
	register(b, l, fd, h)
	pingPongThread(b, client)
}

func BenchmarkPingPongTCPThreadGoroutine(b *testing.B) {
	pingPongThread(b, goroutineEcho(b))
}
