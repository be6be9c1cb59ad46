package auth

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestParseSecretKinds(t *testing.T) {
	md5Hash := testMD5Secret(testUser, testPassword)
	ver := testVerifier(testPassword, testSalt, 4096)
	tests := []struct {
		name          string
		field         string
		canMD5, canSC bool
	}{
		{"empty", "", false, false},
		{"md5 hash", md5Hash, true, false},
		{"md5 uppercase is cleartext (as PostgreSQL)", strings.ToUpper(md5Hash[:3]) + md5Hash[3:], true, true},
		{"md5 uppercase hex is cleartext (as PostgreSQL)", "md5" + strings.ToUpper(md5Hash[3:]), true, true},
		{"md5 too short is cleartext", md5Hash[:34], true, true},
		{"md5 too long is cleartext", md5Hash + "0", true, true},
		{"scram verifier", ver, false, true},
		{"cleartext", testPassword, true, true},
		{"cleartext with dollar", "SCRAM-SHA-1$x", true, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sec, err := ParseSecret(testUser, tc.field)
			if err != nil {
				t.Fatal(err)
			}
			if sec.CanMD5() != tc.canMD5 || sec.CanSCRAM() != tc.canSC {
				t.Fatalf("CanMD5=%v CanSCRAM=%v, want %v %v", sec.CanMD5(), sec.CanSCRAM(), tc.canMD5, tc.canSC)
			}
		})
	}

	// The parsed verifier is the one written.
	sec, err := ParseSecret(testUser, ver)
	if err != nil {
		t.Fatal(err)
	}
	if sec.scram.iterations != 4096 || sec.scram.salt != base64.StdEncoding.EncodeToString(testSalt) {
		t.Fatalf("parsed iterations %d salt %q", sec.scram.iterations, sec.scram.salt)
	}
	// A cleartext secret's MD5 hash is the user's.
	if got := PlainSecret(testUser, testPassword).md5Hex; "md5"+got != md5Hash {
		t.Fatalf("md5 of cleartext = %q, want %q", got, md5Hash)
	}
	if s := PlainSecret(testUser, ""); s.CanMD5() || s.CanSCRAM() {
		t.Fatal("empty password makes a usable secret")
	}
	// Two PlainSecrets of one password have different salts.
	if s1, s2 := PlainSecret(testUser, testPassword), PlainSecret(testUser, testPassword); s1.scram.salt == s2.scram.salt {
		t.Fatal("PlainSecret salt is not random")
	}
}

func TestParseSecretMalformedSCRAM(t *testing.T) {
	b64 := base64.StdEncoding.EncodeToString
	key := b64(bytes.Repeat([]byte{0x5a}, 32))
	salt := b64([]byte("saltsaltsaltsalt"))
	tests := []struct{ name, field string }{
		{"prefix only", "SCRAM-SHA-256$"},
		{"no keys", "SCRAM-SHA-256$4096:" + salt},
		{"no server key", "SCRAM-SHA-256$4096:" + salt + "$" + key},
		{"no salt separator", "SCRAM-SHA-256$4096" + salt + "$" + key + ":" + key},
		{"zero iterations", "SCRAM-SHA-256$0:" + salt + "$" + key + ":" + key},
		{"negative iterations", "SCRAM-SHA-256$-1:" + salt + "$" + key + ":" + key},
		{"plus iterations", "SCRAM-SHA-256$+4096:" + salt + "$" + key + ":" + key},
		{"huge iterations", "SCRAM-SHA-256$99999999999:" + salt + "$" + key + ":" + key},
		{"text iterations", "SCRAM-SHA-256$many:" + salt + "$" + key + ":" + key},
		{"empty salt", "SCRAM-SHA-256$4096:$" + key + ":" + key},
		{"bad salt", "SCRAM-SHA-256$4096:s3cr3t!!$" + key + ":" + key},
		{"unpadded salt", "SCRAM-SHA-256$4096:" + strings.TrimRight(b64([]byte("salt")), "=") + "$" + key + ":" + key},
		{"newline in salt", "SCRAM-SHA-256$4096:" + salt[:4] + "\n" + salt[4:] + "$" + key + ":" + key},
		{"short stored key", "SCRAM-SHA-256$4096:" + salt + "$" + b64(make([]byte, 31)) + ":" + key},
		{"bad server key", "SCRAM-SHA-256$4096:" + salt + "$" + key + ":" + strings.Repeat("*", 44)},
		{"extra field", "SCRAM-SHA-256$4096:" + salt + "$" + key + ":" + key + ":" + key},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sec, err := ParseSecret(testUser, tc.field)
			if err == nil {
				t.Fatal("no error")
			}
			if sec.CanMD5() || sec.CanSCRAM() {
				t.Fatal("error with a usable secret")
			}
			msg := err.Error()
			for _, part := range []string{salt, key, tc.field[len("SCRAM-SHA-256$"):]} {
				if part != "" && strings.Contains(msg, part) {
					t.Fatalf("error %q contains secret text %q", msg, part)
				}
			}
			if !strings.HasPrefix(msg, "auth: malformed SCRAM-SHA-256 secret") {
				t.Fatalf("error %q", msg)
			}
		})
	}
}

// TestSecretNeverPrinted checks every way of printing or logging a Secret.
func TestSecretNeverPrinted(t *testing.T) {
	const password = "hunter2-very-secret"
	md5Hash := testMD5Secret("bob", password)
	ver := testVerifier(password, testSalt, testIter)
	verSec, err := ParseSecret("bob", ver)
	if err != nil {
		t.Fatal(err)
	}
	md5Sec, err := ParseSecret("bob", md5Hash)
	if err != nil {
		t.Fatal(err)
	}
	secrets := map[string]Secret{
		"plain":    PlainSecret("bob", password),
		"md5":      md5Sec,
		"verifier": verSec,
	}
	_, stored, server := testKeys(password, testSalt, testIter)
	forbidden := []string{
		password, md5Hash, md5Hash[3:], ver,
		base64.StdEncoding.EncodeToString(stored), base64.StdEncoding.EncodeToString(server),
		base64.StdEncoding.EncodeToString(testSalt),
		fmt.Sprintf("%x", stored[:8]), fmt.Sprintf("%v", stored[:8]),
	}
	check := func(t *testing.T, what, out string) {
		t.Helper()
		for _, f := range forbidden {
			if strings.Contains(out, f) {
				t.Fatalf("%s shows secret material %q: %s", what, f, out)
			}
		}
		if !strings.Contains(out, "auth.Secret(redacted)") {
			t.Fatalf("%s does not say redacted: %s", what, out)
		}
	}
	for name, sec := range secrets {
		t.Run(name, func(t *testing.T) {
			check(t, "fmt", fmt.Sprintf("%v %+v %#v %s", sec, sec, sec, sec))
			check(t, "fmt other verbs", fmt.Sprintf("%q %x %X %d %10.3v", sec, sec, sec, sec, sec))
			check(t, "pointer", fmt.Sprintf("%v %+v %#v", &sec, &sec, &sec))
			type holder struct {
				Name string
				Sec  Secret
				Ptr  *Secret
			}
			h := holder{Name: "x", Sec: sec, Ptr: &sec}
			check(t, "struct", fmt.Sprintf("%v %+v %#v", h, h, h))
			check(t, "map", fmt.Sprintf("%v %+v %#v", secrets, secrets, secrets))
			check(t, "slice", fmt.Sprint([]Secret{sec}))
			check(t, "String", sec.String())
			check(t, "GoString", sec.GoString())

			var buf bytes.Buffer
			slog.New(slog.NewTextHandler(&buf, nil)).Info("login", "secret", sec, slog.Any("any", sec), "ptr", &sec)
			check(t, "slog text", buf.String())
			buf.Reset()
			slog.New(slog.NewJSONHandler(&buf, nil)).Info("login", "secret", sec, "group", slog.GroupValue(slog.Any("s", sec)))
			check(t, "slog json", buf.String())

			js, err := json.Marshal(h)
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range forbidden {
				if strings.Contains(string(js), f) {
					t.Fatalf("json shows secret material: %s", js)
				}
			}
		})
	}
}
