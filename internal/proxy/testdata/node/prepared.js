// prepared.js is the node-postgres workload of TestPreparedNode
// (prepared_jvm_node_test.go): several pg.Client connections, run concurrently, use
// named queries ({name, text, values}: node-postgres parses each once per connection
// and never closes it) in hundreds of separate transactions, with rollbacks, an
// expected error. The same statement name stands for different SQL
// on different connections. It checks every value it reads back and prints one line
//
//	SUMMARY {"driver":"node","errors":N,"clients":[{...}, ...]}
//
// that the Go test compares with the same schedule (prepSchedule there), and an
// "ERROR ..." line on stderr for each of the first unexpected errors. Exit status: 0
// when no unexpected error happened, 1 otherwise, 2 on bad arguments.
//
//	node prepared.js host=H port=P db=DB clients=4 txns=300 [app=NAME] [direct=true]
//
// direct=true (the connection goes straight to PostgreSQL) also checks, through
// pg_prepared_statements, that each connection holds exactly its four named statements.
//
// The database must have the tables
//
//	items(client int, seq int, val bigint, note text, PRIMARY KEY (client, seq))
//	batch(client int, seq int, PRIMARY KEY (client, seq))
'use strict';

const { isDeepStrictEqual } = require('node:util');
const { Client } = require('pg');

const ECHO = 'SELECT $1::int4 AS a, $2::text AS b, $3::int8 * 2 AS c';
const INSERT = 'INSERT INTO items (client, seq, val, note) VALUES ($1, $2, $3, $4)';
const TYPES = 'SELECT count(*)::int4 AS n, coalesce(sum(val), 0)::int8 AS s, $1::numeric(12,3) AS num,' +
  ' $2::float8 AS f, $3::bool AS b, $4::bytea AS by, $5::timestamptz AS ts, $6::uuid AS u,' +
  ' ARRAY[$7::int4, $8::int4] AS arr, $9::jsonb AS j FROM items WHERE client = $10';
const BATCH = 'INSERT INTO batch (client, seq) VALUES ($1, $2)';
const STATEMENTS = [ECHO, INSERT, TYPES, BATCH];

const PRINT_ERRORS = 5;
const MAX_ERRORS = 20;

function usage(why) {
  console.error(`prepared.js: ${why}`);
  console.error('usage: node prepared.js host=H port=P db=DB clients=N txns=N [app=NAME] [direct=true]');
  process.exit(2);
}

const opt = {};
for (const a of process.argv.slice(2)) {
  const eq = a.indexOf('=');
  if (eq <= 0) usage(`bad argument ${a}`);
  opt[a.slice(0, eq)] = a.slice(eq + 1);
}
const clients = Number(opt.clients ?? 4);
const txns = Number(opt.txns ?? 300);
const direct = opt.direct === 'true';
if (!opt.host || !opt.port || !opt.db || !(clients > 0) || !(txns > 0)) usage('need host=, port=, db=, clients>0, txns>0');

class Mismatch extends Error {}

function check(cond, what) {
  if (!cond) throw new Mismatch(what);
}

class Worker {
  constructor(c) {
    this.c = c;
    // Statement j is named q_((j + c) % 4): each name means different SQL on
    // different connections.
    this.name = STATEMENTS.map((_, j) => `q_${(j + c) % STATEMENTS.length}`);
    this.s = {
      client: c, done: 0, echo_ok: 0, echo_sum: 0, types_ok: 0, rows: 0, batch_rows: 0,
      expected_errors: 0, rollbacks: 0, reprepares: 0, errors: 0, statement_checks: 0, statement_names: 0,
    };
    this.committedN = 0;
    this.committedS = 0;
    this.inTx = false;
  }

  q(j, values) {
    return this.client.query({ name: this.name[j], text: STATEMENTS[j], values });
  }

  val(seq) {
    return seq * 7 + this.c;
  }

  fail(i, r, e) {
    this.s.errors++;
    if (this.s.errors <= PRINT_ERRORS) {
      console.error(`ERROR client=${this.c} txn=${i} r=${r} sqlstate=${e.code ?? '-'}: ${e.message}`);
    }
  }

  async run() {
    this.client = new Client({
      host: opt.host, port: Number(opt.port), database: opt.db, user: 'postgres',
      application_name: opt.app || undefined, connectionTimeoutMillis: 10000, query_timeout: 20000,
    });
    // A connection that fails between queries must not crash the process.
    this.client.on('error', (e) => this.fail(-1, -1, e));
    try {
      await this.client.connect();
    } catch (e) {
      this.fail(-1, -1, e);
      this.s.errors = MAX_ERRORS;
      return;
    }
    for (let i = 0; i < txns && this.s.errors < MAX_ERRORS; i++) {
      const r = (i + 7 * this.c) % 10;
      try {
        await this.txn(i, r);
        this.s.done++;
      } catch (e) {
        this.fail(i, r, e);
        if (this.inTx) {
          this.inTx = false;
          await this.client.query('ROLLBACK').catch((e2) => this.fail(i, r, e2));
        }
      }
    }
    if (direct && this.s.errors === 0) {
      try {
        await this.checkServerStatements();
      } catch (e) {
        this.fail(txns, -1, e);
      }
    }
    await this.client.end().catch((e) => this.fail(txns, -1, e));
  }

  async begin() {
    await this.client.query('BEGIN');
    this.inTx = true;
  }

  async end(cmd) {
    this.inTx = false;
    await this.client.query(cmd);
  }

  async txn(i, r) {
    const seq = i * 10;
    if (r <= 3) { // autocommit: two single-statement transactions
      await this.echo(i);
      await this.insert(seq);
      this.committedN++;
      this.committedS += this.val(seq);
    } else if (r <= 6) { // explicit, committed
      await this.begin();
      await this.echo(i);
      await this.insert(seq);
      await this.insert(seq + 1);
      await this.types(i, this.committedN + 2, this.committedS + this.val(seq) + this.val(seq + 1));
      await this.end('COMMIT');
      this.committedN += 2;
      this.committedS += this.val(seq) + this.val(seq + 1);
    } else if (r === 7) { // explicit, rolled back
      await this.begin();
      await this.insert(seq);
      await this.types(i, this.committedN + 1, this.committedS + this.val(seq));
      await this.end('ROLLBACK');
      this.s.rollbacks++;
      await this.types(i, this.committedN, this.committedS);
    } else if (r === 8) { // five inserts into batch
      await this.begin();
      for (let k = 0; k < 5; k++) {
        const x = await this.q(3, [this.c, seq + k]);
        check(x.rowCount === 1 && x.command === 'INSERT', `batch insert ${seq + k}: ${x.command} ${x.rowCount}`);
      }
      await this.end('COMMIT');
      this.s.batch_rows += 5;
    } else { // r === 9: a unique violation inside a transaction, then rollback
      await this.begin();
      await this.insert(seq);
      let dup = null;
      try {
        await this.insert(seq);
      } catch (e) {
        dup = e;
      }
      if (dup === null) throw new Mismatch(`duplicate insert of seq ${seq} succeeded`);
      if (dup.code !== '23505') throw dup;
      this.s.expected_errors++;
      await this.end('ROLLBACK');
      this.s.rollbacks++;
    }
  }

  async echo(i) {
    const b = `c${this.c}-e${i}`;
    const v = (this.c + 1) * 100000 + i;
    const res = await this.q(0, [i, b, v]);
    check(res.rows.length === 1, `echo ${i}: ${res.rows.length} rows`);
    const { a, b: gb, c } = res.rows[0];
    // int8 comes back as a string.
    check(a === i && gb === b && c === String(2 * v), `echo ${i}: got (${a}, ${gb}, ${c}), want (${i}, ${b}, ${2 * v})`);
    this.s.echo_ok++;
    this.s.echo_sum += a + Number(c);
  }

  async insert(seq) {
    const res = await this.q(1, [this.c, seq, this.val(seq), `c${this.c}-${seq}`]);
    check(res.rowCount === 1 && res.command === 'INSERT', `insert ${seq}: ${res.command} ${res.rowCount}`);
    this.s.rows++;
  }

  async types(i, wantN, wantS) {
    const c = this.c;
    const num = `${c * 1000 + i}.125`;
    const f = i + 0.5;
    const b = i % 2 === 0;
    const by = Buffer.from([0x63, c, 0x00, 0xff, i & 0xff, i >> 8]);
    const ts = new Date(Date.UTC(2023, 10, 14, 22, 13, 20, 123) + i * 3600000 + c * 1000);
    const u = `5eed0000-0000-${String(c).padStart(4, '0')}-0000-${String(i).padStart(12, '0')}`;
    const j = { client: c, txn: i, tags: ['x', 'y'], nested: { ok: true } };
    const res = await this.q(2, [num, f, b, by, ts, u, c, i, JSON.stringify(j), c]);
    check(res.rows.length === 1, `types ${i}: ${res.rows.length} rows`);
    const g = res.rows[0];
    const bad = [];
    if (g.n !== wantN || g.s !== String(wantS)) bad.push(`count/sum (${g.n}, ${g.s}), want (${wantN}, ${wantS})`);
    if (g.num !== num) bad.push(`numeric ${g.num}, want ${num}`);
    if (g.f !== f) bad.push(`float8 ${g.f}, want ${f}`);
    if (g.b !== b) bad.push(`bool ${g.b}`);
    if (!Buffer.isBuffer(g.by) || !g.by.equals(by)) bad.push(`bytea ${g.by && g.by.toString('hex')}, want ${by.toString('hex')}`);
    if (!(g.ts instanceof Date) || g.ts.getTime() !== ts.getTime()) bad.push(`timestamptz ${g.ts}, want ${ts.toISOString()}`);
    if (g.u !== u) bad.push(`uuid ${g.u}, want ${u}`);
    if (!Array.isArray(g.arr) || g.arr.length !== 2 || g.arr[0] !== c || g.arr[1] !== i) bad.push(`int4[] ${JSON.stringify(g.arr)}`);
    if (!isDeepStrictEqual(g.j, j)) bad.push(`jsonb ${JSON.stringify(g.j)}`);
    if (bad.length > 0) throw new Mismatch(`types ${i}: ${bad.join('; ')}`);
    this.s.types_ok++;
  }

  // Direct connections only: the connection's protocol-level prepared statements are
  // exactly its four named statements.
  async checkServerStatements() {
    const res = await this.client.query('SELECT name, statement FROM pg_prepared_statements WHERE NOT from_sql ORDER BY name');
    this.s.statement_checks++;
    const got = res.rows.map((x) => `${x.name}=${x.statement}`).join('\n');
    const want = STATEMENTS.map((text, j) => `${this.name[j]}=${text}`).sort().join('\n');
    check(got === want, `server statements:\n${got}\nwant:\n${want}`);
    this.s.statement_names = res.rows.length;
  }
}

async function main() {
  const ws = [];
  for (let c = 0; c < clients; c++) ws.push(new Worker(c));
  await Promise.all(ws.map((w) => w.run().catch((e) => w.fail(-1, -1, e))));
  const errors = ws.reduce((n, w) => n + w.s.errors, 0);
  const line = `SUMMARY ${JSON.stringify({ driver: 'node', clients: ws.map((w) => w.s), errors })}\n`;
  process.exitCode = errors === 0 ? 0 : 1;
  process.stdout.write(line);
}

main().catch((e) => {
  console.error(`ERROR main: ${e && e.stack}`);
  process.exit(1);
});
