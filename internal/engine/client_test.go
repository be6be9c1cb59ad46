package engine

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// sent is what the server gets for the client message msg by x.
func sent(msg []byte, x Send) []byte {
	b := append([]byte(nil), x.Pre...)
	if x.From != Drop {
		b = append(b, msg[x.From:]...)
	}
	return append(b, x.Post...)
}

func header(msg []byte) wire.Header {
	return wire.Header{Type: msg[0], Len: len(msg) - 1}
}

func trackedSession() (*Session, *testRegistry) {
	s, reg := newSession(8)
	s.Track, s.Pooled = true, true
	s.Env.Limits.MaxClientStatements = 100
	return s, reg
}

func TestUseRenamesBind(t *testing.T) {
	s, _ := trackedSession()
	if b := s.ParseNamed([]byte("mine"), []byte("select $1::int\x00\x00\x00")); len(b) == 0 {
		t.Fatal("nothing sent for the Parse")
	}
	s.Answer(wire.MsgParseComplete)
	st := s.Stmts.Get("mine").Stmt
	// A Bind with a parameter after the names: the rest of the message is not
	// in head, only the names are needed.
	bind := []byte{wire.MsgBind, 0, 0, 0, 0}
	bind = append(bind, "portal\x00mine\x00"...)
	bind = append(bind, 0, 0, 0, 1, 0, 0, 0, 2, '4', '2', 0, 0)
	n := len(bind) - 1
	bind[1], bind[2], bind[3], bind[4] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
	x, err := s.Use(header(bind), bind[:wire.HeaderLen+12])
	if err != nil {
		t.Fatal(err)
	}
	want := wire.AppendBind(nil, "portal", st.Name)
	got := sent(bind, x)
	if got[0] != wire.MsgBind || !bytes.Contains(got, []byte("portal\x00"+st.Name+"\x00")) {
		t.Fatalf("renamed Bind %q", got)
	}
	if gl := int(got[1])<<24 | int(got[2])<<16 | int(got[3])<<8 | int(got[4]); gl != len(got)-1 {
		t.Fatalf("length field %d for %d bytes (%q)", gl, len(got)-1, want)
	}
	if !bytes.HasSuffix(got, []byte{0, 2, '4', '2', 0, 0}) {
		t.Fatalf("parameters lost: %q", got)
	}
	if p := s.Q.Back(); p.Kind != ExpectBind || p.Reg == nil || s.LastStatement() != "select $1::int" {
		t.Fatalf("queued %+v, last statement %q", p, s.LastStatement())
	}
	// Unknown name: forwarded as is; a protocol violation for a cut one.
	other := wire.AppendBind(nil, "", "theirs")
	if x, _ := s.Use(header(other), other); !bytes.Equal(sent(other, x), other) {
		t.Fatal("a Bind of a name the client does not have was changed")
	}
	if _, err := s.Use(wire.Header{Type: wire.MsgBind, Len: 9}, []byte{wire.MsgBind, 0, 0, 0, 9, 'a', 'b'}); !errors.Is(err, ErrProtocol) {
		t.Fatalf("cut names: %v", err)
	}
}

func TestUseUnnamedReplayAndMissing(t *testing.T) {
	s, _ := trackedSession()
	// No unnamed statement: 26000, and the server skips to the Sync.
	bind := wire.AppendBind(nil, "", "")
	x, _ := s.Use(header(bind), bind)
	if x.From != Drop || !bytes.Equal(x.Pre, FailParse) {
		t.Fatalf("Bind without an unnamed statement: %+v", x)
	}
	act, repl, _ := s.AnswerError(ReadServerError(wire.AppendError(nil, wire.SeverityError, "42703", "x", "")))
	if act != Replace || !bytes.Contains(repl, []byte("26000")) {
		t.Fatalf("the client gets %v %q", act, repl)
	}
	s.Ready()
	// Parsed and answered, then the client moves to another server connection:
	// the Bind there replays the Parse first.
	parse := wire.AppendParse(nil, "", "select 7")
	msg := s.ParseUnnamed(append(s.Un.Next[:0], parse...), false, false)
	if !bytes.Equal(msg, parse) {
		t.Fatal("the unnamed Parse was changed")
	}
	s.Answer(wire.MsgParseComplete)
	if !s.Un.Valid || !s.Un.Here {
		t.Fatal("the answered Parse is not the client's")
	}
	s.Attached(NewServerStatements())
	x, _ = s.Use(header(bind), bind)
	if got := sent(bind, x); !bytes.Equal(got, append(append([]byte(nil), parse...), bind...)) {
		t.Fatalf("replay: %q", got)
	}
	if act, _ := s.Answer(wire.MsgParseComplete); act != Swallow {
		t.Fatal("the replay's ParseComplete reaches the client")
	}
	if act, _ := s.Answer(wire.MsgBindComplete); act != Forward {
		t.Fatal("the Bind's answer does not")
	}
}

func TestParseNamedOweAndPay(t *testing.T) {
	s, _ := trackedSession()
	s.Attached(nil)
	if r := s.Owe([]byte("a"), []byte("select 1\x00\x00\x00")); r != nil {
		t.Fatalf("refused: %q", r)
	}
	if r := s.Owe([]byte("a"), []byte("select 2\x00\x00\x00")); r == nil || !bytes.Contains(r, []byte("42P05")) {
		t.Fatalf("a name taken twice: %q", r)
	}
	if r := s.Owe([]byte("b"), []byte("select 2\x00\x00\x00")); r != nil {
		t.Fatal(r)
	}
	if s.Owing() != 2 || !s.Stmts.Get("a").Unconfirmed {
		t.Fatalf("owing %d", s.Owing())
	}
	if got := s.PayOwed(nil); !bytes.Equal(got, append(append([]byte(nil), ParseComplete...), ParseComplete...)) || s.Owing() != 0 {
		t.Fatalf("paid %q", got)
	}
	// Owed then a Describe needs a server connection: the Parses go first and
	// their answers are the client's.
	s.Owe([]byte("c"), []byte("select 3\x00\x00\x00"))
	s.Attached(NewServerStatements())
	got := messages(t, s.SendOwed())
	if len(got) != 1 || got[0] != "P:"+s.Stmts.Get("c").Stmt.Name || s.Stmts.Get("c").Unconfirmed {
		t.Fatalf("owed Parses sent: %v", got)
	}
	if act, _ := s.Answer(wire.MsgParseComplete); act != Forward {
		t.Fatal("the owed Parse's answer does not reach the client")
	}
	if s.Env.Counters.ClientParses.Load() != 4 {
		t.Fatalf("client parses %d", s.Env.Counters.ClientParses.Load())
	}
	// ParseNamed of a name the client has: 42P05 from a failing Parse.
	if b := s.ParseNamed([]byte("c"), []byte("x\x00\x00\x00")); !bytes.Equal(b, FailParse) {
		t.Fatalf("sent %q", b)
	}
	if x := s.ParseTooLong(1 << 20); x.From != Drop || !bytes.Equal(x.Pre, FailParse) {
		t.Fatal("a too long Parse is sent")
	}
}

func TestCloseNamedIsUndoneWhenSkipped(t *testing.T) {
	s, _ := trackedSession()
	s.ParseNamed([]byte("a"), []byte("select 1\x00\x00\x00"))
	s.Answer(wire.MsgParseComplete)
	rg := s.Stmts.Get("a")
	s.Q.Push(Pending{Kind: ExpectExecute}) // fails
	cl := wire.AppendClose(nil, 'S', "a")
	if x := s.CloseMessage(cl); !bytes.Equal(sent(cl, x), cl) {
		t.Fatal("Close changed")
	}
	if s.Stmts.Get("a") != nil {
		t.Fatal("Close did not drop the name")
	}
	s.Q.Push(Pending{Kind: ExpectSync})
	s.AnswerError(ReadServerError(wire.AppendError(nil, wire.SeverityError, "22012", "division by zero", "")))
	if s.Stmts.Get("a") != rg || rg.Stmt.Refs != 1 {
		t.Fatal("the skipped Close was not taken back")
	}
}

func TestQueryLocalAndFixup(t *testing.T) {
	s, _ := trackedSession()
	s.ParseNamed([]byte("a"), []byte("select 1\x00\x00\x00"))
	s.Answer(wire.MsgParseComplete)
	// DEALLOCATE of a protocol-level statement while attached: an empty query
	// stands in, its answer is the DEALLOCATE's.
	q := wire.AppendQuery(nil, "DEALLOCATE a")
	e := ClassifyQuery([]byte("DEALLOCATE a"))
	if !s.LocalTag(&e, true, false) {
		t.Fatal("not answered locally")
	}
	s.Q.Push(Pending{Kind: ExpectQuery})
	x := s.Query(&e, q)
	if x.From != Drop || !bytes.Equal(x.Pre, EmptyQuery) || s.Stmts.Get("a") != nil {
		t.Fatalf("DEALLOCATE: %+v", x)
	}
	if act, repl := s.Answer(wire.MsgEmptyQuery); act != Replace || !bytes.Contains(repl, []byte("DEALLOCATE")) {
		t.Fatalf("the client gets %v %q", act, repl)
	}
	s.Ready()
	// RESET of a startup setting: the query goes out, then a fix-up whose
	// whole answer is swallowed.
	st := &wire.Startup{Params: []wire.StartupParam{{Name: "user", Value: "u"}, {Name: "application_name", Value: "app"}}}
	s.State.Init(st)
	q = wire.AppendQuery(nil, "RESET application_name")
	e = ClassifyQuery([]byte("RESET application_name"))
	s.Q.Push(Pending{Kind: ExpectQuery})
	x = s.Query(&e, q)
	if x.From != 0 || x.Swallowed != 1 || !bytes.Contains(x.Post, []byte("application_name")) {
		t.Fatalf("RESET: %+v %q", x, x.Post)
	}
	if b := s.Q.Back(); b.Kind != ExpectQuery || b.Action != Swallow {
		t.Fatalf("fix-up queued as %+v", b)
	}
	if !strings.HasPrefix(s.LastStatement(), "RESET") {
		t.Fatalf("last statement %q", s.LastStatement())
	}
}

func TestParseUnnamedDeallocateAndExecute(t *testing.T) {
	s, _ := trackedSession()
	s.ParseNamed([]byte("a"), []byte("select 1\x00\x00\x00"))
	s.Answer(wire.MsgParseComplete)
	parse := wire.AppendParse(nil, "", "DEALLOCATE a")
	msg := s.ParseUnnamed(append([]byte(nil), parse...), false, false)
	if !bytes.Equal(msg, wire.AppendParse(nil, "", "")) || s.Stmts.Get("a") != nil {
		t.Fatalf("sent %q", msg)
	}
	s.Answer(wire.MsgParseComplete)
	bind := wire.AppendBind(nil, "", "")
	s.Use(header(bind), bind)
	s.Answer(wire.MsgBindComplete)
	s.Q.Push(Pending{Kind: ExpectExecute})
	ex := wire.AppendExecute(nil, "")
	if x := s.Execute(ex); !bytes.Equal(sent(ex, x), ex) {
		t.Fatal("Execute changed")
	}
	if act, repl := s.Answer(wire.MsgEmptyQuery); act != Replace || !bytes.Contains(repl, []byte("DEALLOCATE")) {
		t.Fatalf("the Execute's answer: %v %q", act, repl)
	}
}

func TestUseRefusesPins(t *testing.T) {
	s, _ := trackedSession()
	s.Env.Limits.RefusePins = true
	s.ParseNamed([]byte("l"), []byte("LISTEN x\x00\x00\x00"))
	s.Answer(wire.MsgParseComplete)
	bind := wire.AppendBind(nil, "", "l")
	x, err := s.Use(header(bind), bind)
	if err != nil || x.From != Drop || !bytes.Equal(x.Pre, FailParse) {
		t.Fatalf("a pinning Bind is sent: %+v %v", x, err)
	}
	if s.State.Pin != "" {
		t.Fatalf("pinned anyway: %s", s.State.Pin)
	}
	s.Env.Limits.RefusePins = false
	var pins []string
	s.Hooks = hookFuncs{pinned: func(r string) { pins = append(pins, r) }}
	s.Q.Reset()
	if x, _ := s.Use(header(bind), bind); x.From == Drop || len(pins) != 1 {
		t.Fatalf("allowed pin: %+v pins %v", x, pins)
	}
}
