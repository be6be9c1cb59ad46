package config

import "strings"

// closest returns the candidate most similar to name, or "" if none is close
// enough to be worth suggesting. Names are compared case-insensitively with
// '_' and '-' treated alike, and once more with both removed, so "poolsize"
// and "POOL_SIZE" both match "pool-size" exactly. A candidate is close enough
// when at most max(2, len/3) single-character edits (Levenshtein distance)
// turn name into it; ties go to the candidate listed first.
func closest(name string, candidates []string) string {
	n := normalizeName(name)
	best, bestDist := "", -1
	for _, c := range candidates {
		nc := normalizeName(c)
		d := min(levenshtein(n, nc), levenshtein(stripSeparators(n), stripSeparators(nc)))
		if d > max(2, len(nc)/3) {
			continue
		}
		if bestDist < 0 || d < bestDist {
			best, bestDist = c, d
		}
	}
	return best
}

// normalizeName lower-cases s and turns '_' into '-'.
func normalizeName(s string) string {
	return strings.ReplaceAll(strings.ToLower(s), "_", "-")
}

// stripSeparators removes every '-' from s.
func stripSeparators(s string) string {
	return strings.ReplaceAll(s, "-", "")
}

// levenshtein is the number of single-byte insertions, deletions and
// substitutions that turn a into b.
func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
