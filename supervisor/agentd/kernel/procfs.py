"""Is a loopback port the agent's own? Read from /proc: its sockets and the agent's descriptors.

Owns one question the decide step asks when a connect to a loopback address was refused and the
agent shares the host's network namespace (no network plane): does every socket listening there
belong to the agent's own process tree? Then the connect reaches a server the agent started
itself (a test suite's local server, a dev server and its client), not the host's internal
network. ``listeners(netns_pid, ip, port)`` lists the TCP listeners and bound UDP sockets of the
agent's network namespace (``/proc/PID/net/{tcp,tcp6,udp,udp6}``) whose local address covers
``ip:port`` (the address itself, or a wildcard); ``held_sockets(tgids)`` the socket inodes the
agent's processes hold (``/proc/PID/fd``). The port is the agent's only when at least one such
socket exists and all of them are the agent's: a host service on the same port (SO_REUSEPORT)
makes it no. When none listens at all, a TCP connect fails in the kernel (ECONNREFUSED), and
``is_stream_socket`` tells whether the agent's socket is one. Costs a few hundred
microseconds; asked only after a refusal.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Iterable

from .syscall_numbers import SYSCALL_NUMBERS

__all__ = ["listeners", "held_sockets", "is_stream_socket"]

_TCP_LISTEN = "0A"
_UDP_UNCONNECTED = "07"   # TCP_CLOSE: a bound UDP socket without a peer
_TABLES = (("tcp", 4, _TCP_LISTEN), ("tcp6", 6, _TCP_LISTEN),
           ("udp", 4, _UDP_UNCONNECTED), ("udp6", 6, _UDP_UNCONNECTED))


def _address(hex_text: str, family: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_text)
    if family == 4:
        return ipaddress.IPv4Address(raw[::-1])
    # /proc prints an IPv6 address as four host-order 32-bit words
    return ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))


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
    try:
        destination = ipaddress.ip_address(ip)
    except ValueError:
        return set()
    if destination.version == 6 and destination.ipv4_mapped is not None:
        destination = destination.ipv4_mapped
    if destination.is_unspecified:   # a connect to 0.0.0.0 or :: goes to loopback
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
            continue   # no IPv6 in this kernel
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
