package wire

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// msg builds a regular message with type t and the given body.
func msg(t byte, body []byte) []byte {
	out := make([]byte, 0, HeaderLen+len(body))
	out = append(out, t)
	out = binary.BigEndian.AppendUint32(out, uint32(4+len(body)))
	return append(out, body...)
}

// rawHeader builds a header with an arbitrary length field.
func rawHeader(t byte, length uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{t}, length)
}

func TestPeekHeader(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		maxLen  int
		want    Header
		wantErr error
	}{
		{name: "sync", in: []byte{'S', 0, 0, 0, 4}, maxLen: MaxMessageLength, want: Header{Type: 'S', Len: 4}},
		{name: "query", in: AppendQuery(nil, "select 1"), maxLen: MaxMessageLength, want: Header{Type: 'Q', Len: 4 + len("select 1") + 1}},
		{name: "header only of a longer message", in: rawHeader('d', 100), maxLen: MaxMessageLength, want: Header{Type: 'd', Len: 100}},
		{name: "length equal to max", in: rawHeader('d', 1000), maxLen: 1000, want: Header{Type: 'd', Len: 1000}},
		{name: "max message length", in: rawHeader('d', MaxMessageLength), maxLen: MaxMessageLength, want: Header{Type: 'd', Len: MaxMessageLength}},
		{name: "length 0", in: rawHeader('Q', 0), maxLen: MaxMessageLength, want: Header{Type: 'Q', Len: 0}, wantErr: ErrInvalidLength},
		{name: "length 3", in: rawHeader('Q', 3), maxLen: MaxMessageLength, want: Header{Type: 'Q', Len: 3}, wantErr: ErrInvalidLength},
		{name: "length above max", in: rawHeader('d', 1001), maxLen: 1000, want: Header{Type: 'd', Len: 1001}, wantErr: ErrInvalidLength},
		{name: "length above MaxMessageLength", in: rawHeader('d', MaxMessageLength+1), maxLen: MaxMessageLength, want: Header{Type: 'd', Len: MaxMessageLength + 1}, wantErr: ErrInvalidLength},
		{name: "negative length 0xFFFFFFFF", in: rawHeader('d', 0xFFFFFFFF), maxLen: MaxMessageLength, want: Header{Type: 'd', Len: -1}, wantErr: ErrInvalidLength},
		{name: "negative length 0x80000000", in: rawHeader('d', 0x80000000), maxLen: MaxMessageLength, want: Header{Type: 'd', Len: -1 << 31}, wantErr: ErrInvalidLength},
		{name: "truncated header 1 byte", in: []byte{'Q'}, maxLen: MaxMessageLength, wantErr: io.ErrUnexpectedEOF},
		{name: "truncated header 4 bytes", in: []byte{'Q', 0, 0, 0}, maxLen: MaxMessageLength, wantErr: io.ErrUnexpectedEOF},
		{name: "clean EOF", in: nil, maxLen: MaxMessageLength, wantErr: io.EOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, oneByte := range []bool{false, true} {
				var src io.Reader = bytes.NewReader(tt.in)
				if oneByte {
					src = iotest.OneByteReader(src)
				}
				r := bufio.NewReaderSize(src, 16)
				h, err := PeekHeader(r, tt.maxLen)
				if tt.wantErr != nil {
					if !errors.Is(err, tt.wantErr) {
						t.Fatalf("oneByte=%v: err = %v, want %v", oneByte, err, tt.wantErr)
					}
					if tt.wantErr == io.EOF && err != io.EOF {
						t.Fatalf("clean EOF must be io.EOF itself, got %#v", err)
					}
				} else if err != nil {
					t.Fatalf("oneByte=%v: unexpected error %v", oneByte, err)
				}
				if h != tt.want {
					t.Fatalf("oneByte=%v: header = %+v, want %+v", oneByte, h, tt.want)
				}
				// PeekHeader must not consume anything.
				rest, rerr := io.ReadAll(r)
				if rerr != nil || !bytes.Equal(rest, tt.in) {
					t.Fatalf("oneByte=%v: after peek the reader yields %q (%v), want %q", oneByte, rest, rerr, tt.in)
				}
				if err == nil && h.BodyLen() != h.Len-4 {
					t.Fatalf("BodyLen = %d, want %d", h.BodyLen(), h.Len-4)
				}
			}
		})
	}
}

func TestPeekHeaderReadError(t *testing.T) {
	boom := errors.New("boom")
	r := bufio.NewReaderSize(iotest.ErrReader(boom), 16)
	if _, err := PeekHeader(r, MaxMessageLength); !errors.Is(err, boom) {
		t.Fatalf("err = %v, want %v", err, boom)
	}
	// Partial header followed by a non-EOF error: the error is passed through.
	r = bufio.NewReaderSize(io.MultiReader(bytes.NewReader([]byte{'Q', 0}), iotest.ErrReader(boom)), 16)
	if _, err := PeekHeader(r, MaxMessageLength); !errors.Is(err, boom) {
		t.Fatalf("partial: err = %v, want %v", err, boom)
	}
}

func TestPeekMessage(t *testing.T) {
	m := AppendReadyForQuery(nil, TxIdle)
	in := append(append([]byte(nil), m...), AppendSync(nil)...)
	r := bufio.NewReaderSize(iotest.OneByteReader(bytes.NewReader(in)), 16)
	h, err := PeekHeader(r, MaxMessageLength)
	if err != nil {
		t.Fatal(err)
	}
	p, err := PeekMessage(r, h)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, m) {
		t.Fatalf("PeekMessage = %q, want %q", p, m)
	}
	if _, err := r.Discard(len(p)); err != nil {
		t.Fatal(err)
	}
	h, err = PeekHeader(r, MaxMessageLength)
	if err != nil || h != (Header{Type: MsgSync, Len: 4}) {
		t.Fatalf("next header = %+v, %v", h, err)
	}

	// Truncated body.
	r = bufio.NewReaderSize(bytes.NewReader(m[:5]), 16)
	h, err = PeekHeader(r, MaxMessageLength)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := PeekMessage(r, h); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated: err = %v, want io.ErrUnexpectedEOF", err)
	}

	// Larger than the buffer: bufio.ErrBufferFull, as documented ("must fit").
	big := msg('E', bytes.Repeat([]byte{'x'}, 64))
	r = bufio.NewReaderSize(bytes.NewReader(big), 16)
	h, err = PeekHeader(r, MaxMessageLength)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := PeekMessage(r, h); !errors.Is(err, bufio.ErrBufferFull) {
		t.Fatalf("too big: err = %v, want bufio.ErrBufferFull", err)
	}
}

func TestForwardLargeMessageSmallBuffer(t *testing.T) {
	body := make([]byte, 100_003)
	for i := range body {
		body[i] = byte(i*7 + i>>8)
	}
	first := msg(MsgCopyData, body)
	second := AppendSync(nil)
	in := append(append([]byte(nil), first...), second...)

	for _, tc := range []struct {
		name string
		src  func() io.Reader
		wbuf int
	}{
		{"plain", func() io.Reader { return bytes.NewReader(in) }, 16},
		{"one byte reads", func() io.Reader { return iotest.OneByteReader(bytes.NewReader(in)) }, 16},
		{"half reads", func() io.Reader { return iotest.HalfReader(bytes.NewReader(in)) }, 4096},
		{"data with EOF", func() io.Reader { return iotest.DataErrReader(bytes.NewReader(in)) }, 16},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := bufio.NewReaderSize(tc.src(), 16)
			if r.Size() != 16 {
				t.Fatalf("reader size %d", r.Size())
			}
			var out bytes.Buffer
			w := bufio.NewWriterSize(&out, tc.wbuf)

			h, err := PeekHeader(r, MaxMessageLength)
			if err != nil {
				t.Fatal(err)
			}
			if h.Type != MsgCopyData || h.Len != 4+len(body) {
				t.Fatalf("header %+v", h)
			}
			if err := Forward(w, r, 1+h.Len); err != nil {
				t.Fatal(err)
			}
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out.Bytes(), first) {
				t.Fatalf("forwarded %d bytes, differ from the %d-byte message", out.Len(), len(first))
			}
			// Forward consumed exactly the first message: the next header is intact.
			h, err = PeekHeader(r, MaxMessageLength)
			if err != nil || h != (Header{Type: MsgSync, Len: 4}) {
				t.Fatalf("next header = %+v, %v", h, err)
			}
			if err := Forward(w, r, 1+h.Len); err != nil {
				t.Fatal(err)
			}
			w.Flush()
			if !bytes.Equal(out.Bytes(), in) {
				t.Fatal("whole stream differs")
			}
			if _, err := PeekHeader(r, MaxMessageLength); err != io.EOF {
				t.Fatalf("after the stream: err = %v, want io.EOF", err)
			}
		})
	}
}

func TestForwardEdgeCases(t *testing.T) {
	t.Run("zero bytes", func(t *testing.T) {
		r := bufio.NewReaderSize(iotest.ErrReader(errors.New("must not read")), 16)
		var out bytes.Buffer
		w := bufio.NewWriter(&out)
		if err := Forward(w, r, 0); err != nil {
			t.Fatal(err)
		}
		w.Flush()
		if out.Len() != 0 {
			t.Fatalf("wrote %d bytes", out.Len())
		}
	})
	t.Run("truncated", func(t *testing.T) {
		in := msg(MsgCopyData, bytes.Repeat([]byte{'z'}, 40))
		r := bufio.NewReaderSize(bytes.NewReader(in[:30]), 16)
		var out bytes.Buffer
		w := bufio.NewWriterSize(&out, 16)
		err := Forward(w, r, len(in))
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("err = %v, want io.ErrUnexpectedEOF", err)
		}
		w.Flush()
		// It streams: what arrived was passed on, and nothing else.
		if !bytes.Equal(out.Bytes(), in[:30]) {
			t.Fatalf("forwarded %q, want %q", out.Bytes(), in[:30])
		}
	})
	t.Run("empty source", func(t *testing.T) {
		r := bufio.NewReaderSize(bytes.NewReader(nil), 16)
		w := bufio.NewWriter(io.Discard)
		if err := Forward(w, r, 5); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("err = %v, want io.ErrUnexpectedEOF", err)
		}
	})
	t.Run("read error", func(t *testing.T) {
		boom := errors.New("boom")
		r := bufio.NewReaderSize(io.MultiReader(bytes.NewReader([]byte("abc")), iotest.ErrReader(boom)), 16)
		w := bufio.NewWriter(io.Discard)
		if err := Forward(w, r, 10); !errors.Is(err, boom) {
			t.Fatalf("err = %v, want %v", err, boom)
		}
	})
	t.Run("write error", func(t *testing.T) {
		boom := errors.New("write boom")
		in := bytes.Repeat([]byte{'q'}, 100)
		r := bufio.NewReaderSize(bytes.NewReader(in), 16)
		w := bufio.NewWriterSize(errWriter{boom}, 16)
		if err := Forward(w, r, len(in)); !errors.Is(err, boom) {
			t.Fatalf("err = %v, want %v", err, boom)
		}
	})
}

type errWriter struct{ err error }

func (e errWriter) Write([]byte) (int, error) { return 0, e.err }

func TestSkip(t *testing.T) {
	first := msg(MsgCopyData, bytes.Repeat([]byte{'a'}, 1000))
	in := append(append([]byte(nil), first...), AppendTerminate(nil)...)
	r := bufio.NewReaderSize(iotest.HalfReader(bytes.NewReader(in)), 16)
	h, err := PeekHeader(r, MaxMessageLength)
	if err != nil {
		t.Fatal(err)
	}
	if err := Skip(r, 1+h.Len); err != nil {
		t.Fatal(err)
	}
	h, err = PeekHeader(r, MaxMessageLength)
	if err != nil || h != (Header{Type: MsgTerminate, Len: 4}) {
		t.Fatalf("after skip: %+v, %v", h, err)
	}
	if err := Skip(r, 5); err != nil {
		t.Fatal(err)
	}
	if err := Skip(r, 0); err != nil {
		t.Fatalf("Skip(0) at EOF: %v", err)
	}
	if err := Skip(r, 1); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("Skip past EOF: err = %v, want io.ErrUnexpectedEOF", err)
	}

	// Truncated message.
	r = bufio.NewReaderSize(bytes.NewReader(first[:500]), 16)
	if err := Skip(r, len(first)); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated: err = %v, want io.ErrUnexpectedEOF", err)
	}

	// Non-EOF errors pass through.
	boom := errors.New("boom")
	r = bufio.NewReaderSize(iotest.ErrReader(boom), 16)
	if err := Skip(r, 3); !errors.Is(err, boom) {
		t.Fatalf("err = %v, want %v", err, boom)
	}
}

func TestValidFrontendType(t *testing.T) {
	// The message types PostgreSQL's SocketBackend accepts after startup
	// (src/backend/tcop/postgres.c). 'p' (password/SASL/GSS response) is only
	// valid during authentication and is therefore excluded.
	valid := map[byte]bool{
		'B': true, // Bind
		'C': true, // Close
		'd': true, // CopyData
		'c': true, // CopyDone
		'f': true, // CopyFail
		'D': true, // Describe
		'E': true, // Execute
		'H': true, // Flush
		'F': true, // FunctionCall
		'P': true, // Parse
		'Q': true, // Query
		'S': true, // Sync
		'X': true, // Terminate
	}
	n := 0
	for i := range 256 {
		b := byte(i)
		if got := ValidFrontendType(b); got != valid[b] {
			t.Errorf("ValidFrontendType(%q) = %v, want %v", b, got, valid[b])
		}
		if ValidFrontendType(b) {
			n++
		}
	}
	if n != len(valid) {
		t.Errorf("%d valid types, want %d", n, len(valid))
	}
	for _, c := range []byte{MsgBind, MsgClose, MsgCopyData, MsgCopyDone, MsgCopyFail, MsgDescribe,
		MsgExecute, MsgFlush, MsgFunctionCall, MsgParse, MsgQuery, MsgSync, MsgTerminate} {
		if !valid[c] {
			t.Errorf("constant %q not in the protocol's frontend set", c)
		}
	}
}
