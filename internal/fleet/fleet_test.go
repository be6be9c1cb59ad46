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
	aU, bU := &fakeUser{}, &fakeUser{}
	aU.want.Store(true)
	for i := 0; i < 3; i++ {
		pgtest.EventuallyTrue(t, 5*time.Second, "a takes a slot", func() bool { return a.Take(aU) })
	}
	aU.want.Store(false)
	if got := heldInDB(t, admin); got != 3 {
		t.Fatalf("pg_locks: %d slots, want 3", got)
	}
	b := newShare(t, cl, 3, 0, "fleet-b")
	bU.want.Store(true)
	if b.Take(bU) {
		t.Fatal("b took a slot of a full fleet")
	}
	pgtest.EventuallyTrue(t, 5*time.Second, "b counts failed attempts", func() bool { return b.Stats().AcquireFailures > 0 })
	if bU.woke.Load() != 0 || heldInDB(t, admin) != 3 {
		t.Fatalf("b woken %d times, pg_locks %d, with the fleet full", bU.woke.Load(), heldInDB(t, admin))
	}
	a.Give(1)
	pgtest.EventuallyTrue(t, 5*time.Second, "b is woken for the slot a gave back", func() bool { return bU.woke.Load() > 0 })
	if !b.Take(bU) {
		t.Fatal("b woken, but Take refused")
	}
	bU.want.Store(false)
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
	if a.Over() != 1 || a.Take(&fakeUser{}) {
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

// fakeUser is a pool as a Share sees it: Wanting while want is set; Wake
// counts.
type fakeUser struct {
	want atomic.Bool
	woke atomic.Int32
}

func (u *fakeUser) Wake()         { u.woke.Add(1) }
func (u *fakeUser) Wanting() bool { return u.want.Load() }

// A sidecar below its floor gets a slot from one above its own: it takes
// the hunger lock, the other sees it at its next check, reports one
// connection over (its pool closes one as it is released), frees the slot,
// and the hungry one takes it. A demand that went away (the pool no longer
// Wanting) leaves no extra slot held.
func TestShareFloor(t *testing.T) {
	cl := pgtest.Start(t, localpg.Options{})
	busy := newShare(t, cl, 2, 0, "fleet-busy")
	u := &fakeUser{}
	u.want.Store(true)
	for i := 0; i < 2; i++ {
		pgtest.EventuallyTrue(t, 5*time.Second, "busy takes a slot", func() bool { return busy.Take(u) })
	}
	// Still Wanting a third (the fleet is full), then not any more: the
	// stale demand must not keep a slot.
	if busy.Take(u) {
		t.Fatal("a third slot of a budget of 2")
	}
	u.want.Store(false)

	late := newShare(t, cl, 2, 1, "fleet-late")
	pgtest.EventuallyTrue(t, 5*time.Second, "busy is asked to give one up", func() bool { return busy.Over() == 1 })
	busy.Give(1) // its pool closed one as it came back
	pgtest.EventuallyTrue(t, 5*time.Second, "the late sidecar holds its floor", func() bool { return late.Stats().Held == 1 })
	if st := busy.Stats(); st.Held != 1 || st.Used != 1 {
		t.Errorf("busy after giving one up: %+v, want 1 held and used", st)
	}
	// No more giving up once nobody starves.
	pgtest.EventuallyTrue(t, 5*time.Second, "busy keeps its last slot", func() bool {
		return busy.Over() == 0 && busy.Stats().Held == 1
	})
}
