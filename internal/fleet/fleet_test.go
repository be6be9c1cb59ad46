package fleet_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/fleet"
	"github.com/pgsidecar/pgsidecar/internal/localpg"
	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
)

// newShare starts a Share of the test fleet on cl.
func newShare(t *testing.T, cl *localpg.Cluster, budget, floor int, app string) *fleet.Share {
	t.Helper()
	return newShareOff(t, cl, budget, floor, app, nil)
}

// newShareOff is newShare whose coordination cannot connect while off is set.
func newShareOff(t *testing.T, cl *localpg.Cluster, budget, floor int, app string, off *atomic.Bool) *fleet.Share {
	t.Helper()
	cfg, err := pgconn.ParseConfig(cl.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["application_name"] = app
	s := fleet.New(fleet.Config{Budget: budget, Min: floor, Key: fleet.KeyOf("test", "postgres", "postgres"),
		Connect: func(ctx context.Context) (*pgconn.PgConn, error) {
			if off != nil && off.Load() {
				return nil, errors.New("off")
			}
			return pgconn.ConnectConfig(ctx, cfg)
		},
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	t.Cleanup(s.Close)
	return s
}

// heldInDB counts the fleet's slots in pg_locks.
func heldInDB(t *testing.T, admin *pgconn.PgConn) int {
	t.Helper()
	res := admin.ExecParams(context.Background(), `SELECT count(*)::int4 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2
AND classid::int8 = ($1::int4::int8 & 4294967295)`, [][]byte{[]byte(itoa(int(fleet.KeyOf("test", "postgres", "postgres"))))}, nil, nil, nil).Read()
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	return atoi(string(res.Rows[0][0]))
}

// Three sidecars share a budget of 3: the first takes all three slots, the
// second waits (its wake is not called, PostgreSQL holds 3 locks), gets one
// within a second of the first giving one back, and the floor of a third is
// taken at start once a slot is free. Slots are never more than 3 in
// pg_locks; a lost coordination connection makes the Share refuse new
// connections and report those above its floor as over, until it is back.
func TestShare(t *testing.T) {
	cl := pgtest.Start(t, localpg.Options{})
	admin, err := pgconn.Connect(context.Background(), cl.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())

	var aOff atomic.Bool
	a := newShareOff(t, cl, 3, 0, "fleet-a", &aOff)
	var aWoke, bWoke atomic.Int32
	take := func(s *fleet.Share, woke *atomic.Int32) bool { return s.Take(func() { woke.Add(1) }) }
	for i := 0; i < 3; i++ {
		pgtest.EventuallyTrue(t, 5*time.Second, "a takes a slot", func() bool { return take(a, &aWoke) })
	}
	if got := heldInDB(t, admin); got != 3 {
		t.Fatalf("pg_locks: %d slots, want 3", got)
	}
	b := newShare(t, cl, 3, 0, "fleet-b")
	if take(b, &bWoke) {
		t.Fatal("b took a slot of a full fleet")
	}
	pgtest.EventuallyTrue(t, 5*time.Second, "b counts failed attempts", func() bool { return b.Stats().AcquireFailures > 0 })
	if bWoke.Load() != 0 || heldInDB(t, admin) != 3 {
		t.Fatalf("b woken %d times, pg_locks %d, with the fleet full", bWoke.Load(), heldInDB(t, admin))
	}
	a.Give(1)
	pgtest.EventuallyTrue(t, 5*time.Second, "b is woken for the slot a gave back", func() bool { return bWoke.Load() > 0 })
	if !take(b, &bWoke) {
		t.Fatal("b woken, but Take refused")
	}
	if got := heldInDB(t, admin); got != 3 {
		t.Fatalf("pg_locks: %d slots, want 3", got)
	}
	if st := b.Stats(); st.Waits != 1 || st.Held != 1 || st.Used != 1 {
		t.Errorf("b: %+v, want one wait, one slot held and used", st)
	}

	// The floor of c: taken once a slot is free.
	c := newShare(t, cl, 3, 1, "fleet-c")
	a.Give(1)
	pgtest.EventuallyTrue(t, 5*time.Second, "c takes its floor", func() bool { return c.Stats().Held == 1 })
	if got := heldInDB(t, admin); got != 3 {
		t.Fatalf("pg_locks: %d slots, want 3", got)
	}

	// a's coordination connection is terminated: its locks are gone, it
	// refuses new connections, its one connection is over its floor (0).
	aOff.Store(true) // and it cannot reconnect for now
	res := admin.ExecParams(context.Background(), "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'fleet-a'", nil, nil, nil, nil).Read()
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	pgtest.EventuallyTrue(t, 5*time.Second, "a sees its coordination lost", func() bool { return a.Stats().CoordinationLost == 1 })
	if a.Over() != 1 || a.Take(func() {}) {
		t.Errorf("a without coordination: Over %d (want 1), or it granted a slot", a.Over())
	}
	// Back: its one connection is kept while it takes its slot back.
	aOff.Store(false)
	pgtest.EventuallyTrue(t, 10*time.Second, "a's coordination back, its slot retaken", func() bool {
		st := a.Stats()
		return st.Up && st.Held == 1 && a.Over() == 0
	})
	if got := heldInDB(t, admin); got > 3 {
		t.Fatalf("pg_locks: %d slots, more than the budget", got)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}
