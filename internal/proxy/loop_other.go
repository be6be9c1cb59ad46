//go:build !linux

package proxy

import "errors"

// The event-loop driver is Linux-only (loop_linux.go): elsewhere every client
// is served by its goroutines.

type loopDriver struct{}

func newLoopDriver(*Server) (*loopDriver, error) {
	return nil, errors.New("the event-loop driver needs Linux")
}

func (*loopDriver) stop() {}

type loopSess struct{}

func (*loopSess) post(func()) bool { return false }
func (*loopSess) killed()          {}
func (*loopSess) cancelDone()      {}
func (*loopSess) forceClose()      {}

func (ss *session) toLoop() bool { return false }
