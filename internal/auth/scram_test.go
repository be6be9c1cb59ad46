package auth

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

const (
	testUser     = "alice"
	testPassword = "correct horse battery staple"
	testIter     = 16 // low, to keep unit tests fast; the pgconn tests use 4096
)

var testSalt = []byte("0123456789abcdef")

// testSecret is a SCRAM verifier (and nothing else) of testPassword.
func testSecret(t testing.TB) Secret {
	t.Helper()
	sec, err := ParseSecret(testUser, testVerifier(testPassword, testSalt, testIter))
	if err != nil {
		t.Fatal(err)
	}
	return sec
}

// TestRFC7677 replays the SCRAM-SHA-256 example of RFC 7677 section 3.
func TestRFC7677(t *testing.T) {
	salt, err := base64.StdEncoding.DecodeString("W22ZaJ0SNY7soEsUEjb6gQ==")
	if err != nil {
		t.Fatal(err)
	}
	sec, err := ParseSecret("user", testVerifier("pencil", salt, 4096))
	if err != nil {
		t.Fatal(err)
	}
	x := NewExchange(SCRAMSHA256, "user", sec, true, nil, zeroReader{})
	x.serverNonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0" // the RFC's, not base64

	out, done, err := x.Next(saslInitial("SCRAM-SHA-256", "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"))
	if err != nil || done {
		t.Fatalf("client-first: done=%v err=%v", done, err)
	}
	code, data := parseAuthMsg(t, out)
	if want := "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"; code != 11 || data != want {
		t.Fatalf("server-first: code %d %q, want 11 %q", code, data, want)
	}
	out, done, err = x.Next([]byte("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="))
	if err != nil || !done {
		t.Fatalf("client-final: done=%v err=%v", done, err)
	}
	code, data = parseAuthMsg(t, out)
	if want := "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="; code != 12 || data != want {
		t.Fatalf("server-final: code %d %q, want 12 %q", code, data, want)
	}
}

// TestDeriveVerifierMatchesIndependent checks PlainSecret's derivation against
// the tests' own PBKDF2.
func TestDeriveVerifierMatchesIndependent(t *testing.T) {
	v, err := deriveVerifier(testPassword, testSalt, 4096)
	if err != nil {
		t.Fatal(err)
	}
	want, err := parseVerifier(testVerifier(testPassword, testSalt, 4096))
	if err != nil {
		t.Fatal(err)
	}
	if v != want {
		t.Fatal("derived verifier differs from the independently computed one")
	}
}

func TestStartMessages(t *testing.T) {
	x := NewExchange(SCRAMSHA256, testUser, testSecret(t), true, nil, zeroReader{})
	if got, want := string(x.Start()), "R\x00\x00\x00\x17\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00"; got != want {
		t.Fatalf("SCRAM Start = %q, want %q", got, want)
	}
	if x.Method() != SCRAMSHA256 {
		t.Fatalf("Method = %v", x.Method())
	}
	x = NewExchange(MD5, testUser, PlainSecret(testUser, testPassword), true, nil, strings.NewReader("\x01\x02\x03\x04"))
	if got, want := string(x.Start()), "R\x00\x00\x00\x0c\x00\x00\x00\x05\x01\x02\x03\x04"; got != want {
		t.Fatalf("MD5 Start = %q, want %q", got, want)
	}
	if s1, s2 := x.Start(), x.Start(); string(s1) != string(s2) || &s1[0] == &s2[0] {
		t.Fatal("Start is not repeatable or shares its slice")
	}
}

// scramRun drives a SCRAM exchange: the initial response body first, then the
// client-final-message that final makes from the server-first-message. It
// returns the second Next's results.
func scramRun(t *testing.T, x *Exchange, first []byte, final func(sf string) string) ([]byte, bool, error) {
	t.Helper()
	out, done, err := x.Next(first)
	if err != nil || done {
		t.Fatalf("client-first: done=%v err=%v", done, err)
	}
	code, sf := parseAuthMsg(t, out)
	if code != 11 {
		t.Fatalf("after client-first: code %d", code)
	}
	return x.Next([]byte(final(sf)))
}

func TestSCRAMSuccess(t *testing.T) {
	const bare = "n=,r=clientnonce"
	tests := []struct {
		name  string
		gs2   string
		first func(x *Exchange) []byte // nil: SASLInitialResponse carrying gs2+bare
		cb    string
		ext   string
	}{
		{name: "n flag", gs2: "n,,", cb: "biws"},
		{name: "y flag", gs2: "y,,", cb: "eSws"},
		{name: "user name in n= ignored", gs2: "n,,", cb: "biws"},
		{name: "unknown extension in client-final", gs2: "n,,", cb: "biws", ext: ",x=extension"},
		{name: "no initial response", gs2: "n,,", cb: "biws", first: func(x *Exchange) []byte {
			out, done, err := x.Next(saslInitialLen("SCRAM-SHA-256", -1, ""))
			if err != nil || done {
				t.Fatalf("initial: done=%v err=%v", done, err)
			}
			if code, data := parseAuthMsg(t, out); code != 11 || data != "" {
				t.Fatalf("empty challenge: code %d %q", code, data)
			}
			return []byte("n,," + bare)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			x := NewExchange(SCRAMSHA256, testUser, testSecret(t), true, nil, zeroReader{})
			b := bare
			if tc.name == "user name in n= ignored" {
				b = "n=mallory,r=clientnonce"
			}
			first := saslInitial("SCRAM-SHA-256", tc.gs2+b)
			if tc.first != nil {
				first = tc.first(x)
			}
			var wantFinal string
			out, done, err := scramRun(t, x, first, func(sf string) string {
				if !strings.HasPrefix(sf, "r=clientnonce"+zeroNonce+",s="+base64.StdEncoding.EncodeToString(testSalt)+",i=16") {
					t.Fatalf("server-first %q", sf)
				}
				var final string
				final, wantFinal = testClientFinal(t, testPassword, b, sf, "c="+tc.cb+",r=clientnonce"+zeroNonce+tc.ext)
				return final
			})
			if err != nil || !done {
				t.Fatalf("client-final: done=%v err=%v", done, err)
			}
			if code, data := parseAuthMsg(t, out); code != 12 || data != wantFinal {
				t.Fatalf("server-final: code %d %q, want 12 %q", code, data, wantFinal)
			}
			_, _, err = x.Next([]byte("c=biws"))
			wantProtocolError(t, err, "authentication exchange already finished", "")
		})
	}
}

func TestSASLInitialErrors(t *testing.T) {
	const mech = "SCRAM-SHA-256"
	tests := []struct {
		name        string
		body        []byte
		msg, detail string
	}{
		{"empty body", nil, "invalid string in message", ""},
		{"no mechanism terminator", []byte(mech), "invalid string in message", ""},
		{"unknown mechanism", saslInitial("SCRAM-SHA-1", "n,,n=,r=abc"), "client selected an invalid SASL authentication mechanism", ""},
		{"PLUS without TLS", saslInitial("SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,n=,r=abc"), "client selected an invalid SASL authentication mechanism", ""},
		{"truncated length", []byte(mech + "\x00\x00\x00"), "insufficient data left in message", ""},
		{"length beyond data", saslInitialLen(mech, 1<<30, "n,,n=,r=abc"), "insufficient data left in message", ""},
		{"max length beyond data", saslInitialLen(mech, 1<<31-1, ""), "insufficient data left in message", ""},
		{"negative length", saslInitialLen(mech, -2, "n,,n=,r=abc"), "insufficient data left in message", ""},
		{"length short of data", saslInitialLen(mech, 3, "n,,n=,r=abc"), "invalid message format", ""},
		{"no response but data", saslInitialLen(mech, -1, "n,,n=,r=abc"), "invalid message format", ""},
		{"empty response", saslInitial(mech, ""), "malformed SCRAM message", "The message is empty."},
		{"NUL in response", saslInitial(mech, "n,,n=\x00,r=abc"), "malformed SCRAM message", "Message length does not match input length."},
		{"channel binding required", saslInitial(mech, "p=tls-server-end-point,,n=,r=abc"), "malformed SCRAM message",
			"The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data."},
		{"bad flag", saslInitial(mech, "x,,n=,r=abc"), "malformed SCRAM message", `Unexpected channel-binding flag "'x'".`},
		{"flag only", saslInitial(mech, "n"), "malformed SCRAM message", `Comma expected, but found character "0x00".`},
		{"authzid", saslInitial(mech, "n,a=bob,n=,r=abc"), "client uses authorization identity, but it is not supported", ""},
		{"gs2 garbage", saslInitial(mech, "n,x,n=,r=abc"), "malformed SCRAM message", `Unexpected attribute "'x'" in client-first-message.`},
		{"mandatory extension", saslInitial(mech, "n,,m=foo,n=,r=abc"), "client requires an unsupported SCRAM extension", ""},
		{"out of order", saslInitial(mech, "n,,r=abc,n="), "malformed SCRAM message", `Expected attribute "n" but found "'r'".`},
		{"missing nonce", saslInitial(mech, "n,,n="), "malformed SCRAM message", `Expected attribute "r" but found "0x00".`},
		{"missing equals", saslInitial(mech, "n,,n,r=abc"), "malformed SCRAM message", `Expected character "=" for attribute "n".`},
		{"non-printable nonce", saslInitial(mech, "n,,n=,r=ab\x7f"), "non-printable characters in SCRAM nonce", ""},
		{"invalid UTF-8 nonce", saslInitial(mech, "n,,n=,r=\xff\xfe"), "non-printable characters in SCRAM nonce", ""},
		{"defined attribute as extension", saslInitial(mech, "n,,n=,r=abc,r=def"), "malformed SCRAM message", `Unexpected attribute "'r'" in client-first-message.`},
		{"trailing comma", saslInitial(mech, "n,,n=,r=abc,"), "malformed SCRAM message", "Attribute expected, but found end of string."},
		{"bad extension name", saslInitial(mech, "n,,n=,r=abc,1=x"), "malformed SCRAM message", `Attribute expected, but found invalid character "'1'".`},
		{"oversized", make([]byte, MaxMessageLen), "invalid message length", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			x := NewExchange(SCRAMSHA256, testUser, testSecret(t), true, nil, zeroReader{})
			out, done, err := x.Next(tc.body)
			if out != nil || done {
				t.Fatalf("out=%q done=%v", out, done)
			}
			wantProtocolError(t, err, tc.msg, tc.detail)
			_, _, err = x.Next([]byte("n,,n=,r=abc"))
			wantProtocolError(t, err, "authentication exchange already finished", "")
		})
	}
}

func TestSASLFinalErrors(t *testing.T) {
	const nonce = "clientnonce" + zeroNonce
	goodProof := func(t *testing.T, sf, withoutProof string) string {
		final, _ := testClientFinal(t, testPassword, "n=,r=clientnonce", sf, withoutProof)
		return final
	}
	zeroProof := base64.StdEncoding.EncodeToString(make([]byte, 32))
	tests := []struct {
		name        string
		final       func(t *testing.T, sf string) string
		msg, detail string // msg "" means ErrFailed
	}{
		{"empty", func(*testing.T, string) string { return "" }, "malformed SCRAM message", "The message is empty."},
		{"out of order", func(*testing.T, string) string { return "r=" + nonce + ",c=biws,p=" + zeroProof },
			"malformed SCRAM message", `Expected attribute "c" but found "'r'".`},
		{"channel binding of y flag", func(*testing.T, string) string { return "c=eSws,r=" + nonce + ",p=" + zeroProof },
			"unexpected SCRAM channel-binding attribute in client-final-message", ""},
		{"channel binding data", func(*testing.T, string) string {
			return "c=cD10bHMtc2VydmVyLWVuZC1wb2ludCwsAAAA,r=" + nonce + ",p=" + zeroProof
		}, "unexpected SCRAM channel-binding attribute in client-final-message", ""},
		{"missing nonce", func(*testing.T, string) string { return "c=biws,p=" + zeroProof },
			"malformed SCRAM message", `Expected attribute "r" but found "'p'".`},
		{"missing proof", func(*testing.T, string) string { return "c=biws,r=" + nonce },
			"malformed SCRAM message", "Attribute expected, but found end of string."},
		{"bad base64 proof", func(*testing.T, string) string { return "c=biws,r=" + nonce + ",p=" + strings.Repeat("!", 44) },
			"malformed SCRAM message", "Malformed proof in client-final-message."},
		{"short proof", func(*testing.T, string) string {
			return "c=biws,r=" + nonce + ",p=" + base64.StdEncoding.EncodeToString(make([]byte, 31))
		}, "malformed SCRAM message", "Malformed proof in client-final-message."},
		{"unpadded proof", func(*testing.T, string) string {
			return "c=biws,r=" + nonce + ",p=" + strings.TrimSuffix(zeroProof, "=")
		},
			"malformed SCRAM message", "Malformed proof in client-final-message."},
		{"newline in proof", func(*testing.T, string) string { return "c=biws,r=" + nonce + ",p=\n" + zeroProof[1:] },
			"malformed SCRAM message", "Malformed proof in client-final-message."},
		{"huge proof", func(*testing.T, string) string { return "c=biws,r=" + nonce + ",p=" + strings.Repeat("A", 60000) },
			"malformed SCRAM message", "Malformed proof in client-final-message."},
		{"garbage after proof", func(t *testing.T, sf string) string { return goodProof(t, sf, "c=biws,r="+nonce) + ",x=1" },
			"malformed SCRAM message", "Garbage found at the end of client-final-message."},
		{"trailing comma", func(t *testing.T, sf string) string { return goodProof(t, sf, "c=biws,r="+nonce) + "," },
			"malformed SCRAM message", "Garbage found at the end of client-final-message."},
		{"duplicate nonce attribute", func(t *testing.T, sf string) string { return goodProof(t, sf, "c=biws,r="+nonce+",r="+nonce) },
			"malformed SCRAM message", `Unexpected attribute "'r'" in client-final-message.`},
		{"wrong nonce", func(t *testing.T, sf string) string {
			return goodProof(t, sf, "c=biws,r=clientnonce"+strings.Repeat("B", 24))
		},
			"invalid SCRAM response", "Nonce does not match."},
		{"client nonce only", func(t *testing.T, sf string) string { return goodProof(t, sf, "c=biws,r=clientnonce") },
			"invalid SCRAM response", "Nonce does not match."},
		{"longer nonce", func(t *testing.T, sf string) string { return goodProof(t, sf, "c=biws,r="+nonce+"x") },
			"invalid SCRAM response", "Nonce does not match."},
		{"initial response again", func(*testing.T, string) string { return "SCRAM-SHA-256" },
			"malformed SCRAM message", `Expected attribute "c" but found "'S'".`},
		{"NUL", func(*testing.T, string) string { return "c=biws\x00" }, "malformed SCRAM message", "Message length does not match input length."},
		{"wrong password", func(t *testing.T, sf string) string {
			final, _ := testClientFinal(t, "wrong", "n=,r=clientnonce", sf, "c=biws,r="+nonce)
			return final
		}, "", ""},
		{"zero proof", func(*testing.T, string) string { return "c=biws,r=" + nonce + ",p=" + zeroProof }, "", ""},
		{"proof over another message", func(t *testing.T, sf string) string {
			final, _ := testClientFinal(t, testPassword, "n=,r=clientnonce", sf, "c=biws,r="+nonce+",x=1")
			return strings.Replace(final, ",x=1", "", 1)
		}, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			x := NewExchange(SCRAMSHA256, testUser, testSecret(t), true, nil, zeroReader{})
			out, done, err := scramRun(t, x, saslInitial("SCRAM-SHA-256", "n,,n=,r=clientnonce"),
				func(sf string) string { return tc.final(t, sf) })
			if out != nil || done {
				t.Fatalf("out=%q done=%v", out, done)
			}
			if tc.msg == "" {
				if !errors.Is(err, ErrFailed) {
					t.Fatalf("err = %v, want ErrFailed", err)
				}
			} else {
				wantProtocolError(t, err, tc.msg, tc.detail)
			}
			_, _, err = x.Next([]byte("c=biws"))
			wantProtocolError(t, err, "authentication exchange already finished", "")
		})
	}
}

// TestMethodSelection checks which mechanism runs, and that it fails, for the
// secrets a method cannot use and for unknown roles.
func TestMethodSelection(t *testing.T) {
	verifierOnly := testSecret(t)
	md5Only, err := ParseSecret(testUser, testMD5Secret(testUser, testPassword))
	if err != nil {
		t.Fatal(err)
	}
	plain := PlainSecret(testUser, testPassword)
	mockKey := []byte("mock key")
	mockSalt := func(user string, key []byte) string {
		return mockVerifier(user, key).salt
	}

	tests := []struct {
		name       string
		method     Method
		sec        Secret
		known      bool
		wantMethod Method
		wantOK     bool
		wantSalt   string // for SCRAM: the expected salt; "" to skip
	}{
		{"md5 with md5 hash", MD5, md5Only, true, MD5, true, ""},
		{"md5 with cleartext", MD5, plain, true, MD5, true, ""},
		{"md5 with verifier only", MD5, verifierOnly, true, SCRAMSHA256, true, base64.StdEncoding.EncodeToString(testSalt)},
		{"md5 with zero secret", MD5, Secret{}, true, MD5, false, ""},
		{"md5 unknown role", MD5, plain, false, MD5, false, ""},
		{"scram with verifier", SCRAMSHA256, verifierOnly, true, SCRAMSHA256, true, base64.StdEncoding.EncodeToString(testSalt)},
		{"scram with cleartext", SCRAMSHA256, plain, true, SCRAMSHA256, true, ""},
		{"scram with md5 hash only", SCRAMSHA256, md5Only, true, SCRAMSHA256, false, mockSalt(testUser, mockKey)},
		{"scram unknown role", SCRAMSHA256, plain, false, SCRAMSHA256, false, mockSalt(testUser, mockKey)},
		{"trust is not an exchange", Trust, plain, true, SCRAMSHA256, false, mockSalt(testUser, mockKey)},
		{"invalid method", Method(42), plain, true, SCRAMSHA256, false, mockSalt(testUser, mockKey)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			x := NewExchange(tc.method, testUser, tc.sec, tc.known, mockKey, nil)
			if x.Method() != tc.wantMethod {
				t.Fatalf("Method() = %v, want %v", x.Method(), tc.wantMethod)
			}
			var done bool
			var err error
			if tc.wantMethod == MD5 {
				_, salt := parseAuthMsg(t, x.Start())
				_, done, err = x.Next(testMD5Response(testUser, testPassword, []byte(salt)))
			} else {
				out, _, err1 := x.Next(saslInitial("SCRAM-SHA-256", "n,,n=,r=abc"))
				if err1 != nil {
					t.Fatal(err1)
				}
				_, sf := parseAuthMsg(t, out)
				nonce, salt, _ := parseServerFirst(t, sf)
				if tc.wantSalt != "" && base64.StdEncoding.EncodeToString(salt) != tc.wantSalt {
					t.Fatalf("salt %q, want %q", base64.StdEncoding.EncodeToString(salt), tc.wantSalt)
				}
				final, _ := testClientFinal(t, testPassword, "n=,r=abc", sf, "c=biws,r="+nonce)
				_, done, err = x.Next([]byte(final))
			}
			if tc.wantOK && (err != nil || !done) {
				t.Fatalf("done=%v err=%v, want success", done, err)
			}
			if !tc.wantOK && (done || !errors.Is(err, ErrFailed)) {
				t.Fatalf("done=%v err=%v, want ErrFailed", done, err)
			}
		})
	}
}

// TestMockSalt checks that an unknown role always gets the same salt, which
// depends on the user name and the mock key, like PostgreSQL's
// scram_mock_salt.
func TestMockSalt(t *testing.T) {
	salt := func(user string, key string) string {
		x := NewExchange(SCRAMSHA256, user, Secret{}, false, []byte(key), nil)
		out, _, err := x.Next(saslInitial("SCRAM-SHA-256", "n,,n=,r=abc"))
		if err != nil {
			t.Fatal(err)
		}
		_, sf := parseAuthMsg(t, out)
		_, s, iter := parseServerFirst(t, sf)
		if len(s) != 16 || iter != 4096 {
			t.Fatalf("mock salt of %d bytes, %d iterations", len(s), iter)
		}
		return string(s)
	}
	if s1, s2 := salt("bob", "k1"), salt("bob", "k1"); s1 != s2 {
		t.Fatal("mock salt is not stable")
	}
	if salt("bob", "k1") == salt("carol", "k1") {
		t.Fatal("mock salt does not depend on the user")
	}
	if salt("bob", "k1") == salt("bob", "k2") {
		t.Fatal("mock salt does not depend on the mock key")
	}
}

func TestRandomSourceFailure(t *testing.T) {
	readErr := errors.New("entropy exhausted")
	for _, m := range []Method{SCRAMSHA256, MD5} {
		x := NewExchange(m, testUser, PlainSecret(testUser, testPassword), true, nil, errReader{readErr})
		_ = x.Start()
		_, done, err := x.Next(saslInitial("SCRAM-SHA-256", "n,,n=,r=abc"))
		if done || !errors.Is(err, readErr) {
			t.Fatalf("%v: done=%v err=%v, want the reader's error", m, done, err)
		}
		_, _, err = x.Next(nil)
		wantProtocolError(t, err, "authentication exchange already finished", "")
	}
}

func TestUnexpectedMessage(t *testing.T) {
	x := NewExchange(SCRAMSHA256, testUser, testSecret(t), true, nil, nil)
	wantProtocolError(t, x.UnexpectedMessage('Q'), "expected SASL response, got message type 81", "")
	_, _, err := x.Next(saslInitial("SCRAM-SHA-256", "n,,n=,r=abc"))
	wantProtocolError(t, err, "authentication exchange already finished", "")

	x = NewExchange(MD5, testUser, PlainSecret(testUser, testPassword), true, nil, nil)
	wantProtocolError(t, x.UnexpectedMessage('X'), "expected password response, got message type 88", "")
}

func TestProtocolErrorString(t *testing.T) {
	if got := (&ProtocolError{Message: "m"}).Error(); got != "m" {
		t.Fatalf("Error() = %q", got)
	}
	if got := (&ProtocolError{Message: "m", Detail: "d."}).Error(); got != "m: d." {
		t.Fatalf("Error() = %q", got)
	}
}

func TestParseMethod(t *testing.T) {
	for _, m := range []Method{Trust, MD5, SCRAMSHA256} {
		got, err := ParseMethod(m.String())
		if err != nil || got != m {
			t.Fatalf("ParseMethod(%q) = %v, %v", m.String(), got, err)
		}
	}
	for _, s := range []string{"", "MD5", "scram", "password", "trust "} {
		m, err := ParseMethod(s)
		if err == nil {
			t.Fatalf("ParseMethod(%q) succeeded", s)
		}
		if m == Trust || m == MD5 || m == SCRAMSHA256 {
			t.Fatalf("ParseMethod(%q) error returned valid method %v", s, m)
		}
		if !strings.Contains(err.Error(), "trust, md5 and scram-sha-256") {
			t.Fatalf("error %q does not name the valid methods", err)
		}
	}
	if got := Method(7).String(); got != "auth.Method(7)" {
		t.Fatalf("Method(7).String() = %q", got)
	}
}
