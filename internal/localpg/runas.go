package localpg

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// serverUser is the unprivileged account the server runs as when the
// calling process is root.
const serverUser = "pgsidecar"

// fallbackUser is used when serverUser neither exists nor can be created.
const fallbackUser = "nobody"

// runAs identifies the unprivileged account initdb and postgres run as when
// the caller is root.
type runAs struct {
	name string
	uid  uint32
	gid  uint32
}

// runAsMu serialises user lookup/creation so that clusters started
// concurrently in one process do not race on useradd.
var runAsMu sync.Mutex

// resolveRunAs returns nil when the caller is not root (the server runs as
// the caller), and otherwise the account to run the server as, creating
// serverUser if needed.
func resolveRunAs(ctx context.Context, logger *slog.Logger) (*runAs, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	runAsMu.Lock()
	defer runAsMu.Unlock()

	if r, err := lookupRunAs(serverUser); err == nil {
		return r, nil
	}

	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "useradd", "--system", "--no-create-home",
		"--shell", "/usr/sbin/nologin", serverUser).CombinedOutput()
	if err == nil {
		logger.Info("localpg: created system user for the PostgreSQL server", "user", serverUser)
	}
	// Look up again even after a failure: another process may have created
	// the user concurrently.
	if r, lerr := lookupRunAs(serverUser); lerr == nil {
		return r, nil
	}
	logger.Warn("localpg: cannot create server user, falling back",
		"user", serverUser, "fallback", fallbackUser, "err", err, "output", string(out))

	r, lerr := lookupRunAs(fallbackUser)
	if lerr != nil {
		return nil, fmt.Errorf("localpg: running as root and no unprivileged user is usable (useradd %s: %v): %w",
			serverUser, err, lerr)
	}
	return r, nil
}

func lookupRunAs(name string) (*runAs, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, err
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %s: uid %q: %w", name, u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %s: gid %q: %w", name, u.Gid, err)
	}
	if uid == 0 {
		return nil, fmt.Errorf("user %s has uid 0", name)
	}
	return &runAs{name: name, uid: uint32(uid), gid: uint32(gid)}, nil
}

// chown gives path to r (no-op when r is nil).
func (r *runAs) chown(path string) error {
	if r == nil {
		return nil
	}
	if err := os.Lchown(path, int(r.uid), int(r.gid)); err != nil {
		return fmt.Errorf("localpg: chown %s to %s: %w", path, r.name, err)
	}
	return nil
}

// chownTree gives every file under root to r, unless root already belongs
// to r (the common case when a kept data directory is reused).
func (r *runAs) chownTree(root string) error {
	if r == nil {
		return nil
	}
	fi, err := os.Lstat(root)
	if err != nil {
		return fmt.Errorf("localpg: %w", err)
	}
	if uid, _, ok := fileOwner(fi); ok && uid == r.uid {
		return nil
	}
	return filepath.WalkDir(root, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return r.chown(path)
	})
}

// checkTraversable returns an error naming the first directory from dir up
// to / that r cannot search, because initdb/postgres would otherwise fail
// with an obscure permission error.
func (r *runAs) checkTraversable(dir string) error {
	if r == nil {
		return nil
	}
	for p := dir; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("localpg: %w", err)
		}
		uid, gid, ok := fileOwner(fi)
		if ok {
			perm := fi.Mode().Perm()
			if !(perm&0o001 != 0 || uid == r.uid && perm&0o100 != 0 || gid == r.gid && perm&0o010 != 0) {
				return fmt.Errorf("localpg: directory %s (mode %v) is not searchable by server user %s; make it o+x or use another Options.Dir",
					p, perm, r.name)
			}
		}
		if parent := filepath.Dir(p); parent == p {
			return nil
		}
	}
}
