// Package testcert makes throwaway TLS certificates for tests and the local
// PostgreSQL of internal/localpg: a certificate authority and a server
// certificate it signs (ECDSA P-256, for 127.0.0.1, ::1 and localhost, so
// that sslmode=verify-full works), and the crypto/tls configurations of
// both ends.
//
// It imports the standard library only, and nothing imports it but tests
// and internal/localpg: no production path runs with its certificates.
package testcert
