package auth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
)

// ServerLogin is what a client proved in a successful exchange, kept so that
// the proxy can log in to PostgreSQL as that role without knowing its
// password (PgBouncer's model for auth_query and auth_file roles):
//
//   - after SCRAM-SHA-256 against a verifier PostgreSQL made (pg_authid's,
//     from an auth query or an auth file), the ClientKey the client's proof
//     revealed: ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage).
//     With it and the verifier, the proxy answers PostgreSQL's own SCRAM
//     challenge for the same role, whose salt and iteration count are the
//     verifier's. A verifier derived here from a cleartext password has
//     another salt, and gives no key;
//   - the role's MD5 hash when the secret has one: an MD5 challenge needs
//     only the hash.
//
// Like a Secret it never prints what it holds, and is immutable once made.
type ServerLogin struct {
	md5Hex    string
	ver       verifier
	clientKey [scramKeyLen]byte
	hasKey    bool
}

// ServerLogin returns what the exchange proved, after it succeeded; false
// when it has nothing that can log in to PostgreSQL (an exchange that has not
// succeeded, or SCRAM against a verifier derived here with no MD5 hash).
func (x *Exchange) ServerLogin() (ServerLogin, bool) {
	if x.state != stDone {
		return ServerLogin{}, false
	}
	return x.login, x.login.CanSCRAM() || x.login.CanMD5()
}

// CanSCRAM reports whether the login can answer a SCRAM-SHA-256 challenge.
func (l ServerLogin) CanSCRAM() bool { return l.hasKey }

// CanMD5 reports whether the login can answer an MD5 challenge.
func (l ServerLogin) CanMD5() bool { return l.md5Hex != "" }

// String returns "auth.ServerLogin(redacted)".
func (ServerLogin) String() string { return "auth.ServerLogin(redacted)" }

// GoString returns "auth.ServerLogin(redacted)".
func (ServerLogin) GoString() string { return "auth.ServerLogin(redacted)" }

// Format writes "auth.ServerLogin(redacted)" for every verb.
func (ServerLogin) Format(f fmt.State, _ rune) {
	_, _ = io.WriteString(f, "auth.ServerLogin(redacted)")
}

// LogValue makes log/slog record "auth.ServerLogin(redacted)".
func (ServerLogin) LogValue() slog.Value { return slog.StringValue("auth.ServerLogin(redacted)") }

// MD5Response returns the body of the PasswordMessage that answers
// PostgreSQL's AuthenticationMD5Password with salt: "md5" +
// hex(md5(hex(md5(password+user)) + salt)) and a NUL. It fails when the
// login has no MD5 hash.
func (l ServerLogin) MD5Response(salt [4]byte) ([]byte, error) {
	if !l.CanMD5() {
		return nil, errors.New("auth: the role's MD5 hash is not known (its secret is a SCRAM verifier)")
	}
	r := md5Salted(l.md5Hex, salt)
	return append(r[:], 0), nil
}

// SCRAMClient is the client side of one SCRAM-SHA-256 exchange with
// PostgreSQL, run with a ServerLogin's ClientKey instead of a password.
// Drive it with First, Final and Verify, in that order.
type SCRAMClient struct {
	l               ServerLogin
	nonce           string
	clientFirstBare string
	serverSig       [scramKeyLen]byte
}

// NewSCRAMClient starts an exchange; rand supplies the nonce (crypto/rand
// when nil). It fails when the login has no ClientKey.
func (l ServerLogin) NewSCRAMClient(rnd io.Reader) (*SCRAMClient, error) {
	if !l.CanSCRAM() {
		return nil, errors.New("auth: no SCRAM key for this role (its client did not log in with SCRAM against a verifier from PostgreSQL)")
	}
	if rnd == nil {
		rnd = rand.Reader
	}
	var raw [scramRawNonceLen]byte
	if _, err := io.ReadFull(rnd, raw[:]); err != nil {
		return nil, fmt.Errorf("auth: reading random SCRAM nonce: %w", err)
	}
	c := &SCRAMClient{l: l, nonce: base64.StdEncoding.EncodeToString(raw[:])}
	// PostgreSQL ignores the SCRAM user name (the startup packet's counts),
	// and so does libpq: n= is empty. No channel binding: "n,,".
	c.clientFirstBare = "n=,r=" + c.nonce
	return c, nil
}

// First returns the body of the SASLInitialResponse: the mechanism and the
// client-first-message.
func (c *SCRAMClient) First() []byte {
	msg := "n,," + c.clientFirstBare
	b := make([]byte, 0, len(scramMechanism)+1+4+len(msg))
	b = append(b, scramMechanism...)
	b = append(b, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(len(msg)))
	return append(b, msg...)
}

// Final takes the server-first-message (the data of
// AuthenticationSASLContinue) and returns the body of the SASLResponse that
// carries the client-final-message. It fails when the server's nonce does
// not extend ours, or when its salt or iteration count are not the
// verifier's: the role's password changed since its verifier was read.
func (c *SCRAMClient) Final(serverFirst []byte) ([]byte, error) {
	if err := checkSCRAMInput(serverFirst); err != nil {
		return nil, err
	}
	r := &scramReader{s: string(serverFirst)}
	nonce, err := r.attr('r')
	if err != nil {
		return nil, err
	}
	salt, err := r.attr('s')
	if err != nil {
		return nil, err
	}
	iter, err := r.attr('i')
	if err != nil {
		return nil, err
	}
	if len(nonce) <= len(c.nonce) || nonce[:len(c.nonce)] != c.nonce {
		return nil, &ProtocolError{Message: "invalid SCRAM server-first-message", Detail: "Nonce does not start with the client's."}
	}
	if salt != c.l.ver.salt || iter != strconv.Itoa(c.l.ver.iterations) {
		return nil, errors.New("auth: the server's SCRAM salt or iteration count is not the verifier's: the role's password changed")
	}
	withoutProof := "c=biws,r=" + nonce
	authMsg := []byte(c.clientFirstBare + "," + string(serverFirst) + "," + withoutProof)
	m := hmac.New(sha256.New, c.l.ver.storedKey[:])
	m.Write(authMsg)
	var proof [scramKeyLen]byte
	subtle.XORBytes(proof[:], c.l.clientKey[:], m.Sum(nil))
	m = hmac.New(sha256.New, c.l.ver.serverKey[:])
	m.Write(authMsg)
	copy(c.serverSig[:], m.Sum(nil))
	return []byte(withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof[:])), nil
}

// Verify checks the server-final-message (the data of
// AuthenticationSASLFinal): the server must prove it knows the ServerKey.
func (c *SCRAMClient) Verify(serverFinal []byte) error {
	if err := checkSCRAMInput(serverFinal); err != nil {
		return err
	}
	r := &scramReader{s: string(serverFinal)}
	if r.peek() == 'e' {
		e, _ := r.attr('e')
		return fmt.Errorf("auth: the server refused the SCRAM proof: %q", e)
	}
	v, err := r.attr('v')
	if err != nil {
		return err
	}
	var sig [scramKeyLen]byte
	if !decodeKey(v, &sig) || subtle.ConstantTimeCompare(sig[:], c.serverSig[:]) != 1 {
		return errors.New("auth: the server's SCRAM signature is wrong: it does not know the role's verifier")
	}
	return nil
}
