package engine

import (
	"testing"

	"github.com/pgsidecar/pgsidecar/internal/wire"
)

func TestDecide(t *testing.T) {
	idle, inTx, failed := wire.TxIdle, wire.TxActive, wire.TxFailed
	for _, c := range []struct {
		name string
		b    Boundary
		want Decision
	}{
		{"idle, nothing due", Boundary{Status: idle}, Release},
		{"more batches due", Boundary{Status: idle, Outstanding: 1}, KeepReading},
		{"half-written message", Boundary{Status: idle, Partial: true}, KeepReading},
		{"open transaction", Boundary{Status: inTx}, Stay},
		{"failed transaction", Boundary{Status: failed}, Stay},
		{"settings to read back", Boundary{Status: idle, DirtySettings: true}, Probe},
		{"settings inside a transaction wait for its end", Boundary{Status: inTx, DirtySettings: true}, Stay},
		{"pinned", Boundary{Status: idle, Pinned: true}, Stay},
		{"pinned by LISTEN", Boundary{Status: idle, Pinned: true, PinListen: true}, StayListening},
		{"LISTEN inside a transaction", Boundary{Status: inTx, Pinned: true, PinListen: true}, Stay},
		{"maybe unpinned", Boundary{Status: idle, Pinned: true, PinCheck: true}, Probe},
		{"LOAD never unpins", Boundary{Status: idle, Pinned: true, PinCheck: true, PinPermanent: true}, Stay},
		{"session mode", Boundary{Status: idle, SessionMode: true}, StayListening},
		{"session mode reads nothing back", Boundary{Status: idle, SessionMode: true, DirtySettings: true}, StayListening},
		{"gone client in session mode", Boundary{Status: idle, SessionMode: true, Gone: true}, Release},
		{"gone pinned client", Boundary{Status: idle, Pinned: true, PinCheck: true, Gone: true}, Release},
		{"gone client in a transaction", Boundary{Status: inTx, Gone: true}, Stay},
	} {
		if got := Decide(c.b); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}
