package proxy_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/pool"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
)

// An upstream on TLS (sslmode=verify-full against the shared cluster, which
// runs with ssl=on and a test CA): the event loop drives the encrypted server
// connections through crypto/tls over in-memory buffers (docs/design.md
// section 16, TLS). Every server connection of the proxy is encrypted, the
// clients are on the loop, and the pgx workload, large messages in both
// directions (several TLS records, the by-reference write of a message over
// 64 KiB), a server connection that dies while idle in the pool and session
// mode all behave as on plain sockets.
func TestTLSUpstream(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the event loop is Linux-only")
	}
	needCluster(t)
	for _, mode := range []proxy.PoolMode{proxy.ModeTransaction, proxy.ModeSession} {
		name := map[proxy.PoolMode]string{proxy.ModeTransaction: "transaction", proxy.ModeSession: "session"}[mode]
		t.Run(name, func(t *testing.T) {
			db := newDatabase(t)
			size := 2
			if mode == proxy.ModeSession {
				size = 6 // a client holds its server connection for its whole session
			}
			tp := startProxy(t, db, proxyOpts{PoolSize: size, Mode: mode, Upstream: cluster.URLSSL(db, "verify-full")})
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			for _, qm := range allModes {
				t.Run(qm.String(), func(t *testing.T) { // its clients close at its end
					table := "tls_" + strings.ReplaceAll(qm.String(), " ", "_")
					createTable(t, db, table)
					n := runWorkers(t, tp, qm, table, 6, 20)
					checkRows(t, db, table, n)
				})
			}

			c := tp.connect(t, pgx.QueryExecModeCacheStatement)
			// 1 MB each way: many records, and a Bind over 64 KiB.
			big := strings.Repeat("0123456789abcdef", 1<<16)
			var got string
			if err := c.QueryRow(ctx, "SELECT $1::text || 'x'", big).Scan(&got); err != nil || got != big+"x" {
				t.Fatalf("1 MB round trip: %d bytes back, %v", len(got), err)
			}
			if err := c.QueryRow(ctx, "SELECT repeat('y', 3000000)").Scan(&got); err != nil || len(got) != 3000000 {
				t.Fatalf("3 MB answer: %d bytes, %v", len(got), err)
			}
			pgtest.EventuallyTrue(t, 10*time.Second, "the loop to serve just this client", func() bool {
				return tp.srv.Stats().LoopClients == 1
			})
			chk := direct(t, db)
			var plain, enc int
			if err := chk.QueryRow(ctx, `SELECT count(*) FILTER (WHERE NOT s.ssl), count(*) FILTER (WHERE s.ssl)
				FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE `+strings.ReplaceAll(proxyBackends, "pid <>", "a.pid <>"), db).Scan(&plain, &enc); err != nil {
				t.Fatal(err)
			}
			if plain != 0 || enc == 0 {
				t.Fatalf("server connections: %d plain, %d on TLS; want all on TLS", plain, enc)
			}
			c.Close(ctx)

			// A server connection that dies idle in the pool is found dead
			// by the liveness check (the peer's close_notify and FIN are
			// bytes on the descriptor) and replaced.
			p := tp.pools.Get(pool.Key{Database: db, User: "postgres"})
			pgtest.EventuallyTrue(t, 10*time.Second, "every server connection idle", func() bool {
				st := p.Stats()
				return st.InUse == 0 && st.Idle > 0
			})
			if _, err := chk.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "+proxyBackends, db); err != nil {
				t.Fatal(err)
			}
			pgtest.EventuallyTrue(t, 10*time.Second, "the server connections to be gone", func() bool {
				return len(tp.serverBackends(t, chk)) == 0
			})
			for i := range 3 {
				c := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
				var one int
				if err := c.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
					t.Fatalf("client %d after the server connections died: %d, %v", i, one, err)
				}
				c.Close(ctx)
			}
			if err := pgtest.Poll(5*time.Second, func() error {
				if n := tp.srv.Stats().LoopClients; n != 0 {
					return fmt.Errorf("%d loop clients left", n)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		})
	}
}
