package netio

// PassReads is, for the tests, the number of pass-through Reads in progress.
func (t *TLSTransport) PassReads() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.passReads
}
