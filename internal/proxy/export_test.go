package proxy

// PendingAnswers returns, for the tests, the most answers due to any one client
// now (see maxPending).
func (s *Server) PendingAnswers() int {
	most := 0
	for _, ss := range s.snapshot() {
		ss.mu.Lock()
		most = max(most, ss.e.Q.Len())
		ss.mu.Unlock()
	}
	return most
}

// MaxPending is the backpressure bound on a client's answers due.
const MaxPending = maxPending
