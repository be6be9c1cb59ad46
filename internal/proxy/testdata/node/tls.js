// tls.js connects through the proxy with node-postgres over client TLS and
// prints one line per case: "node CASE ok TLSv1.3" (the query answered and
// the client's stream is an encrypted TLSSocket, with its protocol), "node
// CASE plaintext", or "node CASE error <SQLSTATE> <message>" (SQLSTATE
// "none" for an error without one). Run by tls_drivers_test.go:
//
//	node tls.js HOST PORT CERT_PORT DB DIR OTHER_CA
//
// PORT is a proxy that requires TLS, CERT_PORT one that also requires a
// client certificate signed by the test CA. DIR holds ca.crt, client.crt and
// client.key; OTHER_CA is a CA file that did not sign the proxy's
// certificate. The host is 127.0.0.1: with rejectUnauthorized the
// certificate must name it (its IP SAN).
'use strict';
const fs = require('fs');
const { Client, DatabaseError } = require('pg');
const [host, port, certPort, database, dir, otherCA] = process.argv.slice(2);
const read = (f) => fs.readFileSync(f, 'utf8');
const ca = read(dir + '/ca.crt');
const cert = read(dir + '/client.crt');
const key = read(dir + '/client.key');

const cases = [
  ['require', port, { rejectUnauthorized: false }],
  ['verify-full', port, { ca, rejectUnauthorized: true }],
  ['tls12', port, { ca, rejectUnauthorized: true, maxVersion: 'TLSv1.2' }],
  ['badca', port, { ca: read(otherCA), rejectUnauthorized: true }],
  ['disable', port, false],
  ['cert', certPort, { ca, rejectUnauthorized: true, cert, key }],
  ['nocert', certPort, { ca, rejectUnauthorized: true }],
  ['nocert-tls12', certPort, { ca, rejectUnauthorized: true, maxVersion: 'TLSv1.2' }],
];

// Until the last case printed its line: the process also ends when a
// promise it awaits can no longer settle (nothing left to wait for).
process.exitCode = 1;

(async () => {
  console.log('# node-postgres', require('pg/package.json').version + ', node', process.version);
  for (const [name, p, ssl] of cases) {
    const c = new Client({
      host, port: Number(p), database, user: 'postgres', ssl,
      connectionTimeoutMillis: 10000, query_timeout: 10000,
    });
    // An error after connect (the socket ending) must not end the process.
    c.on('error', () => {});
    let res;
    let connected = false;
    try {
      await c.connect();
      connected = true;
      const r = await c.query('select 6*7 as v');
      const s = c.connection.stream;
      const proto = s.encrypted ? s.getProtocol() : null;
      res = r.rows[0].v !== 42 ? 'bad-answer ' + r.rows[0].v : proto ? 'ok ' + proto : 'plaintext';
    } catch (e) {
      // A server's ErrorResponse is a DatabaseError, its code the SQLSTATE;
      // other errors (TLS, socket) may carry a code of their own.
      const msg = String(e.message).replace(/\s+/g, ' ').trim();
      res = e instanceof DatabaseError ? 'error ' + e.code + ' ' + msg
        : 'error none ' + (e.code ? e.code + ': ' : '') + msg;
    }
    console.log('node', name, res);
    if (connected) {
      await c.end().catch(() => {});
    } else {
      // end() would wait for the socket to close, which a TLS socket whose
      // connect failed (an alert, or the proxy's FATAL) may never do.
      c.connection.stream.destroy();
    }
  }
  process.exitCode = 0;
})();
