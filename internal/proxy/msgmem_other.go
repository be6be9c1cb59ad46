//go:build !linux

package proxy

// mapMessage is not used outside Linux: message buffers come from the heap.
func mapMessage(int) ([]byte, bool) { return nil, false }

func unmapMessage([]byte) {}
