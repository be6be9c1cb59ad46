"""Queue-worker workload for pgsidecar's integration tests (python_test.go).

A typical SQLAlchemy service: one engine with a large client-side pool, a
sessionmaker, and a thread pool handling messages, each in its own session and
transaction. Process i of P handles messages range(i, N, P): it inserts the
message into `messages` and counts the table in the same transaction, commits,
and closes the session.

With --leak, the handler of the first message of this process inserts its row,
runs a query and then neither commits nor closes its session: the connection is
left idle in transaction (as with a forgotten `finally: session.close()`). The
other messages are handled as usual. When they are done the worker prints
`LEAK_READY id=<id> pid=<backend pid>` and waits for a line on stdin (the test
sends it once the proxy has ended the leaked transaction); it then tries to
commit the leaked session, which must fail, and prints
`LEAK commit=<ok|failed> error=<message>`.

A handler whose connection is lost (SQLAlchemy invalidates it) is retried once,
as a queue would redeliver the message; `RETRIED R` counts those. The last line
is always `DONE processed=K errors=E`; the exit status is 0 only if every message
was handled (and, with --leak, the leaked commit failed).
"""

import argparse
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import sessionmaker

MAX_REPORTED = 10


def one_line(e):
    """The exception's type and message (the DBAPI error's, for SQLAlchemy's)."""
    orig = getattr(e, "orig", None) or e
    return "%s: %s" % (type(orig).__name__, " ".join(str(orig).split()))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dsn", required=True)
    p.add_argument("--messages", type=int, required=True)
    p.add_argument("--process-index", type=int, required=True)
    p.add_argument("--processes", type=int, required=True)
    p.add_argument("--leak", action="store_true")
    args = p.parse_args()

    engine = create_engine(args.dsn, pool_size=50, max_overflow=100, future=True)
    SessionLocal = sessionmaker(bind=engine, future=True)

    lock = threading.Lock()
    counts = {"processed": 0, "errors": 0, "retried": 0}
    mine = list(range(args.process_index, args.messages, args.processes))

    def handle(m, attempt=1):
        session = SessionLocal()
        try:
            session.execute(
                text("INSERT INTO messages(id, worker) VALUES (:id, :w)"),
                {"id": m, "w": args.process_index},
            )
            n = session.execute(text("SELECT count(*) FROM messages")).scalar_one()
            if n < 1:
                raise RuntimeError("count(*) = %d after inserting message %d" % (n, m))
            session.commit()
            with lock:
                counts["processed"] += 1
            return
        except DBAPIError as e:
            if not (e.connection_invalidated and attempt == 1):
                failed(m, e)
                return
            # The connection was lost (for example ended by the proxy's idle
            # transaction timeout while this thread was descheduled): the message is
            # redelivered once, as a queue would.
            with lock:
                counts["retried"] += 1
            print("RETRY message %d: %s" % (m, one_line(e)), file=sys.stderr, flush=True)
        except Exception as e:
            failed(m, e)
            return
        finally:
            session.close()
        handle(m, attempt + 1)

    def failed(m, e):
        with lock:
            counts["errors"] += 1
            nth = counts["errors"]
        if nth == 1:
            traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
        if nth <= MAX_REPORTED:
            print("ERROR message %d: %s" % (m, one_line(e)), file=sys.stderr, flush=True)

    leaked = None
    leak_committed = False
    if args.leak and mine:
        m = mine.pop(0)
        leaked = SessionLocal()  # never closed: kept referenced until the end
        leaked.execute(
            text("INSERT INTO messages(id, worker) VALUES (:id, :w)"),
            {"id": m, "w": args.process_index},
        )
        pid = leaked.execute(text("SELECT pg_backend_pid()")).scalar_one()
        leaked_id = m

    with ThreadPoolExecutor(max_workers=10) as ex:
        list(ex.map(handle, mine))

    if leaked is not None:
        print("LEAK_READY id=%d pid=%d" % (leaked_id, pid), flush=True)
        sys.stdin.readline()
        try:
            leaked.commit()
            print("LEAK commit=ok error=", flush=True)
            leak_committed = True
        except Exception as e:  # the proxy ended the connection
            print("LEAK commit=failed error=%s" % one_line(e), flush=True)

    print("RETRIED %d" % counts["retried"], flush=True)
    print("DONE processed=%d errors=%d" % (counts["processed"], counts["errors"]), flush=True)
    engine.dispose()
    if counts["errors"] or leak_committed:
        sys.exit(1)


if __name__ == "__main__":
    main()
