package sqlscan

import (
	"strconv"
	"strings"
)

// Normalize returns q with every constant (a string, bit-string or
// dollar-quoted literal, or a number) replaced by a parameter $n, numbered
// after the highest $n already in q, the way pg_stat_statements shows
// statements: what a statement does stays readable, the values it carries do
// not leave the process. A literal left open at the end (a statement cut
// short) is replaced as well. Identifiers, keywords, operators and comments
// are kept. It is meant for rare paths (logs, SHOW, the status page) and
// allocates the result.
func Normalize(q []byte) string {
	highest := 0
	for i := 0; ; {
		k, ts, te, open := lexSQL(q, i)
		if k == tEOF {
			break
		}
		if k == tParam {
			if n, err := strconv.Atoi(string(q[ts+1 : te])); err == nil {
				highest = max(highest, n)
			}
		}
		if open {
			break
		}
		i = te
	}
	var b strings.Builder
	b.Grow(len(q))
	next, last := highest+1, 0
	for i := 0; ; {
		k, ts, te, open := lexSQL(q, i)
		if k == tEOF {
			break
		}
		if k == tString || k == tNumber {
			b.Write(q[last:ts])
			if ts > 0 && (q[ts-1] == '$' || charClass[q[ts-1]]&cIdentCont != 0) {
				b.WriteByte(' ') // "a'x'" is not "a$1", an identifier, nor "$'x'" "$$1"
			}
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(next))
			next++
			last = te
		}
		if open {
			break
		}
		i = te
	}
	b.Write(q[min(last, len(q)):])
	return b.String()
}
