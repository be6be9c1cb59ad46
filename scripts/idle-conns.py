#!/usr/bin/python3
"""Open N idle PostgreSQL client connections and hold them (helper of scripts/bench.sh --idle).

Speaks protocol v3 directly (standard library only, trust auth): every connection
sends a StartupMessage, waits for ReadyForQuery and, unless --no-query, runs one
simple-protocol 'SELECT 1' so the target has handled a full round trip for it.

Prints 'READY <n> <seconds>' on stdout when all N are open, then holds them until
SIGTERM/SIGINT or --hold seconds, prints 'ALIVE <open>/<n>' (connections the
target has not closed meanwhile), sends Terminate on each and exits 0.
Exits 1 with a message on stderr on the first failure.
"""
import argparse
import asyncio
import resource
import signal
import struct
import sys
import time

PROTOCOL_V3 = 196608


def startup_packet(user, db):
    params = b"".join(
        k.encode() + b"\0" + v.encode() + b"\0"
        for k, v in (("user", user), ("database", db), ("application_name", "idle-conns"))
    ) + b"\0"
    return struct.pack("!ii", 8 + len(params), PROTOCOL_V3) + params


def error_text(body):
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return "%s %s: %s" % (fields.get("S", ""), fields.get("C", ""), fields.get("M", ""))


async def until_ready(reader, what):
    while True:
        hdr = await reader.readexactly(5)
        kind = hdr[:1]
        (length,) = struct.unpack("!i", hdr[1:5])
        body = await reader.readexactly(length - 4)
        if kind == b"E":
            raise RuntimeError("%s: %s" % (what, error_text(body)))
        if kind == b"R":
            (code,) = struct.unpack("!i", body[:4])
            if code != 0:
                raise RuntimeError("%s: target asks for authentication (code %d); use trust" % (what, code))
        if kind == b"Z":
            return


async def open_one(args):
    reader, writer = await asyncio.open_connection(args.host, args.port)
    writer.write(startup_packet(args.user, args.db))
    await until_ready(reader, "login")
    if not args.no_query:
        q = b"SELECT 1\0"
        writer.write(b"Q" + struct.pack("!i", 4 + len(q)) + q)
        await until_ready(reader, "SELECT 1")
    return reader, writer


async def main(args):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.n + 64
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise RuntimeError("open-files limit %d is below the %d needed" % (hard, need))
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))

    conns = []
    sem = asyncio.Semaphore(max(1, args.concurrency))

    async def guarded(i):
        async with sem:
            try:
                conns.append(await asyncio.wait_for(open_one(args), args.timeout))
            except asyncio.TimeoutError:
                raise RuntimeError("connection %d: no ReadyForQuery within %ss" % (i, args.timeout))
            except (OSError, asyncio.IncompleteReadError) as e:
                raise RuntimeError("connection %d: %s" % (i, str(e) or type(e).__name__))

    t0 = time.monotonic()
    tasks = [asyncio.ensure_future(guarded(i)) for i in range(args.n)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
    print("READY %d %.3f" % (len(conns), time.monotonic() - t0), flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), args.hold)
    except asyncio.TimeoutError:
        pass
    alive = sum(1 for r, _ in conns if not r.at_eof())
    print("ALIVE %d/%d" % (alive, len(conns)), flush=True)
    for _, w in conns:
        try:
            w.write(b"X\0\0\0\4")
            w.close()
        except Exception:
            pass
    await asyncio.sleep(0.2)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", default="bench")
    ap.add_argument("--db", default="bench")
    ap.add_argument("-n", type=int, required=True, help="connections to open")
    ap.add_argument("--concurrency", type=int, default=64, help="logins in flight at once")
    ap.add_argument("--timeout", type=float, default=30, help="seconds per connection")
    ap.add_argument("--hold", type=float, default=600, help="hold at most this many seconds")
    ap.add_argument("--no-query", action="store_true", help="only log in")
    a = ap.parse_args()
    try:
        asyncio.run(main(a))
    except RuntimeError as e:
        print("idle-conns: error: %s" % e, file=sys.stderr)
        sys.exit(1)
