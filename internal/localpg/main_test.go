package localpg_test

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
)

// TestMain checks, after every test has run (they run in parallel), that no
// goroutine of package localpg is left: each server process has a goroutine that
// reaps it, which must end once the cluster is stopped (docs/design.md section 9).
func TestMain(m *testing.M) {
	code := m.Run()
	if left := pgtest.LeftGoroutines(nil, 10*time.Second, "pgsidecar/internal/localpg."); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "goroutine leak: %d goroutines of package localpg outlived the tests:\n\n%s\n",
			len(left), strings.Join(left, "\n\n"))
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}
