package engine

import (
	"slices"
	"strings"
	"testing"

	"github.com/pgsidecar/pgsidecar/internal/sqlscan"
	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// effectOf is the Effect of every statement of q.
func effectOf(q string) Effect {
	var e Effect
	var sc sqlscan.Scanner
	sc.Reset([]byte(q))
	for sc.Next() {
		e.Note(sc.Statement())
	}
	return e
}

func TestEffect(t *testing.T) {
	for _, c := range []struct {
		q       string
		dirty   []string
		resets  []string
		pin     string
		changes bool
	}{
		{q: "SELECT 1", changes: false},
		{q: "SET search_path = a, b", dirty: []string{"search_path"}, changes: true},
		{q: "SET LOCAL statement_timeout = 5", changes: false},
		{q: "RESET work_mem; SET ROLE r", dirty: []string{"work_mem", "role", "session_authorization"}, resets: []string{"work_mem"}, changes: true},
		{q: "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", dirty: []string{"default_transaction_isolation", "default_transaction_read_only", "default_transaction_deferrable"}, changes: true},
		{q: "SELECT set_config('a.b', 'x', false)", dirty: []string{"a.b"}, changes: true},
		{q: "SELECT set_config('a.b', 'x', true)", changes: false},
		{q: "LISTEN ch", pin: "listen", changes: true},
		{q: "SELECT pg_advisory_lock(1)", pin: "advisory_lock", changes: true},
		{q: "CREATE TEMP TABLE t (a int)", pin: "temp_table", changes: true},
		{q: "LOAD 'auto_explain'", pin: "load", changes: true},
		{q: "LISTEN a; CREATE TEMP TABLE t (a int)", pin: "listen", changes: true}, // the first pin names it
	} {
		e := effectOf(c.q)
		if !slices.Equal(e.Dirty, c.dirty) || !slices.Equal(e.Resets, c.resets) || e.Pin != c.pin || e.Changes() != c.changes {
			t.Errorf("%q: got dirty %q resets %q pin %q changes %v", c.q, e.Dirty, e.Resets, e.Pin, e.Changes())
		}
	}
	if e := effectOf("LISTEN x"); !e.Listen || e.Permanent {
		t.Errorf("LISTEN: %+v", e)
	}
	if e := effectOf("LOAD 'x'"); !e.Permanent {
		t.Errorf("LOAD: %+v", e)
	}
	if e := effectOf("DISCARD ALL"); !e.ResetAll || !e.UnpinCheck {
		t.Errorf("DISCARD ALL: %+v", e)
	}
	if e := effectOf("UNLISTEN *"); !e.UnpinCheck || e.Pin != "" {
		t.Errorf("UNLISTEN *: %+v", e)
	}
}

func TestRefusal(t *testing.T) {
	msg := Refusal("LISTEN")
	if len(msg) < 5 || msg[0] != wire.MsgErrorResponse {
		t.Fatalf("not an ErrorResponse: %q", msg)
	}
	f := wire.ParseError(msg[5:])
	if f.Code != wire.CodeFeatureNotSupported || !strings.Contains(f.Message, "LISTEN") || !strings.Contains(f.Message, "--pin-policy refuse") {
		t.Errorf("refusal: %+v", f)
	}
}

func TestParseOptions(t *testing.T) {
	got := ParseOptions(`-c search_path=a\ b --work-mem=64MB -cstatement_timeout=5s junk -c`)
	want := [][2]string{{"search_path", "a b"}, {"work_mem", "64MB"}, {"statement_timeout", "5s"}}
	if !slices.Equal(got, want) {
		t.Errorf("ParseOptions: %q, want %q", got, want)
	}
}

func TestSettingsKey(t *testing.T) {
	if SettingsKey(nil) != 0 || SettingsKey(Settings{}) != 0 {
		t.Error("no settings must key 0")
	}
	a := SettingsKey(Settings{"a": "1", "b": "2"})
	if a == 0 || a != SettingsKey(Settings{"b": "2", "a": "1"}) {
		t.Error("key depends on map order or is 0")
	}
	if a == SettingsKey(Settings{"a": "1", "b": "3"}) || a == SettingsKey(Settings{"a": "1b", "": "2"}) {
		t.Error("different settings, same key")
	}
}

func TestQuote(t *testing.T) {
	if got := QuoteLiteral(`it's a \ test`); got != `E'it''s a \\ test'` {
		t.Errorf("QuoteLiteral: %s", got)
	}
	if got := QuoteIdent(`we"ird`); got != `"we""ird"` {
		t.Errorf("QuoteIdent: %s", got)
	}
	names := []string{"work_mem", "session_authorization", "role"}
	slices.SortFunc(names, func(a, b string) int { return strings.Compare(SetOrder(a), SetOrder(b)) })
	if names[0] != "session_authorization" {
		t.Errorf("session_authorization must be set first (it resets role): %v", names)
	}
}

func TestAppendParse(t *testing.T) {
	// A client's Parse body: the query, its terminator, and no parameter types.
	got := AppendParse([]byte("x"), StatementPrefix+"1", "SELECT 1\x00\x00\x00")
	want := append([]byte("x"), wire.AppendParse(nil, StatementPrefix+"1", "SELECT 1")...)
	if string(got) != string(want) {
		t.Errorf("AppendParse:\n got %q\nwant %q", got, want)
	}
}

func TestClassifyQuery(t *testing.T) {
	e := ClassifyQuery([]byte("PREPARE a AS SELECT 1; DEALLOCATE b; SET x.y = 1"))
	if e.Single || e.First != sqlscan.KindPrepare || !slices.Equal(e.Prepare, []string{"a"}) ||
		!slices.Equal(e.Dealloc, []string{"b"}) || e.DropAll || !slices.Equal(e.State.Dirty, []string{"x.y"}) || e.State.Pin != "sql_prepare" {
		t.Errorf("got %+v", e)
	}
	if e := ClassifyQuery([]byte("DEALLOCATE ALL")); !e.Single || !e.DropAll || e.First != sqlscan.KindDeallocateAll {
		t.Errorf("DEALLOCATE ALL: %+v", e)
	}
	if e := ClassifyQuery([]byte("DISCARD ALL")); !e.DropAll || !e.State.ResetAll {
		t.Errorf("DISCARD ALL: %+v", e)
	}
	if e := ClassifyQuery([]byte("SELECT 1")); !e.Single || e.State.Changes() || e.Name != "" {
		t.Errorf("SELECT: %+v", e)
	}
}

func TestClientStatements(t *testing.T) {
	var c ClientStatements
	a := &Statement{Name: StatementPrefix + "1", Key: "SELECT 1\x00\x00\x00"}
	b := &Statement{Name: StatementPrefix + "2", Key: "SELECT 22\x00\x00\x00"}
	a.Gen.Store(3)
	if c.Has([]byte("s")) || c.Get("s") != nil || c.Len() != 0 || c.Restore(&Registration{Name: "s", Stmt: a}) {
		t.Fatal("empty set not empty, or restored into a cleared set")
	}
	ra := c.Register("s", a)
	if ra.Gen != 3 || c.Get("s") != ra || !c.Has([]byte("s")) || c.Bytes() != int64(len(a.Key)) {
		t.Fatalf("after Register: %+v bytes %d", ra, c.Bytes())
	}
	rb := c.Register("s", b) // same name: replaces
	if c.Len() != 1 || c.Bytes() != int64(len(b.Key)) || c.Remove(ra) {
		t.Fatalf("replace: len %d bytes %d", c.Len(), c.Bytes())
	}
	if !c.Remove(rb) || c.Len() != 0 || c.Bytes() != 0 {
		t.Fatal("Remove")
	}
	if !c.Restore(rb) || c.Get("s") != rb || c.Bytes() != int64(len(b.Key)) {
		t.Fatal("Restore of a free name")
	}
	c.Register("t", a)
	if c.Restore(&Registration{Name: "t", Stmt: b}) {
		t.Fatal("Restore over a taken name")
	}
	n := 0
	c.All(func(*Registration) { n++ })
	if n != 2 {
		t.Fatalf("All visited %d", n)
	}
	c.Clear()
	if c.Len() != 0 || c.Bytes() != 0 || c.Restore(rb) {
		t.Fatal("Clear")
	}
}

func TestServerStatements(t *testing.T) {
	s := NewServerStatements()
	a, b, c := &Statement{Name: "a"}, &Statement{Name: "b"}, &Statement{Name: "c"}
	if usable, present := s.Use(a, 1, 1); usable || present || s.Oldest() != nil {
		t.Fatal("empty set has a statement")
	}
	// a's Parse goes out in batch 1: usable in batch 1, not in batch 2 until answered.
	s.Add(a, 1, 1)
	if usable, _ := s.Use(a, 1, 1); !usable {
		t.Fatal("not usable in the batch of its Parse")
	}
	if usable, present := s.Use(a, 1, 2); usable || !present {
		t.Fatal("usable in a later batch before its Parse was answered")
	}
	s.Parsed(a, 1)
	if usable, _ := s.Use(a, 1, 5); !usable {
		t.Fatal("not usable after its Parse was answered")
	}
	if usable, present := s.Use(a, 2, 5); usable || !present {
		t.Fatal("a stale generation is usable")
	}
	// Least recently used: b, then c used, then a used again: b is the oldest.
	s.Add(b, 1, 0)
	s.Add(c, 1, 0)
	s.Use(c, 1, 9)
	s.Use(a, 1, 9)
	if s.Oldest() != b || s.Len() != 3 {
		t.Fatalf("oldest %v, len %d", s.Oldest().Name, s.Len())
	}
	// Forget with a batch drops only that batch's slot.
	s.Add(b, 1, 7)
	s.Forget(b, 6)
	if _, present := s.Use(b, 1, 7); !present {
		t.Fatal("a later Parse's slot was dropped")
	}
	s.Forget(b, 7)
	if _, present := s.Use(b, 1, 7); present {
		t.Fatal("Forget(seg) kept its own slot")
	}
	// A skipped Close: present, never usable until prepared anew.
	s.MarkStale(c)
	if usable, present := s.Use(c, 1, 9); usable || !present {
		t.Fatal("a stale statement is usable, or forgotten")
	}
	n := 0
	s.All(func(st *Statement) { s.Forget(st, 0); n++ })
	if n != 2 || s.Len() != 0 {
		t.Fatalf("All/Forget: %d visited, %d left", n, s.Len())
	}
}

func TestStatementRegistry(t *testing.T) {
	var r StatementRegistry
	body := []byte("SELECT $1\x00\x00\x01\x00\x00\x00\x17")
	a := r.Intern(body)
	if a.Refs != 1 || a.Gen.Load() != 1 || !strings.HasPrefix(a.Name, StatementPrefix) || a.Effect != nil {
		t.Fatalf("interned %+v", a)
	}
	if string(a.Parse) != string(AppendParse(nil, a.Name, string(body))) {
		t.Fatal("the server Parse is not the client's body under the server name")
	}
	if b := r.Intern(body); b != a || a.Refs != 2 || r.Len() != 1 {
		t.Fatal("the same text interned twice")
	}
	other := r.Intern([]byte("LISTEN x\x00\x00\x00"))
	if other == a || other.Name == a.Name || other.Effect == nil || other.Effect.Pin != "listen" {
		t.Fatalf("second statement %+v", other)
	}
	r.Release(a)
	r.Release(a)
	if r.Len() != 1 || a.Refs != 0 {
		t.Fatalf("released statement kept: len %d refs %d", r.Len(), a.Refs)
	}
	// An undone Close brings it back under its old name.
	r.Acquire(a)
	if r.Len() != 2 || r.Intern(body) != a {
		t.Fatal("Acquire did not bring the statement back")
	}
	// Server-side names are never reused.
	r.Release(a)
	r.Release(a)
	if c := r.Intern(body); c == a || c.Name == a.Name || c.Name == other.Name {
		t.Fatalf("a name was reused: %s", c.Name)
	}
}
