package proxy_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Random protocol scenarios for TestProtocolOrder: sequences of simple queries and
// extended-protocol batches built from a small vocabulary (a few statement names,
// queries that succeed, fail at parse or at execute, open, end and fail
// transactions, return several rows), so that named and unnamed statements are
// reused, redefined, closed, described and bound with wrong parameter counts,
// errors skip to the next Sync, and transactions span steps. PostgreSQL and the
// proxy must answer every step identically. The seeds are fixed so that a run is
// reproducible; PGSIDECAR_PROTOCOL_SEED=N (or A-B) adds seeds, to explore.

// randomSeeds are the seeds every run uses.
var randomSeeds = []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
	// Seeds that found bugs, kept: an internal statement name in an error
	// message, a client's statement forgotten after 25P02, a skipped Parse or
	// Close of the unnamed statement, a statement cached on a backend by a
	// Parse an error skipped, a Parse of a cached statement answered inside a
	// failed transaction.
	45, 109, 239, 324, 369, 567, 837}

// randomScenarios returns one scenario per seed.
func randomScenarios() []pscenario {
	seeds := randomSeeds
	if s := os.Getenv("PGSIDECAR_PROTOCOL_SEED"); s != "" {
		// N, or A-B for a range.
		lo, hi, _ := strings.Cut(s, "-")
		a, errA := strconv.ParseUint(lo, 10, 64)
		b, errB := strconv.ParseUint(hi, 10, 64)
		if errB != nil {
			b = a
		}
		if errA == nil {
			seeds = seeds[:len(seeds):len(seeds)]
			for n := a; n <= b && n-a < 10000; n++ {
				seeds = append(seeds, n)
			}
		}
	}
	out := make([]pscenario, 0, len(seeds))
	for _, seed := range seeds {
		out = append(out, randomScenario(seed, 12))
	}
	return out
}

// Statement texts for Parse: by parameter count, so that a Bind can supply the
// right number of parameters (or, on purpose, the wrong one).
var randomParseTexts = []struct {
	q      string
	params int
}{
	{"select 1 as one", 0},
	{"select $1::int4 + 1 as n", 1},
	{"select 1/0 as boom", 0},          // fails at Execute
	{"selec 1", 0},                     // fails at Parse
	{"values (1), (2), (3)", 0},        // three rows: Execute with a row limit suspends
	{"begin", 0},                       // opens a transaction: the backend stays
	{"commit", 0},                      //
	{"rollback", 0},                    //
	{"select $1::text as t", 1},        //
	{"select pg_sleep(0) as slept", 0}, // a void column
}

// Simple queries, several statements in some.
var randomQueries = []string{
	"select 1",
	"begin",
	"commit",
	"rollback",
	"select 1/0",
	"selec 1",
	"",
	"select 1; select 2",
	"begin; select 1",
	"savepoint a",
	"rollback to savepoint a",
	"values (1), (2)",
}

var randomNames = []string{"", "", "r1", "r2"}

// randomScenario builds steps steps from seed.
func randomScenario(seed uint64, steps int) pscenario {
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	pick := func(n int) int { return rng.IntN(n) }
	sc := pscenario{name: fmt.Sprintf("random_seed%d", seed)}
	for i := range steps {
		var msgs []pgproto3.FrontendMessage
		var name string
		if pick(4) == 0 {
			q := randomQueries[pick(len(randomQueries))]
			msgs = fm(query(q))
			name = "query " + strconv.Quote(q)
		} else {
			n := 1 + pick(5)
			// A statement Parsed or Closed before a pipelined Sync of the same
			// write is not used after it: the proxy keeps the client's names
			// (and its unnamed statement, for other backends) itself and
			// decides when it sends, before it knows whether an error skipped
			// that Parse or Close; PostgreSQL decides when it gets there.
			// Clients do not redefine a name they just defined.
			changed, frozen := map[string]bool{}, map[string]bool{}
			pickName := func() string {
				name := randomNames[pick(len(randomNames))]
				if frozen[name] {
					return "r3" // never defined: "does not exist" on both sides
				}
				return name
			}
			for range n {
				switch pick(9) {
				case 0, 1:
					t := randomParseTexts[pick(len(randomParseTexts))]
					name := pickName()
					changed[name] = true
					if name != "" && t.q == "selec 1" {
						// A named Parse taken without a backend is answered at
						// once and checked at its first use (deferParse): its
						// syntax error comes later than PostgreSQL's.
						t.q = "select 1 as one"
					}
					msgs = append(msgs, parse(name, t.q))
				case 2, 3:
					var params []string
					for range pick(3) {
						params = append(params, strconv.Itoa(pick(100)))
					}
					msgs = append(msgs, bind(pickName(), params...))
				case 4:
					if pick(2) == 0 {
						msgs = append(msgs, describeS(pickName()))
					} else {
						msgs = append(msgs, describeP(""))
					}
				case 5, 6:
					if pick(3) == 0 {
						msgs = append(msgs, executeMax("", 1+uint32(pick(2))))
					} else {
						msgs = append(msgs, execute())
					}
				case 7:
					if pick(2) == 0 {
						name := pickName()
						changed[name] = true
						msgs = append(msgs, closeS(name))
					} else {
						msgs = append(msgs, &pgproto3.Close{ObjectType: 'P'})
					}
				case 8:
					if pick(2) == 0 {
						msgs = append(msgs, flushM)
					} else {
						msgs = append(msgs, syncM) // a pipelined Sync inside the batch
						for name, c := range changed {
							frozen[name] = frozen[name] || c
						}
					}
				}
			}
			msgs = append(msgs, syncM)
			name = fmt.Sprintf("batch of %d", len(msgs))
		}
		sc.steps = append(sc.steps, pstep{name: fmt.Sprintf("%d %s", i+1, name), msgs: msgs, abortedOK: true})
	}
	// Leave a clean connection for the next scenario: no transaction, no named
	// statement.
	sc.steps = append(sc.steps,
		pstep{name: "cleanup rollback", msgs: fm(query("rollback"))},
		pstep{name: "cleanup close", msgs: fm(closeS("r1"), closeS("r2"), syncM), want: w(ccl, ccl, rfqI)},
	)
	return sc
}
