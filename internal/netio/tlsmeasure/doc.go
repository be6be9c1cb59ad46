// Package tlsmeasure is a measurement, not production code. It is kept for the
// design decision in docs/design.md section 16 ("TLS"): once the plaintext path
// runs on an edge-triggered epoll loop, should a TLS connection be driven
//
//	(a) off the loop, by a goroutine per direction doing blocking tls.Conn
//	    Read and Write (today's model), or
//	(b) on the loop, by crypto/tls over an in-memory transport: a net.Conn whose
//	    Read returns the bytes the loop read from the socket and, when it has
//	    none, a temporary timeout net.Error ("would block"), and whose Write
//	    appends to a buffer the loop then writes to the socket?
//
// Everything is in the test files. The quick run (go test) checks the in-memory
// transport and the relays for correctness: bytes intact across partial TLS
// records, a would-block Read followed by more data, a Write larger than the
// socket buffer finished through EPOLLOUT, and which transport errors crypto/tls
// makes permanent. The numbers come from the benchmarks (BenchmarkRelay,
// BenchmarkHandshake) and from TestMeasure, which runs only with
// PGSIDECAR_TLS_MEASURE=1 and without the race detector:
//
//	PGSIDECAR_TLS_MEASURE=1 go test -run TestMeasure -v -count=1 ./internal/netio/tlsmeasure/
//	go test -run '^$' -bench Relay -benchmem -benchtime 20000x ./internal/netio/tlsmeasure/
//	go test -run '^$' -bench Handshake -benchmem -benchtime 300x ./internal/netio/tlsmeasure/
//
// (PGSIDECAR_TLS_MEASURE_ROUNDS sets TestMeasure's rounds, 5 by default; on a
// shared or virtual host, read the minimum over rounds, not one run.)
//
// The relay runs in the test process; the load-generating clients and the
// upstream server run in a child process (the test binary re-executed), so that
// getrusage(RUSAGE_SELF) and the allocation counts are the relay's alone.
//
// It imports only the standard library and golang.org/x/sys/unix.
package tlsmeasure
