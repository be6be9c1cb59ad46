package auth

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

// loginWithSCRAM runs a client's successful SCRAM exchange for password
// against sec and returns the exchange.
func loginWithSCRAM(t *testing.T, sec Secret, password string) *Exchange {
	t.Helper()
	x := NewExchange(SCRAMSHA256, testUser, sec, true, nil, nil)
	const bare = "n=,r=clientnonce"
	_, done, err := scramRun(t, x, saslInitial("SCRAM-SHA-256", "n,,"+bare), func(sf string) string {
		final, _ := testClientFinal(t, password, bare, sf, "c=biws,r="+strings.TrimPrefix(strings.Split(sf, ",")[0], "r="))
		return final
	})
	if err != nil || !done {
		t.Fatalf("client SCRAM login: done=%v err=%v", done, err)
	}
	return x
}

// A client's SCRAM login against a verifier PostgreSQL made yields a
// ServerLogin whose SCRAMClient passes PostgreSQL's own check (played here by
// a second Exchange over the same verifier: another nonce, another
// AuthMessage) and verifies the server's signature; the salt of another
// verifier, a wrong server signature and a derived verifier (PlainSecret,
// whose salt the server does not have) are refused; MD5 needs only the hash.
func TestServerLoginSCRAM(t *testing.T) {
	x := loginWithSCRAM(t, testSecret(t), testPassword)
	l, ok := x.ServerLogin()
	if !ok || !l.CanSCRAM() || l.CanMD5() {
		t.Fatalf("ServerLogin after SCRAM: ok=%v scram=%v md5=%v, want true, true, false", ok, l.CanSCRAM(), l.CanMD5())
	}
	for _, s := range []string{fmt.Sprint(l), fmt.Sprintf("%#v", l), fmt.Sprintf("%x", l)} {
		if s != "auth.ServerLogin(redacted)" {
			t.Errorf("a ServerLogin printed as %q", s)
		}
	}

	server := NewExchange(SCRAMSHA256, testUser, testSecret(t), true, nil, nil)
	c, err := l.NewSCRAMClient(nil)
	if err != nil {
		t.Fatal(err)
	}
	out, done, err := server.Next(c.First())
	if err != nil || done {
		t.Fatalf("server on client-first: done=%v err=%v", done, err)
	}
	_, sf := parseAuthMsg(t, out)
	final, err := c.Final([]byte(sf))
	if err != nil {
		t.Fatalf("Final: %v", err)
	}
	out, done, err = server.Next(final)
	if err != nil || !done {
		t.Fatalf("the server refused the proof made from the ClientKey: done=%v err=%v", done, err)
	}
	_, sfin := parseAuthMsg(t, out)
	if err := c.Verify([]byte(sfin)); err != nil {
		t.Fatalf("Verify of the right server signature: %v", err)
	}
	if err := c.Verify([]byte("v=" + strings.Repeat("A", 43) + "=")); err == nil {
		t.Error("Verify accepted a wrong server signature")
	}
	if err := c.Verify([]byte("e=invalid-proof")); err == nil || !strings.Contains(err.Error(), "invalid-proof") {
		t.Errorf("Verify of e=: %v", err)
	}

	// The role's password changed: the server's salt is not the verifier's.
	other, err := ParseSecret(testUser, testVerifier("new password", []byte("another salt 123"), testIter))
	if err != nil {
		t.Fatal(err)
	}
	server = NewExchange(SCRAMSHA256, testUser, other, true, nil, nil)
	c, _ = l.NewSCRAMClient(nil)
	out, _, _ = server.Next(c.First())
	_, sf = parseAuthMsg(t, out)
	if _, err := c.Final([]byte(sf)); err == nil || !strings.Contains(err.Error(), "password changed") {
		t.Errorf("Final against another salt: %v, want the password-changed error", err)
	}
	if _, err := c.Final([]byte("r=elsewhere,s=" + "c2FsdA==" + ",i=4096")); err == nil {
		t.Error("Final accepted a nonce that does not extend the client's")
	}

	// A derived verifier gives no key; its MD5 hash still logs in with MD5.
	x = loginWithSCRAM(t, PlainSecret(testUser, testPassword), testPassword)
	l, ok = x.ServerLogin()
	if !ok || l.CanSCRAM() || !l.CanMD5() {
		t.Fatalf("ServerLogin after SCRAM with a PlainSecret: ok=%v scram=%v md5=%v, want true, false, true", ok, l.CanSCRAM(), l.CanMD5())
	}
	if _, err := l.NewSCRAMClient(nil); err == nil {
		t.Error("NewSCRAMClient without a key succeeded")
	}
	salt := [4]byte{1, 2, 3, 4}
	resp, err := l.MD5Response(salt)
	if err != nil || !bytes.Equal(resp, testMD5Response(testUser, testPassword, salt[:])) {
		t.Errorf("MD5Response = %q, %v; want %q", resp, err, testMD5Response(testUser, testPassword, salt[:]))
	}
}

// An exchange that failed, or has not finished, gives no ServerLogin; an MD5
// exchange gives the hash.
func TestServerLoginStates(t *testing.T) {
	x := NewExchange(SCRAMSHA256, testUser, testSecret(t), true, nil, nil)
	if _, ok := x.ServerLogin(); ok {
		t.Error("ServerLogin before the exchange ran")
	}
	const bare = "n=,r=clientnonce"
	_, _, err := scramRun(t, x, saslInitial("SCRAM-SHA-256", "n,,"+bare), func(sf string) string {
		final, _ := testClientFinal(t, "wrong", bare, sf, "c=biws,r="+strings.TrimPrefix(strings.Split(sf, ",")[0], "r="))
		return final
	})
	if err == nil {
		t.Fatal("a wrong password succeeded")
	}
	if _, ok := x.ServerLogin(); ok {
		t.Error("ServerLogin after a failed exchange")
	}

	sec, err := ParseSecret(testUser, testMD5Secret(testUser, testPassword))
	if err != nil {
		t.Fatal(err)
	}
	x = NewExchange(MD5, testUser, sec, true, nil, zeroReader{})
	if _, done, err := x.Next(testMD5Response(testUser, testPassword, make([]byte, 4))); err != nil || !done {
		t.Fatalf("MD5 login: done=%v err=%v", done, err)
	}
	l, ok := x.ServerLogin()
	if !ok || !l.CanMD5() || l.CanSCRAM() {
		t.Fatalf("ServerLogin after MD5: ok=%v md5=%v scram=%v", ok, l.CanMD5(), l.CanSCRAM())
	}
}
