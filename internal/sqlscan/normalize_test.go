package sqlscan

import (
	"strings"
	"testing"
)

func TestNormalize(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"SELECT 42 AS leaked", "SELECT $1 AS leaked"},
		{"UPDATE cards SET n = '4111 1111 1111 1111' WHERE id = 7", "UPDATE cards SET n = $1 WHERE id = $2"},
		{"select $1, 'x', $3::int, 2.5e3", "select $1, $4, $3::int, $5"},
		{"SELECT E'it\\'s', B'0101', X'ff', N'n', U&'d\\0061t'", "SELECT $1, $2, $3, $4, $5"},
		{"SELECT $tag$ secret $tag$, $$ also $$", "SELECT $1, $2"},
		{"SELECT interval '1 day' /* keep 'this' comment */ -- and 5 this\n, x", "SELECT interval $1 /* keep 'this' comment */ -- and 5 this\n, x"},
		{"INSERT INTO t VALUES (-2417, 'cut short", "INSERT INTO t VALUES (-$1, $2"},
		{"SELECT \"col 1\", t1.a FROM t1", "SELECT \"col 1\", t1.a FROM t1"},
		{"", ""},
		{"SELECT 'unterminated $$ dollar", "SELECT $1"},
	} {
		if got := Normalize([]byte(tc.in)); got != tc.want {
			t.Errorf("Normalize(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// FuzzNormalize: no input makes Normalize panic, a quoted literal does not
// survive it, and its output has no constant left (normalizing it again
// changes nothing).
func FuzzNormalize(f *testing.F) {
	for _, s := range []string{"SELECT 'secret-value-xyz'", "select $$secret-value-xyz$$", "E'a\\'secret-value-xyz'"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := Normalize([]byte(s))
		if strings.HasPrefix(s, "SELECT 'secret-value-xyz") && strings.Contains(out, "secret-value-xyz") {
			t.Errorf("Normalize(%q) = %q keeps the literal", s, out)
		}
		// What is shown has no constant left to hide.
		if again := Normalize([]byte(out)); again != out {
			t.Errorf("Normalize(%q) = %q, normalized again %q", s, out, again)
		}
	})
}
