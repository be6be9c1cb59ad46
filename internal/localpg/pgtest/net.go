package pgtest

import (
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// FreeAddr returns a loopback address, "127.0.0.1:port", on which nothing
// listens: for a process the test starts, or as an upstream that refuses.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// httpClient is bounded: a probe never hangs the test.
var httpClient = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// HTTPGet returns the status code and body of GET http://addr/path within 2
// seconds; code 0 and the error text when the request failed.
func HTTPGet(addr, path string) (int, string) {
	resp, err := httpClient.Get("http://" + addr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
