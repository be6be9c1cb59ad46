//go:build !linux

package localpg

import (
	"errors"
	"io/fs"
	"syscall"
)

// sysProcAttr returns the process attributes for initdb and postgres.
// Dropping root privileges is only implemented on Linux.
func sysProcAttr(r *runAs, _ bool) (*syscall.SysProcAttr, error) {
	if r != nil {
		return nil, errors.New("localpg: running the server as an unprivileged user (caller is root) is only supported on Linux")
	}
	return &syscall.SysProcAttr{}, nil
}

// fileOwner is not implemented outside Linux.
func fileOwner(fs.FileInfo) (uid, gid uint32, ok bool) { return 0, 0, false }
