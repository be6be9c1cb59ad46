package proxy_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
)

// Client TLS through the drivers users run: each driver's script
// (testdata/tls_check.py, testdata/TLSCheck.java, testdata/node/tls.js)
// connects to a proxy that requires TLS and to one that also requires a
// client certificate, in the sslmodes (or the driver's equivalent options)
// applications use, and prints one line per case, "DRIVER CASE RESULT". The
// tests compare each line with what the case must give (tlsWant).

// tlsDriverTimeout bounds a driver script's run (a few seconds normally,
// the JVM's compilation of TLSCheck.java included); every connection in the
// scripts has its own 10-second connect timeout.
const tlsDriverTimeout = 2 * time.Minute

// tlsTarget is what the driver scripts connect to: two proxies on one
// database, both with --client-tls require, the second also requiring a
// client certificate signed by the test CA.
type tlsTarget struct {
	f tlsFiles
	// tp serves the server certificate only; certTP requires a client
	// certificate (tlsFiles.serverConfig with clientCA).
	tp, certTP *testProxy
	// otherCA is the CA file of another authority, which did not sign the
	// proxy's certificate.
	otherCA string
	// home is an empty directory, the driver process's HOME (and pgjdbc's
	// user.home): asyncpg and pgjdbc find no ~/.postgresql root.crt or
	// postgresql.crt of the machine there. (libpq takes the home directory
	// from the password database: tls_check.py names absent files instead.)
	home string
}

// startTLSTarget starts the two proxies of a tlsTarget on a fresh database,
// with fresh certificates; it skips the test off Linux (the event loop is
// Linux-only).
func startTLSTarget(t *testing.T) *tlsTarget {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("the event loop is Linux-only")
	}
	f := newTLSFiles(t)
	db := newDatabase(t)
	start := func(clientCA bool) *testProxy {
		return startProxy(t, db, proxyOpts{PoolSize: 2, Opt: proxy.Options{
			TLS: f.clientTLS(t, proxy.TLSRequire, clientCA)}})
	}
	return &tlsTarget{f: f, tp: start(false), certTP: start(true),
		otherCA: filepath.Join(newTLSFiles(t).dir, "ca.crt"), home: t.TempDir()}
}

// args are the scripts' arguments: HOST PORT CERT_PORT DB DIR OTHER_CA.
func (g *tlsTarget) args() []string {
	host, port, _ := strings.Cut(g.tp.addr, ":")
	_, certPort, _ := strings.Cut(g.certTP.addr, ":")
	return []string{host, port, certPort, g.tp.db, g.f.dir, g.otherCA}
}

// env is a driver process's environment: the test's without its PG*
// variables (the scripts give every connection parameter; a PGSSLMODE or
// PGSSLCERT must not change a case), with HOME the empty g.home.
func (g *tlsTarget) env(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") && !strings.HasPrefix(kv, "HOME=") {
			env = append(env, kv)
		}
	}
	return append(append(env, "HOME="+g.home), extra...)
}

// writeClientPK8 writes the client key as PKCS#8 DER to DIR/client.pk8
// (mode 0600), the form in which pgjdbc's sslkey reads a key (pgjdbc 42.5,
// Debian 12's, reads no PEM key).
func (f tlsFiles) writeClientPK8(t *testing.T) {
	t.Helper()
	b, _ := pem.Decode(f.pem.ClientKey)
	if b == nil {
		t.Fatal("client key: no PEM block")
	}
	var key any
	var err error
	switch b.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(b.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(b.Bytes)
	default:
		t.Fatalf("client key: PEM block %q", b.Type)
	}
	if err != nil {
		t.Fatalf("client key: %v", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.dir, "client.pk8"), der, 0o600); err != nil {
		t.Fatal(err)
	}
}

// tlsWant is what a case of a driver script must report.
type tlsWant uint8

const (
	// tlsOK: "ok PROOF", the query answered and the driver says the
	// connection is encrypted (PROOF: the TLS version, or ssl_in_use where
	// the driver tells only that).
	tlsOK tlsWant = iota
	// tlsOK12 is tlsOK with the TLS version capped at 1.2 by the client:
	// "ok TLSv1.2" (or ssl_in_use, from a driver that tells no version).
	tlsOK12
	// tlsRefused: the proxy refused the plaintext login with SQLSTATE 28000
	// and its "without TLS" message. libpq's connection errors carry no
	// SQLSTATE: for the libpq drivers (libpqDrivers) the message tells.
	tlsRefused
	// tlsBadCA: the client rejected the proxy's certificate, which its CA
	// did not sign.
	tlsBadCA
	// tlsNoCert: the proxy refused a TLS client without a certificate,
	// after the handshake, with PostgreSQL's 28000 "connection requires a
	// valid client certificate" (libpq drivers: the message only).
	tlsNoCert
)

// String is how a failed check names the expectation.
func (w tlsWant) String() string {
	switch w {
	case tlsOK:
		return "ok over TLS"
	case tlsOK12:
		return "ok over TLS 1.2"
	case tlsRefused:
		return "refused with 28000 ... without TLS"
	case tlsBadCA:
		return "the proxy's certificate rejected"
	}
	return "refused with 28000 connection requires a valid client certificate"
}

// libpqDrivers are the drivers whose errors come from libpq.
var libpqDrivers = map[string]bool{"psycopg2": true, "sqlalchemy-psycopg2": true, "psycopg3": true}

var (
	tlsOKResult   = regexp.MustCompile(`^ok (TLSv1\.[23]|ssl_in_use)$`)
	tlsOK12Result = regexp.MustCompile(`^ok (TLSv1\.2|ssl_in_use)$`)
	// tlsBadCAMessage is in each driver's message for a server certificate
	// that failed verification (OpenSSL's "certificate verify failed",
	// Java's "PKIX path validation failed", node's "unable to verify the
	// first certificate").
	tlsBadCAMessage = regexp.MustCompile(`(?i)certificate|PKIX`)
)

// match reports whether r, the RESULT a case of driver printed, is w.
func (w tlsWant) match(driver, r string) bool {
	switch w {
	case tlsOK:
		return tlsOKResult.MatchString(r)
	case tlsOK12:
		return tlsOK12Result.MatchString(r)
	case tlsRefused:
		return (strings.HasPrefix(r, "error 28000 ") || libpqDrivers[driver] && strings.HasPrefix(r, "error none ")) &&
			strings.Contains(r, "without TLS")
	case tlsBadCA:
		return strings.HasPrefix(r, "error ") && tlsBadCAMessage.MatchString(r)
	}
	return (strings.HasPrefix(r, "error 28000 ") || libpqDrivers[driver] && strings.HasPrefix(r, "error none ")) &&
		strings.Contains(r, "requires a valid client certificate")
}

// runTLSDriver runs a driver script's command (made with
// exec.CommandContext; WaitDelay is set here), logs its output and returns
// its stdout lines as RESULT by "DRIVER CASE" (stderr is only logged: a
// driver's own logging goes there). A script that fails is a test failure:
// every case prints a line whatever its outcome.
func runTLSDriver(t *testing.T, cmd *exec.Cmd) map[string]string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start).Round(time.Millisecond)
	if err != nil {
		t.Fatalf("%s: %v after %s\nstdout:\n%s\nstderr:\n%s", cmd.Path, err, took, &stdout, lastBytes(stderr.String(), 4000))
	}
	t.Logf("%s (%s):\n%s", filepath.Base(cmd.Path), took, &stdout)
	if stderr.Len() > 0 {
		t.Logf("stderr:\n%s", lastBytes(stderr.String(), 4000))
	}
	got := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		if strings.HasPrefix(l, "#") {
			continue
		}
		if f := strings.SplitN(l, " ", 3); len(f) == 3 {
			got[f[0]+" "+f[1]] = f[2]
		} else {
			t.Errorf("%s: line %q, want DRIVER CASE RESULT", filepath.Base(cmd.Path), l)
		}
	}
	return got
}

// checkTLSCases compares the results of a driver script with want (by
// "DRIVER CASE"); a result for a case want does not list is an error too.
// Then it checks the proxies' counters: each refused case counted once in
// TLSRequired (the nocert ones on g.certTP), each tlsBadCA case (the client
// aborts the handshake) as a failed handshake.
func checkTLSCases(t *testing.T, g *tlsTarget, got map[string]string, want map[string]tlsWant) {
	t.Helper()
	n := map[tlsWant]uint64{}
	for _, k := range slices.Sorted(maps.Keys(want)) {
		w := want[k]
		n[w]++
		driver, _, _ := strings.Cut(k, " ")
		if r, ok := got[k]; !ok {
			t.Errorf("%s: no result, want %s", k, w)
		} else if !w.match(driver, r) {
			t.Errorf("%s: %q, want %s", k, r, w)
		}
	}
	for k, r := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: %q, a case the test does not know", k, r)
		}
	}
	if got := g.tp.srv.Stats().TLSRequired; got != n[tlsRefused] {
		t.Errorf("TLSRequired = %d, want %d (the refused cases)", got, n[tlsRefused])
	}
	// A handshake is counted once the proxy's side of it returned, which may
	// be after the client went on.
	pgtest.EventuallyTrue(t, 5*time.Second, fmt.Sprintf("%d failed handshakes counted (the badca cases)", n[tlsBadCA]), func() bool {
		return g.tp.srv.Stats().TLSFailed >= n[tlsBadCA]
	})
	if got := g.certTP.srv.Stats().TLSRequired; got != n[tlsNoCert] {
		t.Errorf("client-certificate proxy: TLSRequired = %d, want %d (the nocert cases)", got, n[tlsNoCert])
	}
}

// tlsDriverCases are the cases each driver runs (SQLAlchemy only some), and
// what each must give:
// require (TLS without verification), verify-full with the test CA,
// verify-full with another CA (the client must reject the proxy's
// certificate), disable (plaintext, refused by TLSRequire), and against the
// proxy requiring a client certificate: with the client certificate, and
// without one.
var tlsDriverCases = map[string]tlsWant{
	"require": tlsOK, "verify-full": tlsOK, "badca": tlsBadCA, "disable": tlsRefused,
	"cert": tlsOK, "nocert": tlsNoCert,
}

// tlsDriverCases12 are the cases of the drivers whose TLS version the
// script caps at 1.2 (libpq's ssl_max_protocol_version, node's maxVersion):
// verify-full, and no client certificate, which the proxy then rejects
// (refused after the handshake, as with TLS 1.3).
var tlsDriverCases12 = map[string]tlsWant{"tls12": tlsOK12, "nocert-tls12": tlsNoCert}

// addTLSWants adds the cases of driver to want, keyed "DRIVER CASE".
func addTLSWants(want map[string]tlsWant, driver string, cases ...map[string]tlsWant) {
	for _, cs := range cases {
		for c, w := range cs {
			want[driver+" "+c] = w
		}
	}
}

// Python drivers over client TLS, against a proxy requiring TLS: psycopg2,
// SQLAlchemy over psycopg2 and psycopg 3 (libpq: sslmode=require and
// verify-full with sslrootcert) and asyncpg (its DSN's sslmode, and an
// ssl.SSLContext verifying the CA and host name) run a query over a
// connection each driver reports as encrypted; each rejects a proxy
// certificate of another CA; sslmode=disable is refused with 28000; with a
// client CA required, the drivers get in with sslcert/sslkey (asyncpg: the
// context's certificate chain, or the DSN's sslcert/sslkey) and fail
// without. Capped at TLS 1.2 (ssl_max_protocol_version), the same holds.
func TestClientTLSPython(t *testing.T) {
	needPythonImport(t, "python TLS tests", "sqlalchemy, psycopg2, psycopg, asyncpg",
		"python3-sqlalchemy, python3-psycopg2, python3-psycopg, python3-asyncpg")
	g := startTLSTarget(t)
	script, err := filepath.Abs(filepath.Join("testdata", "tls_check.py"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), tlsDriverTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, pythonBin, append([]string{script}, g.args()...)...)
	cmd.Env = g.env("PYTHONDONTWRITEBYTECODE=1")
	got := runTLSDriver(t, cmd)
	want := map[string]tlsWant{}
	addTLSWants(want, "psycopg2", tlsDriverCases, tlsDriverCases12)
	addTLSWants(want, "psycopg3", tlsDriverCases, tlsDriverCases12)
	addTLSWants(want, "sqlalchemy-psycopg2", map[string]tlsWant{
		"require": tlsOK, "verify-full": tlsOK, "disable": tlsRefused, "cert": tlsOK})
	addTLSWants(want, "asyncpg", tlsDriverCases, map[string]tlsWant{
		"verify-full-context": tlsOK, "tls12": tlsOK12, "cert-dsn": tlsOK})
	checkTLSCases(t, g, got, want)
}

// pgjdbc over client TLS: ssl=true with sslmode=require, and with
// sslmode=verify-full and sslrootcert (the host name 127.0.0.1 checked
// against the certificate's IP SAN), run a query over an SSLSocket; a proxy
// certificate of another CA is rejected; sslmode=disable is refused with
// 28000; with a client CA required, sslcert with the key as PKCS#8 DER
// (client.pk8) gets in and no certificate fails.
func TestClientTLSJDBC(t *testing.T) {
	java := needJava(t)
	g := startTLSTarget(t)
	g.f.writeClientPK8(t)
	src, err := filepath.Abs(filepath.Join("testdata", "TLSCheck.java"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), tlsDriverTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, java, append([]string{"-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
		"-Duser.home=" + g.home, "-cp", jdbcJar, src}, g.args()...)...)
	cmd.Env = g.env()
	got := runTLSDriver(t, cmd)
	want := map[string]tlsWant{}
	addTLSWants(want, "jdbc", tlsDriverCases)
	checkTLSCases(t, g, got, want)
}

// node-postgres over client TLS: ssl {rejectUnauthorized: false} (require)
// and {ca, rejectUnauthorized: true} (verify-full: node checks 127.0.0.1
// against the certificate's IP SAN) run a query over an encrypted
// TLSSocket; a proxy certificate of another CA is rejected; ssl: false is
// refused with 28000; with a client CA required, {cert, key} gets in and no
// certificate fails. Capped at TLS 1.2 (maxVersion), the same holds.
func TestClientTLSNode(t *testing.T) {
	node, dir := needNode(t)
	g := startTLSTarget(t)
	ctx, cancel := context.WithTimeout(context.Background(), tlsDriverTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, append([]string{filepath.Join(dir, "tls.js")}, g.args()...)...)
	cmd.Dir = dir
	cmd.Env = g.env()
	got := runTLSDriver(t, cmd)
	want := map[string]tlsWant{}
	addTLSWants(want, "node", tlsDriverCases, tlsDriverCases12)
	checkTLSCases(t, g, got, want)
}
