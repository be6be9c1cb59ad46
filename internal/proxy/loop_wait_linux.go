//go:build linux

package proxy

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/driver"
	"github.com/pgsidecar/pgsidecar/internal/engine"
	"github.com/pgsidecar/pgsidecar/internal/pool"
	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// A loop client's wait for a server connection (or for RESUME after PAUSE):
// the loopWait it borrows from the loop for the wait, the loop's queue of
// waiting clients per pool, the pool's outcome carried out on the loop, and
// the hand-over of a released server connection to the first waiting client
// in the same step (loopDriver.place, in loop_linux.go), and attaching the
// server connection a client gets (attachBackend).

// loopWait is a loop client's wait for a server connection (or for the end
// of PAUSE): the pool's Waiter, the outcome handed over from the pool's
// goroutine, and the client's place in the loop's queue for the pool. Only a
// waiting client has one, lent from the loop's free list: an idle client's
// loopSess does without these 130 bytes. It is the pool's Outcome of the
// wait, and the Task that carries the outcome out on the loop.
type loopWait struct {
	ls *loopSess
	w  pool.Waiter

	mu  sync.Mutex // b and err, set on the pool's goroutine
	b   *pool.Backend
	err error

	prev, next *loopSess  // in q, the loop's waiters for a pool
	q          *loopQueue // nil when not in one
}

// maxFreeWaits bounds the loopWaits a loop keeps for reuse.
const maxFreeWaits = 1024

// waitFor lends ls a loopWait for a wait about to begin.
func (d *loopDriver) waitFor(ls *loopSess) *loopWait {
	var wt *loopWait
	if n := len(d.freeWaits); n > 0 {
		wt = d.freeWaits[n-1]
		d.freeWaits[n-1] = nil
		d.freeWaits = d.freeWaits[:n-1]
	} else {
		wt = new(loopWait)
	}
	wt.ls = ls
	ls.wait = wt
	return wt
}

// dropWait takes back ls's loopWait once nothing refers to it any more: the
// pool has delivered the outcome, handed the connection over, or cancelled
// the wait, and ls is off the loop's queue.
func (d *loopDriver) dropWait(ls *loopSess) {
	wt := ls.wait
	if wt == nil {
		return
	}
	ls.wait = nil
	*wt = loopWait{}
	if len(d.freeWaits) < maxFreeWaits {
		d.freeWaits = append(d.freeWaits, wt)
	}
}

// enqueue adds ls to the waiters of p.
func (d *loopDriver) enqueue(p *pool.Pool, ls *loopSess) {
	q := d.waiting[p]
	if q == nil {
		if d.waiting == nil {
			d.waiting = make(map[*pool.Pool]*loopQueue)
		}
		q = new(loopQueue)
		d.waiting[p] = q
	}
	wt := ls.wait
	wt.prev, wt.next, wt.q = q.tail, nil, q
	if q.tail != nil {
		q.tail.wait.next = ls
	} else {
		q.head = ls
	}
	q.tail = ls
}

// dequeue takes ls off its queue, if it is on one.
func (d *loopDriver) dequeue(ls *loopSess) {
	wt := ls.wait
	if wt == nil || wt.q == nil {
		return
	}
	q := wt.q
	if wt.prev != nil {
		wt.prev.wait.next = wt.next
	} else {
		q.head = wt.next
	}
	if wt.next != nil {
		wt.next.wait.prev = wt.prev
	} else {
		q.tail = wt.prev
	}
	wt.prev, wt.next, wt.q = nil, nil, nil
}

// cancelWait cancels the client's wait for a server connection, if the
// pool still has it queued; otherwise its outcome is on its way, and
// gotBackend takes the wait back. ss.mu is held.
func (ls *loopSess) cancelWait() {
	wt := ls.wait
	if ls.paused&pauseWait == 0 || wt == nil || !ls.ss.pool.CancelWait(&wt.w) {
		return
	}
	ls.ss.waiting = false
	ls.d.dequeue(ls)
	ls.d.dropWait(ls)
}

// waitPaused waits for RESUME of the admin console (PAUSE) off the loop,
// within query-wait-timeout, and then tries again.
func (ls *loopSess) waitPaused(paused <-chan struct{}) {
	ss := ls.ss
	ss.waiting = true
	ss.waitSince = stampNow()
	ls.pause(pauseWait)
	timeout := ss.srv.options().QueryWaitTimeout
	kill := ss.killChanLocked()
	wt := ls.d.waitFor(ls)
	go func() {
		t := time.NewTimer(timeout)
		defer t.Stop()
		var err error
		select {
		case <-paused:
		case <-t.C:
			err = context.DeadlineExceeded
		case <-ss.srv.drainCtx.Done():
			err = errDraining
		case <-kill:
			err = errKilled
		}
		wt.mu.Lock()
		wt.err = err
		wt.mu.Unlock()
		ls.post(func() { ls.retryAfterPause() })
	}()
}

// retryAfterPause tries the held message again after PAUSE ended.
func (ls *loopSess) retryAfterPause() {
	wt := ls.wait
	wt.mu.Lock()
	err := wt.err
	wt.mu.Unlock()
	ls.d.dropWait(ls)
	ss := ls.ss
	ss.mu.Lock()
	ss.waiting = false
	ss.mu.Unlock()
	if ls.ended {
		return
	}
	if err != nil {
		ls.failHead(err)
		return
	}
	ls.resume(pauseWait)
}

// Outcome is the pool's callback with the outcome of a wait (under the pool's
// lock, on any goroutine): it hands it to the loop.
func (wt *loopWait) Outcome(be *pool.Backend, err error) {
	wt.mu.Lock()
	wt.b, wt.err = be, err
	wt.mu.Unlock()
	if wt.ls.d.l.PostTask(wt) != nil && be != nil {
		go be.Pool().Release(be) // the loop has stopped
	}
}

// Run carries out the outcome of a wait, on the loop.
func (wt *loopWait) Run() { wt.ls.gotBackend(wt) }

// gotBackend carries out the outcome of wait wt, on the loop.
func (ls *loopSess) gotBackend(wt *loopWait) {
	wt.mu.Lock()
	be, err := wt.b, wt.err
	wt.mu.Unlock()
	ss := ls.ss
	ls.d.dequeue(ls)
	ls.d.dropWait(ls)
	ss.mu.Lock()
	ss.waiting = false
	if be != nil {
		ss.obs.Waited(ss.waitSince.Since())
	}
	if ls.ended {
		ss.mu.Unlock()
		if be != nil {
			be.Pool().Release(be)
		}
		ls.maybeFinish()
		return
	}
	if err == nil {
		err = ls.attachBackend(be, time.Now())
	}
	ss.mu.Unlock()
	if err != nil {
		ls.failHead(err)
		return
	}
	ls.resuming = true
	ls.resume(pauseWait)
	ls.flush()
}

// handed is a server connection handed over by another loop client
// (loopDriver.place), in the same step: the client's held batch goes to it
// now.
func (ls *loopSess) handed(be *pool.Backend) {
	ss := ls.ss
	ss.mu.Lock()
	ss.waiting = false
	ss.obs.Waited(ss.waitSince.Since())
	if ls.ended {
		ss.mu.Unlock()
		ls.d.released = append(ls.d.released, be)
		ls.maybeFinish()
		return
	}
	err := ls.attachBackend(be, time.Now())
	ss.mu.Unlock()
	if err != nil {
		ls.failHead(err)
		return
	}
	ls.resuming = true
	ls.resume(pauseWait)
	ls.flush()
}

// failHead fails the message at the head of in, which waited for a server
// connection in vain.
func (ls *loopSess) failHead(err error) {
	ss := ls.ss
	ss.mu.Lock()
	if hd := ls.head; hd != nil {
		if h, perr := wire.ParseHeader(hd.b, wire.MaxMessageLength); perr == nil && ls.hfill == len(hd.b) {
			ls.failLocally(h, err)
			ls.releaseHead()
		} else {
			ls.end(err)
		}
	} else if h, perr := wire.ParseHeader(ls.in, wire.MaxMessageLength); perr == nil && len(ls.in) >= 1+h.Len {
		ls.failLocally(h, err)
		n := copy(ls.in, ls.in[1+h.Len:])
		ls.in = ls.in[:n]
	} else {
		ls.end(err)
	}
	ss.mu.Unlock()
	ls.resuming = false
	ls.paused &^= pauseWait
	ls.flush()
	if !ls.ended {
		ls.resume(0)
		if len(ls.in) > 0 {
			ls.run()
		}
		if ls.paused == 0 && ls.c != nil {
			ls.c.ResumeRead()
		}
	}
}

// attachBackend makes be the client's server connection: it joins the loop,
// gets the client's settings and the Parses owed. ss.mu is held.
func (ls *loopSess) attachBackend(be *pool.Backend, at time.Time) error {
	ss := ls.ss
	lb := ls.d.loopBackendOf(be)
	if lb.adopted {
		// Handed over by another loop client, or parked in the pool.
		lb.c.SetHandler(&ls.sh)
		lb.c.ResumeRead()
	} else {
		// Out of the runtime's network poller first, once per server
		// connection: it would wake an idle thread for every answer.
		err := be.Unpoll()
		fd := -1
		if err == nil {
			fd, err = backendFD(be)
		}
		if err == nil {
			err = ls.d.l.Adopt(&lb.c, fd, &ls.sh)
		}
		if err == nil {
			if cd := be.Codec(); cd != nil {
				// TLS: the loop feeds crypto/tls what it reads and writes
				// what it seals (docs/design.md section 16, TLS). Checked as
				// a pointer: a nil *TLSCodec is not a nil Codec.
				lb.c.SetCodec(cd)
			}
		}
		if err != nil {
			be.Pool().Destroy(be)
			return fmt.Errorf("server connection: %w", err)
		}
		lb.adopted = true
	}
	ls.sc = &lb.c
	ss.attachedLocked(be, at)
	ls.srest, ls.sskip, ls.sin = 0, false, ls.sin[:0]
	if q := ss.replayLocked(be); q != nil {
		ss.e.Outstanding++
		ss.pushSwallowedLocked(&engine.Undo{Fatal: true})
		ls.d.toS = append(ls.d.toS, q...)
	}
	if ss.e.Owing() > 0 {
		ls.d.toS = append(ls.d.toS, ss.e.SendOwed()...)
	}
	if n := be.R.Buffered(); n > 0 {
		// Bytes the server sent while idle, read into the pool's buffer.
		p, _ := be.R.Peek(n)
		ls.serverBytes(p)
		_, _ = be.R.Discard(n)
	}
	return nil
}

// backendFD is the descriptor of a server connection.
func backendFD(be *pool.Backend) (int, error) {
	if fd := be.FD(); fd >= 0 {
		return fd, nil
	}
	return -1, driver.ErrNoFD
}
