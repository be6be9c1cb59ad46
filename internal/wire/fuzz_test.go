package wire

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"testing"
	"testing/iotest"

	"github.com/jackc/pgx/v5/pgproto3"
)

// startupSeeds are the in-code seeds of FuzzReadStartup; testdata/fuzz/FuzzReadStartup
// holds the same kinds of packets as files.
func startupSeeds() [][]byte {
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	return [][]byte{
		AppendStartup(nil, ProtocolVersion30, StartupParam{"user", "postgres"}, StartupParam{"database", "bench"}),
		AppendStartup(nil, 3<<16|2, StartupParam{"user", "u"}, StartupParam{"options", "-c x=y"}, StartupParam{"_pq_.opt", "1"}),
		AppendStartup(nil, SSLRequestCode),
		AppendStartup(nil, GSSENCRequestCode),
		AppendCancelRequest(nil, 1234, []byte{1, 2, 3, 4}),
		AppendCancelRequest(nil, 99, bytes.Repeat([]byte{0x5a}, 32)),
		packet(2<<16, cstrings("user", "v2")),
		packet(ProtocolVersion30, cstrings("user", "alice")),                   // missing terminator
		packet(ProtocolVersion30, append(cstrings("user", "a", "db"), 0)),      // odd key/value
		packet(ProtocolVersion30, append(cstrings("user"), "unterminated"...)), // unterminated value
		withLength(7, []byte{0, 3, 0}),
		withLength(0xFFFFFFFF, nil),
		withLength(10001, make([]byte, 16)),
		AppendStartup(nil, ProtocolVersion30, StartupParam{"user", "x"})[:12], // truncated body
		cat(AppendStartup(nil, SSLRequestCode), AppendStartup(nil, ProtocolVersion30, StartupParam{"user", "x"})),
		{},
		{0, 0},
	}
}

func FuzzReadStartup(f *testing.F) {
	for _, s := range startupSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ReadStartup(bytes.NewReader(data))

		// Reading byte by byte gives the same outcome.
		s1, err1 := ReadStartup(iotest.OneByteReader(bytes.NewReader(data)))
		if (err == nil) != (err1 == nil) || !reflect.DeepEqual(s, s1) {
			t.Fatalf("one-byte reader differs: %+v, %v vs %+v, %v", s1, err1, s, err)
		}

		if err != nil {
			if s != nil {
				t.Fatalf("non-nil Startup %+v with error %v", s, err)
			}
			switch {
			case err == io.EOF:
				if len(data) != 0 {
					t.Fatalf("io.EOF with %d bytes of input", len(data))
				}
			case err == io.ErrUnexpectedEOF:
				if len(data) >= 4 && int(binary.BigEndian.Uint32(data)) <= len(data) {
					t.Fatalf("io.ErrUnexpectedEOF with the whole packet present")
				}
			case errors.Is(err, ErrInvalidLength):
				if n := int32(binary.BigEndian.Uint32(data)); n >= 8 && n <= MaxStartupPacketLength {
					t.Fatalf("ErrInvalidLength for length %d: %v", n, err)
				}
			case errors.Is(err, ErrInvalidStartup):
			default:
				t.Fatalf("unexpected error class: %v (%T)", err, err)
			}
			return
		}

		length := int(binary.BigEndian.Uint32(data))
		// PostgreSQL bounds the length without its own 4 bytes: 8..MaxStartupPacketLength+4.
		if length < 8 || length > MaxStartupPacketLength+4 || length > len(data) {
			t.Fatalf("accepted a packet with length field %d (%d bytes of input)", length, len(data))
		}
		pkt := data[:length]

		// ParseStartup on the body agrees with ReadStartup.
		ps, perr := ParseStartup(pkt[4:])
		if perr != nil || !reflect.DeepEqual(ps, s) {
			t.Fatalf("ParseStartup = %+v, %v; ReadStartup = %+v", ps, perr, s)
		}

		var enc []byte
		exact := true
		switch s.Code {
		case CancelRequestCode:
			if s.Params != nil {
				t.Fatalf("cancel request with params: %+v", s)
			}
			enc = AppendCancelRequest(nil, s.CancelPID, s.CancelKey)
		case SSLRequestCode, GSSENCRequestCode:
			if s.Params != nil || s.CancelKey != nil {
				t.Fatalf("request with payload: %+v", s)
			}
			enc = AppendStartup(nil, s.Code)
		default:
			if s.CancelKey != nil || s.CancelPID != 0 {
				t.Fatalf("startup message with cancel fields: %+v", s)
			}
			if s.Major() != 3 {
				if s.Params != nil {
					t.Fatalf("params decoded for protocol %d: %+v", s.Major(), s)
				}
				exact = false // the body of other versions is not decoded
			}
			for _, p := range s.Params {
				if p.Name == "" || bytes.IndexByte([]byte(p.Name), 0) >= 0 || bytes.IndexByte([]byte(p.Value), 0) >= 0 {
					t.Fatalf("bad param %q=%q", p.Name, p.Value)
				}
			}
			enc = AppendStartup(nil, s.Code, s.Params...)
		}
		if exact && !bytes.Equal(enc, pkt) {
			t.Fatalf("re-encoding differs:\n in  %x\n out %x", pkt, enc)
		}
		s2, err := ReadStartup(bytes.NewReader(enc))
		if err != nil {
			t.Fatalf("re-read of %x: %v", enc, err)
		}
		if !reflect.DeepEqual(s2, s) {
			t.Fatalf("re-read %+v, want %+v", s2, s)
		}

		// pgproto3 agrees on protocol 3.0/3.2 messages with parameters (it rejects
		// a parameterless one, and keeps the last of duplicated names).
		if (s.Code == ProtocolVersion30 || s.Code == pgproto3.ProtocolVersion32) && len(s.Params) > 0 {
			m, err := pgproto3.NewBackend(bytes.NewReader(pkt), io.Discard).ReceiveStartupMessage()
			if err != nil {
				t.Fatalf("pgproto3 rejects %x: %v", pkt, err)
			}
			want := map[string]string{}
			for _, p := range s.Params {
				want[p.Name] = p.Value
			}
			if got := m.(*pgproto3.StartupMessage).Parameters; !reflect.DeepEqual(got, want) {
				t.Fatalf("pgproto3 params %q, want %q", got, want)
			}
		}
	})
}

// streamSeeds are the in-code seeds of FuzzMessageStream.
func streamSeeds() [][]byte {
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	var ext []byte
	for _, m := range []pgproto3.FrontendMessage{
		&pgproto3.Parse{Name: "s1", Query: "SELECT abalance FROM pgbench_accounts WHERE aid = $1", ParameterOIDs: []uint32{23}},
		&pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("42")}},
		&pgproto3.Describe{ObjectType: 'P'},
		&pgproto3.Execute{},
		&pgproto3.Sync{},
	} {
		ext, _ = m.Encode(ext)
	}
	return [][]byte{
		pgbenchResponse(),
		ext,
		cat(AppendError(nil, SeverityError, CodeQueryCanceled, "canceled", "detail"), AppendReadyForQuery(nil, TxFailed)),
		cat(AppendQuery(nil, "select 1"), AppendSync(nil), AppendTerminate(nil)),
		msg(MsgCopyData, bytes.Repeat([]byte("0123456789"), 10)), // several reader buffers long
		AppendStartup(nil, ProtocolVersion30, StartupParam{"user", "x"}),
		AppendStartup(nil, SSLRequestCode),
		AppendCancelRequest(nil, 1, []byte{1, 2, 3, 4}),
		cat(AppendSync(nil), msg(MsgCopyData, []byte("truncated body"))[:10]),
		cat(AppendSync(nil), rawHeader(MsgQuery, 0xFFFFFFFF), AppendSync(nil)),
		cat(AppendSync(nil), rawHeader(MsgQuery, 3)),
		cat(AppendSync(nil), rawHeader(MsgCopyData, 1<<20+1)),
		cat(AppendSync(nil), []byte{'Q', 0, 0}),
		{},
	}
}

// wholePrefix returns the length of the longest prefix of data made of whole
// messages whose length fields are within [4, maxLen], and the error a reader must
// stop with there.
func wholePrefix(data []byte, maxLen int) (int, error) {
	i := 0
	for {
		rest := len(data) - i
		if rest == 0 {
			return i, io.EOF
		}
		if rest < HeaderLen {
			return i, io.ErrUnexpectedEOF
		}
		n := int(int32(binary.BigEndian.Uint32(data[i+1:])))
		if n < 4 || n > maxLen {
			return i, ErrInvalidLength
		}
		if 1+n > rest {
			return i, io.ErrUnexpectedEOF
		}
		i += 1 + n
	}
}

func FuzzMessageStream(f *testing.F) {
	for _, s := range streamSeeds() {
		f.Add(s)
	}
	f.Fuzz(streamCheck)
}

// streamCheck is the body of FuzzMessageStream.
func streamCheck(t *testing.T, data []byte) {
	const maxLen = 1 << 20
	want, wantErr := wholePrefix(data, maxLen)
	for _, src := range []struct {
		name string
		r    io.Reader
	}{
		{"plain", bytes.NewReader(data)},
		{"one byte", iotest.OneByteReader(bytes.NewReader(data))},
		{"data with EOF", iotest.DataErrReader(bytes.NewReader(data))},
	} {
		r := bufio.NewReaderSize(src.r, 16)
		var out bytes.Buffer
		w := bufio.NewWriterSize(&out, 16)
		committed := 0
		var err error
		for iter := 0; ; iter++ {
			if iter > len(data)/HeaderLen {
				t.Fatalf("%s: %d iterations over %d bytes", src.name, iter, len(data))
			}
			var h Header
			if h, err = PeekHeader(r, maxLen); err != nil {
				break
			}
			if h.Len < 4 || h.Len > maxLen {
				t.Fatalf("%s: PeekHeader accepted length %d", src.name, h.Len)
			}
			if err = Forward(w, r, 1+h.Len); err != nil {
				break
			}
			if ferr := w.Flush(); ferr != nil {
				t.Fatal(ferr)
			}
			committed = out.Len()
		}
		if ferr := w.Flush(); ferr != nil {
			t.Fatal(ferr)
		}
		if committed != want || !bytes.Equal(out.Bytes()[:committed], data[:want]) {
			t.Fatalf("%s: forwarded %d bytes of whole messages, want %d", src.name, committed, want)
		}
		// A truncated message streams what arrived; nothing else is ever written.
		if !bytes.HasPrefix(data, out.Bytes()) {
			t.Fatalf("%s: forwarded bytes are not a prefix of the input", src.name)
		}
		switch {
		case wantErr == io.EOF:
			if err != io.EOF {
				t.Fatalf("%s: err = %v, want io.EOF", src.name, err)
			}
		case wantErr == io.ErrUnexpectedEOF:
			if err != io.ErrUnexpectedEOF {
				t.Fatalf("%s: err = %v, want io.ErrUnexpectedEOF", src.name, err)
			}
			if len(data)-want >= HeaderLen {
				if !bytes.Equal(out.Bytes(), data) {
					t.Fatalf("%s: truncated body: forwarded %d of %d bytes", src.name, out.Len(), len(data))
				}
			} else if out.Len() != committed {
				t.Fatalf("%s: bytes of a truncated header were forwarded", src.name)
			}
		case wantErr == ErrInvalidLength:
			if !errors.Is(err, ErrInvalidLength) {
				t.Fatalf("%s: err = %v, want ErrInvalidLength", src.name, err)
			}
			if out.Len() != committed {
				t.Fatalf("%s: bytes of an invalid message were forwarded", src.name)
			}
		}
	}
}
