//go:build !race

package netio_test

// raceEnabled: the race detector is on.
const raceEnabled = false
