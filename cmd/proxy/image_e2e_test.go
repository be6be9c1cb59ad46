package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/localpg"
	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
)

// imageSizeLimit is the documented bound on the image (README.md, "Container
// image"): the static binary and a CA bundle.
const imageSizeLimit = 25_000_000

// imageUser is the user the image runs as (distroless's "nonroot").
const imageUser = "65532:65532"

// containerEngine runs podman or docker for the image test.
type containerEngine struct {
	name   string   // "podman" or "docker"
	path   string   // the executable
	global []string // flags before the subcommand
	env    []string // the environment of every call
}

// cmd is the engine with args, bounded by ctx.
func (e *containerEngine) cmd(ctx context.Context, args ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, e.path, append(slices.Clone(e.global), args...)...)
	c.Env = e.env
	c.WaitDelay = 5 * time.Second
	return c
}

// run runs the engine and returns its trimmed stdout; the error includes stderr.
func (e *containerEngine) run(ctx context.Context, args ...string) (string, error) {
	c := e.cmd(ctx, args...)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w\n%s", e.name, strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(stdout.String()), nil
}

// logs is the container's output: its stdout and stderr, interleaved.
func (e *containerEngine) logs(ctx context.Context, id string) (string, error) {
	out, err := e.cmd(ctx, "logs", id).CombinedOutput()
	return string(out), err
}

// mustRun is run failing the test on error.
func (e *containerEngine) mustRun(t *testing.T, ctx context.Context, args ...string) string {
	t.Helper()
	out, err := e.run(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// findContainerEngine is CONTAINER_ENGINE if set (as for make image), else
// podman, else docker. With runc installed, podman runs containers with runc
// and the repository's containers.conf (deploy/podman, unless CONTAINERS_CONF
// is set already): without them crun fails on setrlimit and cgroups on CI
// machines.
func findContainerEngine(t *testing.T, ctx context.Context, root string) *containerEngine {
	t.Helper()
	names := []string{"podman", "docker"}
	if n := os.Getenv("CONTAINER_ENGINE"); n != "" {
		names = []string{n}
	}
	for _, n := range names {
		path, err := exec.LookPath(n)
		if err != nil {
			continue
		}
		e := &containerEngine{name: filepath.Base(n), path: path, env: os.Environ()}
		if e.name == "podman" {
			if _, err := exec.LookPath("runc"); err == nil {
				e.global = []string{"--runtime", "runc"}
				if os.Getenv("CONTAINERS_CONF") == "" {
					e.env = append(e.env, "CONTAINERS_CONF="+filepath.Join(root, "deploy", "podman", "containers.conf"))
				}
			}
		}
		// docker without its daemon, podman without storage: not usable.
		if _, err := e.run(ctx, "info"); err != nil {
			pgtest.SkipUnlessCI(t, "%s is installed but not usable: %v", n, err)
		}
		return e
	}
	pgtest.SkipUnlessCI(t, "no container engine installed (looked for %s)", strings.Join(names, ", "))
	return nil
}

// imageInspect is what the test reads of `<engine> image inspect` (the same
// fields in podman and docker).
type imageInspect struct {
	Size   int64
	Config struct {
		User         string
		Entrypoint   []string
		Cmd          []string
		ExposedPorts map[string]struct{}
		Labels       map[string]string
	}
}

// TestImage builds the container image with make image and checks it: size,
// user, entrypoint, labels, only the binary and the CA bundle inside (no
// shell). Then it runs it read-only as user 65532 in front of a throwaway
// PostgreSQL, measures the time until /startupz answers 200, queries through
// it with pgx and psql, and stops it with SIGTERM (exit status 0).
func TestImage(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the image test runs containers on the host network: Linux only")
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "Containerfile")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	eng := findContainerEngine(t, ctx, root)
	makePath, err := exec.LookPath("make")
	if err != nil {
		pgtest.SkipUnlessCI(t, "make not installed")
	}

	// make image into a tag of this test only, without :latest.
	image := "localhost/pgsidecar-imagetest"
	tag := fmt.Sprintf("t%d-%d", time.Now().UnixNano(), os.Getpid())
	ref := image + ":" + tag
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := eng.run(ctx, "rmi", "-f", ref); err != nil {
			t.Logf("removing the test image: %v", err)
		}
	})
	mk := exec.CommandContext(ctx, makePath, "-C", root, "--no-print-directory", "image",
		"IMAGE="+image, "TAG="+tag, "EXTRA_TAGS=",
		"CONTAINER_ENGINE="+eng.path, "CONTAINER_ENGINE_FLAGS="+strings.Join(eng.global, " "))
	// Not the settings of a make that runs this test (make test): its
	// command-line variables would reach this make through MAKEFLAGS.
	mk.Env = slices.DeleteFunc(slices.Clone(eng.env), func(kv string) bool {
		return strings.HasPrefix(kv, "MAKEFLAGS=") || strings.HasPrefix(kv, "MFLAGS=") || strings.HasPrefix(kv, "MAKELEVEL=")
	})
	mk.WaitDelay = 5 * time.Second
	buildStart := time.Now()
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("make image: %v\n%s", err, out)
	}
	t.Logf("make image: %s in %v", ref, time.Since(buildStart).Round(time.Millisecond))

	// The image configuration.
	var inspected []imageInspect
	if err := json.Unmarshal([]byte(eng.mustRun(t, ctx, "image", "inspect", ref)), &inspected); err != nil || len(inspected) != 1 {
		t.Fatalf("image inspect: %v (%d images)", err, len(inspected))
	}
	img := inspected[0]
	t.Logf("image size: %d bytes (%.1f MB; limit %d MB)", img.Size, float64(img.Size)/1e6, imageSizeLimit/1_000_000)
	if img.Size <= 0 || img.Size >= imageSizeLimit {
		t.Errorf("image size %d bytes, want under %d", img.Size, imageSizeLimit)
	}
	if img.Config.User != imageUser {
		t.Errorf("user %q, want %q", img.Config.User, imageUser)
	}
	if !slices.Equal(img.Config.Entrypoint, []string{"/pgsidecar"}) || len(img.Config.Cmd) != 0 {
		t.Errorf("entrypoint %q cmd %q, want [/pgsidecar] and no cmd", img.Config.Entrypoint, img.Config.Cmd)
	}
	for _, p := range []string{"6432/tcp", "9127/tcp"} {
		if _, ok := img.Config.ExposedPorts[p]; !ok {
			t.Errorf("port %s not exposed: %v", p, img.Config.ExposedPorts)
		}
	}
	labels := img.Config.Labels
	for _, l := range []string{"source", "version", "revision", "licenses", "title", "description"} {
		if labels["org.opencontainers.image."+l] == "" {
			t.Errorf("label org.opencontainers.image.%s missing: %v", l, labels)
		}
	}
	if rev := labels["org.opencontainers.image.revision"]; rev != "unknown" && !regexp.MustCompile(`^[0-9a-f]{40}$`).MatchString(rev) {
		t.Errorf("revision label %q, want a commit hash", rev)
	}

	// The binary carries the version and commit of the labels.
	out := eng.mustRun(t, ctx, "run", "--rm", "--network", "none", ref, "--version")
	want := fmt.Sprintf("pgsidecar %s (commit %s,", labels["org.opencontainers.image.version"], labels["org.opencontainers.image.revision"])
	if !strings.HasPrefix(out, want) {
		t.Errorf("--version = %q, want it to start with %q", out, want)
	}

	// Exactly the binary and the CA bundle: no shell, nothing else.
	checkImageFiles(t, ctx, eng, ref)
	sh, err := eng.run(ctx, "run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", ref, "-c", "true")
	if err == nil {
		t.Errorf("/bin/sh ran in the image: %q", sh)
	} else if !strings.Contains(err.Error(), "no such file") {
		t.Errorf("/bin/sh failed, but not because it is missing: %v", err)
	}

	runImage(t, ctx, eng, ref)
}

// checkImageFiles lists the files of a container created from ref (not
// started): they must be the binary and the CA bundle.
func checkImageFiles(t *testing.T, ctx context.Context, eng *containerEngine, ref string) {
	t.Helper()
	id := eng.mustRun(t, ctx, "create", ref)
	t.Cleanup(func() { removeContainer(t, eng, id) })
	c := eng.cmd(ctx, "export", id)
	var stderr bytes.Buffer
	c.Stderr = &stderr
	stdout, err := c.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	var files []string
	tr := tar.NewReader(stdout)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("export: %v", err)
		}
		if h.Typeflag != tar.TypeDir {
			files = append(files, fmt.Sprintf("%s %o %d", strings.TrimPrefix(h.Name, "./"), h.Mode&0o7777, h.Size))
		}
	}
	_, _ = io.Copy(io.Discard, stdout)
	if err := c.Wait(); err != nil {
		t.Fatalf("export: %v\n%s", err, stderr.String())
	}
	slices.Sort(files)
	if len(files) != 2 || !strings.HasPrefix(files[0], "etc/ssl/certs/ca-certificates.crt 644 ") ||
		!strings.HasPrefix(files[1], "pgsidecar 755 ") {
		t.Errorf("files in the image (name mode size):\n%s\nwant only etc/ssl/certs/ca-certificates.crt and pgsidecar", strings.Join(files, "\n"))
	}
}

// runImage runs the image read-only, without capabilities, as user 65532 on
// the host network in front of a throwaway PostgreSQL.
func runImage(t *testing.T, ctx context.Context, eng *containerEngine, ref string) {
	cl := pgtest.Start(t, localpg.Options{})
	listen, httpAddr := pgtest.FreeAddr(t), pgtest.FreeAddr(t)
	args := []string{"run", "-d", "--read-only", "--user", "65532", "--network", "host",
		"--cap-drop", "ALL", "--security-opt", "no-new-privileges"}
	if eng.name == "podman" {
		// Not even the tmpfs podman mounts on /tmp, /run, /var/tmp of a read-only container.
		args = append(args, "--read-only-tmpfs=false")
	}
	args = append(args, ref, "--upstream", cl.URL("postgres"), "--listen", listen, "--http-listen", httpAddr,
		"--pool-size", "2", "--shutdown-timeout", "5s", "--log-format", "json", "--client-auth", "trust", "--status-listen", "off")
	start := time.Now()
	id := eng.mustRun(t, ctx, args...)
	t.Cleanup(func() {
		if t.Failed() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			logs, err := eng.logs(ctx, id)
			t.Logf("container logs (%v):\n%s", err, logs)
		}
		removeContainer(t, eng, id)
	})
	pgtest.Eventually(t, 60*time.Second, "GET /startupz 200 after "+eng.name+" run", func() error {
		if code, body := pgtest.HTTPGet(httpAddr, "/startupz"); code != 200 {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})
	t.Logf("%s run to /startupz 200: %v", eng.name, time.Since(start).Round(time.Millisecond))

	// pgx through the proxy in the container.
	proxyURL := fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable", listen)
	qctx, qcancel := context.WithTimeout(ctx, 30*time.Second)
	defer qcancel()
	c, err := pgx.Connect(qctx, proxyURL)
	if err != nil {
		t.Fatalf("pgx through the container: %v", err)
	}
	var user string
	var sum int
	if err := c.QueryRow(qctx, "SELECT current_user, $1::int + 2", 40).Scan(&user, &sum); err != nil || user != "postgres" || sum != 42 {
		t.Errorf("pgx: %q %d %v, want postgres 42", user, sum, err)
	}
	c.Close(context.Background())

	// psql through the proxy in the container.
	psql := filepath.Join(cl.BinDir, "psql")
	if _, err := os.Stat(psql); err != nil {
		if psql, err = exec.LookPath("psql"); err != nil {
			pgtest.SkipUnlessCI(t, "psql not found in %s nor PATH", cl.BinDir)
		}
	}
	pc := exec.CommandContext(qctx, psql, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", proxyURL,
		"-c", "SELECT string_agg(g::text, ',') FROM generate_series(1, 5) g")
	pc.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10")
	pc.WaitDelay = 5 * time.Second
	if out, err := pc.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "1,2,3,4,5" {
		t.Errorf("psql: %q %v, want 1,2,3,4,5", out, err)
	}

	// SIGTERM reaches the proxy as PID 1: it stops and exits 0, well before
	// the stop timeout would have it killed.
	stopStart := time.Now()
	eng.mustRun(t, ctx, "stop", "-t", "20", id)
	stopped := time.Since(stopStart)
	if code := eng.mustRun(t, ctx, "inspect", "--format", "{{.State.ExitCode}}", id); code != "0" {
		t.Errorf("exit status after stop: %s, want 0", code)
	}
	if stopped > 15*time.Second {
		t.Errorf("stop took %v: SIGTERM did not stop the proxy", stopped)
	}
	logs, err := eng.logs(ctx, id)
	if err != nil {
		t.Errorf("logs: %v\n%s", err, logs)
	}
	if !strings.Contains(logs, "pgsidecar starting") || !strings.Contains(logs, "pgsidecar stopped") {
		t.Errorf("container logs without start and clean stop:\n%s", logs)
	}
	eng.mustRun(t, ctx, "rm", id)
}

// removeContainer removes container id if it is still there.
func removeContainer(t *testing.T, eng *containerEngine, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := eng.run(ctx, "rm", "-f", id); err != nil && !strings.Contains(strings.ToLower(err.Error()), "no such container") {
		t.Logf("removing container %s: %v", id, err)
	}
}
