package auth

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
)

const (
	// scramIterations is the iteration count of the verifiers derived here:
	// PostgreSQL's default scram_iterations.
	scramIterations = 4096
	// scramSaltLen is the raw salt length of derived verifiers and mock salts:
	// PostgreSQL's SCRAM_DEFAULT_SALT_LEN.
	scramSaltLen = 16
	// scramKeyLen is the length of StoredKey, ServerKey and proofs: SHA-256's.
	scramKeyLen = sha256.Size
	// scramPrefix starts a SCRAM-SHA-256 verifier in pg_authid's format.
	scramPrefix = "SCRAM-SHA-256$"
	// md5Prefix starts an MD5 hash in pg_authid's format.
	md5Prefix = "md5"
	// md5HashLen is the length of "md5" + 32 hex digits.
	md5HashLen = len(md5Prefix) + 2*md5.Size
	// redacted is what a Secret prints instead of itself.
	redacted = "auth.Secret(redacted)"
)

// verifier is a SCRAM-SHA-256 verifier: what PostgreSQL stores in
// pg_authid.rolpassword as
// "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>".
type verifier struct {
	iterations int
	salt       string // base64, sent verbatim in server-first-message
	storedKey  [scramKeyLen]byte
	serverKey  [scramKeyLen]byte
}

// Secret is what the proxy knows of one role's password: a cleartext password,
// an MD5 hash ("md5" followed by the 32 lowercase hex digits of
// md5(password+user)) or a SCRAM-SHA-256 verifier
// ("SCRAM-SHA-256$<iterations>:<salt b64>$<StoredKey b64>:<ServerKey b64>", the
// format of pg_authid.rolpassword).
//
// The zero Secret knows nothing: every exchange with it fails. A Secret made
// from a cleartext password does not keep the password; it keeps the MD5 hash
// and a SCRAM verifier derived from it.
//
// A Secret never prints what it knows: String, GoString, Format (every fmt
// verb) and LogValue all give "auth.Secret(redacted)". Secrets are immutable
// values, safe to copy and to share between goroutines.
type Secret struct {
	md5Hex   string // 32 lowercase hex digits of md5(password+user); "" if unknown
	scram    verifier
	hasSCRAM bool
	derived  bool // scram was derived here (PlainSecret): its salt is not the server's
}

// PlainSecret makes the secret of a cleartext password for user. It derives a
// SCRAM-SHA-256 verifier once (random 16-byte salt, 4096 iterations, as
// PostgreSQL's defaults) so that later logins cost no PBKDF2, and the MD5 hash
// md5(password+user); the password itself is not kept.
//
// An empty password gives the zero Secret, as PostgreSQL refuses to store an
// empty password. The password is used as its bytes: PostgreSQL applies
// SASLprep to non-ASCII passwords before deriving a verifier, which is the
// identity for ASCII passwords and for the usual NFKC-normalised ones, but this
// package (standard library only) has no Unicode normalisation; a non-ASCII
// password that SASLprep would change cannot log in with SCRAM from a
// PlainSecret (store a verifier made by PostgreSQL instead).
func PlainSecret(user, password string) Secret {
	if password == "" {
		return Secret{}
	}
	var salt [scramSaltLen]byte
	_, _ = rand.Read(salt[:]) // never fails (crypto/rand, Go 1.24+)
	s := Secret{md5Hex: md5Hex(password + user)}
	if v, err := deriveVerifier(password, salt[:], scramIterations); err == nil {
		s.scram, s.hasSCRAM, s.derived = v, true, true
	}
	return s
}

// ParseSecret parses one password field of a PgBouncer userlist.txt or
// pg_authid entry for user, classifying it as PostgreSQL's get_password_type
// does: "md5" followed by exactly 32 lowercase hex digits is an MD5 hash, text
// starting with "SCRAM-SHA-256$" is a SCRAM-SHA-256 verifier, and anything else
// is a cleartext password (made into a Secret as by PlainSecret). An empty field
// gives the zero Secret.
//
// Text starting with "SCRAM-SHA-256$" that is not a valid verifier (iteration
// count not a positive 32-bit integer, salt not non-empty padded base64, keys
// not 32 bytes of padded base64) is an error; the error does not include the
// text.
func ParseSecret(user, field string) (Secret, error) {
	switch {
	case field == "":
		return Secret{}, nil
	case isMD5Hash(field):
		return Secret{md5Hex: field[len(md5Prefix):]}, nil
	case strings.HasPrefix(field, scramPrefix):
		v, err := parseVerifier(field)
		if err != nil {
			return Secret{}, fmt.Errorf("auth: %w", err)
		}
		return Secret{scram: v, hasSCRAM: true}, nil
	default:
		return PlainSecret(user, field), nil
	}
}

// CanMD5 reports whether the secret can check an MD5 challenge response: the
// cleartext password or its MD5 hash is known.
func (s Secret) CanMD5() bool { return s.md5Hex != "" }

// CanSCRAM reports whether the secret can check a SCRAM-SHA-256 exchange: the
// cleartext password or a SCRAM-SHA-256 verifier is known.
func (s Secret) CanSCRAM() bool { return s.hasSCRAM }

// String returns "auth.Secret(redacted)", never the secret.
func (Secret) String() string { return redacted }

// GoString returns "auth.Secret(redacted)", never the secret.
func (Secret) GoString() string { return redacted }

// Format writes "auth.Secret(redacted)" for every verb and flag, so that no fmt
// verb (%v, %+v, %#v, %s, %q, %x, ...) prints the secret.
func (Secret) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, redacted) }

// LogValue makes log/slog record "auth.Secret(redacted)" instead of the secret.
func (Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

var (
	_ fmt.Stringer   = Secret{}
	_ fmt.GoStringer = Secret{}
	_ fmt.Formatter  = Secret{}
	_ slog.LogValuer = Secret{}
)

// md5Hex returns the 32 lowercase hex digits of md5(s).
func md5Hex(s string) string {
	sum := md5.Sum([]byte(s))
	return hex.EncodeToString(sum[:])
}

// isMD5Hash reports whether s is "md5" followed by 32 lowercase hex digits, as
// PostgreSQL's get_password_type decides (uppercase digits make a cleartext
// password there, and here).
func isMD5Hash(s string) bool {
	if len(s) != md5HashLen || !strings.HasPrefix(s, md5Prefix) {
		return false
	}
	for i := len(md5Prefix); i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// deriveVerifier computes a SCRAM-SHA-256 verifier of password (RFC 5802):
// SaltedPassword = PBKDF2-HMAC-SHA-256(password, salt, iterations),
// StoredKey = H(HMAC(SaltedPassword, "Client Key")),
// ServerKey = HMAC(SaltedPassword, "Server Key").
func deriveVerifier(password string, salt []byte, iterations int) (verifier, error) {
	salted, err := pbkdf2.Key(sha256.New, password, salt, iterations, scramKeyLen)
	if err != nil {
		return verifier{}, fmt.Errorf("deriving SCRAM verifier: %w", err)
	}
	v := verifier{iterations: iterations, salt: base64.StdEncoding.EncodeToString(salt)}
	clientKey := hmacSHA256(salted, []byte("Client Key"))
	v.storedKey = sha256.Sum256(clientKey)
	copy(v.serverKey[:], hmacSHA256(salted, []byte("Server Key")))
	clear(salted)
	clear(clientKey)
	return v, nil
}

// hmacSHA256 returns HMAC-SHA-256(key, msg).
func hmacSHA256(key, msg []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil)
}

// Errors of parseVerifier. They never include the verifier's text.
var (
	errVerifierFields     = errors.New("malformed SCRAM-SHA-256 secret: want SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>")
	errVerifierIterations = errors.New("malformed SCRAM-SHA-256 secret: iteration count is not a positive integer")
	errVerifierSalt       = errors.New("malformed SCRAM-SHA-256 secret: salt is not non-empty base64")
	errVerifierStoredKey  = errors.New("malformed SCRAM-SHA-256 secret: StoredKey is not 32 bytes of base64")
	errVerifierServerKey  = errors.New("malformed SCRAM-SHA-256 secret: ServerKey is not 32 bytes of base64")
)

// parseVerifier parses "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>"
// as PostgreSQL's parse_scram_secret does, a little more strictly: the
// iteration count must be a positive decimal int32 without sign or spaces and
// the salt must not be empty.
func parseVerifier(s string) (verifier, error) {
	rest, ok := strings.CutPrefix(s, scramPrefix)
	if !ok {
		return verifier{}, errVerifierFields
	}
	iterStr, rest, ok1 := strings.Cut(rest, ":")
	salt, rest, ok2 := strings.Cut(rest, "$")
	stored, server, ok3 := strings.Cut(rest, ":")
	if !ok1 || !ok2 || !ok3 {
		return verifier{}, errVerifierFields
	}
	iter, err := strconv.ParseInt(iterStr, 10, 32)
	if err != nil || iter <= 0 || iterStr[0] == '+' {
		return verifier{}, errVerifierIterations
	}
	if raw, ok := decodeBase64(salt); !ok || len(raw) == 0 {
		return verifier{}, errVerifierSalt
	}
	v := verifier{iterations: int(iter), salt: salt}
	if !decodeKey(stored, &v.storedKey) {
		return verifier{}, errVerifierStoredKey
	}
	if !decodeKey(server, &v.serverKey) {
		return verifier{}, errVerifierServerKey
	}
	return v, nil
}

// keyB64Len is the length of the padded base64 encoding of a 32-byte key.
const keyB64Len = (scramKeyLen + 2) / 3 * 4

// decodeKey decodes the padded base64 of exactly scramKeyLen bytes into dst.
// Only a string of exactly keyB64Len characters can be one, so no longer input
// is ever decoded.
func decodeKey(s string, dst *[scramKeyLen]byte) bool {
	if len(s) != keyB64Len {
		return false
	}
	raw, ok := decodeBase64(s)
	if !ok || len(raw) != scramKeyLen {
		return false
	}
	copy(dst[:], raw)
	return true
}

// decodeBase64 decodes padded standard base64 the way PostgreSQL's
// pg_b64_decode accepts it: unlike encoding/base64, it rejects the CR and LF
// characters that encoding/base64 skips.
func decodeBase64(s string) ([]byte, bool) {
	if strings.ContainsAny(s, "\r\n") {
		return nil, false
	}
	raw, err := base64.StdEncoding.DecodeString(s)
	return raw, err == nil
}
