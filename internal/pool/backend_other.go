//go:build !linux

package pool

import "errors"

// Unpoll is Linux-only (backend_linux.go), as the event loop is.
func (b *Backend) Unpoll() error { return errors.New("pool: unpoll needs Linux") }
