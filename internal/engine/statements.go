package engine

import (
	"bytes"
	"encoding/binary"
	"strconv"
	"sync/atomic"

	"github.com/pgsidecar/pgsidecar/internal/sqlscan"
	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// Named prepared statements in transaction mode (docs/design.md section 5): a
// client's names map to interned statements, each with a server-side name of its
// own; each server connection remembers which it has prepared.

// Statement is one distinct prepared statement.
type Statement struct {
	Name  string // server-side name
	Key   string // the Parse body after the statement name: query and parameter types
	Parse []byte // the Parse message with the server-side name
	// Gen grows when the statement's plans became invalid ("cached plan must not
	// change result type"): backends holding an older generation prepare it anew.
	Gen  atomic.Uint32
	Refs int // client registrations, kept by the registry that interned it (under its lock)
	// Effect is what executing it does to session state (nil: nothing).
	Effect *Effect
}

// Registration is one of a client's names for a statement.
type Registration struct {
	Name string
	Stmt *Statement
	// Gen is the statement generation the client saw: a Bind of an older one gets
	// "cached plan must not change result type" once, as from PostgreSQL.
	Gen uint32
	// Unconfirmed: the client's Parse was answered without a backend and no
	// backend has parsed the statement yet.
	Unconfirmed bool
}

// StatementPrefix starts every server-side statement name the proxy makes.
const StatementPrefix = "pgsidecar_"

// AppendParse appends a Parse of statement name whose body (query and
// parameter types, what follows the name in a client's Parse) is body.
func AppendParse(dst []byte, name, body string) []byte {
	start := len(dst)
	dst = append(dst, wire.MsgParse, 0, 0, 0, 0)
	dst = append(dst, name...)
	dst = append(dst, 0)
	dst = append(dst, body...)
	binary.BigEndian.PutUint32(dst[start+1:], uint32(len(dst)-start-1))
	return dst
}

// ServerStatements is what one server connection has prepared, bounded and
// least recently used first out. Only the client holding the connection
// touches it.
type ServerStatements struct {
	slots map[*Statement]StatementSlot
	tick  uint64
	// Dirty: a client ran DISCARD ALL / DEALLOCATE ALL here, which may have dropped
	// them: close every remembered one before relying on the set again.
	Dirty bool
	// Settings are the settings the proxy left on the server connection.
	Settings Settings
	// queue is the answer queue's buffer while no client holds the
	// connection (AnswerQueue.Lend).
	queue []Pending
}

// StatementSlot is one statement a server connection has prepared.
type StatementSlot struct {
	Used uint64 // when it was last used, for least-recently-used eviction
	Gen  uint32 // the statement generation prepared there
	// Seg is 1 + the number of Syncs the client had sent when the proxy sent the
	// statement's Parse, until the server answers it (then 0). A later batch
	// (after a Sync) cannot count on it: an error before it skips it.
	Seg uint32
}

// NewServerStatements returns an empty set.
func NewServerStatements() *ServerStatements {
	return &ServerStatements{slots: make(map[*Statement]StatementSlot)}
}

// Len is the number of statements the connection has (or may have).
func (s *ServerStatements) Len() int { return len(s.slots) }

// All calls fn for every statement remembered; fn may Forget it.
func (s *ServerStatements) All(fn func(*Statement)) {
	for st := range s.slots {
		fn(st)
	}
}

// Use looks st up for a use in the client's batch seg (1 + the Syncs it has
// sent). usable: the connection has st at generation gen, and its Parse was
// answered or went out in this batch (an error earlier in the batch would
// skip it); it is marked used then. present: the connection has st in some
// state (to be closed before it is prepared anew).
func (s *ServerStatements) Use(st *Statement, gen, seg uint32) (usable, present bool) {
	s.tick++
	sl, ok := s.slots[st]
	if ok && sl.Gen == gen && (sl.Seg == 0 || sl.Seg == seg) {
		sl.Used = s.tick
		s.slots[st] = sl
		return true, true
	}
	return false, ok
}

// Oldest is the least recently used statement, the one to evict; nil when
// there is none.
func (s *ServerStatements) Oldest() *Statement {
	var victim *Statement
	var oldest uint64
	for st, sl := range s.slots {
		if victim == nil || sl.Used < oldest {
			victim, oldest = st, sl.Used
		}
	}
	return victim
}

// Add records that st's Parse (generation gen) went out in batch seg.
func (s *ServerStatements) Add(st *Statement, gen, seg uint32) {
	s.slots[st] = StatementSlot{Used: s.tick, Gen: gen, Seg: seg}
}

// Parsed records that the server answered the Parse of st sent in batch seg:
// later batches can count on it.
func (s *ServerStatements) Parsed(st *Statement, seg uint32) {
	if sl, ok := s.slots[st]; ok && sl.Seg == seg {
		sl.Seg = 0
		s.slots[st] = sl
	}
}

// Forget drops st (closed, or its Parse failed). With seg > 0 it drops st only
// if the slot is still that batch's: a later Parse of the same statement owns
// it.
func (s *ServerStatements) Forget(st *Statement, seg uint32) {
	if sl, ok := s.slots[st]; ok && (seg == 0 || sl.Seg == seg) {
		delete(s.slots, st)
	}
}

// MarkStale records that st may still be on the connection though its Close
// was skipped: it is closed before its next use.
func (s *ServerStatements) MarkStale(st *Statement) {
	s.slots[st] = StatementSlot{}
}

// QueryEffect is what a simple Query does to prepared statements.
type QueryEffect struct {
	Single   bool         // one statement
	First    sqlscan.Kind // its kind
	Name     string       // its name (DEALLOCATE)
	Prepare  []string     // names of SQL PREPARE
	Dealloc  []string     // names of SQL DEALLOCATE
	DropAll  bool         // DEALLOCATE ALL or DISCARD ALL
	LocalTag []byte       // the proxy answers the query with this CommandComplete
	State    Effect
	Refuse   []byte // --pin-policy refuse: the ErrorResponse the client gets instead
}

// ClassifyQuery finds the statements of q that affect prepared statements.
func ClassifyQuery(q []byte) QueryEffect {
	var sc sqlscan.Scanner
	sc.Reset(q)
	var e QueryEffect
	n := 0
	for sc.Next() {
		st := sc.Statement()
		n++
		if n == 1 {
			e.First, e.Name = st.Kind, st.Name
		}
		e.State.Note(st)
		switch st.Kind {
		case sqlscan.KindPrepare:
			e.Prepare = append(e.Prepare, st.Name)
		case sqlscan.KindDeallocate:
			e.Dealloc = append(e.Dealloc, st.Name)
		case sqlscan.KindDeallocateAll, sqlscan.KindDiscardAll:
			e.DropAll = true
		}
	}
	e.Single = n == 1
	return e
}

// ClientStatements are one client's named prepared statements: its names, and
// the bytes of their text, which --max-client-prepared-bytes bounds.
type ClientStatements struct {
	byName map[string]*Registration
	bytes  int64
}

// Get returns the client's statement named name, or nil.
func (c *ClientStatements) Get(name string) *Registration { return c.byName[name] }

// Has reports whether the client has a statement named name (the name as
// bytes: the lookup does not allocate).
func (c *ClientStatements) Has(name []byte) bool {
	_, ok := c.byName[string(name)]
	return ok
}

// Len is the number of the client's statements.
func (c *ClientStatements) Len() int { return len(c.byName) }

// Bytes is the text size of the client's statements (query and parameter
// types).
func (c *ClientStatements) Bytes() int64 { return c.bytes }

// Register names st for the client, replacing a registration of the same name
// (whose statement the caller releases), and returns the new registration.
func (c *ClientStatements) Register(name string, st *Statement) *Registration {
	if c.byName == nil {
		c.byName = make(map[string]*Registration)
	}
	rg := &Registration{Name: name, Stmt: st, Gen: st.Gen.Load()}
	if old := c.byName[name]; old != nil {
		c.bytes -= int64(len(old.Stmt.Key))
	}
	c.byName[name] = rg
	c.bytes += int64(len(st.Key))
	return rg
}

// Remove drops rg if it is still the client's registration of its name, and
// reports whether it did (the caller then releases rg.Stmt).
func (c *ClientStatements) Remove(rg *Registration) bool {
	if c.byName[rg.Name] != rg {
		return false
	}
	delete(c.byName, rg.Name)
	c.bytes -= int64(len(rg.Stmt.Key))
	return true
}

// Restore puts back rg, taken by a Close the server then skipped, unless its
// name was taken since or every statement was dropped (the client left); it
// reports whether it did (the caller then acquires rg.Stmt again).
func (c *ClientStatements) Restore(rg *Registration) bool {
	if c.byName == nil {
		return false
	}
	if _, taken := c.byName[rg.Name]; taken {
		return false
	}
	c.byName[rg.Name] = rg
	c.bytes += int64(len(rg.Stmt.Key))
	return true
}

// All calls fn for each of the client's registrations, in no order. fn must
// not register or remove statements.
func (c *ClientStatements) All(fn func(*Registration)) {
	for _, rg := range c.byName {
		fn(rg)
	}
}

// Clear forgets every statement (the caller releases them first).
func (c *ClientStatements) Clear() {
	c.byName, c.bytes = nil, 0
}

// StatementRegistry interns statements: one *Statement per distinct query text
// and parameter types among the clients connected now, each with a server-side
// name of its own. It is not safe for concurrent use: shared by every client,
// it is used under its caller's lock.
type StatementRegistry struct {
	byKey map[string]*Statement
	seq   uint64
}

// Intern returns the statement for a client Parse's body after the statement
// name (query and parameter types), counting one more registration.
func (r *StatementRegistry) Intern(body []byte) *Statement {
	if st, ok := r.byKey[string(body)]; ok {
		st.Refs++
		return st
	}
	if r.byKey == nil {
		r.byKey = make(map[string]*Statement)
	}
	r.seq++
	st := &Statement{Name: StatementPrefix + strconv.FormatUint(r.seq, 36), Key: string(body), Refs: 1}
	if i := bytes.IndexByte(body, 0); i >= 0 {
		if e := ClassifyQuery(body[:i]).State; e.Changes() {
			st.Effect = &e
		}
	}
	st.Gen.Store(1)
	st.Parse = AppendParse(make([]byte, 0, 5+len(st.Name)+1+len(body)), st.Name, st.Key)
	r.byKey[st.Key] = st
	return st
}

// Acquire counts one more registration of st (an undone Close).
func (r *StatementRegistry) Acquire(st *Statement) {
	st.Refs++
	if r.byKey == nil {
		r.byKey = make(map[string]*Statement)
	}
	if _, ok := r.byKey[st.Key]; !ok {
		r.byKey[st.Key] = st
	}
}

// Release drops one registration; a statement no client has any more leaves
// the registry (server connections keep it until evicted).
func (r *StatementRegistry) Release(st *Statement) {
	st.Refs--
	if st.Refs <= 0 && r.byKey[st.Key] == st {
		delete(r.byKey, st.Key)
	}
}

// Len is the number of interned statements.
func (r *StatementRegistry) Len() int { return len(r.byKey) }
