package testcert_test

import (
	"crypto/tls"
	"net"
	"testing"

	"github.com/pgsidecar/pgsidecar/internal/testcert"
)

// Both versions handshake over loopback with the configurations, and the
// client verifies the server for 127.0.0.1.
func TestConfigsHandshake(t *testing.T) {
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		scfg, ccfg, err := testcert.Configs(v)
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				done <- err
				return
			}
			defer c.Close()
			done <- tls.Server(c, scfg).Handshake()
		}()
		c, err := tls.Dial("tcp", ln.Addr().String(), ccfg)
		if err != nil {
			t.Fatalf("version %x: %v", v, err)
		}
		if got := c.ConnectionState().Version; got != v {
			t.Fatalf("version %x, want %x", got, v)
		}
		c.Close()
		if err := <-done; err != nil {
			t.Fatalf("server handshake: %v", err)
		}
		ln.Close()
	}
}
