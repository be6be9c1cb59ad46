//go:build unix

package netio

import (
	"io"
	"net"
)

// ConnIO returns what the hot path reads and writes c through: a RawIO where c
// has a file descriptor it can use, else c itself (TLS, net.Pipe, other systems).
func ConnIO(c net.Conn) io.ReadWriter {
	if rio := NewRawIO(c); rio != nil {
		return rio
	}
	return c
}
