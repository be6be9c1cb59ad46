package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/internal/proxy"
)

// OtherApplication is the application label of clients beyond the cap on
// distinct application_name values.
const OtherApplication = "other"

// Observer turns the proxy's hot-path events into Prometheus histograms and
// counters labelled by database, user and application. It implements
// proxy.Observer (so the proxy never imports Prometheus) and
// prometheus.Collector. Label values are resolved once per client, so an event
// costs one histogram observation or counter increment.
type Observer struct {
	maxApps int

	mu   sync.Mutex
	apps map[string]struct{}

	wait, hold, idle *prometheus.HistogramVec
	tx, queries      *prometheus.CounterVec

	// PgBouncer-compatible stats by database (nil unless asked for); collected
	// by PgBouncerCompat.
	pgbXacts, pgbQueries, pgbWait, pgbXactTime *prometheus.CounterVec
}

var clientLabels = []string{"database", "user", "application"}

func histogram(name, help string, buckets []float64) *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:                            "pgsidecar_" + name,
		Help:                            help,
		Buckets:                         buckets,
		NativeHistogramBucketFactor:     1.1,
		NativeHistogramMaxBucketNumber:  160,
		NativeHistogramMinResetDuration: time.Hour,
	}, clientLabels)
}

// NewObserver returns an Observer that keeps at most maxApps distinct
// application_name values as labels; later ones are reported as "other". With
// pgbouncerCompat it also counts the per-database figures PgBouncerCompat
// exports.
func NewObserver(maxApps int, pgbouncerCompat bool) *Observer {
	o := &Observer{
		maxApps: maxApps,
		apps:    map[string]struct{}{},
		wait: histogram("wait_seconds", "Time clients waited for a server connection (0 when one was free).",
			prometheus.ExponentialBuckets(0.0001, 4, 10)),
		hold: histogram("transaction_hold_seconds", "Time a client held a server connection per transaction.",
			prometheus.ExponentialBuckets(0.0001, 4, 11)),
		idle: histogram("idle_transaction_seconds", "Length of idle-in-transaction episodes (a client holding a server connection between statements of its transaction).",
			prometheus.ExponentialBuckets(0.001, 4, 10)),
		tx: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgsidecar_transactions_total",
			Help: "Transactions (server connection holds) served."}, clientLabels),
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgsidecar_queries_total",
			Help: "Simple queries and Execute messages sent by clients."}, clientLabels),
	}
	if pgbouncerCompat {
		c := func(name, help string) *prometheus.CounterVec {
			return prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgbouncer_stats_" + name, Help: help}, []string{"database"})
		}
		o.pgbXacts = c("sql_transactions_pooled_total", "Total number of SQL transactions pooled (pgsidecar: server connection holds).")
		o.pgbQueries = c("queries_pooled_total", "Total number of SQL queries pooled.")
		o.pgbWait = c("client_wait_seconds_total", "Time spent by clients waiting for a server in seconds.")
		o.pgbXactTime = c("server_in_transaction_seconds_total", "Seconds server connections spent linked to a client in a transaction.")
	}
	return o
}

// Client implements proxy.Observer.
func (o *Observer) Client(database, user, application string) proxy.ClientObserver {
	app := o.appLabel(application)
	c := &clientObserver{
		wait:    o.wait.WithLabelValues(database, user, app),
		hold:    o.hold.WithLabelValues(database, user, app),
		idle:    o.idle.WithLabelValues(database, user, app),
		tx:      o.tx.WithLabelValues(database, user, app),
		queries: o.queries.WithLabelValues(database, user, app),
	}
	if o.pgbXacts != nil {
		c.pgb = &pgbCounters{
			xacts:    o.pgbXacts.WithLabelValues(database),
			queries:  o.pgbQueries.WithLabelValues(database),
			wait:     o.pgbWait.WithLabelValues(database),
			xactTime: o.pgbXactTime.WithLabelValues(database),
		}
	}
	return c
}

// SetMaxApplicationLabels changes the cap on distinct application labels
// (a reload of --max-application-labels). Labels already in use stay; a lower
// cap only reports further new applications as "other".
func (o *Observer) SetMaxApplicationLabels(n int) {
	o.mu.Lock()
	o.maxApps = n
	o.mu.Unlock()
}

// appLabel caps the distinct application labels.
func (o *Observer) appLabel(app string) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.apps[app]; ok {
		return app
	}
	if len(o.apps) >= o.maxApps {
		return OtherApplication
	}
	o.apps[app] = struct{}{}
	return app
}

// Describe implements prometheus.Collector.
func (o *Observer) Describe(ch chan<- *prometheus.Desc) {
	o.wait.Describe(ch)
	o.hold.Describe(ch)
	o.idle.Describe(ch)
	o.tx.Describe(ch)
	o.queries.Describe(ch)
}

// Collect implements prometheus.Collector.
func (o *Observer) Collect(ch chan<- prometheus.Metric) {
	o.wait.Collect(ch)
	o.hold.Collect(ch)
	o.idle.Collect(ch)
	o.tx.Collect(ch)
	o.queries.Collect(ch)
}

type clientObserver struct {
	wait, hold, idle prometheus.Observer
	tx, queries      prometheus.Counter
	pgb              *pgbCounters // nil unless PgBouncer compatibility is on
}

type pgbCounters struct{ xacts, queries, wait, xactTime prometheus.Counter }

func (c *clientObserver) Waited(d time.Duration) {
	c.wait.Observe(d.Seconds())
	if c.pgb != nil {
		c.pgb.wait.Add(d.Seconds())
	}
}

func (c *clientObserver) TransactionDone(d time.Duration) {
	c.hold.Observe(d.Seconds())
	c.tx.Inc()
	if c.pgb != nil {
		c.pgb.xacts.Inc()
		c.pgb.xactTime.Add(d.Seconds())
	}
}

func (c *clientObserver) IdleTransactionDone(d time.Duration) { c.idle.Observe(d.Seconds()) }

func (c *clientObserver) Query() {
	c.queries.Inc()
	if c.pgb != nil {
		c.pgb.queries.Inc()
	}
}
