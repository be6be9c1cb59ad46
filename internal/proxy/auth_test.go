package proxy_test

import (
	"bufio"
	"crypto/md5"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/lib/pq"

	"github.com/pgsidecar/pgsidecar/internal/auth"
	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// testRoutes allows the routes listed, refusing others as the real policy
// does: 3D000 for a known user, 28000 for another.
type testRoutes map[[2]string]bool

func (r testRoutes) Allow(database, user string) (code, msg string) {
	if r[[2]string{database, user}] {
		return "", ""
	}
	for k := range r {
		if k[1] == user {
			return wire.CodeInvalidCatalogName, fmt.Sprintf("database %q not allowed", database)
		}
	}
	return wire.CodeInvalidAuthorization, fmt.Sprintf("user %q not allowed", user)
}

// authProxy starts a proxy for db whose clients authenticate with method
// against secrets; only (db, postgres) is an allowed route.
func authProxy(t *testing.T, db string, method auth.Method, secrets map[string]auth.Secret) *testProxy {
	t.Helper()
	return startProxy(t, db, proxyOpts{Mode: proxy.ModeTransaction, Opt: proxy.Options{
		Auth: &proxy.ClientAuth{Method: method, MockKey: []byte("test mock key"), Lookup: func(u string) (auth.Secret, bool, error) {
			s, ok := secrets[u]
			return s, ok, nil
		}},
		Routes: testRoutes{{db, "postgres"}: true},
	}})
}

// urlAs is tp's URL for user with password.
func (tp *testProxy) urlAs(user, password, db string) string {
	return fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", user, password, tp.addr, db)
}

// wantPgError checks that err is a PostgreSQL error with code and message.
func wantPgError(t *testing.T, what string, err error, code, msg string) {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		t.Errorf("%s: error %v, want SQLSTATE %s", what, err, code)
		return
	}
	if pe.Code != code || pe.Message != msg || pe.Severity != "FATAL" {
		t.Errorf("%s: %s %s %q, want FATAL %s %q", what, pe.Severity, pe.Code, pe.Message, code, msg)
	}
}

func TestClientAuthPgx(t *testing.T) {
	db := newDatabase(t)
	md5Hash := md5.Sum([]byte("md5-secret" + "postgres"))
	for _, tc := range []struct {
		name   string
		method auth.Method
		secret func(t *testing.T) auth.Secret
		pass   string
	}{
		{"scram plain", auth.SCRAMSHA256, func(*testing.T) auth.Secret { return auth.PlainSecret("postgres", "s3cret") }, "s3cret"},
		{"md5 plain", auth.MD5, func(*testing.T) auth.Secret { return auth.PlainSecret("postgres", "s3cret") }, "s3cret"},
		{"md5 hash", auth.MD5, func(t *testing.T) auth.Secret {
			s, err := auth.ParseSecret("postgres", "md5"+hex.EncodeToString(md5Hash[:]))
			if err != nil {
				t.Fatal(err)
			}
			return s
		}, "md5-secret"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tp := authProxy(t, db, tc.method, map[string]auth.Secret{"postgres": tc.secret(t)})
			c, err := pgtest.TryConnect(t, tp.urlAs("postgres", tc.pass, db), pgx.QueryExecModeExec, nil)
			if err != nil {
				t.Fatalf("right password: %v", err)
			}
			if err := pgtest.SelectInt(c, 7); err != nil {
				t.Fatal(err)
			}
			_, err = pgtest.TryConnect(t, tp.urlAs("postgres", "wrong", db), pgx.QueryExecModeExec, nil)
			wantPgError(t, "wrong password", err, "28P01", `password authentication failed for user "postgres"`)
			_, err = pgtest.TryConnect(t, tp.urlAs("postgres", "", db), pgx.QueryExecModeExec, nil)
			wantPgError(t, "no password", err, "28P01", `password authentication failed for user "postgres"`)
			// An unknown role gets the very same answer: no user enumeration.
			_, err = pgtest.TryConnect(t, tp.urlAs("nobody", tc.pass, db), pgx.QueryExecModeExec, nil)
			wantPgError(t, "unknown role", err, "28P01", `password authentication failed for user "nobody"`)
			// A known role on a database it may not use: refused after it
			// proved its password, and no pool is made for the route.
			_, err = pgtest.TryConnect(t, tp.urlAs("postgres", tc.pass, "postgres"), pgx.QueryExecModeExec, nil)
			wantPgError(t, "other database", err, "3D000", `database "postgres" not allowed`)
			st := tp.srv.Stats()
			if st.AuthFailed != 3 || st.RouteRefused != 1 {
				t.Errorf("AuthFailed %d, RouteRefused %d; want 3 and 1", st.AuthFailed, st.RouteRefused)
			}
			snap, _ := tp.pools.Snapshot()
			if len(snap) != 1 || snap[0].Key.Database != db || snap[0].Key.User != "postgres" {
				t.Errorf("pools %+v, want only %s/postgres", snap, db)
			}
		})
	}
}

// lib/pq speaks SCRAM and md5 too.
func TestClientAuthLibPQ(t *testing.T) {
	db := newDatabase(t)
	for _, m := range []auth.Method{auth.SCRAMSHA256, auth.MD5} {
		t.Run(m.String(), func(t *testing.T) {
			tp := authProxy(t, db, m, map[string]auth.Secret{"postgres": auth.PlainSecret("postgres", "pq pass")})
			good := openLibPQ(t, tp.urlAs("postgres", "pq%20pass", db))
			var n int
			if err := good.QueryRow("select 41 + 1").Scan(&n); err != nil || n != 42 {
				t.Fatalf("right password: %d, %v", n, err)
			}
			bad := openLibPQ(t, tp.urlAs("postgres", "nope", db))
			err := bad.QueryRow("select 1").Scan(&n)
			var pe *pq.Error
			if !errors.As(err, &pe) || pe.Code != "28P01" || pe.Message != `password authentication failed for user "postgres"` {
				t.Errorf("wrong password: %v, want 28P01", err)
			}
		})
	}
}

// Bad authentication input gets 08P01 and the connection closed; a client
// logging in meanwhile is served.
func TestClientAuthBadInput(t *testing.T) {
	db := newDatabase(t)
	tp := authProxy(t, db, auth.SCRAMSHA256, map[string]auth.Secret{"postgres": auth.PlainSecret("postgres", "pw")})
	good := pgtest.Connect(t, tp.urlAs("postgres", "pw", db), pgx.QueryExecModeExec, nil)
	for _, tc := range []struct {
		name string
		send []byte
		msg  string
	}{
		{"query instead of password", wire.AppendQuery(nil, "select 1"), "expected SASL response, got message type 81"},
		{"huge length", []byte{'p', 0x7f, 0xff, 0xff, 0xff}, "invalid password packet size"},
		{"garbage SASL", append([]byte{'p', 0, 0, 0, 9}, "abcde"...), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := pgtest.Dial(t, tp.addr)
			rc.Send(wire.AppendStartup(nil, wire.ProtocolVersion30, wire.StartupParam{Name: "user", Value: "postgres"},
				wire.StartupParam{Name: "database", Value: db}))
			typ, body, err := rc.Next(10 * time.Second)
			if err != nil || typ != 'R' || binary.BigEndian.Uint32(body) != 10 || !strings.Contains(string(body[4:]), "SCRAM-SHA-256") {
				t.Fatalf("first message %q %q (%v), want AuthenticationSASL", typ, body, err)
			}
			rc.Send(tc.send)
			typ, body, err = rc.Next(10 * time.Second)
			f := wire.ParseError(body)
			if err != nil || typ != 'E' || f.Code != wire.CodeProtocolViolation || tc.msg != "" && f.Message != tc.msg {
				t.Errorf("answer %q %+v (%v), want 08P01 %q", typ, f, err, tc.msg)
			}
			if _, _, err := rc.Next(10 * time.Second); !pgtest.Closed(err) {
				t.Errorf("after the error: %v, want the connection closed", err)
			}
		})
	}
	if err := pgtest.SelectInt(good, 3); err != nil {
		t.Errorf("bystander: %v", err)
	}
}

// A burst of failed logins leaves the proxy serving, with no goroutine left
// behind.
func TestClientAuthFailedBurst(t *testing.T) {
	db := newDatabase(t)
	tp := authProxy(t, db, auth.SCRAMSHA256, map[string]auth.Secret{"postgres": auth.PlainSecret("postgres", "pw")})
	good := pgtest.Connect(t, tp.urlAs("postgres", "pw", db), pgx.QueryExecModeExec, nil)
	before := pgtest.Goroutines("pgsidecar/internal/proxy")
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapInuse
	}
	heapBefore := heap()
	const n = 1000
	var wg sync.WaitGroup
	var mu sync.Mutex
	wrong := 0
	sem := make(chan struct{}, 16)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			user := "postgres"
			if i%2 == 1 {
				user = fmt.Sprintf("ghost%d", i%7)
			}
			// A raw SCRAM client-first with a wrong final proof costs the
			// client no PBKDF2: the burst is the proxy's work.
			err := scramWrongProof(tp.addr, user, db)
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				wrong++
			}
		}()
	}
	wg.Wait()
	if wrong != n {
		t.Errorf("%d of %d logins failed with 28P01", wrong, n)
	}
	if st := tp.srv.Stats(); st.AuthFailed != n {
		t.Errorf("AuthFailed %d, want %d", st.AuthFailed, n)
	}
	if err := pgtest.SelectInt(good, 5); err != nil {
		t.Errorf("bystander: %v", err)
	}
	if left := pgtest.LeftGoroutines(before, 10*time.Second, "pgsidecar/internal/proxy"); len(left) > 0 {
		t.Errorf("goroutines left behind:\n%s", strings.Join(left, "\n"))
	}
	// What 1,000 failed logins leave on the heap: nothing of theirs (the
	// bound leaves room for the test's own and the runtime's noise).
	if after := heap(); after > heapBefore+4<<20 {
		t.Errorf("heap in use grew from %d to %d bytes over %d failed logins", heapBefore, after, n)
	}
}

// scramWrongProof runs a SCRAM exchange with a made-up proof and returns nil
// when the proxy answered 28P01.
func scramWrongProof(addr, user, db string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(c)
	if _, err := c.Write(wire.AppendStartup(nil, 3<<16, wire.StartupParam{Name: "user", Value: user},
		wire.StartupParam{Name: "database", Value: db})); err != nil {
		return err
	}
	read := func() (byte, []byte, error) {
		var h [5]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return 0, nil, err
		}
		b := make([]byte, int(binary.BigEndian.Uint32(h[1:]))-4)
		_, err := io.ReadFull(r, b)
		return h[0], b, err
	}
	if _, _, err := read(); err != nil { // AuthenticationSASL
		return err
	}
	cnonce := "rOprNGfwEbeRWgbNEkqO"
	first := "n,,n=,r=" + cnonce
	msg := []byte("SCRAM-SHA-256\x00")
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(first)))
	msg = append(msg, first...)
	if _, err := c.Write(pMsg(msg)); err != nil {
		return err
	}
	typ, body, err := read()
	if err != nil {
		return err
	}
	if typ != 'R' || binary.BigEndian.Uint32(body) != 11 {
		return fmt.Errorf("got %q, want AuthenticationSASLContinue", typ)
	}
	var nonce string
	for _, a := range strings.Split(string(body[4:]), ",") {
		if v, ok := strings.CutPrefix(a, "r="); ok {
			nonce = v
		}
	}
	final := "c=biws,r=" + nonce + ",p=" + base64.StdEncoding.EncodeToString(make([]byte, 32))
	if _, err := c.Write(pMsg([]byte(final))); err != nil {
		return err
	}
	typ, body, err = read()
	if err != nil {
		return err
	}
	if f := wire.ParseError(body); typ != 'E' || f.Code != "28P01" {
		return fmt.Errorf("got %q %+v, want 28P01", typ, f)
	}
	return nil
}

// pMsg frames body as a 'p' message.
func pMsg(body []byte) []byte {
	out := []byte{'p', 0, 0, 0, 0}
	binary.BigEndian.PutUint32(out[1:], uint32(len(body)+4))
	return append(out, body...)
}

// The console asks for the same password as any client; a stats user may
// SHOW but not PAUSE, RESUME, RELOAD or KILL_CLIENT.
func TestConsoleAuthAndRoles(t *testing.T) {
	db := newDatabase(t)
	secrets := map[string]auth.Secret{
		"postgres": auth.PlainSecret("postgres", "admin-pw"),
		"watcher":  auth.PlainSecret("watcher", "stats-pw"),
	}
	tp := startProxy(t, db, proxyOpts{PoolSize: 1, Opt: proxy.Options{
		AdminUsers: []string{"postgres"}, StatsUsers: []string{"watcher"},
		Auth: &proxy.ClientAuth{Method: auth.SCRAMSHA256, MockKey: []byte("k"), Lookup: func(u string) (auth.Secret, bool, error) {
			s, ok := secrets[u]
			return s, ok, nil
		}},
	}})
	console := func(user, pass string) (*pgx.Conn, error) {
		return pgtest.TryConnect(t, tp.urlAs(user, pass, "pgsidecar"), pgx.QueryExecModeSimpleProtocol, nil)
	}
	_, err := console("postgres", "wrong")
	wantPgError(t, "admin, wrong password", err, "28P01", `password authentication failed for user "postgres"`)
	adm, err := console("postgres", "admin-pw")
	if err != nil {
		t.Fatalf("admin: %v", err)
	}
	st, err := console("watcher", "stats-pw")
	if err != nil {
		t.Fatalf("stats user: %v", err)
	}
	consoleRows(t, st, "SHOW POOLS") // fails the test unless it is a SHOW result
	for _, cmd := range []string{"PAUSE", "RESUME", "RELOAD", "KILL_CLIENT 1"} {
		_, err := consoleExec(t, st, cmd)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "42501" || !strings.Contains(pe.Message, "may only run SHOW commands") {
			t.Errorf("stats user %s: %v, want 42501", cmd, err)
		}
	}
	if tag, err := consoleExec(t, adm, "RESUME"); err != nil || tag != "RESUME" {
		t.Errorf("admin RESUME: %q, %v", tag, err)
	}
}
