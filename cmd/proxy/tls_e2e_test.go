package main

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/localpg"
	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/testcert"
)

// The binary with --client-tls require and its certificate in a Secret-like
// mounted directory: verify-full clients get in and plaintext ones get 28000
// (counted in client_errors_total{reason="tls_required"}); when the Secret
// is rotated, the next handshake uses the new certificate while a session
// opened before goes on; a rotation to a broken key is rejected, the
// certificate in force stays, and the key's bytes reach no output.
func TestClientTLSBinary(t *testing.T) {
	cl := pgtest.Start(t, localpg.Options{})
	a, err := testcert.New()
	if err != nil {
		t.Fatal(err)
	}
	b, err := testcert.New()
	if err != nil {
		t.Fatal(err)
	}
	cas := t.TempDir()
	for name, data := range map[string][]byte{"a.crt": a.CA, "b.crt": b.CA} {
		if err := os.WriteFile(filepath.Join(cas, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	secret := newMountedDir(t, map[string]string{"tls.crt": string(a.Cert), "tls.key": string(a.Key)})
	listen, httpAddr := pgtest.FreeAddr(t), pgtest.FreeAddr(t)
	p := startProxy(t, nil, "--listen", listen, "--http-listen", httpAddr, "--log-format", "json",
		"--upstream", cl.URL("postgres"), "--client-tls", "require",
		"--tls-cert", secret.path("tls.crt"), "--tls-key", secret.path("tls.key"))
	p.waitFor(t, `"msg":"pgsidecar listening"`, 1, 30*time.Second)

	url := func(ca string) string {
		return "postgres://postgres@" + listen + "/postgres?sslmode=verify-full&sslrootcert=" + filepath.Join(cas, ca)
	}
	try := func(ca string) error {
		c, err := pgtest.TryConnect(t, url(ca), pgx.QueryExecModeExec, nil)
		if err != nil {
			return err
		}
		defer c.Close(context.Background())
		return pgtest.SelectInt(c, 1)
	}
	if err := try("a.crt"); err != nil {
		t.Fatalf("verify-full with the first certificate: %v", err)
	}
	_, err = pgtest.TryConnect(t, "postgres://postgres@"+listen+"/postgres?sslmode=disable", 0, nil)
	if pgtest.SQLState(err) != "28000" {
		t.Fatalf("plaintext under --client-tls require: %v, want 28000", err)
	}
	before := pgtest.Connect(t, url("a.crt"), 0, nil)

	secret.update(map[string]string{"tls.crt": string(b.Cert), "tls.key": string(b.Key)})
	pgtest.Eventually(t, 10*time.Second, "the rotated certificate is served", func() error { return try("b.crt") })
	if err := try("a.crt"); err == nil {
		t.Error("after the rotation a client that trusts only the old CA got in")
	}
	if err := pgtest.SelectInt(before, 2); err != nil {
		t.Errorf("session opened before the rotation: %v", err)
	}

	// A broken key: rejected, the certificate in force stays.
	broken := strings.Replace(string(a.Key), "PRIVATE KEY-----\n", "PRIVATE KEY-----\nAAAA", 1)
	secret.update(map[string]string{"tls.crt": string(a.Cert), "tls.key": broken})
	p.waitFor(t, `"msg":"configuration reload rejected`, 1, 10*time.Second)
	if err := try("b.crt"); err != nil {
		t.Errorf("after a rejected rotation: %v, want the certificate in force", err)
	}

	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(metrics), `pgsidecar_client_errors_total{reason="tls_required"} 1`) {
		t.Errorf("/metrics: no tls_required count of 1")
	}
	for _, k := range []string{string(a.Key), string(b.Key), broken} {
		line := strings.Split(k, "\n")[1] // the key's first base64 line
		if strings.Contains(p.output(), line[:16]) || strings.Contains(string(metrics), line[:16]) {
			t.Errorf("a private key's bytes reached the log or /metrics")
		}
	}
}
