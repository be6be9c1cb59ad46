package proxy_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
	"github.com/pgsidecar/pgsidecar/internal/testcert"
	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// tlsFiles is a fresh test CA, server and client certificate, as files.
type tlsFiles struct {
	pem testcert.PEM
	dir string
}

func newTLSFiles(t testing.TB) tlsFiles {
	t.Helper()
	p, err := testcert.New()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := p.WriteFiles(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return tlsFiles{pem: p, dir: dir}
}

// serverConfig is the proxy's side: the server certificate, and the client CA
// when clientCA is set.
func (f tlsFiles) serverConfig(t testing.TB, clientCA bool) *tls.Config {
	t.Helper()
	cert, err := tls.X509KeyPair(f.pem.Cert, f.pem.Key)
	if err != nil {
		t.Fatal(err)
	}
	c := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if clientCA {
		c.ClientCAs = x509.NewCertPool()
		c.ClientCAs.AppendCertsFromPEM(f.pem.CA)
		c.ClientAuth = tls.VerifyClientCertIfGiven // as cmd/proxy: a missing one gets 28000 (ClientCert)
	}
	return c
}

// clientTLS is the proxy's TLS of mode, with serverConfig(clientCA) and a
// client certificate required when clientCA is set.
func (f tlsFiles) clientTLS(t testing.TB, mode proxy.TLSMode, clientCA bool) *proxy.ClientTLS {
	t.Helper()
	return &proxy.ClientTLS{Mode: mode, Config: f.serverConfig(t, clientCA), ClientCert: clientCA}
}

// clientConfig trusts the CA for 127.0.0.1, with the client certificate when
// withCert is set.
func (f tlsFiles) clientConfig(t testing.TB, withCert bool) *tls.Config {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(f.pem.CA)
	c := &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"}
	if withCert {
		cert, err := tls.X509KeyPair(f.pem.ClientCert, f.pem.ClientKey)
		if err != nil {
			t.Fatal(err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c
}

// url is a connection string to the proxy with sslmode and the CA file (and
// the client certificate when withCert is set).
func (f tlsFiles) url(tp *testProxy, sslmode string, withCert bool) string {
	u := fmt.Sprintf("postgres://postgres@%s/%s?sslmode=%s&sslrootcert=%s/ca.crt", tp.addr, tp.db, sslmode, f.dir)
	if withCert {
		u += fmt.Sprintf("&sslcert=%s/client.crt&sslkey=%s/client.key", f.dir, f.dir)
	}
	return u
}

// Client TLS (--client-tls allow): pgx with sslmode=verify-full runs the
// whole workload in every query mode through the event loop's TLS codec,
// with messages of several records each way; plaintext clients still get in;
// GSSENCRequest gets 'N'; a client that pipelines a query behind its startup
// packet in the same TLS record gets its answer (the plaintext tls.Conn
// holds when the loop takes the client over is decoded first).
func TestClientTLS(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the event loop is Linux-only")
	}
	f := newTLSFiles(t)
	db := newDatabase(t)
	tp := startProxy(t, db, proxyOpts{PoolSize: 2, Opt: proxy.Options{
		TLS: &proxy.ClientTLS{Mode: proxy.TLSAllow, Config: f.serverConfig(t, false)}}})
	plain := tp.URL()
	tp.url = f.url(tp, "verify-full", false)
	for _, qm := range allModes {
		t.Run(qm.String(), func(t *testing.T) {
			table := "ctls_" + strings.ReplaceAll(qm.String(), " ", "_")
			createTable(t, db, table)
			n := runWorkers(t, tp, qm, table, 6, 20)
			checkRows(t, db, table, n)
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := tp.connect(t, pgx.QueryExecModeCacheStatement)
	if !c.PgConn().Conn().(interface{ ConnectionState() tls.ConnectionState }).ConnectionState().HandshakeComplete {
		t.Fatal("the verify-full connection is not TLS")
	}
	big := strings.Repeat("0123456789abcdef", 1<<16) // 1 MB each way
	var got string
	if err := c.QueryRow(ctx, "SELECT $1::text || 'x'", big).Scan(&got); err != nil || got != big+"x" {
		t.Fatalf("1 MB round trip over client TLS: %d bytes back, %v", len(got), err)
	}
	if err := c.QueryRow(ctx, "SELECT repeat('y', 3000000)").Scan(&got); err != nil || len(got) != 3000000 {
		t.Fatalf("3 MB answer over client TLS: %d bytes, %v", len(got), err)
	}

	// Plaintext is allowed.
	pc := pgtest.Connect(t, plain, 0, nil)
	if n, err := pgtest.Int(pc, "SELECT 7"); err != nil || n != 7 {
		t.Fatalf("plaintext client: %d, %v", n, err)
	}
	// sslmode=require (no verification) works too.
	rc := pgtest.Connect(t, f.url(tp, "require", false), 0, nil)
	if n, err := pgtest.Int(rc, "SELECT 8"); err != nil || n != 8 {
		t.Fatalf("sslmode=require client: %d, %v", n, err)
	}

	// GSSENC is refused with 'N' and the client goes on in plaintext.
	g := pgtest.Dial(t, tp.addr)
	g.Send(wire.AppendStartup(nil, wire.GSSENCRequestCode))
	_ = g.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := g.R.ReadByte(); err != nil || b != 'N' {
		t.Fatalf("GSSENCRequest: answer %q, %v; want 'N'", b, err)
	}
	g.Login(db, "gss")

	// Startup and a Query in one write, over TLS.
	r := pgtest.Dial(t, tp.addr)
	if b, err := r.StartTLS(f.clientConfig(t, false)); b != 'S' || err != nil {
		t.Fatalf("SSLRequest: answer %q, handshake %v", b, err)
	}
	msg := wire.AppendStartup(nil, wire.ProtocolVersion30,
		wire.StartupParam{Name: "user", Value: "postgres"}, wire.StartupParam{Name: "database", Value: db})
	msg = append(msg, wire.AppendQuery(nil, "SELECT 'pipelined'")...)
	r.Send(msg)
	var rows []string
	for ready := 0; ready < 2; {
		typ, body, err := r.Next(10 * time.Second)
		if err != nil {
			t.Fatalf("pipelined over TLS: %v (rows %q)", err, rows)
		}
		switch typ {
		case 'Z':
			ready++
		case 'D':
			rows = append(rows, string(body[6:]))
		case 'E':
			t.Fatalf("pipelined over TLS: error %q", body)
		}
	}
	if len(rows) != 1 || rows[0] != "pipelined" {
		t.Fatalf("pipelined over TLS: rows %q, want [pipelined]", rows)
	}
	// A protocol violation on the loop ends the client: its FATAL, then
	// close_notify, as PostgreSQL ends a TLS session. TLS 1.2, whose alert
	// records show their type: the last record must be one.
	v := pgtest.Dial(t, tp.addr)
	rec := &recordingConn{Conn: v.Conn}
	v.Conn = rec
	cfg12 := f.clientConfig(t, false)
	cfg12.MaxVersion = tls.VersionTLS12
	if b, err := v.StartTLS(cfg12); b != 'S' || err != nil {
		t.Fatalf("SSLRequest: answer %q, handshake %v", b, err)
	}
	v.Login(db, "tls12")
	v.Send([]byte{'!', 0, 0, 0, 4})
	typ, body, err := v.Next(10 * time.Second)
	if typ != 'E' || !bytes.Contains(body, []byte(wire.CodeProtocolViolation)) {
		t.Fatalf("bad message over TLS: %q %q %v, want an 08P01 ErrorResponse", typ, body, err)
	}
	if _, _, err := v.Next(10 * time.Second); err != io.EOF {
		t.Fatalf("after the FATAL: %v, want io.EOF", err)
	}
	if last := rec.lastRecordType(t); last != 21 {
		t.Errorf("last TLS record of an ended client: type %d, want 21 (alert: close_notify)", last)
	}
	if st := tp.srv.Stats(); st.TLSFailed != 0 || st.TLSRequired != 0 {
		t.Errorf("TLSFailed %d, TLSRequired %d; want 0, 0", st.TLSFailed, st.TLSRequired)
	}
}

// --client-tls require: a plaintext client is refused with 28000 before it
// authenticates, and counted; TLS clients get in; a second SSLRequest on a
// TLS connection, garbage instead of a ClientHello and a client that offers
// only TLS 1.1 are ended (counted as failed handshakes) while a bystander
// goes on.
func TestClientTLSRequire(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the event loop is Linux-only")
	}
	f := newTLSFiles(t)
	db := newDatabase(t)
	tp := startProxy(t, db, proxyOpts{PoolSize: 2, Opt: proxy.Options{
		TLS: &proxy.ClientTLS{Mode: proxy.TLSRequire, Config: f.serverConfig(t, false)}}})
	plain := tp.URL()
	tp.url = f.url(tp, "verify-full", false)
	bystander := tp.connect(t, 0)

	_, err := pgtest.TryConnect(t, plain, 0, nil)
	if pgtest.SQLState(err) != wire.CodeInvalidAuthorization || !strings.Contains(err.Error(), "without TLS") {
		t.Fatalf("plaintext client under require: %v, want 28000 ... without TLS", err)
	}
	// sslmode=prefer falls back to nothing: it takes TLS.
	pc := pgtest.Connect(t, f.url(tp, "prefer", false), 0, nil)
	if n, err := pgtest.Int(pc, "SELECT 3"); err != nil || n != 3 {
		t.Fatalf("sslmode=prefer: %d, %v", n, err)
	}

	r := pgtest.Dial(t, tp.addr)
	if b, err := r.StartTLS(f.clientConfig(t, false)); b != 'S' || err != nil {
		t.Fatalf("SSLRequest: answer %q, handshake %v", b, err)
	}
	r.Send(wire.AppendStartup(nil, wire.SSLRequestCode))
	typ, body, err := r.Next(5 * time.Second)
	if typ != 'E' || !bytes.Contains(body, []byte(wire.CodeProtocolViolation)) {
		t.Fatalf("second SSLRequest: %q %q %v, want an 08P01 ErrorResponse", typ, body, err)
	}

	g := pgtest.Dial(t, tp.addr)
	g.Send(wire.AppendStartup(nil, wire.SSLRequestCode))
	_ = g.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := g.R.ReadByte(); b != 'S' || err != nil {
		t.Fatalf("SSLRequest: %q, %v", b, err)
	}
	g.Send(wire.AppendStartup(nil, wire.ProtocolVersion30, wire.StartupParam{Name: "user", Value: "postgres"}))
	if _, _, err := g.Next(5 * time.Second); err == nil {
		t.Fatal("plaintext after 'S': the proxy answered, want the connection closed")
	}

	old := f.clientConfig(t, false)
	old.MinVersion, old.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
	o := pgtest.Dial(t, tp.addr)
	if _, err := o.StartTLS(old); err == nil {
		t.Fatal("a TLS 1.1 client completed its handshake")
	}
	pgtest.EventuallyTrue(t, 5*time.Second, "two failed handshakes counted", func() bool { return tp.srv.Stats().TLSFailed == 2 })
	if st := tp.srv.Stats(); st.TLSRequired != 1 {
		t.Errorf("TLSRequired = %d, want 1", st.TLSRequired)
	}
	if n, err := pgtest.Int(bystander, "SELECT 5"); err != nil || n != 5 {
		t.Fatalf("bystander: %d, %v", n, err)
	}
}

// --tls-client-ca: a TLS client with a certificate no trusted CA signed
// fails the handshake; one without a certificate is refused after it with
// PostgreSQL's 28000 "connection requires a valid client certificate"; one
// with the CA's certificate gets in. A new certificate (Reconfigure, as a reload after the Secret rotated)
// serves the next handshake while a session opened before goes on.
func TestClientTLSCertificates(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the event loop is Linux-only")
	}
	f := newTLSFiles(t)
	db := newDatabase(t)
	opt := proxy.Options{TLS: f.clientTLS(t, proxy.TLSRequire, true)}
	tp := startProxy(t, db, proxyOpts{PoolSize: 2, Opt: opt})
	failed := func() uint64 { return tp.srv.Stats().TLSFailed }
	c := pgtest.Connect(t, f.url(tp, "verify-full", true), 0, nil)
	if n, err := pgtest.Int(c, "SELECT 1"); err != nil || n != 1 {
		t.Fatalf("client with a certificate: %d, %v", n, err)
	}
	if n := failed(); n != 0 {
		t.Errorf("a good handshake counted as failed: %d", n)
	}
	_, err := pgtest.TryConnect(t, f.url(tp, "verify-full", false), 0, nil)
	if pgtest.SQLState(err) != wire.CodeInvalidAuthorization || !strings.Contains(err.Error(), "requires a valid client certificate") {
		t.Fatalf("a client without a certificate: %v, want 28000 connection requires a valid client certificate", err)
	}
	if n := tp.srv.Stats().TLSRequired; n != 1 {
		t.Errorf("TLSRequired = %d after a client without a certificate, want 1", n)
	}
	n0 := failed()
	other := newTLSFiles(t)
	if _, err := pgtest.TryConnect(t, fmt.Sprintf("%s&sslcert=%s/client.crt&sslkey=%s/client.key",
		f.url(tp, "verify-full", false), other.dir, other.dir), 0, nil); err == nil {
		t.Fatal("a client with another CA's certificate got in")
	}
	pgtest.EventuallyTrue(t, 5*time.Second, "the second failed handshake counted", func() bool { return failed() > n0 })

	// Rotation: the other CA's server certificate, same client CA.
	cert, err := tls.X509KeyPair(other.pem.Cert, other.pem.Key)
	if err != nil {
		t.Fatal(err)
	}
	next := f.serverConfig(t, true)
	next.Certificates = []tls.Certificate{cert}
	opt.TLS = &proxy.ClientTLS{Mode: proxy.TLSRequire, Config: next, ClientCert: true}
	opt.QueryWaitTimeout = 20 * time.Second
	tp.srv.Reconfigure(opt)
	if _, err := pgtest.TryConnect(t, f.url(tp, "verify-full", true), 0, nil); err == nil {
		t.Fatal("after the rotation a client that trusts only the old CA got in")
	}
	nc := pgtest.Connect(t, fmt.Sprintf("%s&sslcert=%s/client.crt&sslkey=%s/client.key",
		other.url(tp, "verify-full", false), f.dir, f.dir), 0, nil)
	if n, err := pgtest.Int(nc, "SELECT 2"); err != nil || n != 2 {
		t.Fatalf("client of the new certificate: %d, %v", n, err)
	}
	if n, err := pgtest.Int(c, "SELECT 3"); err != nil || n != 3 {
		t.Fatalf("session opened before the rotation: %d, %v", n, err)
	}
}

// recordingConn keeps what is read through it: a TLS client's raw records.
type recordingConn struct {
	net.Conn
	mu  sync.Mutex
	got []byte
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.got = append(c.got, p[:n]...)
	c.mu.Unlock()
	return n, err
}

// lastRecordType is the content type of the last whole TLS record read.
func (c *recordingConn) lastRecordType(t testing.TB) byte {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	b, last := c.got, byte(0)
	for len(b) >= 5 {
		n := int(b[3])<<8 | int(b[4])
		if len(b) < 5+n {
			t.Fatalf("a TLS record cut short: %d of %d bytes", len(b)-5, n)
		}
		last, b = b[0], b[5+n:]
	}
	return last
}
