package proxy_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/lib/pq"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
)

// openLibPQ opens a database/sql pool of lib/pq connections through the proxy.
func openLibPQ(t *testing.T, url string) *sql.DB {
	t.Helper()
	db, err := sql.Open("postgres", url)
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(20)
	t.Cleanup(func() { db.Close() })
	return db
}

// TestLibPQ runs lib/pq (database/sql) through a transaction-mode proxy with 2
// backends and 20 client connections.
func TestLibPQ(t *testing.T) {
	sqldb := newDatabase(t)
	chk := direct(t, sqldb)
	if _, err := chk.Exec(context.Background(), `CREATE TABLE items(id int PRIMARY KEY, g int NOT NULL, v text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	tp := startProxy(t, sqldb, proxyOpts{PoolSize: 2, Mode: proxy.ModeTransaction})

	// Explicit transactions: INSERT and SELECT with parameters (lib/pq runs each as
	// Parse/Describe/Sync + Bind/Execute/Sync, both inside the transaction), then
	// Commit, or Rollback for every 10th.
	t.Run("transactions", func(t *testing.T) {
		const (
			goroutines = 10
			perG       = 50
		)
		db := openLibPQ(t, tp.URL())
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		start := time.Now()
		var (
			wg        sync.WaitGroup
			mu        sync.Mutex
			committed []int
		)
		for g := range goroutines {
			wg.Go(func() {
				mine := 0 // rows of this goroutine committed so far
				for i := range perG {
					id := g*1000 + i
					rollback := i%10 == 9
					if err := libpqTx(ctx, db, g, id, mine, rollback); err != nil {
						t.Errorf("goroutine %d, transaction %d: %v", g, i, err)
						return
					}
					if !rollback {
						mine++
						mu.Lock()
						committed = append(committed, id)
						mu.Unlock()
					}
				}
			})
		}
		wg.Wait()
		elapsed := time.Since(start)
		if t.Failed() {
			return
		}

		rows, err := chk.Query(context.Background(), `SELECT id FROM items ORDER BY id`)
		if err != nil {
			t.Fatal(err)
		}
		got, err := pgx.CollectRows(rows, pgx.RowTo[int])
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(committed)
		if want := goroutines * perG * 9 / 10; len(committed) != want {
			t.Fatalf("%d transactions committed, want %d", len(committed), want)
		}
		if !slices.Equal(got, committed) {
			var extra, missing []int
			for _, id := range got {
				if _, found := slices.BinarySearch(committed, id); !found {
					extra = append(extra, id)
				}
			}
			for _, id := range committed {
				if _, found := slices.BinarySearch(got, id); !found {
					missing = append(missing, id)
				}
			}
			t.Errorf("table has %d rows, want the %d committed: present but rolled back %v, committed but missing %v",
				len(got), len(committed), extra, missing)
		}
		checkLibPQBackends(t, tp, chk, 2)
		t.Logf("%d transactions (%d committed) in %s", goroutines*perG, len(committed), elapsed.Round(time.Millisecond))
	})

	// Parameterized queries outside a transaction. lib/pq v1.12 sends
	// Parse(unnamed)/Describe/Sync, waits for the answer, then Bind/Execute/Sync. The
	// proxy keeps the backend attached from a Parse of the unnamed statement to its
	// Bind, so the Bind never lands on another backend (where the unnamed statement
	// would be missing, or another client's). Each goroutine uses its own statement
	// text so that running another client's statement shows as a wrong result.
	t.Run("params outside transaction", func(t *testing.T) {
		r := libpqParamQueries(t, tp.URL())
		if r.other != nil {
			t.Fatalf("unexpected failure (%d of %d queries): %v", r.otherN, r.total, r.other)
		}
		if r.limitation() > 0 {
			t.Fatalf("a Bind ran on a backend without this client's unnamed statement: %s", r.describe())
		}
		t.Logf("%d parameterized queries outside transactions, all correct", r.total)
	})

	// With binary_parameters=yes lib/pq sends Parse/Bind/Describe/Execute/Sync in one
	// batch, which transaction pooling must serve correctly.
	t.Run("params outside transaction, binary_parameters", func(t *testing.T) {
		r := libpqParamQueries(t, tp.URL()+"&binary_parameters=yes")
		if r.other != nil || r.limitation() > 0 {
			t.Fatalf("%s; %d failed otherwise: %v", r.describe(), r.otherN, r.other)
		}
		t.Logf("%d parameterized queries outside transactions, all correct", r.total)
	})
}

// libpqTx runs one explicit transaction of goroutine g: it inserts row id, reads it
// back, checks that it sees its own committed rows plus the new one, and commits or
// rolls back.
func libpqTx(ctx context.Context, db *sql.DB, g, id, mine int, rollback bool) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback() // no-op after Commit
	v := fmt.Sprintf("g%d-id%d", g, id)
	res, err := tx.ExecContext(ctx, `INSERT INTO items(id, g, v) VALUES ($1, $2, $3)`, id, g, v)
	if err != nil {
		return fmt.Errorf("insert: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil || n != 1 {
		return fmt.Errorf("insert: %d rows affected, %v", n, err)
	}
	var gotG int
	var gotV string
	if err := tx.QueryRowContext(ctx, `SELECT g, v FROM items WHERE id = $1`, id).Scan(&gotG, &gotV); err != nil {
		return fmt.Errorf("select back: %w", err)
	}
	if gotG != g || gotV != v {
		return fmt.Errorf("select back: got (%d, %q), want (%d, %q)", gotG, gotV, g, v)
	}
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM items WHERE g = $1 AND v LIKE $2`, g, "g%").Scan(&n); err != nil {
		return fmt.Errorf("count: %w", err)
	}
	if n != mine+1 {
		return fmt.Errorf("transaction sees %d rows of its goroutine, want %d (%d committed + its own)", n, mine+1, mine)
	}
	if rollback {
		if err := tx.Rollback(); err != nil {
			return fmt.Errorf("rollback: %w", err)
		}
		return nil
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

type libpqParamResult struct {
	total                    int
	missing, mismatch, wrong int // the known-limitation symptoms
	missingEx, mismatchEx    string
	wrongEx                  string
	otherN                   int
	other                    error
}

func (r *libpqParamResult) limitation() int { return r.missing + r.mismatch + r.wrong }

// describe summarizes the known-limitation symptoms seen.
func (r *libpqParamResult) describe() string {
	parts := []string{fmt.Sprintf("of %d queries", r.total)}
	if r.wrong > 0 {
		parts = append(parts, fmt.Sprintf("%d SILENTLY RETURNED ANOTHER CLIENT'S STATEMENT'S RESULT (e.g. %s)", r.wrong, r.wrongEx))
	}
	if r.missing > 0 {
		parts = append(parts, fmt.Sprintf("%d failed with SQLSTATE 26000 (e.g. %q)", r.missing, r.missingEx))
	}
	if r.mismatch > 0 {
		parts = append(parts, fmt.Sprintf("%d failed with a Bind/statement mismatch (e.g. %q)", r.mismatch, r.mismatchEx))
	}
	if len(parts) == 1 {
		parts = append(parts, "none hit the limitation")
	}
	return strings.Join(parts, ", ")
}

// libpqParamQueries runs 10 goroutines x 50 parameterized queries outside any
// transaction, each goroutine with its own statement text, and classifies the
// outcomes.
func libpqParamQueries(t *testing.T, url string) *libpqParamResult {
	t.Helper()
	const (
		goroutines = 10
		perG       = 50
	)
	db := openLibPQ(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var (
		mu sync.Mutex
		r  libpqParamResult
		wg sync.WaitGroup
	)
	for g := range goroutines {
		wg.Go(func() {
			q := fmt.Sprintf(`SELECT $1::int + $2::int * %d, %d, $3::text`, g+1, g)
			for i := range perG {
				tag := fmt.Sprintf("g%d-i%d", g, i)
				var sum, gotG int
				var gotTag string
				err := db.QueryRowContext(ctx, q, i, 1000, tag).Scan(&sum, &gotG, &gotTag)
				wantSum := i + 1000*(g+1)
				mu.Lock()
				r.total++
				var pe *pq.Error
				switch {
				case err == nil && (sum != wantSum || gotG != g || gotTag != tag):
					r.wrong++
					if r.wrongEx == "" {
						r.wrongEx = fmt.Sprintf("goroutine %d's query returned (%d, %d, %q), want (%d, %d, %q)", g, sum, gotG, gotTag, wantSum, g, tag)
					}
				case err == nil:
				case errors.As(err, &pe) && pe.Code == "26000":
					r.missing++
					if r.missingEx == "" {
						r.missingEx = err.Error()
					}
				case errors.As(err, &pe) && (pe.Code == "08P01" || pe.Code == "42P08" || pe.Code == "22P02" || pe.Code == "42804"),
					err != nil && strings.Contains(err.Error(), "sql: expected"):
					// Bind built from another statement's Describe: parameter count,
					// type or format mismatch, or a result shape lib/pq did not expect.
					r.mismatch++
					if r.mismatchEx == "" {
						r.mismatchEx = err.Error()
					}
				default:
					r.otherN++
					if r.other == nil {
						r.other = fmt.Errorf("goroutine %d query %d: %w", g, i, err)
					}
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return &r
}

// checkLibPQBackends waits until the proxy's backends are all idle and checks that
// there are at most size of them.
func checkLibPQBackends(t *testing.T, tp *testProxy, chk *pgx.Conn, size int) {
	t.Helper()
	pgtest.Eventually(t, 10*time.Second, "proxy backends all idle", func() error {
		st := tp.serverBackends(t, chk)
		total := 0
		for s, n := range st {
			total += n
			if s != "idle" && n > 0 {
				return fmt.Errorf("backends by state: %v", st)
			}
		}
		if total > size {
			t.Errorf("%d proxy backends (%v), want at most %d", total, st, size)
		}
		return nil
	})
}
