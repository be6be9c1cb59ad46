//go:build !race

package tlsmeasure

const raceEnabled = false
