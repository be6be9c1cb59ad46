"""What prepared_asyncpg.py and prepared_psycopg.py share: the schedule's
constants, result checks and the arguments of the SELECT of many types.

Not a workload itself; the scripts import it from their own directory.
"""

import datetime
import decimal
import uuid

MAX_SAMPLES = 10
BATCH_EVERY = 50

MOODS = ["sad", "ok", "happy"]


class Mismatch(Exception):
    pass


def expect(what, got, want):
    if got != want:
        raise Mismatch("%s: got %r, want %r" % (what, got, want))


def types_args(c, i):
    base = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    return (
        c * 10_000_000_000 + i,
        c + i / 8.0,
        (c + i) % 2 == 0,
        decimal.Decimal("%d.%03d" % (c * 1000 + i, i % 1000)),
        base + datetime.timedelta(days=c, seconds=i),
        uuid.UUID(int=(c << 64) | i),
        bytes([c % 256, i % 256, 0, 255]),
        ["c%d" % c, "i%d" % i, "x,y"],
        {"client": c, "seq": i, "tags": ["a", c]},
        MOODS[(c + i) % 3],
        datetime.date(2020, 1, 1) + datetime.timedelta(days=c * 100 + i),
    )
