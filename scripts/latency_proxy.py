#!/usr/bin/env python3
"""A userspace TCP proxy that adds a fixed round-trip latency (issue 21).

Superseded by latency_proxy.rs (pg_scaling.py's default): with many
connections this one's threads queue on the interpreter lock, so the proxy
itself limits the pool it is meant to measure. Kept for `--proxy python`.

Why: the PostgreSQL worker pool (`max_concurrent`) pays off when every round
trip to the database costs time, as it does across a network; on one machine
a round trip is tens of microseconds and 2 cores are the limit instead. These
machines have no `tc netem`, so this proxy puts the delay in userspace: every
chunk read from either side is written to the other side half the round trip
later (--rtt-ms 1 adds 0.5 ms each way), in order, without slowing the chunks
behind it (a queue and a writer per direction, so it is latency, not a bandwidth
cap).

Threads and time.sleep rather than asyncio: asyncio's epoll timeouts are rounded
up to whole milliseconds, which would turn a 0.5 ms delay into 1 ms or more.

Usage: scripts/latency_proxy.py [--listen 127.0.0.1:0] [--target 127.0.0.1:5432]
       [--rtt-ms 1.0]
Prints "listening on HOST:PORT" on stdout once it accepts connections, then
runs until killed (SIGTERM/SIGINT).
"""
import argparse
import queue
import signal
import socket
import sys
import threading
import time

CHUNK = 65536


def host_port(text):
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def pipe(src, dst, delay_s):
    """Forwards src -> dst, each chunk `delay_s` after it was read."""
    chunks = queue.Queue()

    def read():
        try:
            while True:
                data = src.recv(CHUNK)
                chunks.put((time.monotonic() + delay_s, data))
                if not data:
                    return
        except OSError:
            chunks.put((0.0, b""))

    def write():
        try:
            while True:
                due, data = chunks.get()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        # Either side closing ends both directions of this connection.
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    for fn in (read, write):
        threading.Thread(target=fn, daemon=True).start()


def serve(listener, target, delay_s):
    while True:
        client, _ = listener.accept()
        try:
            upstream = socket.create_connection(target)
        except OSError as e:
            print(f"latency_proxy: cannot reach {target[0]}:{target[1]}: {e}", file=sys.stderr)
            client.close()
            continue
        for s in (client, upstream):
            # Small database messages must not wait for Nagle on top of the delay.
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pipe(client, upstream, delay_s)
        pipe(upstream, client, delay_s)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", type=host_port, default=("127.0.0.1", 0))
    ap.add_argument("--target", type=host_port, default=("127.0.0.1", 5432))
    ap.add_argument("--rtt-ms", type=float, default=1.0,
                    help="added round-trip time in ms, half each way (default 1.0)")
    a = ap.parse_args()
    if not 0 <= a.rtt_ms <= 10_000:
        sys.exit("--rtt-ms must be between 0 and 10000")
    listener = socket.create_server(a.listen, backlog=256)
    host, port = listener.getsockname()[:2]
    print(f"listening on {host}:{port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        serve(listener, a.target, a.rtt_ms / 2000.0)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
