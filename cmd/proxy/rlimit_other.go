//go:build !linux

package main

import "errors"

// raiseOpenFilesLimit does nothing outside Linux: it returns
// errors.ErrUnsupported, and nothing is logged.
func raiseOpenFilesLimit() (soft, hard uint64, err error) {
	return 0, 0, errors.ErrUnsupported
}
