package config

// This file is the one table of settings (flag, environment twin, usage,
// checks, restart-only or live) and its value types. It is above 800 lines
// because every setting is one entry of that table, which is the point of it.

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// EnvPrefix is prepended to the upper-cased, '-'→'_' flag name to form the
// environment variable for a flag; see [EnvName].
const EnvPrefix = "PGSIDECAR_"

// DatabaseURLEnv is the conventional environment variable used for --upstream
// when neither the flag nor PGSIDECAR_UPSTREAM is set.
const DatabaseURLEnv = "DATABASE_URL"

// Flag names referred to outside the table.
const (
	flagListen               = "listen"
	flagUpstream             = "upstream"
	flagUpstreamFile         = "upstream-file"
	flagUpstreamPasswordFile = "upstream-password-file"
	flagHTTPListen           = "http-listen"
	flagStatusListen         = "status-listen"
	flagConfig               = "config"
	flagMaxPrepared          = "max-prepared-statements"
	flagAuthFile             = "auth-file"
	flagTLSCert              = "tls-cert"
	flagTLSKey               = "tls-key"
	flagTLSClientCA          = "tls-client-ca"
)

// spec describes one setting. The specs table below is the single source of
// flag names: registration, env names, usage and validation all iterate it.
type spec struct {
	name  string                   // flag name without dashes
	arg   string                   // placeholder shown in usage
	usage string                   // one-sentence meaning, incl. allowed range
	value func(*Config) flag.Value // binds the flag to its Config field
	check func(Config) string      // "" if valid, else the problem (without the flag name)
	// secret values are never echoed in errors or usage.
	secret bool
	// emptyDefault is shown in usage as the default when it is empty.
	emptyDefault string
	// restart marks a setting a running proxy cannot change: a reload that
	// changes it reports that a restart is needed and keeps the old value.
	restart bool
	// notInFile marks a setting that a configuration file cannot set.
	notInFile bool
}

var specs = []spec{
	{
		name: flagConfig,
		arg:  "file",
		usage: "Configuration file: one setting per line, `name = value` with the flags' names (e.g. `pool-size = 20`), " +
			"# comments. Flags and PGSIDECAR_* variables win over it. Re-read on SIGHUP, the console's RELOAD and " +
			"whenever it changes.",
		value:        func(c *Config) flag.Value { return (*stringValue)(&c.ConfigFile) },
		check:        func(c Config) string { return "" },
		restart:      true,
		notInFile:    true,
		emptyDefault: "none",
	},
	{
		name:    flagListen,
		arg:     "host:port",
		usage:   "Address the proxy accepts PostgreSQL client connections on.",
		value:   func(c *Config) flag.Value { return (*stringValue)(&c.Listen) },
		check:   func(c Config) string { return checkHostPort(c.Listen) },
		restart: true,
	},
	{
		name: flagUpstream,
		arg:  "url|dsn",
		usage: "Upstream PostgreSQL server, as a postgres:// URL or a key=value DSN. " +
			"Falls back to $" + DatabaseURLEnv + ". Required.",
		value: func(c *Config) flag.Value { return (*stringValue)(&c.Upstream) },
		check: func(c Config) string {
			if c.Upstream == "" {
				return "must not be empty (set --upstream, --" + flagUpstreamFile + ", " + EnvName(flagUpstream) + " or " + DatabaseURLEnv + ")"
			}
			return ""
		},
		secret: true,
	},
	{
		name: flagUpstreamFile,
		arg:  "file",
		usage: "File holding the upstream URL or DSN (e.g. a mounted Secret), instead of --upstream. " +
			"Re-read on reload: new server connections use the new value, open ones retire when released.",
		value:        func(c *Config) flag.Value { return (*stringValue)(&c.UpstreamFile) },
		check:        func(c Config) string { return "" },
		emptyDefault: "none",
	},
	{
		name: flagUpstreamPasswordFile,
		arg:  "file",
		usage: "File holding only the upstream password, which replaces the password of the upstream URL " +
			"(a trailing newline is ignored). Re-read on reload, like --upstream-file.",
		value:        func(c *Config) flag.Value { return (*stringValue)(&c.UpstreamPasswordFile) },
		check:        func(c Config) string { return "" },
		emptyDefault: "none",
	},
	{
		name: "pool-mode",
		arg:  "mode",
		usage: "When a server connection returns to its pool: transaction (at the end of " +
			"each transaction) or session (when the client disconnects).",
		value: func(c *Config) flag.Value { return &c.PoolMode },
		check: func(c Config) string {
			if !c.PoolMode.valid() {
				return fmt.Sprintf("must be transaction or session, got %s", c.PoolMode)
			}
			return ""
		},
		restart: true,
	},
	{
		name: "fleet-budget",
		arg:  "n",
		usage: "Most server connections per (database, user) that all the sidecars of the fleet open together, held as " +
			"advisory locks on one coordination connection per route and sidecar (budget + replicas <= max_connections " +
			"- reserved); 0 turns it off.",
		value: func(c *Config) flag.Value { return (*intValue)(&c.FleetBudget) },
		check: func(c Config) string {
			if c.FleetBudget < 0 || c.FleetBudget > MaxPoolSize {
				return fmt.Sprintf("must be between 0 and %d, got %d", MaxPoolSize, c.FleetBudget)
			}
			return ""
		},
		restart: true,
	},
	{
		name:         "fleet-name",
		arg:          "name",
		usage:        "Name of the fleet sharing --fleet-budget: every sidecar of a Deployment must use the same one.",
		value:        func(c *Config) flag.Value { return (*stringValue)(&c.FleetName) },
		check:        func(c Config) string { return "" },
		emptyDefault: "the upstream's database and user",
		restart:      true,
	},
	{
		name:  "fleet-min",
		arg:   "n",
		usage: "Slots of --fleet-budget each sidecar keeps per route even when idle: the floor no pod is starved below.",
		value: func(c *Config) flag.Value { return (*intValue)(&c.FleetMin) },
		check: func(c Config) string {
			if c.FleetMin < 0 || c.FleetBudget > 0 && c.FleetMin > c.FleetBudget {
				return fmt.Sprintf("must be between 0 and --fleet-budget (%d), got %d", c.FleetBudget, c.FleetMin)
			}
			return ""
		},
		restart: true,
	},
	{
		name:  "pool-size",
		arg:   "n",
		usage: fmt.Sprintf("Server connections per (database, user) pool, %d..%d.", MinPoolSize, MaxPoolSize),
		value: func(c *Config) flag.Value { return (*intValue)(&c.PoolSize) },
		check: func(c Config) string {
			if c.PoolSize < MinPoolSize || c.PoolSize > MaxPoolSize {
				return fmt.Sprintf("must be between %d and %d, got %d", MinPoolSize, MaxPoolSize, c.PoolSize)
			}
			return ""
		},
	},
	{
		name:  "max-client-conn",
		arg:   "n",
		usage: "Maximum number of concurrent client connections, at least 1; further clients are refused.",
		value: func(c *Config) flag.Value { return (*intValue)(&c.MaxClientConn) },
		check: func(c Config) string {
			if c.MaxClientConn < 1 {
				return fmt.Sprintf("must be at least 1, got %d", c.MaxClientConn)
			}
			return ""
		},
	},
	{
		name:  flagHTTPListen,
		arg:   "host:port|off",
		usage: `Address of the HTTP server (metrics, health checks); "off" or "" disables it.`,
		value: func(c *Config) flag.Value { return (*optionalAddrValue)(&c.HTTPListen) },
		check: func(c Config) string {
			if c.HTTPListen == "" {
				return ""
			}
			return checkHostPort(c.HTTPListen)
		},
		restart: true,
	},
	{
		name: flagStatusListen,
		arg:  "host:port|off",
		usage: `Address of the live status page ("/" and "/status.json": clients, their states and last ` +
			`statements), kept off --http-listen so that exposing metrics and probes does not expose it; ` +
			`"off" or "" disables it.`,
		value: func(c *Config) flag.Value { return (*optionalAddrValue)(&c.StatusListen) },
		check: func(c Config) string {
			if c.StatusListen == "" {
				return ""
			}
			return checkHostPort(c.StatusListen)
		},
		restart: true,
	},
	{
		name:  "leak-threshold",
		arg:   "duration",
		usage: "Report a client idle inside a transaction for longer than this as a leak suspect (logged once per episode, counted); 0 disables.",
		value: func(c *Config) flag.Value { return (*durationValue)(&c.LeakThreshold) },
		check: func(c Config) string { return nonNegative(c.LeakThreshold) },
	},
	{
		name:  "idle-transaction-timeout",
		arg:   "duration",
		usage: "Disconnect a client that stays idle inside a transaction for longer than this; 0 disables.",
		value: func(c *Config) flag.Value { return (*durationValue)(&c.IdleTransactionTimeout) },
		check: func(c Config) string { return nonNegative(c.IdleTransactionTimeout) },
	},
	{
		name: flagMaxPrepared,
		arg:  "n",
		usage: "Named prepared statements kept per server connection in transaction mode (least recently used " +
			"closed first); clients' statements work on any server connection. 0 turns this off.",
		value: func(c *Config) flag.Value { return (*intValue)(&c.MaxPreparedStatements) },
		check: func(c Config) string {
			if c.MaxPreparedStatements < 0 || c.MaxPreparedStatements > 100000 {
				return fmt.Sprintf("must be between 0 and 100000, got %d", c.MaxPreparedStatements)
			}
			return ""
		},
	},
	{
		name:  "transaction-timeout",
		arg:   "duration",
		usage: "Transaction mode: close a client whose transaction (or statement outside one) is older than this (SQLSTATE 25P04) and roll it back; 0 disables.",
		value: func(c *Config) flag.Value { return (*durationValue)(&c.TransactionTimeout) },
		check: func(c Config) string { return nonNegative(c.TransactionTimeout) },
	},
	{
		name: "gc-percent",
		arg:  "n",
		usage: "Go garbage collector target, 10..1000: the heap grows by this percentage of the live heap " +
			"before a collection. Lower costs less memory and more CPU when clients log in. The GOGC " +
			"environment variable, when set, wins.",
		value: func(c *Config) flag.Value { return (*intValue)(&c.GCPercent) },
		check: func(c Config) string {
			if c.GCPercent < 10 || c.GCPercent > 1000 {
				return fmt.Sprintf("must be between 10 and 1000, got %d", c.GCPercent)
			}
			return ""
		},
	},
	{
		name:  "max-application-labels",
		arg:   "n",
		usage: "Distinct application_name values used as the application label of metrics; later ones are reported as \"other\".",
		value: func(c *Config) flag.Value { return (*intValue)(&c.MaxApplicationLabels) },
		check: func(c Config) string {
			if c.MaxApplicationLabels < 0 || c.MaxApplicationLabels > 10000 {
				return fmt.Sprintf("must be between 0 and 10000, got %d", c.MaxApplicationLabels)
			}
			return ""
		},
	},
	{
		name:  "metrics-compat",
		arg:   "pgbouncer",
		usage: "Also export the metric names of prometheus-community's pgbouncer_exporter (pools and stats), so that PgBouncer dashboards and alerts work unchanged.",
		value: func(c *Config) flag.Value { return (*stringValue)(&c.MetricsCompat) },
		check: func(c Config) string {
			if c.MetricsCompat != "" && c.MetricsCompat != MetricsCompatPgBouncer {
				return fmt.Sprintf("must be %s or empty, got %q", MetricsCompatPgBouncer, c.MetricsCompat)
			}
			return ""
		},
		emptyDefault: "none",
		restart:      true,
	},
	{
		name:         "admin-users",
		arg:          "user,user",
		usage:        "User names that may connect to the admin console, the virtual database \"pgsidecar\", and run every command (SHOW POOLS, SHOW CLIENTS, SHOW LEAKS, PAUSE, RESUME, RELOAD, KILL_CLIENT); they authenticate like any client. Empty: nobody.",
		value:        func(c *Config) flag.Value { return (*stringValue)(&c.AdminUsers) },
		check:        func(c Config) string { return "" },
		emptyDefault: "none",
	},
	{
		name: "sql-literals",
		arg:  "",
		usage: "Show SQL statements with their constants (string and number literals) in logs, SHOW LEAKS and the " +
			"status page, for debugging. By default they are replaced by $1, $2, ... as in pg_stat_statements.",
		value: func(c *Config) flag.Value { return (*boolValue)(&c.SQLLiterals) },
		check: func(c Config) string { return "" },
	},
	{
		name: "stats-users",
		arg:  "user,user",
		usage: "User names that may connect to the admin console for its SHOW commands only (PAUSE, RESUME, RELOAD " +
			"and KILL_CLIENT need --admin-users); they authenticate like any client. Empty: nobody.",
		value:        func(c *Config) flag.Value { return (*stringValue)(&c.StatsUsers) },
		check:        func(c Config) string { return "" },
		emptyDefault: "none",
	},
	{
		name: "client-auth",
		arg:  "method",
		usage: "How clients prove their password: scram-sha-256, md5 (a role whose secret is a SCRAM verifier " +
			"gets SCRAM, as in PostgreSQL) or trust (no password; only on a loopback --listen unless " +
			"--allow-remote-trust). Passwords come from the upstream URL (its user, with its password) and --auth-file.",
		value: func(c *Config) flag.Value { return (*stringValue)(&c.ClientAuth) },
		check: func(c Config) string {
			switch c.ClientAuth {
			case ClientAuthSCRAM, ClientAuthMD5:
				return ""
			case ClientAuthTrust:
				if !c.AllowRemoteTrust && !loopbackListen(c.Listen) {
					return fmt.Sprintf("trust lets anyone who reaches %s in as any allowed role: use a loopback --listen "+
						"(127.0.0.1, ::1, localhost) or set --allow-remote-trust", c.Listen)
				}
				return ""
			}
			return fmt.Sprintf("must be %s, %s or %s, got %q", ClientAuthSCRAM, ClientAuthMD5, ClientAuthTrust, c.ClientAuth)
		},
	},
	{
		name:  "allow-remote-trust",
		arg:   "",
		usage: "Allow --client-auth trust on a --listen address other than loopback.",
		value: func(c *Config) flag.Value { return (*boolValue)(&c.AllowRemoteTrust) },
		check: func(c Config) string { return "" },
	},
	{
		name: flagAuthFile,
		arg:  "file",
		usage: "PgBouncer userlist.txt of client passwords: lines `\"user\" \"secret\"`, the secret a password, an md5 " +
			"hash or a SCRAM-SHA-256 verifier. Its roles may log in to the upstream's database. Re-read on reload " +
			"and when it changes.",
		value:        func(c *Config) flag.Value { return (*stringValue)(&c.AuthFile) },
		check:        func(c Config) string { return "" },
		emptyDefault: "none",
	},
	{
		name: "auth-query",
		arg:  "sql",
		usage: "Query run as the upstream's user, over a connection of its own, that returns the password of the role " +
			"named by $1 in its last column (a SCRAM verifier or md5 hash, as pg_authid.rolpassword; NULL or no row: " +
			"unknown), for roles the upstream URL and --auth-file do not know (PgBouncer's auth_query). Such a role " +
			"may log in to the upstream's database; the proxy logs in to PostgreSQL as it with its client's SCRAM " +
			"proof (or md5 hash), never its password.",
		value: func(c *Config) flag.Value { return (*stringValue)(&c.AuthQuery) },
		check: func(c Config) string {
			if c.AuthQuery != "" && !strings.Contains(c.AuthQuery, "$1") {
				return "must use $1, the role's name"
			}
			return ""
		},
		emptyDefault: "none",
	},
	{
		name:  "auth-query-ttl",
		arg:   "duration",
		usage: "How long an answer of --auth-query is kept before the role is looked up again; 0 asks every login.",
		value: func(c *Config) flag.Value { return (*durationValue)(&c.AuthQueryTTL) },
		check: func(c Config) string { return nonNegative(c.AuthQueryTTL) },
	},
	{
		name:  "client-tls",
		arg:   "mode",
		usage: "Client TLS: disable, allow (TLS for clients that ask: sslmode=prefer, require, verify-full) or require (plaintext clients are refused with SQLSTATE 28000). allow and require need --tls-cert and --tls-key.",
		value: func(c *Config) flag.Value { return (*stringValue)(&c.ClientTLS) },
		check: func(c Config) string {
			switch c.ClientTLS {
			case "", ClientTLSDisable:
				return ""
			case ClientTLSAllow, ClientTLSRequire:
				if c.TLSCert == "" || c.TLSKey == "" {
					return fmt.Sprintf("%s needs --%s and --%s", c.ClientTLS, flagTLSCert, flagTLSKey)
				}
				return ""
			}
			return fmt.Sprintf("must be %s, %s or %s, got %q", ClientTLSDisable, ClientTLSAllow, ClientTLSRequire, c.ClientTLS)
		},
		emptyDefault: "allow with --tls-cert, else disable",
	},
	{
		name: flagTLSCert,
		arg:  "file",
		usage: "PEM file of the certificate (chain) clients' TLS connections are served with. Re-read on reload and " +
			"when it changes (a rotated Kubernetes Secret): new connections get the new certificate.",
		value: func(c *Config) flag.Value { return (*stringValue)(&c.TLSCert) },
		check: func(c Config) string {
			if (c.TLSCert == "") != (c.TLSKey == "") {
				return fmt.Sprintf("--%s and --%s go together", flagTLSCert, flagTLSKey)
			}
			return ""
		},
		emptyDefault: "none",
	},
	{
		name:         flagTLSKey,
		arg:          "file",
		usage:        "PEM file of --tls-cert's private key. Re-read with it.",
		value:        func(c *Config) flag.Value { return (*stringValue)(&c.TLSKey) },
		check:        func(c Config) string { return "" },
		emptyDefault: "none",
	},
	{
		name: flagTLSClientCA,
		arg:  "file",
		usage: "PEM file of CA certificates: a client connecting with TLS must present a certificate signed by one " +
			"of them (its password is checked as well). Re-read on reload and when it changes.",
		value: func(c *Config) flag.Value { return (*stringValue)(&c.TLSClientCA) },
		check: func(c Config) string {
			if c.TLSClientCA != "" && c.TLSCert == "" {
				return fmt.Sprintf("needs --%s and --%s", flagTLSCert, flagTLSKey)
			}
			return ""
		},
		emptyDefault: "none",
	},
	{
		name: "allow-routes",
		arg:  "db/user,...",
		usage: "Pools clients may use besides the upstream's own database and user (and --auth-file's roles on " +
			"that database): database/user patterns, * for any name, e.g. `reports/*,*/app`. Others are refused " +
			"with SQLSTATE 28000 or 3D000.",
		value: func(c *Config) flag.Value { return (*stringValue)(&c.AllowRoutes) },
		check: func(c Config) string {
			for _, r := range strings.Split(c.AllowRoutes, ",") {
				if r = strings.TrimSpace(r); r == "" {
					continue
				}
				if db, user, ok := strings.Cut(r, "/"); !ok || db == "" || user == "" || strings.Contains(user, "/") {
					return fmt.Sprintf("each entry must be database/user, got %q", r)
				}
			}
			return ""
		},
		emptyDefault: "none",
	},
	{
		name: "pin-policy",
		arg:  "pin|refuse",
		usage: "Transaction mode: a statement whose state cannot move between server connections (LISTEN, " +
			"session advisory locks, temp tables, WITH HOLD cursors, SQL PREPARE) pins the client to its server " +
			"connection until the state is gone (pin), or is refused with SQLSTATE 0A000 (refuse).",
		value: func(c *Config) flag.Value { return (*pinPolicyValue)(&c.PinPolicy) },
		check: func(c Config) string {
			if c.PinPolicy != PinPolicyPin && c.PinPolicy != PinPolicyRefuse {
				return fmt.Sprintf("must be %s or %s, got %q", PinPolicyPin, PinPolicyRefuse, c.PinPolicy)
			}
			return ""
		},
	},
	{
		name:  "query-wait-timeout",
		arg:   "duration",
		usage: "How long a client may wait for a free server connection before it gets an error; must be greater than 0.",
		value: func(c *Config) flag.Value { return (*durationValue)(&c.QueryWaitTimeout) },
		check: func(c Config) string { return positive(c.QueryWaitTimeout) },
	},
	{
		name:  "server-lifetime",
		arg:   "duration",
		usage: "Close a server connection older than this (+/-10% jitter) once it is released; 0 means unlimited.",
		value: func(c *Config) flag.Value { return (*durationValue)(&c.ServerLifetime) },
		check: func(c Config) string { return nonNegative(c.ServerLifetime) },
	},
	{
		name:  "server-idle-timeout",
		arg:   "duration",
		usage: "Close a server connection that has been unused for longer than this; 0 means never.",
		value: func(c *Config) flag.Value { return (*durationValue)(&c.ServerIdleTimeout) },
		check: func(c Config) string { return nonNegative(c.ServerIdleTimeout) },
	},
	{
		name:  "server-connect-timeout",
		arg:   "duration",
		usage: "Time allowed to open and authenticate a new server connection; must be greater than 0.",
		value: func(c *Config) flag.Value { return (*durationValue)(&c.ServerConnectTimeout) },
		check: func(c Config) string { return positive(c.ServerConnectTimeout) },
	},
	{
		name:  "client-login-timeout",
		arg:   "duration",
		usage: "Time a new client has to finish its startup packet; must be greater than 0.",
		value: func(c *Config) flag.Value { return (*durationValue)(&c.ClientLoginTimeout) },
		check: func(c Config) string { return positive(c.ClientLoginTimeout) },
	},
	{
		name:  "shutdown-timeout",
		arg:   "duration",
		usage: "On shutdown, how long to wait for clients to finish before closing them; 0 does not wait.",
		value: func(c *Config) flag.Value { return (*durationValue)(&c.ShutdownTimeout) },
		check: func(c Config) string { return nonNegative(c.ShutdownTimeout) },
	},
	{
		name: "max-message-size",
		arg:  "bytes",
		usage: "Largest message a client may send (units B, kB, MB, GB; kB = 1024 bytes, as in PostgreSQL); a larger one " +
			"is refused with SQLSTATE 54000 and the client closed. COPY data is streamed and never counted. At most 1GB.",
		value: func(c *Config) flag.Value { return (*sizeValue)(&c.MaxMessageSize) },
		check: func(c Config) string {
			if c.MaxMessageSize < 1024 || c.MaxMessageSize > MaxMessageSizeLimit {
				return fmt.Sprintf("must be between 1kB and 1GB - 1, got %s", formatSize(c.MaxMessageSize))
			}
			return ""
		},
	},
	{
		name: "max-message-memory",
		arg:  "bytes",
		usage: "Memory shared by all clients for Query and Parse messages larger than the 16kB read buffer, which the " +
			"proxy reads whole to track session state; a client whose message does not fit waits for it " +
			"(--query-wait-timeout, then SQLSTATE 53200). At least 1MB.",
		value: func(c *Config) flag.Value { return (*sizeValue)(&c.MaxMessageMemory) },
		check: func(c Config) string {
			if c.MaxMessageMemory < 1<<20 {
				return fmt.Sprintf("must be at least 1MB, got %s", formatSize(c.MaxMessageMemory))
			}
			return ""
		},
	},
	{
		name:  "max-client-prepared-statements",
		arg:   "n",
		usage: "Transaction mode: named prepared statements one client may hold; more get SQLSTATE 54000.",
		value: func(c *Config) flag.Value { return (*intValue)(&c.MaxClientPreparedStatements) },
		check: func(c Config) string {
			if c.MaxClientPreparedStatements < 1 {
				return fmt.Sprintf("must be at least 1, got %d", c.MaxClientPreparedStatements)
			}
			return ""
		},
	},
	{
		name:  "max-client-prepared-bytes",
		arg:   "bytes",
		usage: "Transaction mode: statement text (query and parameter types) one client's named prepared statements may hold; more get SQLSTATE 54000.",
		value: func(c *Config) flag.Value { return (*sizeValue)(&c.MaxClientPreparedBytes) },
		check: func(c Config) string {
			if c.MaxClientPreparedBytes < 1024 {
				return fmt.Sprintf("must be at least 1kB, got %s", formatSize(c.MaxClientPreparedBytes))
			}
			return ""
		},
	},
	{
		name: "readiness-checks-upstream",
		arg:  "",
		usage: "Make /readyz fail (503) while no server connection to the upstream can be opened. Off by default: " +
			"a database outage would then take every pod out of its Service.",
		value: func(c *Config) flag.Value { return (*boolValue)(&c.ReadinessChecksUpstream) },
		check: func(c Config) string { return "" },
	},
	{
		name:  "log-format",
		arg:   "text|json",
		usage: "Log output format.",
		value: func(c *Config) flag.Value { return (*logFormatValue)(&c.LogFormat) },
		check: func(c Config) string {
			if c.LogFormat != LogFormatText && c.LogFormat != LogFormatJSON {
				return fmt.Sprintf("must be %s or %s, got %q", LogFormatText, LogFormatJSON, c.LogFormat)
			}
			return ""
		},
		restart: true,
	},
	{
		name:  "log-level",
		arg:   "level",
		usage: "Minimum level logged: debug, info, warn or error.",
		value: func(c *Config) flag.Value { return (*logLevelValue)(&c.LogLevel) },
		check: func(c Config) string {
			if name, ok := logLevelName(c.LogLevel); !ok {
				return "must be debug, info, warn or error, got " + name
			}
			return ""
		},
	},
}

// FlagNames returns the names (without dashes) of all flags registered by
// [Bind], in the order [FlagUsage] lists them.
func FlagNames() []string {
	names := make([]string, len(specs))
	for i, s := range specs {
		names[i] = s.name
	}
	return names
}

// EnvName returns the environment variable that sets the flag named
// flagName: [EnvPrefix] followed by the name upper-cased with '-' replaced by
// '_', e.g. "pool-size" → "PGSIDECAR_POOL_SIZE".
func EnvName(flagName string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Bind registers every configuration flag on fs, bound to the fields of cfg,
// with cfg's current values as the defaults (normally cfg holds [Default]()).
// cfg must not be nil and fs must not already define any of the flags.
//
// The returned applyEnv must be called after [ParseArgs] (or fs.Parse). For
// every flag not set on the command line it reads PGSIDECAR_<NAME> through getenv (os.Getenv if
// getenv is nil) and, if the value is non-empty, parses it with the same
// flag.Value as the command line would. For --upstream, DATABASE_URL is used
// when PGSIDECAR_UPSTREAM is empty. Because an empty value counts as unset,
// use "off" to disable the HTTP server from the environment.
//
// applyEnv returns nil or an error joining one error per invalid variable,
// each naming the variable and its flag. Valid variables are applied even
// when others are invalid. Variables that belong to no flag are reported by
// [CheckEnviron].
func Bind(fs *flag.FlagSet, cfg *Config) (applyEnv func(getenv func(string) string) error) {
	values := make([]flag.Value, len(specs))
	for i, s := range specs {
		values[i] = s.value(cfg)
		fs.Var(values[i], s.name, s.usage)
	}
	return func(getenv func(string) string) error {
		if getenv == nil {
			getenv = os.Getenv
		}
		onCommandLine := make(map[string]bool)
		fs.Visit(func(f *flag.Flag) { onCommandLine[f.Name] = true })

		var errs []error
		for i, s := range specs {
			if onCommandLine[s.name] {
				continue
			}
			env := EnvName(s.name)
			val := getenv(env)
			if val == "" && s.name == flagUpstream {
				env, val = DatabaseURLEnv, getenv(DatabaseURLEnv)
			}
			if val == "" {
				continue
			}
			if err := values[i].Set(val); err != nil {
				errs = append(errs, invalidValue(&s, env, val, err))
			}
		}
		return errors.Join(errs...)
	}
}

// invalidValue is the error for val, which the flag of s rejected with err,
// given as where: "--name" on the command line, or the environment variable.
// A secret value is not repeated.
func invalidValue(s *spec, where, val string, err error) error {
	switch onCommandLine := where == "--"+s.name; {
	case onCommandLine && s.secret:
		return fmt.Errorf("%s: invalid value: %w", where, err)
	case onCommandLine:
		return fmt.Errorf("%s: invalid value %q: %w", where, val, err)
	case s.secret:
		return fmt.Errorf("%s: invalid value for --%s: %w", where, s.name, err)
	}
	return fmt.Errorf("%s: invalid value %q for --%s: %w", where, val, s.name, err)
}

// FlagUsage writes help text for the flags of fs to w: first every flag
// registered by [Bind], in table order, each with its placeholder, meaning,
// environment variable and default (the default shown is the one fs holds,
// i.e. the value cfg had when Bind was called; passwords in the upstream are
// not shown); then any other flags defined on fs. It is meant to be used as
//
//	fs.Usage = func() { config.FlagUsage(fs.Output(), fs) }
func FlagUsage(w io.Writer, fs *flag.FlagSet) {
	var b strings.Builder
	b.WriteString("Flags (each can also be set by the environment variable shown;\n" +
		"a flag given on the command line wins over its variable):\n")
	known := make(map[string]bool, len(specs))
	def := Default()
	for _, s := range specs {
		known[s.name] = true
		defValue := s.value(&def).String()
		if f := fs.Lookup(s.name); f != nil {
			defValue = f.DefValue
		}
		if s.secret {
			defValue = redactSecret(defValue)
		}
		if s.name == flagUpstream && defValue == "" {
			defValue = "$" + DatabaseURLEnv
		}
		if defValue == "" && s.emptyDefault != "" {
			defValue = s.emptyDefault
		}
		writeFlag(&b, s.name, s.arg, s.usage, EnvName(s.name), defValue)
	}

	var others []*flag.Flag
	fs.VisitAll(func(f *flag.Flag) {
		if !known[f.Name] {
			others = append(others, f)
		}
	})
	if len(others) > 0 {
		b.WriteString("\nOther flags:\n")
		for _, f := range others {
			arg, usage := flag.UnquoteUsage(f)
			defValue := f.DefValue
			if defValue == "false" || defValue == "0" {
				defValue = ""
			}
			writeFlag(&b, f.Name, arg, usage, "", defValue)
		}
	}
	io.WriteString(w, b.String())
}

// writeFlag writes one flag entry: a "  --name arg" line, the wrapped usage
// and a line with the env variable and default (each part only if non-empty).
func writeFlag(b *strings.Builder, name, arg, usage, env, defValue string) {
	const indent = "        "
	fmt.Fprintf(b, "  --%s", name)
	if arg != "" {
		fmt.Fprintf(b, " %s", arg)
	}
	b.WriteByte('\n')
	for _, line := range wrap(usage, 72) {
		b.WriteString(indent + line + "\n")
	}
	var extra []string
	if env != "" {
		extra = append(extra, "env "+env)
	}
	if defValue != "" {
		extra = append(extra, "default "+defValue)
	}
	if len(extra) > 0 {
		b.WriteString(indent + "(" + strings.Join(extra, ", ") + ")\n")
	}
}

// wrap splits text into lines of at most width bytes at spaces (a single
// longer word gets a line of its own).
func wrap(text string, width int) []string {
	var lines []string
	line := ""
	for _, word := range strings.Fields(text) {
		switch {
		case line == "":
			line = word
		case len(line)+1+len(word) <= width:
			line += " " + word
		default:
			lines = append(lines, line)
			line = word
		}
	}
	if line != "" {
		lines = append(lines, line)
	}
	return lines
}

// redactSecret hides a password in a connection string: the password of a
// postgres URL (user info or query) is replaced by "xxxxx", and any other
// string mentioning a password is replaced entirely.
func redactSecret(s string) string {
	if s == "" {
		return ""
	}
	if u, err := url.Parse(s); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		if q := u.Query(); q.Has("password") {
			q.Set("password", "xxxxx")
			u.RawQuery = q.Encode()
		}
		return u.Redacted()
	}
	if strings.Contains(strings.ToLower(s), "password") {
		return "(set, not shown: contains a password)"
	}
	return s
}

// loopbackListen reports whether addr's host is a loopback address or
// "localhost": only local processes can connect to it.
func loopbackListen(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkHostPort returns "" if addr is host:port with a numeric port in
// 0..65535 (the host may be empty, meaning all interfaces).
func checkHostPort(addr string) string {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		reason := err.Error()
		var ae *net.AddrError
		if errors.As(err, &ae) {
			reason = ae.Err
		}
		return fmt.Sprintf("must be host:port, got %q (%s)", addr, reason)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Sprintf("port must be a number between 0 and 65535, got %q in %q", port, addr)
	}
	return ""
}

func nonNegative(d time.Duration) string {
	if d < 0 {
		return "must not be negative, got " + formatDuration(d)
	}
	return ""
}

func positive(d time.Duration) string {
	if d <= 0 {
		return "must be greater than 0, got " + formatDuration(d)
	}
	return ""
}

// The flag.Value implementations below are named types over the Config field
// types, so a zero value is always usable (the flag package calls String on
// zero values) and Set errors do not repeat the input, which the flag package
// and applyEnv already quote.

// stringValue accepts any string.
type stringValue string

func (v *stringValue) Set(s string) error { *v = stringValue(s); return nil }
func (v *stringValue) String() string     { return string(*v) }

// optionalAddrValue is an address where "off" (any case) and "" mean unset;
// it prints "" as "off" so the default round-trips and shows in usage.
type optionalAddrValue string

func (v *optionalAddrValue) Set(s string) error {
	if strings.EqualFold(s, "off") {
		s = ""
	}
	*v = optionalAddrValue(s)
	return nil
}

func (v *optionalAddrValue) String() string {
	if *v == "" {
		return "off"
	}
	return string(*v)
}

// intValue accepts a decimal integer.
type intValue int

func (v *intValue) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil {
		if errors.Is(err, strconv.ErrRange) {
			return errors.New("integer out of range")
		}
		return errors.New("not an integer")
	}
	*v = intValue(n)
	return nil
}

func (v *intValue) String() string { return strconv.Itoa(int(*v)) }

// durationValue accepts a Go duration with units ("30s", "1m30s"); a bare
// number other than 0 is rejected so "30" is never silently misread.
type durationValue time.Duration

func (v *durationValue) Set(s string) error {
	d, err := parseDuration(s)
	if err != nil {
		return err
	}
	*v = durationValue(d)
	return nil
}

func (v *durationValue) String() string { return formatDuration(time.Duration(*v)) }

func parseDuration(s string) (time.Duration, error) {
	if s != "0" && isBareNumber(s) {
		return 0, fmt.Errorf("missing unit: bare numbers are not accepted, write e.g. %q or %q", s+"s", s+"ms")
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, errors.New(`not a duration: want a number with a unit (ns, us, ms, s, m, h), e.g. "30s" or "1m30s"`)
	}
	return d, nil
}

// isBareNumber reports whether s is an optionally signed decimal number
// without a unit, such as "30", "-5" or "1.5".
func isBareNumber(s string) bool {
	s = strings.TrimLeft(s, "+-")
	return strings.ContainsAny(s, "0123456789") && strings.Trim(s, "0123456789.") == ""
}

// formatDuration is time.Duration.String without trailing zero units:
// "1h" rather than "1h0m0s", "10m" rather than "10m0s".
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// logFormatValue accepts "text" or "json" (any case).
type logFormatValue string

func (v *logFormatValue) Set(s string) error {
	switch f := strings.ToLower(s); f {
	case LogFormatText, LogFormatJSON:
		*v = logFormatValue(f)
		return nil
	}
	return fmt.Errorf("want %s or %s", LogFormatText, LogFormatJSON)
}

func (v *logFormatValue) String() string { return string(*v) }

// logLevelValue accepts what ParseLogLevel accepts and prints lower case.
type logLevelValue slog.Level

func (v *logLevelValue) Set(s string) error {
	l, err := parseLogLevel(s)
	if err != nil {
		return err
	}
	*v = logLevelValue(l)
	return nil
}

func (v *logLevelValue) String() string {
	name, _ := logLevelName(slog.Level(*v))
	return name
}

// boolValue is a boolean flag: --name alone sets it; --name=false clears it.
type boolValue bool

func (v *boolValue) Set(s string) error {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return errors.New("want true or false")
	}
	*v = boolValue(b)
	return nil
}

func (v *boolValue) String() string { return strconv.FormatBool(bool(*v)) }

// IsBoolFlag tells the flag package that --name needs no value.
func (v *boolValue) IsBoolFlag() bool { return true }

// sizeValue is a number of bytes with an optional unit: B, kB, MB, GB (1024
// multiples, as PostgreSQL's memory settings) or KiB, MiB, GiB.
type sizeValue int64

func (v *sizeValue) Set(s string) error {
	n, err := ParseSize(s)
	if err != nil {
		return err
	}
	*v = sizeValue(n)
	return nil
}

func (v *sizeValue) String() string { return formatSize(int64(*v)) }

// ParseSize parses a byte count with an optional unit: B, kB, MB, GB, TB
// (multiples of 1024, as PostgreSQL's memory settings) or KiB, MiB, GiB, TiB.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, errors.New(`not a size: want a number of bytes with an optional unit (B, kB, MB, GB), e.g. "64MB"`)
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if err != nil {
		return 0, errors.New("size out of range")
	}
	var mult int64
	switch strings.TrimSpace(t[i:]) {
	case "", "B":
		mult = 1
	case "kB", "KB", "KiB":
		mult = 1 << 10
	case "MB", "MiB":
		mult = 1 << 20
	case "GB", "GiB":
		mult = 1 << 30
	case "TB", "TiB":
		mult = 1 << 40
	default:
		return 0, fmt.Errorf("unknown size unit %q: want B, kB, MB, GB or TB", strings.TrimSpace(t[i:]))
	}
	if n > (1<<62)/mult {
		return 0, errors.New("size out of range")
	}
	return n * mult, nil
}

// formatSize prints n bytes with the largest unit that divides it.
func formatSize(n int64) string {
	for _, u := range []struct {
		name string
		m    int64
	}{{"TB", 1 << 40}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"kB", 1 << 10}} {
		if n != 0 && n%u.m == 0 {
			return strconv.FormatInt(n/u.m, 10) + u.name
		}
	}
	return strconv.FormatInt(n, 10) + "B"
}

type pinPolicyValue string

func (v *pinPolicyValue) Set(s string) error {
	switch p := strings.ToLower(s); p {
	case PinPolicyPin, PinPolicyRefuse:
		*v = pinPolicyValue(p)
		return nil
	}
	return fmt.Errorf("want %s or %s", PinPolicyPin, PinPolicyRefuse)
}

func (v *pinPolicyValue) String() string { return string(*v) }
