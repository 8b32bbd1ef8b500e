"""A simulated world inside a network namespace the test creates: nothing can leave the machine.

``world(prefix, addresses, listeners)`` makes a namespace with only loopback, puts
``addresses`` on that loopback (so "public", private and metadata addresses are local there and
there is no route anywhere else), binds each listener's socket inside it and serves it from a
thread of the test, recording what it saw in a ``Seen``. The tests then run ``agentd run`` inside
that namespace (``ip netns exec NAME``), so the supervisor's "host side" is this world.

Servers: ``serve_http`` (records the request line; answers 200 "hello from the world"),
``serve_raw`` (records the first bytes of each connection), ``serve_dns(zone)`` (answers A
records from ``zone``, NXDOMAIN otherwise; records "name type").
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import socket
import subprocess
import threading
from dataclasses import dataclass

CLONE_FS = 0x00000200
CLONE_NEWNET = 0x40000000


def inside(netns_fd: int, fn, *args):
    """fn(*args) in a thread that entered the namespace (its sockets stay there)."""
    libc = ctypes.CDLL(None, use_errno=True)
    box: dict = {}

    def body():
        try:
            if libc.unshare(CLONE_FS) != 0:   # setns needs a thread with its own fs
                raise OSError(ctypes.get_errno(), "unshare")
            if libc.setns(netns_fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            box["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class Seen:
    """What one server saw (thread-safe)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.items: list = []

    def add(self, item):
        with self.lock:
            self.items.append(item)

    def since(self, count: int) -> list:
        with self.lock:
            return self.items[count:]

    def __len__(self):
        with self.lock:
            return len(self.items)


@dataclass(frozen=True)
class Hit:
    """One connection a server accepted: the request line (HTTP) and the first bytes."""

    line: str
    data: bytes


def serve_http(sock: socket.socket, seen: Seen) -> None:
    def handle(conn):
        with conn:
            conn.settimeout(5)
            data = b""
            try:
                while b"\r\n\r\n" not in data and len(data) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                pass
            seen.add(Hit(data.split(b"\r\n", 1)[0].decode("latin-1"), data))
            body = b"hello from the world\n"
            with contextlib.suppress(OSError):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                             % (len(body), body))

    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def serve_raw(sock: socket.socket, seen: Seen) -> None:
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(2)
            try:
                first = conn.recv(4096)
            except OSError:
                first = b""
            seen.add(Hit("", first))


def serve_dns(zone: dict[str, str], sock: socket.socket, seen: Seen) -> None:
    import dns.message
    import dns.rcode
    import dns.rrset

    while True:
        try:
            wire, peer = sock.recvfrom(4096)
        except OSError:
            return
        try:
            query = dns.message.from_wire(wire)
            question = query.question[0]
        except Exception:  # noqa: BLE001 - not a query: ignore it, as a server would
            continue
        name = question.name.to_text().rstrip(".").lower()
        seen.add(f"{name} {question.rdtype}")
        reply = dns.message.make_response(query)
        address = zone.get(name)
        if address is None:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == 1:   # A
            reply.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", address))
        sock.sendto(reply.to_wire(), peer)


def dns_server(zone: dict[str, str]):
    return functools.partial(serve_dns, zone)


def _listen(kind: int, address: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    if kind == socket.SOCK_STREAM:
        sock.listen(64)
    return sock


@contextlib.contextmanager
def world(prefix: str, addresses: tuple[str, ...], listeners):
    """Yield {"name", "servers": {key: Seen}, "ports": {key: port}}; ``listeners`` are
    (key, address, port or 0, SOCK_STREAM|SOCK_DGRAM, serve function)."""
    name = f"{prefix}-{os.urandom(3).hex()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    sockets = []
    try:
        script = "ip link set lo up" + "".join(f" && ip addr add {a}/32 dev lo" for a in addresses)
        subprocess.run(["ip", "netns", "exec", name, "sh", "-c", script], check=True)
        servers, ports = {}, {}
        for key, address, port, kind, serve in listeners:
            sock = inside(fd, _listen, kind, address, port)
            sockets.append(sock)
            servers[key] = Seen()
            ports[key] = sock.getsockname()[1]
            threading.Thread(target=serve, args=(sock, servers[key]), daemon=True).start()
        yield {"name": name, "servers": servers, "ports": ports}
    finally:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        os.close(fd)
        subprocess.run(["ip", "netns", "delete", name], check=False)
