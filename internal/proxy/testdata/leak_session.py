"""A leaked SQLAlchemy session, as in docs/design.md section 1 (observability_test.go).

Opens a Session through the proxy (application_name comes from the DSN), asks for
its backend pid, inserts a row with a marker comment and then neither commits nor
closes the session: the connection is left idle in transaction. It prints
`LEAKED pid=<backend pid>` once the INSERT has run and keeps the process (and the
session) alive until stdin is closed. It then dies as a killed worker would
(os._exit: no interpreter cleanup, so SQLAlchemy's pool does not roll the
session back on its way out and the proxy sees the connection drop
mid-transaction).
"""

import argparse
import os
import sys

from sqlalchemy import create_engine, text
from sqlalchemy.orm import sessionmaker


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dsn", required=True)
    p.add_argument("--marker", required=True)
    args = p.parse_args()

    engine = create_engine(args.dsn, pool_size=5, max_overflow=10, future=True)
    SessionLocal = sessionmaker(bind=engine, future=True)
    session = SessionLocal()  # never closed nor committed
    pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
    session.execute(
        text("INSERT INTO leaked(note) VALUES (:note) /* %s */" % args.marker),
        {"note": args.marker},
    )
    print("LEAKED pid=%d" % pid, flush=True)
    sys.stdin.read()  # until the test closes stdin
    print("EXIT session=%s" % (session is not None), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
