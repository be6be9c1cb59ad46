package pool_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/pool"
)

// asyncOutcome is what an AcquireAsync callback got.
type asyncOutcome struct {
	b   *pool.Backend
	err error
}

func TestAcquireAsync(t *testing.T) {
	f := newFakeDB(t)
	p := newPool(t, f, pool.Config{Size: 1})
	var w pool.Waiter
	got := make(chan asyncOutcome, 4)
	fn := func(b *pool.Backend, err error) { got <- asyncOutcome{b, err} }

	// Nothing open: the wait is queued and a dial serves it.
	b, queued, err := p.AcquireAsync(0, time.Minute, &w, pool.OutcomeFunc(fn))
	if err != nil || b != nil || !queued {
		t.Fatalf("first AcquireAsync = %v, %v, %v", b, queued, err)
	}
	var first asyncOutcome
	select {
	case first = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("the dial never reached the waiter")
	}
	if first.err != nil || first.b == nil {
		t.Fatalf("outcome %+v", first)
	}
	// Full pool: queued; a Release hands the backend over through fn.
	if b, queued, err := p.AcquireAsync(0, time.Minute, &w, pool.OutcomeFunc(fn)); b != nil || !queued || err != nil {
		t.Fatalf("AcquireAsync on a full pool = %v, %v, %v", b, queued, err)
	}
	if s := p.Stats(); s.Waiting != 1 {
		t.Fatalf("waiting %d", s.Waiting)
	}
	p.Release(first.b)
	o := <-got // fn ran inside Release
	if o.b != first.b || o.err != nil {
		t.Fatalf("handed %+v", o)
	}
	if p.CancelWait(&w) {
		t.Fatal("CancelWait withdrew a wait that was served")
	}
	// A timeout reaches fn as DeadlineExceeded.
	start := time.Now()
	if _, queued, _ := p.AcquireAsync(0, 50*time.Millisecond, &w, pool.OutcomeFunc(fn)); !queued {
		t.Fatal("not queued")
	}
	select {
	case o = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("the timeout never reached the waiter")
	}
	if !errors.Is(o.err, context.DeadlineExceeded) || o.b != nil || time.Since(start) < 50*time.Millisecond {
		t.Fatalf("timeout outcome %+v after %v", o, time.Since(start))
	}
	// A withdrawn wait gets nothing; the release goes to the idle stack.
	if _, queued, _ := p.AcquireAsync(0, time.Minute, &w, pool.OutcomeFunc(fn)); !queued {
		t.Fatal("not queued")
	}
	if !p.CancelWait(&w) {
		t.Fatal("CancelWait did not withdraw a queued wait")
	}
	p.Release(first.b)
	select {
	case o = <-got:
		t.Fatalf("a withdrawn wait got %+v", o)
	default:
	}
	if b, queued, err := p.AcquireAsync(0, time.Minute, &w, pool.OutcomeFunc(fn)); b != first.b || queued || err != nil {
		t.Fatalf("AcquireAsync with an idle backend = %v, %v, %v", b, queued, err)
	}
	p.Release(first.b)
	if s := p.Stats(); s.Idle != 1 || s.Waiting != 0 || s.WaitTimeouts != 2 {
		t.Fatalf("stats %+v", s)
	}
}

func TestHandOver(t *testing.T) {
	f := newFakeDB(t)
	p := newPool(t, f, pool.Config{Size: 1})
	a := mustAcquire(t, p)
	var w, idle pool.Waiter
	got := make(chan asyncOutcome, 1)
	fn := func(b *pool.Backend, err error) { got <- asyncOutcome{b, err} }
	if _, queued, _ := p.AcquireAsync(0, time.Minute, &w, pool.OutcomeFunc(fn)); !queued {
		t.Fatal("not queued")
	}
	if p.HandOver(&idle, a) {
		t.Fatal("handed over to a wait that is not queued")
	}
	if !p.HandOver(&w, a) {
		t.Fatal("HandOver refused a queued wait")
	}
	select {
	case o := <-got:
		t.Fatalf("the wait's function ran: %+v", o)
	default:
	}
	if s := p.Stats(); s.Waiting != 0 || s.InUse != 1 || s.Acquires != 2 || s.Waited != 2 { // the first acquire waited for its dial
		t.Fatalf("stats after HandOver: %+v", s)
	}
	if p.CancelWait(&w) || p.HandOver(&w, a) {
		t.Fatal("a served wait was withdrawn or served again")
	}
	p.Release(a)
	if s := p.Stats(); s.Idle != 1 || s.InUse != 0 {
		t.Fatalf("stats after Release: %+v", s)
	}
}
