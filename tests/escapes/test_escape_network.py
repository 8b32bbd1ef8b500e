"""Network: connect, sendto, sendmsg and sendmmsg on TCP, UDP and unix sockets, IPv4 and IPv6,
IPv4-mapped IPv6 (`::ffff:127.0.0.1`), the unspecified address (`0.0.0.0`, `::`, which the kernel
sends to loopback), TCP fast open (connect and data in one sendto), abstract unix names, and unix
paths reached through a workspace symlink, a relative name after chdir, or /proc/self/cwd, and
(as root) a hand-made IPv4+UDP packet through a raw IP_HDRINCL socket whose sockaddr names
another loopback address (127.0.0.2) than its header (the listener's 127.0.0.1).

Every listener is one this test starts on loopback or in the arena (never any other address: if
the sandbox failed, the packet must not leave the machine). The policy denies
`127.0.0.1:*`, `[::1]:*`, unix paths in the arena's sock/ and abstract names
`@agentd-escape-*`.
The outside check: the listener accepted or received nothing.
"""

from __future__ import annotations

import socket

import pytest

from escape_harness import PROBE_DIR, PYTHON, Listener, Probe, judge

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
    ("raw_hdrincl_udp", "udp4", "127.0.0.1"),
    ("udp_sendto", "udp6", "::1"),
    ("udp_sendmsg", "udp6", "::1"),
    ("udp_sendmmsg", "udp6", "::1"),
    ("udp_connect_send", "udp6", "::1"),
    ("unix_connect", "unix_stream", "PATH"),
    ("unix_connect_via_symlink", "unix_stream", "PATH"),
    ("unix_connect_relative", "unix_stream", "PATH"),
    ("unix_connect_proc_cwd", "unix_stream", "PATH"),
    ("unix_connect_short_addrlen", "unix_stream", "PATH"),
    ("unix_dgram_sendto", "unix_dgram", "PATH"),
    ("unix_dgram_sendmsg", "unix_dgram", "PATH"),
    ("unix_connect", "unix_stream", "ABSTRACT"),
    ("unix_dgram_sendto", "unix_dgram", "ABSTRACT"),
    ("unix_dgram_sendmsg", "unix_dgram", "ABSTRACT"),
]


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
