package auth

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

// FuzzExchange feeds up to three arbitrary 'p' bodies to SCRAM and MD5
// exchanges of a role whose password is random (so the fuzzer cannot know it)
// and checks that Next never panics, never authenticates, keeps its output
// bounded and well-formed, reports only the documented errors without the
// secret, and refuses everything after the end.
func FuzzExchange(f *testing.F) {
	const user = "fuzz"
	password := rand.Text()
	sec := PlainSecret(user, password)
	md5Hash := testMD5Secret(user, password)
	mockKey := []byte("fuzz mock key")

	// Seeds: a well-formed SCRAM conversation (with the zero random source the
	// server nonce is zeroNonce) with a wrong proof, its variants, and MD5
	// responses.
	zeroProof := base64.StdEncoding.EncodeToString(make([]byte, 32))
	first := saslInitial("SCRAM-SHA-256", "n,,n=,r=abc")
	final := []byte("c=biws,r=abc" + zeroNonce + ",p=" + zeroProof)
	f.Add(first, final, []byte(nil))
	f.Add(saslInitialLen("SCRAM-SHA-256", -1, ""), []byte("n,,n=,r=abc"), final)
	f.Add(saslInitial("SCRAM-SHA-256", "y,,n=user,r=abc,x=ext"), []byte("c=eSws,r=abc"+zeroNonce+",e=1,p="+zeroProof), final)
	f.Add(saslInitial("SCRAM-SHA-256", "p=tls-server-end-point,,n=,r=abc"), final, final)
	f.Add(saslInitialLen("SCRAM-SHA-256", 1<<30, "n,,"), []byte{}, []byte{0})
	f.Add([]byte("md5"+strings.Repeat("0", 32)+"\x00"), []byte(md5Hash+"\x00"), []byte("\x00"))
	f.Add([]byte(password+"\x00"), first, final)

	f.Fuzz(func(t *testing.T, b1, b2, b3 []byte) {
		bodies := [][]byte{b1, b2, b3}
		for _, m := range []Method{SCRAMSHA256, MD5} {
			for _, known := range []bool{true, false} {
				x := NewExchange(m, user, sec, known, mockKey, zeroReader{})
				start := x.Start()
				if code, _ := parseAuthMsg(t, start); code != authReqSASL && code != authReqMD5 {
					t.Fatalf("Start code %d", code)
				}
				ended := false
				for i, b := range bodies {
					out, done, err := x.Next(b)
					if done {
						t.Fatalf("%v known=%v: body %d authenticated without the password", m, known, i)
					}
					if ended {
						var pe *ProtocolError
						if !errors.As(err, &pe) || out != nil {
							t.Fatalf("Next after the end: out=%q err=%v", out, err)
						}
						continue
					}
					if err != nil {
						var pe *ProtocolError
						if !errors.Is(err, ErrFailed) && !errors.As(err, &pe) {
							t.Fatalf("undocumented error %T %v", err, err)
						}
						if msg := err.Error(); strings.Contains(msg, password) || strings.Contains(msg, md5Hash[3:]) {
							t.Fatalf("error shows the secret: %q", msg)
						}
						if out != nil {
							t.Fatalf("output %q with error", out)
						}
						ended = true
						continue
					}
					if len(out) > len(b)+128 {
						t.Fatalf("output of %d bytes for a body of %d", len(out), len(b))
					}
					code, data := parseAuthMsg(t, out)
					if code != authReqSASLContinue {
						t.Fatalf("unexpected message code %d", code)
					}
					if strings.Contains(data, password) {
						t.Fatal("output shows the password")
					}
				}
			}
		}
	})
}

// TestFuzzSeedsWellFormed keeps the seed conversation honest: with the right
// proof instead of the zero one, it authenticates, so the fuzz seeds sit one
// step from success.
func TestFuzzSeedsWellFormed(t *testing.T) {
	x := NewExchange(SCRAMSHA256, testUser, testSecret(t), true, nil, zeroReader{})
	out, _, err := x.Next(saslInitial("SCRAM-SHA-256", "n,,n=,r=abc"))
	if err != nil {
		t.Fatal(err)
	}
	_, sf := parseAuthMsg(t, out)
	final, _ := testClientFinal(t, testPassword, "n=,r=abc", sf, "c=biws,r=abc"+zeroNonce)
	if _, done, err := x.Next([]byte(final)); !done || err != nil {
		t.Fatalf("done=%v err=%v", done, err)
	}
	if binary.BigEndian.Uint32(saslInitial("SCRAM-SHA-256", "n,,n=,r=abc")[14:]) != 11 {
		t.Fatal("saslInitial length field")
	}
}
