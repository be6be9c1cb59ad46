package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/auth"
)

// authQuery looks up the passwords of roles no other source knows with
// --auth-query, run as the upstream's user over a connection of its own
// (PgBouncer's auth_query), and keeps each answer for --auth-query-ttl.
// One query runs at a time; a failed connection is opened again by the
// next lookup.
type authQuery struct {
	// cfg returns the query, how long answers are kept, and the upstream's
	// connection settings in force.
	cfg func() (query string, ttl, timeout time.Duration, up *pgconn.Config)

	mu   sync.Mutex // one query at a time, over conn
	conn *pgconn.PgConn

	cmu   sync.Mutex
	cache map[string]aqEntry // roles found (unknown ones are asked again)
}

// aqEntry is a role the auth query found.
type aqEntry struct {
	sec auth.Secret
	at  time.Time
}

// maxAuthQueryCache bounds the roles kept: expired ones go first.
const maxAuthQueryCache = 10000

func newAuthQuery(cfg func() (string, time.Duration, time.Duration, *pgconn.Config)) *authQuery {
	return &authQuery{cfg: cfg, cache: map[string]aqEntry{}}
}

// known reports whether user is a role the auth query found (and still
// keeps): one that has just authenticated with its answer.
func (q *authQuery) known(user string) bool {
	q.cmu.Lock()
	defer q.cmu.Unlock()
	_, ok := q.cache[user]
	return ok
}

// lookup returns the role's secret: from the cache while fresh, else from
// the query. false: no such role (no row, or a NULL password).
func (q *authQuery) lookup(user string) (auth.Secret, bool, error) {
	query, ttl, timeout, up := q.cfg()
	if e, ok := q.cached(user, ttl); ok {
		return e.sec, true, nil
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if e, ok := q.cached(user, ttl); ok { // another login asked meanwhile
		return e.sec, true, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if q.conn == nil || q.conn.IsClosed() {
		c, err := pgconn.ConnectConfig(ctx, up)
		if err != nil {
			return auth.Secret{}, false, fmt.Errorf("auth query: connect: %w", err)
		}
		q.conn = c
	}
	res := q.conn.ExecParams(ctx, query, [][]byte{[]byte(user)}, nil, nil, nil).Read()
	if res.Err != nil {
		var pe *pgconn.PgError
		if !errors.As(res.Err, &pe) { // the connection is in doubt
			_ = q.conn.Close(context.Background())
			q.conn = nil
		}
		return auth.Secret{}, false, fmt.Errorf("auth query: %w", res.Err)
	}
	if len(res.Rows) == 0 || len(res.Rows[0]) == 0 || res.Rows[0][len(res.Rows[0])-1] == nil {
		return auth.Secret{}, false, nil
	}
	sec, err := auth.ParseSecret(user, string(res.Rows[0][len(res.Rows[0])-1]))
	if err != nil {
		return auth.Secret{}, false, fmt.Errorf("auth query: the password of %q: %w", user, err)
	}
	q.remember(user, sec)
	return sec, true, nil
}

// cached returns the role's fresh entry.
func (q *authQuery) cached(user string, ttl time.Duration) (aqEntry, bool) {
	q.cmu.Lock()
	defer q.cmu.Unlock()
	e, ok := q.cache[user]
	if !ok || time.Since(e.at) >= ttl {
		return aqEntry{}, false
	}
	return e, true
}

// remember keeps a role found, dropping expired entries when the cache is
// full (and the oldest one if none is).
func (q *authQuery) remember(user string, sec auth.Secret) {
	_, ttl, _, _ := q.cfg()
	q.cmu.Lock()
	defer q.cmu.Unlock()
	if len(q.cache) >= maxAuthQueryCache {
		var oldest string
		for u, e := range q.cache {
			if time.Since(e.at) >= ttl {
				delete(q.cache, u)
			} else if oldest == "" || e.at.Before(q.cache[oldest].at) {
				oldest = u
			}
		}
		if len(q.cache) >= maxAuthQueryCache {
			delete(q.cache, oldest)
		}
	}
	q.cache[user] = aqEntry{sec: sec, at: time.Now()}
}

// close closes the query's connection.
func (q *authQuery) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.conn != nil {
		_ = q.conn.Close(context.Background())
		q.conn = nil
	}
}

// serverLogins keeps, per role, what its last authenticated client proved
// (auth.ServerLogin): the pools of roles whose password the proxy does not
// know log in to PostgreSQL with it (pool.LoginWith).
type serverLogins struct {
	mu sync.Mutex
	m  map[string]auth.ServerLogin
}

func (s *serverLogins) put(user string, l auth.ServerLogin) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]auth.ServerLogin{}
	}
	s.m[user] = l
}

func (s *serverLogins) get(user string) (auth.ServerLogin, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.m[user]
	return l, ok
}
