package auth

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// This file holds an independent SCRAM-SHA-256 client and PBKDF2 for the tests:
// nothing here calls the package's own derivation code.

// testPBKDF2 is PBKDF2-HMAC-SHA-256 with a 32-byte output (one block), written
// from RFC 8018 independently of crypto/pbkdf2.
func testPBKDF2(password string, salt []byte, iter int) []byte {
	mac := hmac.New(sha256.New, []byte(password))
	mac.Write(salt)
	mac.Write([]byte{0, 0, 0, 1})
	u := mac.Sum(nil)
	out := append([]byte(nil), u...)
	for i := 1; i < iter; i++ {
		mac.Reset()
		mac.Write(u)
		u = mac.Sum(u[:0])
		for j := range out {
			out[j] ^= u[j]
		}
	}
	return out
}

func testHMAC(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

// testKeys returns ClientKey, StoredKey and ServerKey of a password.
func testKeys(password string, salt []byte, iter int) (clientKey, storedKey, serverKey []byte) {
	salted := testPBKDF2(password, salt, iter)
	clientKey = testHMAC(salted, "Client Key")
	sum := sha256.Sum256(clientKey)
	return clientKey, sum[:], testHMAC(salted, "Server Key")
}

// testVerifier returns the pg_authid-format SCRAM-SHA-256 verifier of password.
func testVerifier(password string, salt []byte, iter int) string {
	_, stored, server := testKeys(password, salt, iter)
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", iter, b64(salt), b64(stored), b64(server))
}

// testMD5Secret returns the pg_authid-format MD5 hash of password for user.
func testMD5Secret(user, password string) string {
	sum := md5.Sum([]byte(password + user))
	return "md5" + hex.EncodeToString(sum[:])
}

// testMD5Response returns the PasswordMessage body answering an MD5 challenge.
func testMD5Response(user, password string, salt []byte) []byte {
	inner := md5.Sum([]byte(password + user))
	outer := md5.Sum(append([]byte(hex.EncodeToString(inner[:])), salt...))
	return []byte("md5" + hex.EncodeToString(outer[:]) + "\x00")
}

// parseServerFirst splits a server-first-message into nonce, salt, iterations.
func parseServerFirst(t testing.TB, sf string) (nonce string, salt []byte, iter int) {
	t.Helper()
	parts := strings.Split(sf, ",")
	if len(parts) != 3 || !strings.HasPrefix(parts[0], "r=") || !strings.HasPrefix(parts[1], "s=") || !strings.HasPrefix(parts[2], "i=") {
		t.Fatalf("malformed server-first-message %q", sf)
	}
	salt, err := base64.StdEncoding.DecodeString(parts[1][2:])
	if err != nil {
		t.Fatalf("server-first salt: %v", err)
	}
	iter, err = strconv.Atoi(parts[2][2:])
	if err != nil {
		t.Fatalf("server-first iterations: %v", err)
	}
	return parts[0][2:], salt, iter
}

// testClientFinal computes, for password, the client-final-message that
// follows client-first-message-bare bare and server-first-message sf, with
// withoutProof as the client-final-message-without-proof, and the
// server-final-message the server must answer.
func testClientFinal(t testing.TB, password, bare, sf, withoutProof string) (final, serverFinal string) {
	t.Helper()
	_, salt, iter := parseServerFirst(t, sf)
	clientKey, storedKey, serverKey := testKeys(password, salt, iter)
	authMsg := bare + "," + sf + "," + withoutProof
	sig := testHMAC(storedKey, authMsg)
	proof := make([]byte, len(sig))
	for i := range sig {
		proof[i] = clientKey[i] ^ sig[i]
	}
	b64 := base64.StdEncoding.EncodeToString
	return withoutProof + ",p=" + b64(proof), "v=" + b64(testHMAC(serverKey, authMsg))
}

// saslInitial builds a SASLInitialResponse body carrying data.
func saslInitial(mech string, data string) []byte {
	b := append([]byte(mech), 0)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// saslInitialLen builds a SASLInitialResponse body with an arbitrary length
// field.
func saslInitialLen(mech string, n int32, data string) []byte {
	b := append([]byte(mech), 0)
	b = binary.BigEndian.AppendUint32(b, uint32(n))
	return append(b, data...)
}

// parseAuthMsg checks that msg is one complete 'R' message and returns its
// code and data.
func parseAuthMsg(t testing.TB, msg []byte) (uint32, string) {
	t.Helper()
	if len(msg) < 9 || msg[0] != 'R' {
		t.Fatalf("not an authentication message: %q", msg)
	}
	if n := binary.BigEndian.Uint32(msg[1:]); int(n) != len(msg)-1 {
		t.Fatalf("length field %d, message is %d bytes", n, len(msg))
	}
	return binary.BigEndian.Uint32(msg[5:]), string(msg[9:])
}

// zeroReader is a random source of zero bytes: the server nonce becomes
// "AAAAAAAAAAAAAAAAAAAAAAAA" and the MD5 salt zero.
type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// zeroNonce is the server nonce of an exchange reading zeroReader.
const zeroNonce = "AAAAAAAAAAAAAAAAAAAAAAAA"

// errReader is a failing random source.
type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// wantProtocolError checks that err is a *ProtocolError with msg and, when
// detail is not "*", detail.
func wantProtocolError(t testing.TB, err error, msg, detail string) {
	t.Helper()
	var pe *ProtocolError
	if !errors.As(err, &pe) {
		t.Fatalf("error %v (%T), want *ProtocolError %q", err, err, msg)
	}
	if pe.Message != msg || (detail != "*" && pe.Detail != detail) {
		t.Fatalf("ProtocolError{%q, %q}, want {%q, %q}", pe.Message, pe.Detail, msg, detail)
	}
}
