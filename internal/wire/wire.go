package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Protocol codes found where a startup packet carries its protocol version.
const (
	// ProtocolVersion30 is protocol 3.0, the version the proxy speaks to clients.
	ProtocolVersion30 uint32 = 3 << 16
	// SSLRequestCode asks the server to start TLS.
	SSLRequestCode uint32 = 80877103
	// GSSENCRequestCode asks the server to start GSSAPI encryption.
	GSSENCRequestCode uint32 = 80877104
	// CancelRequestCode asks the server to cancel a running query.
	CancelRequestCode uint32 = 80877102
)

// Limits on message sizes, as PostgreSQL enforces them.
const (
	// MaxStartupPacketLength is PostgreSQL's MAX_STARTUP_PACKET_LENGTH.
	MaxStartupPacketLength = 10000
	// MaxMessageLength is the largest length field (including itself) accepted for a
	// regular message: PostgreSQL's PQ_LARGE_MESSAGE_LIMIT (1 GiB - 1).
	MaxMessageLength = 1<<30 - 1
	// HeaderLen is the size of a regular message header: type byte + int32 length.
	HeaderLen = 5
)

// Frontend (client to server) message types.
const (
	MsgBind         byte = 'B'
	MsgClose        byte = 'C'
	MsgCopyData     byte = 'd'
	MsgCopyDone     byte = 'c'
	MsgCopyFail     byte = 'f'
	MsgDescribe     byte = 'D'
	MsgExecute      byte = 'E'
	MsgFlush        byte = 'H'
	MsgFunctionCall byte = 'F'
	MsgParse        byte = 'P'
	MsgQuery        byte = 'Q'
	MsgSync         byte = 'S'
	MsgTerminate    byte = 'X'
)

// Backend (server to client) message types the proxy looks at.
const (
	MsgReadyForQuery    byte = 'Z'
	MsgErrorResponse    byte = 'E'
	MsgNoticeResponse   byte = 'N'
	MsgParameterStatus  byte = 'S'
	MsgBackendKeyData   byte = 'K'
	MsgCopyInResponse   byte = 'G'
	MsgCopyOutResponse  byte = 'H'
	MsgCopyBothResponse byte = 'W'
	MsgAuthentication   byte = 'R'
	MsgNotification     byte = 'A'
	MsgNegotiateVersion byte = 'v'
	MsgParseComplete    byte = '1'
	MsgBindComplete     byte = '2'
	MsgCloseComplete    byte = '3'
	MsgRowDescription   byte = 'T'
	MsgNoData           byte = 'n'
	MsgDataRow          byte = 'D'
	MsgCommandComplete  byte = 'C'
	MsgEmptyQuery       byte = 'I'
	MsgPortalSuspended  byte = 's'
)

// Transaction status bytes carried by ReadyForQuery.
const (
	TxIdle   byte = 'I'
	TxActive byte = 'T'
	TxFailed byte = 'E'
)

// Sentinel errors callers branch on. Returned errors wrap them.
var (
	// ErrInvalidLength means a length field is out of the protocol's bounds.
	ErrInvalidLength = errors.New("invalid message length")
	// ErrInvalidStartup means the startup packet is malformed.
	ErrInvalidStartup = errors.New("invalid startup packet")
)

// ValidFrontendType reports whether t is a message type a client may send after startup.
func ValidFrontendType(t byte) bool {
	switch t {
	case MsgBind, MsgClose, MsgCopyData, MsgCopyDone, MsgCopyFail, MsgDescribe, MsgExecute,
		MsgFlush, MsgFunctionCall, MsgParse, MsgQuery, MsgSync, MsgTerminate:
		return true
	}
	return false
}

// Header is a decoded regular message header.
type Header struct {
	Type byte
	// Len is the length field: the body length plus 4.
	Len int
}

// BodyLen is the number of body bytes after the header.
func (h Header) BodyLen() int { return h.Len - 4 }

// PeekHeader reads (without consuming) the next message header from r. It rejects a
// length field below 4 or above maxLen with an error wrapping ErrInvalidLength.
func PeekHeader(r *bufio.Reader, maxLen int) (Header, error) {
	p, err := r.Peek(HeaderLen)
	if err != nil {
		if errors.Is(err, io.EOF) && len(p) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return Header{}, err
	}
	return ParseHeader(p, maxLen)
}

// ParseHeader decodes the message header at the start of b, which holds at
// least HeaderLen bytes, as PeekHeader does.
func ParseHeader(b []byte, maxLen int) (Header, error) {
	n := int(int32(binary.BigEndian.Uint32(b[1:5])))
	if n < 4 || n > maxLen {
		return Header{Type: b[0], Len: n}, fmt.Errorf("%w: type %q length %d", ErrInvalidLength, b[0], n)
	}
	return Header{Type: b[0], Len: n}, nil
}

// PeekMessage returns the whole message (header included) whose header h was just
// peeked, without consuming it. The message must fit in r's buffer; the returned
// slice is valid until the next read from r.
func PeekMessage(r *bufio.Reader, h Header) ([]byte, error) {
	p, err := r.Peek(1 + h.Len)
	if err != nil && errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return p, err
}

// Forward copies the next n bytes of r to w without decoding them, straight from r's
// buffer. It never allocates; large messages stream through in buffer-sized chunks.
func Forward(w *bufio.Writer, r *bufio.Reader, n int) error {
	_, err := ForwardRest(w, r, n)
	return err
}

// ForwardRest is Forward that also reports how many of the n bytes were not
// forwarded when it fails, so that a caller whose read timed out can finish the
// message later.
func ForwardRest(w *bufio.Writer, r *bufio.Reader, n int) (int, error) {
	for n > 0 {
		avail := r.Buffered()
		if avail == 0 {
			if _, err := r.Peek(1); err != nil {
				if errors.Is(err, io.EOF) {
					err = io.ErrUnexpectedEOF
				}
				return n, err
			}
			avail = r.Buffered()
		}
		if avail > n {
			avail = n
		}
		p, _ := r.Peek(avail)
		if _, err := w.Write(p); err != nil {
			return n, err
		}
		_, _ = r.Discard(avail)
		n -= avail
	}
	return 0, nil
}

// Skip discards the next n bytes of r.
func Skip(r *bufio.Reader, n int) error {
	_, err := r.Discard(n)
	if err != nil && errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return err
}
