package engine

import (
	"strings"
	"testing"

	"github.com/pgsidecar/pgsidecar/internal/wire"
)

func TestReadServerError(t *testing.T) {
	e := ReadServerError(wire.AppendError(nil, wire.SeverityError, wire.CodeFeatureNotSupported, "cached plan must not change result type", ""))
	if !e.CachedPlan || e.Fatal || e.AbortedTx || e.NotAboutStatement || e.Msg == nil {
		t.Errorf("cached plan: %+v", e)
	}
	if e := ReadServerError(wire.AppendError(nil, wire.SeverityFatal, "57P01", "terminating", "")); !e.Fatal || !e.NotAboutStatement {
		t.Errorf("FATAL 57P01: %+v", e)
	}
	if e := ReadServerError(wire.AppendError(nil, wire.SeverityError, "25P02", "aborted", "")); !e.AbortedTx || !e.NotAboutStatement {
		t.Errorf("25P02: %+v", e)
	}
	if e := ReadServerError(wire.AppendError(nil, wire.SeverityError, "42703", "column does not exist", "")); e.NotAboutStatement || e.Msg == nil {
		t.Errorf("42703: %+v", e)
	}
	if e := ReadServerError(wire.AppendError(nil, wire.SeverityError, "42703", strings.Repeat("x", MaxErrorInspect), "")); e.Msg != nil {
		t.Error("a long error was read")
	}
}

func TestErrorAnswer(t *testing.T) {
	refusal := []byte("refused")
	st := &Statement{Name: StatementPrefix + "7"}
	err42 := ReadServerError(wire.AppendError(nil, wire.SeverityError, "42P18", `could not determine data type in "`+st.Name+`"`, ""))
	aborted := ReadServerError(wire.AppendError(nil, wire.SeverityError, "25P02", "current transaction is aborted", ""))
	for _, c := range []struct {
		name string
		p    *Pending
		e    ServerError
		act  Action
		repl string
		skip bool
	}{
		{"nothing due", nil, err42, Forward, "", false},
		{"simple query", &Pending{Kind: ExpectQuery}, err42, Forward, "", false},
		{"refused simple query", &Pending{Kind: ExpectQuery, Action: Replace, Undo: &Undo{Replace: refusal}}, err42, Replace, "refused", false},
		{"sync", &Pending{Kind: ExpectSync}, err42, Forward, "", false},
		{"failed Bind", &Pending{Kind: ExpectBind}, err42, Forward, "", true},
		{"refused Parse", &Pending{Kind: ExpectParse, Action: Replace, Undo: &Undo{Replace: refusal}}, err42, Replace, "refused", true},
		{"refused Parse in a failed transaction", &Pending{Kind: ExpectParse, Action: Replace, Undo: &Undo{Replace: refusal}}, aborted, Forward, "", true},
		{"missing statement even in a failed transaction", &Pending{Kind: ExpectBind, Action: Replace, Undo: &Undo{Replace: refusal, BeforeAbort: true}}, aborted, Replace, "refused", true},
	} {
		act, repl, skip := ErrorAnswer(c.p, c.e)
		if act != c.act || string(repl) != c.repl || skip != c.skip {
			t.Errorf("%s: %v %q %v, want %v %q %v", c.name, act, repl, skip, c.act, c.repl, c.skip)
		}
	}
	// The server-side name in an error becomes the client's own.
	act, repl, skip := ErrorAnswer(&Pending{Kind: ExpectBind, Stmt: st, Reg: &Registration{Name: "mine", Stmt: st}}, err42)
	if act != Replace || !skip || wire.ParseError(repl[wire.HeaderLen:]).Message != `could not determine data type in "mine"` {
		t.Errorf("rename: %v %q", act, repl)
	}
}

func TestSkippedBySync(t *testing.T) {
	var q AnswerQueue
	for _, k := range []Expected{ExpectBind, ExpectExecute, ExpectSync, ExpectParse} {
		q.Push(Pending{Kind: k})
	}
	if n := q.SkippedBySync(); n != 2 {
		t.Errorf("SkippedBySync = %d, want 2", n)
	}
	q.Pop()
	q.Pop()
	q.Pop()
	if n := q.SkippedBySync(); n != 1 {
		t.Errorf("without a Sync: %d, want 1", n)
	}
}
