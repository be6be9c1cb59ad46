//go:build linux

package localpg

import (
	"io/fs"
	"syscall"
)

// sysProcAttr returns the process attributes for initdb and postgres: a new
// process group (so a terminal Ctrl-C reaches only the parent, which then
// stops the server in order), the unprivileged credentials when r is not
// nil, and, for the long-running server, SIGQUIT (immediate shutdown) should
// the parent die without stopping it.
//
// The parent-death signal is tied to the OS thread that forked the child;
// launch locks that thread for the lifetime of the child.
func sysProcAttr(r *runAs, parentDeathSignal bool) (*syscall.SysProcAttr, error) {
	attr := &syscall.SysProcAttr{Setpgid: true}
	if parentDeathSignal {
		attr.Pdeathsig = syscall.SIGQUIT
	}
	if r != nil {
		attr.Credential = &syscall.Credential{Uid: r.uid, Gid: r.gid, Groups: []uint32{}}
	}
	return attr, nil
}

// fileOwner returns the owning uid and gid of fi.
func fileOwner(fi fs.FileInfo) (uid, gid uint32, ok bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, false
	}
	return st.Uid, st.Gid, true
}
