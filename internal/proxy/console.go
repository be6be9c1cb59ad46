package proxy

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// The admin console: a client that connects to the virtual database
// ConsoleDatabase as one of Options.AdminUsers (every command) or
// Options.StatsUsers (SHOW only) speaks the simple query protocol
// to the proxy itself, like PgBouncer's "pgbouncer" database. It never uses a
// pool; it gets its own BackendKeyData and is ended (57P01) when the proxy shuts
// down. Commands (case-insensitive, an optional trailing ';'):
//
//	SHOW POOLS    one row per pool:
//	              database, user, cl_active (logged-in clients neither waiting nor
//	              idle in a transaction: as in PgBouncer, idle clients count),
//	              cl_waiting (waiting for a backend, PAUSE included),
//	              cl_idle_in_transaction (ours), sv_active (backends held by
//	              clients), sv_idle, sv_login (being opened), sv_pinned (ours:
//	              held by pinned clients), maxwait / maxwait_us (the oldest
//	              wait), pool_mode, pool_size
//	SHOW CLIENTS  one row per client (console clients included, state "console"):
//	              type 'C', user, database, state (idle, waiting, active,
//	              idle_in_transaction, idle_in_transaction_aborted), addr, port,
//	              connect_time, application_name, id (its BackendKeyData pid:
//	              the KILL_CLIENT id), pinned (why it keeps its backend, or
//	              empty), server_pid (the backend it holds, or NULL)
//	SHOW SERVERS  one row per backend attached to a client: type 'S', user,
//	              database, state (active, or pinned), pid, client_id. Idle
//	              backends are only counted (SHOW POOLS sv_idle): the pool does
//	              not list them.
//	SHOW STATS    per pool, totals since start: database, user,
//	              total_xact_count (backends handed out: transactions, plus
//	              statements outside one), total_wait_count (hand-outs that had
//	              to queue), total_wait_time (us), avg_wait_time (us per queued
//	              hand-out: PgBouncer's is per second of its stats period),
//	              total_wait_timeouts, total_server_dials,
//	              total_server_dial_failures, total_server_closed,
//	              total_exhausted_time (us every backend was busy while clients
//	              waited)
//	SHOW LEAKS    the clients idle in a transaction, oldest first: id,
//	              application_name, user, database, addr, state, age_seconds,
//	              server_pid, suspect (older than --leak-threshold),
//	              last_statement
//	PAUSE         clients that need a backend wait (as for a full pool) until
//	              RESUME or their query-wait-timeout; open transactions go on
//	RESUME        ends PAUSE
//	RELOAD        reloads the configuration (Options.Reload): a NOTICE says
//	              what changed and what needs a restart; a rejected
//	              configuration is an ERROR F0000 listing every problem
//	KILL_CLIENT n ends client n with FATAL 57P01, rolling back its transaction
//
// Anything else, SHOW HELP included, is an ERROR 42601 listing the commands.
// The extended query protocol is refused (0A000) batch by batch.

// ConsoleDatabase is the virtual database of the admin console.
const ConsoleDatabase = "pgsidecar"

// SQLSTATE codes of the console's own errors.
const (
	codeSyntaxError           = "42601"
	codeUndefinedObject       = "42704"
	codeInsufficientPrivilege = "42501"
)

// consoleMaxQuery bounds a console Query message.
const consoleMaxQuery = 1 << 20

const consoleHelp = "pgsidecar admin console commands: SHOW POOLS, SHOW CLIENTS, SHOW SERVERS, SHOW STATS, SHOW LEAKS, SHOW FLEET, PAUSE, RESUME, RELOAD, KILL_CLIENT <id>"

var errConsoleEnd = errors.New("console client done")

// Column type OIDs of console results.
const (
	oidBool   = 16
	oidInt8   = 20
	oidText   = 25
	oidFloat8 = 701
)

type consoleCol struct {
	name string
	oid  uint32
}

// isAdmin reports whether user may run every console command.
func (s *Server) isAdmin(user string) bool {
	return slices.Contains(s.options().AdminUsers, user)
}

// mayConsole reports whether user may use the admin console at all: an admin,
// or a stats user (SHOW only).
func (s *Server) mayConsole(user string) bool {
	return s.isAdmin(user) || slices.Contains(s.options().StatsUsers, user)
}

// serveConsole serves an admin console client after its startup packet.
func (ss *session) serveConsole(st *wire.Startup, unsupported []string) {
	if !ss.srv.mayConsole(ss.user) {
		ss.srv.log.Warn("admin console refused", "client", ss.addr, "user", ss.user)
		refuse(ss.conn, wire.CodeInvalidAuthorization,
			fmt.Sprintf("pgsidecar: user %q is not allowed to use the admin console", ss.user))
		return
	}
	ss.console = true
	if !ss.srv.register(ss) {
		refuse(ss.conn, wire.CodeAdminShutdown, "pgsidecar is shutting down")
		return
	}
	defer ss.srv.unregister(ss)
	buf := make([]byte, 0, 512)
	if st.Minor() > 0 || len(unsupported) > 0 {
		buf = wire.AppendNegotiateProtocolVersion(buf, 0, unsupported)
	}
	buf = wire.AppendAuthOK(buf)
	for _, p := range [][2]string{
		{"DateStyle", "ISO, MDY"},
		{"TimeZone", "UTC"},
		{"application_name", ss.app},
		{"client_encoding", "UTF8"},
		{"integer_datetimes", "on"},
		{"server_encoding", "UTF8"},
		{"server_version", "15.0 (pgsidecar admin console)"},
		{"standard_conforming_strings", "on"},
	} {
		buf = wire.AppendParameterStatus(buf, p[0], p[1])
	}
	buf = wire.AppendBackendKeyData(buf, ss.pid, ss.key)
	buf = wire.AppendReadyForQuery(buf, wire.TxIdle)
	if _, err := ss.conn.Write(buf); err != nil {
		return
	}
	_ = ss.conn.SetDeadline(time.Time{})
	ss.srv.log.Info("admin console client logged in", "client", ss.addr, "user", ss.user)
	ss.consoleRun()
}

// consoleRun reads and answers the console client's messages until it leaves or
// is ended.
func (ss *session) consoleRun() {
	discard := false // skip an extended-protocol batch up to its Sync
	err := func() error {
		for {
			h, err := wire.PeekHeader(ss.r, wire.MaxMessageLength)
			if err != nil {
				return err
			}
			if !wire.ValidFrontendType(h.Type) {
				return fmt.Errorf("%w: invalid frontend message type %d", errProtocol, h.Type)
			}
			switch {
			case h.Type == wire.MsgTerminate:
				return errConsoleEnd
			case discard && h.Type != wire.MsgSync:
				// After an error, like PostgreSQL: everything up to the Sync is skipped.
				if err := wire.Skip(ss.r, 1+h.Len); err != nil {
					return err
				}
			case h.Type == wire.MsgQuery:
				if h.Len > consoleMaxQuery {
					return fmt.Errorf("%w: console query of %d bytes", errProtocol, h.Len)
				}
				msg := make([]byte, 1+h.Len)
				if _, err := io.ReadFull(ss.r, msg); err != nil {
					return err
				}
				sql := string(msg[5:])
				if i := strings.IndexByte(sql, 0); i >= 0 {
					sql = sql[:i]
				}
				ss.consoleQuery(sql)
				ss.w.Write(readyIdle)
			case h.Type == wire.MsgSync:
				if err := wire.Skip(ss.r, 1+h.Len); err != nil {
					return err
				}
				discard = false
				ss.w.Write(readyIdle)
			case h.Type == wire.MsgFunctionCall:
				if err := wire.Skip(ss.r, 1+h.Len); err != nil {
					return err
				}
				ss.w.Write(wire.AppendError(nil, wire.SeverityError, wire.CodeFeatureNotSupported,
					"the admin console supports only simple queries", ""))
				ss.w.Write(readyIdle)
			case h.Type == wire.MsgCopyData, h.Type == wire.MsgCopyDone, h.Type == wire.MsgCopyFail, h.Type == wire.MsgFlush:
				if err := wire.Skip(ss.r, 1+h.Len); err != nil {
					return err
				}
			default: // Parse, Bind, Describe, Execute, Close
				if err := wire.Skip(ss.r, 1+h.Len); err != nil {
					return err
				}
				if !discard {
					discard = true
					ss.w.Write(wire.AppendError(nil, wire.SeverityError, wire.CodeFeatureNotSupported,
						"the admin console supports only simple queries", ""))
				}
			}
			if ss.r.Buffered() == 0 {
				if err := ss.w.Flush(); err != nil {
					return err
				}
				if ss.cout.err != nil {
					return ss.cout.err
				}
			}
		}
	}()
	ss.mu.Lock()
	reason := ss.kill
	ss.gone = true
	ss.mu.Unlock()
	var code, msg string
	switch {
	case reason == killShutdown:
		code, msg = wire.CodeAdminShutdown, "terminating connection: pgsidecar is shutting down"
	case reason == killAdmin:
		code, msg = wire.CodeAdminShutdown, "terminated by the admin console"
	case errors.Is(err, errProtocol), errors.Is(err, wire.ErrInvalidLength):
		ss.srv.protoErr.Add(1)
		code, msg = wire.CodeProtocolViolation, err.Error()
	}
	if code != "" {
		_ = ss.conn.SetWriteDeadline(time.Now().Add(time.Second))
		ss.w.Write(wire.AppendError(nil, wire.SeverityFatal, code, msg, ""))
		ss.w.Flush()
	}
	ss.conn.Close()
}

// consoleQuery runs the commands of one Query message and writes their answers
// (without the ReadyForQuery).
func (ss *session) consoleQuery(sql string) {
	ran := false
	for _, cmd := range strings.Split(sql, ";") {
		cmd = strings.TrimSpace(cmd)
		if cmd == "" {
			continue
		}
		ran = true
		if !ss.consoleCommand(cmd) {
			return
		}
	}
	if !ran {
		ss.w.Write([]byte{wire.MsgEmptyQuery, 0, 0, 0, 4})
	}
}

// consoleCommand runs one command; false means it failed (an ErrorResponse was
// written).
func (ss *session) consoleCommand(cmd string) bool {
	f := strings.Fields(strings.ToUpper(cmd))
	fail := func(code, msg string) bool {
		ss.w.Write(wire.AppendError(nil, wire.SeverityError, code, msg, ""))
		return false
	}
	s := ss.srv
	if len(f) > 0 && f[0] != "SHOW" && !s.isAdmin(ss.user) {
		// Checked at each command: a reload may have moved the user.
		return fail(codeInsufficientPrivilege, fmt.Sprintf("pgsidecar: user %q may only run SHOW commands (%s needs --admin-users)", ss.user, f[0]))
	}
	switch {
	case len(f) == 2 && f[0] == "SHOW":
		var cols []consoleCol
		var rows [][]any
		switch f[1] {
		case "POOLS":
			cols, rows = s.showPools()
		case "CLIENTS":
			cols, rows = s.showClients(ss)
		case "SERVERS":
			cols, rows = s.showServers()
		case "STATS":
			cols, rows = s.showStats()
		case "LEAKS":
			cols, rows = s.showLeaks()
		case "FLEET":
			cols, rows = s.showFleet()
		default:
			return fail(codeSyntaxError, "unknown SHOW command: "+strings.ToLower(f[1])+"; "+consoleHelp)
		}
		ss.writeRows(cols, rows)
		ss.w.Write(wire.AppendCommandComplete(nil, "SHOW"))
		return true
	case len(f) == 1 && f[0] == "PAUSE":
		s.Pause()
		s.log.Warn("paused by the admin console", "client", ss.addr, "user", ss.user)
	case len(f) == 1 && f[0] == "RESUME":
		s.Resume()
		s.log.Warn("resumed by the admin console", "client", ss.addr, "user", ss.user)
	case len(f) == 1 && f[0] == "RELOAD":
		reload := s.options().Reload
		if reload == nil {
			ss.w.Write(wire.AppendNotice(nil, "configuration reload is not available"))
			break
		}
		s.log.Info("configuration reload asked by the admin console", "client", ss.addr, "user", ss.user)
		answer, err := reload()
		if err != nil {
			return fail(wire.CodeConfigFileError, answer)
		}
		ss.w.Write(wire.AppendNotice(nil, answer))
	case len(f) == 2 && f[0] == "KILL_CLIENT":
		id, err := strconv.ParseUint(f[1], 10, 32)
		if err != nil {
			return fail(codeSyntaxError, "KILL_CLIENT takes a client id (SHOW CLIENTS, column id): "+f[1])
		}
		target := s.session(uint32(id))
		if target == nil {
			return fail(codeUndefinedObject, fmt.Sprintf("no client with id %d", id))
		}
		s.log.Warn("client terminated by the admin console", "client", target.addr, "user", target.user,
			"database", target.db, "application_name", target.app, "by", ss.addr)
		target.terminate(killAdmin)
	default:
		return fail(codeSyntaxError, "unknown command: "+cmd+"; "+consoleHelp)
	}
	ss.w.Write(wire.AppendCommandComplete(nil, f[0]))
	return true
}

func (s *Server) modeName() string {
	if s.options().Mode == ModeSession {
		return "session"
	}
	return "transaction"
}

// routeClients counts a route's clients by state, and its oldest wait.
type routeClients struct {
	byState map[string]int
	oldest  time.Duration
}

func (s *Server) showPools() ([]consoleCol, [][]any) {
	cols := []consoleCol{{"database", oidText}, {"user", oidText}, {"cl_active", oidInt8}, {"cl_waiting", oidInt8},
		{"cl_idle_in_transaction", oidInt8}, {"sv_active", oidInt8}, {"sv_idle", oidInt8}, {"sv_login", oidInt8},
		{"sv_pinned", oidInt8}, {"maxwait", oidInt8}, {"maxwait_us", oidInt8}, {"pool_mode", oidText}, {"pool_size", oidInt8}}
	now := time.Now()
	clients := map[[2]string]*routeClients{}
	pinned := map[[2]string]int{}
	for _, ss := range s.snapshot() {
		k := [2]string{ss.db, ss.user}
		rc := clients[k]
		if rc == nil {
			rc = &routeClients{byState: map[string]int{}}
			clients[k] = rc
		}
		ss.mu.Lock()
		st := ss.stateLocked()
		if st == StateWaiting && !ss.waitSince.IsZero() {
			rc.oldest = max(rc.oldest, now.Sub(ss.waitSince.Time()))
		}
		if ss.be != nil && ss.e.State.Pin != "" {
			pinned[k]++
		}
		ss.mu.Unlock()
		rc.byState[st]++
	}
	var rows [][]any
	for _, r := range s.pools.Pools() {
		k := [2]string{r.Key.Database, r.Key.User}
		ps := r.Pool.Stats()
		rc := clients[k]
		if rc == nil {
			rc = &routeClients{byState: map[string]int{}}
		}
		idleTx := rc.byState[StateIdleInTransaction] + rc.byState[StateIdleInTransactionAborted]
		active := rc.byState[StateIdle] + rc.byState[StateActive]
		wait := max(ps.MaxWait, rc.oldest)
		rows = append(rows, []any{k[0], k[1], active, rc.byState[StateWaiting], idleTx, ps.InUse, ps.Idle,
			ps.Dialing, pinned[k], int64(wait / time.Second), int64((wait % time.Second) / time.Microsecond),
			s.modeName(), ps.Size})
	}
	return cols, rows
}

func (s *Server) showClients(self *session) ([]consoleCol, [][]any) {
	cols := []consoleCol{{"type", oidText}, {"user", oidText}, {"database", oidText}, {"state", oidText},
		{"addr", oidText}, {"port", oidInt8}, {"connect_time", oidText}, {"application_name", oidText},
		{"id", oidInt8}, {"pinned", oidText}, {"server_pid", oidInt8}}
	all := s.snapshotAll()
	slices.SortFunc(all, func(a, b *session) int { return cmp.Compare(a.connectedAt, b.connectedAt) })
	rows := make([][]any, 0, len(all))
	for _, ss := range all {
		host, port := splitAddr(ss.addr)
		var state, pin string
		var spid any
		if ss.console {
			state = "console"
		} else {
			ss.mu.Lock()
			state = ss.stateLocked()
			pin = ss.e.State.Pin
			if ss.be != nil {
				spid = int64(ss.be.PID)
			}
			ss.mu.Unlock()
		}
		rows = append(rows, []any{"C", ss.user, ss.db, state, host, port,
			ss.connectedAt.Time().UTC().Format("2006-01-02 15:04:05 UTC"), ss.app, int64(ss.pid), pin, spid})
	}
	return cols, rows
}

func (s *Server) showServers() ([]consoleCol, [][]any) {
	cols := []consoleCol{{"type", oidText}, {"user", oidText}, {"database", oidText}, {"state", oidText},
		{"pid", oidInt8}, {"client_id", oidInt8}}
	type row struct {
		user, db, state string
		pid, client     uint32
	}
	var list []row
	for _, ss := range s.snapshot() {
		ss.mu.Lock()
		if ss.be != nil {
			st := "active"
			if ss.e.State.Pin != "" {
				st = "pinned"
			}
			list = append(list, row{ss.user, ss.db, st, ss.be.PID, ss.pid})
		}
		ss.mu.Unlock()
	}
	slices.SortFunc(list, func(a, b row) int { return int(int64(a.pid) - int64(b.pid)) })
	rows := make([][]any, 0, len(list))
	for _, r := range list {
		rows = append(rows, []any{"S", r.user, r.db, r.state, int64(r.pid), int64(r.client)})
	}
	return cols, rows
}

func (s *Server) showStats() ([]consoleCol, [][]any) {
	cols := []consoleCol{{"database", oidText}, {"user", oidText}, {"total_xact_count", oidInt8},
		{"total_wait_count", oidInt8}, {"total_wait_time", oidInt8}, {"avg_wait_time", oidInt8},
		{"total_wait_timeouts", oidInt8}, {"total_server_dials", oidInt8}, {"total_server_dial_failures", oidInt8},
		{"total_server_closed", oidInt8}, {"total_exhausted_time", oidInt8}}
	var rows [][]any
	for _, r := range s.pools.Pools() {
		ps := r.Pool.Stats()
		var avg int64
		if ps.Waited > 0 {
			avg = ps.WaitTime.Microseconds() / int64(ps.Waited)
		}
		rows = append(rows, []any{r.Key.Database, r.Key.User, ps.Acquires, ps.Waited, ps.WaitTime.Microseconds(),
			avg, ps.WaitTimeouts, ps.Dials, ps.DialFailures, ps.Closed, ps.Exhausted.Microseconds()})
	}
	return cols, rows
}

func (s *Server) showLeaks() ([]consoleCol, [][]any) {
	cols := []consoleCol{{"id", oidInt8}, {"application_name", oidText}, {"user", oidText}, {"database", oidText},
		{"addr", oidText}, {"state", oidText}, {"age_seconds", oidFloat8}, {"server_pid", oidInt8},
		{"suspect", oidBool}, {"last_statement", oidText}}
	leaks := s.Leaks()
	rows := make([][]any, 0, len(leaks))
	for _, l := range leaks {
		rows = append(rows, []any{int64(l.ClientID), l.Application, l.User, l.Database, l.Client, l.State,
			l.Age.Seconds(), int64(l.ServerPID), l.Suspect, l.LastStatement})
	}
	return cols, rows
}

// FleetStatus is one route's share of the fleet-wide connection budget, for
// SHOW FLEET (Options.Fleet).
type FleetStatus struct {
	Database, User string
	Fleet          string // the fleet's name
	Budget, Min    int    // the fleet's budget, and this sidecar's floor
	Held, Used     int    // slots held here, and server connections open here
	FleetHeld      int    // slots held by the whole fleet at the last check; -1 unknown
	Up             bool   // the coordination connection is up
	Failures       uint64 // attempts to take a slot that found none free
}

func (s *Server) showFleet() ([]consoleCol, [][]any) {
	cols := []consoleCol{{"database", oidText}, {"user", oidText}, {"fleet", oidText}, {"budget", oidInt8},
		{"min", oidInt8}, {"held_here", oidInt8}, {"used_here", oidInt8}, {"held_by_fleet", oidInt8},
		{"coordination_up", oidBool}, {"acquire_failures", oidInt8}}
	var rows [][]any
	if f := s.options().Fleet; f != nil {
		for _, r := range f() {
			var fh any = int64(r.FleetHeld)
			if r.FleetHeld < 0 {
				fh = nil
			}
			rows = append(rows, []any{r.Database, r.User, r.Fleet, int64(r.Budget), int64(r.Min), int64(r.Held),
				int64(r.Used), fh, r.Up, int64(r.Failures)})
		}
	}
	return cols, rows
}

// splitAddr splits a client address into host and port (nil when there is none,
// as for a Unix socket).
func splitAddr(addr string) (string, any) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr, nil
	}
	n, err := strconv.ParseInt(port, 10, 64)
	if err != nil {
		return host, nil
	}
	return host, n
}

// writeRows writes a RowDescription and a DataRow per row, in text format.
func (ss *session) writeRows(cols []consoleCol, rows [][]any) {
	b := append([]byte(nil), wire.MsgRowDescription, 0, 0, 0, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(cols)))
	for _, c := range cols {
		b = append(b, c.name...)
		b = append(b, 0)
		b = binary.BigEndian.AppendUint32(b, 0) // table OID
		b = binary.BigEndian.AppendUint16(b, 0) // column number
		b = binary.BigEndian.AppendUint32(b, c.oid)
		size := int16(-1)
		switch c.oid {
		case oidInt8, oidFloat8:
			size = 8
		case oidBool:
			size = 1
		}
		b = binary.BigEndian.AppendUint16(b, uint16(size))
		b = binary.BigEndian.AppendUint32(b, 0xffffffff) // type modifier -1
		b = binary.BigEndian.AppendUint16(b, 0)          // text format
	}
	binary.BigEndian.PutUint32(b[1:], uint32(len(b)-1))
	ss.w.Write(b)
	for _, row := range rows {
		b = append(b[:0], wire.MsgDataRow, 0, 0, 0, 0)
		b = binary.BigEndian.AppendUint16(b, uint16(len(row)))
		for _, v := range row {
			var s string
			switch v := v.(type) {
			case nil:
				b = binary.BigEndian.AppendUint32(b, 0xffffffff)
				continue
			case string:
				s = v
			case int:
				s = strconv.Itoa(v)
			case int64:
				s = strconv.FormatInt(v, 10)
			case uint64:
				s = strconv.FormatUint(v, 10)
			case float64:
				s = strconv.FormatFloat(v, 'f', 3, 64)
			case bool:
				s = "f"
				if v {
					s = "t"
				}
			default:
				s = fmt.Sprint(v)
			}
			b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
			b = append(b, s...)
		}
		binary.BigEndian.PutUint32(b[1:], uint32(len(b)-1))
		ss.w.Write(b)
	}
}
