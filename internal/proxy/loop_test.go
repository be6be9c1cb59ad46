package proxy_test

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
)

// TestLoopDriver runs the pgx workload of TestPgxTransactionMode with every
// query mode on the event-loop driver, and checks that the loop served the
// clients (the whole suite runs on it with PGSIDECAR_TEST_DRIVER=loop).
func TestLoopDriver(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the event loop is Linux-only")
	}
	db := newDatabase(t)
	tp := startProxy(t, db, proxyOpts{PoolSize: 2, Mode: proxy.ModeTransaction,
		Opt: proxy.Options{Driver: proxy.DriverLoop}})
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			table := "loop_" + strings.ReplaceAll(mode.String(), " ", "_")
			createTable(t, db, table)
			n := runWorkers(t, tp, mode, table, 10, 30)
			checkRows(t, db, table, n)
		})
	}
	c := tp.connect(t, pgx.QueryExecModeCacheStatement)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var one int
	if err := c.QueryRow(ctx, "select 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("select 1 = %d, %v", one, err)
	}
	if n := tp.srv.Stats().LoopClients; n != 1 {
		t.Fatalf("the loop serves %d clients, want 1", n)
	}
	c.Close(ctx)
	pgtest.EventuallyTrue(t, 10*time.Second, "the loop to let the client go", func() bool {
		return tp.srv.Stats().LoopClients == 0
	})
}
