package engine

import (
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// The bookkeeping runs on a fake clock: no sleeps.
func TestActivityDeadlines(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 8, 0, 0, 0, time.UTC)
	idleTx := Activity{Attached: true, Status: wire.TxActive, IdleSince: t0, TxStart: t0.Add(-time.Second)}

	if idle, since := idleTx.IdleInTransaction(); !idle || !since.Equal(t0) {
		t.Fatalf("idle in transaction: %v %v", idle, since)
	}
	for name, a := range map[string]Activity{
		"outside a transaction": {Attached: true, Status: wire.TxIdle, IdleSince: t0},
		"not attached":          {Status: wire.TxActive, IdleSince: t0},
		"answers due":           {Attached: true, Status: wire.TxActive, IdleSince: t0, Outstanding: 1},
		"half-written message":  {Attached: true, Status: wire.TxActive, IdleSince: t0, Partial: true},
		"gone":                  {Attached: true, Status: wire.TxActive, IdleSince: t0, Gone: true},
		"running a statement":   {Attached: true, Status: wire.TxActive},
	} {
		if idle, _ := a.IdleInTransaction(); idle {
			t.Errorf("%s: counted as idle in transaction", name)
		}
	}

	// Leak suspect: at the threshold, once per episode.
	if s, _ := idleTx.LeakSuspect(t0.Add(9*time.Second), 10*time.Second, false); s {
		t.Error("suspect before the threshold")
	}
	if s, age := idleTx.LeakSuspect(t0.Add(10*time.Second), 10*time.Second, false); !s || age != 10*time.Second {
		t.Errorf("not a suspect at the threshold: %v %v", s, age)
	}
	if s, _ := idleTx.LeakSuspect(t0.Add(time.Hour), 10*time.Second, true); s {
		t.Error("reported twice in one episode")
	}
	if s, _ := idleTx.LeakSuspect(t0.Add(time.Hour), 0, false); s {
		t.Error("suspect with the check off")
	}

	// Idle-transaction timeout.
	if idleTx.IdleTimedOut(t0.Add(4*time.Second), 5*time.Second) || !idleTx.IdleTimedOut(t0.Add(5*time.Second), 5*time.Second) {
		t.Error("idle timeout at the wrong time")
	}
	ending := idleTx
	ending.Ending = true
	if ending.IdleTimedOut(t0.Add(time.Hour), time.Second) || idleTx.IdleTimedOut(t0.Add(time.Hour), 0) {
		t.Error("idle timeout of a client already ending, or with the timeout off")
	}

	// Transaction timeout counts from the transaction's start, busy or idle.
	busy := Activity{Attached: true, Status: wire.TxIdle, Outstanding: 1, TxStart: t0}
	if exp, _ := busy.TransactionTimedOut(t0.Add(2*time.Second), 3*time.Second); exp {
		t.Error("transaction timeout too early")
	}
	if exp, age := busy.TransactionTimedOut(t0.Add(3*time.Second), 3*time.Second); !exp || age != 3*time.Second {
		t.Errorf("statement outside a transaction not timed out: %v %v", exp, age)
	}
	if exp, _ := (Activity{Attached: true, Status: wire.TxIdle, TxStart: t0}).TransactionTimedOut(t0.Add(time.Hour), time.Second); exp {
		t.Error("an idle client between transactions timed out")
	}
}
