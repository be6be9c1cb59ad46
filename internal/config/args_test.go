package config_test

import (
	"errors"
	"flag"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/config"
)

// parse binds a fresh FlagSet (with an extra --version boolean, as the proxy
// has) and runs ParseArgs on args.
func parse(args ...string) (cfg *config.Config, fs *flag.FlagSet, positional []string, help bool, err error) {
	fs = flag.NewFlagSet("proxy", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c := config.Default()
	config.Bind(fs, &c)
	fs.Bool("version", false, "print the version and exit")
	positional, help, err = config.ParseArgs(fs, args)
	return &c, fs, positional, help, err
}

// errLines splits a joined error into its lines; nil has none.
func errLines(err error) []string {
	if err == nil {
		return nil
	}
	return strings.Split(err.Error(), "\n")
}

func TestParseArgsForms(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		check      func(config.Config) (got, want any)
		positional []string
	}{
		{"--name value", []string{"--pool-size", "5"}, func(c config.Config) (any, any) { return c.PoolSize, 5 }, nil},
		{"-name value", []string{"-pool-size", "5"}, func(c config.Config) (any, any) { return c.PoolSize, 5 }, nil},
		{"--name=value", []string{"--pool-size=5"}, func(c config.Config) (any, any) { return c.PoolSize, 5 }, nil},
		{"-name=value", []string{"-pool-size=5"}, func(c config.Config) (any, any) { return c.PoolSize, 5 }, nil},
		{"value with =", []string{"--upstream", "host=db user=app"}, func(c config.Config) (any, any) { return c.Upstream, "host=db user=app" }, nil},
		{"--name=value with =", []string{"--upstream=host=db"}, func(c config.Config) (any, any) { return c.Upstream, "host=db" }, nil},
		{"empty value", []string{"--http-listen="}, func(c config.Config) (any, any) { return c.HTTPListen, "" }, nil},
		{"value starting with a dash", []string{"--leak-threshold", "-1s"}, func(c config.Config) (any, any) { return c.LeakThreshold, -time.Second }, nil},
		{"last one wins", []string{"--pool-size=5", "--pool-size=6"}, func(c config.Config) (any, any) { return c.PoolSize, 6 }, nil},
		{"boolean alone", []string{"--readiness-checks-upstream"}, func(c config.Config) (any, any) { return c.ReadinessChecksUpstream, true }, nil},
		{"boolean takes no separate value", []string{"--readiness-checks-upstream", "--pool-size", "5"},
			func(c config.Config) (any, any) {
				return [2]any{c.ReadinessChecksUpstream, c.PoolSize}, [2]any{true, 5}
			}, nil},
		{"boolean=false", []string{"--readiness-checks-upstream", "--readiness-checks-upstream=false"},
			func(c config.Config) (any, any) { return c.ReadinessChecksUpstream, false }, nil},
		{"boolean's next word is positional", []string{"--readiness-checks-upstream", "false"},
			func(c config.Config) (any, any) { return c.ReadinessChecksUpstream, true }, []string{"false"}},
		{"positional between flags", []string{"a", "--pool-size", "5", "-", "b"},
			func(c config.Config) (any, any) { return c.PoolSize, 5 }, []string{"a", "-", "b"}},
		{"-- ends the flags", []string{"--pool-size", "5", "--", "--pool-size", "6"},
			func(c config.Config) (any, any) { return c.PoolSize, 5 }, []string{"--pool-size", "6"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _, positional, help, err := parse(tt.args...)
			if err != nil || help {
				t.Fatalf("ParseArgs(%q): help %v, error %v", tt.args, help, err)
			}
			if got, want := tt.check(*cfg); got != want {
				t.Errorf("got %v, want %v", got, want)
			}
			if !slices.Equal(positional, tt.positional) {
				t.Errorf("positional %q, want %q", positional, tt.positional)
			}
		})
	}
}

func TestParseArgsHelp(t *testing.T) {
	for _, arg := range []string{"-h", "--h", "-help", "--help"} {
		if _, _, _, help, err := parse("--pool-size=5", arg); !help || err != nil {
			t.Errorf("%s: help %v, error %v", arg, help, err)
		}
	}
	if _, _, _, help, _ := parse("--pool-size=5"); help {
		t.Error("help without -h")
	}
}

// The flags ParseArgs sets are the ones fs.Visit reports, so that applyEnv
// leaves them alone.
func TestParseArgsMarksFlagsSet(t *testing.T) {
	_, fs, _, _, err := parse("--pool-size=5", "-listen", ":1", "--readiness-checks-upstream", "--version")
	if err != nil {
		t.Fatal(err)
	}
	var set []string
	fs.Visit(func(f *flag.Flag) { set = append(set, f.Name) })
	if want := []string{"listen", "pool-size", "readiness-checks-upstream", "version"}; !slices.Equal(set, want) {
		t.Errorf("fs.Visit saw %q, want %q", set, want)
	}
}

func TestParseArgsReportsEveryProblem(t *testing.T) {
	cfg, _, positional, help, err := parse(
		"--pool-sise=5",
		"-pool-size", "abc",
		"--frobnicate", "frobnicated", // taken for the unknown flag's value
		"stray",
		"--readiness-check-upstream", "stray2", // close to a boolean flag: no value
		"--listen", ":7000", // valid: applied despite the others
		"--log-levl", "--log-level=loud", // a flag is no value
		"--readiness-checks-upstream=maybe",
		"---bad",
		"--=x",
		"--max-client-conn", // no value left
	)
	want := []string{
		"--pool-sise: unknown flag; did you mean --pool-size?",
		`--pool-size: invalid value "abc": not an integer`,
		"--frobnicate: unknown flag",
		"--readiness-check-upstream: unknown flag; did you mean --readiness-checks-upstream?",
		"--log-levl: unknown flag; did you mean --log-level?",
		`--log-level: invalid value "loud": want debug, info, warn or error`,
		`--readiness-checks-upstream: invalid value "maybe": want true or false`,
		"---bad: bad flag syntax",
		"--=x: bad flag syntax",
		"--max-client-conn: needs a value",
	}
	if got := errLines(err); !slices.Equal(got, want) {
		t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if n := len(err.(interface{ Unwrap() []error }).Unwrap()); n != len(want) {
		t.Errorf("%d joined errors, want %d", n, len(want))
	}
	if help || !slices.Equal(positional, []string{"stray", "stray2"}) {
		t.Errorf("help %v, positional %q", help, positional)
	}
	if cfg.Listen != ":7000" {
		t.Errorf("valid --listen not applied: %q", cfg.Listen)
	}
}

// A misspelt flag or variable gets the closest flag as a suggestion, and
// only when it is close.
func TestSuggestions(t *testing.T) {
	tests := []struct {
		typo string // flag name as typed
		want string // suggested flag, "" for none
	}{
		{"poolsize", "pool-size"},
		{"pool_size", "pool-size"},
		{"Pool-Size", "pool-size"},
		{"POOLSIZE", "pool-size"},
		{"pool-sizes", "pool-size"},
		{"listn", "listen"},
		{"upstrem", "upstream"},
		{"log-levl", "log-level"},
		{"loglevel", "log-level"},
		{"verison", "version"},
		{"max-message-sise", "max-message-size"},
		{"idle-transaction-timout", "idle-transaction-timeout"},
		{"maxclientconn", "max-client-conn"},
		{"frobnicate", ""},
		{"x", ""},
		{"port", ""},
		{"timeout", ""},
	}
	for _, tt := range tests {
		t.Run(tt.typo, func(t *testing.T) {
			_, _, _, _, err := parse("--" + tt.typo)
			want := "--" + tt.typo + ": unknown flag"
			if tt.want != "" {
				want += "; did you mean --" + tt.want + "?"
			}
			if err == nil || err.Error() != want {
				t.Errorf("flag: got %v, want %q", err, want)
			}
			env := config.EnvPrefix + strings.ToUpper(strings.ReplaceAll(tt.typo, "-", "_"))
			if tt.want == "version" || env == config.EnvName(tt.want) {
				return // no variable, or no typo in the variable
			}
			want = env + ": unknown variable"
			if tt.want != "" {
				want += "; did you mean " + config.EnvName(tt.want) + " (--" + tt.want + ")?"
			}
			if err := config.CheckEnviron([]string{env + "=1"}); err == nil || err.Error() != want {
				t.Errorf("variable: got %v, want %q", err, want)
			}
		})
	}
}

func TestCheckEnviron(t *testing.T) {
	environ := []string{
		"PATH=/usr/bin",
		"DATABASE_URL=postgres://db/app",
		"PGSIDECAR_POOL_SIZE=3",       // a flag's variable
		"PGSIDECAR_LOG_LEVEL=",        // empty, still a flag's
		"PGSIDECAR_CPUPROFILE=/tmp/p", // allowed below
		"PGSIDECAR_POOLSIZE=hunter2",  // typo; the value is not shown
		"PGSIDECAR_FROBNICATE=1",      // unknown, nothing close
		"PGSIDECAR_LISTN=:1",          // typo
		"PGSIDECAR_LISTN=:2",          // twice: reported once
		"PGSIDECAR_PORT=6432",         // not a Kubernetes service variable
		"PGSIDECAR_TEST_RUN_MAIN=1",   // the old test hook is no exception
		"PGSIDECAR_Pool_Size=3",       // case matters, but the suggestion ignores it
		"PGSIDECAR_EMPTY=",            // unknown even when empty
		"pgsidecar_pool_size=3",       // another name altogether (case matters)
		"XPGSIDECAR_POOLSIZE=3",       // no prefix
		"PGSIDECAR_SERVICE_HOST=10.0.0.1",
		"PGSIDECAR_SERVICE_PORT=9127",
		"PGSIDECAR_SERVICE_PORT_METRICS=9127",
		"PGSIDECAR_PORT_9127_TCP=tcp://10.0.0.1:9127",
		"PGSIDECAR_PORT_9127_TCP_PROTO=tcp",
		"PGSIDECAR_PORT_9127_TCP_PORT=9127",
		"PGSIDECAR_PORT_9127_TCP_ADDR=10.0.0.1",
		"PGSIDECAR_METRICS_SERVICE_HOST=10.0.0.2",       // Service pgsidecar-metrics
		"PGSIDECAR_METRICS_PORT=tcp://10.0.0.2:9127",    // its <SERVICE>_PORT
		"PGSIDECAR_METRICS_PORT_9127_UDP_ADDR=10.0.0.2", // and the rest
	}
	err := config.CheckEnviron(environ, "PGSIDECAR_CPUPROFILE")
	want := []string{
		"PGSIDECAR_EMPTY: unknown variable",
		"PGSIDECAR_FROBNICATE: unknown variable",
		"PGSIDECAR_LISTN: unknown variable; did you mean PGSIDECAR_LISTEN (--listen)?",
		"PGSIDECAR_POOLSIZE: unknown variable; did you mean PGSIDECAR_POOL_SIZE (--pool-size)?",
		"PGSIDECAR_PORT: unknown variable",
		"PGSIDECAR_Pool_Size: unknown variable; did you mean PGSIDECAR_POOL_SIZE (--pool-size)?",
		"PGSIDECAR_TEST_RUN_MAIN: unknown variable",
	}
	if got := errLines(err); !slices.Equal(got, want) {
		t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Error("the value of an unknown variable is shown")
	}
	// Without the allow list PGSIDECAR_CPUPROFILE is unknown too.
	if err := config.CheckEnviron([]string{"PGSIDECAR_CPUPROFILE=/tmp/p"}); err == nil {
		t.Error("PGSIDECAR_CPUPROFILE accepted without being allowed")
	}
	// Every flag's variable is accepted.
	var all []string
	for _, name := range config.FlagNames() {
		all = append(all, config.EnvName(name)+"=x")
	}
	if err := config.CheckEnviron(all); err != nil {
		t.Errorf("flag variables rejected: %v", err)
	}
	if err := config.CheckEnviron(nil); err != nil {
		t.Errorf("empty environment: %v", err)
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		err  string // "" for success
	}{
		{"65536", 65536, ""},
		{"0", 0, ""},
		{"1B", 1, ""},
		{"16kB", 16 << 10, ""},
		{"16KB", 16 << 10, ""},
		{"16KiB", 16 << 10, ""},
		{"64MB", 64 << 20, ""},
		{"64MiB", 64 << 20, ""},
		{"1GB", 1 << 30, ""},
		{"2GiB", 2 << 30, ""},
		{"3TB", 3 << 40, ""},
		{" 64 MB ", 64 << 20, ""},
		{"", 0, "not a size"},
		{"MB", 0, "not a size"},
		{"-1MB", 0, "not a size"},
		{"1.5GB", 0, `unknown size unit ".5GB"`},
		{"64mb", 0, `unknown size unit "mb"`},
		{"64Mb", 0, `unknown size unit "Mb"`},
		{"64XB", 0, `unknown size unit "XB": want B, kB, MB, GB or TB`},
		{"64 bytes", 0, `unknown size unit "bytes"`},
		{"99999999999999999999", 0, "size out of range"},
		{"9999999TB", 0, "size out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := config.ParseSize(tt.in)
			if tt.err != "" {
				wantErrContains(t, err, tt.err)
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("ParseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

// The size flags parse sizes, print them back in the largest exact unit and
// are checked against their bounds.
func TestSizeFlags(t *testing.T) {
	cfg, fs, _, _, err := parse("--max-message-size=64MB", "--max-message-memory", "1GB",
		"--max-client-prepared-bytes=65536")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MaxMessageSize != 64<<20 || cfg.MaxMessageMemory != 1<<30 || cfg.MaxClientPreparedBytes != 65536 {
		t.Errorf("sizes %d %d %d", cfg.MaxMessageSize, cfg.MaxMessageMemory, cfg.MaxClientPreparedBytes)
	}
	for name, want := range map[string]string{
		"max-message-size":          "64MB",
		"max-message-memory":        "1GB",
		"max-client-prepared-bytes": "64kB",
	} {
		if got := fs.Lookup(name).Value.String(); got != want {
			t.Errorf("--%s prints as %q, want %q", name, got, want)
		}
	}
	if err := fs.Set("max-client-prepared-bytes", "1025"); err != nil || fs.Lookup("max-client-prepared-bytes").Value.String() != "1025B" {
		t.Errorf("1025 bytes print as %q (%v)", fs.Lookup("max-client-prepared-bytes").Value, err)
	}

	c := config.Default()
	c.Upstream = "postgres://db/app"
	c.MaxMessageSize = 1 << 30 // PostgreSQL's limit is 1GB - 1
	c.MaxMessageMemory = 512 << 10
	c.MaxClientPreparedBytes = 1000
	want := []string{
		"--max-message-size: must be between 1kB and 1GB - 1, got 1GB",
		"--max-message-memory: must be at least 1MB, got 512kB",
		"--max-client-prepared-bytes: must be at least 1kB, got 1000B",
	}
	if got := errLines(c.Validate()); !slices.Equal(got, want) {
		t.Errorf("Validate:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	_, _, _, _, err = parse("--max-message-size=64 XB", "--max-message-memory=lots")
	want = []string{
		`--max-message-size: invalid value "64 XB": unknown size unit "XB": want B, kB, MB, GB or TB`,
		`--max-message-memory: invalid value "lots": not a size: want a number of bytes with an optional unit (B, kB, MB, GB), e.g. "64MB"`,
	}
	if got := errLines(err); !slices.Equal(got, want) {
		t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	var joined interface{ Unwrap() []error }
	if !errors.As(err, &joined) {
		t.Errorf("%T is not a joined error", err)
	}
}
