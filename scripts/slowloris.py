#!/usr/bin/env python3
"""Holds N connections to a local clerksync that never finish their headers.

A slowloris for measuring (README, issue 16): each connection sends the start
of a request and then a header byte now and then, never the blank line; when
the server closes one (header timeout, or evicted at the connection cap), it
is reopened, so N stay pending for the whole run. Loopback only, at most 1,000
connections, at most 600 seconds.

    scripts/slowloris.py --port 8080 --connections 300 --seconds 60
"""

import argparse
import asyncio
import ipaddress
import sys
import time

MAX_CONNECTIONS = 1000
MAX_SECONDS = 600


async def hold(host, port, deadline, stats):
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            stats["connect_errors"] += 1
            await asyncio.sleep(0.1)
            continue
        stats["opened"] += 1
        try:
            writer.write(b"POST /webhooks/clerk HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            await writer.drain()
            while time.monotonic() < deadline:
                # A byte every second; the server closes us when it has had enough.
                try:
                    data = await asyncio.wait_for(reader.read(1024), timeout=1.0)
                    if not data:
                        stats["closed_by_server"] += 1
                        break
                except asyncio.TimeoutError:
                    writer.write(b"a")
                    await writer.drain()
        except OSError:
            stats["closed_by_server"] += 1
        finally:
            writer.close()


async def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--connections", type=int, default=300)
    p.add_argument("--seconds", type=float, default=60)
    a = p.parse_args()
    if not ipaddress.ip_address(a.host).is_loopback:
        sys.exit("slowloris.py: loopback addresses only (e.g. 127.0.0.1)")
    if not 1 <= a.connections <= MAX_CONNECTIONS:
        sys.exit(f"slowloris.py: --connections must be 1..{MAX_CONNECTIONS}")
    if not 0 < a.seconds <= MAX_SECONDS:
        sys.exit(f"slowloris.py: --seconds must be in (0, {MAX_SECONDS}]")
    stats = {"opened": 0, "closed_by_server": 0, "connect_errors": 0}
    deadline = time.monotonic() + a.seconds
    await asyncio.gather(*(hold(a.host, a.port, deadline, stats) for _ in range(a.connections)))
    print(
        f"slowloris: {a.connections} held for {a.seconds:g}s; opened {stats['opened']}, "
        f"closed by the server {stats['closed_by_server']}, connect errors {stats['connect_errors']}"
    )


if __name__ == "__main__":
    asyncio.run(main())
