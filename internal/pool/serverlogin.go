package pool

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/auth"
	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// maxLoginMessage bounds a message the server sends while the proxy logs in
// with a client's proof: authentication requests and errors are small.
const maxLoginMessage = 64 << 10

// LoginWith returns a pgconn AfterNetConnect hook that logs in as the
// connection's user with what lookup returns for it: the proof of a client
// that authenticated as that role (auth.ServerLogin), for a role whose
// password the proxy does not know (an auth query's, an auth file's
// verifier). The hook sends the startup packet pgconn would send and answers
// PostgreSQL's SCRAM-SHA-256 or MD5 challenge itself, since pgconn can only
// derive its answers from a password; pgconn then reads what the server sent
// from AuthenticationOk on (or its error) as if it had logged in itself, and
// its own startup packet is dropped. When lookup has nothing for the user,
// the connection is returned as it is: pgconn logs in with its password.
//
// PgconnDialer unwraps the connection again after the login, so the Backend
// and an event loop see the dialed (or TLS) connection itself.
func LoginWith(lookup func(user string) (auth.ServerLogin, bool)) func(context.Context, *pgconn.Config, net.Conn) (net.Conn, error) {
	return func(ctx context.Context, cfg *pgconn.Config, conn net.Conn) (net.Conn, error) {
		l, ok := lookup(cfg.User)
		if !ok {
			return conn, nil
		}
		if dl, ok := ctx.Deadline(); ok {
			_ = conn.SetDeadline(dl)
			defer conn.SetDeadline(time.Time{})
		}
		replay, err := loginWith(conn, cfg, l)
		if err != nil {
			return nil, err
		}
		return &loginConn{Conn: conn, replay: replay, skip: -1}, nil
	}
}

// loginWith runs the login on conn and returns what pgconn must read next:
// from AuthenticationOk on, or the server's ErrorResponse.
func loginWith(conn net.Conn, cfg *pgconn.Config, l auth.ServerLogin) ([]byte, error) {
	params := []wire.StartupParam{{Name: "user", Value: cfg.User}}
	if cfg.Database != "" {
		params = append(params, wire.StartupParam{Name: "database", Value: cfg.Database})
	}
	names := make([]string, 0, len(cfg.RuntimeParams))
	for k := range cfg.RuntimeParams {
		if k != "user" && k != "database" {
			names = append(names, k)
		}
	}
	slices.Sort(names)
	for _, k := range names {
		params = append(params, wire.StartupParam{Name: k, Value: cfg.RuntimeParams[k]})
	}
	if _, err := conn.Write(wire.AppendStartup(nil, wire.ProtocolVersion30, params...)); err != nil {
		return nil, fmt.Errorf("server login: %w", err)
	}
	r := bufio.NewReaderSize(conn, 1024)
	var replay []byte // a NegotiateProtocolVersion pgconn must see too
	var sc *auth.SCRAMClient
	for {
		typ, msg, err := readLoginMessage(r)
		if err != nil {
			return nil, fmt.Errorf("server login: %w", err)
		}
		body := msg[wire.HeaderLen:]
		switch typ {
		case 'E':
			return withBuffered(append(replay, msg...), r), nil
		case 'v':
			if len(replay) > 0 {
				return nil, errors.New("server login: a second NegotiateProtocolVersion")
			}
			replay = msg // pgconn handles it as after its own startup packet
			continue
		case 'R':
		default:
			return nil, fmt.Errorf("server login: unexpected message %q before authentication", typ)
		}
		if len(body) < 4 {
			return nil, errors.New("server login: authentication request too short")
		}
		code, data := binary.BigEndian.Uint32(body), body[4:]
		var out []byte
		switch code {
		case 0: // AuthenticationOk
			if sc != nil {
				return nil, errors.New("server login: authentication ended before the server proved its SCRAM signature")
			}
			return withBuffered(append(replay, msg...), r), nil
		case 5: // AuthenticationMD5Password
			if len(data) != 4 {
				return nil, errors.New("server login: malformed MD5 request")
			}
			if out, err = l.MD5Response([4]byte(data)); err != nil {
				return nil, fmt.Errorf("server login: %w", err)
			}
		case 10: // AuthenticationSASL
			if !slices.Contains(strings.Split(string(data), "\x00"), "SCRAM-SHA-256") {
				return nil, fmt.Errorf("server login: the server offers no SCRAM-SHA-256 (%q)", strings.Trim(string(data), "\x00"))
			}
			if sc, err = l.NewSCRAMClient(nil); err != nil {
				return nil, fmt.Errorf("server login: %w", err)
			}
			out = sc.First()
		case 11: // AuthenticationSASLContinue
			if sc == nil {
				return nil, errors.New("server login: SASL continue without SASL")
			}
			if out, err = sc.Final(data); err != nil {
				return nil, fmt.Errorf("server login: %w", err)
			}
		case 12: // AuthenticationSASLFinal
			if sc == nil {
				return nil, errors.New("server login: SASL final without SASL")
			}
			if err := sc.Verify(data); err != nil {
				return nil, fmt.Errorf("server login: %w", err)
			}
			sc = nil
			continue
		default:
			return nil, fmt.Errorf("server login: the server asks for authentication method %d; a role logged in with its client's proof can answer SCRAM-SHA-256 and md5 only", code)
		}
		msg = append(binary.BigEndian.AppendUint32([]byte{'p'}, uint32(4+len(out))), out...)
		if _, err := conn.Write(msg); err != nil {
			return nil, fmt.Errorf("server login: %w", err)
		}
	}
}

// readLoginMessage reads one whole server message of at most
// maxLoginMessage bytes.
func readLoginMessage(r *bufio.Reader) (byte, []byte, error) {
	var hdr [wire.HeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[1:]))
	if n < 4 || n > maxLoginMessage {
		return 0, nil, fmt.Errorf("message %q of %d bytes", hdr[0], n)
	}
	msg := make([]byte, wire.HeaderLen+n-4)
	copy(msg, hdr[:])
	if _, err := io.ReadFull(r, msg[wire.HeaderLen:]); err != nil {
		return 0, nil, err
	}
	return hdr[0], msg, nil
}

// withBuffered appends what r read ahead to b.
func withBuffered(b []byte, r *bufio.Reader) []byte {
	p, _ := r.Peek(r.Buffered())
	return append(b, p...)
}

// loginConn is the connection pgconn goes on with after LoginWith: it first
// reads what the login left for it (replay), and drops pgconn's own startup
// packet.
type loginConn struct {
	net.Conn
	replay []byte
	skip   int    // bytes of pgconn's startup packet still to drop; -1 while its length is unknown
	hdr    []byte // the startup packet's first bytes while skip is -1
}

func (c *loginConn) Read(p []byte) (int, error) {
	if len(c.replay) > 0 {
		n := copy(p, c.replay)
		c.replay = c.replay[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

func (c *loginConn) Write(p []byte) (int, error) {
	n := len(p)
	for c.skip != 0 && len(p) > 0 {
		if c.skip < 0 {
			k := min(4-len(c.hdr), len(p))
			c.hdr, p = append(c.hdr, p[:k]...), p[k:]
			if len(c.hdr) == 4 {
				c.skip = max(int(binary.BigEndian.Uint32(c.hdr))-4, 0)
			}
			continue
		}
		k := min(c.skip, len(p))
		c.skip, p = c.skip-k, p[k:]
	}
	if len(p) == 0 {
		return n, nil
	}
	if _, err := c.Conn.Write(p); err != nil {
		return 0, err
	}
	return n, nil
}

// unwrap returns the connection under c once the login is over (nothing left
// to replay, the startup packet dropped).
func (c *loginConn) unwrap() (net.Conn, error) {
	if len(c.replay) > 0 || c.skip != 0 {
		return nil, errors.New("server login: pgconn did not take the login's messages")
	}
	return c.Conn, nil
}
