package metrics_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgsidecar/pgsidecar/internal/metrics"
	"github.com/pgsidecar/pgsidecar/internal/pool"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
)

func TestCollector(t *testing.T) {
	down := errors.New("database is down")
	reg := pool.NewRegistry(func(pool.Key) *pool.Pool {
		return pool.New(pool.Config{Size: 7, Dial: func(context.Context) (*pool.Backend, error) { return nil, down }})
	})
	defer reg.Close()
	p := reg.Get(pool.Key{Database: "app", User: "worker"})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := p.Acquire(ctx); !errors.Is(err, pool.ErrDial) {
		t.Fatalf("acquire: %v, want ErrDial", err)
	}
	c := metrics.NewCollector(reg, proxy.NewServer(proxy.Options{}, reg))
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
	want := `
# HELP pgsidecar_pool_size Configured maximum of server connections of the pool.
# TYPE pgsidecar_pool_size gauge
pgsidecar_pool_size{database="app",user="worker"} 7
# HELP pgsidecar_server_connect_failures_total Failed attempts to open a server connection.
# TYPE pgsidecar_server_connect_failures_total counter
pgsidecar_server_connect_failures_total{database="app",user="worker"} 1
# HELP pgsidecar_client_connections_open Connected clients (logged in or logging in).
# TYPE pgsidecar_client_connections_open gauge
pgsidecar_client_connections_open 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want),
		"pgsidecar_pool_size", "pgsidecar_server_connect_failures_total", "pgsidecar_client_connections_open"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(c, "pgsidecar_client_errors_total"); n != 5 {
		t.Errorf("client_errors_total: %d reasons, want 5", n)
	}
	if v := p.Stats().DialTime; v <= 0 {
		t.Errorf("DialTime after a failed dial = %v, want > 0", v)
	}
}
