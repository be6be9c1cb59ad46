package netio

import (
	"net"
	"time"
)

// NewDetachedConn returns a net.Conn with addresses and nothing behind them:
// every Read and Write fails with net.ErrClosed, deadlines are ignored and
// Close does nothing. A TLSTransport whose socket an event loop owns (a
// client's, registered with its codec) enters its memory phase over one, so
// that nothing but the loop's codec calls reaches the socket, and closing
// the tls.Conn can never close a descriptor the loop may have reused.
func NewDetachedConn(laddr, raddr net.Addr) net.Conn {
	return &detachedConn{laddr: laddr, raddr: raddr}
}

type detachedConn struct{ laddr, raddr net.Addr }

func (c *detachedConn) Read([]byte) (int, error)         { return 0, net.ErrClosed }
func (c *detachedConn) Write([]byte) (int, error)        { return 0, net.ErrClosed }
func (c *detachedConn) Close() error                     { return nil }
func (c *detachedConn) LocalAddr() net.Addr              { return c.laddr }
func (c *detachedConn) RemoteAddr() net.Addr             { return c.raddr }
func (c *detachedConn) SetDeadline(time.Time) error      { return nil }
func (c *detachedConn) SetReadDeadline(time.Time) error  { return nil }
func (c *detachedConn) SetWriteDeadline(time.Time) error { return nil }
