//go:build race

package driver

// raceEnabled: the race detector is on.
const raceEnabled = true
