package auth

import (
	"bytes"
	cryptorand "crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Method is a client authentication method.
type Method int

const (
	// Trust lets the client in without a password.
	Trust Method = iota
	// MD5 ("md5") asks for an MD5 challenge response; a role whose secret is only
	// a SCRAM-SHA-256 verifier gets SCRAM-SHA-256 instead, as in PostgreSQL.
	MD5
	// SCRAMSHA256 ("scram-sha-256") runs a SCRAM-SHA-256 SASL exchange.
	SCRAMSHA256
)

// ParseMethod parses a method name as written in configuration: "trust", "md5"
// or "scram-sha-256" (case-sensitive, as in pg_hba.conf). On error the returned
// Method is not a valid method (an Exchange made with it fails every login),
// never Trust, and the error names the valid values.
func ParseMethod(s string) (Method, error) {
	switch s {
	case "trust":
		return Trust, nil
	case "md5":
		return MD5, nil
	case "scram-sha-256":
		return SCRAMSHA256, nil
	}
	return Method(-1), fmt.Errorf("auth: unknown authentication method %q: valid methods are trust, md5 and scram-sha-256", s)
}

// String returns the configuration name of m ("trust", "md5",
// "scram-sha-256"), or "auth.Method(N)" for an invalid value.
func (m Method) String() string {
	switch m {
	case Trust:
		return "trust"
	case MD5:
		return "md5"
	case SCRAMSHA256:
		return "scram-sha-256"
	}
	return fmt.Sprintf("auth.Method(%d)", int(m))
}

// ErrFailed is the error of an exchange that ended without authenticating the
// client: wrong password, unknown role, or a secret unusable with the method.
// The caller reports it to the client as PostgreSQL does: FATAL, SQLSTATE 28P01,
// `password authentication failed for user "name"`.
var ErrFailed = errors.New("password authentication failed")

// ProtocolError is a malformed or out-of-order client message. Message (and
// Detail, if not empty) are PostgreSQL's wording for the same violation and may
// be sent to the client (as FATAL, SQLSTATE 08P01); they never contain a secret.
type ProtocolError struct {
	// Message is the primary message, e.g. "malformed SCRAM message".
	Message string
	// Detail is an optional detail, e.g. "Nonce does not match.".
	Detail string
}

// Error returns Message, followed by ": " and Detail when Detail is set.
func (e *ProtocolError) Error() string {
	if e.Detail == "" {
		return e.Message
	}
	return e.Message + ": " + e.Detail
}

// MaxMessageLen is the largest length field (the Int32 that counts itself and
// the body) accepted for a client 'p' message during authentication:
// PostgreSQL's PG_MAX_AUTH_TOKEN_LENGTH. A caller should refuse a longer message
// before reading its body; Next rejects a longer body.
const MaxMessageLen = 65535

// Authentication request codes of the 'R' messages written here.
const (
	authReqMD5          = 5
	authReqSASL         = 10
	authReqSASLContinue = 11
	authReqSASLFinal    = 12
)

// scramMechanism is the only SASL mechanism offered.
const scramMechanism = "SCRAM-SHA-256"

// scramRawNonceLen is the number of random bytes in a server nonce:
// PostgreSQL's SCRAM_RAW_NONCE_LEN.
const scramRawNonceLen = 18

// state is where an Exchange stands.
type state int

const (
	stSASLInitial     state = iota // expecting SASLInitialResponse
	stSASLClientFirst              // expecting SASLResponse carrying client-first-message
	stSASLClientFinal              // expecting SASLResponse carrying client-final-message
	stPassword                     // expecting PasswordMessage (MD5 response)
	stDone                         // authenticated
	stFailed                       // ended with an error
)

// Exchange is one client's authentication conversation, a state machine driven
// by the caller: the caller writes Start's bytes, then passes the body of every
// 'p' message the client sends to Next and writes what Next returns, until Next
// reports done or an error. An Exchange is not safe for concurrent use.
type Exchange struct {
	method  Method // effective method: MD5 or SCRAMSHA256
	state   state
	doomed  bool  // fail at the end whatever the client sends
	randErr error // the random source failed; Next fails

	// SCRAM-SHA-256.
	ver             verifier
	serverNonce     string
	clientNonce     string
	gs2Header       string // "n,," or "y,,"
	clientFirstBare string
	serverFirst     string

	// MD5.
	md5Hex  string
	md5Salt [4]byte

	// login is what the client proved, for ServerLogin: kept when the
	// exchange succeeds.
	login ServerLogin
	// secret is the role's secret, for login.
	secret Secret
}

// mockMD5Hex stands for the MD5 hash of a role that has none, so that a doomed
// MD5 exchange does the same work as a real one.
const mockMD5Hex = "00000000000000000000000000000000"

// NewExchange starts the exchange of method m for user, whose secret is sec.
//
// known is false for an unknown role: the exchange then runs to the end as if
// the role existed and fails with ErrFailed, so that clients cannot tell
// unknown roles from wrong passwords. With SCRAMSHA256 it offers a mock salt
// derived from mockKey and the user name (like PostgreSQL's scram_mock_salt,
// so the same unknown name always gets the same salt; mockKey should be a
// random secret kept for the process's life) and 4096 iterations; with MD5 a
// random salt.
//
// Roles that are known but whose secret cannot serve m are handled as
// PostgreSQL does: with MD5, a role whose secret is only a SCRAM verifier gets a
// SCRAM-SHA-256 exchange; with SCRAMSHA256, a role whose secret is only an MD5
// hash (or the zero Secret) gets a mock SCRAM exchange that fails like a wrong
// password after the client answers.
//
// rand supplies nonces and salts: crypto/rand.Reader in production (used when
// rand is nil), a fixed reader in tests. If it fails, Next fails with an error
// wrapping the reader's error.
//
// m must be MD5 or SCRAMSHA256; any other value (Trust included: the caller
// must not start an exchange for it) gives a mock SCRAM exchange that always
// fails.
func NewExchange(m Method, user string, sec Secret, known bool, mockKey []byte, rand io.Reader) *Exchange {
	if rand == nil {
		rand = cryptorand.Reader
	}
	if !known {
		sec = Secret{}
	}
	x := &Exchange{secret: sec}
	if m == MD5 && (sec.CanMD5() || !sec.CanSCRAM()) {
		x.method, x.state = MD5, stPassword
		x.md5Hex = sec.md5Hex
		if !sec.CanMD5() {
			x.doomed, x.md5Hex = true, mockMD5Hex
		}
		if _, err := io.ReadFull(rand, x.md5Salt[:]); err != nil {
			x.randErr = fmt.Errorf("auth: reading random MD5 salt: %w", err)
		}
		return x
	}
	x.method, x.state = SCRAMSHA256, stSASLInitial
	if (m == MD5 || m == SCRAMSHA256) && sec.CanSCRAM() {
		x.ver = sec.scram
	} else {
		x.doomed, x.ver = true, mockVerifier(user, mockKey)
	}
	var raw [scramRawNonceLen]byte
	if _, err := io.ReadFull(rand, raw[:]); err != nil {
		x.randErr = fmt.Errorf("auth: reading random SCRAM nonce: %w", err)
	}
	x.serverNonce = base64.StdEncoding.EncodeToString(raw[:])
	return x
}

// mockVerifier is the verifier of a doomed SCRAM exchange, as PostgreSQL's
// mock_scram_secret: the salt is the first 16 bytes of
// SHA-256(user || mockKey), the iteration count the default, and the keys zero
// (they are used, so that a doomed exchange costs what a real one does, but
// the exchange fails whatever they say).
func mockVerifier(user string, mockKey []byte) verifier {
	h := sha256.New()
	h.Write([]byte(user))
	h.Write(mockKey)
	sum := h.Sum(nil)
	return verifier{
		iterations: scramIterations,
		salt:       base64.StdEncoding.EncodeToString(sum[:scramSaltLen]),
	}
}

// Method returns the method the exchange actually runs: MD5 or SCRAMSHA256
// (SCRAMSHA256 when MD5 was asked for a role with only a SCRAM verifier).
func (x *Exchange) Method() Method { return x.method }

// Start returns the complete first server message to write to the client: an
// 'R' message (Int32 length, Int32 code) AuthenticationSASL (code 10, offering
// only "SCRAM-SHA-256": no channel binding without client TLS) or
// AuthenticationMD5Password (code 5, 4-byte salt). It returns a new slice each
// time and does not change the exchange.
func (x *Exchange) Start() []byte {
	if x.method == MD5 {
		return authMessage(authReqMD5, string(x.md5Salt[:]))
	}
	return authMessage(authReqSASL, scramMechanism+"\x00\x00")
}

// Next takes the body (without type byte and length) of one client 'p'
// message — SASLInitialResponse, SASLResponse or PasswordMessage, as the
// exchange's state expects — and returns the complete server messages to write
// next (AuthenticationSASLContinue, code 11, or AuthenticationSASLFinal, code
// 12; never AuthenticationOk, which the caller sends) and done=true once the
// client is authenticated.
//
// Errors are ErrFailed (wrong password, unknown role, unusable secret), a
// *ProtocolError (malformed or out-of-order input), or, only if the random
// source given to NewExchange failed, an error wrapping the source's error;
// none contains a secret. After an error or done, Next returns a
// *ProtocolError. Next accepts any slice (empty, truncated, huge, invalid
// UTF-8): its work and output are bounded by the input, and it never allocates
// by a length the client claims.
func (x *Exchange) Next(body []byte) (out []byte, done bool, err error) {
	switch x.state {
	case stDone, stFailed:
		return nil, false, &ProtocolError{Message: "authentication exchange already finished"}
	}
	if x.randErr != nil {
		x.finish(stFailed)
		return nil, false, x.randErr
	}
	if len(body) > MaxMessageLen-4 {
		x.finish(stFailed)
		return nil, false, &ProtocolError{Message: "invalid message length"}
	}
	switch x.state {
	case stSASLInitial:
		out, err = x.saslInitialResponse(body)
	case stSASLClientFirst:
		out, err = x.clientFirst(body)
	case stSASLClientFinal:
		out, err = x.clientFinal(body)
		done = err == nil
	case stPassword:
		err = x.md5Response(body)
		done = err == nil
	}
	if err != nil {
		x.finish(stFailed)
		return nil, false, err
	}
	if done {
		x.finish(stDone)
	}
	return out, done, nil
}

// UnexpectedMessage ends the exchange because the client sent a message of
// type typ instead of 'p', and returns the *ProtocolError to report, worded as
// PostgreSQL's ("expected SASL response, got message type 81" or "expected
// password response, got message type 81").
func (x *Exchange) UnexpectedMessage(typ byte) error {
	x.finish(stFailed)
	if x.method == MD5 {
		return &ProtocolError{Message: fmt.Sprintf("expected password response, got message type %d", typ)}
	}
	return &ProtocolError{Message: fmt.Sprintf("expected SASL response, got message type %d", typ)}
}

// finish ends the exchange in state st and forgets its key material, but
// for what ServerLogin returns after a success.
func (x *Exchange) finish(st state) {
	x.state = st
	if st == stDone && !x.doomed {
		x.login.md5Hex = x.secret.md5Hex
		if x.method == SCRAMSHA256 && x.login.hasKey && !x.secret.derived {
			x.login.ver = x.ver
		} else {
			x.login.hasKey = false
			clear(x.login.clientKey[:])
		}
	} else {
		x.login = ServerLogin{}
	}
	x.secret = Secret{}
	x.ver = verifier{}
	x.md5Hex = ""
}

// saslInitialResponse handles a SASLInitialResponse body: the selected
// mechanism (a C string), an Int32 length of the initial response (-1 for
// none) and the response, as PostgreSQL's CheckSASLAuth reads it.
func (x *Exchange) saslInitialResponse(body []byte) ([]byte, error) {
	nul := bytes.IndexByte(body, 0)
	if nul < 0 {
		return nil, &ProtocolError{Message: "invalid string in message"}
	}
	if string(body[:nul]) != scramMechanism {
		return nil, &ProtocolError{Message: "client selected an invalid SASL authentication mechanism"}
	}
	rest := body[nul+1:]
	if len(rest) < 4 {
		return nil, &ProtocolError{Message: "insufficient data left in message"}
	}
	n := int32(binary.BigEndian.Uint32(rest))
	rest = rest[4:]
	if n == -1 {
		if len(rest) != 0 {
			return nil, &ProtocolError{Message: "invalid message format"}
		}
		// No initial response: send an empty challenge, to which the client
		// answers with the client-first-message in a SASLResponse.
		x.state = stSASLClientFirst
		return authMessage(authReqSASLContinue, ""), nil
	}
	if n < 0 || int64(n) > int64(len(rest)) {
		return nil, &ProtocolError{Message: "insufficient data left in message"}
	}
	if int(n) != len(rest) {
		return nil, &ProtocolError{Message: "invalid message format"}
	}
	return x.clientFirst(rest)
}

// authMessage returns an 'R' message with the given code and data.
func authMessage(code uint32, data string) []byte {
	b := make([]byte, 9, 9+len(data))
	b[0] = 'R'
	binary.BigEndian.PutUint32(b[1:], uint32(8+len(data)))
	binary.BigEndian.PutUint32(b[5:], code)
	return append(b, data...)
}
