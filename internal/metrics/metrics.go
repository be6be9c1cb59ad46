package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgsidecar/pgsidecar/internal/pool"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
)

// Collector exports pool and client figures, read at scrape time.
type Collector struct {
	pools  *pool.Registry
	server *proxy.Server

	poolSize, serverConns, waiting, maxWait      *prometheus.Desc
	acquires, waits, waitSeconds, waitTimeouts   *prometheus.Desc
	dials, dialFailures, closed                  *prometheus.Desc
	clients, clientsTotal, refused, protoErr, it *prometheus.Desc
	clientParses, serverParses, stmtHits         *prometheus.Desc
	stmtEvictions, statements, pins, replays     *prometheus.Desc
	leakSuspects, leaksDetected, oldestIdleTx    *prometheus.Desc
	forcedRollbacks, clientStates, exhausted     *prometheus.Desc
	dialSeconds, clientErrors                    *prometheus.Desc
	msgMemory, msgMemoryWaiting                  *prometheus.Desc
}

var poolLabels = []string{"database", "user"}

// NewCollector returns a collector over pools and server.
func NewCollector(pools *pool.Registry, server *proxy.Server) *Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("pgsidecar_"+name, help, labels, nil)
	}
	return &Collector{
		pools:            pools,
		server:           server,
		poolSize:         d("pool_size", "Configured maximum of server connections of the pool.", poolLabels...),
		serverConns:      d("server_connections", "Server connections of the pool by state (active: held by a client, pinned: held by a pinned client, idle, login: being opened).", "database", "user", "state"),
		waiting:          d("clients_waiting", "Clients queued for a server connection.", poolLabels...),
		maxWait:          d("pool_maxwait_seconds", "Age of the oldest client waiting for a server connection.", poolLabels...),
		acquires:         d("pool_acquires_total", "Server connections handed to clients.", poolLabels...),
		waits:            d("pool_waits_total", "Acquisitions that had to wait for a server connection.", poolLabels...),
		waitSeconds:      d("pool_wait_seconds_total", "Total time clients spent waiting for a server connection.", poolLabels...),
		waitTimeouts:     d("pool_wait_timeouts_total", "Clients that gave up waiting (query-wait-timeout).", poolLabels...),
		dials:            d("server_connects_total", "Server connections opened.", poolLabels...),
		dialFailures:     d("server_connect_failures_total", "Failed attempts to open a server connection, those of routes that never logged in included: under the upstream's own database and user for its route, else under database and user \"(unknown)\".", poolLabels...),
		closed:           d("server_closes_total", "Server connections closed (expired, idle, dead or broken).", poolLabels...),
		clients:          d("client_connections_open", "Connected clients (logged in or logging in)."),
		clientStates:     d("clients", "Logged-in clients by state: idle, waiting (for a server connection), active, idle_in_transaction, idle_in_transaction_aborted.", "database", "user", "state"),
		exhausted:        d("pool_exhausted_seconds_total", "Time clients were waiting for a server connection of the pool (every one busy or being opened).", poolLabels...),
		dialSeconds:      d("server_connect_seconds_total", "Time spent opening server connections, failed attempts included, with the same labels as server_connect_failures_total (divide by server_connects_total + server_connect_failures_total for the mean latency).", poolLabels...),
		clientErrors:     d("client_errors_total", "Clients that got an error from the proxy itself, by reason: max_client_conn, protocol, auth_failed (wrong password, unknown role, bad exchange), route_refused (a database or user not allowed), query_wait_timeout, idle_transaction_timeout, transaction_timeout, message_too_large, out_of_memory, prepared_statement_limit.", "reason"),
		clientsTotal:     d("client_connections_total", "Client connections accepted."),
		refused:          d("clients_refused_total", "Clients refused because max-client-conn was reached."),
		protoErr:         d("client_protocol_errors_total", "Clients closed for a protocol violation or a login timeout."),
		it:               d("idle_transaction_timeouts_total", "Clients ended by idle-transaction-timeout (their backend rolled back)."),
		clientParses:     d("prepared_client_parses_total", "Named prepared statements parsed by clients (transaction mode)."),
		serverParses:     d("prepared_server_parses_total", "Parse messages the proxy sent to server connections for clients' named statements."),
		stmtHits:         d("prepared_cache_hits_total", "Named statements a server connection already had when a client used them."),
		stmtEvictions:    d("prepared_evictions_total", "Statements closed on a server connection to stay within max-prepared-statements."),
		statements:       d("prepared_statements", "Distinct named statements of the connected clients."),
		pins:             d("client_pins_total", "Clients pinned to their server connection, by reason.", "reason"),
		replays:          d("state_replays_total", "Times a client's settings had to be applied to a server connection that differed."),
		leakSuspects:     d("leak_suspects", "Clients idle inside a transaction for longer than --leak-threshold now."),
		leaksDetected:    d("leak_suspects_detected_total", "Leak suspects logged (one per idle-in-transaction episode longer than --leak-threshold)."),
		oldestIdleTx:     d("oldest_idle_transaction_seconds", "How long the longest idle-in-transaction client has been idle (0: none)."),
		msgMemory:        d("message_memory_bytes", "Memory held for client Query and Parse messages read whole (larger than the read buffer), within --max-message-memory."),
		msgMemoryWaiting: d("message_memory_waiting", "Clients waiting for room in --max-message-memory to read a large message."),
		forcedRollbacks:  d("forced_rollbacks_total", "Transactions the proxy rolled back because the client did not end them, by reason.", "reason"),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.poolSize, c.serverConns, c.waiting, c.maxWait, c.acquires, c.waits,
		c.waitSeconds, c.waitTimeouts, c.dials, c.dialFailures, c.closed, c.clients, c.clientsTotal, c.refused,
		c.protoErr, c.it, c.clientParses, c.serverParses, c.stmtHits, c.stmtEvictions, c.statements, c.pins, c.replays,
		c.leakSuspects, c.leaksDetected, c.oldestIdleTx, c.forcedRollbacks, c.clientStates, c.exhausted,
		c.dialSeconds, c.clientErrors, c.msgMemory, c.msgMemoryWaiting} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	gauge, counter := prometheus.GaugeValue, prometheus.CounterValue
	pinned := c.server.PinnedServers()
	var waitTimeouts uint64
	pools, dropped := c.pools.Snapshot()
	// Dial figures of pools the registry dropped (routes that never logged in) go
	// to the live pool of the same labels, or to a series of their own.
	extra := make(map[pool.Key]pool.DialTotals, len(dropped))
	for _, t := range dropped {
		extra[t.Key] = t
	}
	for _, r := range pools {
		s := r.Stats
		if t, ok := extra[r.Key]; ok {
			s.DialFailures += t.DialFailures
			s.DialTime += t.DialTime
			delete(extra, r.Key)
		}
		l := []string{r.Key.Database, r.Key.User}
		pin := pinned[[2]string{r.Key.Database, r.Key.User}]
		ch <- prometheus.MustNewConstMetric(c.poolSize, gauge, float64(s.Size), l...)
		ch <- prometheus.MustNewConstMetric(c.serverConns, gauge, float64(s.InUse-pin), l[0], l[1], "active")
		ch <- prometheus.MustNewConstMetric(c.serverConns, gauge, float64(pin), l[0], l[1], "pinned")
		ch <- prometheus.MustNewConstMetric(c.exhausted, counter, s.Exhausted.Seconds(), l...)
		ch <- prometheus.MustNewConstMetric(c.dialSeconds, counter, s.DialTime.Seconds(), l...)
		waitTimeouts += s.WaitTimeouts
		ch <- prometheus.MustNewConstMetric(c.serverConns, gauge, float64(s.Idle), l[0], l[1], "idle")
		ch <- prometheus.MustNewConstMetric(c.serverConns, gauge, float64(s.Dialing), l[0], l[1], "login")
		ch <- prometheus.MustNewConstMetric(c.waiting, gauge, float64(s.Waiting), l...)
		ch <- prometheus.MustNewConstMetric(c.maxWait, gauge, s.MaxWait.Seconds(), l...)
		ch <- prometheus.MustNewConstMetric(c.acquires, counter, float64(s.Acquires), l...)
		ch <- prometheus.MustNewConstMetric(c.waits, counter, float64(s.Waited), l...)
		ch <- prometheus.MustNewConstMetric(c.waitSeconds, counter, s.WaitTime.Seconds(), l...)
		ch <- prometheus.MustNewConstMetric(c.waitTimeouts, counter, float64(s.WaitTimeouts), l...)
		ch <- prometheus.MustNewConstMetric(c.dials, counter, float64(s.Dials), l...)
		ch <- prometheus.MustNewConstMetric(c.dialFailures, counter, float64(s.DialFailures), l...)
		ch <- prometheus.MustNewConstMetric(c.closed, counter, float64(s.Closed), l...)
	}
	for _, t := range dropped {
		if _, ok := extra[t.Key]; ok {
			ch <- prometheus.MustNewConstMetric(c.dialFailures, counter, float64(t.DialFailures), t.Key.Database, t.Key.User)
			ch <- prometheus.MustNewConstMetric(c.dialSeconds, counter, t.DialTime.Seconds(), t.Key.Database, t.Key.User)
		}
	}
	st := c.server.Stats()
	ch <- prometheus.MustNewConstMetric(c.clients, gauge, float64(st.Clients))
	for _, cc := range c.server.Clients() {
		ch <- prometheus.MustNewConstMetric(c.clientStates, gauge, float64(cc.N), cc.Database, cc.User, cc.State)
	}
	ch <- prometheus.MustNewConstMetric(c.clientsTotal, counter, float64(st.ClientsTotal))
	ch <- prometheus.MustNewConstMetric(c.refused, counter, float64(st.Refused))
	ch <- prometheus.MustNewConstMetric(c.protoErr, counter, float64(st.ProtocolError))
	ch <- prometheus.MustNewConstMetric(c.it, counter, float64(st.IdleTxKilled))
	ps := c.server.PreparedStats()
	ch <- prometheus.MustNewConstMetric(c.clientParses, counter, float64(ps.ClientParses))
	ch <- prometheus.MustNewConstMetric(c.serverParses, counter, float64(ps.ServerParses))
	ch <- prometheus.MustNewConstMetric(c.stmtHits, counter, float64(ps.CacheHits))
	ch <- prometheus.MustNewConstMetric(c.stmtEvictions, counter, float64(ps.Evictions))
	ch <- prometheus.MustNewConstMetric(c.statements, gauge, float64(ps.Statements))
	ch <- prometheus.MustNewConstMetric(c.replays, counter, float64(c.server.Replays()))
	mm := c.server.MessageMemory()
	ch <- prometheus.MustNewConstMetric(c.msgMemory, gauge, float64(mm.Used))
	ch <- prometheus.MustNewConstMetric(c.msgMemoryWaiting, gauge, float64(mm.Waiting))
	ls := c.server.LeakStats()
	for reason, n := range map[string]uint64{
		"max_client_conn":          st.Refused,
		"protocol":                 st.ProtocolError,
		"auth_failed":              st.AuthFailed,
		"route_refused":            st.RouteRefused,
		"tls_required":             st.TLSRequired,
		"tls_handshake":            st.TLSFailed,
		"query_wait_timeout":       waitTimeouts,
		"idle_transaction_timeout": st.IdleTxKilled,
		"transaction_timeout":      ls.ForcedRollbacks["transaction_timeout"],
		"message_too_large":        st.TooLarge,
		"out_of_memory":            st.OutOfMemory,
		"prepared_statement_limit": st.StatementLimit,
	} {
		ch <- prometheus.MustNewConstMetric(c.clientErrors, counter, float64(n), reason)
	}
	ch <- prometheus.MustNewConstMetric(c.leakSuspects, gauge, float64(ls.Suspects))
	ch <- prometheus.MustNewConstMetric(c.leaksDetected, counter, float64(ls.Detected))
	ch <- prometheus.MustNewConstMetric(c.oldestIdleTx, gauge, ls.OldestIdleTx.Seconds())
	for reason, n := range ls.ForcedRollbacks {
		ch <- prometheus.MustNewConstMetric(c.forcedRollbacks, counter, float64(n), reason)
	}
	for reason, n := range c.server.Pins() {
		ch <- prometheus.MustNewConstMetric(c.pins, counter, float64(n), reason)
	}
}

// Handler returns the /metrics handler for a registry of our own holding c plus the
// Go runtime and process collectors.
func Handler(c *Collector, more ...prometheus.Collector) (http.Handler, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(more...)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}), reg
}
