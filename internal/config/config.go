package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"
)

// Config is the complete runtime configuration of the proxy.
//
// Each field corresponds to exactly one command-line flag (named in the field
// comment) and one PGSIDECAR_* environment variable; see [Bind].
type Config struct {
	// ConfigFile is the configuration file read by [Load] (--config); "" for none.
	ConfigFile string
	// Listen is the host:port the proxy accepts PostgreSQL clients on (--listen).
	Listen string
	// Upstream is the upstream server as a postgres URL or key=value DSN
	// (--upstream, falling back to DATABASE_URL). It is parsed by the caller;
	// this package only requires it to be non-empty.
	Upstream string
	// UpstreamFile is a file holding the upstream URL or DSN, read by [Load]
	// into Upstream (--upstream-file); "" for none.
	UpstreamFile string
	// UpstreamPasswordFile is a file holding only the upstream password, read by
	// [Load] into UpstreamPassword (--upstream-password-file); "" for none.
	UpstreamPasswordFile string
	// UpstreamPassword, when HasUpstreamPassword, replaces the password of
	// Upstream. It is not a flag: [Load] reads it from UpstreamPasswordFile.
	UpstreamPassword    string
	HasUpstreamPassword bool
	// PoolMode decides when a server connection goes back to the pool (--pool-mode).
	PoolMode PoolMode
	// PoolSize is the number of server connections per (database, user) pool,
	// 1..10000 (--pool-size).
	PoolSize int
	// FleetBudget is the most server connections per route that all the
	// sidecars of a fleet may have together; 0 turns the fleet budget off
	// (--fleet-budget).
	FleetBudget int
	// FleetName names the fleet; "" derives it from the upstream's database
	// and user (--fleet-name).
	FleetName string
	// FleetMin is the slots each sidecar keeps per route even when idle
	// (--fleet-min).
	FleetMin int
	// MaxClientConn is the maximum number of concurrent client connections,
	// at least 1 (--max-client-conn).
	MaxClientConn int
	// HTTPListen is the host:port of the HTTP (metrics/health) server; ""
	// disables it (--http-listen).
	HTTPListen string
	// StatusListen is the host:port of the status page ("/" and
	// "/status.json"), which shows clients and their last statements; ""
	// disables it (--status-listen).
	StatusListen string
	// LeakThreshold reports a client idle inside a transaction for longer than
	// this as a leak suspect; 0 disables the check (--leak-threshold).
	LeakThreshold time.Duration
	// IdleTransactionTimeout disconnects a client idle inside a transaction for
	// longer than this; 0 disables it (--idle-transaction-timeout).
	IdleTransactionTimeout time.Duration
	// TransactionTimeout closes a client whose transaction is older than this
	// and rolls it back, in transaction mode; 0 disables it
	// (--transaction-timeout).
	TransactionTimeout time.Duration
	// MaxPreparedStatements bounds the named prepared statements kept on each
	// server connection in transaction mode; 0 turns statement-name rewriting off
	// (--max-prepared-statements).
	MaxPreparedStatements int
	// MaxApplicationLabels caps the distinct application_name values used as the
	// application label of metrics; later ones are "other"
	// (--max-application-labels).
	MaxApplicationLabels int
	// MetricsCompat is "" or "pgbouncer": also export pgbouncer_exporter's metric
	// names (--metrics-compat).
	MetricsCompat string
	// AdminUsers are the user names allowed to connect to the admin console
	// (database "pgsidecar"), comma-separated (--admin-users).
	AdminUsers string
	// SQLLiterals shows SQL statements with their constants in logs, SHOW
	// and the status page, for debugging (--sql-literals).
	SQLLiterals bool
	// StatsUsers are the user names allowed to connect to the admin console
	// for its SHOW commands only, comma-separated (--stats-users).
	StatsUsers string
	// ClientAuth is how clients prove their password: "scram-sha-256" (the
	// default), "md5" or "trust" (--client-auth).
	ClientAuth string
	// AllowRemoteTrust lets ClientAuth "trust" listen on an address other
	// than loopback (--allow-remote-trust).
	AllowRemoteTrust bool
	// AuthFile is a PgBouncer userlist.txt of passwords, md5 hashes or SCRAM
	// verifiers, read by [Load] into AuthFileData (--auth-file); "" for none.
	AuthFile string
	// AuthFileData is the content of AuthFile. It is not a flag.
	AuthFileData string
	// AuthQuery is a query run as the upstream's user that returns the
	// password (SCRAM verifier or MD5 hash, as pg_authid.rolpassword) of the
	// role named by its $1, for roles no other source knows (--auth-query);
	// "" for none.
	AuthQuery string
	// AuthQueryTTL is how long an answer of AuthQuery is kept
	// (--auth-query-ttl).
	AuthQueryTTL time.Duration
	// TLSCert and TLSKey are the PEM files of the certificate chain and the
	// private key clients' TLS connections are served with (--tls-cert,
	// --tls-key); "" for none. [Load] reads them into TLSCertData and
	// TLSKeyData.
	TLSCert, TLSKey string
	// TLSClientCA is a PEM file of CA certificates: a client connecting with
	// TLS must present a certificate one of them signed (--tls-client-ca); ""
	// for none. [Load] reads it into TLSClientCAData.
	TLSClientCA string
	// TLSCertData, TLSKeyData and TLSClientCAData are the contents of
	// TLSCert, TLSKey and TLSClientCA. They are not flags.
	TLSCertData, TLSKeyData, TLSClientCAData string
	// ClientTLS is whether clients may use TLS: "disable", "allow" or
	// "require"; "" (the default) is "allow" with a TLSCert and "disable"
	// without one (--client-tls). [Config.ClientTLSMode] resolves it.
	ClientTLS string
	// AllowRoutes are the (database, user) pools clients may use besides the
	// upstream's own, comma-separated "database/user" patterns where "*"
	// matches any name (--allow-routes).
	AllowRoutes string
	// GCPercent is the Go garbage collector's target (GOGC): the heap grows by
	// this percentage of the live heap before a collection. The GOGC
	// environment variable, when set, wins (--gc-percent).
	GCPercent int
	// PinPolicy is what a statement that would pin a client to its server
	// connection gets in transaction mode: "pin" or "refuse" (--pin-policy).
	PinPolicy string
	// QueryWaitTimeout is how long a client may wait for a server connection,
	// greater than 0 (--query-wait-timeout).
	QueryWaitTimeout time.Duration
	// ServerLifetime is the maximum age of a server connection, applied with
	// +/-10% jitter by the pool; 0 means unlimited (--server-lifetime).
	ServerLifetime time.Duration
	// ServerIdleTimeout closes server connections unused for longer than this;
	// 0 means never (--server-idle-timeout).
	ServerIdleTimeout time.Duration
	// ServerConnectTimeout bounds establishing a new server connection,
	// greater than 0 (--server-connect-timeout).
	ServerConnectTimeout time.Duration
	// ClientLoginTimeout is the time a client has to finish its startup packet
	// after connecting, greater than 0 (--client-login-timeout).
	ClientLoginTimeout time.Duration
	// ShutdownTimeout is how long a graceful shutdown waits for clients before
	// closing them; 0 does not wait (--shutdown-timeout).
	ShutdownTimeout time.Duration
	// LogFormat is "text" or "json" (--log-format).
	LogFormat string
	// LogLevel is the minimum level logged: debug, info, warn or error (--log-level).
	LogLevel slog.Level
	// MaxMessageSize is the largest message a client may send, in bytes; a
	// larger one is refused with SQLSTATE 54000 and the client closed. COPY data
	// is streamed and never counted against it (--max-message-size).
	MaxMessageSize int64
	// MaxMessageMemory is the memory, in bytes, shared by every client for the
	// Query and Parse messages the proxy reads whole because they do not fit its
	// read buffer (--max-message-memory).
	MaxMessageMemory int64
	// MaxClientPreparedStatements bounds the named prepared statements one client
	// may hold in transaction mode (--max-client-prepared-statements).
	MaxClientPreparedStatements int
	// MaxClientPreparedBytes bounds the bytes of statement text (query and
	// parameter types) one client's named prepared statements may hold in
	// transaction mode (--max-client-prepared-bytes).
	MaxClientPreparedBytes int64
	// ReadinessChecksUpstream makes /readyz fail while no server connection to
	// the upstream can be opened (--readiness-checks-upstream).
	ReadinessChecksUpstream bool
}

// MetricsCompatPgBouncer is the --metrics-compat value for pgbouncer_exporter's names.
const MetricsCompatPgBouncer = "pgbouncer"

// Pin policies accepted for [Config.PinPolicy].
const (
	PinPolicyPin    = "pin"
	PinPolicyRefuse = "refuse"
)

// Client authentication methods accepted for [Config.ClientAuth].
const (
	ClientAuthSCRAM = "scram-sha-256"
	ClientAuthMD5   = "md5"
	ClientAuthTrust = "trust"
)

// Client TLS modes accepted for [Config.ClientTLS].
const (
	ClientTLSDisable = "disable"
	ClientTLSAllow   = "allow"
	ClientTLSRequire = "require"
)

// ClientTLSMode is ClientTLS with its default resolved: "allow" when a
// certificate is configured, else "disable".
func (c Config) ClientTLSMode() string {
	if c.ClientTLS != "" {
		return c.ClientTLS
	}
	if c.TLSCert != "" {
		return ClientTLSAllow
	}
	return ClientTLSDisable
}

// Log formats accepted for [Config.LogFormat].
const (
	LogFormatText = "text"
	LogFormatJSON = "json"
)

// Defaults and limits of the message and statement bounds.
const (
	// DefaultMaxMessageSize is the default of [Config.MaxMessageSize]: 64 MiB.
	DefaultMaxMessageSize = 64 << 20
	// MaxMessageSizeLimit is PostgreSQL's own limit on a message: 1 GiB - 1.
	MaxMessageSizeLimit = 1<<30 - 1
	// DefaultMaxMessageMemory is the default of [Config.MaxMessageMemory]: 128 MiB.
	DefaultMaxMessageMemory = 128 << 20
	// DefaultMaxClientPreparedStatements is the default of
	// [Config.MaxClientPreparedStatements].
	DefaultMaxClientPreparedStatements = 10000
	// DefaultMaxClientPreparedBytes is the default of
	// [Config.MaxClientPreparedBytes]: 16 MiB.
	DefaultMaxClientPreparedBytes = 16 << 20
)

// Limits on [Config.PoolSize].
const (
	MinPoolSize = 1
	MaxPoolSize = 10000
)

// DefaultGCPercent is --gc-percent's default. The proxy allocates nothing per
// transaction in steady state, so collections follow logins and large
// messages only: 50 instead of Go's 100 takes a quarter off the memory of
// thousands of idle clients (the heap's headroom over what is live) at no
// measurable CPU (docs/design.md section 16).
const DefaultGCPercent = 50

// Default returns the built-in defaults. Upstream is empty: the DATABASE_URL
// fallback is applied by the function returned from [Bind], not here, so
// Default never reads the environment.
func Default() Config {
	return Config{
		Listen:                 "127.0.0.1:6432",
		Upstream:               "",
		PoolMode:               PoolModeTransaction,
		PoolSize:               20,
		MaxClientConn:          1000,
		HTTPListen:             "127.0.0.1:9127",
		StatusListen:           "127.0.0.1:9128",
		LeakThreshold:          10 * time.Second,
		IdleTransactionTimeout: 0,
		MaxPreparedStatements:  256,
		TransactionTimeout:     0,
		PinPolicy:              PinPolicyPin,
		ClientAuth:             ClientAuthSCRAM,
		AuthQueryTTL:           time.Minute,
		FleetMin:               1,
		GCPercent:              DefaultGCPercent,
		MaxApplicationLabels:   20,
		QueryWaitTimeout:       30 * time.Second,
		ServerLifetime:         time.Hour,
		ServerIdleTimeout:      10 * time.Minute,
		ServerConnectTimeout:   5 * time.Second,
		ClientLoginTimeout:     15 * time.Second,
		ShutdownTimeout:        30 * time.Second,
		LogFormat:              LogFormatText,
		LogLevel:               slog.LevelInfo,

		MaxMessageSize:              DefaultMaxMessageSize,
		MaxMessageMemory:            DefaultMaxMessageMemory,
		MaxClientPreparedStatements: DefaultMaxClientPreparedStatements,
		MaxClientPreparedBytes:      DefaultMaxClientPreparedBytes,
	}
}

// Validate returns nil if c is usable, or an error joining (with
// [errors.Join]) every problem found, one per line, each starting with the
// flag it concerns, e.g. "--pool-size: must be between 1 and 10000, got 0".
func (c Config) Validate() error {
	var errs []error
	for _, s := range specs {
		if msg := s.check(c); msg != "" {
			errs = append(errs, fmt.Errorf("--%s: %s", s.name, msg))
		}
	}
	// Cross-field checks.
	// Port 0 picks a free port per listener, so only a fixed port clashes.
	clash := func(a, b string) bool {
		if a == "" || a != b {
			return false
		}
		_, port, err := net.SplitHostPort(a)
		return err == nil && port != "0"
	}
	if clash(c.HTTPListen, c.Listen) {
		errs = append(errs, fmt.Errorf("--%s: must differ from --%s, both are %q", flagHTTPListen, flagListen, c.Listen))
	}
	if clash(c.StatusListen, c.Listen) || clash(c.StatusListen, c.HTTPListen) {
		errs = append(errs, fmt.Errorf("--%s: must differ from --%s and --%s, got %q", flagStatusListen, flagListen, flagHTTPListen, c.StatusListen))
	}
	return errors.Join(errs...)
}

// PoolMode says when a server connection is released back to its pool.
type PoolMode int

const (
	// PoolModeTransaction releases the server connection at the end of every
	// transaction (the default).
	PoolModeTransaction PoolMode = iota
	// PoolModeSession keeps the server connection until the client disconnects.
	PoolModeSession
)

// String returns "transaction" or "session", or "PoolMode(N)" for an
// unknown value.
func (m PoolMode) String() string {
	switch m {
	case PoolModeTransaction:
		return "transaction"
	case PoolModeSession:
		return "session"
	}
	return fmt.Sprintf("PoolMode(%d)", int(m))
}

// valid reports whether m is one of the defined modes.
func (m PoolMode) valid() bool {
	return m == PoolModeTransaction || m == PoolModeSession
}

// ParsePoolMode parses "transaction" or "session" (case-insensitive).
func ParsePoolMode(s string) (PoolMode, error) {
	m, err := parsePoolMode(s)
	if err != nil {
		return 0, fmt.Errorf("invalid pool mode %q: %w", s, err)
	}
	return m, nil
}

// parsePoolMode is ParsePoolMode with an error that does not repeat s, for
// use by flag.Value.Set (the flag package already quotes the value).
func parsePoolMode(s string) (PoolMode, error) {
	switch strings.ToLower(s) {
	case "transaction":
		return PoolModeTransaction, nil
	case "session":
		return PoolModeSession, nil
	case "statement":
		return 0, errors.New("statement pooling is not supported (want transaction or session)")
	}
	return 0, errors.New("want transaction or session")
}

// Set implements [flag.Value]; it accepts what [ParsePoolMode] accepts.
func (m *PoolMode) Set(s string) error {
	v, err := parsePoolMode(s)
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// MarshalText implements [encoding.TextMarshaler]; it fails for an unknown mode.
func (m PoolMode) MarshalText() ([]byte, error) {
	if !m.valid() {
		return nil, fmt.Errorf("invalid pool mode %s", m)
	}
	return []byte(m.String()), nil
}

// UnmarshalText implements [encoding.TextUnmarshaler] using [ParsePoolMode].
func (m *PoolMode) UnmarshalText(b []byte) error {
	v, err := ParsePoolMode(string(b))
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// ParseLogLevel parses debug, info, warn (or warning) and error,
// case-insensitively, into the matching [slog.Level].
func ParseLogLevel(s string) (slog.Level, error) {
	l, err := parseLogLevel(s)
	if err != nil {
		return 0, fmt.Errorf("invalid log level %q: %w", s, err)
	}
	return l, nil
}

// parseLogLevel is ParseLogLevel with an error that does not repeat s.
func parseLogLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, errors.New("want debug, info, warn or error")
}

// logLevelName is the inverse of ParseLogLevel; ok is false for levels other
// than the four named ones.
func logLevelName(l slog.Level) (name string, ok bool) {
	switch l {
	case slog.LevelDebug:
		return "debug", true
	case slog.LevelInfo:
		return "info", true
	case slog.LevelWarn:
		return "warn", true
	case slog.LevelError:
		return "error", true
	}
	return l.String(), false
}
