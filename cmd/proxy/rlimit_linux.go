//go:build linux

package main

import (
	"fmt"
	"syscall"
)

// raiseOpenFilesLimit raises the soft RLIMIT_NOFILE to the hard limit if it
// is lower and returns both limits as they are afterwards. Go's runtime
// already does this at startup (since Go 1.19); this reads the limit back,
// so it can be logged, and covers a runtime that did not.
func raiseOpenFilesLimit() (soft, hard uint64, err error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, 0, fmt.Errorf("getrlimit RLIMIT_NOFILE: %w", err)
	}
	if lim.Cur < lim.Max {
		raised := syscall.Rlimit{Cur: lim.Max, Max: lim.Max}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err != nil {
			return uint64(lim.Cur), uint64(lim.Max), fmt.Errorf("setrlimit RLIMIT_NOFILE to %d: %w", lim.Max, err)
		}
		if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return 0, 0, fmt.Errorf("getrlimit RLIMIT_NOFILE: %w", err)
		}
	}
	return uint64(lim.Cur), uint64(lim.Max), nil
}
