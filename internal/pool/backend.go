package pool

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/netio"
	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// BufferSize is the size of each backend's read and write buffers.
const BufferSize = 32 * 1024

// Backend is one authenticated PostgreSQL server connection, ready for raw protocol
// traffic. While a client holds it, that client's session owns R and W exclusively.
type Backend struct {
	// Conn is the hijacked server connection.
	Conn net.Conn
	// R buffers reads from Conn. Writers bring their own buffer: a session writes
	// through its own bufio.Writer so that nothing of it outlives its hold.
	R *bufio.Reader
	// RW reads and writes Conn: through netio.RawIO where Conn has a descriptor,
	// else Conn itself. The hot path uses it rather than Conn.
	RW io.ReadWriter
	// PID and Key identify the backend for CancelRequest.
	PID uint32
	Key []byte
	// Params are the ParameterStatus values the server reported at login.
	Params map[string]string
	// CreatedAt is when the connection was established.
	CreatedAt time.Time
	// Ext is state the pool's user keeps with the connection (the proxy: which
	// prepared statements it holds). Only the current holder touches it; the pool
	// never does.
	Ext any
	// Loop is what an event-loop driver keeps with the connection (its
	// registration); only the current holder touches it, the pool never does.
	Loop any
	// OnClose, when set, is called by Close, on any goroutine, instead of
	// closing: an event loop on which the descriptor stays registered while
	// the backend idles in the pool takes it off first, then calls CloseNow.
	OnClose func(*Backend)
	// StateKey identifies the session state the holder left on the connection
	// (0: the state it logged in with); see Pool.TryAcquirePrefer.
	StateKey uint64

	pool      *Pool
	gen       uint64    // the pool's configuration generation at its dial
	expiresAt time.Time // zero = never
	idleSince time.Time
	raw       syscall.RawConn
	fd        int                 // the descriptor of raw, -1 without one
	tr        *netio.TLSTransport // under Conn when it is TLS the loop can drive
	codec     *netio.TLSCodec     // tr's, for the loop
	peekState int                 // result of the last peek, set inside peekFn
	peekFn    func(fd uintptr) bool
	peekBuf   [1]byte
}

// RawConn returns the syscall.RawConn of the connection's socket (under TLS,
// the ciphertext socket), or nil when it has none.
func (b *Backend) RawConn() syscall.RawConn { return b.raw }

// FD returns the connection's descriptor, or -1 when it has none or is TLS
// the loop cannot drive (not dialed through PgconnDialer): an event loop
// reads and writes it while a client holds the backend, through Codec when
// it is TLS. It stays valid until the backend is closed.
func (b *Backend) FD() int { return b.fd }

// Codec returns what an event loop decodes and encodes a TLS connection's
// bytes with, once Unpoll has switched it to the loop (nil before, and for a
// plain connection). Pass it to the loop only when it is not nil.
func (b *Backend) Codec() *netio.TLSCodec {
	if b.tr == nil || !b.tr.InMemoryPhase() {
		return nil
	}
	return b.codec
}

// TLS reports whether the connection is encrypted.
func (b *Backend) TLS() bool {
	_, ok := b.Conn.(*tls.Conn)
	return ok
}

// Pool returns the pool the backend belongs to.
func (b *Backend) Pool() *Pool { return b.pool }

// Close sends Terminate (best effort, bounded) and closes the connection; for
// a backend with OnClose set, its owner does that (CloseNow).
func (b *Backend) Close() error {
	if h := b.OnClose; h != nil {
		h(b)
		return nil
	}
	return b.CloseNow()
}

// CloseNow is Close whatever OnClose says: for OnClose's owner.
func (b *Backend) CloseNow() error {
	var buf [5]byte
	if b.Codec() != nil {
		// On the loop's side: never block. Terminate and close_notify go
		// with one non-blocking write.
		return b.codec.Close(wire.AppendTerminate(buf[:0]))
	}
	_ = b.Conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = b.Conn.Write(wire.AppendTerminate(buf[:0]))
	return b.Conn.Close()
}

// CancelAddr is the address a CancelRequest for this backend must be sent to.
func (b *Backend) CancelAddr() net.Addr { return b.Conn.RemoteAddr() }

const (
	peekAlive = iota
	peekClosed
	peekData
)

// alive reports whether an idle backend is still usable: nothing buffered, no byte
// waiting on the socket (an idle backend only speaks to say it is terminating) and
// no EOF. It costs one non-blocking recv.
func (b *Backend) alive() bool {
	if b.R.Buffered() > 0 || b.tr != nil && b.tr.Buffered() > 0 {
		return false
	}
	if b.codec != nil && b.codec.Holds() {
		// Bytes that came after the last ReadyForQuery wait inside tls.Conn
		// (decoded or not), where the peek below cannot see them. The loop
		// does not touch a parked backend: its reads are paused.
		return false
	}
	if b.raw == nil {
		return true
	}
	// Control, not Read: the peek never blocks, and a read deadline left on the
	// connection by its last user must not make a healthy backend look dead.
	var ok bool
	if err := b.raw.Control(func(fd uintptr) { ok = b.peekFn(fd) }); err != nil || !ok {
		return false
	}
	return b.peekState == peekAlive
}

func (b *Backend) initPeek() {
	c := b.Conn
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return
	}
	b.raw = raw
	b.peekFn = func(fd uintptr) bool {
		n, err := netio.PeekFD(fd, b.peekBuf[:])
		switch {
		case err == syscall.EAGAIN:
			b.peekState = peekAlive
		case err != 0 || n == 0:
			b.peekState = peekClosed
		default:
			b.peekState = peekData
		}
		return true
	}
}

// NewBackend wraps an already authenticated, idle server connection. A TLS
// connection over a netio.TLSTransport (PgconnDialer's) can be driven by an
// event loop (FD, Unpoll, Codec); any other TLS connection cannot.
func NewBackend(conn net.Conn, pid uint32, key []byte, params map[string]string) *Backend {
	b := &Backend{
		Conn:      conn,
		PID:       pid,
		Key:       key,
		Params:    params,
		CreatedAt: time.Now(),
	}
	b.RW = netio.ConnIO(conn)
	b.R = bufio.NewReaderSize(b.RW, BufferSize)
	if tc, ok := conn.(*tls.Conn); ok {
		if tr, ok := tc.NetConn().(*netio.TLSTransport); ok {
			if codec, err := netio.NewTLSCodec(tc); err == nil {
				b.tr, b.codec = tr, codec
			}
		}
	}
	b.initPeek()
	b.fd = -1
	if b.raw != nil && (!b.TLS() || b.tr != nil) {
		_ = b.raw.Control(func(s uintptr) { b.fd = int(s) })
	}
	return b
}

// DialFunc opens one new backend connection.
type DialFunc func(ctx context.Context) (*Backend, error)

// ServerError returns the SQLSTATE code and message of a PostgreSQL error inside err
// (for example a failed login: 28P01, 3D000), if there is one.
func ServerError(err error) (code, message string, ok bool) {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code, pe.Message, true
	}
	return "", "", false
}

// PgconnDialer returns a DialFunc that logs in with pgconn (any authentication and TLS
// setting pgconn supports) and then hijacks the connection. It works on a
// copy of cfg whose DialFunc (cfg's, or pgconn's default dialer when it has
// none) puts every connection in a netio.TLSTransport: the TLS handshake and
// the login go through it unchanged, and afterwards an event loop can drive
// a TLS connection (Unpoll, Codec). A plain connection is unwrapped again
// after the login: the Backend holds the dialed connection itself.
func PgconnDialer(cfg *pgconn.Config) DialFunc {
	cfg = cfg.Copy()
	dial := cfg.DialFunc
	if dial == nil {
		dial = (&net.Dialer{}).DialContext // pgconn's default (config.go, makeDefaultDialer)
	}
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return netio.NewTLSTransport(nc), nil
	}
	return func(ctx context.Context) (*Backend, error) {
		pc, err := pgconn.ConnectConfig(ctx, cfg)
		if err != nil {
			return nil, err
		}
		// pgconn may have a background reader blocked in a Read (it starts
		// one when a login write is slow) or a read buffered: both would
		// corrupt the connection for its next holder (with TLS, a Read
		// left behind gets a permanent error when the event loop takes the
		// descriptor). SyncConn stops and drains them.
		if err := pc.SyncConn(ctx); err != nil {
			pc.Close(context.Background())
			return nil, fmt.Errorf("sync server connection: %w", err)
		}
		hc, err := pc.Hijack()
		if err != nil {
			pc.Close(context.Background())
			return nil, fmt.Errorf("hijack server connection: %w", err)
		}
		if hc.TxStatus != wire.TxIdle {
			hc.Conn.Close()
			return nil, errors.New("server connection not idle after login")
		}
		params := make(map[string]string, len(hc.ParameterStatuses))
		for k, v := range hc.ParameterStatuses {
			params[k] = v
		}
		conn := hc.Conn
		if lc, ok := conn.(*loginConn); ok { // LoginWith's
			if conn, err = lc.unwrap(); err != nil {
				hc.Conn.Close()
				return nil, err
			}
		}
		if tr, ok := conn.(*netio.TLSTransport); ok {
			conn = tr.NetConn() // plain: nothing changes for it
		}
		return NewBackend(conn, hc.PID, hc.SecretKey, params), nil
	}
}
