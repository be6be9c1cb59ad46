package tlsmeasure

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"sync"
	"time"
)

// The shape of one round trip: a PostgreSQL simple-protocol select is a ~60-byte
// Query message one way and ~200 bytes (RowDescription, DataRow, CommandComplete,
// ReadyForQuery) the other way.
const (
	reqSize     = 60
	respSize    = 200
	bigRespSize = 100 << 10 // a large result, to see what tls.Conn keeps after one

	reqSmall = 'Q'
	reqBig   = 'L'
)

// ver is what the relay speaks to the upstream server.
type ver int

const (
	plain ver = iota
	tls13
	tls12
)

func (v ver) String() string {
	switch v {
	case tls13:
		return "tls13"
	case tls12:
		return "tls12"
	}
	return "plain"
}

// certPair is a self-signed ECDSA P-256 certificate for "localhost" and 127.0.0.1.
type certPair struct {
	certDER, keyDER []byte
	tlsCert         tls.Certificate
	pool            *x509.CertPool
}

func newCert() (*certPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "localhost"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	certDER, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return loadCert(certDER, keyDER)
}

func loadCert(certDER, keyDER []byte) (*certPair, error) {
	key, err := x509.ParsePKCS8PrivateKey(keyDER)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &certPair{
		certDER: certDER,
		keyDER:  keyDER,
		tlsCert: tls.Certificate{Certificate: [][]byte{certDER}, PrivateKey: key, Leaf: cert},
		pool:    pool,
	}, nil
}

// serverConfig accepts TLS 1.2 and 1.3; the client's config picks the version.
func (c *certPair) serverConfig() *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{c.tlsCert}, MinVersion: tls.VersionTLS12}
}

// clientConfig verifies the certificate (no session cache: every handshake is full).
// TLS 1.2 is pinned to ECDHE-ECDSA-AES128-GCM-SHA256; TLS 1.3 uses Go's defaults
// (AES-128-GCM on a CPU with AES-NI).
func (c *certPair) clientConfig(v ver) *tls.Config {
	cfg := &tls.Config{RootCAs: c.pool, ServerName: "localhost"}
	switch v {
	case tls13:
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS13, tls.VersionTLS13
	case tls12:
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
		cfg.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}
	}
	return cfg
}

// server accepts connections and runs handle on each in its own goroutine.
type server struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func startServer(handle func(net.Conn)) (*server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &server{ln: ln, conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[c] = struct{}{}
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				handle(c)
				c.Close()
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
			}()
		}
	}()
	return s, nil
}

func (s *server) addr() string { return s.ln.Addr().String() }

func (s *server) close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// serveRR is the upstream server: for each 60-byte request it answers 200 bytes
// (or bigRespSize for a reqBig request) that start with the request itself.
// cfg nil: plaintext.
func serveRR(cfg *tls.Config) func(net.Conn) {
	return func(c net.Conn) {
		var rw io.ReadWriter = c
		if cfg != nil {
			rw = tls.Server(c, cfg)
		}
		req := make([]byte, reqSize)
		small := filler(respSize)
		var large []byte
		for {
			if _, err := io.ReadFull(rw, req); err != nil {
				return
			}
			resp := small
			if req[0] == reqBig {
				if large == nil {
					large = filler(bigRespSize)
				}
				resp = large
			}
			copy(resp, req)
			if _, err := rw.Write(resp); err != nil {
				return
			}
		}
	}
}

// expected is the answer after its echoed request (read-only).
var expected = filler(bigRespSize)

func filler(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + i%26)
	}
	return b
}

// clients are the load generator: k plaintext connections to the relay, each
// doing blocking round trips.
type clients struct {
	conns []*client
}

type client struct {
	c    net.Conn
	req  []byte
	resp []byte
	seq  uint64
}

func dialClients(addr string, k int) (*clients, error) {
	cl := &clients{}
	for range k {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			cl.close()
			return nil, err
		}
		cl.conns = append(cl.conns, &client{c: c, req: make([]byte, reqSize), resp: make([]byte, respSize)})
	}
	return cl, nil
}

func (cl *clients) close() {
	for _, c := range cl.conns {
		c.c.Close()
	}
	cl.conns = nil
}

// run does n round trips in all, spread over the connections, all connections at
// once; big asks for bigRespSize answers.
func (cl *clients) run(n int, big bool) error {
	k := len(cl.conns)
	if k == 0 {
		return errors.New("no clients")
	}
	var wg sync.WaitGroup
	errs := make([]error, k)
	for i, c := range cl.conns {
		m := n / k
		if i < n%k {
			m++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range m {
				if err := c.roundTrip(big); err != nil {
					errs[i] = err
					return
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (c *client) roundTrip(big bool) error {
	c.seq++
	c.req[0] = reqSmall
	want := respSize
	if big {
		c.req[0] = reqBig
		want = bigRespSize
	}
	binary.LittleEndian.PutUint64(c.req[1:], c.seq)
	for i := 9; i < reqSize; i++ {
		c.req[i] = byte(c.seq) + byte(i)
	}
	if len(c.resp) < want {
		c.resp = make([]byte, want)
	}
	if _, err := c.c.Write(c.req); err != nil {
		return err
	}
	resp := c.resp[:want]
	if _, err := io.ReadFull(c.c, resp); err != nil {
		return err
	}
	if !bytes.Equal(resp[:reqSize], c.req) || !bytes.Equal(resp[reqSize:], expected[reqSize:want]) {
		return fmt.Errorf("round trip %d: answer corrupted", c.seq)
	}
	return nil
}
