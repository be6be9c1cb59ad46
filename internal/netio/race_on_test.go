//go:build race

package netio_test

// raceEnabled: the race detector is on (it allocates on its own: allocation
// counts are not checked).
const raceEnabled = true
