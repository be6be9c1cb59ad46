//go:build linux

package localpg_test

import (
	"context"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/pgsidecar/pgsidecar/internal/localpg"
)

// TestServerNotRoot checks that when the tests run as root the server runs
// as an unprivileged user (PostgreSQL refuses root), and that the data
// directory belongs to that user.
func TestServerNotRoot(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	c := startCluster(t, localpg.Options{})

	// The postmaster: a backend of a closed connection may be gone already.
	queryOne(t, ctx, c.URL("postgres"), "SELECT 1")
	pidFile, err := os.ReadFile(filepath.Join(c.Dir, "data", "postmaster.pid"))
	if err != nil {
		t.Fatalf("read postmaster.pid: %v", err)
	}
	pid, _, _ := strings.Cut(string(pidFile), "\n")
	status, err := os.ReadFile(filepath.Join("/proc", strings.TrimSpace(pid), "status"))
	if err != nil {
		t.Fatalf("read server status: %v", err)
	}
	var uid string
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "Uid:"); ok {
			uid = strings.Fields(rest)[0] // real uid
		}
	}
	if uid == "" {
		t.Fatalf("no Uid line in /proc/%s/status", pid)
	}
	fi, err := os.Stat(filepath.Join(c.Dir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	owner := fi.Sys().(*syscall.Stat_t).Uid

	if os.Geteuid() != 0 {
		if want := os.Getuid(); uid != strconv.Itoa(want) {
			t.Fatalf("server uid = %s, want caller uid %d", uid, want)
		}
		return
	}
	if uid == "0" {
		t.Fatal("server runs as root")
	}
	if strconv.Itoa(int(owner)) != uid {
		t.Fatalf("data dir owner uid %d != server uid %s", owner, uid)
	}
	u, err := user.LookupId(uid)
	if err != nil {
		t.Fatalf("lookup server uid %s: %v", uid, err)
	}
	if u.Username != "pgsidecar" && u.Username != "nobody" {
		t.Fatalf("server runs as %q, want pgsidecar (or nobody)", u.Username)
	}
	t.Logf("server runs as %s (uid %s)", u.Username, uid)
}
