package auth

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"strconv"
)

// This file is the SCRAM-SHA-256 server of RFC 5802 and RFC 7677, following
// PostgreSQL's src/backend/libpq/auth-scram.c in behaviour and messages.
//
// Deliberate differences from auth-scram.c, all stricter and none affecting a
// conforming client:
//   - an attribute that RFC 5802 defines (a, c, e, i, m, n, p, r, s, v) is not
//     accepted as an extension (after r= in client-first-message, between r=
//     and p= in client-final-message); unknown extensions are ignored, as the
//     RFC requires and PostgreSQL does;
//   - a message may not end with a comma.

// malformed returns the "malformed SCRAM message" ProtocolError with detail.
func malformed(detail string) *ProtocolError {
	return &ProtocolError{Message: "malformed SCRAM message", Detail: detail}
}

// sanitizeChar formats one input byte for an error detail as auth-scram.c's
// sanitize_char: a printable ASCII character quoted ('x'), anything else in hex
// (0x00 standing for the end of the message, as in C).
func sanitizeChar(c byte) string {
	if c >= 0x21 && c <= 0x7e {
		return "'" + string(rune(c)) + "'"
	}
	return fmt.Sprintf("0x%02x", c)
}

// checkSCRAMInput applies the checks PostgreSQL makes on every SCRAM message
// before parsing it: it is not empty and holds no NUL byte.
func checkSCRAMInput(in []byte) error {
	if len(in) == 0 {
		return malformed("The message is empty.")
	}
	if bytes.IndexByte(in, 0) >= 0 {
		return malformed("Message length does not match input length.")
	}
	return nil
}

// scramReader reads attribute-value pairs ("a=value", comma separated) from a
// SCRAM message, as auth-scram.c's read_attr_value and read_any_attr.
type scramReader struct {
	s     string
	pos   int
	comma bool // the last value read ended with a comma
}

// peek returns the next byte, or 0 at the end of the message.
func (r *scramReader) peek() byte {
	if r.pos < len(r.s) {
		return r.s[r.pos]
	}
	return 0
}

// more reports whether another attribute must follow: input is left, or the
// last value ended with a comma.
func (r *scramReader) more() bool { return r.pos < len(r.s) || r.comma }

// value reads the value after "x=", up to the next comma or the end.
func (r *scramReader) value(attr byte) (string, error) {
	if r.peek() != '=' {
		return "", malformed(fmt.Sprintf("Expected character \"=\" for attribute \"%c\".", attr))
	}
	r.pos++
	start := r.pos
	for r.pos < len(r.s) && r.s[r.pos] != ',' {
		r.pos++
	}
	v := r.s[start:r.pos]
	r.comma = r.pos < len(r.s)
	if r.comma {
		r.pos++
	}
	return v, nil
}

// attr reads attribute attr and returns its value.
func (r *scramReader) attr(attr byte) (string, error) {
	if c := r.peek(); c != attr {
		return "", malformed(fmt.Sprintf("Expected attribute \"%c\" but found \"%s\".", attr, sanitizeChar(c)))
	}
	r.pos++
	return r.value(attr)
}

// anyAttr reads any attribute ("ALPHA=value") and returns its name and value.
func (r *scramReader) anyAttr() (byte, string, error) {
	c := r.peek()
	if r.pos >= len(r.s) {
		return 0, "", malformed("Attribute expected, but found end of string.")
	}
	if (c < 'A' || c > 'Z') && (c < 'a' || c > 'z') {
		return 0, "", malformed(fmt.Sprintf("Attribute expected, but found invalid character \"%s\".", sanitizeChar(c)))
	}
	r.pos++
	v, err := r.value(c)
	return c, v, err
}

// isSCRAMAttr reports whether c names an attribute RFC 5802 defines, which
// therefore cannot be an extension.
func isSCRAMAttr(c byte) bool {
	switch c {
	case 'a', 'c', 'e', 'i', 'm', 'n', 'p', 'r', 's', 'v':
		return true
	}
	return false
}

// isSCRAMPrintable reports whether s holds only RFC 5802 "printable"
// characters: 0x21-0x7E except ','.
func isSCRAMPrintable(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c > 0x7e || c == ',' {
			return false
		}
	}
	return true
}

// clientFirst handles client-first-message and returns AuthenticationSASLContinue
// carrying server-first-message.
//
//	client-first-message = gs2-header client-first-message-bare
//	gs2-header = gs2-cbind-flag "," [ authzid ] ","
//	client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
func (x *Exchange) clientFirst(in []byte) ([]byte, error) {
	if err := checkSCRAMInput(in); err != nil {
		return nil, err
	}
	r := &scramReader{s: string(in)}

	// gs2-cbind-flag: 'n' (no channel binding) and 'y' (client supports it
	// but thinks the server does not; right, as SCRAM-SHA-256-PLUS is not
	// offered) are accepted; 'p' asks for channel binding, which is not offered.
	switch c := r.peek(); c {
	case 'n', 'y':
		r.pos++
		if c := r.peek(); c != ',' {
			return nil, malformed(fmt.Sprintf("Comma expected, but found character \"%s\".", sanitizeChar(c)))
		}
		r.pos++
	case 'p':
		return nil, malformed("The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data.")
	default:
		return nil, malformed(fmt.Sprintf("Unexpected channel-binding flag \"%s\".", sanitizeChar(c)))
	}
	if r.peek() == 'a' {
		return nil, &ProtocolError{Message: "client uses authorization identity, but it is not supported"}
	}
	if c := r.peek(); c != ',' {
		return nil, malformed(fmt.Sprintf("Unexpected attribute \"%s\" in client-first-message.", sanitizeChar(c)))
	}
	r.pos++
	gs2Header := r.s[:r.pos]
	bare := r.s[r.pos:]

	if r.peek() == 'm' {
		return nil, &ProtocolError{Message: "client requires an unsupported SCRAM extension"}
	}
	// The user name is ignored: the startup packet's user counts, as in
	// PostgreSQL (libpq sends it empty).
	if _, err := r.attr('n'); err != nil {
		return nil, err
	}
	nonce, err := r.attr('r')
	if err != nil {
		return nil, err
	}
	if !isSCRAMPrintable(nonce) {
		return nil, &ProtocolError{Message: "non-printable characters in SCRAM nonce"}
	}
	for r.more() {
		c, _, err := r.anyAttr()
		if err != nil {
			return nil, err
		}
		if isSCRAMAttr(c) {
			return nil, malformed(fmt.Sprintf("Unexpected attribute \"%s\" in client-first-message.", sanitizeChar(c)))
		}
	}

	x.gs2Header = gs2Header
	x.clientFirstBare = bare
	x.clientNonce = nonce
	x.serverFirst = "r=" + nonce + x.serverNonce + ",s=" + x.ver.salt + ",i=" + strconv.Itoa(x.ver.iterations)
	x.state = stSASLClientFinal
	return authMessage(authReqSASLContinue, x.serverFirst), nil
}

// clientFinal handles client-final-message, verifies the nonce and the proof,
// and returns AuthenticationSASLFinal carrying server-final-message.
//
//	client-final-message = channel-binding "," nonce ["," extensions] "," proof
func (x *Exchange) clientFinal(in []byte) ([]byte, error) {
	if err := checkSCRAMInput(in); err != nil {
		return nil, err
	}
	r := &scramReader{s: string(in)}

	// Without channel binding, c= repeats the gs2 header: "biws" ("n,,") or
	// "eSws" ("y,,"), the same flag the client sent first.
	cb, err := r.attr('c')
	if err != nil {
		return nil, err
	}
	if cb != base64.StdEncoding.EncodeToString([]byte(x.gs2Header)) {
		return nil, &ProtocolError{Message: "unexpected SCRAM channel-binding attribute in client-final-message"}
	}
	nonce, err := r.attr('r')
	if err != nil {
		return nil, err
	}
	var proofAt int
	var proofB64 string
	for {
		at := r.pos
		c, v, err := r.anyAttr()
		if err != nil {
			return nil, err
		}
		if c == 'p' {
			proofAt, proofB64 = at, v
			break
		}
		if isSCRAMAttr(c) {
			return nil, malformed(fmt.Sprintf("Unexpected attribute \"%s\" in client-final-message.", sanitizeChar(c)))
		}
	}
	var proof [scramKeyLen]byte
	if !decodeKey(proofB64, &proof) {
		return nil, malformed("Malformed proof in client-final-message.")
	}
	if r.more() {
		return nil, malformed("Garbage found at the end of client-final-message.")
	}
	withoutProof := r.s[:proofAt-1] // without the comma before p=

	if len(nonce) != len(x.clientNonce)+len(x.serverNonce) ||
		nonce[:len(x.clientNonce)] != x.clientNonce || nonce[len(x.clientNonce):] != x.serverNonce {
		return nil, &ProtocolError{Message: "invalid SCRAM response", Detail: "Nonce does not match."}
	}

	// AuthMessage = client-first-message-bare "," server-first-message ","
	// client-final-message-without-proof.
	authMsg := make([]byte, 0, len(x.clientFirstBare)+len(x.serverFirst)+len(withoutProof)+2)
	authMsg = append(authMsg, x.clientFirstBare...)
	authMsg = append(authMsg, ',')
	authMsg = append(authMsg, x.serverFirst...)
	authMsg = append(authMsg, ',')
	authMsg = append(authMsg, withoutProof...)

	// The proof is checked even in a doomed exchange, so that it takes as long
	// as a real one.
	if !verifyProof(&x.ver, authMsg, &proof, &x.login.clientKey) || x.doomed {
		clear(x.login.clientKey[:])
		return nil, ErrFailed
	}
	x.login.hasKey = true
	m := hmac.New(sha256.New, x.ver.serverKey[:])
	m.Write(authMsg)
	return authMessage(authReqSASLFinal, "v="+base64.StdEncoding.EncodeToString(m.Sum(nil))), nil
}

// verifyProof reports whether proof is the client proof of AuthMessage authMsg
// for verifier v: ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage)
// must hash to StoredKey. The comparison takes constant time. The ClientKey
// recovered is left in clientKey (meaningful only when the proof is good).
func verifyProof(v *verifier, authMsg []byte, proof, clientKey *[scramKeyLen]byte) bool {
	m := hmac.New(sha256.New, v.storedKey[:])
	m.Write(authMsg)
	sig := m.Sum(nil)
	subtle.XORBytes(clientKey[:], proof[:], sig)
	h := sha256.Sum256(clientKey[:])
	return subtle.ConstantTimeCompare(h[:], v.storedKey[:]) == 1
}
