// Package config owns the runtime configuration of pgsidecar: the [Config]
// type and its defaults ([Default]), the binding of every setting to a
// command-line flag and a PGSIDECAR_* environment variable ([Bind]), parsing
// the command line ([ParseArgs]), rejecting PGSIDECAR_* variables that belong
// to no flag ([CheckEnviron]), the help text for those flags ([FlagUsage]) and
// validation ([Config.Validate]). Every problem is reported, not just the
// first, each naming the flag or variable and suggesting the closest flag for
// a misspelt name.
//
// All flag names live in a single table in this package; flag registration,
// environment variable names, usage text and validation messages are derived
// from it, so a setting is added or renamed in exactly one place.
//
// [Load] builds the configuration the proxy runs with, and builds it again on
// every reload. Precedence, highest first: command-line flag, PGSIDECAR_<NAME>
// environment variable, the configuration file (--config, [ParseFile]),
// DATABASE_URL (for --upstream only), the defaults. The upstream may come from
// a file (--upstream-file) and its password from another
// (--upstream-password-file), so that a mounted Secret can be rotated.
// [Changes] compares two configurations and says which changes a running proxy
// cannot apply.
//
// The package must not import anything but the standard library. It does not
// interpret the upstream connection string (the caller parses it with pgconn);
// it only requires that one is present.
package config
