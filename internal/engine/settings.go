package engine

import (
	"hash/fnv"
	"slices"
	"strings"
)

// Settings tracking (docs/design.md section 6): a client's settings (its
// startup parameters, then what its SET, RESET and set_config calls left) are
// replayed on whichever server connection it gets next.

// Settings maps a setting's name (lower case) to its value as current_setting
// shows it or as the client gave it.
type Settings map[string]string

// NotSettings are startup parameters that are not settings to replay.
var NotSettings = map[string]bool{"user": true, "database": true, "options": true, "replication": true}

// ParseOptions reads the "-c name=value" and "--name=value" items of the options
// startup parameter (separated by spaces, a backslash escapes the next byte).
func ParseOptions(s string) [][2]string {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			inWord = true
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	var out [][2]string
	for i := 0; i < len(words); i++ {
		w := words[i]
		switch {
		case w == "-c" && i+1 < len(words):
			i++
			w = words[i]
		case strings.HasPrefix(w, "-c"):
			w = w[2:]
		case strings.HasPrefix(w, "--"):
			w = w[2:]
		default:
			continue
		}
		if k, v, ok := strings.Cut(w, "="); ok && k != "" {
			out = append(out, [2]string{strings.ReplaceAll(k, "-", "_"), v})
		}
	}
	return out
}

// SettingsKey fingerprints settings (0 only for none).
func SettingsKey(m Settings) uint64 {
	if len(m) == 0 {
		return 0
	}
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	slices.Sort(names)
	h := fnv.New64a()
	for _, k := range names {
		h.Write([]byte(k))
		h.Write([]byte{0})
		h.Write([]byte(m[k]))
		h.Write([]byte{0})
	}
	if k := h.Sum64(); k != 0 {
		return k
	}
	return 1
}

// QuoteLiteral quotes s as an escape string literal, right whatever
// standard_conforming_strings says.
func QuoteLiteral(s string) string {
	var b strings.Builder
	b.WriteString("E'")
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\'':
			b.WriteString("''")
		case '\\':
			b.WriteString(`\\`)
		default:
			b.WriteByte(s[i])
		}
	}
	b.WriteByte('\'')
	return b.String()
}

func QuoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// SetOrder sorts settings for a replay: session_authorization first, since
// setting it resets role.
func SetOrder(name string) string {
	if name == "session_authorization" {
		return ""
	}
	return name
}
