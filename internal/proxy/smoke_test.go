package proxy_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
	"github.com/pgsidecar/pgsidecar/internal/wire"
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

// A client may send its first query with its startup packet, before the
// login's answer: the query is served, whatever part of it the login's small
// reader took in (growBuffers, toLoop), in both pool modes.
func TestQuerySentWithStartup(t *testing.T) {
	db := newDatabase(t)
	for _, mode := range []proxy.PoolMode{proxy.ModeTransaction, proxy.ModeSession} {
		tp := startProxy(t, db, proxyOpts{Mode: mode, PoolSize: 4})
		for _, pad := range []int{0, 600, 3000, 40000} {
			rc := pgtest.Dial(t, tp.addr)
			sql := "SELECT 41+1 /*" + strings.Repeat("x", pad) + "*/"
			b := wire.AppendStartup(nil, wire.ProtocolVersion30,
				wire.StartupParam{Name: "user", Value: "postgres"},
				wire.StartupParam{Name: "database", Value: db})
			rc.Send(wire.AppendQuery(b, sql))
			var got string
			for ready := 0; ready < 2; {
				typ, body, err := rc.Next(10 * time.Second)
				if err != nil {
					t.Fatalf("mode %v, %d bytes of padding: %v", mode, pad, err)
				}
				switch typ {
				case wire.MsgErrorResponse:
					t.Fatalf("mode %v, %d bytes of padding: %+v", mode, pad, wire.ParseError(body))
				case wire.MsgDataRow:
					got = string(body[6:]) // one column: count, length, value
				case wire.MsgReadyForQuery:
					ready++
				}
			}
			if got != "42" {
				t.Errorf("mode %v, %d bytes of padding: got %q, want 42", mode, pad, got)
			}
			rc.Conn.Close() // in session mode, its server connection goes back
		}
	}
}
