"""The one reader of /proc: what the kernel says there about processes and sockets.

Owns the parsing of ``/proc/PID/stat`` (``stat``: state, parent, process group, start time; the
fields after the last ``)``, since the command name may hold anything), ``/proc/PID/status``
(``status``: its ``Key: value`` lines; ``tgid_of``, ``tracer_of``), the process list
(``pids``), and what the agent's own network asks of ``/proc/PID/net`` and its descriptors:
``listeners(netns_pid, ip, port)`` lists the TCP listeners and bound UDP sockets of a network
namespace (``/proc/PID/net/{tcp,tcp6,udp,udp6}``) whose local address covers ``ip:port`` (the
address itself, or a wildcard); ``held_sockets(tgids)`` the socket inodes processes hold
(``/proc/PID/fd``); ``is_stream_socket`` whether a descriptor of a process is a TCP socket (a
copy taken with pidfd_getfd, closed at once). A port is the agent's only when at least one such
socket exists and all of them are the agent's: a host service on the same port (SO_REUSEPORT)
makes it no; when none listens at all, a TCP connect fails in the kernel (ECONNREFUSED). Every
reader returns None, an empty result or raises OSError as its docstring says; none caches.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .syscall_numbers import SYSCALL_NUMBERS

if TYPE_CHECKING:
    import ipaddress

# ipaddress and socket are imported where they are used: only a connect decision needs them, and
# every `agentd run` imports this module at start-up (docs/performance.md, start-up).

__all__ = [
    "ProcStat",
    "stat",
    "status",
    "tgid_of",
    "tracer_of",
    "pids",
    "listeners",
    "held_sockets",
    "is_stream_socket",
]


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat agentd reads."""

    state: str  # R, S, D, T (stopped), t (tracing stop), Z, ...
    ppid: int
    pgrp: int
    start_time: str  # clock ticks since boot: tells a reused pid from its owner


def stat(pid: int | str) -> ProcStat | None:
    """/proc/PID/stat, or None when the process is gone or the file is unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return ProcStat(
            fields[0].decode("ascii", "replace"),
            int(fields[1]),
            int(fields[2]),
            fields[19].decode("ascii", "replace"),
        )
    except (IndexError, ValueError):
        return None


def status(pid: int | str) -> dict[str, str]:
    """/proc/PID/status as ``{key: value}`` (values stripped); empty when it cannot be read."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            return {
                key: value.strip()
                for key, _, value in (line.partition(":") for line in handle)
                if value
            }
    except OSError:
        return {}


def tgid_of(tid: int) -> int:
    """The thread group (process) a thread belongs to; ``tid`` itself when it cannot be read."""
    try:
        return int(status(tid).get("Tgid", tid))
    except ValueError:
        return tid


def tracer_of(pid: int | str) -> int | None:
    """The pid tracing ``pid`` (0: none), or None when it cannot be read."""
    value = status(pid).get("TracerPid")
    return int(value) if value is not None and value.isdigit() else None


def pids() -> list[int]:
    """Every process id /proc shows now."""
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


_TCP_LISTEN = "0A"
_UDP_UNCONNECTED = "07"  # TCP_CLOSE: a bound UDP socket without a peer
_TABLES = (
    ("tcp", 4, _TCP_LISTEN),
    ("tcp6", 6, _TCP_LISTEN),
    ("udp", 4, _UDP_UNCONNECTED),
    ("udp6", 6, _UDP_UNCONNECTED),
)


def _address(hex_text: str, family: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    import ipaddress

    raw = bytes.fromhex(hex_text)
    if family == 4:
        return ipaddress.IPv4Address(raw[::-1])
    # /proc prints an IPv6 address as four host-order 32-bit words
    return ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))


def _covers(local, destination) -> bool:
    """Does a socket bound to ``local`` receive connections to ``destination``?"""
    if local.is_unspecified:
        # 0.0.0.0 takes IPv4; :: takes IPv6 and, unless IPV6_V6ONLY (invisible here), IPv4 too
        return local.version == 6 or destination.version == 4
    if local.version == 6 and local.ipv4_mapped is not None:
        local = local.ipv4_mapped
    return local == destination


def listeners(netns_pid: int, ip: str, port: int) -> set[int]:
    """The socket inodes listening on ``ip:port`` (TCP listeners, bound UDP sockets, the address
    itself or a wildcard) in the network namespace of ``netns_pid``."""
    import ipaddress

    try:
        destination = ipaddress.ip_address(ip)
    except ValueError:
        return set()
    if destination.version == 6 and destination.ipv4_mapped is not None:
        destination = destination.ipv4_mapped
    if destination.is_unspecified:  # a connect to 0.0.0.0 or :: goes to loopback
        destination = ipaddress.ip_address("127.0.0.1" if destination.version == 4 else "::1")
    inodes: set[int] = set()
    for table, family, state in _TABLES:
        try:
            with open(f"/proc/{netns_pid}/net/{table}", encoding="ascii") as handle:
                next(handle, None)
                for line in handle:
                    fields = line.split()
                    if len(fields) < 10 or fields[3] != state:
                        continue
                    address, _, port_hex = fields[1].partition(":")
                    if int(port_hex, 16) != port:
                        continue
                    if _covers(_address(address, family), destination):
                        inodes.add(int(fields[9]))
        except FileNotFoundError:
            continue  # no IPv6 in this kernel
    return inodes


def held_sockets(tgids: Iterable[int]) -> set[int]:
    """The socket inodes the processes ``tgids`` hold descriptors of."""
    held: set[int] = set()
    for tgid in tgids:
        directory = f"/proc/{tgid}/fd"
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            try:
                target = os.readlink(f"{directory}/{name}")
            except OSError:
                continue
            if target.startswith("socket:["):
                held.add(int(target[8:-1]))
    return held


def is_stream_socket(tgid: int, fd: int) -> bool:
    """Is descriptor ``fd`` of process ``tgid`` a stream socket (TCP), whose connect to a port
    nobody listens on the kernel refuses (ECONNREFUSED)? False when it cannot be told. The
    tracer may take a copy of a tracee's descriptor (pidfd_getfd); the copy is closed at once."""
    import ctypes
    import socket

    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = libc.syscall(SYSCALL_NUMBERS["pidfd_open"], tgid, 0)
    if pidfd < 0:
        return False
    try:
        copy = libc.syscall(SYSCALL_NUMBERS["pidfd_getfd"], pidfd, fd, 0)
    finally:
        os.close(pidfd)
    if copy < 0:
        return False
    try:
        sock = socket.socket(fileno=copy)
    except OSError:
        os.close(copy)
        return False
    with sock:
        try:
            return sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
        except OSError:
            return False
