package auth

import (
	"crypto/md5"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

func TestMD5Exchange(t *testing.T) {
	salt := "\x01\x02\x03\x04"
	right := testMD5Response(testUser, testPassword, []byte(salt))
	tests := []struct {
		name   string
		body   []byte
		msg    string // "" and !ok: ErrFailed
		wantOK bool
	}{
		{name: "right", body: right, wantOK: true},
		{name: "wrong password", body: testMD5Response(testUser, "wrong", []byte(salt))},
		{name: "wrong salt", body: testMD5Response(testUser, testPassword, []byte("\x00\x00\x00\x00"))},
		{name: "wrong user", body: testMD5Response("bob", testPassword, []byte(salt))},
		{name: "uppercase hex", body: []byte("md5" + strings.ToUpper(string(right[3:len(right)-1])) + "\x00")},
		{name: "cleartext password", body: []byte(testPassword + "\x00")},
		{name: "stored hash itself", body: []byte(testMD5Secret(testUser, testPassword) + "\x00")},
		{name: "prefix of the response", body: append(append([]byte(nil), right[:20]...), 0)},
		{name: "empty password", body: []byte{0}},
		{name: "empty body", body: nil, msg: "invalid password packet size"},
		{name: "no terminator", body: right[:len(right)-1], msg: "invalid password packet size"},
		{name: "embedded NUL", body: append(append([]byte(nil), right[:10]...), append([]byte{0}, right[10:]...)...), msg: "invalid password packet size"},
		{name: "two strings", body: append(append([]byte(nil), right...), 'x', 0), msg: "invalid password packet size"},
		{name: "oversized", body: make([]byte, MaxMessageLen-3), msg: "invalid message length"},
	}
	for _, secName := range []string{"md5 hash", "cleartext"} {
		sec := PlainSecret(testUser, testPassword)
		if secName == "md5 hash" {
			var err error
			if sec, err = ParseSecret(testUser, testMD5Secret(testUser, testPassword)); err != nil {
				t.Fatal(err)
			}
		}
		for _, tc := range tests {
			t.Run(secName+"/"+tc.name, func(t *testing.T) {
				x := NewExchange(MD5, testUser, sec, true, nil, strings.NewReader(salt))
				if x.Method() != MD5 {
					t.Fatalf("Method() = %v", x.Method())
				}
				if _, s := parseAuthMsg(t, x.Start()); s != salt {
					t.Fatalf("salt %q", s)
				}
				out, done, err := x.Next(tc.body)
				if out != nil {
					t.Fatalf("out = %q", out)
				}
				switch {
				case tc.wantOK:
					if err != nil || !done {
						t.Fatalf("done=%v err=%v", done, err)
					}
				case tc.msg != "":
					if done {
						t.Fatal("done")
					}
					wantProtocolError(t, err, tc.msg, "")
				default:
					if done || !errors.Is(err, ErrFailed) {
						t.Fatalf("done=%v err=%v, want ErrFailed", done, err)
					}
				}
				_, _, err = x.Next(right)
				wantProtocolError(t, err, "authentication exchange already finished", "")
			})
		}
	}
}

// TestMD5UnknownRole checks that an unknown role gets a random-salt MD5
// challenge and fails even with the response its secret would accept.
func TestMD5UnknownRole(t *testing.T) {
	sec := PlainSecret(testUser, testPassword)
	x := NewExchange(MD5, testUser, sec, false, nil, nil)
	_, salt := parseAuthMsg(t, x.Start())
	if len(salt) != 4 {
		t.Fatalf("salt %q", salt)
	}
	_, done, err := x.Next(testMD5Response(testUser, testPassword, []byte(salt)))
	if done || !errors.Is(err, ErrFailed) {
		t.Fatalf("done=%v err=%v, want ErrFailed", done, err)
	}
	// Nor does the response its mock hash would accept.
	x = NewExchange(MD5, testUser, Secret{}, false, nil, nil)
	_, salt = parseAuthMsg(t, x.Start())
	inner := md5.Sum(append([]byte(mockMD5Hex), salt...))
	_, done, err = x.Next([]byte("md5" + hex.EncodeToString(inner[:]) + "\x00"))
	if done || !errors.Is(err, ErrFailed) {
		t.Fatalf("mock response: done=%v err=%v, want ErrFailed", done, err)
	}
	// Two exchanges do not share a salt (with overwhelming probability).
	_, salt2 := parseAuthMsg(t, NewExchange(MD5, testUser, sec, false, nil, nil).Start())
	_, salt3 := parseAuthMsg(t, NewExchange(MD5, testUser, sec, false, nil, nil).Start())
	if salt == salt2 && salt2 == salt3 {
		t.Fatal("MD5 salts are not random")
	}
}
