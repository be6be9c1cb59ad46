package proxy

import (
	"errors"
	"sync"
	"time"
)

// Client messages larger than a session's read buffer (bufSize) that the proxy
// must see whole (a Query, whose statements decide what session state it
// changes; a Parse, whose text is registered) are read into a buffer of their
// own. Those buffers come out of one budget for the whole process
// (Options.MaxMessageMemory): a client whose message does not fit waits for
// room, so memory is bounded by what the proxy chooses to buffer, never by what
// clients claim. A buffer is mapped memory where the platform allows (see
// msgmem_linux.go): its pages become resident only as the message's bytes
// arrive, and go back to the system the moment it is released, without waiting
// for the garbage collector.

// Errors of the message budget.
var (
	// errMsgMemory: no room for the message within the wait.
	errMsgMemory = errors.New("out of memory for client messages")
	// errMsgTooBig: a message larger than MaxMessageSize, or one that needs more
	// memory than the whole budget.
	errMsgTooBig = errors.New("message too large")
)

// mapThreshold is the size from which a message buffer is mapped memory rather
// than the Go heap.
const mapThreshold = 256 << 10

// msgMemory is the process-wide budget of message buffers.
type msgMemory struct {
	mu    sync.Mutex
	limit int64
	used  int64
	head  *memWaiter // FIFO: a large message is not starved by small ones
	tail  *memWaiter
}

type memWaiter struct {
	n    int64
	ch   chan struct{} // closed when the bytes are granted
	next *memWaiter
}

// MessageMemory is a snapshot of the message budget.
type MessageMemory struct {
	Limit, Used int64 // bytes
	Waiting     int   // clients waiting for room
}

func (m *msgMemory) stats() MessageMemory {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := MessageMemory{Limit: m.limit, Used: m.used}
	for w := m.head; w != nil; w = w.next {
		st.Waiting++
	}
	return st
}

// acquire reserves n bytes, waiting in FIFO order for room up to timeout; it
// gives up early with errKilled when kill is closed and errDraining when drain
// is. n must not exceed the limit.
func (m *msgMemory) acquire(n int64, timeout time.Duration, drain, kill <-chan struct{}) error {
	m.mu.Lock()
	if m.head == nil && m.used+n <= m.limit {
		m.used += n
		m.mu.Unlock()
		return nil
	}
	w := &memWaiter{n: n, ch: make(chan struct{})}
	if m.tail == nil {
		m.head = w
	} else {
		m.tail.next = w
	}
	m.tail = w
	m.mu.Unlock()
	t := time.NewTimer(timeout)
	defer t.Stop()
	var err error
	select {
	case <-w.ch:
		return nil
	case <-t.C:
		err = errMsgMemory
	case <-drain:
		err = errDraining
	case <-kill:
		err = errKilled
	}
	m.mu.Lock()
	select {
	case <-w.ch: // granted meanwhile: give it back
		m.used -= n
	default:
		m.removeLocked(w)
	}
	m.grantLocked()
	m.mu.Unlock()
	return err
}

// setLimit changes the budget. Waiters that fit a larger one go on at once;
// with a smaller one, reservations already granted stay and later messages
// wait until the memory in use is below it.
// tryAcquire reserves n bytes if they are free now and nobody waits.
func (m *msgMemory) tryAcquire(n int64) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.head == nil && m.used+n <= m.limit {
		m.used += n
		return true
	}
	return false
}

func (m *msgMemory) setLimit(limit int64) {
	m.mu.Lock()
	m.limit = limit
	m.grantLocked()
	m.mu.Unlock()
}

// release returns n bytes and lets waiters that now fit go on.
func (m *msgMemory) release(n int64) {
	m.mu.Lock()
	m.used -= n
	m.grantLocked()
	m.mu.Unlock()
}

func (m *msgMemory) grantLocked() {
	for w := m.head; w != nil && m.used+w.n <= m.limit; w = m.head {
		m.head = w.next
		if m.head == nil {
			m.tail = nil
		}
		m.used += w.n
		close(w.ch)
	}
}

func (m *msgMemory) removeLocked(w *memWaiter) {
	var prev *memWaiter
	for x := m.head; x != nil; prev, x = x, x.next {
		if x != w {
			continue
		}
		if prev == nil {
			m.head = x.next
		} else {
			prev.next = x.next
		}
		if m.tail == x {
			m.tail = prev
		}
		return
	}
}

// bigMsg is one client message read whole outside the session's read buffer.
type bigMsg struct {
	b      []byte
	n      int64 // bytes reserved in the budget
	mapped bool
}

// newBigMsg returns a buffer for a message of n bytes, of which reserved are
// granted in the message budget already: mapped memory from mapThreshold on,
// returned to the system when it is freed rather than left to the collector.
func newBigMsg(n int, reserved int64) *bigMsg {
	bm := &bigMsg{n: reserved}
	if n >= mapThreshold {
		bm.b, bm.mapped = mapMessage(n)
	}
	if !bm.mapped {
		bm.b = make([]byte, n)
	}
	return bm
}

// free gives bm's buffer and its room in the budget back. Nothing may refer
// to the buffer afterwards.
func (m *msgMemory) free(bm *bigMsg) {
	if bm.mapped {
		unmapMessage(bm.b)
	}
	bm.b = nil
	m.release(bm.n)
}
