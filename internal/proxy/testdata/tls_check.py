"""Client TLS through pgsidecar with the Python drivers (tls_drivers_test.go).

    python3 tls_check.py HOST PORT CERT_PORT DB DIR OTHER_CA

PORT is a proxy that requires TLS (--client-tls require), CERT_PORT one that
also requires a client certificate signed by the test CA. DIR holds ca.crt,
client.crt and client.key; OTHER_CA is a CA file that did not sign the
proxy's certificate.

Each case connects, runs "select 6*7" and asks the driver whether the
connection is encrypted; it prints one line

    DRIVER CASE ok PROOF          (PROOF: the TLS version, or ssl_in_use)
    DRIVER CASE plaintext         (answered, but the driver says no TLS)
    DRIVER CASE error SQLSTATE MESSAGE

SQLSTATE is "none" when the driver gives none (libpq's connection errors
carry no SQLSTATE). Lines starting with "#" are information. The exit status
is 0 whenever every case printed its line.
"""

import asyncio
import ssl
import sys
import urllib.parse

import asyncpg
import psycopg
import psycopg2
import sqlalchemy
from sqlalchemy.pool import NullPool

host, port, cport, db, certdir, otherca = sys.argv[1:7]
port, cport = int(port), int(cport)
CA = certdir + "/ca.crt"
CERT = certdir + "/client.crt"
KEY = certdir + "/client.key"
# libpq reads ~/.postgresql/root.crt and postgresql.crt of the password
# database's home directory when no file is named: a case without a root
# certificate or a client certificate names this absent file instead.
ABSENT = certdir + "/absent.crt"


def line(driver, case, res):
    """Prints a case's result line."""
    print(driver, case, res, flush=True)


def oneline(s):
    """s on one line, its runs of white space one space."""
    return " ".join(str(s).split())


def report(driver, case, answer, proof):
    """Prints the line of a case that answered: ok when the answer is 42
    and proof (what tells that the connection is encrypted) is set."""
    if answer != 42:
        line(driver, case, "bad-answer %r" % (answer,))
    elif not proof:
        line(driver, case, "plaintext")
    else:
        line(driver, case, "ok " + proof)


def error(driver, case, e):
    """Prints the line of a case that failed with e: its SQLSTATE ("none"
    when it has none), type, message and causes."""
    orig = getattr(e, "orig", None)  # SQLAlchemy wraps the DBAPI error
    if orig is not None:
        e = orig
    state = getattr(e, "pgcode", None) or getattr(e, "sqlstate", None) or "none"
    if isinstance(e, asyncpg.PostgresError) and e.args:
        msg = e.args[0]  # not str(e): asyncpg may append a long hint
    else:
        msg = str(e) or type(e).__name__
    # The causes too: a driver may wrap the TLS error that tells what failed.
    seen, cause = {id(e)}, e.__cause__ or e.__context__
    while cause is not None and id(cause) not in seen and len(seen) < 5:
        seen.add(id(cause))
        msg = "%s <- %s: %s" % (msg, type(cause).__name__, cause)
        cause = cause.__cause__ or cause.__context__
    line(driver, case, "error %s %s: %s" % (state, type(e).__name__, oneline(msg)))


def libpq_params(p, sslmode, ca=None, cert=False, max_version=None):
    """The libpq connection parameters of a case: port p, sslmode, root
    certificate ca, the client certificate when cert is set, and the highest
    TLS version max_version."""
    kw = {"host": host, "port": p, "dbname": db, "user": "postgres", "sslmode": sslmode, "connect_timeout": 10,
          "sslrootcert": ca or ABSENT, "sslcert": ABSENT}
    if cert:
        kw["sslcert"], kw["sslkey"] = CERT, KEY
    if max_version:
        kw["ssl_max_protocol_version"] = max_version
    return kw


# Each case: name, port, libpq parameters (sslmode, root CA, client
# certificate, highest TLS version). With TLS 1.2 the proxy rejects a missing
# client certificate within the handshake, with TLS 1.3 after the client's
# side of it finished.
LIBPQ_CASES = [
    ("require", port, ("require", None, False)),
    ("verify-full", port, ("verify-full", CA, False)),
    ("tls12", port, ("verify-full", CA, False, "TLSv1.2")),
    ("badca", port, ("verify-full", otherca, False)),
    ("disable", port, ("disable", None, False)),
    ("cert", cport, ("verify-full", CA, True)),
    ("nocert", cport, ("verify-full", CA, False)),
    ("nocert-tls12", cport, ("verify-full", CA, False, "TLSv1.2")),
]

print("# psycopg2 %s, psycopg %s, libpq %d, SQLAlchemy %s, asyncpg %s, %s" % (
    psycopg2.__version__.split()[0], psycopg.__version__, psycopg.pq.version(),
    sqlalchemy.__version__, asyncpg.__version__, ssl.OPENSSL_VERSION), flush=True)

for case, p, args in LIBPQ_CASES:
    try:
        c = psycopg2.connect(**libpq_params(p, *args))
        try:
            cur = c.cursor()
            cur.execute("select 6*7")
            v = cur.fetchone()[0]
            report("psycopg2", case, v, c.info.ssl_in_use and c.info.ssl_attribute("protocol"))
        finally:
            c.close()
    except Exception as e:  # noqa: BLE001 - every failure is a result
        error("psycopg2", case, e)

for case, p, args in LIBPQ_CASES:
    if case not in ("require", "verify-full", "disable", "cert"):
        continue  # psycopg2's own cases cover libpq's other outcomes
    try:
        kw = libpq_params(p, *args)
        eng = sqlalchemy.create_engine("postgresql+psycopg2://", poolclass=NullPool, connect_args=kw)
        try:
            with eng.connect() as c:
                v = c.execute(sqlalchemy.text("select 6*7")).scalar()
                fairy = c.connection
                dbapi = getattr(fairy, "dbapi_connection", None) or fairy.connection
                report("sqlalchemy-psycopg2", case, v, dbapi.info.ssl_in_use and dbapi.info.ssl_attribute("protocol"))
        finally:
            eng.dispose()
    except Exception as e:  # noqa: BLE001
        error("sqlalchemy-psycopg2", case, e)

for case, p, args in LIBPQ_CASES:
    try:
        with psycopg.connect(**libpq_params(p, *args)) as c:
            v = c.execute("select 6*7").fetchone()[0]
            report("psycopg3", case, v, c.pgconn.ssl_in_use and "ssl_in_use")
    except Exception as e:  # noqa: BLE001
        error("psycopg3", case, e)


def context(ca, cert=False):
    """An SSLContext that verifies the server's certificate and host name
    (127.0.0.1: the certificate's IP SAN) against ca, with the client
    certificate when cert is set."""
    ctx = ssl.create_default_context(cafile=ca)
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    if cert:
        ctx.load_cert_chain(CERT, KEY)
    return ctx


def dsn(p, **query):
    """An asyncpg DSN for port p with the query parameters query."""
    return "postgresql://postgres@%s:%d/%s?%s" % (host, p, db, urllib.parse.urlencode(query))


# Each case: name, DSN, ssl argument (None: the DSN's sslmode decides).
ASYNCPG_CASES = [
    ("require", dsn(port, sslmode="require"), None),
    ("verify-full", dsn(port, sslmode="verify-full", sslrootcert=CA), None),
    ("verify-full-context", dsn(port), context(CA)),
    ("tls12", dsn(port, sslmode="verify-full", sslrootcert=CA, ssl_max_protocol_version="TLSv1.2"), None),
    ("badca", dsn(port), context(otherca)),
    ("disable", dsn(port, sslmode="disable"), None),
    ("cert", dsn(cport), context(CA, cert=True)),
    ("cert-dsn", dsn(cport, sslmode="verify-full", sslrootcert=CA, sslcert=CERT, sslkey=KEY), None),
    ("nocert", dsn(cport), context(CA)),
]


async def apg(case, url, ctx):
    """Runs an asyncpg case: url, with ssl=ctx unless ctx is None."""
    try:
        kw = {"timeout": 10, "command_timeout": 10}
        if ctx is not None:
            kw["ssl"] = ctx
        c = await asyncpg.connect(url, **kw)
        try:
            v = await c.fetchval("select 6*7")
            so = c._transport.get_extra_info("ssl_object")
            report("asyncpg", case, v, so is not None and so.version())
        finally:
            await asyncio.wait_for(c.close(), 10)
    except Exception as e:  # noqa: BLE001
        error("asyncpg", case, e)


async def apg_all():
    """Runs the asyncpg cases in order."""
    for case, url, ctx in ASYNCPG_CASES:
        await apg(case, url, ctx)


asyncio.run(apg_all())
