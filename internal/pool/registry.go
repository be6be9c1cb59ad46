package pool

import (
	"errors"
	"sort"
	"sync"
	"time"
)

// Key identifies a route: the database and user a client asked for in its startup
// message. Each route has its own pool.
type Key struct {
	Database string
	User     string
}

// UnknownRoute is the key under which the Registry counts the failed dials of
// routes whose pool DropUnproven removed, other than the default route (see
// SetDefaultRoute): whatever database and user names clients send, their failures
// add up in this one series.
var UnknownRoute = Key{Database: "(unknown)", User: "(unknown)"}

// maxBackoffRoutes bounds the back-off states the Registry keeps for routes without
// a pool, so that clients sending random route names cannot grow it.
const maxBackoffRoutes = 1024

// Registry holds one Pool per Key, created on first use.
type Registry struct {
	newPool func(Key) *Pool

	mu     sync.Mutex
	pools  map[Key]*Pool
	closed bool

	// The default route (SetDefaultRoute) keeps its back-off state in defBO
	// whether it has a pool or not.
	def    Key
	hasDef bool
	defBO  *backoff
	// backoffs holds the back-off state of other routes whose pool DropUnproven
	// removed while they were backing off (at most maxBackoffRoutes); the route's
	// next pool takes it over.
	backoffs map[Key]*backoff
	// dropped sums the dial figures of removed pools, by the key they are exported
	// under: the default route or UnknownRoute.
	dropped map[Key]DialTotals
}

// NewRegistry returns a registry that creates pools with newPool.
func NewRegistry(newPool func(Key) *Pool) *Registry {
	return &Registry{newPool: newPool, pools: make(map[Key]*Pool),
		backoffs: make(map[Key]*backoff), dropped: make(map[Key]DialTotals)}
}

// SetDefaultRoute names the route of the configured upstream (its database and
// user). Its failed dials keep their own labels when its pool is dropped (other
// routes' go to UnknownRoute), its back-off state is always kept, and
// UpstreamReady checks it. Call it once, before the registry is used.
func (r *Registry) SetDefaultRoute(k Key) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.def, r.hasDef = k, true
	switch p, bo := r.pools[k], r.backoffs[k]; {
	case p != nil:
		r.defBO = p.backoffState()
	case bo != nil:
		r.defBO = bo
	default:
		r.defBO = &backoff{}
	}
	delete(r.backoffs, k)
}

// Get returns the pool of k, creating it if needed. It returns nil after Close.
func (r *Registry) Get(k Key) *Pool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	return r.getLocked(k)
}

func (r *Registry) getLocked(k Key) *Pool {
	p := r.pools[k]
	if p == nil {
		p = r.newPool(k)
		switch bo := r.backoffs[k]; {
		case r.hasDef && k == r.def:
			p.setBackoff(r.defBO)
		case bo != nil:
			delete(r.backoffs, k)
			p.setBackoff(bo)
		}
		r.pools[k] = p
	}
	return p
}

// DropUnproven removes the pool of k if it is still p and has never logged in
// and holds nothing (no backend, no dial, no waiter): a route whose first login
// failed (a mistyped database or user) leaves no pool, maintenance goroutine,
// SHOW POOLS row or metric series behind. It reports whether p was removed; a
// caller still holding p then gets ErrClosed from it and may Get again.
//
// What stays: p's failed dials and their time are added to the totals of
// Snapshot, under k if it is the default route, else under UnknownRoute; and the
// route's back-off goes on, so the route's next pool does not dial before it ends.
func (r *Registry) DropUnproven(k Key, p *Pool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pools[k] != p || !p.close(true) { // open == 0: nothing to wait for but maintain
		return false
	}
	delete(r.pools, k)
	isDef := r.hasDef && k == r.def
	s := p.Stats() // final: p is closed and held nothing
	if s.DialFailures > 0 || s.DialTime > 0 {
		lk := UnknownRoute
		if isDef {
			lk = k
		}
		t := r.dropped[lk]
		t.Key = lk
		t.DialFailures += s.DialFailures
		t.DialTime += s.DialTime
		r.dropped[lk] = t
	}
	if !isDef {
		if bo := p.backoffState(); !bo.stale(time.Now()) {
			r.keepBackoffLocked(k, bo)
		}
	}
	return true
}

// keepBackoffLocked keeps bo for route k, making room when the map is full: first
// by forgetting states whose back-off ended long ago, then the one that ends first.
func (r *Registry) keepBackoffLocked(k Key, bo *backoff) {
	if len(r.backoffs) >= maxBackoffRoutes {
		now := time.Now()
		for key, b := range r.backoffs {
			if b.stale(now) {
				delete(r.backoffs, key)
			}
		}
	}
	if len(r.backoffs) >= maxBackoffRoutes {
		var oldest Key
		var at time.Time
		first := true
		for key, b := range r.backoffs {
			if t := b.retryAt(); first || t.Before(at) {
				oldest, at, first = key, t, false
			}
		}
		delete(r.backoffs, oldest)
	}
	r.backoffs[k] = bo
}

// UpstreamReady says whether a server connection of the default route (see
// SetDefaultRoute) can be opened, for a readiness probe: nil while a backend of
// that route is open (idle ones are checked for life) or the route's last dial
// succeeded. Otherwise it starts one dial in the background when none is in
// flight and the back-off allows (the backend then goes idle into the pool,
// which it creates if needed) and returns the last dial error (a *BackoffError,
// wrapping ErrDial) or ErrNotChecked before any attempt ended. It never waits
// for the network. Without a default route it returns an error; after Close,
// ErrClosed.
func (r *Registry) UpstreamReady() error {
	for try := 0; ; try++ {
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			return ErrClosed
		}
		if !r.hasDef {
			r.mu.Unlock()
			return errNoDefaultRoute
		}
		p := r.getLocked(r.def)
		r.mu.Unlock()
		err := p.ready()
		if err != ErrClosed || try == 2 {
			return err
		}
		// A client's failed login dropped p meanwhile: ask the route's next pool.
	}
}

var errNoDefaultRoute = errors.New("pool: no default route (Registry.SetDefaultRoute not called)")

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
	sortRoutes(out, func(x Route) Key { return x.Key })
	return out
}

// RouteStats is a pool with its key and figures, as listed by Snapshot.
type RouteStats struct {
	Key   Key
	Pool  *Pool
	Stats Stats
}

// DialTotals are the dial figures of the pools DropUnproven removed, summed under
// Key: the default route, or UnknownRoute for every other route.
type DialTotals struct {
	Key          Key
	DialFailures uint64
	DialTime     time.Duration
}

// Snapshot returns every pool's Stats, sorted by database then user, and the
// dial totals of removed pools, read at one instant: a pool being removed is
// counted once, in one or the other, so that counters built from the sum never go
// down.
func (r *Registry) Snapshot() ([]RouteStats, []DialTotals) {
	r.mu.Lock()
	pools := make([]RouteStats, 0, len(r.pools))
	for k, p := range r.pools {
		pools = append(pools, RouteStats{Key: k, Pool: p, Stats: p.Stats()})
	}
	dropped := make([]DialTotals, 0, len(r.dropped))
	for _, t := range r.dropped {
		dropped = append(dropped, t)
	}
	r.mu.Unlock()
	sortRoutes(pools, func(x RouteStats) Key { return x.Key })
	sortRoutes(dropped, func(x DialTotals) Key { return x.Key })
	return pools, dropped
}

func sortRoutes[T any](s []T, key func(T) Key) {
	sort.Slice(s, func(i, j int) bool {
		a, b := key(s[i]), key(s[j])
		if a.Database != b.Database {
			return a.Database < b.Database
		}
		return a.User < b.User
	})
}

// Reconfigure applies a new configuration to every pool, for a live reload:
// each pool's Reconfigure gets cfgFor of its key and retire (see
// Pool.Reconfigure). Pools created later come from the factory given to
// NewRegistry, so the caller must make that factory use the new configuration
// before calling Reconfigure: then no pool is missed, since a pool the factory
// created with the old one is already listed when Reconfigure looks. cfgFor is
// called without any lock held, for one key at a time.
//
// With retire, the back-off states the registry keeps for routes without a pool
// end too, like those of the pools (Pool.Reconfigure): their failures were those
// of the old configuration.
func (r *Registry) Reconfigure(cfgFor func(Key) Config, retire bool) {
	r.mu.Lock()
	routes := make([]Route, 0, len(r.pools))
	for k, p := range r.pools {
		routes = append(routes, Route{Key: k, Pool: p})
	}
	if retire {
		clear(r.backoffs)
		if r.defBO != nil {
			r.defBO.reset()
		}
	}
	r.mu.Unlock()
	for _, rt := range routes {
		rt.Pool.Reconfigure(cfgFor(rt.Key), retire)
	}
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
