"""Egress proxy cost: small GETs to a local upstream, directly and through the proxy, in one run.

Three processes on 127.0.0.1: a minimal asyncio HTTP/1.1 upstream (keep-alive, 2-byte body), the
proxy (``agentd.netplane.proxy.EgressProxy`` judging every request with a real ``Policy``:
an allow pattern with ``allowed_methods``; every decision handed to ``on_decision``), run twice —
``proxy`` resolves the name with ``resolve`` in the proxy's thread pool, ``proxy-quick`` answers
it from ``quick_resolve`` on the loop (a NameBook hit) — and this client,
which sends one request at a time and times each with ``perf_counter_ns``. Two connection
styles: one kept-alive connection for all requests, and a new connection per request (the proxy
then also opens a new upstream connection). Variants are interleaved in rounds so drift on a
shared machine hits them alike. Prints a table; ``--json PATH`` also writes the numbers.

    .venv/bin/python bench/proxy_bench.py               # 1,000 requests per variant
    .venv/bin/python bench/proxy_bench.py -n 200 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import statistics
import sys
import time

HOST = "127.0.0.1"
NAME = "bench.test"


def run_upstream(port_queue) -> None:
    async def handle(reader, writer):
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                             b"Content-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(handle, HOST, 0)
        port_queue.put(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


def run_proxy(port_queue, stop_event, quick: bool) -> None:
    from agent_os.policy import Pattern, Policy
    from agentd.netplane.proxy import EgressProxy
    from agentd.trace.decide import evaluate_action
    from agentd.trace.decode import Action

    policy = Policy(name="bench", default_action="deny", patterns=[
        Pattern(id="bench_get", action_type="network_request",
                pattern=r"^http://bench\.test:\d+/.*", action="allow",
                conditions={"allowed_methods": ["GET", "HEAD"]}),
        Pattern(id="no_admin", action_type="network_request", pattern=r".*/admin.*",
                action="deny", message="admin is off limits")])

    def judge(method, url, headers, dest_ip):
        context = {"method": method, "headers": headers, "dest_ip": dest_ip}
        return evaluate_action(policy, Action("network_request", url), context)

    decisions = []
    names = {NAME: [HOST]}
    proxy = EgressProxy((HOST, 0), judge=judge, resolve=lambda host: list(names.get(host, [])),
                        on_decision=decisions.append,
                        quick_resolve=names.get if quick else None)
    proxy.start()
    port_queue.put(proxy.address[1])
    stop_event.wait()
    proxy.close()


def request_bytes(url: str, host: str) -> bytes:
    return f"GET {url} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: bench\r\n\r\n".encode()


def read_response(conn: socket.socket, buffer: bytearray) -> int:
    """Read one response with a Content-Length body; returns the status."""
    while b"\r\n\r\n" not in buffer:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        buffer += chunk
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end]).lower()
    start = head.index(b"content-length:") + 15
    length = int(head[start:head.index(b"\r\n", start)])
    while len(buffer) < end + length:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the body")
        buffer += chunk
    status = int(buffer[9:12])
    del buffer[:end + length]
    return status


def timed_requests(address, payload: bytes, count: int, keep_alive: bool) -> list[int]:
    samples = []
    conn = None
    buffer = bytearray()
    for _ in range(count):
        start = time.perf_counter_ns()
        if conn is None:
            conn = socket.create_connection(address)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sendall(payload)
        status = read_response(conn, buffer)
        if not keep_alive:
            conn.close()
            conn = None
        samples.append(time.perf_counter_ns() - start)
        if status != 200:
            raise SystemExit(f"unexpected status {status}")
    if conn is not None:
        conn.close()
    return samples


def percentile(values: list[int], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--requests", type=int, default=1000, help="per variant")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    context = multiprocessing.get_context("fork")
    ports = context.Queue()
    stop = context.Event()
    upstream = context.Process(target=run_upstream, args=(ports,), daemon=True)
    upstream.start()
    upstream_port = ports.get(timeout=10)
    proxies = []
    proxy_ports = {}
    for kind, quick in (("proxy", False), ("proxy-quick", True)):
        process = context.Process(target=run_proxy, args=(ports, stop, quick), daemon=True)
        process.start()
        proxies.append(process)
        proxy_ports[kind] = ports.get(timeout=10)

    kinds = ("direct", "proxy", "proxy-quick")
    payload = request_bytes(f"http://{NAME}:{upstream_port}/small", f"{NAME}:{upstream_port}")
    variants = {("direct", keep): ((HOST, upstream_port),
                                   request_bytes("/small", f"{NAME}:{upstream_port}"))
                for keep in (True, False)}
    for kind in kinds[1:]:
        for keep in (True, False):
            variants[(kind, keep)] = ((HOST, proxy_ports[kind]), payload)
    samples: dict[tuple[str, bool], list[int]] = {key: [] for key in variants}
    walls: dict[tuple[str, bool], float] = {key: 0.0 for key in variants}
    per_round = max(1, args.requests // args.rounds)
    try:
        for (_, keep), (address, payload) in variants.items():      # warm up
            timed_requests(address, payload, 50, keep)
        for _ in range(args.rounds):
            for key, (address, payload) in variants.items():
                started = time.perf_counter()
                samples[key] += timed_requests(address, payload, per_round, key[1])
                walls[key] += time.perf_counter() - started
    finally:
        stop.set()
        for process in proxies:
            process.join(timeout=15)
        upstream.terminate()
        upstream.join(timeout=5)

    results = []
    print(f"{per_round * args.rounds} GETs per variant, {args.rounds} interleaved rounds, "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(f"{'connection':<16}{'path':<13}{'req/s':>9}{'p50 µs':>9}{'p99 µs':>9}"
          f"{'added p50':>11}{'added p99':>11}")
    for keep in (True, False):
        base = samples[("direct", keep)]
        for kind in kinds:
            values = samples[(kind, keep)]
            row = {"connection": "keep-alive" if keep else "new per request", "path": kind,
                   "requests": len(values), "req_per_s": len(values) / walls[(kind, keep)],
                   "p50_us": percentile(values, 0.5) / 1000,
                   "p99_us": percentile(values, 0.99) / 1000,
                   "mean_us": statistics.fmean(values) / 1000}
            row["added_p50_us"] = row["p50_us"] - percentile(base, 0.5) / 1000
            row["added_p99_us"] = row["p99_us"] - percentile(base, 0.99) / 1000
            results.append(row)
            added = (f"{row['added_p50_us']:>11.0f}{row['added_p99_us']:>11.0f}"
                     if kind != "direct" else f"{'':>22}")
            print(f"{row['connection']:<16}{kind:<13}{row['req_per_s']:>9.0f}"
                  f"{row['p50_us']:>9.0f}{row['p99_us']:>9.0f}{added}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"results": results}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
