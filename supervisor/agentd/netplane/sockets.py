"""Sockets the network plane listens on."""

from __future__ import annotations

import socket

__all__ = ["bound_socket"]


def bound_socket(family: int, kind: int, address: tuple) -> socket.socket:
    """A close-on-exec socket bound to ``address`` with SO_REUSEADDR (a listener that restarts
    must not wait out TIME_WAIT); closed again if the bind fails. TCP callers still ``listen()``."""
    sock = socket.socket(family, kind | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock
