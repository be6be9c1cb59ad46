package proxy_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestSmoke(t *testing.T) {
	db := newDatabase(t)
	tp := startProxy(t, db, proxyOpts{})
	c := tp.connect(t, pgx.QueryExecModeSimpleProtocol)
	var n int
	if err := c.QueryRow(context.Background(), "select 41+1").Scan(&n); err != nil || n != 42 {
		t.Fatalf("got %d, %v", n, err)
	}
}
