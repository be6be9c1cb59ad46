package pool

import (
	"sort"
	"sync"
)

// Key identifies a route: the database and user a client asked for in its startup
// message. Each route has its own pool.
type Key struct {
	Database string
	User     string
}

// Registry holds one Pool per Key, created on first use.
type Registry struct {
	newPool func(Key) *Pool

	mu     sync.Mutex
	pools  map[Key]*Pool
	closed bool
}

// NewRegistry returns a registry that creates pools with newPool.
func NewRegistry(newPool func(Key) *Pool) *Registry {
	return &Registry{newPool: newPool, pools: make(map[Key]*Pool)}
}

// Get returns the pool of k, creating it if needed. It returns nil after Close.
func (r *Registry) Get(k Key) *Pool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	p := r.pools[k]
	if p == nil {
		p = r.newPool(k)
		r.pools[k] = p
	}
	return p
}

// DropUnproven removes the pool of k if it is still p and has never logged in
// and holds nothing (no backend, no dial, no waiter): a route whose first login
// failed (a mistyped database or user) leaves no pool, maintenance goroutine,
// SHOW POOLS row or metric series behind. It reports whether p was removed; a
// caller still holding p then gets ErrClosed from it and may Get again.
func (r *Registry) DropUnproven(k Key, p *Pool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pools[k] != p || !p.close(true) { // open == 0: nothing to wait for but maintain
		return false
	}
	delete(r.pools, k)
	return true
}

// Route is one pool with its key, as listed by Pools.
type Route struct {
	Key  Key
	Pool *Pool
}

// Pools lists every pool, sorted by database then user.
func (r *Registry) Pools() []Route {
	r.mu.Lock()
	out := make([]Route, 0, len(r.pools))
	for k, p := range r.pools {
		out = append(out, Route{Key: k, Pool: p})
	}
	r.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Key.Database != out[j].Key.Database {
			return out[i].Key.Database < out[j].Key.Database
		}
		return out[i].Key.User < out[j].Key.User
	})
	return out
}

// Close closes every pool; later Get calls return nil.
func (r *Registry) Close() {
	r.mu.Lock()
	r.closed = true
	pools := r.pools
	r.pools = map[Key]*Pool{}
	r.mu.Unlock()
	for _, p := range pools {
		p.Close()
	}
}
