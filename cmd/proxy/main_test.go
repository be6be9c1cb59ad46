package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/config"
	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/reload"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// environ lists m as os.Environ would.
func environ(m map[string]string) func() []string {
	return func() []string {
		var kv []string
		for k, v := range m {
			kv = append(kv, k+"="+v)
		}
		return kv
	}
}

// runWith calls run with vars as the whole environment.
func runWith(args []string, vars map[string]string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(args, env(vars), environ(vars), &out, &errb)
	return code, out.String(), errb.String()
}

// problemLines returns the indented problem lines of run's configuration error.
func problemLines(t *testing.T, stderr string) []string {
	t.Helper()
	const head = "proxy: invalid configuration (see proxy --help):\n"
	if !strings.HasPrefix(stderr, head) {
		t.Fatalf("stderr does not start with %q:\n%s", head, stderr)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSuffix(strings.TrimPrefix(stderr, head), "\n"), "\n") {
		if !strings.HasPrefix(l, "  ") {
			t.Errorf("problem line not indented: %q", l)
		}
		lines = append(lines, strings.TrimPrefix(l, "  "))
	}
	return lines
}

// singleDashFlag finds a flag written with one dash, as the flag package does.
var singleDashFlag = regexp.MustCompile(`(^|[\s"(])-[a-z]`)

func TestHelpListsEveryFlag(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}, {"-help"}, {"dev", "--help"}, {"--pool-size=0", "--bogus", "-h"}} {
		code, out, errb := runWith(args, nil)
		if code != exitOK || errb != "" {
			t.Fatalf("%q: exit %d, stderr %s", args, code, errb)
		}
		for _, name := range config.FlagNames() {
			if !strings.Contains(out, "--"+name) || !strings.Contains(out, config.EnvName(name)) {
				t.Errorf("%q does not document --%s / %s", args, name, config.EnvName(name))
			}
		}
		for _, want := range []string{"proxy dev", "DATABASE_URL", "--version"} {
			if !strings.Contains(out, want) {
				t.Errorf("%q does not mention %q", args, want)
			}
		}
	}
}

// Flags, variables, values and validation: every problem in one run, flags
// with two dashes, then exit 2.
func TestInvalidConfigListsEveryProblem(t *testing.T) {
	code, _, errb := runWith(
		[]string{"--pool-size", "0", "--listen", "nohostport", "--upstream", "postgres://x:notaport/db",
			"--pool-sise=5", "-log-level", "loud", "stray", "--frobnicate", "--max-message-size=64XB"},
		map[string]string{
			"PGSIDECAR_QUERY_WAIT_TIMEOUT": "soon",
			"PGSIDECAR_POOLSIZE":           "3",
			"PGSIDECAR_LEAK_TRESHOLD":      "1s",
		})
	if code != exitConfig {
		t.Fatalf("exit %d, want %d", code, exitConfig)
	}
	want := []string{ // each a prefix of its line, in this order
		"--pool-sise: unknown flag; did you mean --pool-size?",
		`--log-level: invalid value "loud": want debug, info, warn or error`,
		"--frobnicate: unknown flag",
		`--max-message-size: invalid value "64XB": unknown size unit "XB"`,
		`unexpected argument "stray"`,
		"PGSIDECAR_LEAK_TRESHOLD: unknown variable; did you mean PGSIDECAR_LEAK_THRESHOLD (--leak-threshold)?",
		"PGSIDECAR_POOLSIZE: unknown variable; did you mean PGSIDECAR_POOL_SIZE (--pool-size)?",
		`PGSIDECAR_QUERY_WAIT_TIMEOUT: invalid value "soon" for --query-wait-timeout: not a duration`,
		`--listen: must be host:port, got "nohostport"`,
		"--pool-size: must be between 1 and 10000, got 0",
		"--upstream: ",
	}
	got := problemLines(t, errb)
	if len(got) != len(want) {
		t.Errorf("%d problems, want %d:\n%s", len(got), len(want), errb)
	}
	for i := range min(len(got), len(want)) {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("problem %d = %q, want it to start with %q", i, got[i], want[i])
		}
	}
	if m := singleDashFlag.FindString(errb); m != "" {
		t.Errorf("a flag is written with a single dash (%q):\n%s", m, errb)
	}
}

func TestMissingUpstream(t *testing.T) {
	if code, _, errb := runWith(nil, nil); code != exitConfig || !strings.Contains(errb, "--upstream") {
		t.Fatalf("exit %d, stderr %q", code, errb)
	}
}

func TestUnknownFlag(t *testing.T) {
	code, _, errb := runWith([]string{"--no-such-flag", "--upstrem", "postgres://db/app"}, map[string]string{"DATABASE_URL": "postgres://db/app"})
	if code != exitConfig {
		t.Fatalf("exit %d, stderr %q", code, errb)
	}
	// The misspelt flag's value is not reported as an argument of its own.
	want := []string{"--no-such-flag: unknown flag", "--upstrem: unknown flag; did you mean --upstream?"}
	if got := problemLines(t, errb); !slices.Equal(got, want) {
		t.Errorf("problems %q, want %q", got, want)
	}
}

// An unknown PGSIDECAR_* variable is an error like an unknown flag; the
// profiling variable is not, nor is the end-to-end tests' hook.
func TestUnknownEnvVariable(t *testing.T) {
	code, out, errb := runWith(nil, map[string]string{
		"DATABASE_URL":         "postgres://db/app",
		"PGSIDECAR_POOLSIZE":   "3",
		"PGSIDECAR_CPUPROFILE": filepath.Join(t.TempDir(), "cpu.pprof"),
		runMainEnv:             "1",
	})
	if code != exitConfig || out != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errb)
	}
	want := []string{"PGSIDECAR_POOLSIZE: unknown variable; did you mean PGSIDECAR_POOL_SIZE (--pool-size)?"}
	if got := problemLines(t, errb); !slices.Equal(got, want) {
		t.Errorf("problems %q, want %q", got, want)
	}
	if strings.HasPrefix(runMainEnv, config.EnvPrefix) {
		t.Errorf("the test hook %s has the %s prefix", runMainEnv, config.EnvPrefix)
	}
}

var versionLine = regexp.MustCompile(`^pgsidecar (\S+) \(commit (\S+), (go\S+) (\w+)/(\w+)\)\n$`)

// --version works without any other configuration and wins over problems in it.
func TestVersion(t *testing.T) {
	for _, tt := range []struct {
		args []string
		vars map[string]string
	}{
		{[]string{"--version"}, nil},
		{[]string{"-version"}, nil},
		{[]string{"dev", "--version"}, nil},
		{[]string{"--version", "--pool-size=0"}, map[string]string{"PGSIDECAR_POOLSIZE": "3"}},
	} {
		code, out, errb := runWith(tt.args, tt.vars)
		if code != exitOK || errb != "" {
			t.Fatalf("%q: exit %d, stderr %q", tt.args, code, errb)
		}
		m := versionLine.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("%q: stdout %q does not match %s", tt.args, out, versionLine)
		}
		if m[3] != runtime.Version() || m[4] != runtime.GOOS || m[5] != runtime.GOARCH {
			t.Errorf("%q: %q does not name %s %s/%s", tt.args, out, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		}
		if out != currentVersion().String()+"\n" {
			t.Errorf("%q: %q, want %q", tt.args, out, currentVersion())
		}
	}
}

func TestResolveVersion(t *testing.T) {
	vcs := func(rev, modified string) *debug.BuildInfo {
		bi := &debug.BuildInfo{Main: debug.Module{Path: "github.com/pgsidecar/pgsidecar", Version: "(devel)"}}
		bi.Settings = []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified}}
		return bi
	}
	tagged := vcs("1234567890abcdef", "false")
	tagged.Main.Version = "v0.3.1"
	tests := []struct {
		name            string
		version, commit string
		bi              *debug.BuildInfo
		want            versionInfo
	}{
		{"stamped", "v0.3.0-12-gabcdef0", "abcdef0123", vcs("fedcba", "true"), versionInfo{"v0.3.0-12-gabcdef0", "abcdef0123"}},
		{"build info, modified", "", "", vcs("1234567890abcdef", "true"), versionInfo{"devel", "1234567890abcdef-dirty"}},
		{"build info, clean", "", "", vcs("1234567890abcdef", "false"), versionInfo{"devel", "1234567890abcdef"}},
		{"build info with a module version", "", "", tagged, versionInfo{"v0.3.1", "1234567890abcdef"}},
		{"only the version stamped", "v1.0.0", "", vcs("1234567890abcdef", "false"), versionInfo{"v1.0.0", "1234567890abcdef"}},
		{"no vcs information", "", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, versionInfo{"devel", "unknown"}},
		{"no build info", "", "", nil, versionInfo{"devel", "unknown"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := resolveVersion(tt.version, tt.commit, tt.bi); got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
	want := fmt.Sprintf("pgsidecar v0.3.0 (commit abc, %s %s/%s)", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	if got := (versionInfo{"v0.3.0", "abc"}).String(); got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

// make build stamps the version and commit with -ldflags -X; a wrong variable
// name would be ignored silently by the linker.
func TestMakeBuildStampsVersion(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	for _, tool := range []string{"make", "git"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s", tool)
		}
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	git := func(args ...string) string {
		out, err := exec.Command("git", append([]string{"-C", root}, args...)...).Output()
		if err != nil {
			t.Skipf("git %s: %v (not a git checkout?)", strings.Join(args, " "), err)
		}
		return strings.TrimSpace(string(out))
	}
	head := git("rev-parse", "HEAD")
	describe := strings.TrimSuffix(git("describe", "--tags", "--always", "--dirty"), "-dirty")

	bin := filepath.Join(t.TempDir(), "proxy")
	if out, err := exec.Command("make", "-C", root, "--no-print-directory", "build", "BIN="+bin).CombinedOutput(); err != nil {
		t.Fatalf("make build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		t.Fatalf("%s --version: %v", bin, err)
	}
	m := versionLine.FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("--version printed %q", out)
	}
	// The tree may turn dirty or clean while other work goes on: compare
	// without the -dirty suffix.
	if v := strings.TrimSuffix(m[1], "-dirty"); v != describe {
		t.Errorf("version %q, want %q (git describe)", m[1], describe)
	}
	if m[2] != head {
		t.Errorf("commit %q, want %q", m[2], head)
	}
}

// durationValuer logs as a group holding a duration.
type durationValuer struct{}

func (durationValuer) LogValue() slog.Value {
	return slog.GroupValue(slog.Duration("elapsed", 250*time.Millisecond))
}

func TestJSONLogDurations(t *testing.T) {
	cfg := config.Default()
	cfg.LogFormat = config.LogFormatJSON
	var buf bytes.Buffer
	log := newLogger(cfg.LogFormat, cfg.LogLevel, &buf)
	log.Info("top", "timeout", 30*time.Second, "n", 5, "f", 1.5)
	log.Info("group", slog.Group("pool", "wait", 1500*time.Millisecond, slog.Group("inner", "age", time.Minute)))
	log.With("lifetime", time.Hour).WithGroup("g").Info("with", "idle", 10*time.Millisecond)
	log.Info("valuer", "v", durationValuer{})
	log.Info("any", slog.Any("d", 2*time.Second), "zero", time.Duration(0))

	var got []map[string]any
	sc := bufio.NewScanner(&buf)
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("%v: %s", err, sc.Text())
		}
		delete(rec, "time")
		got = append(got, rec)
	}
	want := []string{
		`{"level":"INFO","msg":"top","timeout":"30s","n":5,"f":1.5}`,
		`{"level":"INFO","msg":"group","pool":{"wait":"1.5s","inner":{"age":"1m0s"}}}`,
		`{"level":"INFO","msg":"with","lifetime":"1h0m0s","g":{"idle":"10ms"}}`,
		`{"level":"INFO","msg":"valuer","v":{"elapsed":"250ms"}}`,
		`{"level":"INFO","msg":"any","d":"2s","zero":"0s"}`,
	}
	if len(got) != len(want) {
		t.Fatalf("%d records, want %d:\n%s", len(got), len(want), buf.String())
	}
	for i, w := range want {
		var wantRec map[string]any
		if err := json.Unmarshal([]byte(w), &wantRec); err != nil {
			t.Fatal(err)
		}
		g, _ := json.Marshal(got[i])
		ww, _ := json.Marshal(wantRec)
		if !bytes.Equal(g, ww) {
			t.Errorf("record %d = %s, want %s", i, g, ww)
		}
	}

	// The text format already writes durations as strings.
	cfg.LogFormat = config.LogFormatText
	buf.Reset()
	newLogger(cfg.LogFormat, cfg.LogLevel, &buf).Info("text", "timeout", 30*time.Second)
	if !strings.Contains(buf.String(), "timeout=30s") {
		t.Errorf("text log: %s", buf.String())
	}
}

// proxyProcess is the test binary re-executed as the proxy (see TestMain),
// with its stdout and stderr collected line by line.
type proxyProcess struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once the process has been waited for
	err    error         // from Wait, set before exited is closed

	mu    sync.Mutex
	lines []string
}

// startProxy starts the proxy with args and, on top of this process's
// environment without its PGSIDECAR_* variables, PGSIDECAR_CLIENT_AUTH=trust,
// PGSIDECAR_STATUS_LISTEN=off (tests run proxies side by side) and env. The process is killed at
// the end of the test if still running.
func startProxy(t *testing.T, env []string, args ...string) *proxyProcess {
	t.Helper()
	return startProxyCmd(t, exec.Command(os.Args[0], args...), env)
}

// startProxyCmd is startProxy for a command that runs the test binary itself
// (cmd may wrap it, as a shell that sets limits first).
func startProxyCmd(t *testing.T, cmd *exec.Cmd, env []string) *proxyProcess {
	t.Helper()
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, config.EnvPrefix) {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	// The tests' clusters have no passwords: trust unless env says otherwise
	// (the last of duplicate variables counts).
	cmd.Env = append(cmd.Env, "PGSIDECAR_CLIENT_AUTH=trust", "PGSIDECAR_STATUS_LISTEN=off")
	cmd.Env = append(append(cmd.Env, env...), runMainEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proxyProcess{cmd: cmd, exited: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			p.mu.Unlock()
		}
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

// output is everything the process printed so far.
func (p *proxyProcess) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// matching returns the lines printed so far that contain substr.
func (p *proxyProcess) matching(substr string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, l := range p.lines {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return out
}

// waitFor waits until the process has printed n lines containing substr and
// returns the last of them.
func (p *proxyProcess) waitFor(t *testing.T, substr string, n int, within time.Duration) string {
	t.Helper()
	var found []string
	err := pgtest.Poll(within, func() error {
		if found = p.matching(substr); len(found) >= n {
			return nil
		}
		select {
		case <-p.exited:
			t.Fatalf("proxy exited (%v) before printing %q:\n%s", p.err, substr, p.output())
		default:
		}
		return fmt.Errorf("%d of %d lines", len(found), n)
	})
	if err != nil {
		t.Fatalf("no %q within %s:\n%s", substr, within, p.output())
	}
	return found[n-1]
}

// wait waits for the process to exit and returns its exit code.
func (p *proxyProcess) wait(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(within):
		t.Fatalf("proxy still running %s later:\n%s", within, p.output())
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			t.Fatalf("proxy killed by %v:\n%s", ws.Signal(), p.output())
		}
		return ee.ExitCode()
	}
	if p.err != nil {
		t.Fatal(p.err)
	}
	return 0
}

// record decodes a JSON log line.
func record(t *testing.T, line string) map[string]any {
	t.Helper()
	var rec map[string]any
	if err := json.Unmarshal([]byte(line), &rec); err != nil {
		t.Fatalf("%v: %q", err, line)
	}
	return rec
}

// Without dev, SIGHUP reloads the configuration and does not end the proxy;
// the startup log names the version and the open files limit; durations in
// JSON logs are strings.
func TestSIGHUPReloadsNotFatal(t *testing.T) {
	p := startProxy(t, nil, "--listen", pgtest.FreeAddr(t), "--http-listen", "off", "--log-format", "json",
		"--upstream", "postgres://postgres@127.0.0.1:1/postgres", "--shutdown-timeout", "5s")
	p.waitFor(t, `"msg":"pgsidecar listening"`, 1, 30*time.Second)

	start := record(t, p.waitFor(t, `"msg":"pgsidecar starting"`, 1, 0))
	v := currentVersion()
	if start["version"] != v.Version || start["commit"] != v.Commit || start["go"] != runtime.Version() {
		t.Errorf("startup line %v, want version %s commit %s go %s", start, v.Version, v.Commit, runtime.Version())
	}
	if runtime.GOOS == "linux" {
		lim := record(t, p.waitFor(t, `"msg":"open files limit"`, 1, 0))
		soft, _ := lim["soft"].(float64)
		if lim["level"] != "INFO" || soft < 1 || lim["soft"] != lim["hard"] {
			t.Errorf("open files limit line %v, want soft = hard > 0", lim)
		}
	}

	for i := 1; i <= 2; i++ {
		if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		rec := record(t, p.waitFor(t, `"msg":"configuration reloaded"`, i, 10*time.Second))
		if rec["level"] != "INFO" || rec["trigger"] != "SIGHUP" || rec["changes"] != 0.0 {
			t.Errorf("SIGHUP reload logged as %v", rec)
		}
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("exit %d:\n%s", code, p.output())
	}
	shutdown := record(t, p.waitFor(t, `"msg":"shutting down`, 1, 0))
	if shutdown["timeout"] != "5s" {
		t.Errorf("shutdown timeout logged as %#v, want \"5s\"", shutdown["timeout"])
	}
	p.waitFor(t, `"msg":"pgsidecar stopped"`, 1, 0)
}

// proxy dev removes its throwaway cluster's directory on SIGTERM and SIGHUP,
// also when the signal arrives while the cluster is still starting: during
// initdb, or while the server starts.
func TestDevRemovesDirectoryOnSignal(t *testing.T) {
	pgtest.NeedBinaries(t)
	phases := []struct {
		name string
		// marker is a glob under TMPDIR whose first match means the phase
		// has begun; "" waits for the proxy to listen.
		marker string
		// mayMiss: the server may be ready before the signal arrives, so
		// the signal may find the proxy running rather than starting.
		mayMiss bool
	}{
		{"initdb", filepath.Join("localpg-*", "data", "base"), false},
		{"server-starting", filepath.Join("localpg-*", "data", "postmaster.opts"), true},
		{"running", "", false},
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGHUP} {
		for _, phase := range phases {
			t.Run(sig.String()+"/"+phase.name, func(t *testing.T) {
				// The cluster's directory goes to TMPDIR, which must be
				// traversable by the server's user when the test runs as root.
				tmp, err := os.MkdirTemp("", "pgsidecar-devtest-")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { os.RemoveAll(tmp) })
				if err := os.Chmod(tmp, 0o755); err != nil {
					t.Fatal(err)
				}
				p := startProxy(t, []string{"TMPDIR=" + tmp}, "dev", "--listen", pgtest.FreeAddr(t), "--http-listen", "off")
				if phase.marker == "" {
					p.waitFor(t, "pgsidecar listening", 1, 60*time.Second)
					if !strings.Contains(p.output(), "(data in "+tmp+string(filepath.Separator)) {
						t.Fatalf("the cluster is not in %s:\n%s", tmp, p.output())
					}
				} else {
					if err := pgtest.Poll(60*time.Second, func() error {
						if m, _ := filepath.Glob(filepath.Join(tmp, phase.marker)); len(m) == 0 {
							return errors.New("not yet")
						}
						return nil
					}); err != nil {
						t.Fatalf("no %s in %s within 60s:\n%s", phase.marker, tmp, p.output())
					}
				}
				if err := p.cmd.Process.Signal(sig); err != nil {
					t.Fatal(err)
				}
				if code := p.wait(t, 60*time.Second); code != 0 {
					t.Fatalf("exit %d:\n%s", code, p.output())
				}
				if phase.marker != "" && !strings.Contains(p.output(), "stopped while the throwaway PostgreSQL was starting") {
					if !phase.mayMiss {
						t.Fatalf("the signal did not arrive while starting:\n%s", p.output())
					}
					t.Logf("the server was ready before the signal arrived")
				}
				des, err := os.ReadDir(tmp)
				if err != nil {
					t.Fatal(err)
				}
				if len(des) > 0 {
					left, _ := filepath.Glob(filepath.Join(tmp, "*", "*"))
					t.Fatalf("left behind in %s: %q\n%s", tmp, left, p.output())
				}
			})
		}
	}
}

// The HTTP server's graceful stop is bounded: a connection it accepted that
// never sends a request (http.Server.Shutdown waits up to 5s for one) does not
// keep serve from returning within --shutdown-timeout + 1s.
func TestHTTPShutdownIsBounded(t *testing.T) {
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.HTTPListen = pgtest.FreeAddr(t)
	cfg.ShutdownTimeout = 0
	cfg.ClientAuth = config.ClientAuthTrust // the upstream has no password
	cfg.StatusListen = ""
	upstream, err := pgconn.ParseConfig("postgres://postgres@127.0.0.1:1/postgres")
	if err != nil {
		t.Fatal(err)
	}
	var logs pgtest.LogBuffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	rl := reload.New(config.Sources{}, config.Loaded{Config: cfg}, nil)
	go func() {
		done <- serve(ctx, rl, upstream, slog.New(slog.NewTextHandler(&logs, nil)), new(slog.LevelVar), false, func(string) {})
	}()

	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	livez := func() error {
		resp, err := client.Get("http://" + cfg.HTTPListen + "/livez")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/livez: %s", resp.Status)
		}
		return nil
	}
	if err := pgtest.Poll(20*time.Second, livez); err != nil {
		t.Fatalf("HTTP server not up (%v):\n%s", err, logs.String())
	}
	silent, err := net.Dial("tcp", cfg.HTTPListen)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	// Connections are accepted in order: once a later one is answered, the
	// server has accepted the silent one.
	if err := livez(); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not return")
	}
	if elapsed, bound := time.Since(start), cfg.ShutdownTimeout+time.Second; elapsed > bound {
		t.Errorf("serve returned %s after the shutdown began, want at most %s", elapsed, bound)
	}
	if !strings.Contains(logs.String(), "pgsidecar stopped") {
		t.Errorf("no clean stop:\n%s", logs.String())
	}
}
