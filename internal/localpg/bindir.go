package localpg

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ErrNoBinaries is returned (wrapped) by FindBinDir and Start when the
// PostgreSQL server binaries (initdb and postgres) cannot be found.
var ErrNoBinaries = errors.New("localpg: PostgreSQL server binaries (initdb, postgres) not found")

// debianPGRoot is where Debian/Ubuntu packages install versioned server
// binaries (/usr/lib/postgresql/<version>/bin).
const debianPGRoot = "/usr/lib/postgresql"

// FindBinDir returns a directory containing both the initdb and postgres
// executables. It tries, in order:
//
//  1. the PG_BIN environment variable (if set, it is the only candidate and
//     an error is returned when it does not hold the binaries);
//  2. the output of `pg_config --bindir`;
//  3. the newest /usr/lib/postgresql/<version>/bin (versions compared
//     numerically, so 16 beats 9.6);
//  4. the directory of initdb found on PATH.
//
// When nothing is found the error wraps ErrNoBinaries.
func FindBinDir() (string, error) {
	if dir, ok := os.LookupEnv("PG_BIN"); ok && dir != "" {
		if err := checkBinDir(dir); err != nil {
			return "", fmt.Errorf("PG_BIN=%q: %w", dir, err)
		}
		return dir, nil
	}

	var tried []string
	if dir, err := pgConfigBinDir(); err == nil {
		if checkBinDir(dir) == nil {
			return dir, nil
		}
		tried = append(tried, dir+" (pg_config --bindir)")
	}

	for _, dir := range versionedBinDirs(debianPGRoot) {
		if checkBinDir(dir) == nil {
			return dir, nil
		}
		tried = append(tried, dir)
	}

	if p, err := exec.LookPath("initdb"); err == nil {
		dir := filepath.Dir(p)
		if checkBinDir(dir) == nil {
			return dir, nil
		}
		tried = append(tried, dir+" (PATH)")
	}

	if len(tried) == 0 {
		return "", fmt.Errorf("%w: set PG_BIN, install pg_config, or put initdb on PATH", ErrNoBinaries)
	}
	return "", fmt.Errorf("%w: tried %s", ErrNoBinaries, strings.Join(tried, ", "))
}

// checkBinDir reports (with an error wrapping ErrNoBinaries) whether dir
// holds executable initdb and postgres files.
func checkBinDir(dir string) error {
	for _, name := range []string{"initdb", "postgres"} {
		p := filepath.Join(dir, name)
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrNoBinaries, err)
		}
		if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			return fmt.Errorf("%w: %s is not an executable file", ErrNoBinaries, p)
		}
	}
	return nil
}

// pgConfigBinDir runs `pg_config --bindir` if pg_config is on PATH.
func pgConfigBinDir() (string, error) {
	p, err := exec.LookPath("pg_config")
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, p, "--bindir").Output()
	if err != nil {
		return "", fmt.Errorf("pg_config --bindir: %w", err)
	}
	dir := strings.TrimSpace(string(out))
	if dir == "" {
		return "", errors.New("pg_config --bindir printed nothing")
	}
	return dir, nil
}

// versionedBinDirs lists root/<version>/bin directories, newest version
// first, comparing dotted versions numerically.
func versionedBinDirs(root string) []string {
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil
	}
	type cand struct {
		ver []int
		dir string
	}
	var cands []cand
	for _, e := range entries {
		ver, ok := parseVersion(e.Name())
		if !ok {
			continue
		}
		cands = append(cands, cand{ver: ver, dir: filepath.Join(root, e.Name(), "bin")})
	}
	slices.SortFunc(cands, func(a, b cand) int { return slices.Compare(b.ver, a.ver) })
	dirs := make([]string, len(cands))
	for i, c := range cands {
		dirs[i] = c.dir
	}
	return dirs
}

// parseVersion parses "15" or "9.6" into its numeric components.
func parseVersion(s string) ([]int, bool) {
	parts := strings.Split(s, ".")
	ver := make([]int, 0, len(parts))
	for _, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return nil, false
		}
		ver = append(ver, n)
	}
	return ver, true
}
