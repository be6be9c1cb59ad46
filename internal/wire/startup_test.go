package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"testing"
	"testing/iotest"

	"github.com/jackc/pgx/v5/pgproto3"
)

// packet builds an untyped startup-phase packet: length, code, then rest.
func packet(code uint32, rest []byte) []byte {
	out := binary.BigEndian.AppendUint32(nil, uint32(8+len(rest)))
	out = binary.BigEndian.AppendUint32(out, code)
	return append(out, rest...)
}

// withLength builds a packet whose length field is set explicitly.
func withLength(length uint32, body []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, length), body...)
}

func cstrings(s ...string) []byte {
	var out []byte
	for _, x := range s {
		out = append(out, x...)
		out = append(out, 0)
	}
	return out
}

func TestReadStartup(t *testing.T) {
	key32 := bytes.Repeat([]byte{0xAB}, 32)
	key256 := bytes.Repeat([]byte{0xCD}, 256)
	params := []StartupParam{
		{"user", "alice"},
		{"database", "bench"},
		{"application_name", ""},
		{"options", "-c search_path=x"},
		{"user", "dup"}, // duplicates are kept, in order
	}
	tests := []struct {
		name    string
		in      []byte
		want    *Startup
		wantErr error
	}{
		{
			name: "startup 3.0 with params",
			in:   AppendStartup(nil, ProtocolVersion30, params...),
			want: &Startup{Code: ProtocolVersion30, Params: params},
		},
		{
			name: "startup 3.2",
			in:   AppendStartup(nil, 3<<16|2, StartupParam{"user", "u"}),
			want: &Startup{Code: 3<<16 | 2, Params: []StartupParam{{"user", "u"}}},
		},
		{
			name: "startup 3.0 without params",
			in:   packet(ProtocolVersion30, []byte{0}),
			want: &Startup{Code: ProtocolVersion30},
		},
		{
			name: "ssl request",
			in:   packet(SSLRequestCode, nil),
			want: &Startup{Code: SSLRequestCode},
		},
		{
			name: "gssenc request",
			in:   packet(GSSENCRequestCode, nil),
			want: &Startup{Code: GSSENCRequestCode},
		},
		{
			name: "cancel request 4-byte key",
			in:   AppendCancelRequest(nil, 4242, []byte{1, 2, 3, 4}),
			want: &Startup{Code: CancelRequestCode, CancelPID: 4242, CancelKey: []byte{1, 2, 3, 4}},
		},
		{
			name: "cancel request 3.2 32-byte key",
			in:   AppendCancelRequest(nil, 0xFFFFFFFF, key32),
			want: &Startup{Code: CancelRequestCode, CancelPID: 0xFFFFFFFF, CancelKey: key32},
		},
		{
			name: "cancel request 256-byte key",
			in:   AppendCancelRequest(nil, 7, key256),
			want: &Startup{Code: CancelRequestCode, CancelPID: 7, CancelKey: key256},
		},
		{
			name: "protocol 2.0",
			in:   packet(2<<16, cstrings("user", "x")),
			want: &Startup{Code: 2 << 16},
		},
		{
			name: "protocol 4.0, no body",
			in:   packet(4<<16, nil),
			want: &Startup{Code: 4 << 16},
		},

		{name: "length 0", in: withLength(0, nil), wantErr: ErrInvalidLength},
		{name: "length 4", in: withLength(4, nil), wantErr: ErrInvalidLength},
		{name: "length 7", in: withLength(7, []byte{0, 3, 0}), wantErr: ErrInvalidLength},
		{name: "negative length", in: withLength(0xFFFFFFFF, nil), wantErr: ErrInvalidLength},
		// PostgreSQL rejects a length field above MAX_STARTUP_PACKET_LENGTH+4.
		{name: "length 10005", in: withLength(10005, nil), wantErr: ErrInvalidLength},
		{name: "length 1<<31-1", in: withLength(1<<31-1, nil), wantErr: ErrInvalidLength},
		{name: "missing terminator", in: packet(ProtocolVersion30, cstrings("user", "alice")), wantErr: ErrInvalidStartup},
		{name: "odd key/value", in: packet(ProtocolVersion30, append(cstrings("user", "alice", "database"), 0)), wantErr: ErrInvalidStartup},
		{name: "unterminated name", in: packet(ProtocolVersion30, []byte("user")), wantErr: ErrInvalidStartup},
		{name: "unterminated value", in: packet(ProtocolVersion30, append(cstrings("user"), "alice"...)), wantErr: ErrInvalidStartup},
		{name: "data after terminator", in: packet(ProtocolVersion30, append(cstrings("user", "a"), 0, 'x')), wantErr: ErrInvalidStartup},
		{name: "double terminator", in: packet(ProtocolVersion30, []byte{0, 0}), wantErr: ErrInvalidStartup},
		{name: "ssl request with extra bytes", in: packet(SSLRequestCode, []byte{0}), wantErr: ErrInvalidStartup},
		{name: "gssenc request with extra bytes", in: packet(GSSENCRequestCode, []byte{0, 0, 0, 0}), wantErr: ErrInvalidStartup},
		{name: "cancel request without key", in: packet(CancelRequestCode, []byte{0, 0, 0, 1}), wantErr: ErrInvalidStartup},
		{name: "cancel request 3-byte key", in: packet(CancelRequestCode, []byte{0, 0, 0, 1, 9, 9, 9}), wantErr: ErrInvalidStartup},
		{name: "cancel request 257-byte key", in: AppendCancelRequest(nil, 1, make([]byte, 257)), wantErr: ErrInvalidStartup},
		{name: "cancel request bare", in: packet(CancelRequestCode, nil), wantErr: ErrInvalidStartup},

		{name: "clean EOF", in: nil, wantErr: io.EOF},
		{name: "truncated length", in: []byte{0, 0}, wantErr: io.ErrUnexpectedEOF},
		{name: "truncated body", in: AppendStartup(nil, ProtocolVersion30, params...)[:20], wantErr: io.ErrUnexpectedEOF},
		{name: "length only", in: withLength(8, nil), wantErr: io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, oneByte := range []bool{false, true} {
				var r io.Reader = bytes.NewReader(tt.in)
				if oneByte {
					r = iotest.OneByteReader(r)
				}
				got, err := ReadStartup(r)
				if tt.wantErr != nil {
					if !errors.Is(err, tt.wantErr) {
						t.Fatalf("oneByte=%v: err = %v, want %v", oneByte, err, tt.wantErr)
					}
					if tt.wantErr == io.EOF && err != io.EOF {
						t.Fatalf("clean EOF must be io.EOF itself, got %#v", err)
					}
					if got != nil {
						t.Fatalf("oneByte=%v: got %+v with error", oneByte, got)
					}
					continue
				}
				if err != nil {
					t.Fatalf("oneByte=%v: unexpected error %v", oneByte, err)
				}
				if !reflect.DeepEqual(got, tt.want) {
					t.Fatalf("oneByte=%v:\n got  %+v\n want %+v", oneByte, got, tt.want)
				}
			}
		})
	}
}

func TestReadStartupConsumesExactlyOnePacket(t *testing.T) {
	first := packet(SSLRequestCode, nil)
	second := AppendStartup(nil, ProtocolVersion30, StartupParam{"user", "bob"})
	r := bytes.NewReader(append(append([]byte(nil), first...), second...))
	s, err := ReadStartup(r)
	if err != nil || s.Code != SSLRequestCode {
		t.Fatalf("first: %+v, %v", s, err)
	}
	s, err = ReadStartup(r)
	if err != nil || s.Param("user") != "bob" {
		t.Fatalf("second: %+v, %v", s, err)
	}
	if _, err := ReadStartup(r); err != io.EOF {
		t.Fatalf("third: err = %v, want io.EOF", err)
	}
}

func TestReadStartupMaxLength(t *testing.T) {
	// Exactly MaxStartupPacketLength is accepted.
	val := string(bytes.Repeat([]byte{'v'}, MaxStartupPacketLength-8-len("options")-3))
	in := AppendStartup(nil, ProtocolVersion30, StartupParam{"options", val})
	if len(in) != MaxStartupPacketLength {
		t.Fatalf("packet is %d bytes", len(in))
	}
	s, err := ReadStartup(bytes.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if s.Param("options") != val {
		t.Fatal("value differs")
	}
	// PostgreSQL (ProcessStartupPacket) compares the length without its own 4 bytes
	// against MAX_STARTUP_PACKET_LENGTH, so a 10005-byte packet is the first one
	// it rejects. (Lengths 10001..10004 are deliberately not pinned here.)
	in = AppendStartup(nil, ProtocolVersion30, StartupParam{"options", val + "vvvvv"})
	if len(in) != MaxStartupPacketLength+5 {
		t.Fatalf("packet is %d bytes", len(in))
	}
	if _, err := ReadStartup(bytes.NewReader(in)); !errors.Is(err, ErrInvalidLength) {
		t.Fatalf("err = %v, want ErrInvalidLength", err)
	}
}

func TestReadStartupReadError(t *testing.T) {
	boom := errors.New("boom")
	in := AppendStartup(nil, ProtocolVersion30, StartupParam{"user", "x"})
	for _, n := range []int{0, 2, 4, 10} {
		r := io.MultiReader(bytes.NewReader(in[:n]), iotest.ErrReader(boom))
		if _, err := ReadStartup(r); !errors.Is(err, boom) {
			t.Errorf("after %d bytes: err = %v, want %v", n, err, boom)
		}
	}
}

func TestParseStartup(t *testing.T) {
	for _, body := range [][]byte{nil, {}, {0, 3, 0}} {
		if _, err := ParseStartup(body); !errors.Is(err, ErrInvalidStartup) {
			t.Errorf("ParseStartup(%v): err = %v, want ErrInvalidStartup", body, err)
		}
	}
	body := AppendStartup(nil, ProtocolVersion30, StartupParam{"a", "1"}, StartupParam{"b", "2"})[4:]
	s, err := ParseStartup(body)
	if err != nil {
		t.Fatal(err)
	}
	want := []StartupParam{{"a", "1"}, {"b", "2"}}
	if !reflect.DeepEqual(s.Params, want) {
		t.Fatalf("params %+v", s.Params)
	}
	if s.Major() != 3 || s.Minor() != 0 {
		t.Fatalf("version %d.%d", s.Major(), s.Minor())
	}
	if s.Param("b") != "2" || s.Param("c") != "" {
		t.Fatal("Param lookup")
	}
	// The cancel key does not alias the input.
	in := AppendCancelRequest(nil, 1, []byte{1, 2, 3, 4})
	s, err = ParseStartup(in[4:])
	if err != nil {
		t.Fatal(err)
	}
	in[len(in)-1] = 99
	if s.CancelKey[3] != 4 {
		t.Fatal("CancelKey aliases the packet buffer")
	}
	// Protocol 2.0 packets carry a fixed-size body; any body is returned undecoded.
	s, err = ParseStartup(append(binary.BigEndian.AppendUint32(nil, 2<<16), make([]byte, 292)...))
	if err != nil || s.Major() != 2 || s.Minor() != 0 || s.Params != nil {
		t.Fatalf("2.0: %+v, %v", s, err)
	}
	// Param on the first of duplicated names.
	s, err = ParseStartup(AppendStartup(nil, ProtocolVersion30, StartupParam{"user", "a"}, StartupParam{"user", "b"})[4:])
	if err != nil || s.Param("user") != "a" {
		t.Fatalf("dup: %+v, %v", s, err)
	}
}

func TestStartupRoundTrip(t *testing.T) {
	params := []StartupParam{
		{"user", "postgres"},
		{"database", "postgres"},
		{"client_encoding", "UTF8"},
		{"_pq_.command_trace", "on"},
		{"empty", ""},
		{"ユーザー", "値"},
	}
	for _, code := range []uint32{ProtocolVersion30, 3<<16 | 2} {
		in := AppendStartup([]byte("prefix"), code, params...)
		if string(in[:6]) != "prefix" {
			t.Fatal("AppendStartup clobbered dst")
		}
		in = in[6:]
		if got := binary.BigEndian.Uint32(in); int(got) != len(in) {
			t.Fatalf("length field %d, packet %d bytes", got, len(in))
		}
		s, err := ReadStartup(bytes.NewReader(in))
		if err != nil {
			t.Fatal(err)
		}
		if s.Code != code || !reflect.DeepEqual(s.Params, params) {
			t.Fatalf("round trip: %+v", s)
		}

		// pgproto3 decodes the same packet to the same parameters.
		be := pgproto3.NewBackend(bytes.NewReader(in), io.Discard)
		m, err := be.ReceiveStartupMessage()
		if err != nil {
			t.Fatal(err)
		}
		sm, ok := m.(*pgproto3.StartupMessage)
		if !ok {
			t.Fatalf("pgproto3 decoded %T", m)
		}
		if sm.ProtocolVersion != code {
			t.Fatalf("pgproto3 version %d", sm.ProtocolVersion)
		}
		wantMap := map[string]string{}
		for _, p := range params {
			wantMap[p.Name] = p.Value
		}
		if !reflect.DeepEqual(sm.Parameters, wantMap) {
			t.Fatalf("pgproto3 params %v, want %v", sm.Parameters, wantMap)
		}

		// And pgproto3's encoding is read back by ReadStartup.
		enc, err := (&pgproto3.StartupMessage{ProtocolVersion: code, Parameters: wantMap}).Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		s, err = ReadStartup(bytes.NewReader(enc))
		if err != nil {
			t.Fatal(err)
		}
		for name, value := range wantMap {
			if s.Param(name) != value {
				t.Fatalf("pgproto3-encoded %q = %q, want %q", name, s.Param(name), value)
			}
		}
	}

	// Non-3.x codes are encoded without the final terminator.
	for _, code := range []uint32{SSLRequestCode, GSSENCRequestCode, 2 << 16} {
		in := AppendStartup(nil, code)
		if len(in) != 8 {
			t.Fatalf("code %d: %d bytes", code, len(in))
		}
		s, err := ReadStartup(bytes.NewReader(in))
		if err != nil || s.Code != code {
			t.Fatalf("code %d: %+v, %v", code, s, err)
		}
	}
	ssl, _ := (&pgproto3.SSLRequest{}).Encode(nil)
	if !bytes.Equal(AppendStartup(nil, SSLRequestCode), ssl) {
		t.Fatal("SSLRequest differs from pgproto3's")
	}
	gss, _ := (&pgproto3.GSSEncRequest{}).Encode(nil)
	if !bytes.Equal(AppendStartup(nil, GSSENCRequestCode), gss) {
		t.Fatal("GSSENCRequest differs from pgproto3's")
	}
}

func TestCancelRequestRoundTrip(t *testing.T) {
	for _, key := range [][]byte{
		{0, 0, 0, 0},
		{0xde, 0xad, 0xbe, 0xef},
		bytes.Repeat([]byte{7}, 32),
		bytes.Repeat([]byte{8}, 256),
	} {
		in := AppendCancelRequest(nil, 0x01020304, key)
		s, err := ReadStartup(bytes.NewReader(in))
		if err != nil {
			t.Fatalf("key %d bytes: %v", len(key), err)
		}
		if s.Code != CancelRequestCode || s.CancelPID != 0x01020304 || !bytes.Equal(s.CancelKey, key) || s.Params != nil {
			t.Fatalf("key %d bytes: %+v", len(key), s)
		}
		want, err := (&pgproto3.CancelRequest{ProcessID: 0x01020304, SecretKey: key}).Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(in, want) {
			t.Fatalf("key %d bytes: encoding differs from pgproto3's\n got  %x\n want %x", len(key), in, want)
		}
	}
}
