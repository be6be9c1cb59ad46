package config

import (
	"errors"
	"flag"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// files is a fake file system for Sources.ReadFile.
type files map[string]string

func (f files) read(name string) ([]byte, error) {
	s, ok := f[name]
	if !ok {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return []byte(s), nil
}

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestParseFile(t *testing.T) {
	cfg := Default()
	err := ParseFile([]byte("# comment\n\n  pool-size = 7\r\nlog-level=debug\nadmin-users = \" a,b \"\nleak-threshold = 3s\n"), &cfg)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.PoolSize != 7 || cfg.LogLevel.String() != "DEBUG" || cfg.AdminUsers != " a,b " || cfg.LeakThreshold != 3*time.Second {
		t.Fatalf("got %+v", cfg)
	}

	cfg = Default()
	err = ParseFile([]byte("pool-size = 9\npool-sise = 3\n--log-level = info\nconfig = x\npool-size = 4\nleak-threshold = 30\nnonsense\nupstream = \"postgres://u:secret@h/db\nmax-client-conn = 5\n"), &cfg)
	if err == nil {
		t.Fatal("no error")
	}
	msg := err.Error()
	for _, want := range []string{
		"line 2: pool-sise: unknown setting; did you mean pool-size?",
		"line 3: \"--log-level\": write names without dashes",
		"line 4: config: cannot be set in a configuration file",
		"line 5: pool-size: set twice",
		`line 6: leak-threshold: invalid value "30": missing unit`,
		"line 7: want name = value",
		"line 8: upstream: bad quoted value",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "secret") {
		t.Errorf("error repeats a secret value:\n%s", msg)
	}
	// Valid settings apply even when others are invalid.
	if cfg.PoolSize != 9 || cfg.MaxClientConn != 5 {
		t.Errorf("valid settings not applied: pool-size %d max-client-conn %d", cfg.PoolSize, cfg.MaxClientConn)
	}
	if err := ParseFile([]byte{0xff, 0xfe}, &cfg); err == nil {
		t.Error("binary file accepted")
	}
}

func TestLoadPrecedence(t *testing.T) {
	fsys := files{"/c/p.conf": "pool-size = 5\nmax-client-conn = 50\nlog-level = warn\nupstream = postgres://file@h/db\n"}
	env := map[string]string{"PGSIDECAR_CONFIG": "/c/p.conf", "PGSIDECAR_MAX_CLIENT_CONN": "60", "DATABASE_URL": "postgres://dburl@h/db"}
	l, err := Load(Sources{Args: map[string]string{"log-level": "error"}, Getenv: envOf(env), ReadFile: fsys.read})
	if err != nil {
		t.Fatal(err)
	}
	if l.PoolSize != 5 || l.MaxClientConn != 60 || l.LogLevel.String() != "ERROR" || l.Upstream != "postgres://file@h/db" {
		t.Fatalf("precedence wrong: %+v", l.Config)
	}
	if l.Origin["pool-size"] != OriginFile || l.Origin["max-client-conn"] != OriginEnvironment ||
		l.Origin["log-level"] != OriginCommandLine || l.Origin["config"] != OriginEnvironment {
		t.Errorf("origins: %v", l.Origin)
	}
	if len(l.Shadowed) != 2 || !strings.Contains(strings.Join(l.Shadowed, ";"), "max-client-conn (set by the environment, PGSIDECAR_MAX_CLIENT_CONN)") {
		t.Errorf("shadowed: %q", l.Shadowed)
	}
	// DATABASE_URL is only the fallback.
	delete(fsys, "/c/p.conf")
	fsys["/c/p.conf"] = "pool-size = 5\n"
	l, err = Load(Sources{Getenv: envOf(env), ReadFile: fsys.read})
	if err != nil || l.Upstream != "postgres://dburl@h/db" {
		t.Fatalf("DATABASE_URL fallback: %q %v", l.Upstream, err)
	}
}

func TestLoadErrorsAll(t *testing.T) {
	fsys := files{"/c/p.conf": "pool-size = 0\nbogus = 1\n"}
	env := map[string]string{"PGSIDECAR_LOG_LEVEL": "loud"}
	_, err := Load(Sources{Args: map[string]string{"config": "/c/p.conf", "upstream": "postgres://h/db", "upstream-file": "/nope"},
		Getenv: envOf(env), ReadFile: fsys.read})
	if err == nil {
		t.Fatal("no error")
	}
	msg := err.Error()
	for _, want := range []string{
		"/c/p.conf: line 2: bogus: unknown setting",
		`PGSIDECAR_LOG_LEVEL: invalid value "loud" for --log-level`,
		"--upstream-file: cannot be used with --upstream (set by the command line)",
		"--pool-size: must be between 1 and 10000, got 0",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	_, err = Load(Sources{Args: map[string]string{"config": "/missing.conf", "upstream": "x"}, ReadFile: fsys.read, Getenv: envOf(nil)})
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "--config: open /missing.conf") {
		t.Errorf("missing file: %v", err)
	}
}

func TestLoadUpstreamFiles(t *testing.T) {
	fsys := files{"/s/url": "  postgres://app@db:5432/app?sslmode=require\n", "/s/pw": "s3cret \n", "/s/empty": "\n"}
	env := map[string]string{"DATABASE_URL": "postgres://ignored@h/db"}
	l, err := Load(Sources{Args: map[string]string{"upstream-file": "/s/url", "upstream-password-file": "/s/pw"}, Getenv: envOf(env), ReadFile: fsys.read})
	if err != nil {
		t.Fatal(err)
	}
	if l.Upstream != "postgres://app@db:5432/app?sslmode=require" || !l.HasUpstreamPassword || l.UpstreamPassword != "s3cret " {
		t.Fatalf("got %q %v %q", l.Upstream, l.HasUpstreamPassword, l.UpstreamPassword)
	}
	if _, err := Load(Sources{Args: map[string]string{"upstream-file": "/s/empty"}, Getenv: envOf(nil), ReadFile: fsys.read}); err == nil ||
		!strings.Contains(err.Error(), "--upstream-file: /s/empty is empty") {
		t.Errorf("empty upstream file: %v", err)
	}
	// A huge file is refused, not read into memory.
	dir := t.TempDir()
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, make([]byte, maxFileSize+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(Sources{Args: map[string]string{"upstream-file": big}, Getenv: envOf(nil)}); err == nil || !strings.Contains(err.Error(), "larger than 1MB") {
		t.Errorf("big file: %v", err)
	}
}

func TestChanges(t *testing.T) {
	old := Default()
	old.Upstream = "postgres://u:a@h/db"
	nw := old
	nw.PoolSize = 3
	nw.Listen = "127.0.0.1:7000"
	nw.Upstream = "postgres://u:b@h/db"
	nw.MaxPreparedStatements = 0
	got := Changes(old, nw)
	var names []string
	for _, c := range got {
		names = append(names, c.String())
	}
	want := []string{"listen: 127.0.0.1:6432 -> 127.0.0.1:7000 (needs a restart)", "upstream: (old) -> (changed)",
		"pool-size: 20 -> 3", "max-prepared-statements: 256 -> 0 (needs a restart)"}
	if strings.Join(names, "|") != strings.Join(want, "|") {
		t.Errorf("Changes:\n got %q\nwant %q", names, want)
	}
	kept := KeepRestartOnly(old, nw)
	if kept.Listen != old.Listen || kept.MaxPreparedStatements != 256 || kept.PoolSize != 3 || kept.Upstream != nw.Upstream {
		t.Errorf("KeepRestartOnly: %+v", kept)
	}
	// A password rotation alone is a change of the upstream.
	pw := old
	pw.UpstreamPassword, pw.HasUpstreamPassword = "x", true
	if c := Changes(old, pw); len(c) != 1 || c[0].Name != "upstream" || c[0].Restart {
		t.Errorf("password change: %v", c)
	}
	if c := Changes(old, old); len(c) != 0 {
		t.Errorf("no change: %v", c)
	}
}

// Every flag's printed value is accepted back by Set: CommandLine relies on it.
func TestCommandLineRoundTrip(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	cfg := Default()
	Bind(fs, &cfg)
	args := []string{"--pool-size", "3", "--max-message-size", "1000000", "--http-listen", "off", "--leak-threshold", "1m30s",
		"--log-level", "warning", "--readiness-checks-upstream", "--upstream", "postgres://u:p@h/d", "--config", "/x"}
	if _, _, err := ParseArgs(fs, args); err != nil {
		t.Fatal(err)
	}
	cl := CommandLine(fs)
	if len(cl) != 8 {
		t.Errorf("CommandLine: %v", cl)
	}
	l, err := Load(Sources{Args: cl, Getenv: envOf(nil), ReadFile: files{"/x": ""}.read})
	if err != nil {
		t.Fatal(err)
	}
	l.Config.ConfigFile = cfg.ConfigFile
	if c := Changes(cfg, l.Config); len(c) != 0 {
		t.Errorf("round trip changed %v", c)
	}
	for _, s := range specs {
		c := Default()
		v := s.value(&c)
		if err := v.Set(v.String()); err != nil && s.name != flagUpstream {
			t.Errorf("--%s: default %q does not round-trip: %v", s.name, v.String(), err)
		}
	}
}
