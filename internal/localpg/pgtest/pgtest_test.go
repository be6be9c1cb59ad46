package pgtest_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/localpg"
	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
)

// shared is the cluster started by TestMain through pgtest.Main; nil when
// PostgreSQL is not installed (outside CI).
var shared *localpg.Cluster

func TestMain(m *testing.M) {
	c, stop, err := pgtest.Main(localpg.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	shared = c
	code := m.Run()
	stop()
	if c != nil {
		if _, err := os.Stat(c.Dir); !errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(os.Stderr, "shared cluster dir %s not removed by stop (err=%v)\n", c.Dir, err)
			code = 1
		}
	}
	os.Exit(code)
}

func selectOne(t *testing.T, url string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	res := conn.ExecParams(ctx, "SELECT 1", nil, nil, nil, nil).Read()
	if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != "1" {
		t.Fatalf("SELECT 1: rows=%q err=%v", res.Rows, res.Err)
	}
}

func TestMainSharedCluster(t *testing.T) {
	if shared == nil {
		t.Skip("PostgreSQL not available")
	}
	selectOne(t, shared.URL("postgres"))
}

func TestStartRegistersCleanup(t *testing.T) {
	var dir string
	t.Run("inner", func(t *testing.T) {
		c := pgtest.Start(t, localpg.Options{})
		dir = c.Dir
		selectOne(t, c.URL("postgres"))
	})
	if dir == "" {
		t.Skip("inner test skipped: PostgreSQL not available")
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("cluster dir %s still exists after the test's cleanup (err=%v)", dir, err)
	}
}

// pgtestPath is this package's import path.
const pgtestPath = "github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"

// nonTestImporters reads the output of go list -f '{{.ImportPath}}{{range
// .Imports}} {{.}}{{end}}' (a package and its non-test imports a line) and
// returns the packages other than pgtest itself that import pgtest.
func nonTestImporters(list string) []string {
	var out []string
	for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && f[0] != pgtestPath && slices.Contains(f[1:], pgtestPath) {
			out = append(out, f[0])
		}
	}
	return out
}

// pgtest is the test harness: only tests may import it (doc.go), never a
// package's own files, which would put test helpers in a binary.
func TestOnlyTestsImportPgtest(t *testing.T) {
	if got := nonTestImporters("a/b x " + pgtestPath + "\n" + pgtestPath + " " + pgtestPath + "\nc/d x y"); !slices.Equal(got, []string{"a/b"}) {
		t.Fatalf("nonTestImporters of a made-up listing = %q, want [a/b]", got)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to list the packages with")
	}
	out, err := exec.Command(goBin, "list", "-e", "-f", "{{.ImportPath}}{{range .Imports}} {{.}}{{end}}",
		"github.com/pgsidecar/pgsidecar/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	if !strings.Contains(string(out), "github.com/pgsidecar/pgsidecar/internal/proxy ") {
		t.Fatalf("go list did not list internal/proxy:\n%s", out)
	}
	if bad := nonTestImporters(string(out)); len(bad) > 0 {
		t.Errorf("packages that import %s from non-test files: %q", pgtestPath, bad)
	}
}
