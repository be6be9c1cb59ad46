// Package pgtest adapts localpg to tests: it starts throwaway PostgreSQL
// clusters, skips when the server binaries are not installed on a developer
// machine, and fails instead when running in CI (CI=true), where a skipped
// integration test would silently hide missing coverage.
//
// Typical per-test use:
//
//	c := pgtest.Start(t, localpg.Options{})
//	conn, err := pgconn.Connect(ctx, c.URL("postgres"))
//
// Typical shared use from TestMain:
//
//	var cluster *localpg.Cluster // nil: tests call t.Skip
//
//	func TestMain(m *testing.M) {
//		c, stop, err := pgtest.Main(localpg.Options{})
//		if err != nil {
//			fmt.Fprintln(os.Stderr, err)
//			os.Exit(1)
//		}
//		cluster = c
//		code := m.Run()
//		stop() // os.Exit skips deferred calls
//		os.Exit(code)
//	}
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/localpg"
)

// startTimeout bounds initdb plus readiness.
const startTimeout = 2 * time.Minute

// logTailLines is how much server log is printed when a test fails.
const logTailLines = 50

// inCI reports whether the CI environment variable is set to a true value
// ("true", "1", ...).
func inCI() bool {
	ci, err := strconv.ParseBool(os.Getenv("CI"))
	return err == nil && ci
}

// Start starts a cluster for a test or TestMain user and registers
// tb.Cleanup to Close it (printing the server log tail if the test failed).
// When the binaries are missing it calls tb.Skip, unless the environment has
// CI=true, in which case it fails with tb.Fatal. Any other error is fatal.
func Start(tb testing.TB, opts localpg.Options) *localpg.Cluster {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), startTimeout)
	defer cancel()
	c, err := localpg.Start(ctx, opts)
	if err != nil {
		if errors.Is(err, localpg.ErrNoBinaries) && !inCI() {
			tb.Skipf("pgtest: skipping, PostgreSQL not available (set PG_BIN): %v", err)
		}
		tb.Fatalf("pgtest: start PostgreSQL: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("pgtest: PostgreSQL log tail (%s):\n%s", c.Dir, c.LogTail(logTailLines))
		}
		if err := c.Close(); err != nil {
			tb.Errorf("pgtest: close PostgreSQL: %v", err)
		}
	})
	return c
}

// Main is for TestMain: it starts one shared cluster for the package's
// tests and returns it plus a stop func that closes it (errors are printed
// to stderr). If the binaries are missing and CI is not true it returns
// (nil, noop, nil) so tests can t.Skip; with CI=true it returns an error.
// The returned stop func is never nil.
func Main(opts localpg.Options) (*localpg.Cluster, func(), error) {
	noop := func() {}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	c, err := localpg.Start(ctx, opts)
	if err != nil {
		if errors.Is(err, localpg.ErrNoBinaries) && !inCI() {
			fmt.Fprintf(os.Stderr, "pgtest: PostgreSQL not available, integration tests will skip: %v\n", err)
			return nil, noop, nil
		}
		return nil, noop, fmt.Errorf("pgtest: start PostgreSQL: %w", err)
	}
	stop := func() {
		if err := c.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: close PostgreSQL: %v\n", err)
		}
	}
	return c, stop, nil
}
