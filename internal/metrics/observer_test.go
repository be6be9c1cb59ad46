package metrics_test

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgsidecar/pgsidecar/internal/metrics"
)

// Events land in the histograms and counters of their client's labels, and
// application labels beyond the cap become "other".
func TestObserver(t *testing.T) {
	o := metrics.NewObserver(2, false)
	a := o.Client("app", "worker", "orders")
	b := o.Client("app", "worker", "billing")
	c := o.Client("app", "worker", "reports") // third distinct name: "other"
	a2 := o.Client("app", "worker", "orders") // already known: keeps its label
	a.Waited(0)
	a.Waited(30 * time.Millisecond)
	a.TransactionDone(5 * time.Millisecond)
	a2.TransactionDone(7 * time.Millisecond)
	b.TransactionDone(time.Second)
	c.IdleTransactionDone(12 * time.Second)
	c.Query()
	c.Query()
	if problems, err := testutil.CollectAndLint(o); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
	want := `
# HELP pgsidecar_transactions_total Transactions (server connection holds) served.
# TYPE pgsidecar_transactions_total counter
pgsidecar_transactions_total{application="billing",database="app",user="worker"} 1
pgsidecar_transactions_total{application="orders",database="app",user="worker"} 2
pgsidecar_transactions_total{application="other",database="app",user="worker"} 0
# HELP pgsidecar_queries_total Simple queries and Execute messages sent by clients.
# TYPE pgsidecar_queries_total counter
pgsidecar_queries_total{application="billing",database="app",user="worker"} 0
pgsidecar_queries_total{application="orders",database="app",user="worker"} 0
pgsidecar_queries_total{application="other",database="app",user="worker"} 2
`
	if err := testutil.CollectAndCompare(o, strings.NewReader(want), "pgsidecar_transactions_total", "pgsidecar_queries_total"); err != nil {
		t.Fatal(err)
	}
	// Three histograms per distinct label set (orders, billing, other).
	if n := testutil.CollectAndCount(o, "pgsidecar_wait_seconds", "pgsidecar_transaction_hold_seconds", "pgsidecar_idle_transaction_seconds"); n != 9 {
		t.Errorf("%d histogram series, want 9", n)
	}
}
