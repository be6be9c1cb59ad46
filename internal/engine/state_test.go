package engine

import (
	"errors"
	"strings"
	"testing"

	"github.com/pgsidecar/pgsidecar/internal/wire"
)

func newState() *State {
	var s State
	s.Init(&wire.Startup{Params: []wire.StartupParam{
		{Name: "user", Value: "app"}, {Name: "database", Value: "db"},
		{Name: "Application_Name", Value: "worker"}, {Name: "_pq_.x", Value: "y"},
		{Name: "options", Value: "-c search_path=s1 --work-mem=8MB"},
	}})
	return &s
}

func query(b []byte) string {
	if len(b) < 6 || b[0] != wire.MsgQuery {
		return "not a Query"
	}
	return string(b[5 : len(b)-1])
}

func TestStateInitAndReplay(t *testing.T) {
	s := newState()
	if len(s.Startup) != 3 || s.Startup["application_name"] != "worker" || s.Startup["search_path"] != "s1" || s.Startup["work_mem"] != "8MB" {
		t.Fatalf("startup settings: %v", s.Startup)
	}
	if s.WantKey == 0 || s.WantKey != SettingsKey(s.Want) {
		t.Fatal("WantKey is not the key of Want")
	}
	// A fresh server connection gets every setting, once.
	var have Settings
	q := query(s.Replay(&have, 0))
	want := "SELECT pg_catalog.set_config(E'application_name', E'worker', false), " +
		"pg_catalog.set_config(E'search_path', E's1', false), pg_catalog.set_config(E'work_mem', E'8MB', false)"
	if q != want {
		t.Fatalf("replay:\n got %s\nwant %s", q, want)
	}
	if s.Replay(&have, s.WantKey) != nil {
		t.Fatal("a second replay on the same connection")
	}
	// A connection left with another client's settings: reset what the client
	// does not have, set what differs.
	have = Settings{"timezone": "UTC", "search_path": "other", "work_mem": "8MB", "application_name": "worker"}
	q = query(s.Replay(&have, 12345))
	if q != `RESET "timezone";SELECT pg_catalog.set_config(E'search_path', E's1', false)` {
		t.Fatalf("replay over another client's settings: %s", q)
	}
	if len(have) != 3 || have["search_path"] != "s1" {
		t.Fatalf("connection's settings after replay: %v", have)
	}
}

func TestStateApplyProbeUnpin(t *testing.T) {
	s := newState()
	var server Settings
	s.Replay(&server, 0) // the connection has the client's settings
	// SET and RESET of a startup setting inside a transaction.
	if p := s.Apply(ptr(effectOf("SET statement_timeout = 5; RESET search_path")), server); p != "" {
		t.Fatalf("pinned by SET: %q", p)
	}
	if got := s.FixupNames(ptr(effectOf("RESET search_path"))); len(got) != 1 || got[0] != "search_path" {
		t.Fatalf("fix-up names: %v", got)
	}
	if !(Boundary{Status: wire.TxIdle, DirtySettings: len(s.Dirty) > 0}).ProbeDue() {
		t.Fatal("no probe due after SET")
	}
	pr := s.StartProbe()
	if q := query(pr.Query); !strings.HasPrefix(q, "SELECT pg_catalog.set_config(name, CASE lower(name) WHEN E'search_path' THEN E's1' END") ||
		!strings.HasSuffix(q, "SELECT pg_catalog.current_setting(E'search_path', true), pg_catalog.current_setting(E'statement_timeout', true)") {
		t.Fatalf("probe query: %s", q)
	}
	if len(s.Dirty) != 0 || len(s.ResetNames) != 0 {
		t.Fatal("StartProbe kept what it asks about")
	}
	// A wrong number of columns is an error and changes nothing.
	if _, _, _, err := s.FinishProbe(pr, [][]byte{[]byte("s1")}, &server); !errors.Is(err, ErrProbe) {
		t.Fatalf("short row: %v", err)
	}
	key, changed, unpinned, err := s.FinishProbe(pr, [][]byte{[]byte("s1"), []byte("5ms")}, &server)
	if err != nil || !changed || unpinned {
		t.Fatalf("finish: %v %v %v", err, changed, unpinned)
	}
	if s.Want["statement_timeout"] != "5ms" || server["statement_timeout"] != "5ms" || key == 0 || key != s.WantKey || key != SettingsKey(s.Want) {
		t.Fatalf("after probe: want %v server %v key %d/%d", s.Want, server, key, s.WantKey)
	}

	// A connection whose settings are not the client's gets key 0.
	other := Settings{"search_path": "x"}
	s.Dirty = map[string]struct{}{"search_path": {}}
	if key, _, _, _ := s.FinishProbe(s.StartProbe(), [][]byte{[]byte("s1")}, &other); key != 0 {
		t.Fatalf("key of a connection with other settings: %d", key)
	}

	// LISTEN pins (once); UNLISTEN asks; an answer of 0 unpins.
	if p := s.Apply(ptr(effectOf("LISTEN a")), server); p != "listen" || !s.PinListen || !s.PinCheck {
		t.Fatalf("LISTEN: pinned %q, state %+v", p, s)
	}
	if p := s.Apply(ptr(effectOf("LISTEN b")), server); p != "" {
		t.Fatalf("pinned twice: %q", p)
	}
	s.PinCheck = false
	s.Apply(ptr(effectOf("UNLISTEN *")), server)
	pr = s.StartProbe()
	if q := query(pr.Query); !strings.Contains(q, "pg_listening_channels") {
		t.Fatalf("unpin probe: %s", q)
	}
	if _, _, unpinned, err := s.FinishProbe(pr, [][]byte{[]byte("0")}, &server); err != nil || !unpinned || s.Pin != "" || s.PinListen {
		t.Fatalf("unpin: %v %v %+v", err, unpinned, s)
	}
	// LOAD pins for good: no probe asks about it.
	s.Apply(ptr(effectOf("LOAD 'x'")), server)
	if (Boundary{Status: wire.TxIdle, Pinned: true, PinCheck: s.PinCheck, PinPermanent: s.PinPermanent}).ProbeDue() {
		t.Fatal("probe due for LOAD")
	}
}

func ptr(e Effect) *Effect { return &e }

func TestStateSQLPrepare(t *testing.T) {
	s := newState()
	e := ClassifyQuery([]byte("PREPARE a AS SELECT 1"))
	if p, all := s.ApplySQLPrepare(&e); p != "sql_prepare" || all || s.Pin != "sql_prepare" {
		t.Fatalf("PREPARE: pinned %q all %v pin %q", p, all, s.Pin)
	}
	e = ClassifyQuery([]byte("PREPARE b AS SELECT 2"))
	if p, _ := s.ApplySQLPrepare(&e); p != "" {
		t.Fatal("pinned twice")
	}
	// DEALLOCATE of a SQL statement goes to the server, not answered locally.
	d := ClassifyQuery([]byte("DEALLOCATE a"))
	if s.LocalDeallocate(&d, true, false) {
		t.Fatal("answered a DEALLOCATE locally while SQL statements exist")
	}
	s.ApplySQLPrepare(&d)
	if s.Pin != "sql_prepare" {
		t.Fatal("unpinned with a SQL statement left")
	}
	d = ClassifyQuery([]byte("DEALLOCATE b"))
	s.ApplySQLPrepare(&d)
	if s.Pin != "" || len(s.SQLNames) != 0 {
		t.Fatalf("not unpinned after the last DEALLOCATE: %q %v", s.Pin, s.SQLNames)
	}
	// Now a DEALLOCATE of a protocol-level statement is the proxy's to answer.
	d = ClassifyQuery([]byte("DEALLOCATE p1"))
	if !s.LocalDeallocate(&d, true, false) || string(d.LocalTag) != string(wire.AppendCommandComplete(nil, "DEALLOCATE")) {
		t.Fatal("DEALLOCATE of a protocol statement not answered locally")
	}
	if d2 := ClassifyQuery([]byte("DEALLOCATE p1")); s.LocalDeallocate(&d2, false, false) || s.LocalDeallocate(&d2, true, true) {
		t.Fatal("answered an unknown name, or in a failed transaction")
	}
	all := ClassifyQuery([]byte("DEALLOCATE ALL"))
	if !s.LocalDeallocate(&all, false, false) {
		t.Fatal("DEALLOCATE ALL not answered locally")
	}
	// DISCARD ALL drops everything and unpins a client pinned by SQL PREPARE.
	e = ClassifyQuery([]byte("PREPARE c AS SELECT 3"))
	s.ApplySQLPrepare(&e)
	disc := ClassifyQuery([]byte("DISCARD ALL"))
	if _, dropAll := s.ApplySQLPrepare(&disc); !dropAll || s.Pin != "" || s.SQLNames != nil {
		t.Fatalf("DISCARD ALL: dropAll %v pin %q names %v", dropAll, s.Pin, s.SQLNames)
	}
}
