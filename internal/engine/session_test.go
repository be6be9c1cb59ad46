package engine

import (
	"bytes"
	"strings"
	"testing"

	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// testRegistry is a StatementRegistry used by one goroutine.
type testRegistry struct{ r StatementRegistry }

func (t *testRegistry) Intern(body []byte) *Statement { return t.r.Intern(body) }
func (t *testRegistry) Acquire(st *Statement)         { t.r.Acquire(st) }
func (t *testRegistry) Release(st *Statement)         { t.r.Release(st) }

func newSession(maxPrepared int) (*Session, *testRegistry) {
	reg := &testRegistry{}
	s := &Session{Env: &Env{Registry: reg, Counters: new(Counters), Limits: Limits{MaxPreparedStatements: maxPrepared,
		MaxClientStatements: 3, MaxClientStatementBytes: 1 << 10}}}
	s.Attached(NewServerStatements())
	return s, reg
}

// messages splits b into protocol messages and returns their types and names
// (the first string of each body).
func messages(t *testing.T, b []byte) []string {
	t.Helper()
	var out []string
	for len(b) > 0 {
		if len(b) < wire.HeaderLen {
			t.Fatalf("cut message: %q", b)
		}
		n := 1 + int(uint32(b[1])<<24|uint32(b[2])<<16|uint32(b[3])<<8|uint32(b[4]))
		body := b[wire.HeaderLen:n]
		if b[0] == wire.MsgClose {
			body = body[1:]
		}
		name, _, _ := bytes.Cut(body, []byte{0})
		out = append(out, string(b[0])+":"+string(name))
		b = b[n:]
	}
	return out
}

func TestSessionPrepareCachesAndEvicts(t *testing.T) {
	s, _ := newSession(2)
	body := func(q string) []byte { return []byte(q + "\x00\x00\x00") }
	a := s.Register("a", s.Env.Registry.Intern(body("select 1")))
	// The client's own Parse on a server connection that lacks the statement:
	// the proxy's Parse goes out, its answer is the client's.
	got := messages(t, s.Prepare(a, true))
	if strings.Join(got, " ") != "P:"+a.Stmt.Name {
		t.Fatalf("first Parse: %v", got)
	}
	if p := s.Q.Front(); p.Kind != ExpectParse || p.Action != Forward {
		t.Fatalf("queued %+v", p)
	}
	if act, _ := s.Answer(wire.MsgParseComplete); act != Forward || s.Q.Len() != 0 {
		t.Fatalf("ParseComplete: %v, %d left", act, s.Q.Len())
	}
	// A Bind of it now: nothing to send ahead.
	if b := s.Prepare(a, false); len(b) != 0 || s.Q.Len() != 0 {
		t.Fatalf("cached statement sent again: %v", messages(t, b))
	}
	// Parsed again by the client: a throwaway Parse whose answer is the
	// client's and a Close nobody sees.
	got = messages(t, s.Prepare(a, true))
	if strings.Join(got, " ") != "P:"+ThrowawayName+" C:"+ThrowawayName {
		t.Fatalf("Parse of a cached statement: %v", got)
	}
	if act, _ := s.Answer(wire.MsgParseComplete); act != Forward {
		t.Fatalf("throwaway ParseComplete: %v", act)
	}
	if act, _ := s.Answer(wire.MsgCloseComplete); act != Swallow {
		t.Fatalf("throwaway CloseComplete: %v", act)
	}
	// Two more statements on a server connection bounded to two: the oldest
	// is closed first.
	b := s.Register("b", s.Env.Registry.Intern(body("select 2")))
	c := s.Register("c", s.Env.Registry.Intern(body("select 3")))
	s.Prepare(b, false)
	s.Answer(wire.MsgParseComplete)
	got = messages(t, s.Prepare(c, false))
	if strings.Join(got, " ") != "C:"+a.Stmt.Name+" P:"+c.Stmt.Name {
		t.Fatalf("eviction: %v", got)
	}
	if n := s.Env.Counters.Evictions.Load(); n != 1 {
		t.Fatalf("evictions %d", n)
	}
	if act, _ := s.Answer(wire.MsgCloseComplete); act != Swallow {
		t.Fatalf("the eviction's CloseComplete reaches the client: %v", act)
	}
	if act, _ := s.Answer(wire.MsgParseComplete); act != Swallow {
		t.Fatalf("the proxy's ParseComplete reaches the client: %v", act)
	}
	if s.Server.Len() != 2 || s.Env.Counters.ServerParses.Load() != 3 || s.Env.Counters.Hits.Load() != 2 {
		t.Fatalf("server has %d, parses %d, hits %d", s.Server.Len(), s.Env.Counters.ServerParses.Load(), s.Env.Counters.Hits.Load())
	}
	// DISCARD ALL ran on the server connection: everything is closed again
	// before it is relied on.
	s.Server.Dirty = true
	got = messages(t, s.Prepare(b, false))
	if len(got) != 3 || got[0][0] != 'C' || got[1][0] != 'C' || got[2] != "P:"+b.Stmt.Name {
		t.Fatalf("after DISCARD ALL: %v", got)
	}
}

func TestSessionErrorTakesBackTheBatch(t *testing.T) {
	s, reg := newSession(8)
	st := reg.Intern([]byte("select x\x00\x00\x00"))
	rg := s.Register("x", st)
	s.Q.Push(Pending{Kind: ExpectBind}) // a Bind before the failing Parse
	s.Prepare(rg, true)                 // the client's Parse of x
	s.Q.Push(Pending{Kind: ExpectBind})
	s.Q.Push(Pending{Kind: ExpectQuery}) // skipped: no ReadyForQuery for it
	s.Q.Push(Pending{Kind: ExpectSync})
	if act, _ := s.Answer(wire.MsgBindComplete); act != Forward {
		t.Fatalf("BindComplete: %v", act)
	}
	msg := wire.AppendError(nil, wire.SeverityError, "42703", `column "x" does not exist`, "")
	act, repl, skipped := s.AnswerError(ReadServerError(msg))
	if act != Forward || repl != nil || skipped != 1 {
		t.Fatalf("error: %v %q skipped %d", act, repl, skipped)
	}
	if s.Stmts.Get("x") != nil || st.Refs != 0 || s.Server.Len() != 0 {
		t.Fatalf("the failed Parse is still registered: %v refs %d server %d", s.Stmts.Get("x"), st.Refs, s.Server.Len())
	}
	if s.Q.Len() != 1 || s.Q.Front().Kind != ExpectSync {
		t.Fatalf("queue after the error: %d", s.Q.Len())
	}
	if s.Ready() || s.Q.Len() != 0 {
		t.Fatalf("ReadyForQuery left %d", s.Q.Len())
	}
}

func TestSessionErrorRenamesStatement(t *testing.T) {
	s, reg := newSession(8)
	rg := s.Register("mine", reg.Intern([]byte("select $1::int\x00\x00\x00")))
	s.Prepare(rg, false)
	s.Q.Push(Pending{Kind: ExpectBind, Stmt: rg.Stmt, Reg: rg})
	s.Q.Push(Pending{Kind: ExpectSync})
	s.Answer(wire.MsgParseComplete)
	msg := wire.AppendError(nil, wire.SeverityError, "22P02",
		`invalid input for statement "`+rg.Stmt.Name+`"`, "")
	act, repl, _ := s.AnswerError(ReadServerError(msg))
	if act != Replace || !bytes.Contains(repl, []byte(`"mine"`)) {
		t.Fatalf("the client sees the proxy's name: %v %q", act, repl)
	}
	// The statement stays prepared: the Bind failed, not the Parse.
	if s.Stmts.Get("mine") != rg || s.Server.Len() != 1 {
		t.Fatal("the Bind's error dropped the statement")
	}
}

func TestSessionCachedPlanBumpsGeneration(t *testing.T) {
	s, reg := newSession(8)
	rg := s.Register("p", reg.Intern([]byte("select * from t\x00\x00\x00")))
	s.Prepare(rg, false)
	s.Answer(wire.MsgParseComplete)
	s.Q.Push(Pending{Kind: ExpectBind, Stmt: rg.Stmt, Reg: rg})
	s.Q.Push(Pending{Kind: ExpectSync})
	s.AnswerError(ReadServerError(CachedPlanError))
	if rg.Stmt.Gen.Load() != 2 || rg.Gen != 2 {
		t.Fatalf("generation %d, client's %d", rg.Stmt.Gen.Load(), rg.Gen)
	}
	// The next use prepares it anew, closed first.
	s.Ready()
	if got := messages(t, s.Prepare(rg, false)); len(got) != 2 || got[0][0] != 'C' || got[1][0] != 'P' {
		t.Fatalf("after a cached-plan error: %v", got)
	}
}

func TestSessionParseAnsweredLocallyThenFails(t *testing.T) {
	s, reg := newSession(8)
	rg := s.Register("q", reg.Intern([]byte("select nope\x00\x00\x00")))
	rg.Unconfirmed = true // ParseComplete was sent without a server connection
	s.Prepare(rg, false)  // at its Bind
	s.Q.Push(Pending{Kind: ExpectBind, Stmt: rg.Stmt, Reg: rg})
	s.Q.Push(Pending{Kind: ExpectSync})
	s.AnswerError(ReadServerError(wire.AppendError(nil, wire.SeverityError, "42703", "no", "")))
	if s.Stmts.Get("q") != nil {
		t.Fatal("a statement that does not parse keeps its name")
	}
	// In a failed transaction (25P02) it would have stayed the client's.
	rg = s.Register("q", reg.Intern([]byte("select nope\x00\x00\x00")))
	rg.Unconfirmed = true
	s.Ready()
	s.Prepare(rg, false)
	s.Q.Push(Pending{Kind: ExpectSync})
	s.AnswerError(ReadServerError(wire.AppendError(nil, wire.SeverityError, "25P02", "aborted", "")))
	if s.Stmts.Get("q") != rg || !rg.Unconfirmed {
		t.Fatal("a refusal by a failed transaction dropped the statement")
	}
}

func TestSessionBounds(t *testing.T) {
	s, reg := newSession(8)
	var firsts []bool
	s.Hooks = hookFuncs{limit: func(first bool) { firsts = append(firsts, first) }}
	for _, n := range []string{"a", "b", "c"} {
		if r := s.Room(10); r != nil {
			t.Fatalf("refused %s: %q", n, r)
		}
		s.Register(n, reg.Intern([]byte("select '"+n+"'\x00\x00\x00")))
	}
	r := s.Room(10)
	if r == nil || !bytes.Contains(r, []byte(wire.CodeProgramLimitExceeded)) {
		t.Fatalf("fourth statement: %q", r)
	}
	s.Unregister(s.Stmts.Get("a"))
	if r := s.Room(2000); r == nil || !bytes.Contains(r, []byte("--max-client-prepared-bytes")) {
		t.Fatalf("a statement over the bytes bound: %q", r)
	}
	if !s.TooLong(1<<10+5) || s.TooLong(1<<10+4) {
		t.Fatal("TooLong")
	}
	if len(firsts) != 2 || !firsts[0] || firsts[1] || s.Env.Counters.StatementLimit.Load() != 2 {
		t.Fatalf("reports %v, counted %d", firsts, s.Env.Counters.StatementLimit.Load())
	}
	if got := s.FailInstead(&Undo{Replace: r}); !bytes.Equal(got, FailParse) {
		t.Fatal("FailInstead sends something else")
	}
	act, repl, _ := s.AnswerError(ReadServerError(wire.AppendError(nil, wire.SeverityError, "42703", "x", "")))
	if act != Replace || !bytes.Equal(repl, r) {
		t.Fatalf("the refusal is not what the client gets: %v", act)
	}
}

func TestSessionDropAndApplySQL(t *testing.T) {
	s, reg := newSession(8)
	for _, n := range []string{"a", "b"} {
		s.Register(n, reg.Intern([]byte("select '"+n+"'\x00\x00\x00")))
	}
	e := ClassifyQuery([]byte("DEALLOCATE a"))
	if !s.LocalTag(&e, false, false) || e.LocalTag == nil {
		t.Fatal("DEALLOCATE of a protocol-level statement is not answered locally")
	}
	s.Drop(&e)
	if s.Stmts.Get("a") != nil || s.Stmts.Len() != 1 {
		t.Fatal("DEALLOCATE a")
	}
	var pins []string
	s.Hooks = hookFuncs{pinned: func(r string) { pins = append(pins, r) }}
	e = ClassifyQuery([]byte("PREPARE p AS select 1"))
	s.ApplySQL(&e)
	if len(pins) != 1 || pins[0] != "sql_prepare" {
		t.Fatalf("pins %v", pins)
	}
	e = ClassifyQuery([]byte("DISCARD ALL"))
	s.ApplySQL(&e)
	if s.Stmts.Len() != 0 || !s.Server.Dirty || reg.r.Len() != 0 {
		t.Fatalf("DISCARD ALL left %d statements, dirty %v, registry %d", s.Stmts.Len(), s.Server.Dirty, reg.r.Len())
	}
}

func TestSessionAnswerAllocs(t *testing.T) {
	s, reg := newSession(8)
	rg := s.Register("a", reg.Intern([]byte("select 1\x00\x00\x00")))
	s.Prepare(rg, false)
	s.Answer(wire.MsgParseComplete)
	allocs := testing.AllocsPerRun(100, func() {
		if len(s.Prepare(rg, false)) != 0 {
			t.Fatal("sent again")
		}
		s.Q.Push(Pending{Kind: ExpectBind, Stmt: rg.Stmt, Reg: rg})
		s.Q.Push(Pending{Kind: ExpectExecute})
		s.Q.Push(Pending{Kind: ExpectSync})
		s.Answer(wire.MsgBindComplete)
		s.Answer(wire.MsgDataRow)
		s.Answer(wire.MsgCommandComplete)
		s.Ready()
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per prepared-statement round trip", allocs)
	}
}

func TestSessionBatchBookkeeping(t *testing.T) {
	s, _ := newSession(8)
	// Parse, Bind, Execute, Sync; then a simple Query in the same flight.
	for _, m := range []byte{wire.MsgParse, wire.MsgBind} {
		if s.Sent(m) {
			t.Fatalf("%c counted as a statement", m)
		}
		s.Q.Push(Pending{Kind: map[byte]Expected{wire.MsgParse: ExpectParse, wire.MsgBind: ExpectBind}[m]})
	}
	if !s.Sent(wire.MsgExecute) || !s.Partial || s.Between() {
		t.Fatal("Execute")
	}
	s.Sent(wire.MsgSync)
	s.Sent(wire.MsgQuery)
	if s.Outstanding != 2 || s.Partial || s.Syncs != 1 || s.Q.Len() != 5 {
		t.Fatalf("outstanding %d partial %v syncs %d queued %d", s.Outstanding, s.Partial, s.Syncs, s.Q.Len())
	}
	for _, m := range []byte{wire.MsgParseComplete, wire.MsgBindComplete, wire.MsgDataRow, wire.MsgCommandComplete} {
		s.Answer(m)
	}
	if s.ReadyForQuery(wire.TxIdle) || s.Outstanding != 1 || s.Q.Len() != 1 {
		t.Fatalf("after the Sync's ReadyForQuery: %d due, %d queued", s.Outstanding, s.Q.Len())
	}
	if d := Decide(s.Boundary(false, false)); d != KeepReading {
		t.Fatalf("with a Query due: %v", d)
	}
	s.Answer(wire.MsgCommandComplete)
	s.ReadyForQuery(wire.TxActive)
	if d := Decide(s.Boundary(false, false)); d != Stay {
		t.Fatalf("in a transaction: %v", d)
	}
	// COPY IN: the Syncs sent after its Execute are ignored by the server.
	s.Sent(wire.MsgExecute)
	s.Sent(wire.MsgSync)
	s.Sent(wire.MsgSync)
	s.Sent(wire.MsgCopyDone)
	if s.Outstanding != 0 || s.Q.Len() != 1 || s.Q.Back().Kind != ExpectExecute {
		t.Fatalf("after CopyDone: %d due, %d queued", s.Outstanding, s.Q.Len())
	}
	s.Detached()
	if s.Server != nil || s.Q.Len() != 0 || !s.Between() {
		t.Fatal("Detached")
	}
}

func TestSessionSwallowFront(t *testing.T) {
	s, _ := newSession(8)
	s.Q.Push(Pending{Kind: ExpectQuery, Action: Swallow, Undo: &Undo{Fatal: true}})
	s.Q.Push(Pending{Kind: ExpectQuery})
	for _, c := range []struct {
		t              byte
		swallow, fatal bool
	}{
		{wire.MsgCommandComplete, true, false},
		{wire.MsgNotification, false, false}, // the client's, whoever asked
		{wire.MsgErrorResponse, true, true},
	} {
		if sw, f := s.SwallowFront(c.t); sw != c.swallow || f != c.fatal {
			t.Fatalf("%c: swallow %v fatal %v", c.t, sw, f)
		}
	}
	if !s.ReadyForQuery(wire.TxIdle) {
		t.Fatal("the proxy's Query was not reported")
	}
	if sw, _ := s.SwallowFront(wire.MsgCommandComplete); sw {
		t.Fatal("the client's own answer is swallowed")
	}
}

// hookFuncs are Hooks made of funcs (nil: ignored).
type hookFuncs struct {
	pinned func(string)
	limit  func(bool)
}

func (h hookFuncs) Pinned(r string) {
	if h.pinned != nil {
		h.pinned(r)
	}
}

func (h hookFuncs) StatementLimit(first bool) {
	if h.limit != nil {
		h.limit(first)
	}
}
