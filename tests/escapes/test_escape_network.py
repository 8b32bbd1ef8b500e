"""Network: connect, sendto, sendmsg and sendmmsg on TCP, UDP and unix sockets, IPv4 and IPv6,
IPv4-mapped IPv6 (`::ffff:127.0.0.1`), the unspecified address (`0.0.0.0`, `::`, which the kernel
sends to loopback), TCP fast open (connect and data in one sendto), abstract unix names, and unix
paths reached through a workspace symlink, a relative name after chdir, or /proc/self/cwd.

Every listener is one this test starts on loopback or in the arena (never any other address: if
the sandbox failed, the packet must not leave the machine). The policy denies
`127.0.0.1:*`, `[::1]:*`, unix paths under the arena and abstract names `@agentd-escape-*`.
The outside check: the listener accepted or received nothing.
"""

from __future__ import annotations

import secrets
import socket

import pytest

from escape_harness import PROBE_DIR, PYTHON, Probe, judge

pytestmark = pytest.mark.escape_probe

NET = str(PROBE_DIR / "net.py")


def _ipv6_loopback() -> str | None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError as exc:
        return f"no IPv6 loopback on this host: {exc}"
    return None


# (probe mode, listener kind, address the probe aims at: an IP, or "PATH"/"ABSTRACT")
CASES = [
    ("tcp_connect", "tcp4", "127.0.0.1"),
    ("tcp_connect", "tcp4", "::ffff:127.0.0.1"),
    ("tcp_connect", "tcp4", "0.0.0.0"),
    ("tcp_connect", "tcp4", "::ffff:0.0.0.0"),
    ("tcp_fastopen", "tcp4", "127.0.0.1"),
    ("tcp_fastopen", "tcp4", "::ffff:127.0.0.1"),
    ("tcp_connect", "tcp6", "::1"),
    ("tcp_connect", "tcp6", "::"),
    ("tcp_fastopen", "tcp6", "::1"),
    ("udp_sendto", "udp4", "127.0.0.1"),
    ("udp_sendmsg", "udp4", "127.0.0.1"),
    ("udp_sendmmsg", "udp4", "127.0.0.1"),
    ("udp_connect_send", "udp4", "127.0.0.1"),
    ("udp_sendto", "udp4", "::ffff:127.0.0.1"),
    ("udp_sendmsg", "udp4", "::ffff:127.0.0.1"),
    ("udp_sendmmsg", "udp4", "::ffff:127.0.0.1"),
    ("udp_sendto", "udp4", "0.0.0.0"),
    ("udp_sendto", "udp6", "::1"),
    ("udp_sendmsg", "udp6", "::1"),
    ("udp_sendmmsg", "udp6", "::1"),
    ("udp_connect_send", "udp6", "::1"),
    ("unix_connect", "unix_stream", "PATH"),
    ("unix_connect_via_symlink", "unix_stream", "PATH"),
    ("unix_connect_relative", "unix_stream", "PATH"),
    ("unix_connect_proc_cwd", "unix_stream", "PATH"),
    ("unix_dgram_sendto", "unix_dgram", "PATH"),
    ("unix_dgram_sendmsg", "unix_dgram", "PATH"),
    ("unix_connect", "unix_stream", "ABSTRACT"),
    ("unix_dgram_sendto", "unix_dgram", "ABSTRACT"),
    ("unix_dgram_sendmsg", "unix_dgram", "ABSTRACT"),
]


class Listener:
    """One loopback or unix listener owned by the test; ``saw()`` says what reached it."""

    def __init__(self, kind: str, where: str, layout):
        self.kind = kind
        stream = kind.startswith("tcp") or kind == "unix_stream"
        family = (socket.AF_INET6 if kind.endswith("6") else
                  socket.AF_INET if kind[:3] in ("tcp", "udp") else socket.AF_UNIX)
        self.sock = socket.socket(family, socket.SOCK_STREAM if stream else socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            self.sock.bind(("::1", 0))
        elif family == socket.AF_INET:
            self.sock.bind(("127.0.0.1", 0))
        elif where == "ABSTRACT":
            self.name = f"@agentd-escape-{secrets.token_hex(6)}"
            self.sock.bind("\0" + self.name[1:])
        else:
            self.name = str(layout.sock / ("stream.sock" if stream else "dgram.sock"))
            self.sock.bind(self.name)
        if family != socket.AF_UNIX:
            self.port = self.sock.getsockname()[1]
        if stream:
            self.sock.listen(16)
        self.sock.setblocking(False)
        self.stream = stream

    def saw(self) -> str | None:
        try:
            if self.stream:
                conn, peer = self.sock.accept()
                conn.close()
                return f"the {self.kind} listener accepted a connection from {peer!r}"
            data = self.sock.recv(4096)
            return f"the {self.kind} listener received {data!r}"
        except BlockingIOError:
            return None

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("mode,kind,where", CASES,
                         ids=[f"{m}-{k}-{w}" for m, k, w in CASES])
def test_network_probe(arena, mode, kind, where):
    if kind.endswith("6") or (":" in where and not where.startswith("::ffff")):
        reason = _ipv6_loopback()
        if reason:
            pytest.skip(reason)

    def setup(lay):
        lay.extra["listener"] = Listener(kind, where, lay)

    def argv(lay):
        listener = lay.extra["listener"]
        if where in ("PATH", "ABSTRACT"):
            return [PYTHON, NET, mode, listener.name]
        return [PYTHON, NET, mode, where, str(listener.port)]

    def saw(result):
        return result.layout.extra["listener"].saw()

    def cleanup(lay):
        if "listener" in lay.extra:
            lay.extra["listener"].close()

    judge(arena, Probe(f"net-{mode}-{kind}-{where}", argv, setup=setup, deed=saw,
                       cleanup=cleanup))
