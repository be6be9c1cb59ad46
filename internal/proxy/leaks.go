package proxy

import (
	"cmp"
	"slices"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/engine"
	"github.com/pgsidecar/pgsidecar/internal/sqlscan"
	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// Leaks: a client idle inside a transaction holds a backend that no other client
// can use. One idle for longer than Options.LeakThreshold is a leak suspect: it
// is logged once per idle episode, with what identifies the code that leaked it
// (address, application_name, user, database, age, its last statement), and
// counted.

// rollbackReason says why the proxy rolled back a transaction the client did
// not end.
type rollbackReason int

const (
	rbIdleTimeout rollbackReason = iota // --idle-transaction-timeout
	rbDisconnect                        // the client went away mid-transaction
	rbShutdown                          // the proxy shut down
	rbTxTimeout                         // --transaction-timeout
	rbAdmin                             // KILL_CLIENT of the admin console
	numRollbackReasons
)

// rollbackReasonNames are the metric label values of the reasons.
var rollbackReasonNames = [numRollbackReasons]string{"idle_transaction_timeout", "client_disconnect", "shutdown", "transaction_timeout", "admin_kill"}

// LeakStats is a snapshot of leak figures.
type LeakStats struct {
	Suspects     int           // clients idle in a transaction longer than the leak threshold now
	Detected     uint64        // leak suspects logged since start (one per idle episode)
	OldestIdleTx time.Duration // how long the longest idle-in-transaction client has been idle
	// ForcedRollbacks counts transactions the proxy rolled back, by reason
	// (idle_transaction_timeout, transaction_timeout, client_disconnect,
	// shutdown, admin_kill).
	ForcedRollbacks map[string]uint64
}

// LeakStats returns the leak figures, computed now.
func (s *Server) LeakStats() LeakStats {
	now := time.Now()
	st := LeakStats{Detected: s.leaksDetected.Load(), ForcedRollbacks: map[string]uint64{}}
	for i, n := range rollbackReasonNames {
		st.ForcedRollbacks[n] = s.rollbacks[i].Load()
	}
	for _, ss := range s.snapshot() {
		ss.mu.Lock()
		idle, since := ss.idleInTxLocked()
		ss.mu.Unlock()
		if !idle {
			continue
		}
		age := now.Sub(since)
		if age > st.OldestIdleTx {
			st.OldestIdleTx = age
		}
		if s.options().LeakThreshold > 0 && age >= s.options().LeakThreshold {
			st.Suspects++
		}
	}
	return st
}

// activityLocked is what the engine's leak and timeout bookkeeping needs to
// know of the client now. ss.mu is held.
func (ss *session) activityLocked() engine.Activity {
	return engine.Activity{
		Attached:    ss.be != nil,
		Status:      ss.e.Tx,
		Outstanding: int(ss.e.Outstanding),
		Partial:     ss.e.Partial,
		Gone:        ss.gone,
		Ending:      ss.kill != killNone,
		IdleSince:   ss.idleSince.Time(),
		TxStart:     ss.txStart.Time(),
	}
}

// idleInTxLocked reports whether the client is idle inside a transaction, and
// since when. ss.mu is held.
func (ss *session) idleInTxLocked() (bool, time.Time) {
	return ss.activityLocked().IdleInTransaction()
}

// watchLeaks logs each leak suspect once per idle episode and ends transactions
// older than the transaction timeout, until shutdown starts. Its period follows
// the options in force: a reload that turns a check on or shortens it takes
// effect at once.
func (s *Server) watchLeaks() {
	t := time.NewTimer(watchPeriod(s.options()))
	defer t.Stop()
	for {
		select {
		case <-s.drainCtx.Done():
			return
		case <-s.watchWake:
			t.Reset(watchPeriod(s.options()))
		case now := <-t.C:
			opt := s.options()
			if opt.LeakThreshold > 0 || opt.TransactionTimeout > 0 {
				for _, ss := range s.snapshot() {
					if opt.LeakThreshold > 0 {
						ss.reportLeak(now)
					}
					if opt.TransactionTimeout > 0 {
						ss.checkTxTimeout(now)
					}
				}
			}
			t.Reset(watchPeriod(opt))
		}
	}
}

// watchPeriod is the leak watcher's period for opt.
func watchPeriod(opt *Options) time.Duration {
	period := time.Second
	if d := opt.LeakThreshold; d > 0 {
		period = min(period, d/2)
	}
	if d := opt.TransactionTimeout; d > 0 {
		// A transaction is ended within a quarter second of its timeout (and the
		// client, reading or not, within a second).
		period = min(period, d/4, 250*time.Millisecond)
	}
	return max(period, 10*time.Millisecond)
}

// reportLeak logs the client as a leak suspect if it has been idle in a
// transaction longer than the threshold and was not reported in this episode.
func (ss *session) reportLeak(now time.Time) {
	ss.mu.Lock()
	suspect, age := ss.activityLocked().LeakSuspect(now, ss.srv.options().LeakThreshold, ss.leakReported)
	if !suspect {
		ss.mu.Unlock()
		return
	}
	ss.leakReported = true
	stmt := ss.srv.shownStatement(ss.e.LastStatement())
	state := "idle in transaction"
	if ss.e.Tx == wire.TxFailed {
		state = "idle in transaction (aborted)"
	}
	var pid uint32
	if ss.be != nil {
		pid = ss.be.PID
	}
	ss.mu.Unlock()
	ss.srv.leaksDetected.Add(1)
	ss.srv.log.Warn("leak suspect: client idle in transaction",
		"client", ss.addr, "application_name", ss.app, "user", ss.user, "database", ss.db,
		"age", age.Round(time.Millisecond), "state", state, "server_pid", pid, "last_statement", stmt)
}

// checkTxTimeout ends the client if its transaction is older than the
// transaction timeout: it is closed with SQLSTATE 25P04 and its backend rolled
// back (closed, when a statement is still running).
func (ss *session) checkTxTimeout(now time.Time) {
	d := ss.srv.options().TransactionTimeout
	ss.mu.Lock()
	expired, age := ss.activityLocked().TransactionTimedOut(now, d)
	expired = expired && ss.srv.options().Mode == ModeTransaction
	if expired {
		ss.kill = killTxTimeout // under attach's lock: no message of the client goes out any more
	}
	ss.mu.Unlock()
	if expired {
		ss.srv.log.Warn("transaction too long, closing the client and rolling back",
			"client", ss.addr, "user", ss.user, "database", ss.db, "application_name", ss.app,
			"age", age.Round(time.Millisecond), "timeout", d, "last_statement", ss.lastStatement())
		ss.terminate(killTxTimeout)
	}
}

// lastStatement is the start of the client's last statement, as shown
// (shownStatement).
func (ss *session) lastStatement() string {
	ss.mu.Lock()
	stmt := ss.e.LastStatement()
	ss.mu.Unlock()
	return ss.srv.shownStatement(stmt)
}

// shownStatement is stmt as logs, SHOW and the status page show it: its
// constants replaced by $n (sqlscan.Normalize) unless Options.SQLLiterals.
func (s *Server) shownStatement(stmt string) string {
	if s.options().SQLLiterals {
		return stmt
	}
	return sqlscan.Normalize([]byte(stmt))
}

// Leak is one client idle inside a transaction.
type Leak struct {
	ClientID      uint32 // the BackendKeyData pid the client was given (KILL_CLIENT id)
	Client        string // address
	Application   string
	User          string
	Database      string
	State         string // idle_in_transaction or idle_in_transaction_aborted
	Age           time.Duration
	ServerPID     uint32
	LastStatement string
	Suspect       bool // idle longer than the leak threshold
}

// Leaks lists the clients idle inside a transaction now, oldest first.
func (s *Server) Leaks() []Leak {
	now := time.Now()
	var out []Leak
	for _, ss := range s.snapshot() {
		ss.mu.Lock()
		idle, since := ss.idleInTxLocked()
		if !idle {
			ss.mu.Unlock()
			continue
		}
		l := Leak{ClientID: ss.pid, Client: ss.addr, Application: ss.app, User: ss.user, Database: ss.db,
			State: StateIdleInTransaction, Age: now.Sub(since), LastStatement: ss.e.LastStatement()}
		l.LastStatement = s.shownStatement(l.LastStatement)
		if ss.e.Tx == wire.TxFailed {
			l.State = StateIdleInTransactionAborted
		}
		if ss.be != nil {
			l.ServerPID = ss.be.PID
		}
		ss.mu.Unlock()
		l.Suspect = s.options().LeakThreshold > 0 && l.Age >= s.options().LeakThreshold
		out = append(out, l)
	}
	slices.SortFunc(out, func(a, b Leak) int { return cmp.Compare(b.Age, a.Age) })
	return out
}
