package testcert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// PEM is a certificate authority, a server certificate it signs with the
// server's private key, and a client certificate it signs (common name
// "postgres", for TLS client authentication) with the client's key,
// PEM-encoded.
type PEM struct {
	CA, Cert, Key         []byte
	ClientCert, ClientKey []byte
}

// New returns a fresh authority, and a server and a client certificate it
// signs, valid for ten years from an hour ago.
func New() (PEM, error) {
	now := time.Now()
	template := func(serial int64, cn string) *x509.Certificate {
		return &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(10 * 365 * 24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
		}
	}
	ca := template(1, "pgsidecar test CA")
	ca.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	ca.BasicConstraintsValid, ca.IsCA = true, true
	caIss, err := issue(ca, nil)
	if err != nil {
		return PEM{}, err
	}
	server := template(2, "localhost")
	server.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	server.DNSNames = []string{"localhost"}
	server.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	serverIss, err := issue(server, caIss)
	if err != nil {
		return PEM{}, err
	}
	client := template(3, "postgres")
	client.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	clientIss, err := issue(client, caIss)
	if err != nil {
		return PEM{}, err
	}
	return PEM{CA: caIss.certPEM, Cert: serverIss.certPEM, Key: serverIss.keyPEM,
		ClientCert: clientIss.certPEM, ClientKey: clientIss.keyPEM}, nil
}

// issued is a certificate made by issue, with its key.
type issued struct {
	cert            *x509.Certificate
	key             *ecdsa.PrivateKey
	certPEM, keyPEM []byte
}

// issue makes a P-256 key and the certificate of tmpl for it, signed by
// parent (self-signed when parent is nil).
func issue(tmpl *x509.Certificate, parent *issued) (*issued, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	signer, signerKey := tmpl, key
	if parent != nil {
		signer, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &issued{cert: cert, key: key,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})}, nil
}

// WriteFiles writes the PEM files into dir as ca.crt, server.crt,
// server.key, client.crt and client.key (the keys mode 0600, as libpq
// wants), and returns dir.
func (p PEM) WriteFiles(dir string) (string, error) {
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{"ca.crt", p.CA, 0o644}, {"server.crt", p.Cert, 0o644}, {"server.key", p.Key, 0o600},
		{"client.crt", p.ClientCert, 0o644}, {"client.key", p.ClientKey, 0o600},
	} {
		if err := os.WriteFile(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return "", err
		}
	}
	return dir, nil
}

// Configs returns the configurations of a TLS server with a fresh
// certificate and of a client that trusts it for 127.0.0.1, the client's
// limited to TLS version v (tls.VersionTLS12, tls.VersionTLS13). (No
// testing.TB: internal/localpg, which `proxy dev` links, imports this
// package.)
func Configs(v uint16) (server, client *tls.Config, err error) {
	p, err := New()
	if err != nil {
		return nil, nil, err
	}
	cert, err := tls.X509KeyPair(p.Cert, p.Key)
	if err != nil {
		return nil, nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(p.CA) {
		return nil, nil, fmt.Errorf("testcert: no certificate in the CA's PEM")
	}
	server = &tls.Config{Certificates: []tls.Certificate{cert}}
	client = &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: v, MaxVersion: v}
	return server, client, nil
}
