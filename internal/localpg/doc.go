// Package localpg runs throwaway local PostgreSQL clusters.
//
// It owns everything needed to get a private PostgreSQL server up from the
// installed server binaries: locating initdb/postgres (FindBinDir), creating
// a data directory with initdb, starting the postmaster as a child process on
// a free 127.0.0.1 port, waiting until it accepts connections, stopping and
// restarting it on the same port, and removing it again. It is used by the
// `proxy dev` command and by every integration test (via the pgtest helper
// package), so it favours fast, disposable clusters: trust authentication,
// fsync and synchronous_commit off, and a generous max_connections.
//
// When the calling process runs as root (as CI containers usually do), the
// server is run as an unprivileged user, because PostgreSQL refuses to run as
// root: the user "pgsidecar" is used, created with useradd if it is missing,
// and "nobody" is used as a last resort.
//
// A Cluster only ever signals or kills the processes it started itself.
//
// This package is a leaf: it depends on the standard library and on
// github.com/jackc/pgx/v5/pgconn (for readiness checks and CREATE DATABASE)
// and internal/testcert (the certificates of Options.TLS) only. It must not import anything from the proxy, pool, metrics, admin or
// config packages, nor Prometheus, so that tests of any of those packages can
// use it without import cycles.
package localpg
