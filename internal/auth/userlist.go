package auth

import (
	"bytes"
	"errors"
	"fmt"
)

// Limits of PgBouncer's auth_file fields (MAX_USERNAME and MAX_PASSWORD less
// the terminating NUL), applied to the field as written between its quotes.
const (
	maxUserlistUser     = 127
	maxUserlistPassword = 2047
)

// Errors of ParseUserlist lines. They never include the line's text.
var (
	errUserlistUserQuote  = errors.New("expected a double-quoted user name")
	errUserlistUserEnd    = errors.New("user name has no closing double quote on its line")
	errUserlistUserEmpty  = errors.New("user name is empty")
	errUserlistUserLong   = fmt.Errorf("user name is longer than %d bytes", maxUserlistUser)
	errUserlistPassQuote  = errors.New("expected a double-quoted password after the user name")
	errUserlistPassEnd    = errors.New("password has no closing double quote on its line")
	errUserlistPassLong   = fmt.Errorf("password is longer than %d bytes", maxUserlistPassword)
	errUserlistNUL        = errors.New("NUL byte in a field")
	errUserlistDuplicated = errors.New("user is listed more than once")
)

// ParseUserlist parses PgBouncer's auth_file (userlist.txt) format and returns
// each user's Secret (as ParseSecret makes it from the password field).
//
// The rules are PgBouncer's (src/loader.c, load_auth_file): one entry per line,
// `"user" "password"`, both fields in double quotes, a double quote inside a
// field written as two (`""`); whitespace before an entry, blank lines and
// lines whose first non-blank character is ';' are ignored, and so is anything
// after the password's closing quote. This parser also ignores lines starting
// with '#', and is stricter than PgBouncer where PgBouncer silently accepts
// odd text: only spaces and tabs may separate the two fields, a field may not
// span lines or hold a NUL byte, the user name may not be empty, and a user
// may not be listed twice. Fields longer than PgBouncer's limits (127 bytes
// for the user name, 2047 for the password, counted as written) are errors.
//
// Errors name the 1-based line number and the problem, never the line's text.
// Each cleartext password costs one PBKDF2 derivation (see PlainSecret).
func ParseUserlist(data []byte) (map[string]Secret, error) {
	users := make(map[string]Secret)
	firstLine := make(map[string]int)
	lineNo := 0
	for line := range bytes.Lines(data) {
		lineNo++
		user, password, ok, err := parseUserlistLine(line)
		if err != nil {
			return nil, fmt.Errorf("auth: userlist line %d: %w", lineNo, err)
		}
		if !ok {
			continue
		}
		if first, dup := firstLine[user]; dup {
			return nil, fmt.Errorf("auth: userlist line %d: %w (first on line %d)", lineNo, errUserlistDuplicated, first)
		}
		sec, err := ParseSecret(user, password)
		if err != nil {
			// ParseSecret's errors start with "auth: "; keep only the reason.
			return nil, fmt.Errorf("auth: userlist line %d: %w", lineNo, errors.Unwrap(err))
		}
		firstLine[user] = lineNo
		users[user] = sec
	}
	return users, nil
}

// parseUserlistLine parses one line (with its newline, if any). ok is false
// for a blank or comment line.
func parseUserlistLine(line []byte) (user, password string, ok bool, err error) {
	i := skipSpace(line, 0, isSpace)
	if i == len(line) || line[i] == ';' || line[i] == '#' {
		return "", "", false, nil
	}
	if line[i] != '"' {
		return "", "", false, errUserlistUserQuote
	}
	user, i, err = quotedField(line, i+1, maxUserlistUser, errUserlistUserEnd, errUserlistUserLong)
	if err != nil {
		return "", "", false, err
	}
	if user == "" {
		return "", "", false, errUserlistUserEmpty
	}
	i = skipSpace(line, i, func(c byte) bool { return c == ' ' || c == '\t' })
	if i == len(line) || line[i] != '"' {
		return "", "", false, errUserlistPassQuote
	}
	password, _, err = quotedField(line, i+1, maxUserlistPassword, errUserlistPassEnd, errUserlistPassLong)
	if err != nil {
		return "", "", false, err
	}
	// The rest of the line is ignored, as PgBouncer does.
	return user, password, true, nil
}

// quotedField reads a field whose opening quote is just before line[i], up to
// its closing quote, undoubling `""`. It returns the field and the index after
// the closing quote. A field longer than limit bytes as written is errLong; one
// without a closing quote before the end of the line is errEnd.
func quotedField(line []byte, i, limit int, errEnd, errLong error) (string, int, error) {
	start := i
	var b []byte
	for i < len(line) {
		if i-start > limit {
			return "", 0, errLong
		}
		switch c := line[i]; c {
		case '"':
			if i+1 < len(line) && line[i+1] == '"' {
				b = append(b, '"')
				i += 2
				continue
			}
			return string(b), i + 1, nil
		case '\n':
			return "", 0, errEnd
		case 0:
			return "", 0, errUserlistNUL
		default:
			b = append(b, c)
			i++
		}
	}
	return "", 0, errEnd
}

// skipSpace returns the index of the first byte of line at or after i for
// which space is false.
func skipSpace(line []byte, i int, space func(byte) bool) int {
	for i < len(line) && space(line[i]) {
		i++
	}
	return i
}

// isSpace is C's isspace in the C locale, which PgBouncer uses to skip blanks
// before an entry.
func isSpace(c byte) bool {
	switch c {
	case ' ', '\t', '\n', '\v', '\f', '\r':
		return true
	}
	return false
}
