package auth

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/lib/pq"
)

// This file runs Exchange against the client side of pgx's pgconn over a real
// TCP connection: the test plays a PostgreSQL server whose authentication is
// the Exchange.

// serverResult is what the test server saw of one connection.
type serverResult struct {
	user   string
	method Method
	err    error // nil: authenticated
}

// testServer is a one-shot PostgreSQL authentication server on 127.0.0.1.
type testServer struct {
	addr    string
	results chan serverResult
}

// startTestServer listens on 127.0.0.1:0 and authenticates every connection
// with an Exchange of method m; lookup gives a user's secret and whether the
// role is known.
func startTestServer(t *testing.T, m Method, lookup func(user string) (Secret, bool), mockKey []byte) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{addr: ln.Addr().String(), results: make(chan serverResult, 16)}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			s.results <- serveConn(conn, m, lookup, mockKey)
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return s
}

// serveConn authenticates one connection and, on success, sends
// AuthenticationOk and ReadyForQuery and waits for the client to leave.
func serveConn(conn net.Conn, m Method, lookup func(string) (Secret, bool), mockKey []byte) serverResult {
	defer conn.Close()
	// A deadline, not a sleep: a stuck client fails the test instead of hanging it.
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(conn)
	user, err := readStartup(r, conn)
	if err != nil {
		return serverResult{err: fmt.Errorf("startup: %w", err)}
	}
	sec, known := lookup(user)
	x := NewExchange(m, user, sec, known, mockKey, nil)
	res := serverResult{user: user, method: x.Method()}
	if _, err := conn.Write(x.Start()); err != nil {
		res.err = err
		return res
	}
	for {
		var hdr [5]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			res.err = fmt.Errorf("reading message: %w", err)
			return res
		}
		n := binary.BigEndian.Uint32(hdr[1:])
		if hdr[0] != 'p' {
			res.err = x.UnexpectedMessage(hdr[0])
			writeError(conn, "08P01", res.err.Error())
			return res
		}
		if n < 4 || n > MaxMessageLen {
			res.err = fmt.Errorf("bad message length %d", n)
			return res
		}
		body := make([]byte, n-4)
		if _, err := io.ReadFull(r, body); err != nil {
			res.err = fmt.Errorf("reading message body: %w", err)
			return res
		}
		out, done, err := x.Next(body)
		if len(out) > 0 {
			if _, werr := conn.Write(out); werr != nil {
				res.err = werr
				return res
			}
		}
		switch {
		case errors.Is(err, ErrFailed):
			writeError(conn, "28P01", fmt.Sprintf("password authentication failed for user %q", user))
			res.err = err
			return res
		case err != nil:
			writeError(conn, "08P01", err.Error())
			res.err = err
			return res
		case done:
			var msg []byte
			msg, _ = (&pgproto3.AuthenticationOk{}).Encode(msg)
			msg, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(msg)
			if _, err := conn.Write(msg); err != nil {
				res.err = err
				return res
			}
			_, _ = io.Copy(io.Discard, r) // until the client's Terminate and close
			return res
		}
	}
}

// readStartup reads the startup packet (refusing SSL and GSSAPI encryption
// requests) and returns its user parameter.
func readStartup(r *bufio.Reader, w io.Writer) (string, error) {
	for {
		var hdr [8]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return "", err
		}
		n := binary.BigEndian.Uint32(hdr[:4])
		code := binary.BigEndian.Uint32(hdr[4:])
		if n < 8 || n > 10000 {
			return "", fmt.Errorf("bad startup length %d", n)
		}
		body := make([]byte, n-8)
		if _, err := io.ReadFull(r, body); err != nil {
			return "", err
		}
		switch code {
		case 80877103, 80877104: // SSLRequest, GSSENCRequest
			if _, err := w.Write([]byte{'N'}); err != nil {
				return "", err
			}
			continue
		case 3 << 16:
		default:
			return "", fmt.Errorf("unexpected startup code %d", code)
		}
		fields := strings.Split(string(body), "\x00")
		for i := 0; i+1 < len(fields); i += 2 {
			if fields[i] == "user" {
				return fields[i+1], nil
			}
		}
		return "", errors.New("no user in startup packet")
	}
}

func writeError(w io.Writer, code, msg string) {
	b, _ := (&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: msg}).Encode(nil)
	_, _ = w.Write(b)
}

// connect runs pgconn's client against the server.
func (s *testServer) connect(t *testing.T, user, password string) error {
	t.Helper()
	host, port, err := net.SplitHostPort(s.addr)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=%s port=%s dbname=test sslmode=disable connect_timeout=20", host, port))
	if err != nil {
		t.Fatal(err)
	}
	cfg.User, cfg.Password = user, password
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

func (s *testServer) result(t *testing.T) serverResult {
	t.Helper()
	select {
	case r := <-s.results:
		return r
	case <-time.After(20 * time.Second):
		t.Fatal("no server result")
		return serverResult{}
	}
}

func TestPgconnClient(t *testing.T) {
	const password = "correct horse battery staple"
	const unicodePassword = "pässwörd-€" // NFKC-normalised: SASLprep leaves it as is
	mockKey := []byte("pgconn test mock key")

	mustParse := func(user, field string) Secret {
		t.Helper()
		sec, err := ParseSecret(user, field)
		if err != nil {
			t.Fatal(err)
		}
		return sec
	}
	roles := map[string]Secret{
		"plain":     PlainSecret("plain", password),
		"verifier":  mustParse("verifier", testVerifier(password, []byte("pgconn-test-salt"), 4096)),
		"md5hash":   mustParse("md5hash", testMD5Secret("md5hash", password)),
		"unicode":   PlainSecret("unicode", unicodePassword),
		"nosecret":  {},
		"quote\"me": PlainSecret("quote\"me", password),
	}
	lookup := func(user string) (Secret, bool) {
		sec, ok := roles[user]
		return sec, ok
	}

	tests := []struct {
		name       string
		method     Method
		user       string
		password   string
		wantOK     bool
		wantMethod Method
	}{
		{"scram plain right", SCRAMSHA256, "plain", password, true, SCRAMSHA256},
		{"scram plain wrong", SCRAMSHA256, "plain", "wrong", false, SCRAMSHA256},
		{"scram verifier right", SCRAMSHA256, "verifier", password, true, SCRAMSHA256},
		{"scram verifier wrong", SCRAMSHA256, "verifier", password + "x", false, SCRAMSHA256},
		{"scram unicode right", SCRAMSHA256, "unicode", unicodePassword, true, SCRAMSHA256},
		{"scram quoted user right", SCRAMSHA256, "quote\"me", password, true, SCRAMSHA256},
		{"scram md5 hash only", SCRAMSHA256, "md5hash", password, false, SCRAMSHA256},
		{"scram no secret", SCRAMSHA256, "nosecret", password, false, SCRAMSHA256},
		{"scram unknown role", SCRAMSHA256, "nobody", password, false, SCRAMSHA256},
		{"md5 hash right", MD5, "md5hash", password, true, MD5},
		{"md5 hash wrong", MD5, "md5hash", "wrong", false, MD5},
		{"md5 plain right", MD5, "plain", password, true, MD5},
		{"md5 plain wrong", MD5, "plain", "wrong", false, MD5},
		{"md5 verifier gets scram right", MD5, "verifier", password, true, SCRAMSHA256},
		{"md5 verifier gets scram wrong", MD5, "verifier", "wrong", false, SCRAMSHA256},
		{"md5 unknown role", MD5, "nobody", password, false, MD5},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := startTestServer(t, tc.method, lookup, mockKey)
			err := srv.connect(t, tc.user, tc.password)
			res := srv.result(t)
			if res.user != tc.user || res.method != tc.wantMethod {
				t.Fatalf("server saw user %q method %v, want %q %v", res.user, res.method, tc.user, tc.wantMethod)
			}
			if tc.wantOK {
				if err != nil || res.err != nil {
					t.Fatalf("client error %v, server error %v", err, res.err)
				}
				return
			}
			if !errors.Is(res.err, ErrFailed) {
				t.Fatalf("server error %v, want ErrFailed", res.err)
			}
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) {
				t.Fatalf("client error %v, want a PgError", err)
			}
			want := fmt.Sprintf("password authentication failed for user %q", tc.user)
			if pgErr.Severity != "FATAL" || pgErr.Code != "28P01" || pgErr.Message != want {
				t.Fatalf("client got %s %s %q, want FATAL 28P01 %q", pgErr.Severity, pgErr.Code, pgErr.Message, want)
			}
		})
	}
}

// TestLibpqClient runs a second, independent client (github.com/lib/pq)
// through SCRAM and MD5.
func TestLibpqClient(t *testing.T) {
	const password = "another password"
	roles := map[string]Secret{"pq": PlainSecret("pq", password)}
	lookup := func(user string) (Secret, bool) {
		sec, ok := roles[user]
		return sec, ok
	}
	for _, m := range []Method{SCRAMSHA256, MD5} {
		for _, pw := range []string{password, "wrong"} {
			t.Run(m.String()+"/"+pw, func(t *testing.T) {
				srv := startTestServer(t, m, lookup, nil)
				host, port, _ := net.SplitHostPort(srv.addr)
				connector, err := pq.NewConnector(fmt.Sprintf("host=%s port=%s user=pq password='%s' dbname=test sslmode=disable connect_timeout=20", host, port, pw))
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				conn, err := connector.Connect(ctx) // startup and authentication only
				if err == nil {
					_ = conn.Close()
				}
				res := srv.result(t)
				if res.method != m {
					t.Fatalf("method %v, want %v", res.method, m)
				}
				if pw == password {
					if err != nil || res.err != nil {
						t.Fatalf("client error %v, server error %v", err, res.err)
					}
					return
				}
				if err == nil || !errors.Is(res.err, ErrFailed) {
					t.Fatalf("client error %v, server error %v; want failures", err, res.err)
				}
				if !strings.Contains(err.Error(), "password authentication failed") {
					t.Fatalf("client error %v", err)
				}
			})
		}
	}
}
