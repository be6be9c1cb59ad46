// Package pgtest is the shared test harness of the repository: the helpers
// that more than one test file or package needs, written once. Only tests
// (_test.go files) import it; no package that ships in a binary may, and
// TestOnlyTestsImportPgtest checks that.
//
// What it owns, by file:
//
//   - pgtest.go: throwaway PostgreSQL clusters (localpg) for a test or a whole
//     package, skipping when the server binaries are missing on a developer
//     machine and failing instead in CI (CI=true), where a skipped integration
//     test would silently hide missing coverage; the same rule for anything
//     else a test needs (InCI, SkipUnlessCI, NeedBinaries).
//   - raw.go: Raw, a client that speaks the protocol as raw messages, for what
//     no driver does (a claimed length it never sends, a client that stops
//     reading: Header, StreamLiteral, Stuck), and reads to the end of a
//     connection (UntilReady, ReadToClose, ExpectFatal, Closed).
//   - conn.go: pgx connections with cleanup (Connect, TryConnect), SQLSTATE of
//     an error (SQLState), one-integer queries (Int, MustInt, SelectInt).
//   - eventually.go: waiting for a condition instead of sleeping (Poll,
//     Eventually, EventuallyTrue) and for a value on a channel (Recv).
//   - goroutines.go: goroutines left behind (Goroutines, LeftGoroutines).
//   - monitor.go: BackendMonitor, sampling how many backends PostgreSQL shows
//     for a workload while it runs.
//   - crowd.go: Crowd, bystander clients running transactions while a test
//     does something else, and what went wrong for them.
//   - metrics.go: Prometheus samples from a registry or a /metrics page
//     (Gather, ParseMetrics, ScrapeMetrics) and their values (Metrics).
//   - net.go: free loopback addresses (FreeAddr) and bounded HTTP probes
//     (HTTPGet).
//   - logbuf.go: LogBuffer, a log destination safe for concurrent use whose
//     lines a test can count.
//
// Typical per-test use:
//
//	c := pgtest.Start(t, localpg.Options{})
//	conn := pgtest.Connect(t, c.URL("postgres"), 0, nil)
//
// Typical shared use from TestMain:
//
//	var cluster *localpg.Cluster // nil: tests call t.Skip
//
//	func TestMain(m *testing.M) {
//		c, stop, err := pgtest.Main(localpg.Options{})
//		if err != nil {
//			fmt.Fprintln(os.Stderr, err)
//			os.Exit(1)
//		}
//		cluster = c
//		code := m.Run()
//		stop() // os.Exit skips deferred calls
//		os.Exit(code)
//	}
package pgtest
