package proxy_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

// A client that prepared a statement before a schema change changed its result
// type gets PostgreSQL's 0A000 once, also when another client's error already made
// the proxy prepare the statement anew, and never rows decoded with the old types.
// Its next execution works.
func TestPreparedStaleResultType(t *testing.T) {
	db := newDatabase(t)
	ctx := context.Background()
	chk := direct(t, db)
	if _, err := chk.Exec(ctx, "CREATE TABLE t (a int); INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	tp := startProxy(t, db, proxyOpts{PoolSize: 2})
	c1 := tp.connect(t, pgx.QueryExecModeCacheStatement)
	c2 := tp.connect(t, pgx.QueryExecModeCacheStatement)
	var v any
	for _, c := range []*pgx.Conn{c1, c2} {
		if err := c.QueryRow(ctx, "select * from t").Scan(&v); err != nil || v != int32(1) {
			t.Fatalf("before the change: %v (%T), %v", v, v, err)
		}
	}
	if _, err := chk.Exec(ctx, "ALTER TABLE t ALTER COLUMN a TYPE real"); err != nil {
		t.Fatal(err)
	}
	for i, c := range []*pgx.Conn{c1, c2} {
		v = nil
		if err := c.QueryRow(ctx, "select * from t").Scan(&v); pgCode(err) != "0A000" {
			t.Fatalf("client %d after the change: got %v (%T), err %v; want SQLSTATE 0A000 as from PostgreSQL", i+1, v, v, err)
		}
		for n := 0; n < 4; n++ { // on whichever backends come
			v = nil
			if err := c.QueryRow(ctx, "select * from t").Scan(&v); err != nil || v != float32(1) {
				t.Fatalf("client %d, execution %d after the error: %v (%T), %v; want float32 1", i+1, n+1, v, v, err)
			}
		}
	}
}

// A Parse the proxy answered without a backend whose statement does not parse
// leaves no name behind, as with PostgreSQL: the client can prepare the name again.
func TestPreparedDeferredParseError(t *testing.T) {
	db := newDatabase(t)
	ctx := context.Background()
	tp := startProxy(t, db, proxyOpts{PoolSize: 2})
	for _, side := range []string{"direct", "proxy"} {
		var c *pgx.Conn
		if side == "direct" {
			c = direct(t, db)
		} else {
			c = tp.connect(t, pgx.QueryExecModeSimpleProtocol)
		}
		pc := c.PgConn()
		if _, err := pc.Prepare(ctx, "bad", "selec 1", nil); pgCode(err) != "42601" {
			t.Fatalf("%s: prepare of a syntax error: %v, want 42601", side, err)
		}
		if _, err := pc.Prepare(ctx, "bad", "select 1", nil); err != nil {
			t.Fatalf("%s: prepare of the same name with valid text: %v", side, err)
		}
		res := pc.ExecPrepared(ctx, "bad", nil, nil, nil).Read()
		if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != "1" {
			t.Fatalf("%s: execute: %q %v", side, res.Rows, res.Err)
		}
		if _, err := c.Exec(ctx, "select 1"); err != nil {
			t.Fatalf("%s: connection unusable: %v", side, err)
		}
	}
}
