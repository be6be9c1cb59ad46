package auth

import (
	"bytes"
	"crypto/md5"
	"crypto/subtle"
	"encoding/hex"
)

// md5Response handles the PasswordMessage answering AuthenticationMD5Password,
// as PostgreSQL's recv_password_packet and md5_crypt_verify: the body is a C
// string "md5" + hex(md5(hex(md5(password+user)) + salt)), compared in constant
// time with the one computed from the stored hash.
func (x *Exchange) md5Response(body []byte) error {
	// The packet length must agree with the length of the string it holds.
	if len(body) == 0 || bytes.IndexByte(body, 0) != len(body)-1 {
		return &ProtocolError{Message: "invalid password packet size"}
	}
	resp := body[:len(body)-1]
	if len(resp) == 0 {
		// PostgreSQL: "empty password returned by client" (28P01).
		return ErrFailed
	}
	want := md5Salted(x.md5Hex, x.md5Salt)
	// Checked even in a doomed exchange, so that it takes as long as a real one.
	if subtle.ConstantTimeCompare(resp, want[:]) != 1 || x.doomed {
		return ErrFailed
	}
	return nil
}

// md5Salted returns "md5" + hex(md5(storedHex + salt)), the expected response
// to an MD5 challenge for a role whose stored hash is "md5" + storedHex.
func md5Salted(storedHex string, salt [4]byte) [md5HashLen]byte {
	h := md5.New()
	h.Write([]byte(storedHex))
	h.Write(salt[:])
	var sum [md5.Size]byte
	h.Sum(sum[:0])
	var out [md5HashLen]byte
	copy(out[:], md5Prefix)
	hex.Encode(out[len(md5Prefix):], sum[:])
	return out
}
