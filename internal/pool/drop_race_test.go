package pool_test

import (
	"context"
	"net"
	"sync"
	"testing"

	"github.com/pgsidecar/pgsidecar/internal/pool"
)

// A client that holds p (from Get before the drop) and acquires while another
// client's DropUnproven runs must not log in on p and then find it closed: the
// check that p is unproven and closing it happen under one lock. The race is
// microseconds wide, so it runs many times (without the fix: dozens of hits in
// 20000 rounds under -race).
func TestDropUnprovenRaceStress(t *testing.T) {
	k := pool.Key{Database: "d", User: "u"}
	var closers []net.Conn
	var cmu sync.Mutex
	dial := func(ctx context.Context) (*pool.Backend, error) {
		c, s := net.Pipe()
		cmu.Lock()
		closers = append(closers, s)
		cmu.Unlock()
		return pool.NewBackend(nopWriteConn{c}, 1, []byte{1, 2, 3, 4}, map[string]string{"server_version": "17"}), nil
	}
	hits := 0
	for i := 0; i < 3000; i++ {
		r := pool.NewRegistry(func(pool.Key) *pool.Pool { return pool.New(pool.Config{Size: 2, Dial: dial}) })
		p := r.Get(k)
		var wg sync.WaitGroup
		wg.Add(2)
		var err error
		var b *pool.Backend
		var dropped bool
		go func() { defer wg.Done(); dropped = r.DropUnproven(k, p) }()
		go func() { defer wg.Done(); b, err = p.Acquire(context.Background()) }()
		wg.Wait()
		if err == nil {
			p.Release(b)
			if dropped {
				hits++
				if _, err2 := p.Acquire(context.Background()); err2 == nil {
					t.Fatal("closed pool served")
				}
			}
		}
		r.Close()
	}
	cmu.Lock()
	for _, s := range closers {
		s.Close()
	}
	cmu.Unlock()
	if hits > 0 {
		t.Errorf("%d times: Acquire succeeded (route logged in) on a pool DropUnproven removed and closed", hits)
	}
}

type nopWriteConn struct{ net.Conn }

func (nopWriteConn) Write(b []byte) (int, error) { return len(b), nil }
