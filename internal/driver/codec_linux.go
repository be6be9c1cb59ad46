//go:build linux

package driver

import (
	"fmt"
	"io"
)

// Codec transforms a connection's bytes between its socket and its Handler:
// TLS (netio.TLSCodec) decodes the ciphertext the loop reads into the
// plaintext Handler.Data receives, and encodes what is written. The loop
// calls it on its goroutine only; what it returns is valid until its next
// call.
type Codec interface {
	// Decode feeds in (bytes read from the socket; nil for none) and decodes
	// into p. It returns n > 0 while it has decoded bytes (the loop calls it
	// again, with nil, for more), 0 and nil once it needs more input, or an
	// error that ends the stream (io.EOF: the peer closed it cleanly). Until
	// it returns 0 or an error it may refer to in.
	Decode(in, p []byte) (int, error)
	// Retain makes the codec copy what it holds of the in given to Decode:
	// the loop stops decoding early (the reader paused) and reuses in.
	Retain()
	// Pending reports whether Decode may return something without new input.
	Pending() bool
	// Encode appends the encoding of p to dst, after anything Output would
	// have returned.
	Encode(dst, p []byte) ([]byte, error)
	// Output appends to dst, and forgets, bytes the codec produced on its own
	// while decoding (answers to the peer); the loop writes them out.
	Output(dst []byte) []byte
}

// CloseNotifier is a Codec with a goodbye of its own (TLS's close_notify):
// a connection of the loop's own (registered, not adopted) that closes
// gracefully (CloseAfterFlush) sends it after its last output.
type CloseNotifier interface {
	// CloseNotify appends the goodbye to dst, after anything Output would
	// have returned.
	CloseNotify(dst []byte) []byte
}

// codecState is what a connection with a codec keeps: behind a pointer, so
// that a connection without one pays 8 bytes.
type codecState struct {
	codec Codec
}

const (
	// maxKeptCipher: an encode buffer grown beyond this is not reused.
	maxKeptCipher = 256 << 10
	// gatherMax: Writev with a codec copies its buffers into one (one TLS
	// record instead of one per buffer) up to this many bytes, a record's
	// plaintext.
	gatherMax = 16 << 10
)

// SetCodec makes c's bytes go through cd from now on: what c reads is
// decoded before Handler.Data, what is written to it encoded before the
// socket (Buffered and Drained still count the socket's bytes). Call it
// right after Register's Opened or Adopt, before the socket is read; nil
// removes the codec. Input cd already holds (records read with a handshake
// done elsewhere) is delivered after the current callback.
//
// A nil pointer of a codec type is not a nil Codec: pass nil itself.
func (c *Conn) SetCodec(cd Codec) {
	if cd == nil {
		c.cx = nil
		return
	}
	if c.cx == nil {
		c.cx = &codecState{}
	}
	c.cx.codec = cd
	l := c.loop
	if l.pbuf == nil {
		l.pbuf = make([]byte, len(l.rbuf))
	}
	if c.flags&fClosed == 0 && cd.Pending() {
		l.queueRead(c)
	}
}

// Codec is c's codec, nil without one.
func (c *Conn) Codec() Codec {
	if c.cx == nil {
		return nil
	}
	return c.cx.codec
}

// decode feeds in to c's codec and hands what it decodes to the handler,
// until the codec needs more input. It reports false when it stopped before:
// c was closed or detached, or paused (the codec keeps the rest, delivered
// on ResumeRead). When the handler starts closing c it reports true: the
// rest of the input is dropped, as the socket's is.
func (l *Loop) decode(c *Conn, cd Codec, in []byte) bool {
	for {
		n, err := cd.Decode(in, l.pbuf)
		in = nil
		if out := cd.Output(l.cbuf[:0]); len(out) > 0 {
			// The codec's own answers (a TLS KeyUpdate, an alert) go out
			// before anything the handler writes after this.
			err2 := ErrClosed
			if c.flags&(fClosed|fClosing) == 0 {
				err2 = c.writeSocket(out)
			}
			l.keepCipher(out)
			if err2 != nil {
				cd.Retain()
				return false
			}
		}
		if err != nil {
			if err != io.EOF {
				err = fmt.Errorf("driver: decode: %w", err)
			}
			c.closeNow(err)
			return false
		}
		if n == 0 {
			return true
		}
		c.h.Data(c, l.pbuf[:n])
		if c.flags&(fClosed|fClosing|fPaused) != 0 {
			cd.Retain() // l.rbuf serves the next read of any connection
			switch {
			case c.flags&fClosed != 0:
				return false
			case c.flags&fClosing != 0:
				return true
			}
			c.flags |= fReadReady // ResumeRead reads again
			return false
		}
	}
}

// keepCipher keeps out's memory as the loop's encode buffer, unless it grew
// too large to keep.
func (l *Loop) keepCipher(out []byte) {
	if cap(out) <= maxKeptCipher {
		l.cbuf = out[:0]
	}
}

// codecFailed closes c after its codec failed to encode.
func (c *Conn) codecFailed(err error) error {
	err = fmt.Errorf("driver: encode: %w", err)
	c.closeNow(err)
	return err
}

// writeCodec is Write through c's codec.
func (c *Conn) writeCodec(b []byte) error {
	l := c.loop
	out, err := c.cx.codec.Encode(l.cbuf[:0], b)
	if err != nil {
		return c.codecFailed(err)
	}
	err = c.writeSocket(out)
	l.keepCipher(out)
	return err
}

// writeRefCodec is WriteRef through c's codec. The encoding is a copy, so
// b is done with at once. A large one is written by reference (its own
// buffer, freed once written), not copied again into the pending output.
func (c *Conn) writeRefCodec(b []byte, done func()) error {
	if len(b) <= maxKeptOut {
		err := c.writeCodec(b)
		done()
		return err
	}
	out, err := c.cx.codec.Encode(make([]byte, 0, len(b)+len(b)/32+256), b)
	done()
	if err != nil {
		return c.codecFailed(err)
	}
	return c.writeRef(out, noop)
}

func noop() {}

// writevCodec is Writev through c's codec.
func (c *Conn) writevCodec(bufs [][]byte) error {
	l := c.loop
	total := 0
	for _, b := range bufs {
		total += len(b)
	}
	if total == 0 {
		return nil
	}
	if total <= gatherMax && len(bufs) > 1 {
		// One record rather than one per buffer: a record costs its header,
		// tag and cipher call.
		w := l.wbuf[:0]
		for _, b := range bufs {
			w = append(w, b...)
		}
		l.wbuf = w[:0]
		return c.writeCodec(w)
	}
	out := l.cbuf[:0]
	for _, b := range bufs {
		var err error
		if out, err = c.cx.codec.Encode(out, b); err != nil {
			return c.codecFailed(err)
		}
	}
	err := c.writeSocket(out)
	l.keepCipher(out)
	return err
}
