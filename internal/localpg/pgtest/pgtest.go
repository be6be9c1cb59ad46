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

// InCI reports whether the tests run in CI: the CI environment variable set to
// a true value ("true", "1", ...). There what a test needs must be installed,
// since a skipped test would silently hide missing coverage.
func InCI() bool {
	ci, err := strconv.ParseBool(os.Getenv("CI"))
	return err == nil && ci
}

// SkipUnlessCI is what a test does when something it needs (a program, a
// module, the PostgreSQL binaries) is missing: it skips the test, or fails it
// when InCI.
func SkipUnlessCI(t testing.TB, format string, args ...any) {
	t.Helper()
	if InCI() {
		t.Fatalf(format+" (CI=true: not skipping)", args...)
	}
	t.Skipf(format, args...)
}

// NeedBinaries skips the test (fails it in CI) when PostgreSQL's server
// binaries cannot be found, for a test that starts no cluster through Start
// but needs them (a process that starts its own).
func NeedBinaries(t testing.TB) {
	t.Helper()
	if _, err := localpg.FindBinDir(); err != nil {
		if !errors.Is(err, localpg.ErrNoBinaries) {
			t.Fatal(err)
		}
		SkipUnlessCI(t, "pgtest: PostgreSQL not available (set PG_BIN): %v", err)
	}
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
		if errors.Is(err, localpg.ErrNoBinaries) && !InCI() {
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
		if errors.Is(err, localpg.ErrNoBinaries) && !InCI() {
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
