package engine

// Unnamed tracks a client's unnamed statement in transaction mode
// (docs/design.md section 5): the client may parse it in one batch and bind it
// in the next, which may land on another server connection, so the proxy keeps
// the client's last answered Parse of it and replays it where the Bind lands.
type Unnamed struct {
	// Parse is the client's last answered Parse of the unnamed statement; Valid
	// says PostgreSQL holds it for the client, Here that the attached server
	// connection has it.
	Parse []byte
	// Next is where the client's next Parse of it is read; Spare a buffer for
	// the one after.
	Next, Spare []byte
	// Flight counts the client's Parses and Closes of it not answered yet.
	Flight int32
	// Epoch grows when a simple query drops it: answers to Parses sent before
	// no longer make it the client's.
	Epoch       uint32
	Valid, Here bool
}

// maxSpareUnnamed bounds the buffer kept for reading the next Parse.
const maxSpareUnnamed = 64 << 10

// Dropped accounts for a simple query, which drops the unnamed statement.
func (u *Unnamed) Dropped() {
	u.Epoch++
	u.Valid, u.Here = false, false
}

// Answered accounts for the answer to the client's Parse or Close of the
// unnamed statement p (p.UnnamedParse: the Parse; nil: a Close), unless a
// simple query dropped the statement since it was sent.
func (u *Unnamed) Answered(p *Pending) {
	u.Flight--
	if p.Epoch != u.Epoch {
		u.KeepSpare(p.UnnamedParse)
		return
	}
	if p.UnnamedParse == nil && p.UnnamedBig {
		// A large statement kept without a replay copy: usable where it is.
		u.Parse = nil
		u.Valid, u.Here = false, true
		return
	}
	if p.UnnamedParse == nil {
		u.Valid, u.Here = false, false
		return
	}
	u.KeepSpare(u.Parse)
	u.Parse, p.UnnamedParse = p.UnnamedParse, nil
	u.Valid, u.Here = true, true
}

// Failed accounts for a message of p's kind that failed or, with skipped, was
// skipped after an earlier error (it may be no Parse or Close of the unnamed
// statement: then nothing happens). PostgreSQL drops its unnamed statement
// before it parses a new one, so a failed Parse leaves none; a skipped one
// leaves it as it was. A replay that did not succeed leaves the server's
// unknown: it is replayed again.
func (u *Unnamed) Failed(p *Pending, skipped bool) {
	switch p.Unnamed {
	case UnnamedOwn:
		u.Flight--
		if !skipped && (p.UnnamedParse != nil || p.UnnamedBig) && p.Epoch == u.Epoch {
			u.Valid, u.Here = false, false
		}
		u.KeepSpare(p.UnnamedParse)
		p.UnnamedParse = nil
	case UnnamedReplay:
		u.Here = false
	}
}

// KeepSpare keeps b, when small, for reading a later Parse of the unnamed
// statement.
func (u *Unnamed) KeepSpare(b []byte) {
	if b != nil && u.Spare == nil && cap(b) <= maxSpareUnnamed {
		u.Spare = b[:0]
	}
}

// BigInFlight reports whether a large Parse of the unnamed statement (one read
// outside the client's read buffer) awaits its answer in q.
func (q *AnswerQueue) BigInFlight() bool {
	for i := 0; i < q.Len(); i++ {
		if p := q.At(i); p.UnnamedBig && p.UnnamedParse != nil {
			return true
		}
	}
	return false
}
