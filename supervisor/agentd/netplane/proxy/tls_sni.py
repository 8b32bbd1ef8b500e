"""The server name a TLS client asks for: reading the ClientHello, nothing else of TLS.

Owns the part of TLS the transparent proxy looks at: the records that carry the first handshake
message (``scan_client_hello``: how many more bytes are needed, then the SNI or None), the
``server_name`` extension inside it (``client_hello_sni``, RFC 6066 3; every length checked
against what is there) and the alert the proxy sends when it refuses (``ALERT_ACCESS_DENIED``).
No decryption, no certificates: the bytes read are forwarded unchanged once the connection is
allowed. Hand-written because no kept library parses a ClientHello without taking over the
connection (the ``ssl`` module can only terminate TLS). Pure functions over bytes; no I/O.
"""

from __future__ import annotations

import struct

__all__ = ["client_hello_sni", "scan_client_hello", "ALERT_ACCESS_DENIED"]

ALERT_ACCESS_DENIED = b"\x15\x03\x03\x00\x02\x02\x31"  # fatal alert 49, TLS 1.2 record
_MAX_RECORD = 18432  # 2^14 + 2048 (RFC 8446 5.2)


def scan_client_hello(seen: bytes, max_bytes: int) -> tuple[int, str | None]:
    """Read the TLS records in ``seen`` (a connection's first bytes) until the ClientHello is
    whole: ``(n, None)`` while ``n`` more bytes are needed to go on, ``(0, sni)`` once decided
    (``sni`` None: no server name, not TLS, malformed, or over ``max_bytes``)."""
    handshake = bytearray()
    offset = 0
    while True:
        if len(seen) < offset + 5:
            return offset + 5 - len(seen), None
        if seen[offset] != 22 or seen[offset + 1] != 3:  # handshake record, TLS 1.x
            return 0, None
        size = int.from_bytes(seen[offset + 3 : offset + 5], "big")
        if size == 0 or size > _MAX_RECORD or offset + 5 + size > max_bytes:
            return 0, None
        if len(seen) < offset + 5 + size:
            return offset + 5 + size - len(seen), None
        handshake += seen[offset + 5 : offset + 5 + size]
        offset += 5 + size
        if len(handshake) >= 4:
            need = 4 + int.from_bytes(handshake[1:4], "big")
            if handshake[0] != 1 or need > max_bytes:
                return 0, None
            if len(handshake) >= need:
                try:
                    return 0, client_hello_sni(bytes(handshake[:need]))
                except ValueError:
                    return 0, None


def client_hello_sni(handshake: bytes) -> str | None:
    """The server name of a TLS ClientHello handshake message (type, length, body), or None
    when it has none. ``ValueError`` when the message is not a well-formed ClientHello; every
    length is checked against what is there."""
    if len(handshake) < 4 or handshake[0] != 1:
        raise ValueError("not a ClientHello")
    length = int.from_bytes(handshake[1:4], "big")
    body = memoryview(handshake)[4 : 4 + length]
    if len(body) != length:
        raise ValueError("ClientHello truncated")
    offset = 2 + 32  # client_version, random

    def skip(width: int) -> int:
        nonlocal offset
        if offset + width > len(body):
            raise ValueError("ClientHello truncated")
        size = int.from_bytes(body[offset : offset + width], "big")
        start = offset + width
        if start + size > len(body):
            raise ValueError("ClientHello field overruns the message")
        offset = start + size
        return start

    skip(1)  # session_id
    skip(2)  # cipher_suites
    skip(1)  # compression_methods
    if offset == len(body):
        return None  # no extensions
    extensions_start = skip(2)
    return _server_name(body, extensions_start, offset)


def _server_name(body: memoryview, position: int, extensions_end: int) -> str | None:
    """The host_name entry of the server_name extension in ``body[position:extensions_end]``."""
    while position + 4 <= extensions_end:
        kind, size = struct.unpack_from("!HH", body, position)
        data = body[position + 4 : position + 4 + size]
        if len(data) != size or position + 4 + size > extensions_end:
            raise ValueError("extension overruns the extension block")
        position += 4 + size
        if kind != 0:
            continue
        if size < 2 or int.from_bytes(data[:2], "big") != size - 2:
            raise ValueError("malformed server_name extension")
        entry = 2
        while entry + 3 <= size:
            name_type = data[entry]
            name_length = int.from_bytes(data[entry + 1 : entry + 3], "big")
            name = bytes(data[entry + 3 : entry + 3 + name_length])
            if len(name) != name_length:
                raise ValueError("server name overruns the extension")
            if name_type == 0:
                return name.decode("ascii")  # UnicodeDecodeError is a ValueError
            entry += 3 + name_length
        return None
    if position != extensions_end:
        raise ValueError("trailing bytes in the extension block")
    return None
