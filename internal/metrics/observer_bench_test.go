package metrics_test

import (
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/metrics"
)

// BenchmarkObserverTransaction is what one transaction costs the hot path in
// metrics: a wait, a hold and a query.
func BenchmarkObserverTransaction(b *testing.B) {
	c := metrics.NewObserver(10, false).Client("app", "worker", "orders")
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		c.Waited(time.Duration(i%1000) * time.Microsecond)
		c.TransactionDone(time.Duration(i%5000) * time.Microsecond)
		c.Query()
	}
}
