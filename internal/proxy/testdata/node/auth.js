// auth.js logs in through the proxy with node-postgres, with the right and a
// wrong password, and prints one line per attempt: "node good ok", or
// "node bad error <SQLSTATE> <message>". Arguments: host port database user
// password. Run by auth_jvm_node_test.go.
'use strict';
const { Client } = require('pg');
const [host, port, database, user, password] = process.argv.slice(2);
(async () => {
  for (const [kind, pw] of [['good', password], ['bad', 'wrong']]) {
    const c = new Client({ host, port: Number(port), database, user, password: pw, ssl: false });
    try {
      await c.connect();
      const r = await c.query('select 6*7 as v');
      console.log('node', kind, r.rows[0].v === 42 ? 'ok' : 'bad-answer');
    } catch (e) {
      console.log('node', kind, 'error', e.code, e.message);
    } finally {
      await c.end().catch(() => {});
    }
  }
})();
