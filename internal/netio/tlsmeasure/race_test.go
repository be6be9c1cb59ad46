//go:build race

package tlsmeasure

const raceEnabled = true
