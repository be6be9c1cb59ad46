package proxy_test

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"
)

// TestProtocolOrder sends the same raw frontend message sequences once straight
// to PostgreSQL and once through the proxy (transaction mode, pool size 2, with
// busy clients around so that the test client's transactions move between
// backends) and requires identical backend message streams: the same messages,
// in the same order, with the same statement names, command tags, data rows,
// error codes and messages and ReadyForQuery statuses. The "harness" half runs
// the same comparison between two direct connections, so that the harness's own
// assumptions are checked, and asserts every step's direct stream against the
// expectation written in the scenario.
//
// Set PGSIDECAR_DUMP_PROTOCOL=1 to log every step's streams.
func TestProtocolOrder(t *testing.T) {
	needCluster(t)
	pgAddr := net.JoinHostPort(cluster.Host, strconv.Itoa(cluster.Port))
	t.Run("harness", func(t *testing.T) {
		a := side{name: "direct", addr: pgAddr, db: newDatabase(t), direct: true}
		b := side{name: "direct2", addr: pgAddr, db: newDatabase(t), direct: true}
		// Twice: the scenarios must leave nothing behind that changes a rerun.
		for r := range 2 {
			t.Run(fmt.Sprintf("round%d", r+1), func(t *testing.T) { runProtocolScenarios(t, a, b, pairHooks{}) })
		}
	})
	t.Run("proxy", func(t *testing.T) {
		a := side{name: "direct", addr: pgAddr, db: newDatabase(t), direct: true}
		db := newDatabase(t)
		tp := startProxy(t, db, proxyOpts{PoolSize: 2})
		load := startLoad(t, tp)
		defer load.finish(t)
		t.Run("backends_rotate", func(t *testing.T) {
			load.setPhase("backends_rotate")
			checkRotation(t, tp)
		})
		chk := direct(t, a.db)
		where := func(text string) string {
			// Best effort: the proxy backend whose last statement was text.
			// A busy client may have used it since; "?" when not found.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			var pid int
			if err := chk.QueryRow(ctx, `SELECT pid FROM pg_stat_activity WHERE `+proxyBackends+` AND query = $2
				ORDER BY query_start DESC LIMIT 1`, tp.db, text).Scan(&pid); err != nil {
				return "?"
			}
			return strconv.Itoa(pid)
		}
		// Several rounds, each on fresh connections: where the client's
		// transactions land is up to the busy clients, so more rounds give
		// more backend switches at every step.
		for r := range protocolRounds {
			t.Run(fmt.Sprintf("round%d", r+1), func(t *testing.T) {
				runProtocolScenarios(t, a, side{name: "proxy", addr: tp.addr, db: db}, pairHooks{phase: load.setPhase, where: where})
			})
		}
	})
}

// protocolRounds is how many times the proxy half runs every scenario.
const protocolRounds = 3
