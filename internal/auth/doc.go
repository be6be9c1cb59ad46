// Package auth owns the server side of PostgreSQL client password
// authentication for the proxy: checking a client's password exactly as
// PostgreSQL's backend does (src/backend/libpq/auth.c and auth-scram.c), without
// ever holding a socket.
//
// It provides:
//
//   - Method, the configured authentication method (trust, md5, scram-sha-256);
//   - Secret, what the proxy knows of one role's password (a cleartext password,
//     an MD5 hash or a SCRAM-SHA-256 verifier in pg_authid's format), which never
//     prints itself;
//   - ParseUserlist, the parser of PgBouncer's userlist.txt format;
//   - Exchange, one client's authentication conversation as a state machine:
//     the caller writes the bytes it returns and feeds it the bodies of the
//     client's 'p' messages. SCRAM-SHA-256 (RFC 5802, RFC 7677) and the MD5
//     challenge are implemented, including PostgreSQL's mock authentication for
//     unknown roles so that clients cannot tell them from wrong passwords;
//   - ServerLogin, what a successful exchange proved (the ClientKey of a SCRAM
//     login against a verifier PostgreSQL made, or the MD5 hash), and
//     SCRAMClient and MD5Response, which use it to answer PostgreSQL's own
//     challenge for the same role without its password.
//
// The package does no I/O of its own. It must not import net, os or any other
// socket or file code, Prometheus, or other internal packages (internal/wire
// alone would be acceptable); it depends only on the standard library. Tests
// may use the network.
package auth
