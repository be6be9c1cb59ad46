package config_test

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/config"
)

// load runs the full Bind → ParseArgs → applyEnv sequence on a fresh FlagSet
// starting from Default(), with env as the only environment.
func load(t *testing.T, args []string, env map[string]string) (cfg config.Config, parseErr, envErr error) {
	t.Helper()
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg = config.Default()
	applyEnv := config.Bind(fs, &cfg)
	positional, help, parseErr := config.ParseArgs(fs, args)
	if help || len(positional) > 0 {
		t.Fatalf("ParseArgs(%q): help %v, positional %q", args, help, positional)
	}
	if parseErr != nil {
		return cfg, parseErr, nil
	}
	envErr = applyEnv(func(k string) string { return env[k] })
	return cfg, nil, envErr
}

func mustLoad(t *testing.T, args []string, env map[string]string) config.Config {
	t.Helper()
	cfg, parseErr, envErr := load(t, args, env)
	if parseErr != nil || envErr != nil {
		t.Fatalf("load(%q, %v): parse error %v, env error %v", args, env, parseErr, envErr)
	}
	return cfg
}

func wantErrContains(t *testing.T, err error, wants ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got nil error, want one containing %q", wants)
	}
	for _, w := range wants {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
}

func TestDefault(t *testing.T) {
	want := config.Config{
		Listen:                 "127.0.0.1:6432",
		Upstream:               "",
		PoolMode:               config.PoolModeTransaction,
		PoolSize:               20,
		MaxClientConn:          1000,
		HTTPListen:             "127.0.0.1:9127",
		StatusListen:           "127.0.0.1:9128",
		LeakThreshold:          10 * time.Second,
		IdleTransactionTimeout: 0,
		MaxPreparedStatements:  256,
		TransactionTimeout:     0,
		PinPolicy:              "pin",
		ClientAuth:             "scram-sha-256",
		AuthQueryTTL:           time.Minute,
		FleetMin:               1,
		GCPercent:              50,
		MaxApplicationLabels:   20,
		QueryWaitTimeout:       30 * time.Second,
		ServerLifetime:         time.Hour,
		ServerIdleTimeout:      10 * time.Minute,
		ServerConnectTimeout:   5 * time.Second,
		ClientLoginTimeout:     15 * time.Second,
		ShutdownTimeout:        30 * time.Second,
		LogFormat:              "text",
		LogLevel:               slog.LevelInfo,

		MaxMessageSize:              64 << 20,
		MaxMessageMemory:            128 << 20,
		MaxClientPreparedStatements: 10000,
		MaxClientPreparedBytes:      16 << 20,
	}
	if got := config.Default(); got != want {
		t.Errorf("Default() =\n%+v\nwant\n%+v", got, want)
	}
	// No flags, no env: Bind leaves the defaults untouched.
	if got := mustLoad(t, nil, nil); got != want {
		t.Errorf("after Bind/Parse/applyEnv with nothing set =\n%+v\nwant\n%+v", got, want)
	}
	// The only problem with the defaults is the missing upstream.
	err := config.Default().Validate()
	wantErrContains(t, err, "--upstream: must not be empty")
	if n := len(strings.Split(err.Error(), "\n")); n != 1 {
		t.Errorf("Default().Validate() reported %d problems, want 1: %v", n, err)
	}
	withUpstream := config.Default()
	withUpstream.Upstream = "postgres://app@localhost/app"
	if err := withUpstream.Validate(); err != nil {
		t.Errorf("Default() with upstream: Validate() = %v, want nil", err)
	}
}

// Every Config field has exactly one flag, and every flag one env twin; the
// two fields of the password read from --upstream-password-file and the
// contents of --auth-file, --tls-cert, --tls-key and --tls-client-ca are the
// only exceptions.
func TestEveryFieldHasAFlag(t *testing.T) {
	names := config.FlagNames()
	if got, want := len(names), reflect.TypeFor[config.Config]().NumField()-6; got != want {
		t.Errorf("%d flags for %d Config fields", got, want)
	}
	seen := map[string]bool{}
	for _, n := range names {
		if seen[n] {
			t.Errorf("flag %q listed twice", n)
		}
		seen[n] = true
	}
	if got, want := config.EnvName("idle-transaction-timeout"), "PGSIDECAR_IDLE_TRANSACTION_TIMEOUT"; got != want {
		t.Errorf("EnvName = %q, want %q", got, want)
	}
}

func TestPrecedence(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		env   map[string]string
		check func(config.Config) (got, want any)
	}{
		{
			name:  "flag beats env",
			args:  []string{"--pool-size=50"},
			env:   map[string]string{"PGSIDECAR_POOL_SIZE": "70"},
			check: func(c config.Config) (any, any) { return c.PoolSize, 50 },
		},
		{
			name:  "flag beats invalid env (env is not even parsed)",
			args:  []string{"--pool-size", "50"},
			env:   map[string]string{"PGSIDECAR_POOL_SIZE": "lots"},
			check: func(c config.Config) (any, any) { return c.PoolSize, 50 },
		},
		{
			name:  "env applies when no flag",
			env:   map[string]string{"PGSIDECAR_POOL_SIZE": "70"},
			check: func(c config.Config) (any, any) { return c.PoolSize, 70 },
		},
		{
			name:  "env duration with multi-word name",
			env:   map[string]string{"PGSIDECAR_IDLE_TRANSACTION_TIMEOUT": "1m30s"},
			check: func(c config.Config) (any, any) { return c.IdleTransactionTimeout, 90 * time.Second },
		},
		{
			name:  "env pool mode",
			env:   map[string]string{"PGSIDECAR_POOL_MODE": "session"},
			check: func(c config.Config) (any, any) { return c.PoolMode, config.PoolModeSession },
		},
		{
			name:  "env log level",
			env:   map[string]string{"PGSIDECAR_LOG_LEVEL": "debug"},
			check: func(c config.Config) (any, any) { return c.LogLevel, slog.LevelDebug },
		},
		{
			name:  "env off disables http",
			env:   map[string]string{"PGSIDECAR_HTTP_LISTEN": "off"},
			check: func(c config.Config) (any, any) { return c.HTTPListen, "" },
		},
		{
			name:  "empty flag disables http",
			args:  []string{"--http-listen="},
			env:   map[string]string{"PGSIDECAR_HTTP_LISTEN": "0.0.0.0:9999"},
			check: func(c config.Config) (any, any) { return c.HTTPListen, "" },
		},
		{
			name:  "empty env value counts as unset",
			env:   map[string]string{"PGSIDECAR_LISTEN": ""},
			check: func(c config.Config) (any, any) { return c.Listen, "127.0.0.1:6432" },
		},
		{
			name:  "DATABASE_URL fallback for upstream",
			env:   map[string]string{"DATABASE_URL": "postgres://db/fallback"},
			check: func(c config.Config) (any, any) { return c.Upstream, "postgres://db/fallback" },
		},
		{
			name: "PGSIDECAR_UPSTREAM beats DATABASE_URL",
			env: map[string]string{
				"DATABASE_URL":       "postgres://db/fallback",
				"PGSIDECAR_UPSTREAM": "host=db dbname=app",
			},
			check: func(c config.Config) (any, any) { return c.Upstream, "host=db dbname=app" },
		},
		{
			name: "--upstream beats both",
			args: []string{"--upstream", "postgres://db/flag"},
			env: map[string]string{
				"DATABASE_URL":       "postgres://db/fallback",
				"PGSIDECAR_UPSTREAM": "host=db dbname=app",
			},
			check: func(c config.Config) (any, any) { return c.Upstream, "postgres://db/flag" },
		},
		{
			name:  "DATABASE_URL does not affect other flags",
			env:   map[string]string{"DATABASE_URL": "postgres://db/fallback"},
			check: func(c config.Config) (any, any) { return c.Listen, "127.0.0.1:6432" },
		},
		{
			name:  "unrelated flag on command line does not block env",
			args:  []string{"--pool-size=5"},
			env:   map[string]string{"PGSIDECAR_MAX_CLIENT_CONN": "7"},
			check: func(c config.Config) (any, any) { return c.MaxClientConn, 7 },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := mustLoad(t, tt.args, tt.env)
			if got, want := tt.check(cfg); got != want {
				t.Errorf("got %v, want %v", got, want)
			}
		})
	}
}

func TestAllFlagsParse(t *testing.T) {
	args := []string{
		"--listen=:5432",
		"--upstream=postgres://u@h/d",
		"--pool-mode=SESSION",
		"--pool-size=3",
		"--max-client-conn=4",
		"--http-listen=[::1]:8080",
		"--status-listen=off",
		"--leak-threshold=0",
		"--idle-transaction-timeout=2m",
		"--max-prepared-statements=0",
		"--pin-policy=REFUSE",
		"--gc-percent=80",
		"--max-application-labels=7",
		"--transaction-timeout=90s",
		"--query-wait-timeout=1500ms",
		"--server-lifetime=0s",
		"--server-idle-timeout=1h",
		"--server-connect-timeout=2s",
		"--client-login-timeout=3s",
		"--shutdown-timeout=4s",
		"--log-format=JSON",
		"--log-level=Warning",
		"--max-message-size=1MB",
		"--max-message-memory=2GiB",
		"--max-client-prepared-statements=5",
		"--max-client-prepared-bytes=65536",
		"--readiness-checks-upstream=true",
		"--client-auth=md5",
		"--allow-remote-trust=true",
		"--allow-routes=reports/*,*/app",
		"--auth-query=SELECT p FROM f($1)",
		"--auth-query-ttl=5s",
		"--fleet-budget=12",
		"--fleet-name=workers",
		"--fleet-min=2",
	}
	want := config.Config{
		Listen:                 ":5432",
		Upstream:               "postgres://u@h/d",
		PoolMode:               config.PoolModeSession,
		PoolSize:               3,
		MaxClientConn:          4,
		HTTPListen:             "[::1]:8080",
		StatusListen:           "",
		LeakThreshold:          0,
		IdleTransactionTimeout: 2 * time.Minute,
		PinPolicy:              "refuse",
		GCPercent:              80,
		MaxApplicationLabels:   7,
		TransactionTimeout:     90 * time.Second,
		QueryWaitTimeout:       1500 * time.Millisecond,
		ServerLifetime:         0,
		ServerIdleTimeout:      time.Hour,
		ServerConnectTimeout:   2 * time.Second,
		ClientLoginTimeout:     3 * time.Second,
		ShutdownTimeout:        4 * time.Second,
		LogFormat:              "json",
		LogLevel:               slog.LevelWarn,

		MaxMessageSize:              1 << 20,
		MaxMessageMemory:            2 << 30,
		MaxClientPreparedStatements: 5,
		MaxClientPreparedBytes:      64 << 10,
		ReadinessChecksUpstream:     true,
		ClientAuth:                  "md5",
		AllowRemoteTrust:            true,
		AllowRoutes:                 "reports/*,*/app",
		AuthQuery:                   "SELECT p FROM f($1)",
		AuthQueryTTL:                5 * time.Second,
		FleetBudget:                 12,
		FleetName:                   "workers",
		FleetMin:                    2,
	}
	got := mustLoad(t, args, nil)
	if got != want {
		t.Errorf("got\n%+v\nwant\n%+v", got, want)
	}
	if err := got.Validate(); err != nil {
		t.Errorf("Validate() = %v", err)
	}

	// The same through the environment.
	env := map[string]string{}
	for _, a := range args {
		name, val, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		env[config.EnvName(name)] = val
	}
	if got := mustLoad(t, nil, env); got != want {
		t.Errorf("via env: got\n%+v\nwant\n%+v", got, want)
	}
}

func TestBadEnvValueNamesVariable(t *testing.T) {
	tests := []struct {
		env  map[string]string
		want []string
	}{
		{
			env:  map[string]string{"PGSIDECAR_POOL_SIZE": "lots"},
			want: []string{`PGSIDECAR_POOL_SIZE: invalid value "lots" for --pool-size: not an integer`},
		},
		{
			env:  map[string]string{"PGSIDECAR_MAX_CLIENT_CONN": "99999999999999999999"},
			want: []string{"PGSIDECAR_MAX_CLIENT_CONN", "integer out of range"},
		},
		{
			env: map[string]string{"PGSIDECAR_QUERY_WAIT_TIMEOUT": "30"},
			want: []string{
				`PGSIDECAR_QUERY_WAIT_TIMEOUT: invalid value "30" for --query-wait-timeout`,
				`missing unit: bare numbers are not accepted, write e.g. "30s"`,
			},
		},
		{
			env:  map[string]string{"PGSIDECAR_SERVER_LIFETIME": "forever"},
			want: []string{"PGSIDECAR_SERVER_LIFETIME", "not a duration", "e.g. \"30s\""},
		},
		{
			env:  map[string]string{"PGSIDECAR_POOL_MODE": "statement"},
			want: []string{"PGSIDECAR_POOL_MODE", "statement pooling is not supported"},
		},
		{
			env:  map[string]string{"PGSIDECAR_LOG_FORMAT": "xml"},
			want: []string{`PGSIDECAR_LOG_FORMAT: invalid value "xml" for --log-format: want text or json`},
		},
		{
			env:  map[string]string{"PGSIDECAR_LOG_LEVEL": "verbose"},
			want: []string{"PGSIDECAR_LOG_LEVEL", "want debug, info, warn or error"},
		},
		{
			// Several bad variables: all reported; the good one still applies.
			env: map[string]string{
				"PGSIDECAR_POOL_SIZE":        "x",
				"PGSIDECAR_LOG_LEVEL":        "loud",
				"PGSIDECAR_SHUTDOWN_TIMEOUT": "5",
				"PGSIDECAR_LISTEN":           ":7000",
			},
			want: []string{"PGSIDECAR_POOL_SIZE", "PGSIDECAR_LOG_LEVEL", "PGSIDECAR_SHUTDOWN_TIMEOUT"},
		},
	}
	for _, tt := range tests {
		t.Run(strings.Join(mapKeys(tt.env), ","), func(t *testing.T) {
			cfg, parseErr, envErr := load(t, nil, tt.env)
			if parseErr != nil {
				t.Fatalf("parse: %v", parseErr)
			}
			wantErrContains(t, envErr, tt.want...)
			// One error per invalid variable (PGSIDECAR_LISTEN is valid).
			wantErrs := len(tt.env)
			if _, ok := tt.env["PGSIDECAR_LISTEN"]; ok {
				wantErrs--
			}
			if n := len(envErr.(interface{ Unwrap() []error }).Unwrap()); n != wantErrs {
				t.Errorf("got %d errors, want %d: %v", n, wantErrs, envErr)
			}
			if v, ok := tt.env["PGSIDECAR_LISTEN"]; ok && cfg.Listen != v {
				t.Errorf("valid PGSIDECAR_LISTEN not applied: Listen = %q", cfg.Listen)
			}
		})
	}
}

func mapKeys(m map[string]string) []string {
	return slices.Sorted(maps.Keys(m))
}

func TestBadFlagValues(t *testing.T) {
	tests := []struct {
		arg  string
		want string
	}{
		{"--pool-mode=statement", `--pool-mode: invalid value "statement": statement pooling is not supported (want transaction or session)`},
		{"--pool-mode=bogus", `--pool-mode: invalid value "bogus": want transaction or session`},
		{"--pool-size=1.5", `--pool-size: invalid value "1.5": not an integer`},
		{"--leak-threshold=10", `--leak-threshold: invalid value "10": missing unit: bare numbers are not accepted, write e.g. "10s" or "10ms"`},
		{"--leak-threshold=1.5", `missing unit`},
		{"--leak-threshold=", `not a duration`},
		{"--log-level=trace", `--log-level: invalid value "trace": want debug, info, warn or error`},
		{"--log-format=logfmt", `--log-format: invalid value "logfmt": want text or json`},
		{"-log-format=logfmt", `--log-format: invalid value "logfmt": want text or json`},
		{"--max-message-size=64XB", `--max-message-size: invalid value "64XB": unknown size unit "XB": want B, kB, MB, GB or TB`},
		{"--readiness-checks-upstream=maybe", `--readiness-checks-upstream: invalid value "maybe": want true or false`},
	}
	for _, tt := range tests {
		t.Run(tt.arg, func(t *testing.T) {
			_, parseErr, _ := load(t, []string{tt.arg}, nil)
			wantErrContains(t, parseErr, tt.want)
			// The flag is named with two dashes, first, never as the flag
			// package's "-name".
			if parseErr != nil && !strings.HasPrefix(parseErr.Error(), "--") {
				t.Errorf("error %q does not start with the flag", parseErr)
			}
		})
	}
}

func TestPoolMode(t *testing.T) {
	tests := []struct {
		in      string
		want    config.PoolMode
		wantErr string
	}{
		{"transaction", config.PoolModeTransaction, ""},
		{"session", config.PoolModeSession, ""},
		{"Session", config.PoolModeSession, ""},
		{"statement", 0, `invalid pool mode "statement": statement pooling is not supported`},
		{"", 0, `invalid pool mode "": want transaction or session`},
		{"txn", 0, `invalid pool mode "txn": want transaction or session`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := config.ParsePoolMode(tt.in)
			if tt.wantErr != "" {
				wantErrContains(t, err, tt.wantErr)
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParsePoolMode(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
			text, err := got.MarshalText()
			if err != nil {
				t.Fatal(err)
			}
			var back config.PoolMode
			if err := back.UnmarshalText(text); err != nil || back != got {
				t.Errorf("text round trip: %q -> %v, %v", text, back, err)
			}
		})
	}
	if got := config.PoolModeTransaction.String(); got != "transaction" {
		t.Errorf("String() = %q", got)
	}
	if got := config.PoolMode(7).String(); got != "PoolMode(7)" {
		t.Errorf("String() = %q", got)
	}
	if _, err := config.PoolMode(7).MarshalText(); err == nil {
		t.Error("MarshalText of invalid mode succeeded")
	}
}

func TestLogLevel(t *testing.T) {
	tests := []struct {
		in      string
		want    slog.Level
		wantErr string
	}{
		{"debug", slog.LevelDebug, ""},
		{"info", slog.LevelInfo, ""},
		{"INFO", slog.LevelInfo, ""},
		{"warn", slog.LevelWarn, ""},
		{"warning", slog.LevelWarn, ""},
		{"error", slog.LevelError, ""},
		{"trace", 0, `invalid log level "trace": want debug, info, warn or error`},
		{"INFO+2", 0, `invalid log level "INFO+2"`},
		{"", 0, `invalid log level ""`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := config.ParseLogLevel(tt.in)
			if tt.wantErr != "" {
				wantErrContains(t, err, tt.wantErr)
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseLogLevel(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
			cfg := mustLoad(t, []string{"--log-level", tt.in}, nil)
			if cfg.LogLevel != tt.want {
				t.Errorf("--log-level %s: LogLevel = %v, want %v", tt.in, cfg.LogLevel, tt.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	valid := config.Default()
	valid.Upstream = "postgres://app@db/app"

	tests := []struct {
		name   string
		modify func(*config.Config)
		want   []string // every line expected in the error, in order
	}{
		{"valid", func(*config.Config) {}, nil},
		{"http off", func(c *config.Config) { c.HTTPListen = "" }, nil},
		{"port 0 and all interfaces", func(c *config.Config) { c.Listen = ":0"; c.HTTPListen = ":0" }, nil},
		{"ipv6", func(c *config.Config) { c.Listen = "[::1]:6432" }, nil},
		{"zero where allowed", func(c *config.Config) {
			c.LeakThreshold, c.IdleTransactionTimeout, c.ServerLifetime, c.ServerIdleTimeout, c.ShutdownTimeout = 0, 0, 0, 0, 0
		}, nil},
		{"pool size bounds ok", func(c *config.Config) { c.PoolSize = 10000; c.MaxClientConn = 1 }, nil},
		{"pool size 0", func(c *config.Config) { c.PoolSize = 0 }, []string{
			"--pool-size: must be between 1 and 10000, got 0",
		}},
		{"pool size too big", func(c *config.Config) { c.PoolSize = 10001 }, []string{
			"--pool-size: must be between 1 and 10000, got 10001",
		}},
		{"listen without port", func(c *config.Config) { c.Listen = "127.0.0.1" }, []string{
			`--listen: must be host:port, got "127.0.0.1" (missing port in address)`,
		}},
		{"listen named port", func(c *config.Config) { c.Listen = "localhost:postgres" }, []string{
			`--listen: port must be a number between 0 and 65535, got "postgres" in "localhost:postgres"`,
		}},
		{"http port out of range", func(c *config.Config) { c.HTTPListen = "0.0.0.0:65536" }, []string{
			`--http-listen: port must be a number between 0 and 65535, got "65536" in "0.0.0.0:65536"`,
		}},
		{"same address twice", func(c *config.Config) { c.HTTPListen = c.Listen }, []string{
			`--http-listen: must differ from --listen, both are "127.0.0.1:6432"`,
		}},
		{"bad pool mode", func(c *config.Config) { c.PoolMode = 2 }, []string{
			"--pool-mode: must be transaction or session, got PoolMode(2)",
		}},
		{"bad log level", func(c *config.Config) { c.LogLevel = slog.LevelInfo + 2 }, []string{
			"--log-level: must be debug, info, warn or error, got INFO+2",
		}},
		{
			name: "many problems at once",
			modify: func(c *config.Config) {
				c.Listen = ""
				c.Upstream = ""
				c.PoolSize = 0
				c.MaxClientConn = 0
				c.HTTPListen = "nonsense"
				c.LeakThreshold = -time.Second
				c.IdleTransactionTimeout = -time.Minute
				c.MaxPreparedStatements = -1
				c.PinPolicy = "never"
				c.QueryWaitTimeout = 0
				c.ServerLifetime = -time.Hour
				c.ServerIdleTimeout = -time.Second
				c.ServerConnectTimeout = -time.Second
				c.ClientLoginTimeout = 0
				c.ShutdownTimeout = -90 * time.Second
				c.LogFormat = "xml"
			},
			want: []string{
				`--listen: must be host:port, got "" (missing port in address)`,
				"--upstream: must not be empty (set --upstream, --upstream-file, PGSIDECAR_UPSTREAM or DATABASE_URL)",
				"--pool-size: must be between 1 and 10000, got 0",
				"--max-client-conn: must be at least 1, got 0",
				`--http-listen: must be host:port, got "nonsense" (missing port in address)`,
				"--leak-threshold: must not be negative, got -1s",
				"--idle-transaction-timeout: must not be negative, got -1m",
				"--max-prepared-statements: must be between 0 and 100000, got -1",
				`--pin-policy: must be pin or refuse, got "never"`,
				"--query-wait-timeout: must be greater than 0, got 0s",
				"--server-lifetime: must not be negative, got -1h",
				"--server-idle-timeout: must not be negative, got -1s",
				"--server-connect-timeout: must be greater than 0, got -1s",
				"--client-login-timeout: must be greater than 0, got 0s",
				"--shutdown-timeout: must not be negative, got -1m30s",
				`--log-format: must be text or json, got "xml"`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid
			tt.modify(&c)
			err := c.Validate()
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want %q", tt.want)
			}
			// errors.Join: one wrapped error per problem.
			joined, ok := err.(interface{ Unwrap() []error })
			if !ok {
				t.Fatalf("Validate() error %T is not a joined error", err)
			}
			if got := len(joined.Unwrap()); got != len(tt.want) {
				t.Errorf("got %d problems, want %d:\n%v", got, len(tt.want), err)
			}
			lines := strings.Split(err.Error(), "\n")
			for i, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("missing problem %q in:\n%v", w, err)
				} else if i < len(lines) && lines[i] != w {
					t.Errorf("problem %d = %q, want %q", i, lines[i], w)
				}
			}
		})
	}
}

func TestFlagUsage(t *testing.T) {
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	cfg := config.Default()
	cfg.PoolSize = 42 // defaults shown come from the Config given to Bind
	config.Bind(fs, &cfg)
	fs.Bool("version", false, "print the version and exit")

	var buf bytes.Buffer
	config.FlagUsage(&buf, fs)
	out := buf.String()

	for _, name := range config.FlagNames() {
		if !strings.Contains(out, "  --"+name+" ") && !strings.Contains(out, "  --"+name+"\n") {
			t.Errorf("usage does not list --%s", name)
		}
		if !strings.Contains(out, "env "+config.EnvName(name)+",") {
			t.Errorf("usage does not mention %s", config.EnvName(name))
		}
	}
	for _, want := range []string{
		"env PGSIDECAR_POOL_SIZE, default 42)",
		"env PGSIDECAR_LISTEN, default 127.0.0.1:6432)",
		"env PGSIDECAR_UPSTREAM, default $DATABASE_URL)",
		"env PGSIDECAR_SERVER_LIFETIME, default 1h)",
		"env PGSIDECAR_SERVER_IDLE_TIMEOUT, default 10m)",
		"env PGSIDECAR_IDLE_TRANSACTION_TIMEOUT, default 0s)",
		"env PGSIDECAR_LOG_LEVEL, default info)",
		"env PGSIDECAR_POOL_MODE, default transaction)",
		"Other flags:\n  --version\n        print the version and exit\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("usage lacks %q:\n%s", want, out)
		}
	}
	for _, line := range strings.Split(out, "\n") {
		if len(line) > 80 {
			t.Errorf("usage line longer than 80 columns: %q", line)
		}
	}

	// Every default shown must be accepted back by its own flag.
	for _, name := range config.FlagNames() {
		f := fs.Lookup(name)
		if err := f.Value.Set(f.DefValue); err != nil {
			t.Errorf("--%s: default %q does not parse: %v", name, f.DefValue, err)
		}
	}
	if cfg != func() config.Config { c := config.Default(); c.PoolSize = 42; return c }() {
		t.Errorf("re-setting defaults changed the config: %+v", cfg)
	}
}

func TestFlagUsageRedactsUpstreamPassword(t *testing.T) {
	tests := []struct {
		upstream string
		want     string
		secret   string
	}{
		{"postgres://app:s3cret@db:5432/app", "default postgres://app:xxxxx@db:5432/app)", "s3cret"},
		{"postgres://app@db/app?password=s3cret", "password=xxxxx", "s3cret"},
		{"host=db user=app password=s3cret", "(set, not shown: contains a password)", "s3cret"},
		{"host=db user=app", "default host=db user=app)", ""},
	}
	for _, tt := range tests {
		t.Run(tt.upstream, func(t *testing.T) {
			fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
			cfg := config.Default()
			cfg.Upstream = tt.upstream
			config.Bind(fs, &cfg)
			var buf bytes.Buffer
			config.FlagUsage(&buf, fs)
			if !strings.Contains(buf.String(), tt.want) {
				t.Errorf("usage lacks %q:\n%s", tt.want, buf.String())
			}
			if tt.secret != "" && strings.Contains(buf.String(), tt.secret) {
				t.Errorf("usage leaks the password %q", tt.secret)
			}
		})
	}
}

// FlagUsage also works as fs.Usage, which the flag package calls on -help.
func TestFlagUsageAsFlagSetUsage(t *testing.T) {
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	var buf bytes.Buffer
	fs.SetOutput(&buf)
	cfg := config.Default()
	config.Bind(fs, &cfg)
	fs.Usage = func() { config.FlagUsage(fs.Output(), fs) }
	if err := fs.Parse([]string{"--help"}); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("Parse(--help) = %v, want flag.ErrHelp", err)
	}
	if !strings.Contains(buf.String(), "--query-wait-timeout duration") {
		t.Errorf("help output:\n%s", buf.String())
	}
}

// Trust needs a loopback listener unless --allow-remote-trust says otherwise.
func TestClientAuthTrustNeedsLoopback(t *testing.T) {
	for _, tc := range []struct {
		listen string
		remote bool
		ok     bool
	}{
		{"127.0.0.1:6432", false, true},
		{"[::1]:6432", false, true},
		{"localhost:6432", false, true},
		{"0.0.0.0:6432", false, false},
		{":6432", false, false},
		{"10.1.2.3:6432", false, false},
		{"0.0.0.0:6432", true, true},
	} {
		c := config.Default()
		c.Upstream = "postgres://app@db/app"
		c.Listen, c.ClientAuth, c.AllowRemoteTrust = tc.listen, "trust", tc.remote
		err := c.Validate()
		if tc.ok && err != nil {
			t.Errorf("listen %s, allow-remote-trust %v: %v", tc.listen, tc.remote, err)
		}
		if !tc.ok {
			wantErrContains(t, err, "--client-auth: trust lets anyone")
		}
	}
	c := config.Default()
	c.Upstream = "postgres://app@db/app"
	c.ClientAuth = "password"
	wantErrContains(t, c.Validate(), `--client-auth: must be scram-sha-256, md5 or trust, got "password"`)
	c.ClientAuth, c.AllowRoutes = "md5", "reports/*,app"
	wantErrContains(t, c.Validate(), `--allow-routes: each entry must be database/user, got "app"`)
}
