package proxy_test

import (
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// ---------------------------------------------------------------------------
// Raw protocol connections

// side is where a scenario runs: PostgreSQL itself or the proxy.
type side struct {
	name   string
	addr   string
	db     string
	direct bool
}

// rawConn is a client connection speaking the protocol with pgproto3.
type rawConn struct {
	side
	c  net.Conn
	fe *pgproto3.Frontend
	// startup is the normalised login stream.
	startup []string
	// broken is set once the stream can no longer be trusted (read error,
	// timeout, EOF); the next scenario reconnects.
	broken error
}

// stepTimeout bounds one step; a stream that stalls is broken from then on.
const stepTimeout = 10 * time.Second

func dialRaw(s side) (*rawConn, error) {
	c, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	rc := &rawConn{side: s, c: c, fe: pgproto3.NewFrontend(c, c)}
	_ = c.SetDeadline(time.Now().Add(stepTimeout))
	rc.fe.Send(&pgproto3.StartupMessage{
		ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters:      map[string]string{"user": "postgres", "database": s.db},
	})
	if err := rc.fe.Flush(); err != nil {
		c.Close()
		return nil, err
	}
	var params []string
	for {
		m, err := rc.fe.Receive()
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("startup: %w", err)
		}
		switch m := m.(type) {
		case *pgproto3.ParameterStatus:
			// Values legitimately differ (application_name, and the proxy
			// reports those of its first backend); names must not.
			params = append(params, "ParameterStatus "+m.Name)
			continue
		case *pgproto3.BackendKeyData:
			rc.startup = append(rc.startup, "BackendKeyData")
			continue
		case *pgproto3.ErrorResponse:
			c.Close()
			return nil, fmt.Errorf("startup: %s", describeMsg(m, nil))
		}
		if len(params) > 0 {
			slices.Sort(params)
			rc.startup = append(rc.startup, params...)
			params = nil
		}
		rc.startup = append(rc.startup, describeMsg(m, nil))
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	return rc, nil
}

func (rc *rawConn) close() {
	if rc == nil || rc.c == nil {
		return
	}
	_ = rc.c.SetDeadline(time.Now().Add(time.Second))
	rc.fe.Send(&pgproto3.Terminate{})
	_ = rc.fe.Flush()
	_ = rc.c.Close()
}

// runStep writes st.msgs in one write and reads the responses: one
// ReadyForQuery per Sync and Query, then st.tail more messages. On a read
// error the error is the last entry and rc is marked broken.
func (rc *rawConn) runStep(st pstep, tables map[uint32]string) []string {
	_ = rc.c.SetDeadline(time.Now().Add(stepTimeout))
	for _, m := range st.msgs {
		rc.fe.Send(m)
	}
	if err := rc.fe.Flush(); err != nil {
		rc.broken = err
		return []string{"!! write: " + err.Error()}
	}
	wantReady := 0
	for _, m := range st.msgs {
		switch m.(type) {
		case *pgproto3.Sync, *pgproto3.Query:
			wantReady++
		}
	}
	var out []string
	ready, tail := 0, 0
	for ready < wantReady || tail < st.tail {
		m, err := rc.fe.Receive()
		if err != nil {
			rc.broken = err
			return append(out, "!! read: "+err.Error())
		}
		out = append(out, describeMsg(m, tables))
		if ready == wantReady {
			tail++
			if _, ok := m.(*pgproto3.ErrorResponse); ok {
				// The server skips everything up to the next Sync: nothing
				// more comes for this write.
				break
			}
		} else if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			ready++
		}
	}
	return out
}

// describeMsg renders a backend message for comparison. Table OIDs differ
// between databases and are numbered in order of appearance (t1, t2, ...)
// through tables; error and notice fields that legitimately differ (file,
// line, routine, position) are left out.
func describeMsg(m pgproto3.BackendMessage, tables map[uint32]string) string {
	switch m := m.(type) {
	case *pgproto3.ParseComplete:
		return pc
	case *pgproto3.BindComplete:
		return bc
	case *pgproto3.CloseComplete:
		return ccl
	case *pgproto3.NoData:
		return nod
	case *pgproto3.PortalSuspended:
		return susp
	case *pgproto3.EmptyQueryResponse:
		return "EmptyQueryResponse"
	case *pgproto3.AuthenticationOk:
		return "AuthenticationOk"
	case *pgproto3.ReadyForQuery:
		return "ReadyForQuery " + string(m.TxStatus)
	case *pgproto3.CommandComplete:
		return tag(string(m.CommandTag))
	case *pgproto3.ParameterDescription:
		ts := make([]string, len(m.ParameterOIDs))
		for i, o := range m.ParameterOIDs {
			ts[i] = typeName(o)
		}
		return pdesc(ts...)
	case *pgproto3.RowDescription:
		fs := make([]string, len(m.Fields))
		for i, f := range m.Fields {
			s := string(f.Name) + ":" + typeName(f.DataTypeOID)
			if f.TableOID != 0 {
				tn, ok := tables[f.TableOID]
				if !ok {
					tn = fmt.Sprintf("t%d", len(tables)+1)
					if tables != nil {
						tables[f.TableOID] = tn
					}
				}
				s += fmt.Sprintf("@%s.%d", tn, f.TableAttributeNumber)
			}
			if f.TypeModifier != -1 {
				s += fmt.Sprintf("(%d)", f.TypeModifier)
			}
			if f.Format != 0 {
				s += "/bin"
			}
			fs[i] = s
		}
		return rdesc(fs...)
	case *pgproto3.DataRow:
		vs := make([]string, len(m.Values))
		for i, v := range m.Values {
			if v == nil {
				vs[i] = "NULL"
			} else {
				vs[i] = strconv.Quote(string(v))
			}
		}
		return "DataRow [" + strings.Join(vs, " ") + "]"
	case *pgproto3.ErrorResponse:
		return "ErrorResponse " + m.Severity + " " + m.Code + " " + m.Message
	case *pgproto3.NoticeResponse:
		return "NoticeResponse " + m.Severity + " " + m.Code + " " + m.Message
	case *pgproto3.ParameterStatus:
		return "ParameterStatus " + m.Name + "=" + m.Value
	case *pgproto3.NotificationResponse:
		return "NotificationResponse " + m.Channel + " " + m.Payload
	}
	return fmt.Sprintf("%T", m)
}

func typeName(oid uint32) string {
	switch oid {
	case 16:
		return "bool"
	case 20:
		return "int8"
	case 21:
		return "int2"
	case 23:
		return "int4"
	case 25:
		return "text"
	case 705:
		return "unknown"
	case 1043:
		return "varchar"
	}
	return fmt.Sprintf("oid%d", oid)
}

// ---------------------------------------------------------------------------
// Comparison

// runProtocolScenarios runs every scenario on a (PostgreSQL) and on b, one
// connection each kept across scenarios so that statements outlive
// transactions and scenarios, and compares the streams step by step.
func runProtocolScenarios(t *testing.T, a, b side, hooks pairHooks) {
	dump := os.Getenv("PGSIDECAR_DUMP_PROTOCOL") != ""
	conns := map[string]*rawConn{}
	defer func() {
		for _, rc := range conns {
			rc.close()
		}
	}()
	get := func(t *testing.T, s side) *rawConn {
		t.Helper()
		if rc := conns[s.name]; rc != nil && rc.broken == nil {
			return rc
		} else if rc != nil {
			t.Logf("%s: reconnecting after %v (statements of earlier scenarios are gone on this side)", s.name, rc.broken)
			rc.close()
			delete(conns, s.name)
		}
		rc, err := dialRaw(s)
		if err != nil {
			t.Fatalf("%s: connect: %v", s.name, err)
		}
		conns[s.name] = rc
		return rc
	}

	t.Run("startup", func(t *testing.T) {
		ra, rb := get(t, a), get(t, b)
		if d := firstDiff(ra.startup, rb.startup); d >= 0 {
			t.Errorf("login streams differ at message %d\n%s", d+1, sideBySide(a.name, ra.startup, b.name, rb.startup))
		}
	})
	for _, sc := range append(protocolScenarios(), randomScenarios()...) {
		t.Run(sc.name, func(t *testing.T) {
			if hooks.phase != nil {
				hooks.phase(t.Name())
			}
			texts := map[string]string{} // statement name -> query text, for hooks.where
			var backends []string
			ra, rb := get(t, a), get(t, b)
			ta, tb := map[uint32]string{}, map[uint32]string{}
			failed := false
			for i, st := range sc.steps {
				ga := ra.runStep(st, ta)
				if !b.direct {
					// Let the busy clients take the backend just released,
					// so that the next transaction lands on another one.
					time.Sleep(10 * time.Millisecond)
				}
				gb := rb.runStep(st, tb)
				if hooks.where != nil {
					if text := lastText(st.msgs, texts); text != "" {
						backends = append(backends, hooks.where(text))
					}
				}
				label := fmt.Sprintf("step %d %q", i+1, st.name)
				if dump {
					t.Logf("%s\n%s", label, sideBySide(a.name, ga, b.name, gb))
				}
				for _, s := range []struct {
					side
					got []string
				}{{a, ga}, {b, gb}} {
					if st.want != nil && s.direct {
						if d := firstDiff(st.want, s.got); d >= 0 {
							t.Errorf("%s: PostgreSQL (%s) differs from the expectation at message %d\n%s",
								label, s.name, d+1, sideBySide("expected", st.want, s.name, s.got))
						}
					}
				}
				if st.abortedOK {
					gb = slices.Clone(gb)
					for i := range min(len(ga), len(gb)) {
						if strings.HasPrefix(gb[i], "ErrorResponse ERROR 25P02 ") && strings.HasPrefix(ga[i], "ErrorResponse ERROR ") {
							gb[i] = ga[i]
						}
					}
				}
				if d := firstDiff(ga, gb); d >= 0 {
					switch {
					case st.loose != "":
						t.Logf("%s: %s differs from %s at message %d (tolerated: %s)\n%s",
							label, b.name, a.name, d+1, st.loose, sideBySide(a.name, ga, b.name, gb))
					case !failed:
						failed = true
						t.Errorf("%s: %s differs from %s at message %d\n%s",
							label, b.name, a.name, d+1, sideBySide(a.name, ga, b.name, gb))
					default:
						t.Logf("%s: also differs at message %d\n%s", label, d+1, sideBySide(a.name, ga, b.name, gb))
					}
				}
				if ra.broken != nil || rb.broken != nil {
					t.Errorf("%s: stream broken (%s: %v, %s: %v); rest of the scenario skipped",
						label, a.name, ra.broken, b.name, rb.broken)
					return
				}
			}
			if len(backends) > 0 {
				trail, switches := backendTrail(backends)
				t.Logf("%s: steps ran on backends %s (%d switches; best effort, from pg_stat_activity)", b.name, trail, switches)
			}
		})
	}
}

// pairHooks lets the proxy half watch the run.
type pairHooks struct {
	// phase is told the name of each scenario as it starts.
	phase func(name string)
	// where names the backend that last ran the query text.
	where func(text string) string
}

// lastText returns the text of the last statement msgs run (Parse, Bind or
// Query), keeping texts (statement name -> text) up to date.
func lastText(msgs []pgproto3.FrontendMessage, texts map[string]string) string {
	var last string
	for _, m := range msgs {
		switch m := m.(type) {
		case *pgproto3.Parse:
			if _, ok := texts[m.Name]; !ok || m.Name == "" {
				texts[m.Name] = m.Query
			}
			last = m.Query
		case *pgproto3.Close:
			if m.ObjectType == 'S' {
				delete(texts, m.Name)
			}
		case *pgproto3.Bind:
			if q, ok := texts[m.PreparedStatement]; ok {
				last = q
			}
		case *pgproto3.Query:
			last = m.String
		}
	}
	return last
}

// backendTrail renders where the steps ran as letters (A, B, ...; ? unknown)
// and counts the switches between known backends.
func backendTrail(pids []string) (string, int) {
	letters := map[string]string{"?": "?"}
	var sb strings.Builder
	switches, prev := 0, ""
	for _, p := range pids {
		l, ok := letters[p]
		if !ok {
			l = string(rune('A' + len(letters) - 1))
			letters[p] = l
		}
		sb.WriteString(l)
		if p != "?" {
			if prev != "" && p != prev {
				switches++
			}
			prev = p
		}
	}
	return sb.String(), switches
}

// firstDiff returns the index of the first difference between a and b, or -1.
func firstDiff(a, b []string) int {
	for i := range max(len(a), len(b)) {
		if i >= len(a) || i >= len(b) || a[i] != b[i] {
			return i
		}
	}
	return -1
}

// sideBySide renders two streams for a failure message, marking differences.
func sideBySide(an string, a []string, bn string, b []string) string {
	width := len(an)
	for _, s := range a {
		width = max(width, len(s))
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "     %-*s | %s\n", width, an, bn)
	for i := range max(len(a), len(b)) {
		var x, y string
		if i < len(a) {
			x = a[i]
		}
		if i < len(b) {
			y = b[i]
		}
		mark := " "
		if i >= len(a) || i >= len(b) || x != y {
			mark = "*"
		}
		fmt.Fprintf(&sb, "%s%3d %-*s | %s\n", mark, i+1, width, x, y)
	}
	return strings.TrimRight(sb.String(), "\n")
}
