package wire

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
)

// StartupParam is one name/value pair of a StartupMessage, in the client's order.
type StartupParam struct {
	Name, Value string
}

// Startup is a decoded untyped first packet: a StartupMessage, an SSLRequest, a
// GSSENCRequest or a CancelRequest, told apart by Code.
type Startup struct {
	// Code is the protocol version (major<<16 | minor) or a request code.
	Code uint32
	// Params are the StartupMessage parameters (Code is a protocol version).
	Params []StartupParam
	// CancelPID and CancelKey are set for a CancelRequest.
	CancelPID uint32
	CancelKey []byte
}

// Param returns the value of the startup parameter name, or "".
func (s *Startup) Param(name string) string {
	for _, p := range s.Params {
		if p.Name == name {
			return p.Value
		}
	}
	return ""
}

// Major returns the protocol major version of a StartupMessage.
func (s *Startup) Major() uint32 { return s.Code >> 16 }

// Minor returns the protocol minor version of a StartupMessage.
func (s *Startup) Minor() uint32 { return s.Code & 0xffff }

// ReadStartup reads one untyped startup-phase packet from r. Malformed packets give
// an error wrapping ErrInvalidStartup or ErrInvalidLength; I/O errors are returned
// as they are (io.EOF when the client closed before sending anything).
func ReadStartup(r io.Reader) (*Startup, error) {
	var hdr [8]byte
	if n, err := io.ReadFull(r, hdr[:4]); err != nil {
		if n > 0 && err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	length := int(int32(binary.BigEndian.Uint32(hdr[:4])))
	// PostgreSQL limits the packet without its length field.
	if length < 8 || length-4 > MaxStartupPacketLength {
		return nil, fmt.Errorf("%w: startup packet length %d", ErrInvalidLength, length)
	}
	body := make([]byte, length-4)
	if _, err := io.ReadFull(r, body); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return ParseStartup(body)
}

// ParseStartup decodes the body of a startup-phase packet (everything after the
// length field).
func ParseStartup(body []byte) (*Startup, error) {
	if len(body) < 4 {
		return nil, fmt.Errorf("%w: %d bytes", ErrInvalidStartup, len(body))
	}
	s := &Startup{Code: binary.BigEndian.Uint32(body[:4])}
	rest := body[4:]
	switch s.Code {
	case SSLRequestCode, GSSENCRequestCode:
		if len(rest) != 0 {
			return nil, fmt.Errorf("%w: request with %d extra bytes", ErrInvalidStartup, len(rest))
		}
		return s, nil
	case CancelRequestCode:
		// Protocol 3.0 keys are 4 bytes; 3.2 allows up to 256.
		if len(rest) < 8 || len(rest) > 4+256 {
			return nil, fmt.Errorf("%w: cancel request of %d bytes", ErrInvalidStartup, len(body))
		}
		s.CancelPID = binary.BigEndian.Uint32(rest[:4])
		s.CancelKey = append([]byte(nil), rest[4:]...)
		return s, nil
	}
	if s.Major() != 3 {
		return s, nil // the caller reports the unsupported version
	}
	for len(rest) > 0 {
		if rest[0] == 0 {
			if len(rest) != 1 {
				return nil, fmt.Errorf("%w: data after the final terminator", ErrInvalidStartup)
			}
			return s, nil
		}
		i := bytes.IndexByte(rest, 0)
		if i < 0 {
			return nil, fmt.Errorf("%w: unterminated parameter name", ErrInvalidStartup)
		}
		name := string(rest[:i])
		rest = rest[i+1:]
		j := bytes.IndexByte(rest, 0)
		if j < 0 {
			return nil, fmt.Errorf("%w: parameter %q has no terminated value", ErrInvalidStartup, name)
		}
		s.Params = append(s.Params, StartupParam{Name: name, Value: string(rest[:j])})
		rest = rest[j+1:]
	}
	return nil, fmt.Errorf("%w: missing final terminator", ErrInvalidStartup)
}

// AppendStartup encodes a StartupMessage (for tests and tools).
func AppendStartup(dst []byte, code uint32, params ...StartupParam) []byte {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0)
	dst = binary.BigEndian.AppendUint32(dst, code)
	for _, p := range params {
		dst = append(dst, p.Name...)
		dst = append(dst, 0)
		dst = append(dst, p.Value...)
		dst = append(dst, 0)
	}
	if code>>16 == 3 {
		dst = append(dst, 0)
	}
	binary.BigEndian.PutUint32(dst[start:], uint32(len(dst)-start))
	return dst
}

// AppendCancelRequest encodes a CancelRequest packet.
func AppendCancelRequest(dst []byte, pid uint32, key []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(12+len(key)))
	dst = binary.BigEndian.AppendUint32(dst, CancelRequestCode)
	dst = binary.BigEndian.AppendUint32(dst, pid)
	return append(dst, key...)
}
