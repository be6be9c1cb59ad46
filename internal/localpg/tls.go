package localpg

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/pgsidecar/pgsidecar/internal/testcert"
)

// tlsDirName is the directory under Cluster.Dir holding the certificates.
const tlsDirName = "tls"

// makeTLS creates a throwaway certificate authority and a server
// certificate it signs (ECDSA P-256, valid for 127.0.0.1 and localhost, so
// that sslmode=verify-full works) in Dir/tls, and sets the server's ssl
// settings to use them. The key is mode 0600 and belongs to the server
// user: PostgreSQL refuses a key others can read.
func (c *Cluster) makeTLS() error {
	dir := filepath.Join(c.Dir, tlsDirName)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("localpg: tls: %w", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return fmt.Errorf("localpg: tls: %w", err)
	}
	p, err := testcert.New()
	if err != nil {
		return fmt.Errorf("localpg: tls: %w", err)
	}
	caPEM, certPEM, keyPEM := p.CA, p.Cert, p.Key
	caFile := filepath.Join(dir, "ca.crt")
	certFile := filepath.Join(dir, "server.crt")
	keyFile := filepath.Join(dir, "server.key")
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{{caFile, caPEM, 0o644}, {certFile, certPEM, 0o644}, {keyFile, keyPEM, 0o600}} {
		// Removed first: a key left by an earlier run may belong to
		// another user, and WriteFile keeps an existing file's mode.
		if err := os.Remove(f.path); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("localpg: tls: %w", err)
		}
		if err := os.WriteFile(f.path, f.data, f.mode); err != nil {
			return fmt.Errorf("localpg: tls: %w", err)
		}
		if err := c.runAs.chown(f.path); err != nil {
			return err
		}
	}
	c.CACertPEM, c.CAFile = caPEM, caFile
	c.settings["ssl"] = "on"
	c.settings["ssl_cert_file"] = certFile
	c.settings["ssl_key_file"] = keyFile
	return nil
}
