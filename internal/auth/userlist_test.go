package auth

import (
	"strings"
	"testing"
)

func TestParseUserlist(t *testing.T) {
	md5Hash := testMD5Secret("carol", "carolpw")
	ver := testVerifier("davepw", testSalt, testIter)
	data := strings.Join([]string{
		`; PgBouncer comment`,
		`# hash comment`,
		``,
		`   `,
		`  ; indented comment "x" "y"`,
		`"alice" "alicepw"`,
		`	  "bob"	 "pw with ""quotes"" and spaces" trailing text is ignored`,
		`"carol" "` + md5Hash + `"`,
		`"dave" "` + ver + `"` + "\r",
		`"e""ve" ""`,
		`"frank" "a;b#c"`,
		`"ünïcode" "pässwörd"`,
	}, "\n")
	users, err := ParseUserlist([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	if len(users) != 7 {
		t.Fatalf("%d users: %v", len(users), users)
	}
	checkMD5 := func(user, password string, want bool) {
		t.Helper()
		sec, ok := users[user]
		if !ok {
			t.Fatalf("user %q missing", user)
		}
		x := NewExchange(MD5, user, sec, true, nil, zeroReader{})
		_, done, _ := x.Next(testMD5Response(user, password, make([]byte, 4)))
		if done != want {
			t.Fatalf("user %q password %q: done=%v, want %v", user, password, done, want)
		}
	}
	checkMD5("alice", "alicepw", true)
	checkMD5("alice", "alicepw ", false)
	checkMD5("bob", `pw with "quotes" and spaces`, true)
	checkMD5("carol", "carolpw", true)
	checkMD5("frank", "a;b#c", true)
	checkMD5("ünïcode", "pässwörd", true)
	if s := users["dave"]; s.CanMD5() || !s.CanSCRAM() || s.scram.iterations != testIter {
		t.Fatal("dave's verifier not parsed")
	}
	if s, ok := users[`e"ve`]; !ok || s.CanMD5() || s.CanSCRAM() {
		t.Fatal(`e"ve with empty password should be listed with the zero Secret`)
	}

	// Empty input and comments only.
	for _, in := range []string{"", "\n\n", "; only\n# comments\n"} {
		users, err := ParseUserlist([]byte(in))
		if err != nil || len(users) != 0 {
			t.Fatalf("ParseUserlist(%q) = %v, %v", in, users, err)
		}
	}
}

func TestParseUserlistErrors(t *testing.T) {
	const secret = "hunter2secret"
	good := `"ok" "okpw"` + "\n"
	tests := []struct {
		name string
		line string // written as line 3
		want string
	}{
		{"unquoted user", `bob "` + secret + `"`, "expected a double-quoted user name"},
		{"unquoted password", `"bob" ` + secret, "expected a double-quoted password after the user name"},
		{"single field", `"bob"`, "expected a double-quoted password after the user name"},
		{"garbage between fields", `"bob" , "` + secret + `"`, "expected a double-quoted password after the user name"},
		{"unterminated user", `"bob ` + secret, "user name has no closing double quote on its line"},
		{"unterminated password", `"bob" "` + secret, "password has no closing double quote on its line"},
		{"password ends on escaped quote", `"bob" "` + secret + `""`, "password has no closing double quote on its line"},
		{"empty user", `"" "` + secret + `"`, "user name is empty"},
		{"long user", `"` + strings.Repeat("u", 128) + `" "` + secret + `"`, "user name is longer than 127 bytes"},
		{"long password", `"bob" "` + secret + strings.Repeat("p", 2048) + `"`, "password is longer than 2047 bytes"},
		{"NUL in password", `"bob" "` + secret + "\x00" + `"`, "NUL byte in a field"},
		{"malformed verifier", `"bob" "SCRAM-SHA-256$4096:` + secret + `$x:y"`, "malformed SCRAM-SHA-256 secret"},
		{"duplicate user", `"ok" "` + secret + `"`, "user is listed more than once (first on line 2)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			data := "; header\n" + good + tc.line + "\n" + good
			users, err := ParseUserlist([]byte(data))
			if err == nil {
				t.Fatalf("no error; users %v", users)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "auth: userlist line 3: ") || !strings.Contains(msg, tc.want) {
				t.Fatalf("error %q, want line 3 and %q", msg, tc.want)
			}
			if strings.Contains(msg, secret) || strings.Contains(msg, "bob") {
				t.Fatalf("error %q contains the line's text", msg)
			}
			if users != nil {
				t.Fatal("users returned with an error")
			}
		})
	}

	// Limits are inclusive.
	in := `"` + strings.Repeat("u", 127) + `" "` + strings.Repeat("p", 2047) + `"`
	if _, err := ParseUserlist([]byte(in)); err != nil {
		t.Fatalf("fields at the limits: %v", err)
	}
}
