package main

import (
	"cmp"
	"context"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/config"
	"github.com/pgsidecar/pgsidecar/internal/fleet"
	"github.com/pgsidecar/pgsidecar/internal/metrics"
	"github.com/pgsidecar/pgsidecar/internal/pool"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
)

// fleetShares are the routes' shares of the fleet-wide connection budget
// (--fleet-budget), made with the route's pool and kept for the process's
// life (a route's pool may be dropped and made again: its share stays).
type fleetShares struct {
	name          string
	budget, floor int
	up            *atomic.Pointer[pgconn.Config]
	cur           *atomic.Pointer[config.Config]
	log           *slog.Logger
	mu            sync.Mutex
	m             map[pool.Key]*fleet.Share
}

// newFleetShares returns the shares of cfg's fleet; nil when --fleet-budget
// is 0.
func newFleetShares(cfg config.Config, upstream *pgconn.Config, up *atomic.Pointer[pgconn.Config],
	cur *atomic.Pointer[config.Config], log *slog.Logger) *fleetShares {
	if cfg.FleetBudget <= 0 {
		return nil
	}
	name := cfg.FleetName
	if name == "" {
		name = upstream.Database + "/" + upstream.User
	}
	return &fleetShares{name: name, budget: cfg.FleetBudget, floor: cfg.FleetMin, up: up, cur: cur,
		log: log.With("fleet", name), m: map[pool.Key]*fleet.Share{}}
}

// get returns the route's share, made on first use.
func (f *fleetShares) get(k pool.Key) *fleet.Share {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s := f.m[k]; s != nil {
		return s
	}
	s := fleet.New(fleet.Config{
		Budget: f.budget, Min: f.floor, Key: fleet.KeyOf(f.name, k.Database, k.User),
		Connect: func(ctx context.Context) (*pgconn.PgConn, error) {
			// The upstream's credentials, on the route's database: advisory
			// locks are per database.
			pc := f.up.Load().Copy()
			pc.Database = k.Database
			pc.ConnectTimeout = f.cur.Load().ServerConnectTimeout
			pc.RuntimeParams["application_name"] = "pgsidecar fleet"
			return pgconn.ConnectConfig(ctx, pc)
		},
		ConnectTimeout: f.cur.Load().ServerConnectTimeout,
		Logger:         f.log.With("database", k.Database, "user", k.User),
	})
	f.m[k] = s
	return s
}

// each calls fn with every route's share, in route order, outside the lock.
func (f *fleetShares) each(fn func(pool.Key, *fleet.Share)) {
	f.mu.Lock()
	keys := slices.SortedFunc(maps.Keys(f.m), func(a, b pool.Key) int {
		return cmp.Or(cmp.Compare(a.Database, b.Database), cmp.Compare(a.User, b.User))
	})
	shares := make([]*fleet.Share, len(keys))
	for i, k := range keys {
		shares[i] = f.m[k]
	}
	f.mu.Unlock()
	for i, k := range keys {
		fn(k, shares[i])
	}
}

// status is SHOW FLEET's.
func (f *fleetShares) status() []proxy.FleetStatus {
	var out []proxy.FleetStatus
	f.each(func(k pool.Key, s *fleet.Share) {
		st := s.Stats()
		out = append(out, proxy.FleetStatus{Database: k.Database, User: k.User, Fleet: f.name, Budget: st.Budget,
			Min: st.Min, Held: st.Held, Used: st.Used, FleetHeld: st.FleetHeld, Up: st.Up, Failures: st.AcquireFailures})
	})
	return out
}

// metrics is the fleet collector's.
func (f *fleetShares) metrics() []metrics.FleetRoute {
	var out []metrics.FleetRoute
	f.each(func(k pool.Key, s *fleet.Share) {
		out = append(out, metrics.FleetRoute{Database: k.Database, User: k.User, Stats: s.Stats()})
	})
	return out
}

// close stops every share: their coordination connections close and
// PostgreSQL frees their slots.
func (f *fleetShares) close() {
	f.each(func(_ pool.Key, s *fleet.Share) { s.Close() })
}
