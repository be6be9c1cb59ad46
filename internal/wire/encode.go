package wire

import (
	"bytes"
	"encoding/binary"
)

// Severity values of an ErrorResponse.
const (
	SeverityError = "ERROR"
	SeverityFatal = "FATAL"
)

// SQLSTATE codes the proxy itself reports.
const (
	CodeProtocolViolation       = "08P01"
	CodeConnectionFailure       = "08006"
	CodeTooManyConnections      = "53300"
	CodeQueryCanceled           = "57014"
	CodeAdminShutdown           = "57P01"
	CodeCannotConnectNow        = "57P03"
	CodeIdleInTransactionTimout = "25P03"
	CodeTransactionTimeout      = "25P04"
	CodeFeatureNotSupported     = "0A000"
	CodeInvalidAuthorization    = "28000"
	CodeInvalidPassword         = "28P01"
	CodeInvalidCatalogName      = "3D000"
	CodeProgramLimitExceeded    = "54000"
	CodeOutOfMemory             = "53200"
	CodeConfigFileError         = "F0000"
	CodeSuccessfulCompletion    = "00000"
)

// SeverityNotice is the severity of a NoticeResponse the proxy sends.
const SeverityNotice = "NOTICE"

// AppendNotice appends a NoticeResponse of severity NOTICE, SQLSTATE 00000,
// with the given message.
func AppendNotice(dst []byte, message string) []byte {
	start := len(dst)
	dst = AppendError(dst, SeverityNotice, CodeSuccessfulCompletion, message, "")
	dst[start] = MsgNoticeResponse
	return dst
}

func beginMsg(dst []byte, t byte) ([]byte, int) {
	start := len(dst)
	return append(dst, t, 0, 0, 0, 0), start
}

func finishMsg(dst []byte, start int) []byte {
	binary.BigEndian.PutUint32(dst[start+1:], uint32(len(dst)-start-1))
	return dst
}

// AppendError appends an ErrorResponse with the given severity, SQLSTATE code and
// message (and an optional detail) to dst.
func AppendError(dst []byte, severity, code, message, detail string) []byte {
	dst, s := beginMsg(dst, MsgErrorResponse)
	dst = append(dst, 'S')
	dst = append(dst, severity...)
	dst = append(dst, 0, 'V')
	dst = append(dst, severity...)
	dst = append(dst, 0, 'C')
	dst = append(dst, code...)
	dst = append(dst, 0, 'M')
	dst = append(dst, message...)
	dst = append(dst, 0)
	if detail != "" {
		dst = append(dst, 'D')
		dst = append(dst, detail...)
		dst = append(dst, 0)
	}
	dst = append(dst, 0)
	return finishMsg(dst, s)
}

// AppendAuthOK appends AuthenticationOk.
func AppendAuthOK(dst []byte) []byte {
	return append(dst, MsgAuthentication, 0, 0, 0, 8, 0, 0, 0, 0)
}

// AppendParameterStatus appends a ParameterStatus message.
func AppendParameterStatus(dst []byte, name, value string) []byte {
	dst, s := beginMsg(dst, MsgParameterStatus)
	dst = append(dst, name...)
	dst = append(dst, 0)
	dst = append(dst, value...)
	dst = append(dst, 0)
	return finishMsg(dst, s)
}

// AppendBackendKeyData appends BackendKeyData with a 4-byte secret key.
func AppendBackendKeyData(dst []byte, pid, key uint32) []byte {
	dst, s := beginMsg(dst, MsgBackendKeyData)
	dst = binary.BigEndian.AppendUint32(dst, pid)
	dst = binary.BigEndian.AppendUint32(dst, key)
	return finishMsg(dst, s)
}

// AppendReadyForQuery appends ReadyForQuery with transaction status tx.
func AppendReadyForQuery(dst []byte, tx byte) []byte {
	return append(dst, MsgReadyForQuery, 0, 0, 0, 5, tx)
}

// AppendNegotiateProtocolVersion appends NegotiateProtocolVersion: the newest minor
// version the proxy supports and the protocol options ("_pq_." names) it does not.
func AppendNegotiateProtocolVersion(dst []byte, newestMinor uint32, unsupported []string) []byte {
	dst, s := beginMsg(dst, MsgNegotiateVersion)
	dst = binary.BigEndian.AppendUint32(dst, newestMinor)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(unsupported)))
	for _, o := range unsupported {
		dst = append(dst, o...)
		dst = append(dst, 0)
	}
	return finishMsg(dst, s)
}

// AppendQuery appends a simple-protocol Query message.
func AppendQuery(dst []byte, sql string) []byte {
	dst, s := beginMsg(dst, MsgQuery)
	dst = append(dst, sql...)
	dst = append(dst, 0)
	return finishMsg(dst, s)
}

// AppendParse appends a Parse of query as the statement name, with no declared
// parameter types.
func AppendParse(dst []byte, name, query string) []byte {
	dst, s := beginMsg(dst, MsgParse)
	dst = append(dst, name...)
	dst = append(dst, 0)
	dst = append(dst, query...)
	dst = append(dst, 0, 0, 0)
	return finishMsg(dst, s)
}

// AppendBind appends a Bind of statement stmt to portal, without parameters and
// with text results.
func AppendBind(dst []byte, portal, stmt string) []byte {
	dst, s := beginMsg(dst, MsgBind)
	dst = append(dst, portal...)
	dst = append(dst, 0)
	dst = append(dst, stmt...)
	dst = append(dst, 0, 0, 0, 0, 0, 0, 0) // no parameter formats, no parameters, no result formats
	return finishMsg(dst, s)
}

// AppendExecute appends an Execute of portal with no row limit.
func AppendExecute(dst []byte, portal string) []byte {
	dst, s := beginMsg(dst, MsgExecute)
	dst = append(dst, portal...)
	dst = append(dst, 0, 0, 0, 0, 0)
	return finishMsg(dst, s)
}

// AppendClose appends a Close of a statement (kind 'S') or portal ('P').
func AppendClose(dst []byte, kind byte, name string) []byte {
	dst, s := beginMsg(dst, MsgClose)
	dst = append(dst, kind)
	dst = append(dst, name...)
	dst = append(dst, 0)
	return finishMsg(dst, s)
}

// AppendCommandComplete appends a CommandComplete with the given tag.
func AppendCommandComplete(dst []byte, tag string) []byte {
	dst, s := beginMsg(dst, MsgCommandComplete)
	dst = append(dst, tag...)
	dst = append(dst, 0)
	return finishMsg(dst, s)
}

// AppendSync appends Sync.
func AppendSync(dst []byte) []byte { return append(dst, MsgSync, 0, 0, 0, 4) }

// AppendTerminate appends Terminate.
func AppendTerminate(dst []byte) []byte { return append(dst, MsgTerminate, 0, 0, 0, 4) }

// AppendCopyFail appends CopyFail with the given reason.
func AppendCopyFail(dst []byte, reason string) []byte {
	dst, s := beginMsg(dst, MsgCopyFail)
	dst = append(dst, reason...)
	dst = append(dst, 0)
	return finishMsg(dst, s)
}

// ErrorFields are the commonly used fields of an ErrorResponse or NoticeResponse.
type ErrorFields struct {
	Severity, Code, Message, Detail string
}

// ParseError decodes the fields of an ErrorResponse/NoticeResponse body. It allocates
// and is meant for rare paths only.
func ParseError(body []byte) ErrorFields {
	var f ErrorFields
	for len(body) > 0 && body[0] != 0 {
		t := body[0]
		i := bytes.IndexByte(body[1:], 0)
		if i < 0 {
			break
		}
		v := string(body[1 : 1+i])
		body = body[2+i:]
		switch t {
		case 'V':
			f.Severity = v
		case 'S':
			if f.Severity == "" {
				f.Severity = v
			}
		case 'C':
			f.Code = v
		case 'M':
			f.Message = v
		case 'D':
			f.Detail = v
		}
	}
	return f
}

// RewriteErrorText returns a copy of the whole ErrorResponse or NoticeResponse
// msg (header included) in which every occurrence of old in its message, detail
// and hint fields is replaced by repl, every other field kept as it is; nil when
// nothing was replaced or msg is malformed. The proxy uses it to put back the
// client's name of a prepared statement it renamed on the server.
func RewriteErrorText(msg []byte, old, repl string) []byte {
	if len(msg) < HeaderLen || old == "" {
		return nil
	}
	body := msg[HeaderLen:]
	out := make([]byte, HeaderLen, len(msg)+64)
	out[0] = msg[0]
	changed := false
	for len(body) > 0 && body[0] != 0 {
		t := body[0]
		i := bytes.IndexByte(body[1:], 0)
		if i < 0 {
			return nil
		}
		v := body[1 : 1+i]
		body = body[2+i:]
		out = append(out, t)
		if (t == 'M' || t == 'D' || t == 'H') && bytes.Contains(v, []byte(old)) {
			v = bytes.ReplaceAll(v, []byte(old), []byte(repl))
			changed = true
		}
		out = append(out, v...)
		out = append(out, 0)
	}
	if !changed || len(body) == 0 {
		return nil
	}
	out = append(out, 0)
	binary.BigEndian.PutUint32(out[1:HeaderLen], uint32(len(out)-1))
	return out
}
