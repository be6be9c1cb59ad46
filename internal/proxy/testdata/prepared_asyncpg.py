"""Named prepared statements through pgsidecar with asyncpg (prepared_python_test.go).

asyncpg prepares every statement run with arguments as a named statement
(__asyncpg_stmt_N__, numbered per connection) and keeps it in its statement
cache: the first execution sends Parse/Describe/Sync, later ones only
Bind/Execute/Sync with the cached name. Through a transaction-mode pooler the
Bind may reach a backend other than the one that saw the Parse.

--clients connections run concurrently on one event loop (interleaving with each
other); client c runs --transactions iterations i, each inserting exactly one
row items(client=c, seq=i):

  kind (i + c) % 4 == 0: autocommit SELECT echo, autocommit INSERT
  kind 1: transaction: INSERT, SELECT count (own rows), SELECT of many types
  kind 2: autocommit SELECT of many types, SELECT echo, INSERT
  kind 3: transaction: SELECT echo, INSERT, SELECT count; rolled back when
          (i // 4) % 5 == 4 (its row, note 'rollback', must never be committed)

so every client first uses its statements in a different order (its
__asyncpg_stmt_1__ is another client's __asyncpg_stmt_2__). After every 50th
iteration it also runs executemany (5 rows, note 'many') and checks its row
count, and copy_records_to_table (10 rows into `copied`, which asyncpg prepares
an introspection statement for). Every result is compared with what the
parameters imply; each comparison counts in `checks`. Clients whose index is
3 mod 4 use statement_cache_size=2, so that asyncpg keeps closing evicted
statements (Close) and preparing new names.

With --check-server-statements (run directly against PostgreSQL) each client
finally checks that its own session holds __asyncpg_stmt_ statements, proving
that the workload uses named server-side statements.

A client stops at its first error. The last line is
RESULT {"clients": ..., "transactions": ..., "rolled_back": ..., "checks": ...,
"errors": E, "error_samples": [...]}; the exit status is 0 only if E == 0.
"""

import argparse
import asyncio
import json
import os
import sys
import traceback

import asyncpg

# prepared_common.py lives next to this script (also when python runs with -P or
# PYTHONSAFEPATH set, which leave the script's directory out of sys.path).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prepared_common import BATCH_EVERY, MAX_SAMPLES, Mismatch, expect, types_args  # noqa: E402

STMT_ECHO = "SELECT $1::int4 AS i, $2::text AS t, $3::int8 * 2 AS d"
STMT_INSERT = "INSERT INTO items(client, seq, note) VALUES ($1, $2, $3) RETURNING client, seq, note"
STMT_COUNT = "SELECT count(*) FROM items WHERE client = $1"
STMT_TYPES = (
    "SELECT $1::int8 AS a, $2::float8 AS b, $3::bool AS c, $4::numeric AS d, "
    "$5::timestamptz AS e, $6::uuid AS f, $7::bytea AS g, $8::text[] AS h, "
    "$9::jsonb AS j, $10::mood AS m, $11::date AS k"
)
STMT_MANY = "INSERT INTO items(client, seq, note) VALUES ($1, $2, 'many')"


class Rollback(Exception):
    pass


class Client:
    def __init__(self, idx, args, summary):
        self.idx = idx
        self.args = args
        self.summary = summary
        self.committed = 0  # rows of this client committed so far

    def check(self, what, got, want):
        expect(what, got, want)
        self.summary["checks"] += 1

    async def echo(self, conn, i):
        r = await conn.fetchrow(STMT_ECHO, i, "c%d-%d" % (self.idx, i), self.idx * 1000 + i)
        self.check("echo", tuple(r), (i, "c%d-%d" % (self.idx, i), 2 * (self.idx * 1000 + i)))

    async def insert(self, conn, i, note):
        r = await conn.fetchrow(STMT_INSERT, self.idx, i, note)
        self.check("insert returning", tuple(r), (self.idx, i, note))

    async def count(self, conn, want):
        self.check("count", await conn.fetchval(STMT_COUNT, self.idx), want)

    async def types(self, conn, i):
        a = types_args(self.idx, i)
        r = await conn.fetchrow(STMT_TYPES, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], json.dumps(a[8]), a[9], a[10])
        got = (r["a"], r["b"], r["c"], r["d"], r["e"], str(r["f"]), r["g"], r["h"], json.loads(r["j"]), r["m"], r["k"])
        self.check("types", got, a[:5] + (str(a[5]),) + a[6:])

    async def iteration(self, conn, i):
        kind = (i + self.idx) % 4
        if kind == 0:
            await self.echo(conn, i)
            await self.insert(conn, i, "auto")
            self.committed += 1
        elif kind == 1:
            async with conn.transaction():
                await self.insert(conn, i, "tx")
                await self.count(conn, self.committed + 1)
                await self.types(conn, i)
            self.committed += 1
        elif kind == 2:
            await self.types(conn, i)
            await self.echo(conn, i)
            await self.insert(conn, i, "auto")
            self.committed += 1
        else:
            rollback = (i // 4) % 5 == 4
            try:
                async with conn.transaction():
                    await self.echo(conn, i)
                    await self.insert(conn, i, "rollback" if rollback else "tx")
                    await self.count(conn, self.committed + 1)
                    if rollback:
                        raise Rollback()
            except Rollback:
                self.summary["rolled_back"] += 1
            else:
                self.committed += 1
        self.summary["transactions"] += 1

        if i % BATCH_EVERY == BATCH_EVERY - 1:
            await conn.executemany(STMT_MANY, [(self.idx, 100_000 + i * 10 + k) for k in range(5)])
            self.committed += 5
            await self.count(conn, self.committed)
            res = await conn.copy_records_to_table(
                "copied",
                records=[(self.idx, i * 100 + k, "c%d-%d-%d" % (self.idx, i, k)) for k in range(10)],
                columns=["client", "n", "label"],
            )
            self.check("copy status", res, "COPY 10")

    async def run(self):
        i = None
        conn = None
        try:
            kw = {"command_timeout": 30}
            if self.idx % 4 == 3:
                kw["statement_cache_size"] = 2
            conn = await asyncpg.connect(self.args.dsn, **kw)
            for i in range(self.args.transactions):
                await self.iteration(conn, i)
            i = None
            if self.args.check_server_statements:
                n = await conn.fetchval(
                    "SELECT count(*) FROM pg_prepared_statements WHERE starts_with(name, '__asyncpg_stmt_')")
                # A cache of 2 keeps closing what it evicts (the statement this
                # query evicted is closed only before the next one).
                lo, hi = (2, 3) if self.idx % 4 == 3 else (5, 100)
                if not lo <= n <= hi:
                    raise Mismatch("session holds %d __asyncpg_stmt_ statements, want %d..%d" % (n, lo, hi))
                self.summary["server_statements"][self.idx] = n
        except Exception as e:  # noqa: BLE001 - every failure is reported
            self.summary["errors"] += 1
            where = "connect/final check" if i is None else "iteration %d (kind %d)" % (i, (i + self.idx) % 4)
            if isinstance(e, asyncpg.PostgresError):
                # Not str(e): asyncpg appends a long hint about pgbouncer.
                text = "%s %s" % (e.sqlstate, e.args[0] if e.args else e)
            else:
                text = str(e)
                if not isinstance(e, Mismatch):
                    traceback.print_exc(file=sys.stderr)
            msg = "client %d %s: %s: %s" % (self.idx, where, type(e).__name__, " ".join(text.split()))
            if len(self.summary["error_samples"]) < MAX_SAMPLES:
                self.summary["error_samples"].append(msg)
        finally:
            if conn is not None:
                try:
                    await asyncio.wait_for(conn.close(), 10)
                except Exception:  # noqa: BLE001
                    conn.terminate()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dsn", required=True)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--transactions", type=int, default=200)
    p.add_argument("--check-server-statements", action="store_true")
    args = p.parse_args()

    summary = {"driver": "asyncpg", "version": asyncpg.__version__, "clients": args.clients,
               "transactions": 0, "rolled_back": 0, "checks": 0, "errors": 0, "error_samples": [],
               "server_statements": [None] * args.clients}
    await asyncio.gather(*(Client(c, args, summary).run() for c in range(args.clients)))
    print("RESULT " + json.dumps(summary, sort_keys=True))
    return 0 if summary["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
