package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
)

// Tests of settings tracking in transaction mode (docs/design.md section 6): every
// client keeps its own settings (startup parameters, options=-c, committed SET /
// RESET / set_config) across backends, and no client ever sees another's. A crowd
// of clients without settings runs short transactions alongside and checks that
// it sees the cluster's defaults every time. PostgreSQL itself, on a direct
// connection doing the same, is the reference wherever it can be.

// gucView is what a client sees of the settings the tests change.
type gucView struct {
	StatementTimeout string
	SearchPath       string
	TimeZone         string
	User             string // current_user
	AppName          string
}

func (v gucView) String() string {
	return fmt.Sprintf("{statement_timeout=%q search_path=%q TimeZone=%q current_user=%q application_name=%q}",
		v.StatementTimeout, v.SearchPath, v.TimeZone, v.User, v.AppName)
}

// sameSettings compares all but the application name.
func (v gucView) sameSettings(w gucView) bool {
	v.AppName, w.AppName = "", ""
	return v == w
}

const viewSelect = "SELECT current_setting('statement_timeout'), current_setting('search_path'), " +
	"current_setting('TimeZone'), current_user::text, current_setting('application_name')"

const viewShows = "SHOW statement_timeout; SHOW search_path; SHOW TimeZone; SELECT current_user; SHOW application_name"

// viewVariants is how many ways readView has of reading the settings.
const viewVariants = 4

// readView reads the settings in one transaction, in one of viewVariants ways:
// 0 one SELECT in the connection's default mode, 1 an explicit transaction of
// SHOWs (pgx, the connection's default mode), 2 one simple-protocol Query of
// SHOWs (an implicit transaction), 3 one SELECT in the extended protocol.
func readView(ctx context.Context, c *pgx.Conn, variant int) (gucView, error) {
	var v gucView
	switch variant % viewVariants {
	case 0:
		err := c.QueryRow(ctx, viewSelect).Scan(&v.StatementTimeout, &v.SearchPath, &v.TimeZone, &v.User, &v.AppName)
		return v, err
	case 1:
		err := pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
			for _, x := range []struct {
				q   string
				dst *string
			}{
				{"SHOW statement_timeout", &v.StatementTimeout},
				{"SHOW search_path", &v.SearchPath},
				{"SHOW TimeZone", &v.TimeZone},
				{"SELECT current_user::text", &v.User},
				{"SHOW application_name", &v.AppName},
			} {
				if err := tx.QueryRow(ctx, x.q).Scan(x.dst); err != nil {
					return fmt.Errorf("%s: %w", x.q, err)
				}
			}
			return nil
		})
		return v, err
	case 2:
		res, err := c.PgConn().Exec(ctx, viewShows).ReadAll()
		if err != nil {
			return v, err
		}
		if len(res) != 5 {
			return v, fmt.Errorf("%d results for 5 statements", len(res))
		}
		dst := []*string{&v.StatementTimeout, &v.SearchPath, &v.TimeZone, &v.User, &v.AppName}
		for i, r := range res {
			if len(r.Rows) != 1 || len(r.Rows[0]) != 1 {
				return v, fmt.Errorf("result %d: %d rows", i, len(r.Rows))
			}
			*dst[i] = string(r.Rows[0][0])
		}
		return v, nil
	default:
		r := c.PgConn().ExecParams(ctx, viewSelect, nil, nil, nil, nil).Read()
		if r.Err != nil {
			return v, r.Err
		}
		if len(r.Rows) != 1 || len(r.Rows[0]) != 5 {
			return v, fmt.Errorf("unexpected answer: %d rows", len(r.Rows))
		}
		row := r.Rows[0]
		v = gucView{string(row[0]), string(row[1]), string(row[2]), string(row[3]), string(row[4])}
		return v, nil
	}
}

// proto is how a test sends its own statements.
type proto int

const (
	simpleProto   proto = iota // Query
	extendedProto              // Parse/Bind/Execute/Sync (unnamed statement)
)

func (p proto) String() string {
	if p == simpleProto {
		return "simple"
	}
	return "extended"
}

// run sends sql in protocol p and returns the first column of the first row of
// the (last) result ("" for none).
func run(ctx context.Context, c *pgconn.PgConn, p proto, sql string) (string, error) {
	if p == simpleProto {
		res, err := c.Exec(ctx, sql).ReadAll()
		if err != nil {
			return "", err
		}
		if n := len(res); n > 0 && len(res[n-1].Rows) > 0 && len(res[n-1].Rows[0]) > 0 {
			return string(res[n-1].Rows[0][0]), nil
		}
		return "", nil
	}
	r := c.ExecParams(ctx, sql, nil, nil, nil, nil).Read()
	if r.Err != nil {
		return "", r.Err
	}
	if len(r.Rows) > 0 && len(r.Rows[0]) > 0 {
		return string(r.Rows[0][0]), nil
	}
	return "", nil
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// clusterDefaults reads what a client without settings sees, on a direct
// connection, and checks that it is PostgreSQL's stock configuration.
func clusterDefaults(t *testing.T, db string) gucView {
	t.Helper()
	d := direct(t, db)
	v, err := readView(ctxT(t), d, 0)
	if err != nil {
		t.Fatal(err)
	}
	if v.StatementTimeout != "0" || v.SearchPath != `"$user", public` || v.User != "postgres" || v.TimeZone == "" {
		t.Fatalf("cluster defaults are not the stock ones: %v", v)
	}
	return v
}

// directWith is direct with startup parameters: the reference for a proxied
// client with the same ones. Its application_name is directAppName unless params
// give one.
func directWith(t testing.TB, db string, params map[string]string) *pgx.Conn {
	t.Helper()
	p := map[string]string{"application_name": directAppName}
	for k, v := range params {
		p[k] = v
	}
	return pgtest.Connect(t, cluster.URL(db), pgx.QueryExecModeSimpleProtocol, p)
}

// crowd is a group of clients without settings running short transactions
// through the proxy, each checking that it sees the cluster's defaults. Its
// transactions are the checks it made.
type crowd struct {
	*pgtest.Crowd
	sleeps atomic.Int64
}

// startCrowd starts n clients (alternately simple protocol and pgx's Exec mode)
// that check their settings equal want (application_name: never one of
// forbidApps) and, every sleepEvery transactions (0: never), that a
// pg_sleep(0.2) is not cut short by someone else's statement_timeout.
func startCrowd(t *testing.T, tp *testProxy, n int, want gucView, forbidApps []string, sleepEvery int) *crowd {
	t.Helper()
	conns := make([]*pgx.Conn, n)
	for i := range conns {
		mode := pgx.QueryExecModeSimpleProtocol
		if i%2 == 1 {
			mode = pgx.QueryExecModeExec
		}
		conns[i] = tp.connect(t, mode)
	}
	cr := &crowd{Crowd: pgtest.NewCrowd(t, "crowd")}
	for i, c := range conns {
		cr.Go(func(ctx context.Context, it int) error {
			return cr.check(ctx, c, i, it, want, forbidApps, sleepEvery)
		})
	}
	return cr
}

// check is one transaction of crowd client id: a failed read is its error; what
// it sees wrong is recorded and still counts as a check.
func (cr *crowd) check(ctx context.Context, c *pgx.Conn, id, it int, want gucView, forbidApps []string, sleepEvery int) error {
	variant := id + it
	v, err := readView(ctx, c, variant)
	if err != nil {
		return fmt.Errorf("crowd client %d, check %d (variant %d): %v", id, it, variant%viewVariants, err)
	}
	if !v.sameSettings(want) {
		cr.Failf("crowd client %d, check %d (variant %d): sees %v, want the defaults %v", id, it, variant%viewVariants, v, want)
	}
	for _, app := range forbidApps {
		if v.AppName == app {
			cr.Failf("crowd client %d, check %d: sees another client's application_name %q", id, it, app)
		}
	}
	// What the proxy told it at login must not have changed either.
	if got := c.PgConn().ParameterStatus("TimeZone"); got != want.TimeZone {
		cr.Failf("crowd client %d: ParameterStatus TimeZone = %q, want %q", id, got, want.TimeZone)
	}
	for _, app := range forbidApps {
		if c.PgConn().ParameterStatus("application_name") == app {
			cr.Failf("crowd client %d: ParameterStatus application_name = %q (another client's)", id, app)
		}
	}
	if sleepEvery > 0 && it%sleepEvery == sleepEvery-1 {
		if _, err := c.Exec(ctx, "SELECT pg_sleep(0.2)"); err != nil {
			cr.Failf("crowd client %d: pg_sleep(0.2): %v (SQLSTATE %s)", id, err, pgCode(err))
			return nil // the check itself was made
		}
		cr.sleeps.Add(1)
	}
	return nil
}

// finish waits until the crowd made at least minChecks checks (and minSleeps
// sleeps), stops it and reports what it saw.
func (cr *crowd) finish(t *testing.T, minChecks, minSleeps int64) {
	t.Helper()
	pgtest.Eventually(t, 20*time.Second, "crowd checks", func() error {
		if n, s := cr.Done(), cr.sleeps.Load(); n < minChecks || s < minSleeps {
			return fmt.Errorf("%d checks, %d sleeps", n, s)
		}
		return nil
	})
	cr.Finish(t)
	t.Logf("crowd: %d sleeps", cr.sleeps.Load())
}

// setupSchemaAndRole creates a_schema in db and the cluster-wide role app_role,
// granted to postgres.
func setupSchemaAndRole(t *testing.T, db string) {
	t.Helper()
	d := direct(t, db)
	ctx := ctxT(t)
	for _, q := range []string{
		"CREATE SCHEMA a_schema",
		"CREATE TABLE a_schema.marker (x int)",
		`DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app_role') THEN CREATE ROLE app_role; END IF; END $$`,
		"GRANT app_role TO postgres",
		"GRANT USAGE ON SCHEMA a_schema TO app_role",
	} {
		if _, err := d.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// TestStateSettingsSetSession: a client's SETs follow it from backend to backend,
// through 50 transactions in both protocols, and the crowd never sees them.
func TestStateSettingsSetSession(t *testing.T) {
	db := newDatabase(t)
	setupSchemaAndRole(t, db)
	tp, cr, _ := startSettingsProxy(t, db, nil, 30)

	sets := []string{
		"SET statement_timeout = '50ms'",
		"SET search_path = a_schema, public",
		"SET TIME ZONE 'Asia/Tokyo'",
		"SET ROLE app_role",
	}
	// PostgreSQL's own answer.
	ref := direct(t, db)
	ctx := ctxT(t)
	for _, q := range sets {
		if _, err := run(ctx, ref.PgConn(), simpleProto, q); err != nil {
			t.Fatalf("direct: %s: %v", q, err)
		}
	}
	want, err := readView(ctx, ref, 0)
	if err != nil {
		t.Fatal(err)
	}
	if want.StatementTimeout != "50ms" || want.SearchPath != "a_schema, public" || want.TimeZone != "Asia/Tokyo" || want.User != "app_role" {
		t.Fatalf("direct connection after the SETs: %v", want)
	}

	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
		p := simpleProto
		if mode == pgx.QueryExecModeExec {
			p = extendedProto
		}
		t.Run(mode.String(), func(t *testing.T) {
			ctx := ctxT(t)
			a := tp.connect(t, mode)
			before := tp.srv.Replays()
			for _, q := range sets {
				if _, err := run(ctx, a.PgConn(), p, q); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			pids := map[string]bool{}
			timeouts, wrong := 0, 0
			for i := range 50 {
				v, err := readView(ctx, a, i)
				if err != nil {
					t.Fatalf("transaction %d (variant %d): %v", i, i%viewVariants, err)
				}
				if !v.sameSettings(want) {
					if wrong++; wrong <= 3 {
						t.Errorf("transaction %d (variant %d): client sees %v, want %v", i, i%viewVariants, v, want)
					}
				}
				pid, err := run(ctx, a.PgConn(), p, "SELECT pg_backend_pid()")
				if err != nil {
					t.Fatalf("pg_backend_pid: %v", err)
				}
				pids[pid] = true
				if i%10 == 9 {
					_, err := run(ctx, a.PgConn(), p, "SELECT pg_sleep(0.2)")
					if pgCode(err) != "57014" {
						t.Errorf("transaction %d: pg_sleep(0.2) with statement_timeout 50ms: %v, want SQLSTATE 57014", i, err)
					} else {
						timeouts++
					}
				}
			}
			if wrong > 0 {
				t.Errorf("the client saw wrong settings in %d of 50 transactions", wrong)
			}
			t.Logf("client used %d backends; %d statement timeouts; %d replays during its run", len(pids), timeouts, tp.srv.Replays()-before)
			if len(pids) < 2 {
				t.Logf("warning: the client never changed backends: replay not exercised")
			}
		})
	}
	cr.finish(t, 100, 6)
	t.Logf("replays: %d", tp.srv.Replays())
}

// startupParams are the startup parameters TestStateSettingsStartup and others
// give a client.
func startupParams() map[string]string {
	return map[string]string{
		"options":          "-c statement_timeout=1234 -c search_path=a_schema,public",
		"TimeZone":         "UTC",
		"application_name": "myapp",
	}
}

// TestStateSettingsStartup: startup parameters (options=-c and plain ones) are the
// client's settings on every backend it uses, as on a direct connection.
func TestStateSettingsStartup(t *testing.T) {
	db := newDatabase(t)
	setupSchemaAndRole(t, db)
	tp, cr, _ := startSettingsProxy(t, db, []string{"myapp"}, 0)

	ctx := ctxT(t)
	want, err := readView(ctx, directWith(t, db, startupParams()), 0)
	if err != nil {
		t.Fatal(err)
	}
	if want != (gucView{"1234ms", "a_schema,public", "UTC", "postgres", "myapp"}) {
		t.Fatalf("direct connection with the startup parameters: %v", want)
	}
	chk := direct(t, db)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
		t.Run(mode.String(), func(t *testing.T) {
			ctx := ctxT(t)
			c := pgtest.Connect(t, tp.URL(), mode, startupParams())
			for _, k := range []string{"TimeZone", "application_name"} {
				if got, w := c.PgConn().ParameterStatus(k), map[string]string{"TimeZone": "UTC", "application_name": "myapp"}[k]; got != w {
					t.Errorf("ParameterStatus %s at login = %q, want %q", k, got, w)
				}
			}
			pids := map[string]bool{}
			for i := range 40 {
				v, err := readView(ctx, c, i)
				if err != nil {
					t.Fatalf("transaction %d: %v", i, err)
				}
				if v != want {
					t.Errorf("transaction %d (variant %d): client sees %v, want %v", i, i%viewVariants, v, want)
				}
				pid, err := run(ctx, c.PgConn(), simpleProto, "SELECT pg_backend_pid()")
				if err != nil {
					t.Fatal(err)
				}
				pids[pid] = true
			}
			t.Logf("client used %d backends", len(pids))

			// The backend serving it carries its application_name meanwhile.
			marker := "state_settings_marker_" + strings.ReplaceAll(mode.String(), " ", "_")
			seen := false
			for attempt := 0; attempt < 5 && !seen; attempt++ {
				done := make(chan error, 1)
				go func() {
					_, err := c.Exec(ctx, "SELECT pg_sleep(0.3) /* "+marker+" */")
					done <- err
				}()
				finished := false
				for !seen && !finished {
					var app string
					err := chk.QueryRow(ctx,
						`SELECT application_name FROM pg_stat_activity WHERE datname = $1 AND state = 'active'
						 AND pid <> pg_backend_pid() AND query LIKE '%' || $2 || '%'`, db, marker).Scan(&app)
					switch {
					case err == nil:
						seen = true
						if app != "myapp" {
							t.Errorf("pg_stat_activity: the backend running the client's pg_sleep has application_name %q, want myapp", app)
						}
					case errors.Is(err, pgx.ErrNoRows):
						select {
						case err := <-done:
							finished = true
							if err != nil {
								t.Fatalf("pg_sleep(0.3): %v", err)
							}
						case <-time.After(20 * time.Millisecond):
						}
					default:
						t.Fatal(err)
					}
				}
				if !finished {
					if err := <-done; err != nil {
						t.Fatalf("pg_sleep(0.3): %v", err)
					}
				}
			}
			if !seen {
				t.Errorf("the client's pg_sleep(0.3) never showed in pg_stat_activity in 5 attempts")
			}
		})
	}
	cr.finish(t, 100, 0)
	t.Logf("replays: %d", tp.srv.Replays())
}

// step is one statement of a scenario; wantErr says it must fail.
type step struct {
	sql     string
	wantErr bool
}

// runBoth runs steps on the proxied client and on the direct reference, checks
// that they fail alike, and then compares what both see in a new transaction.
// label names the scenario in failures.
func runBoth(t *testing.T, label string, p proto, c, ref *pgx.Conn, steps []step) gucView {
	t.Helper()
	ctx := ctxT(t)
	for _, s := range steps {
		got, err := run(ctx, c.PgConn(), p, s.sql)
		want, rerr := run(ctx, ref.PgConn(), p, s.sql)
		if (err != nil) != (rerr != nil) || pgCode(err) != pgCode(rerr) {
			t.Fatalf("%s: %s: through the proxy %v, directly %v", label, s.sql, err, rerr)
		}
		if (err != nil) != s.wantErr {
			t.Fatalf("%s: %s: error %v, want error %v", label, s.sql, err, s.wantErr)
		}
		if err == nil && got != want {
			t.Errorf("%s: %s: answers %q through the proxy, %q directly", label, s.sql, got, want)
		}
	}
	return compareNext(t, label, c, ref)
}

// compareNext reads the settings in new transactions of both connections (every
// way readView has) and reports differences; it returns the reference's view.
func compareNext(t *testing.T, label string, c, ref *pgx.Conn) gucView {
	t.Helper()
	ctx := ctxT(t)
	want, err := readView(ctx, ref, 0)
	if err != nil {
		t.Fatalf("%s: direct: %v", label, err)
	}
	for variant := range viewVariants {
		got, err := readView(ctx, c, variant)
		if err != nil {
			t.Fatalf("%s: read back (variant %d): %v", label, variant, err)
		}
		if !got.sameSettings(want) || (want.AppName != directAppName && got.AppName != want.AppName) {
			t.Errorf("%s: next transaction (variant %d) sees %v through the proxy, %v directly", label, variant, got, want)
		}
	}
	return want
}

// TestStateSettingsReset: RESET, SET ... TO DEFAULT and RESET ALL return the
// client's startup values, as on a direct connection with the same startup
// parameters.
func TestStateSettingsReset(t *testing.T) {
	db := newDatabase(t)
	setupSchemaAndRole(t, db)
	tp, cr, _ := startSettingsProxy(t, db, []string{"myapp", "otherapp"}, 0)

	for _, p := range []proto{simpleProto, extendedProto} {
		t.Run(p.String(), func(t *testing.T) {
			c, ref := startupTimeoutPair(t, tp, db)
			for round := range 3 {
				l := fmt.Sprintf("round %d", round)
				v := runBoth(t, l+" SET 99", p, c, ref, []step{{sql: "SET statement_timeout = 99"}})
				if v.StatementTimeout != "99ms" {
					t.Fatalf("direct: %v", v)
				}
				v = runBoth(t, l+" RESET", p, c, ref, []step{{sql: "RESET statement_timeout"}})
				if v.StatementTimeout != "1234ms" {
					t.Fatalf("direct after RESET: %v", v)
				}
				runBoth(t, l+" SET 98", p, c, ref, []step{{sql: "SET statement_timeout = 98"}})
				v = runBoth(t, l+" SET TO DEFAULT", p, c, ref, []step{{sql: "SET statement_timeout TO DEFAULT"}})
				if v.StatementTimeout != "1234ms" {
					t.Fatalf("direct after SET TO DEFAULT: %v", v)
				}
				runBoth(t, l+" SET 97", p, c, ref, []step{{sql: "SET statement_timeout = 97"}})
				runBoth(t, l+" RESET in a transaction", p, c, ref, []step{
					{sql: "BEGIN"}, {sql: "RESET statement_timeout"}, {sql: "SHOW statement_timeout"}, {sql: "COMMIT"},
				})
			}

			c2 := pgtest.Connect(t, tp.URL(), pgx.QueryExecModeSimpleProtocol, startupParams())
			ref2 := directWith(t, db, startupParams())
			for round := range 3 {
				l := fmt.Sprintf("round %d", round)
				v := runBoth(t, l+" SETs", p, c2, ref2, []step{
					{sql: "SET statement_timeout = 4444"},
					{sql: "SET search_path = public"},
					{sql: "SET TIME ZONE 'Asia/Tokyo'"},
					{sql: "SET application_name = otherapp"},
				})
				if v != (gucView{"4444ms", "public", "Asia/Tokyo", "postgres", "otherapp"}) {
					t.Fatalf("direct after the SETs: %v", v)
				}
				v = runBoth(t, l+" RESET ALL", p, c2, ref2, []step{{sql: "RESET ALL"}})
				if v != (gucView{"1234ms", "a_schema,public", "UTC", "postgres", "myapp"}) {
					t.Fatalf("direct after RESET ALL: %v", v)
				}
			}
		})
	}
	cr.finish(t, 100, 0)
	t.Logf("replays: %d", tp.srv.Replays())
}

// TestStateSettingsSetLocal: SET LOCAL and set_config(..., true) end with their
// transaction; the session value comes back.
func TestStateSettingsSetLocal(t *testing.T) {
	db := newDatabase(t)
	tp, cr, _ := startSettingsProxy(t, db, nil, 0)

	eachProto(t, tp, db, func(t *testing.T, p proto, c, ref *pgx.Conn) {
		for round := range 3 {
			l := fmt.Sprintf("round %d", round)
			v := runBoth(t, l+" session SET", p, c, ref, []step{{sql: "SET statement_timeout = 4321"}})
			if v.StatementTimeout != "4321ms" {
				t.Fatalf("direct: %v", v)
			}
			ctx := ctxT(t)
			for _, q := range []string{"BEGIN", "SET LOCAL statement_timeout = 77"} {
				if _, err := run(ctx, c.PgConn(), p, q); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			if got, err := run(ctx, c.PgConn(), p, "SHOW statement_timeout"); err != nil || got != "77ms" {
				t.Errorf("%s: SHOW after SET LOCAL in the transaction: %q, %v; want 77ms", l, got, err)
			}
			if _, err := run(ctx, c.PgConn(), p, "COMMIT"); err != nil {
				t.Fatal(err)
			}
			v = compareNext(t, l+" after SET LOCAL", c, ref)
			if v.StatementTimeout != "4321ms" {
				t.Fatalf("direct: %v", v)
			}
			runBoth(t, l+" SET LOCAL then SET", p, c, ref, []step{
				{sql: "BEGIN"}, {sql: "SET LOCAL statement_timeout = 78"}, {sql: "SET statement_timeout = 5555"},
				{sql: "SET LOCAL statement_timeout = 79"}, {sql: "SHOW statement_timeout"}, {sql: "COMMIT"},
			})
			runBoth(t, l+" SET then SET LOCAL", p, c, ref, []step{
				{sql: "BEGIN"}, {sql: "SET statement_timeout = 6666"}, {sql: "SET LOCAL statement_timeout = 80"},
				{sql: "SHOW statement_timeout"}, {sql: "COMMIT"},
			})
			runBoth(t, l+" SET LOCAL outside a transaction", p, c, ref, []step{{sql: "SET LOCAL statement_timeout = 55"}})
			runBoth(t, l+" set_config local in a transaction", p, c, ref, []step{
				{sql: "BEGIN"}, {sql: "SELECT set_config('statement_timeout', '88', true)"},
				{sql: "SHOW statement_timeout"}, {sql: "COMMIT"},
			})
			runBoth(t, l+" SET LOCAL TIME ZONE", p, c, ref, []step{
				{sql: "BEGIN"}, {sql: "SET LOCAL TIME ZONE 'Asia/Tokyo'"}, {sql: "SET LOCAL search_path = x_schema"},
				{sql: "SHOW TimeZone"}, {sql: "COMMIT"},
			})
		}
	})
	cr.finish(t, 100, 0)
	t.Logf("replays: %d", tp.srv.Replays())
}

// scenario is a sequence of statements and what PostgreSQL is expected to show
// after it.
type scenario struct {
	name  string
	steps []step
	want  func(v gucView) bool
}

// TestStateSettingsRollback: a SET that is rolled back (ROLLBACK, a failed
// transaction, ROLLBACK TO SAVEPOINT, an implicit transaction that fails) leaves
// the session value, exactly as PostgreSQL does.
func TestStateSettingsRollback(t *testing.T) {
	db := newDatabase(t)
	setupSchemaAndRole(t, db)
	tp, cr, defaults := startSettingsProxy(t, db, nil, 0)

	eachProto(t, tp, db, func(t *testing.T, p proto, c, ref *pgx.Conn) {
		base := runBoth(t, "baseline", p, c, ref, []step{{sql: "SET search_path = a_schema, public"}})
		if base.SearchPath != "a_schema, public" {
			t.Fatalf("direct: %v", base)
		}
		scenarios := []scenario{
			{"BEGIN; SET; ROLLBACK", []step{{sql: "BEGIN"}, {sql: "SET search_path = x_schema"}, {sql: "ROLLBACK"}},
				func(v gucView) bool { return v.SearchPath == "a_schema, public" }},
			{"BEGIN; SET; error; ROLLBACK", []step{{sql: "BEGIN"}, {sql: "SET search_path = x_schema"},
				{sql: "SELECT 1/0", wantErr: true}, {sql: "ROLLBACK"}},
				func(v gucView) bool { return v.SearchPath == "a_schema, public" }},
			{"BEGIN; SET; error; COMMIT", []step{{sql: "BEGIN"}, {sql: "SET TIME ZONE 'Asia/Tokyo'"},
				{sql: "SELECT 1/0", wantErr: true}, {sql: "COMMIT"}},
				func(v gucView) bool { return v.TimeZone == defaults.TimeZone }},
			{"SAVEPOINT; SET; ROLLBACK TO; COMMIT", []step{{sql: "BEGIN"}, {sql: "SAVEPOINT s"},
				{sql: "SET search_path = x_schema"}, {sql: "ROLLBACK TO s"}, {sql: "COMMIT"}},
				func(v gucView) bool { return v.SearchPath == "a_schema, public" }},
			{"SET; SAVEPOINT; SET; ROLLBACK TO; COMMIT", []step{{sql: "BEGIN"}, {sql: "SET search_path = y_schema"},
				{sql: "SAVEPOINT s"}, {sql: "SET search_path = x_schema"}, {sql: "ROLLBACK TO s"}, {sql: "COMMIT"}},
				func(v gucView) bool { return v.SearchPath == "y_schema" }},
			{"SAVEPOINT; SET; RELEASE; COMMIT", []step{{sql: "BEGIN"}, {sql: "SAVEPOINT s"},
				{sql: "SET statement_timeout = 3333"}, {sql: "RELEASE s"}, {sql: "COMMIT"}},
				func(v gucView) bool { return v.StatementTimeout == "3333ms" }},
			{"SAVEPOINT; SET; error; ROLLBACK TO; COMMIT", []step{{sql: "BEGIN"}, {sql: "SAVEPOINT s"},
				{sql: "SET statement_timeout = 2222"}, {sql: "SELECT 1/0", wantErr: true}, {sql: "ROLLBACK TO s"}, {sql: "COMMIT"}},
				func(v gucView) bool { return v.StatementTimeout == "3333ms" }},
			{"failing SET outside a transaction", []step{{sql: "SET statement_timeout = 'bogus'", wantErr: true}},
				func(v gucView) bool { return v.StatementTimeout == "3333ms" }},
			{"back to the baseline", []step{{sql: "SET search_path = a_schema, public"}, {sql: "RESET statement_timeout"}},
				func(v gucView) bool {
					return v.sameSettings(gucView{"0", "a_schema, public", defaults.TimeZone, "postgres", ""})
				}},
		}
		if p == simpleProto {
			scenarios = append(scenarios, scenario{"implicit transaction: SET; error", []step{{sql: "SET search_path = x_schema; SET statement_timeout = 1111; SELECT 1/0", wantErr: true}},
				func(v gucView) bool { return v.SearchPath == "a_schema, public" && v.StatementTimeout == "0" }},
			)
		}
		for round := range 2 {
			for _, sc := range scenarios {
				l := fmt.Sprintf("round %d: %s", round, sc.name)
				if v := runBoth(t, l, p, c, ref, sc.steps); !sc.want(v) {
					t.Fatalf("%s: PostgreSQL shows %v, not what the test expects", l, v)
				}
			}
		}
	})
	cr.finish(t, 100, 0)
	t.Logf("replays: %d", tp.srv.Replays())
}

// TestStateSettingsSetConfig: set_config(name, value, false) in a SELECT persists
// like SET; set_config(..., true) does not.
func TestStateSettingsSetConfig(t *testing.T) {
	db := newDatabase(t)
	tp, cr, defaults := startSettingsProxy(t, db, nil, 0)

	eachProto(t, tp, db, func(t *testing.T, p proto, c, ref *pgx.Conn) {
		for round := range 3 {
			l := fmt.Sprintf("round %d", round)
			v := runBoth(t, l+" set_config false", p, c, ref, []step{{sql: "SELECT set_config('statement_timeout', '321', false)"}})
			if v.StatementTimeout != "321ms" {
				t.Fatalf("direct: %v", v)
			}
			v = runBoth(t, l+" set_config true", p, c, ref, []step{{sql: "SELECT set_config('statement_timeout', '654', true)"}})
			if v.StatementTimeout != "321ms" {
				t.Fatalf("direct: %v", v)
			}
			v = runBoth(t, l+" set_config true in a transaction", p, c, ref, []step{
				{sql: "BEGIN"}, {sql: "SELECT set_config('statement_timeout', '655', true)"},
				{sql: "SHOW statement_timeout"}, {sql: "COMMIT"},
			})
			if v.StatementTimeout != "321ms" {
				t.Fatalf("direct: %v", v)
			}
			v = runBoth(t, l+" set_config false rolled back", p, c, ref, []step{
				{sql: "BEGIN"}, {sql: "SELECT set_config('search_path', 'z_schema', false)"}, {sql: "ROLLBACK"},
			})
			if v.SearchPath != defaults.SearchPath {
				t.Fatalf("direct: %v", v)
			}
			v = runBoth(t, l+" set_config false among other columns", p, c, ref, []step{
				{sql: "SELECT 1, pg_catalog.set_config('search_path', 'z_schema, public', false), 2"},
			})
			if v.SearchPath != "z_schema, public" {
				t.Fatalf("direct: %v", v)
			}
			v = runBoth(t, l+" back", p, c, ref, []step{
				{sql: "SELECT set_config('search_path', '\"$user\", public', false)"},
				{sql: "SELECT set_config('statement_timeout', '0', false)"},
			})
			if !v.sameSettings(defaults) {
				t.Fatalf("direct: %v", v)
			}
		}
	})
	cr.finish(t, 100, 0)
	t.Logf("replays: %d", tp.srv.Replays())
}
