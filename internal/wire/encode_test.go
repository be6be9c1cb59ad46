package wire

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"reflect"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// decodeBackend decodes every server-to-client message in b with pgproto3 and
// checks the stream is consumed exactly.
func decodeBackend(t *testing.T, b []byte) []pgproto3.BackendMessage {
	t.Helper()
	checkFraming(t, b)
	fe := pgproto3.NewFrontend(bytes.NewReader(b), io.Discard)
	var out []pgproto3.BackendMessage
	for {
		m, err := fe.Receive()
		if err == io.ErrUnexpectedEOF && len(out) > 0 {
			// pgproto3 reports the end of a stream between messages this way.
			return out
		}
		if err != nil {
			t.Fatalf("pgproto3 Frontend.Receive: %v (after %d messages of %x)", err, len(out), b)
		}
		out = append(out, cloneBackend(t, m))
	}
}

// decodeFrontend decodes every client-to-server message in b with pgproto3.
func decodeFrontend(t *testing.T, b []byte) []pgproto3.FrontendMessage {
	t.Helper()
	checkFraming(t, b)
	be := pgproto3.NewBackend(bytes.NewReader(b), io.Discard)
	var out []pgproto3.FrontendMessage
	for {
		m, err := be.Receive()
		if err == io.ErrUnexpectedEOF && len(out) > 0 {
			return out
		}
		if err != nil {
			t.Fatalf("pgproto3 Backend.Receive: %v (after %d messages of %x)", err, len(out), b)
		}
		out = append(out, cloneFrontend(t, m))
	}
}

// checkFraming walks b with PeekHeader/Forward and checks every length field
// frames a whole message ending exactly at the end of b.
func checkFraming(t *testing.T, b []byte) {
	t.Helper()
	r := bufio.NewReaderSize(bytes.NewReader(b), 16)
	var out bytes.Buffer
	w := bufio.NewWriter(&out)
	for {
		h, err := PeekHeader(r, MaxMessageLength)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("PeekHeader: %v", err)
		}
		if err := Forward(w, r, 1+h.Len); err != nil {
			t.Fatalf("Forward: %v", err)
		}
	}
	w.Flush()
	if !bytes.Equal(out.Bytes(), b) {
		t.Fatal("framing does not reproduce the stream")
	}
}

// pgproto3 reuses message structs between Receive calls: copy what we keep.
func cloneBackend(t *testing.T, m pgproto3.BackendMessage) pgproto3.BackendMessage {
	t.Helper()
	switch m := m.(type) {
	case *pgproto3.ErrorResponse:
		c := *m
		return &c
	case *pgproto3.AuthenticationOk:
		c := *m
		return &c
	case *pgproto3.ParameterStatus:
		c := *m
		return &c
	case *pgproto3.BackendKeyData:
		c := *m
		c.SecretKey = append([]byte(nil), m.SecretKey...)
		return &c
	case *pgproto3.ReadyForQuery:
		c := *m
		return &c
	case *pgproto3.NegotiateProtocolVersion:
		c := *m
		c.UnrecognizedOptions = append([]string(nil), m.UnrecognizedOptions...)
		return &c
	}
	t.Fatalf("unexpected backend message %T", m)
	return nil
}

func cloneFrontend(t *testing.T, m pgproto3.FrontendMessage) pgproto3.FrontendMessage {
	t.Helper()
	switch m := m.(type) {
	case *pgproto3.Query:
		c := *m
		return &c
	case *pgproto3.Sync:
		c := *m
		return &c
	case *pgproto3.Terminate:
		c := *m
		return &c
	case *pgproto3.CopyFail:
		c := *m
		return &c
	}
	t.Fatalf("unexpected frontend message %T", m)
	return nil
}

func TestAppendError(t *testing.T) {
	tests := []struct {
		severity, code, message, detail string
	}{
		{SeverityFatal, CodeTooManyConnections, "too many clients", ""},
		{SeverityError, CodeQueryCanceled, "canceling statement due to user request", "pool timeout after 5s"},
		{SeverityFatal, CodeProtocolViolation, "invalid frontend message type 0", "byte 0x00 is not a message type"},
		{SeverityError, CodeFeatureNotSupported, "", ""},
		{SeverityError, CodeIdleInTransactionTimout, "ünïcödé ✓", "détail"},
	}
	for _, tt := range tests {
		b := AppendError([]byte{1, 2, 3}, tt.severity, tt.code, tt.message, tt.detail)
		if !bytes.Equal(b[:3], []byte{1, 2, 3}) {
			t.Fatal("AppendError clobbered dst")
		}
		b = b[3:]
		msgs := decodeBackend(t, b)
		if len(msgs) != 1 {
			t.Fatalf("%d messages", len(msgs))
		}
		got, ok := msgs[0].(*pgproto3.ErrorResponse)
		if !ok {
			t.Fatalf("decoded %T", msgs[0])
		}
		want := &pgproto3.ErrorResponse{
			Severity:            tt.severity,
			SeverityUnlocalized: tt.severity,
			Code:                tt.code,
			Message:             tt.message,
			Detail:              tt.detail,
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("decoded\n %+v\nwant\n %+v", got, want)
		}

		// ParseError decodes its own encoding.
		f := ParseError(b[HeaderLen:])
		wantF := ErrorFields{Severity: tt.severity, Code: tt.code, Message: tt.message, Detail: tt.detail}
		if f != wantF {
			t.Fatalf("ParseError = %+v, want %+v", f, wantF)
		}

		// And pgproto3's encoding is byte-for-byte the same.
		enc, err := want.Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		if pf := ParseError(enc[HeaderLen:]); pf != wantF {
			t.Fatalf("ParseError(pgproto3 encoding) = %+v, want %+v", pf, wantF)
		}
	}
}

func TestParseError(t *testing.T) {
	full, err := (&pgproto3.ErrorResponse{
		Severity:            "FEHLER", // localized
		SeverityUnlocalized: "ERROR",
		Code:                "42P01",
		Message:             `relation "nope" does not exist`,
		Detail:              "some detail",
		Hint:                "a hint",
		Position:            15,
		File:                "parse_relation.c",
		Line:                1392,
		Routine:             "parserOpenTable",
	}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		body []byte
		want ErrorFields
	}{
		{"full pgproto3 error", full[HeaderLen:], ErrorFields{"ERROR", "42P01", `relation "nope" does not exist`, "some detail"}},
		{"only localized severity", []byte("SERREUR\x00C08P01\x00Mm\x00\x00"), ErrorFields{"ERREUR", "08P01", "m", ""}},
		{"V before S", []byte("VFATAL\x00SFATALE\x00\x00"), ErrorFields{Severity: "FATAL"}},
		{"empty", nil, ErrorFields{}},
		{"just terminator", []byte{0}, ErrorFields{}},
		{"missing final terminator", []byte("Mhello\x00"), ErrorFields{Message: "hello"}},
		{"unterminated field", []byte("Mhello\x00Dtrunc"), ErrorFields{Message: "hello"}},
		{"field type only", []byte("M"), ErrorFields{}},
		{"unknown fields ignored", []byte("Xfoo\x00Mbar\x00\x00"), ErrorFields{Message: "bar"}},
		{"data after terminator ignored", []byte("Ma\x00\x00Mb\x00\x00"), ErrorFields{Message: "a"}},
		{"empty values", []byte("S\x00C\x00M\x00\x00"), ErrorFields{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ParseError(tt.body); got != tt.want {
				t.Fatalf("ParseError = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestAppendAuthOK(t *testing.T) {
	b := AppendAuthOK(nil)
	msgs := decodeBackend(t, b)
	if len(msgs) != 1 {
		t.Fatalf("%d messages", len(msgs))
	}
	if _, ok := msgs[0].(*pgproto3.AuthenticationOk); !ok {
		t.Fatalf("decoded %T", msgs[0])
	}
	want, _ := (&pgproto3.AuthenticationOk{}).Encode(nil)
	if !bytes.Equal(b, want) {
		t.Fatalf("got %x, want %x", b, want)
	}
}

func TestAppendParameterStatus(t *testing.T) {
	for _, p := range [][2]string{
		{"server_version", "17.2"},
		{"client_encoding", "UTF8"},
		{"application_name", ""},
		{"TimeZone", "Europe/Zürich"},
	} {
		b := AppendParameterStatus(nil, p[0], p[1])
		msgs := decodeBackend(t, b)
		want := &pgproto3.ParameterStatus{Name: p[0], Value: p[1]}
		if len(msgs) != 1 || !reflect.DeepEqual(msgs[0], want) {
			t.Fatalf("decoded %+v, want %+v", msgs, want)
		}
		enc, _ := want.Encode(nil)
		if !bytes.Equal(b, enc) {
			t.Fatalf("got %x, want %x", b, enc)
		}
	}
}

func TestAppendBackendKeyData(t *testing.T) {
	for _, kv := range [][2]uint32{{0, 0}, {12345, 0xdeadbeef}, {0xFFFFFFFF, 1}} {
		b := AppendBackendKeyData(nil, kv[0], kv[1])
		msgs := decodeBackend(t, b)
		want := &pgproto3.BackendKeyData{ProcessID: kv[0], SecretKey: binary.BigEndian.AppendUint32(nil, kv[1])}
		if len(msgs) != 1 || !reflect.DeepEqual(msgs[0], want) {
			t.Fatalf("decoded %+v, want %+v", msgs, want)
		}
		enc, _ := want.Encode(nil)
		if !bytes.Equal(b, enc) {
			t.Fatalf("got %x, want %x", b, enc)
		}
	}
}

func TestAppendReadyForQuery(t *testing.T) {
	for _, tx := range []byte{TxIdle, TxActive, TxFailed} {
		b := AppendReadyForQuery(nil, tx)
		msgs := decodeBackend(t, b)
		want := &pgproto3.ReadyForQuery{TxStatus: tx}
		if len(msgs) != 1 || !reflect.DeepEqual(msgs[0], want) {
			t.Fatalf("decoded %+v, want %+v", msgs, want)
		}
		enc, _ := want.Encode(nil)
		if !bytes.Equal(b, enc) {
			t.Fatalf("got %x, want %x", b, enc)
		}
	}
}

func TestAppendNegotiateProtocolVersion(t *testing.T) {
	for _, tc := range []struct {
		minor uint32
		opts  []string
	}{
		{0, nil},
		{0, []string{"_pq_.command_trace"}},
		{2, []string{"_pq_.a", "_pq_.b", "_pq_.c"}},
	} {
		b := AppendNegotiateProtocolVersion(nil, tc.minor, tc.opts)
		msgs := decodeBackend(t, b)
		if len(msgs) != 1 {
			t.Fatalf("%d messages", len(msgs))
		}
		got, ok := msgs[0].(*pgproto3.NegotiateProtocolVersion)
		if !ok {
			t.Fatalf("decoded %T", msgs[0])
		}
		if got.NewestMinorProtocol != tc.minor || len(got.UnrecognizedOptions) != len(tc.opts) {
			t.Fatalf("decoded %+v, want minor %d options %q", got, tc.minor, tc.opts)
		}
		for i := range tc.opts {
			if got.UnrecognizedOptions[i] != tc.opts[i] {
				t.Fatalf("option %d = %q, want %q", i, got.UnrecognizedOptions[i], tc.opts[i])
			}
		}
		enc, _ := (&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: tc.minor, UnrecognizedOptions: tc.opts}).Encode(nil)
		if !bytes.Equal(b, enc) {
			t.Fatalf("got %x, want %x", b, enc)
		}
	}
}

func TestAppendFrontendMessages(t *testing.T) {
	var b []byte
	b = AppendQuery(b, "SELECT abalance FROM pgbench_accounts WHERE aid = 42")
	b = AppendQuery(b, "")
	b = AppendSync(b)
	b = AppendCopyFail(b, "aborted by proxy")
	b = AppendCopyFail(b, "")
	b = AppendTerminate(b)
	got := decodeFrontend(t, b)
	want := []pgproto3.FrontendMessage{
		&pgproto3.Query{String: "SELECT abalance FROM pgbench_accounts WHERE aid = 42"},
		&pgproto3.Query{String: ""},
		&pgproto3.Sync{},
		&pgproto3.CopyFail{Message: "aborted by proxy"},
		&pgproto3.CopyFail{Message: ""},
		&pgproto3.Terminate{},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("decoded %+v, want %+v", got, want)
	}
	var enc []byte
	for _, m := range want {
		var err error
		enc, err = m.Encode(enc)
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(b, enc) {
		t.Fatalf("got %x\nwant %x", b, enc)
	}
}

func TestEncodersAppendToDst(t *testing.T) {
	prefix := []byte("keep")
	encoders := map[string]func([]byte) []byte{
		"error":     func(d []byte) []byte { return AppendError(d, SeverityError, CodeAdminShutdown, "m", "d") },
		"authok":    AppendAuthOK,
		"param":     func(d []byte) []byte { return AppendParameterStatus(d, "a", "b") },
		"keydata":   func(d []byte) []byte { return AppendBackendKeyData(d, 1, 2) },
		"rfq":       func(d []byte) []byte { return AppendReadyForQuery(d, TxIdle) },
		"negotiate": func(d []byte) []byte { return AppendNegotiateProtocolVersion(d, 0, []string{"_pq_.x"}) },
		"query":     func(d []byte) []byte { return AppendQuery(d, "select 1") },
		"sync":      AppendSync,
		"terminate": AppendTerminate,
		"copyfail":  func(d []byte) []byte { return AppendCopyFail(d, "why") },
	}
	for name, enc := range encoders {
		alone := enc(nil)
		with := enc(append([]byte(nil), prefix...))
		if !bytes.HasPrefix(with, prefix) || !bytes.Equal(with[len(prefix):], alone) {
			t.Errorf("%s: appending to a non-empty dst gives %q, want %q+%q", name, with, prefix, alone)
		}
		if got := int(binary.BigEndian.Uint32(alone[1:5])); got != len(alone)-1 {
			t.Errorf("%s: length field %d, message %d bytes", name, got, len(alone))
		}
	}
}

// The extended-protocol messages the proxy sends on its own encode exactly as
// pgproto3 does.
func TestAppendExtendedMessages(t *testing.T) {
	for _, tc := range []struct {
		got  []byte
		want interface{ Encode([]byte) ([]byte, error) }
	}{
		{AppendParse(nil, "s1", "select 1"), &pgproto3.Parse{Name: "s1", Query: "select 1"}},
		{AppendParse(nil, "", ""), &pgproto3.Parse{}},
		{AppendBind(nil, "p", "s1"), &pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "s1"}},
		{AppendExecute(nil, "p"), &pgproto3.Execute{Portal: "p"}},
		{AppendClose(nil, 'S', "s1"), &pgproto3.Close{ObjectType: 'S', Name: "s1"}},
		{AppendClose(nil, 'P', ""), &pgproto3.Close{ObjectType: 'P'}},
		{AppendCommandComplete(nil, "DEALLOCATE ALL"), &pgproto3.CommandComplete{CommandTag: []byte("DEALLOCATE ALL")}},
	} {
		want, err := tc.want.Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(tc.got, want) {
			t.Errorf("%T: got %x, want %x", tc.want, tc.got, want)
		}
	}
}

func TestRewriteErrorText(t *testing.T) {
	msg := AppendError(nil, SeverityError, "08P01",
		`bind message supplies 2 parameters, but prepared statement "pgsidecar_2v" requires 1`, `see "pgsidecar_2v"`)
	got := RewriteErrorText(msg, `"pgsidecar_2v"`, `"r2"`)
	if got == nil {
		t.Fatal("nothing rewritten")
	}
	f := ParseError(got[HeaderLen:])
	if f.Message != `bind message supplies 2 parameters, but prepared statement "r2" requires 1` || f.Code != "08P01" || f.Severity != SeverityError {
		t.Fatalf("rewritten = %+v", f)
	}
	if f.Detail != `see "r2"` {
		t.Fatalf("detail = %q", f.Detail)
	}
	if n := int(binary.BigEndian.Uint32(got[1:5])); n != len(got)-1 {
		t.Fatalf("length field %d, message is %d bytes after the type", n, len(got)-1)
	}
	if RewriteErrorText(msg, `"other"`, `"x"`) != nil {
		t.Fatal("rewrote without a match")
	}
	if RewriteErrorText(msg[:len(msg)-3], `"pgsidecar_2v"`, `"r2"`) != nil {
		t.Fatal("rewrote a truncated message")
	}
}
