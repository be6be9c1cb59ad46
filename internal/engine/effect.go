package engine

import (
	"fmt"

	"github.com/pgsidecar/pgsidecar/internal/sqlscan"
	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// Effect is what a statement does to session state.
type Effect struct {
	Dirty      []string // settings to read back when the transaction is over
	Resets     []string // settings reset to the session default
	ResetAll   bool     // RESET ALL / DISCARD ALL
	Pin        string   // the reason it pins the client ("" none)
	PinKind    string   // what to call it in a refusal
	Listen     bool     // LISTEN: notifications must reach the idle client
	Permanent  bool     // LOAD: never unpinned
	UnpinCheck bool     // may have removed pinning state
}

// Changes reports whether the statement does anything to session state that
// the proxy must track: settings, resets, pins, or a possible unpin.
func (e *Effect) Changes() bool {
	return e.Pin != "" || len(e.Dirty) > 0 || e.ResetAll || e.UnpinCheck
}

// Note adds the session-state effect of one classified statement to e.
func (e *Effect) Note(st sqlscan.Statement) {
	switch st.Kind {
	case sqlscan.KindSet:
		switch st.Name {
		case "":
			e.setPin("set", "SET of an unrecognised form")
		case "session_characteristics":
			e.Dirty = append(e.Dirty, "default_transaction_isolation", "default_transaction_read_only", "default_transaction_deferrable")
		case "role", "session_authorization":
			e.Dirty = append(e.Dirty, "role", "session_authorization")
		default:
			e.Dirty = append(e.Dirty, st.Name)
			if st.Default {
				e.Resets = append(e.Resets, st.Name)
			}
		}
	case sqlscan.KindSetConfig:
		switch {
		case st.Name == "":
			e.setPin("set_config", "set_config with computed arguments")
		case !st.IsLocal:
			e.Dirty = append(e.Dirty, st.Name)
		}
	case sqlscan.KindReset:
		switch st.Name {
		case "":
			e.setPin("set", "RESET of an unrecognised form")
		case "session_authorization", "role":
			e.Dirty = append(e.Dirty, "role", "session_authorization")
			e.Resets = append(e.Resets, "role", "session_authorization")
		default:
			e.Dirty = append(e.Dirty, st.Name)
			e.Resets = append(e.Resets, st.Name)
		}
	case sqlscan.KindResetAll:
		e.ResetAll = true
	case sqlscan.KindDiscardAll:
		e.ResetAll = true
		e.UnpinCheck = true
	case sqlscan.KindListen:
		e.setPin("listen", "LISTEN")
		e.Listen = true
	case sqlscan.KindAdvisoryLock:
		e.setPin("advisory_lock", "a session-level advisory lock ("+st.Name+")")
	case sqlscan.KindTempTable:
		e.setPin("temp_table", "a temporary table")
	case sqlscan.KindDeclareHold:
		e.setPin("hold_cursor", "a WITH HOLD cursor")
	case sqlscan.KindPrepare:
		e.setPin("sql_prepare", "SQL PREPARE")
	case sqlscan.KindLoad:
		e.setPin("load", "LOAD")
		e.Permanent = true
	case sqlscan.KindUnlisten, sqlscan.KindUnlistenAll, sqlscan.KindAdvisoryUnlock, sqlscan.KindCloseCursor,
		sqlscan.KindCloseAll, sqlscan.KindDiscardTemp, sqlscan.KindDeallocate, sqlscan.KindDeallocateAll:
		e.UnpinCheck = true
	}
}

func (e *Effect) setPin(reason, kind string) {
	if e.Pin == "" {
		e.Pin, e.PinKind = reason, kind
	}
}

// Refusal is the ErrorResponse for a statement --pin-policy refuse turns away.
func Refusal(kind string) []byte {
	return wire.AppendError(nil, wire.SeverityError, wire.CodeFeatureNotSupported,
		fmt.Sprintf("pgsidecar: %s keeps session state that cannot move between server connections; "+
			"refused by --pin-policy refuse (use --pool-mode session, or --pin-policy pin)", kind), "")
}
