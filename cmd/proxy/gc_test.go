package main

import (
	"runtime/debug"
	"testing"
)

// --gc-percent sets the collector's target, unless GOGC is set: then the
// runtime's reading of GOGC stands.
func TestSetGCPercent(t *testing.T) {
	orig := debug.SetGCPercent(100)
	defer debug.SetGCPercent(orig)

	setGCPercent(37, func(string) string { return "" })
	if got := debug.SetGCPercent(100); got != 37 {
		t.Errorf("without GOGC: target %d, want 37", got)
	}
	setGCPercent(37, func(k string) string {
		if k == "GOGC" {
			return "200"
		}
		return ""
	})
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("with GOGC set: target %d, want it left at 100", got)
	}
}
