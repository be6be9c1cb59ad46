package auth

import "testing"

// BenchmarkSCRAMExchange measures the server side of one complete
// SCRAM-SHA-256 exchange with a PlainSecret: NewExchange, Start, the
// client-first and the client-final messages (the client's messages are made
// once, outside the loop; the zero random source keeps the server nonce
// fixed so that one proof serves every iteration).
func BenchmarkSCRAMExchange(b *testing.B) {
	const password = "bench password"
	sec := PlainSecret("bench", password)
	first := saslInitial("SCRAM-SHA-256", "n,,n=,r=benchclientnonce")
	x := NewExchange(SCRAMSHA256, "bench", sec, true, nil, zeroReader{})
	out, _, err := x.Next(first)
	if err != nil {
		b.Fatal(err)
	}
	_, sf := parseAuthMsg(b, out)
	final, _ := testClientFinal(b, password, "n=,r=benchclientnonce", sf, "c=biws,r=benchclientnonce"+zeroNonce)
	finalBody := []byte(final)

	b.ReportAllocs()
	for b.Loop() {
		x := NewExchange(SCRAMSHA256, "bench", sec, true, nil, zeroReader{})
		_ = x.Start()
		if _, _, err := x.Next(first); err != nil {
			b.Fatal(err)
		}
		if _, done, err := x.Next(finalBody); !done || err != nil {
			b.Fatalf("done=%v err=%v", done, err)
		}
	}
}

// BenchmarkMD5Exchange measures the server side of one MD5 exchange.
func BenchmarkMD5Exchange(b *testing.B) {
	sec := PlainSecret("bench", "bench password")
	resp := testMD5Response("bench", "bench password", make([]byte, 4))
	b.ReportAllocs()
	for b.Loop() {
		x := NewExchange(MD5, "bench", sec, true, nil, zeroReader{})
		_ = x.Start()
		if _, done, err := x.Next(resp); !done || err != nil {
			b.Fatalf("done=%v err=%v", done, err)
		}
	}
}

// BenchmarkPlainSecret measures the one-time cost of a cleartext password: a
// 4096-iteration PBKDF2.
func BenchmarkPlainSecret(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = PlainSecret("bench", "bench password")
	}
}
