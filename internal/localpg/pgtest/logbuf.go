package pgtest

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
)

// LogBuffer is a log destination for a test: safe for concurrent writes and
// reads, so that a test can look at what the code under test logged while it
// still runs. The zero value is ready to use.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Logger returns a text logger writing to b the records at level and above.
func (b *LogBuffer) Logger(level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: level}))
}

// Count returns the number of lines that contain every one of subs.
func (b *LogBuffer) Count(subs ...string) int {
	n := 0
	for _, line := range strings.Split(b.String(), "\n") {
		ok := line != ""
		for _, s := range subs {
			if !strings.Contains(line, s) {
				ok = false
				break
			}
		}
		if ok {
			n++
		}
	}
	return n
}

// Lines returns the lines that contain sub, joined by newlines (for failure
// messages).
func (b *LogBuffer) Lines(sub string) string {
	var out []string
	for _, line := range strings.Split(b.String(), "\n") {
		if strings.Contains(line, sub) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}
