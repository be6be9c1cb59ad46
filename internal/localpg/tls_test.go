package localpg_test

import (
	"context"
	"crypto/x509"
	"os"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/localpg"
)

// TestClusterTLS: with Options.TLS the server speaks TLS with a certificate
// that verifies against CACertPEM for 127.0.0.1 (sslmode=verify-full), its
// key is private to the server user, plain connections still work, and
// without the option nothing of it exists.
func TestClusterTLS(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	c := startCluster(t, localpg.Options{TLS: true})
	if len(c.CACertPEM) == 0 || c.CAFile == "" {
		t.Fatalf("CACertPEM %d bytes, CAFile %q", len(c.CACertPEM), c.CAFile)
	}
	if b, err := os.ReadFile(c.CAFile); err != nil || string(b) != string(c.CACertPEM) {
		t.Fatalf("CAFile: %v (same as CACertPEM: %v)", err, string(b) == string(c.CACertPEM))
	}
	for _, mode := range []string{"require", "verify-full"} {
		if got := queryOne(t, ctx, c.URLSSL("postgres", mode), "select ssl::text from pg_stat_ssl where pid = pg_backend_pid()"); got != "true" {
			t.Fatalf("sslmode=%s: pg_stat_ssl.ssl = %s", mode, got)
		}
	}
	// The CA in memory verifies it too (what a test building its tls.Config does).
	cfg, err := pgconn.ParseConfig(c.URLSSL("postgres", "verify-full"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(c.CACertPEM) {
		t.Fatal("CACertPEM holds no certificate")
	}
	cfg.TLSConfig.RootCAs = pool
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("verify-full with CACertPEM: %v", err)
	}
	conn.Close(ctx)
	if got := queryOne(t, ctx, c.URL("postgres"), "select ssl::text from pg_stat_ssl where pid = pg_backend_pid()"); got != "false" {
		t.Fatalf("sslmode=disable: pg_stat_ssl.ssl = %s", got)
	}
	if got := queryOne(t, ctx, c.URL("postgres"), "show ssl"); got != "on" {
		t.Fatalf("ssl = %s, want on", got)
	}
	key := queryOne(t, ctx, c.URL("postgres"), "show ssl_key_file")
	fi, err := os.Stat(key)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", fi.Mode().Perm())
	}

	plain := startCluster(t, localpg.Options{})
	if plain.CACertPEM != nil || plain.CAFile != "" {
		t.Fatal("a cluster without TLS has a CA")
	}
	if got := queryOne(t, ctx, plain.URL("postgres"), "show ssl"); got != "off" {
		t.Fatalf("ssl = %s without Options.TLS", got)
	}
}
