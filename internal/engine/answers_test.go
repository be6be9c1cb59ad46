package engine

import (
	"bytes"
	"testing"

	"github.com/pgsidecar/pgsidecar/internal/wire"
)

func TestAnswerQueue(t *testing.T) {
	var q AnswerQueue
	if q.Front() != nil || q.Back() != nil || q.Len() != 0 {
		t.Fatal("empty queue not empty")
	}
	// Interleave pushes and pops so the ring wraps around while it grows.
	next, want := uint32(0), uint32(0)
	for round := range 50 {
		for range round % 7 * 5 {
			q.Push(Pending{Kind: ExpectExecute, Epoch: next})
			next++
		}
		for range round % 5 * 4 {
			if q.Len() == 0 {
				break
			}
			if got := q.Front().Epoch; got != want {
				t.Fatalf("round %d: front %d, want %d", round, got, want)
			}
			q.Pop()
			want++
		}
		if q.Len() != int(next-want) {
			t.Fatalf("round %d: Len %d, want %d", round, q.Len(), next-want)
		}
		for i := range q.Len() {
			if got := q.At(i).Epoch; got != want+uint32(i) {
				t.Fatalf("round %d: At(%d) = %d, want %d", round, i, got, want+uint32(i))
			}
		}
		if q.Len() > 0 && q.Back().Epoch != next-1 {
			t.Fatalf("round %d: back %d, want %d", round, q.Back().Epoch, next-1)
		}
	}
	// PopBack takes back the newest.
	q.Push(Pending{Kind: ExpectSync, Epoch: next})
	q.PopBack()
	if q.Len() > 0 && q.Back().Epoch != next-1 {
		t.Fatalf("PopBack left %d", q.Back().Epoch)
	}
	// A popped slot keeps no references (the statement could not be freed).
	q.Reset()
	for i := range q.buf {
		if q.buf[i].Stmt != nil || q.buf[i].Kind != 0 {
			t.Fatalf("slot %d not cleared", i)
		}
	}
	// Trim frees a large buffer of an empty queue only.
	for range 300 {
		q.Push(Pending{})
	}
	q.Trim(256)
	if q.buf == nil {
		t.Fatal("Trim freed the buffer of a non-empty queue")
	}
	q.Reset()
	q.Trim(256)
	if q.buf != nil {
		t.Fatal("Trim kept a large buffer")
	}
}

func TestAnswerQueueAllocs(t *testing.T) {
	var q AnswerQueue
	q.Push(Pending{})
	q.Pop()
	allocs := testing.AllocsPerRun(100, func() {
		for range 8 {
			q.Push(Pending{Kind: ExpectBind})
		}
		for q.Len() > 0 {
			q.Pop()
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per batch in steady state", allocs)
	}
}

func TestAnsweredBy(t *testing.T) {
	cases := map[Expected][]byte{
		ExpectParse:             {wire.MsgParseComplete},
		ExpectBind:              {wire.MsgBindComplete},
		ExpectClose:             {wire.MsgCloseComplete},
		ExpectDescribeStatement: {wire.MsgRowDescription, wire.MsgNoData},
		ExpectDescribePortal:    {wire.MsgRowDescription, wire.MsgNoData},
		ExpectExecute:           {wire.MsgEmptyQuery, wire.MsgCommandComplete, wire.MsgPortalSuspended},
		ExpectSync:              {},
		ExpectQuery:             {},
	}
	all := []byte{wire.MsgParseComplete, wire.MsgBindComplete, wire.MsgCloseComplete, wire.MsgRowDescription,
		wire.MsgNoData, wire.MsgEmptyQuery, wire.MsgCommandComplete, wire.MsgPortalSuspended, wire.MsgDataRow,
		wire.MsgReadyForQuery, wire.MsgErrorResponse, wire.MsgNotification}
	for k, yes := range cases {
		for _, m := range all {
			want := bytes.IndexByte(yes, m) >= 0
			if got := k.AnsweredBy(m); got != want {
				t.Errorf("kind %d, message %q: %v, want %v", k, m, got, want)
			}
		}
	}
}

func TestAnswer(t *testing.T) {
	var q AnswerQueue
	if p, act, _, done := q.Answer(wire.MsgParseComplete); p != nil || act != Forward || done {
		t.Fatal("an answer matched an empty queue")
	}
	q.Push(Pending{Kind: ExpectParse, Action: Swallow})
	q.Push(Pending{Kind: ExpectBind, Action: Replace, Undo: &Undo{Replace: []byte("r")}})
	q.Push(Pending{Kind: ExpectQuery, Action: Replace, Undo: &Undo{Replace: []byte("tag")}})
	if _, act, _, done := q.Answer(wire.MsgDataRow); act != Forward || done {
		t.Fatal("a DataRow completed a Parse")
	}
	if _, act, _, done := q.Answer(wire.MsgParseComplete); act != Swallow || !done {
		t.Fatal("ParseComplete of the proxy's Parse not swallowed")
	}
	q.Pop()
	if _, act, repl, done := q.Answer(wire.MsgBindComplete); act != Replace || string(repl) != "r" || !done {
		t.Fatal("BindComplete not replaced")
	}
	q.Pop()
	// The empty query standing in for a statement the proxy answered itself.
	if _, act, repl, done := q.Answer(wire.MsgEmptyQuery); act != Replace || string(repl) != "tag" || done {
		t.Fatalf("stand-in empty query: %v %q %v", act, repl, done)
	}
}

func TestUnnamed(t *testing.T) {
	var u Unnamed
	parse := func(b string) *Pending {
		u.Flight++
		return &Pending{Kind: ExpectParse, Unnamed: UnnamedOwn, UnnamedParse: []byte(b), Epoch: u.Epoch}
	}
	// An answered Parse becomes the client's unnamed statement, here and valid.
	p := parse("P1")
	u.Answered(p)
	if string(u.Parse) != "P1" || !u.Valid || !u.Here || u.Flight != 0 || p.UnnamedParse != nil {
		t.Fatalf("after answer: %+v", u)
	}
	// A simple query in between drops it: the old Parse's answer no longer counts.
	p = parse("P2")
	u.Dropped()
	u.Answered(p)
	if string(u.Parse) != "P1" || u.Valid || u.Here {
		t.Fatalf("answer after a drop: %+v", u)
	}
	// A failed Parse leaves none; a skipped one leaves it as it was.
	u.Answered(parse("P3"))
	u.Failed(parse("P4"), true)
	if !u.Valid || string(u.Parse) != "P3" {
		t.Fatalf("skipped Parse changed it: %+v", u)
	}
	u.Failed(parse("P5"), false)
	if u.Valid || u.Here || u.Flight != 0 {
		t.Fatalf("failed Parse left it: %+v", u)
	}
	// A failed replay leaves the server's unknown.
	u.Here = true
	u.Failed(&Pending{Unnamed: UnnamedReplay}, false)
	if u.Here {
		t.Fatal("failed replay left it here")
	}
	// A big Parse without a copy is usable only where it is.
	u.Flight++
	u.Answered(&Pending{Unnamed: UnnamedOwn, UnnamedBig: true, Epoch: u.Epoch})
	if u.Parse != nil || u.Valid || !u.Here {
		t.Fatalf("big Parse: %+v", u)
	}
	// Spare buffers: small ones are kept once, large ones never.
	u.Spare = nil
	u.KeepSpare(make([]byte, 10, maxSpareUnnamed+1))
	if u.Spare != nil {
		t.Fatal("kept a large spare")
	}
	u.KeepSpare(make([]byte, 10))
	if u.Spare == nil || len(u.Spare) != 0 {
		t.Fatal("small spare not kept empty")
	}
	var q AnswerQueue
	q.Push(Pending{UnnamedBig: true})
	if q.BigInFlight() {
		t.Fatal("a big Parse without a copy counts as in flight")
	}
	q.Push(Pending{UnnamedBig: true, UnnamedParse: []byte("x")})
	if !q.BigInFlight() {
		t.Fatal("a big Parse with its copy not in flight")
	}
}

// countRefs is a Refs that counts.
type countRefs map[*Statement]int

func (c countRefs) Acquire(st *Statement) { c[st]++ }
func (c countRefs) Release(st *Statement) { c[st]-- }

func TestTakeBack(t *testing.T) {
	var client ClientStatements
	server := NewServerStatements()
	refs := countRefs{}
	a, b := &Statement{Name: "a", Key: "A"}, &Statement{Name: "b", Key: "B"}
	ra := client.Register("x", a) // the failed Parse registered x
	rb := client.Register("y", b) // a Close dropped y, then was skipped
	client.Remove(rb)
	server.Add(a, 1, 3) // the Parse went to the server in batch 3
	server.Add(b, 1, 0)
	server.Forget(b, 0) // the skipped Close of b on the server
	TakeBack([]UndoOp{
		{Kind: UndoRegister, Reg: ra},
		{Kind: UndoCached, Stmt: a, Seg: 3},
		{Kind: UndoUnregister, Reg: rb},
		{Kind: UndoUncached, Stmt: b},
	}, &client, server, refs)
	if client.Get("x") != nil || client.Get("y") != rb {
		t.Fatalf("client statements: x %v y %v", client.Get("x"), client.Get("y"))
	}
	if refs[a] != -1 || refs[b] != 1 {
		t.Fatalf("shared counts: %v", refs)
	}
	if _, present := server.Use(a, 1, 3); present {
		t.Fatal("the failed Parse's statement is still on the server")
	}
	if usable, present := server.Use(b, 1, 3); usable || !present {
		t.Fatal("the skipped Close's statement is not remembered as stale")
	}
	// No server connection attached: only the client's side changes.
	TakeBack([]UndoOp{{Kind: UndoCached, Stmt: a}, {Kind: UndoRegister, Reg: rb}}, &client, nil, refs)
	if client.Get("y") != nil || refs[b] != 0 {
		t.Fatal("undo without a server connection")
	}
}
