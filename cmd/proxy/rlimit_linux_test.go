//go:build linux

package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"syscall"
	"testing"
)

// A soft limit on open files below the hard limit is raised to it, and both
// are logged.
func TestRaiseOpenFilesLimit(t *testing.T) {
	var orig syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
		t.Fatal(err)
	}
	if orig.Max < 256 {
		t.Skipf("hard limit on open files is only %d", orig.Max)
	}
	t.Cleanup(func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
			t.Error(err)
		}
	})
	lower := func() {
		t.Helper()
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: orig.Max - 1, Max: orig.Max}); err != nil {
			t.Fatal(err)
		}
	}

	lower()
	soft, hard, err := raiseOpenFilesLimit()
	if err != nil || soft != orig.Max || hard != orig.Max {
		t.Fatalf("raiseOpenFilesLimit() = %d, %d, %v; want %d, %d", soft, hard, err, orig.Max, orig.Max)
	}
	var now syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &now); err != nil || now.Cur != orig.Max {
		t.Fatalf("soft limit %d after raising (%v), want %d", now.Cur, err, orig.Max)
	}
	// Already at the hard limit: nothing to do.
	if soft, hard, err := raiseOpenFilesLimit(); err != nil || soft != orig.Max || hard != orig.Max {
		t.Errorf("second call = %d, %d, %v", soft, hard, err)
	}

	lower()
	var buf bytes.Buffer
	logOpenFilesLimit(slog.New(slog.NewTextHandler(&buf, nil)))
	if want := fmt.Sprintf(`level=INFO msg="open files limit" soft=%d hard=%d`, orig.Max, orig.Max); !strings.Contains(buf.String(), want) {
		t.Errorf("log %q lacks %q", buf.String(), want)
	}
}
