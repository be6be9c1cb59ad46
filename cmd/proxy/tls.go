package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/pgsidecar/pgsidecar/internal/config"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
)

// clientTLS builds the TLS clients get from cfg's --client-tls, --tls-cert,
// --tls-key and --tls-client-ca (their contents read by config.Load): nil
// when clients get none. A certificate or key that does not parse is an
// error, so that a reload with a broken file keeps the certificate in force.
func clientTLS(cfg config.Config) (*proxy.ClientTLS, error) {
	var mode proxy.TLSMode
	switch cfg.ClientTLSMode() {
	case config.ClientTLSDisable:
		return nil, nil
	case config.ClientTLSAllow:
		mode = proxy.TLSAllow
	case config.ClientTLSRequire:
		mode = proxy.TLSRequire
	default:
		return nil, fmt.Errorf("--client-tls: unknown mode %q", cfg.ClientTLS) // config.Validate refuses it first
	}
	cert, err := tls.X509KeyPair([]byte(cfg.TLSCertData), []byte(cfg.TLSKeyData))
	if err != nil {
		// The error names what is wrong, never the key's bytes.
		return nil, fmt.Errorf("--tls-cert %s, --tls-key %s: %w", cfg.TLSCert, cfg.TLSKey, err)
	}
	tc := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
	}
	if cfg.TLSClientCA != "" {
		cas := x509.NewCertPool()
		if !cas.AppendCertsFromPEM([]byte(cfg.TLSClientCAData)) {
			return nil, fmt.Errorf("--tls-client-ca %s: %w", cfg.TLSClientCA, errNoCACerts)
		}
		tc.ClientCAs = cas
		// A missing certificate is refused after the handshake, with
		// PostgreSQL's 28000 (proxy.ClientTLS.ClientCert).
		tc.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return &proxy.ClientTLS{Mode: mode, Config: tc, ClientCert: tc.ClientCAs != nil}, nil
}

// errNoCACerts: a --tls-client-ca file without a PEM certificate.
var errNoCACerts = errors.New("no PEM certificate in the file")
