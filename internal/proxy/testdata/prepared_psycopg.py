"""Named prepared statements through pgsidecar with psycopg 3 (prepared_python_test.go).

Connections use prepare_threshold=0: psycopg prepares every statement
server-side at its first execution, as _pg3_N (numbered per connection):
Parse(name)/Sync, then Bind/Execute/Sync with that name, and only the Bind for
later executions. Through a transaction-mode pooler the Bind may reach a backend
other than the one that saw the Parse.

--clients threads, each with its own autocommit connection, run --transactions
iterations i, each inserting exactly one row items(client=c, seq=i):

  kind (i + c) % 4 == 0: autocommit SELECT echo, autocommit INSERT
  kind 1: transaction: INSERT, SELECT count (own rows), SELECT of many types
  kind 2: autocommit SELECT of many types, SELECT echo, INSERT
  kind 3: transaction: SELECT echo, INSERT, SELECT count; with --rollbacks,
          rolled back when (i // 4) % 5 == 4 (its row, note 'rollback', must
          never be committed)

so every client first uses its statements in a different order (its _pg3_0 is
another client's _pg3_1). After every 50th iteration it also runs executemany
(5 rows, note 'many'; psycopg pipelines it), a pipeline block (`with
conn.pipeline()`: 3 echo SELECTs and 2 INSERTs, note 'pipeline', results read
after everything was sent) and checks its row count, and COPY FROM STDIN (10 rows
into `copied`). Every result is compared with what the parameters imply; each
comparison counts in `checks`.

psycopg issues SQL-level DEALLOCATE itself: `DEALLOCATE ALL` after every
ROLLBACK (it forgets its statements), and `DEALLOCATE _pg3_N` when its cache
exceeds prepared_max. --rollbacks and --prepared-max exercise those.

With --check-server-statements (run directly against PostgreSQL) each client
finally checks that its own session holds _pg3_ statements, proving that the
workload uses named server-side statements.

A client stops at its first error. The last line is
RESULT {"clients": ..., "transactions": ..., "rolled_back": ..., "checks": ...,
"errors": E, "error_samples": [...]}; the exit status is 0 only if E == 0.
"""

import argparse
import json
import os
import sys
import threading
import traceback

import psycopg
from psycopg.types.json import Jsonb

# prepared_common.py lives next to this script (also when python runs with -P or
# PYTHONSAFEPATH set, which leave the script's directory out of sys.path).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prepared_common import BATCH_EVERY, MAX_SAMPLES, Mismatch, expect, types_args  # noqa: E402

STMT_ECHO = "SELECT %s::int4 AS i, %s::text AS t, %s::int8 * 2 AS d"
STMT_INSERT = "INSERT INTO items(client, seq, note) VALUES (%s, %s, %s) RETURNING client, seq, note"
STMT_COUNT = "SELECT count(*) FROM items WHERE client = %s"
STMT_TYPES = (
    "SELECT %s::int8 AS a, %s::float8 AS b, %s::bool AS c, %s::numeric AS d, "
    "%s::timestamptz AS e, %s::uuid AS f, %s::bytea AS g, %s::text[] AS h, "
    "%s::jsonb AS j, %s::mood AS m, %s::date AS k"
)
STMT_MANY = "INSERT INTO items(client, seq, note) VALUES (%s, %s, 'many')"


class Summary:
    def __init__(self, args):
        self.lock = threading.Lock()
        self.d = {"driver": "psycopg", "version": psycopg.__version__, "libpq": psycopg.pq.version(),
                  "pipeline_supported": psycopg.Pipeline.is_supported(), "clients": args.clients,
                  "transactions": 0, "rolled_back": 0, "checks": 0, "errors": 0, "error_samples": [],
                  "server_statements": [None] * args.clients}

    def add(self, key, n=1):
        with self.lock:
            self.d[key] += n

    def error(self, msg):
        with self.lock:
            self.d["errors"] += 1
            if len(self.d["error_samples"]) < MAX_SAMPLES:
                self.d["error_samples"].append(msg)


class Client:
    def __init__(self, idx, args, summary):
        self.idx = idx
        self.args = args
        self.summary = summary
        self.committed = 0  # rows of this client committed so far

    def check(self, what, got, want):
        expect(what, got, want)
        self.summary.add("checks")

    def echo_args(self, i):
        return (i, "c%d-%d" % (self.idx, i), self.idx * 1000 + i)

    def check_echo(self, row, i):
        self.check("echo", row, (i, "c%d-%d" % (self.idx, i), 2 * (self.idx * 1000 + i)))

    def echo(self, conn, i):
        self.check_echo(conn.execute(STMT_ECHO, self.echo_args(i)).fetchone(), i)

    def insert(self, conn, i, note):
        r = conn.execute(STMT_INSERT, (self.idx, i, note)).fetchone()
        self.check("insert returning", r, (self.idx, i, note))

    def count(self, conn, want):
        self.check("count", conn.execute(STMT_COUNT, (self.idx,)).fetchone()[0], want)

    def types(self, conn, i):
        a = types_args(self.idx, i)
        r = conn.execute(STMT_TYPES, a[:8] + (Jsonb(a[8]),) + a[9:]).fetchone()
        self.check("types", r, a)

    def iteration(self, conn, i):
        kind = (i + self.idx) % 4
        if kind == 0:
            self.echo(conn, i)
            self.insert(conn, i, "auto")
            self.committed += 1
        elif kind == 1:
            with conn.transaction():
                self.insert(conn, i, "tx")
                self.count(conn, self.committed + 1)
                self.types(conn, i)
            self.committed += 1
        elif kind == 2:
            self.types(conn, i)
            self.echo(conn, i)
            self.insert(conn, i, "auto")
            self.committed += 1
        else:
            rollback = self.args.rollbacks and (i // 4) % 5 == 4
            with conn.transaction():
                self.echo(conn, i)
                self.insert(conn, i, "rollback" if rollback else "tx")
                self.count(conn, self.committed + 1)
                if rollback:
                    raise psycopg.Rollback()
            if rollback:
                self.summary.add("rolled_back")
            else:
                self.committed += 1
        self.summary.add("transactions")

        if i % BATCH_EVERY == BATCH_EVERY - 1:
            with conn.cursor() as cur:
                cur.executemany(STMT_MANY, [(self.idx, 100_000 + i * 10 + k) for k in range(5)])
            self.committed += 5
            with conn.pipeline():
                echoes = [conn.execute(STMT_ECHO, self.echo_args(i + k)) for k in range(3)]
                inserts = [conn.execute(STMT_INSERT, (self.idx, 200_000 + i * 10 + k, "pipeline")) for k in range(2)]
                for k, cur in enumerate(echoes):
                    self.check_echo(cur.fetchone(), i + k)
                for k, cur in enumerate(inserts):
                    self.check("pipelined insert returning", cur.fetchone(), (self.idx, 200_000 + i * 10 + k, "pipeline"))
            self.committed += 2
            self.count(conn, self.committed)
            with conn.cursor() as cur:
                with cur.copy("COPY copied (client, n, label) FROM STDIN") as copy:
                    for k in range(10):
                        copy.write_row((self.idx, i * 100 + k, "c%d-%d-%d" % (self.idx, i, k)))
                self.check("copy rowcount", cur.rowcount, 10)

    def run(self):
        i = None
        try:
            with psycopg.connect(self.args.dsn, autocommit=True, prepare_threshold=0, connect_timeout=10) as conn:
                if self.args.prepared_max:
                    conn.prepared_max = self.args.prepared_max
                for i in range(self.args.transactions):
                    self.iteration(conn, i)
                i = None
                if self.args.check_server_statements:
                    n = conn.execute(
                        "SELECT count(*) FROM pg_prepared_statements WHERE starts_with(name, '_pg3_')").fetchone()[0]
                    # psycopg deallocates what its cache evicts.
                    lo, hi = (self.args.prepared_max, self.args.prepared_max + 1) if self.args.prepared_max else (5, 100)
                    if not lo <= n <= hi:
                        raise Mismatch("session holds %d _pg3_ statements, want %d..%d" % (n, lo, hi))
                    with self.summary.lock:
                        self.summary.d["server_statements"][self.idx] = n
        except Exception as e:  # noqa: BLE001 - every failure is reported
            where = "connect/final check" if i is None else "iteration %d (kind %d)" % (i, (i + self.idx) % 4)
            text = str(e)
            if isinstance(e, psycopg.Error) and e.sqlstate:
                text = "%s %s" % (e.sqlstate, text)
            msg = "client %d %s: %s: %s" % (self.idx, where, type(e).__name__, " ".join(text.split()))
            self.summary.error(msg)
            if not isinstance(e, (Mismatch, psycopg.Error)):
                traceback.print_exc(file=sys.stderr)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dsn", required=True)
    p.add_argument("--clients", type=int, default=6)
    p.add_argument("--transactions", type=int, default=200)
    p.add_argument("--rollbacks", action="store_true")
    p.add_argument("--prepared-max", type=int, default=0)
    p.add_argument("--check-server-statements", action="store_true")
    args = p.parse_args()

    summary = Summary(args)
    threads = [threading.Thread(target=Client(c, args, summary).run, name="client-%d" % c) for c in range(args.clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    print("RESULT " + json.dumps(summary.d, sort_keys=True))
    return 0 if summary.d["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
