package sqlscan

import (
	"reflect"
	"testing"
)

// needsName reports whether records of kind k always carry a Name. Set,
// SetLocal, Reset and SetConfig use an empty Name for "not understood".
func needsName(k Kind) bool {
	switch k {
	case KindPrepare, KindExecute, KindDeallocate, KindListen, KindUnlisten,
		KindDeclareHold, KindCloseCursor, KindAdvisoryLock, KindAdvisoryUnlock, KindLoad:
		return true
	}
	return false
}

// checkRecords asserts the invariants every classification of q holds.
func checkRecords(t *testing.T, q string, got []Statement) {
	t.Helper()
	for i, st := range got {
		if st.Start < 0 || st.Start >= st.End || st.End > len(q) {
			t.Fatalf("record %d %+v: offsets outside %d-byte input", i, st, len(q))
		}
		if i > 0 {
			prev := got[i-1]
			same := st.Start == prev.Start && st.End == prev.End
			if !same && st.Start <= prev.End {
				t.Fatalf("record %d %+v overlaps or precedes record %d %+v", i, st, i-1, prev)
			}
			if same && st.Kind == KindOther {
				t.Fatalf("record %d: KindOther repeats a statement already reported: %+v", i, got)
			}
		}
		if st.Kind >= numKinds {
			t.Fatalf("record %d: kind %d out of range", i, st.Kind)
		}
		if needsName(st.Kind) && st.Name == "" {
			t.Fatalf("record %d %+v: %v without Name", i, st, st.Kind)
		}
		switch st.Kind {
		case KindSet, KindSetLocal, KindReset, KindSetConfig:
			if st.Name == "" && (st.Value != "" || st.Default) {
				t.Fatalf("record %d %+v: not understood but has a value", i, st)
			}
		case KindPrepare, KindAdvisoryLock, KindAdvisoryUnlock:
		default:
			if st.Value != "" || st.Default || st.IsLocal {
				t.Fatalf("record %d %+v: %v with a value", i, st, st.Kind)
			}
			if !needsName(st.Kind) && st.Name != "" {
				t.Fatalf("record %d %+v: %v with a name", i, st, st.Kind)
			}
		}
		if st.Kind == KindSetLocal && !st.IsLocal {
			t.Fatalf("record %d %+v: SetLocal without IsLocal", i, st)
		}
		if st.Default && st.Value != "" {
			t.Fatalf("record %d %+v: Default with a Value", i, st)
		}
		if c := q[st.Start]; charClass[c]&cSpace != 0 || c == ';' {
			t.Fatalf("record %d %+v: statement text starts with %q", i, st, c)
		}
	}
}

// shiftRecords returns recs with offsets moved by d.
func shiftRecords(recs []Statement, d int) []Statement {
	out := make([]Statement, len(recs))
	for i, st := range recs {
		st.Start += d
		st.End += d
		out[i] = st
	}
	return out
}

func FuzzClassify(f *testing.F) {
	for _, tc := range classifyCases {
		f.Add(tc.q, "SELECT pg_advisory_lock(1)")
	}
	f.Add("SELECT 1", "SET x = 1; LISTEN c")
	f.Add("SELECT 'a", "SELECT 1")
	f.Fuzz(func(t *testing.T, q, extra string) {
		got, open := classifyAll([]byte(q))
		again, open2 := classifyAll([]byte(q))
		if !reflect.DeepEqual(got, again) || open != open2 {
			t.Fatalf("two classifications differ:\n%+v %v\n%+v %v", got, open, again, open2)
		}
		checkRecords(t, q, got)

		// Each statement on its own classifies the same.
		for i := 0; i < len(got); {
			j := i
			for j < len(got) && got[j].Start == got[i].Start {
				j++
			}
			alone, _ := classifyAll([]byte(q[got[i].Start:got[i].End]))
			if want := shiftRecords(got[i:j], -got[i].Start); !reflect.DeepEqual(alone, want) {
				t.Fatalf("statement %q alone:\n got %+v\nwant %+v", q[got[i].Start:got[i].End], alone, want)
			}
			i = j
		}

		// Appending "; extra" appends extra's records, unless q left a literal,
		// comment, parenthesis or BEGIN ATOMIC open (which swallows the ';').
		if open {
			return
		}
		joined, _ := classifyAll([]byte(q + ";" + extra))
		tail, _ := classifyAll([]byte(extra))
		want := append(append([]Statement{}, got...), shiftRecords(tail, len(q)+1)...)
		if len(want) == 0 {
			want = nil
		}
		if !reflect.DeepEqual(joined, want) {
			t.Fatalf("%q + \";\" + %q:\n got %+v\nwant %+v", q, extra, joined, want)
		}
	})
}
