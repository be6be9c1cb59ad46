package wire

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// pgbenchResponse is what the server answers to one pgbench select-only
// transaction ("SELECT abalance FROM pgbench_accounts WHERE aid = $1"):
// RowDescription, DataRow, CommandComplete, ReadyForQuery.
func pgbenchResponse() []byte {
	var b []byte
	for _, m := range []pgproto3.BackendMessage{
		&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{
			Name:                 []byte("abalance"),
			TableOID:             16397,
			TableAttributeNumber: 3,
			DataTypeOID:          23,
			DataTypeSize:         4,
			TypeModifier:         -1,
			Format:               0,
		}}},
		&pgproto3.DataRow{Values: [][]byte{[]byte("-2417")}},
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
		&pgproto3.ReadyForQuery{TxStatus: 'I'},
	} {
		var err error
		if b, err = m.Encode(b); err != nil {
			panic(err)
		}
	}
	return b
}

// replayReader endlessly replays data; each Read fills p completely, like a busy
// socket.
type replayReader struct {
	data []byte
	off  int
}

func (r *replayReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c := copy(p[n:], r.data[r.off:])
		n += c
		r.off += c
		if r.off == len(r.data) {
			r.off = 0
		}
	}
	return n, nil
}

// benchComplete replicates the proxy's check: r holds one whole message.
func benchComplete(r *bufio.Reader) bool {
	n := r.Buffered()
	if n < HeaderLen {
		return false
	}
	p, _ := r.Peek(HeaderLen)
	return n >= 1+int(binary.BigEndian.Uint32(p[1:5]))
}

var errBadReadyForQuery = errors.New("bad ReadyForQuery")

// forwardResponse forwards one server response up to and including its
// ReadyForQuery, the way the proxy's server loop does.
func forwardResponse(w *bufio.Writer, r *bufio.Reader) error {
	for {
		h, err := PeekHeader(r, MaxMessageLength)
		if err != nil {
			return err
		}
		if h.Type == MsgReadyForQuery {
			m, err := PeekMessage(r, h)
			if err != nil {
				return err
			}
			if h.Len != 5 {
				return errBadReadyForQuery
			}
			if _, err := w.Write(m); err != nil {
				return err
			}
			if _, err := r.Discard(len(m)); err != nil {
				return err
			}
			if !benchComplete(r) {
				return w.Flush()
			}
			return nil
		}
		if err := Forward(w, r, 1+h.Len); err != nil {
			return err
		}
		if !benchComplete(r) {
			if err := w.Flush(); err != nil {
				return err
			}
		}
	}
}

// forwardOne forwards exactly one message of any size.
func forwardOne(w *bufio.Writer, r *bufio.Reader) error {
	h, err := PeekHeader(r, MaxMessageLength)
	if err != nil {
		return err
	}
	if err := Forward(w, r, 1+h.Len); err != nil {
		return err
	}
	if !benchComplete(r) {
		return w.Flush()
	}
	return nil
}

func BenchmarkForwardLoop(b *testing.B) {
	resp := pgbenchResponse()
	r := bufio.NewReaderSize(&replayReader{data: resp}, 32<<10)
	w := bufio.NewWriterSize(io.Discard, 32<<10)
	b.ReportAllocs()
	b.SetBytes(int64(len(resp)))
	for b.Loop() {
		if err := forwardResponse(w, r); err != nil {
			b.Fatal(err)
		}
	}
}

func largeCopyData() []byte {
	body := make([]byte, 8<<20)
	for i := range body {
		body[i] = byte(i)
	}
	return msg(MsgCopyData, body)
}

func BenchmarkForwardLarge(b *testing.B) {
	m := largeCopyData()
	r := bufio.NewReaderSize(&replayReader{data: m}, 32<<10)
	w := bufio.NewWriterSize(io.Discard, 32<<10)
	b.ReportAllocs()
	b.SetBytes(int64(len(m)))
	for b.Loop() {
		if err := forwardOne(w, r); err != nil {
			b.Fatal(err)
		}
	}
}

// checkWriter verifies that what is written is the replayed stream, byte for byte.
type checkWriter struct {
	want []byte
	off  int
	n    int64
	bad  bool
}

func (c *checkWriter) Write(p []byte) (int, error) {
	written := len(p)
	for len(p) > 0 {
		k := min(len(p), len(c.want)-c.off)
		if !bytes.Equal(p[:k], c.want[c.off:c.off+k]) {
			c.bad = true
		}
		p = p[k:]
		c.off = (c.off + k) % len(c.want)
		c.n += int64(k)
	}
	return written, nil
}

func TestForwardLoopDoesNotAllocate(t *testing.T) {
	resp := pgbenchResponse()
	r := bufio.NewReaderSize(&replayReader{data: resp}, 32<<10)
	cw := &checkWriter{want: resp}
	w := bufio.NewWriterSize(cw, 32<<10)
	var err error
	const runs = 5000 // enough to wrap the 32 KiB buffers many times
	allocs := testing.AllocsPerRun(runs, func() {
		if e := forwardResponse(w, r); e != nil && err == nil {
			err = e
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if allocs != 0 {
		t.Errorf("forwarding a pgbench response allocates %v times per response, want 0", allocs)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if cw.bad {
		t.Fatal("forwarded stream differs from the server stream")
	}
	if want := int64(runs+1) * int64(len(resp)); cw.n != want {
		t.Fatalf("forwarded %d bytes, want %d", cw.n, want)
	}
}

func TestForwardLargeDoesNotAllocate(t *testing.T) {
	m := largeCopyData()
	r := bufio.NewReaderSize(&replayReader{data: m}, 32<<10)
	cw := &checkWriter{want: m}
	w := bufio.NewWriterSize(cw, 32<<10)
	var err error
	const runs = 3
	allocs := testing.AllocsPerRun(runs, func() {
		if e := forwardOne(w, r); e != nil && err == nil {
			err = e
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if allocs != 0 {
		t.Errorf("forwarding an 8 MiB CopyData allocates %v times, want 0", allocs)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if cw.bad {
		t.Fatal("forwarded stream differs from the server stream")
	}
	if want := int64(runs+1) * int64(len(m)); cw.n != want {
		t.Fatalf("forwarded %d bytes, want %d", cw.n, want)
	}
}
