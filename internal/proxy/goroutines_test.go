package proxy_test

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/pool"
)

// The proxy and its pools start goroutines per client, per attached backend, per
// pool and per dial. docs/design.md section 9 asks for goroutine-leak checks in such
// packages: every test that starts a proxy checks, once all its proxies are closed,
// that no goroutine running proxy or pool code is left.

// proxyCode matches goroutines running (or started by) package proxy or pool.
var proxyCode = []string{"pgsidecar/internal/proxy.", "pgsidecar/internal/pool."}

// leakChecked remembers the tests that already have the check (one per test, so
// that it runs after the test's last proxy is closed).
var leakChecked sync.Map // testing.TB -> struct{}

// checkNoProxyGoroutines installs the check for t, once. Installed before the
// proxy's own cleanup, it runs after it (and after every client's).
func checkNoProxyGoroutines(t testing.TB) {
	if _, dup := leakChecked.LoadOrStore(t, struct{}{}); dup {
		return
	}
	before := pgtest.Goroutines(proxyCode...)
	t.Cleanup(func() {
		defer leakChecked.Delete(t)
		if left := pgtest.LeftGoroutines(before, 5*time.Second, proxyCode...); len(left) > 0 {
			t.Errorf("goroutine leak: %d goroutines running proxy or pool code outlived the proxy:\n\n%s",
				len(left), strings.Join(left, "\n\n"))
		}
	})
}

// TestGoroutineCheckSeesPoolGoroutines makes sure the check can fail: the
// maintenance goroutine of a pool that was never closed is seen, and gone once
// the pool is closed.
func TestGoroutineCheckSeesPoolGoroutines(t *testing.T) {
	before := pgtest.Goroutines(proxyCode...)
	p := pool.New(pool.Config{Size: 1})
	if left := pgtest.LeftGoroutines(before, 0, proxyCode...); len(left) != 1 {
		p.Close()
		t.Fatalf("%d new goroutines in pool code after pool.New, want 1 (its maintenance loop)", len(left))
	}
	p.Close()
	// Close returns once the loop is done; its goroutine exits a moment later.
	if left := pgtest.LeftGoroutines(before, 5*time.Second, proxyCode...); len(left) != 0 {
		t.Fatalf("%d new goroutines in pool code after Close, want 0:\n%s", len(left), strings.Join(left, "\n\n"))
	}
}
