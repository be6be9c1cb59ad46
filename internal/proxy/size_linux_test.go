//go:build linux

package proxy

import (
	"testing"
	"unsafe"

	"github.com/pgsidecar/pgsidecar/internal/driver"
)

// TestIdleClientStructSizes guards the memory of an idle client on the event
// loop (docs/design.md section 16): its session and loop session, whose size
// classes are most of what it costs. A new field that crosses a size class
// costs every idle client the next class; move what only an active client
// needs elsewhere, or raise the bound here and say why in the design. An
// object larger than 512 bytes that holds pointers carries an 8-byte header
// of the allocator's: a 568-byte session takes the 576-byte class, a
// 1024-byte one the 1152-byte class.
func TestIdleClientStructSizes(t *testing.T) {
	for _, c := range []struct {
		what       string
		size, most uintptr
	}{
		{"session", unsafe.Sizeof(session{}), 576 - 8},
		{"loopSess", unsafe.Sizeof(loopSess{}), 192},
		{"driver.Conn", unsafe.Sizeof(driver.Conn{}), 48},
	} {
		t.Logf("%s: %d bytes (at most %d)", c.what, c.size, c.most)
		if c.size > c.most {
			t.Errorf("%s is %d bytes, more than the %d an idle loop client may spend on it", c.what, c.size, c.most)
		}
	}
}
