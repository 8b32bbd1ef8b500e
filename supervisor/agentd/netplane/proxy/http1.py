"""HTTP/1.1 as the egress proxy reads and writes it: h11 frames, agentd is stricter and judges URLs.

Owns everything about an HTTP/1.1 message between the agent, the proxy and an upstream: the
framing of requests and responses (h11's state machine, one ``Peer`` per connection and side,
sans I/O: bytes in, events out, events in, bytes out), the rules agentd adds on top of h11 where
h11 is lenient (bare LF or CR line ends, obsolete line folding, ``Content-Length`` together with
``Transfer-Encoding``, a chunk size over 15 hex digits, head and trailer sizes, HTTP versions other
than 1.0 and 1.1: each a ``BadRequest``, never a guess), which headers are hop-by-hop, and how a
request target becomes the URL that is judged (``interpret``: absolute-form, origin-form + Host
in transparent mode, CONNECT's authority; host, port and path normalised by ``parse_authority``
and ``normalise_path``). Knows nothing of sockets, policies or the asyncio loop (``server``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import InitVar, dataclass, field
from typing import Any

import h11

__all__ = [
    "BadRequest",
    "RequestHead",
    "Request",
    "Peer",
    "interpret",
    "parse_request_head",
    "parse_authority",
    "normalise_path",
    "valid_host",
    "http_url",
    "tls_url",
    "url_host",
    "forwarded_fields",
    "HOP_BY_HOP",
    "MAX_CHUNK_SIZE",
]

# Hop-by-hop headers (RFC 9110 7.6.1) plus the proxy's own; never forwarded. Transfer-Encoding
# and Content-Length are not in the list: h11 writes the framing of what is forwarded itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
    }
)
# INVARIANT: a header named in Connection is dropped, but never the framing or Host: dropping
# Content-Length while relaying the body would let the body pass as an unjudged next request.
_NEVER_NAMED_AWAY = frozenset({"content-length", "transfer-encoding", "host"})
_HOP_BY_HOP_BYTES = frozenset(name.encode() for name in HOP_BY_HOP)
_NEVER_NAMED_AWAY_BYTES = frozenset(name.encode() for name in _NEVER_NAMED_AWAY)
MAX_CHUNK_SIZE = 16**15 - 1  # 15 hex digits, as before h11 (h11 alone allows 20)

_HEAD_END = re.compile(rb"\n\r?\n")  # where h11 ends a head; the strict checks look up to it
_HOSTNAME = re.compile(r"(?=.{1,253}\Z)[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_-]{1,63})*\Z")
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)\Z")
_PORT = re.compile(r"[0-9]{1,5}\Z")
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


class BadRequest(Exception):
    """A message the proxy will not pass: ``status`` (400, 431) and why. Raised for the agent's
    requests and, by a ``Peer`` in the client role, for an upstream's responses."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class RequestHead:
    """A parsed request head: request line and header fields in their order, names as sent."""

    method: str
    target: str
    version: str
    fields: tuple[tuple[str, str], ...]
    raw: tuple[tuple[bytes, bytes], ...] = field(default=(), repr=False, compare=False)
    # h11's headers of the request this head was read from (None if made otherwise): what goes
    # upstream when nothing in them changes, so that h11 does not validate them a second time
    h11_headers: Any = field(default=None, repr=False, compare=False)
    by_name: InitVar[dict[str, str] | None] = None  # _by_name when the caller made it already
    _by_name: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self, by_name: dict[str, str] | None) -> None:
        if by_name is None:
            by_name = {}
            for key, value in self.fields:
                key = key.lower()
                by_name[key] = f"{by_name[key]}, {value}" if key in by_name else value
        object.__setattr__(self, "_by_name", by_name)

    def get(self, name: str) -> str | None:
        """The field ``name`` (lower case), repeated fields joined with ``, ``; None if absent."""
        return self._by_name.get(name)

    def lowered(self) -> dict[str, str]:
        """Every field by lower-case name (a new dict), repeated fields joined with ``, ``."""
        return dict(self._by_name)


@dataclass
class Request:
    """What the proxy makes of a request head: what is judged and how the body is framed."""

    method: str
    version: str
    host: str
    port: int
    path: str  # origin-form sent upstream ("" for CONNECT)
    url: str
    connect: bool
    has_body: bool  # a chunked body, or a Content-Length above 0
    chunked: bool
    keep_alive: bool
    expect_continue: bool  # Expect: 100-continue with a body: the proxy answers 100 itself


def _check_head(head: bytes) -> None:
    """agentd's rules for a whole head (up to and with its empty line) h11 is about to read.
    h11 accepts bare LF line ends and unfolds continuation lines; a proxy that reads either
    differently from its upstream is how requests are smuggled, so both are refused here."""
    line_ends = head.count(b"\r\n")
    if head.count(b"\n") != line_ends:
        raise BadRequest(400, "bare LF in the head (line ends must be CRLF)")
    if head.count(b"\r") != line_ends:
        raise BadRequest(400, "bare CR in the head")
    if b"\n " in head or b"\n\t" in head:
        raise BadRequest(400, "obsolete line folding (a header continuation line)")


class _HeadGate:
    """The bytes of a head that came in pieces, kept beside h11's buffer so that the head can be
    checked whole before h11 reads it; scanned once however it trickles in."""

    __slots__ = ("data", "searched")

    def __init__(self, pending: bytes):
        self.data = bytearray(pending)  # what h11 holds unread when the head became due
        self.searched = len(pending)  # ``_head_end`` found no end in it

    def complete(self, max_head_bytes: int) -> bool:
        """True once the head is whole (and checked); 431 when it outgrows the bound."""
        end = _head_end(self.data, max(0, self.searched - 2), max_head_bytes)
        if end < 0:
            self.searched = len(self.data)
            return False
        _check_head(bytes(self.data[:end]))
        return True


def _head_end(data: bytes | bytearray, start: int, max_head_bytes: int) -> int:
    """Where the head in ``data`` ends (after its empty line), -1 while it is incomplete; 431
    once it is, or would be, longer than ``max_head_bytes``."""
    end = _HEAD_END.search(data, start)
    if end is None:
        if len(data) > max_head_bytes:
            raise BadRequest(431, "head too large")
        return -1
    if end.end() > max_head_bytes:
        raise BadRequest(431, "head too large")
    return end.end()


def _status_of(exc: h11.RemoteProtocolError) -> int:
    # h11 hints 501 for a Transfer-Encoding other than chunked; the length of such a message
    # cannot be determined, which RFC 9112 6.3 answers with 400.
    return 431 if exc.error_status_hint == 431 else 400


class Peer:
    """One side of one connection, framed by h11: ``Peer(h11.SERVER)`` reads the agent's requests
    and writes the answers, ``Peer(h11.CLIENT)`` writes requests to an upstream and reads its
    responses. ``next_event()`` returns h11's events (``h11.NEED_DATA``: ``receive`` more) after
    agentd's checks; anything malformed raises ``BadRequest``."""

    __slots__ = (
        "conn",
        "_head_state",
        "_max_head_bytes",
        "_max_fields",
        "_max_trailer_bytes",
        "_gate",
        "_request",
    )

    def __init__(
        self,
        role: Any,
        *,
        max_head_bytes: int = 65536,
        max_fields: int = 100,
        max_trailer_bytes: int = 16384,
    ):
        self.conn = h11.Connection(role, max_incomplete_event_size=max_head_bytes)
        # the peer's state while a head of theirs is due (IDLE: a request; SEND_RESPONSE: a
        # response, also after a 1xx)
        self._head_state = h11.IDLE if role is h11.SERVER else h11.SEND_RESPONSE
        self._max_head_bytes = max_head_bytes
        self._max_fields = max_fields
        self._max_trailer_bytes = max_trailer_bytes
        self._gate: _HeadGate | None = None  # while a head of theirs is due and incomplete
        self._request: tuple[h11.Request, RequestHead] | None = None  # the last one read

    def receive(self, data: bytes) -> None:
        """Bytes read from the peer; ``b""`` when it closed its side."""
        self.conn.receive_data(data)
        if self._gate is not None:
            self._gate.data += data

    def next_event(self) -> Any:
        conn = self.conn
        # INVARIANT: h11 reads a head only after agentd's checks saw it whole (both end a head
        # at the first LF [CR] LF); until then h11 only says NEED_DATA or refuses early
        if conn.their_state is self._head_state:
            gate = self._gate
            if gate is None:
                pending, closed = conn.trailing_data
                if pending:
                    end = _head_end(pending, 0, self._max_head_bytes)
                    if end < 0:
                        self._gate = _HeadGate(pending)  # more of it to come, maybe a byte
                    else:  # at a time: scanned once
                        _check_head(pending[:end])
                elif not closed:
                    return h11.NEED_DATA  # what h11 would say, without asking it
            elif gate.complete(self._max_head_bytes):
                self._gate = None
        try:
            event: Any = conn.next_event()
        except h11.RemoteProtocolError as exc:
            self._gate = None
            raise BadRequest(_status_of(exc), str(exc)) from None
        # type(), not isinstance(): h11's events are ABCs, whose isinstance is slow
        kind = type(event)
        if kind is h11.Data:
            if event.chunk_start:
                self._check_chunk(event)
        elif kind is h11.EndOfMessage:
            if event.headers:
                size = sum(len(name) + len(value) + 4 for name, value in event.headers.raw_items())
                if size > self._max_trailer_bytes:
                    raise BadRequest(400, "trailers too large")
        elif kind is h11.Request or kind is h11.Response or kind is h11.InformationalResponse:
            self._check_message(event)
        return event

    def _check_message(self, event: Any) -> None:
        if event.http_version not in (b"1.1", b"1.0"):
            raise BadRequest(400, f"unsupported HTTP version {event.http_version[:10]!r}")
        headers = event.headers
        if len(headers) > self._max_fields:
            raise BadRequest(431, f"more than {self._max_fields} header fields")
        if type(event) is h11.Request:
            head = _request_head(event)  # read once, here, for request_head() too
            # INVARIANT: never both. h11 lets Transfer-Encoding win (RFC 9112 6.3); a server
            # that reads Content-Length instead would see the rest as a second request.
            if head.get("transfer-encoding") is not None and head.get("content-length") is not None:
                raise BadRequest(400, "both Transfer-Encoding and Content-Length")
            self._request = (event, head)

    def _check_chunk(self, event: h11.Data) -> None:
        # h11 tells where a chunk starts and ends but not the size it declared; its reader keeps
        # the bytes still due. Read defensively: should a later h11 rename that, its own bound
        # (20 hex digits) remains, and an upstream sees h11's chunk sizes, never the agent's.
        due = getattr(getattr(self.conn, "_reader", None), "_bytes_in_chunk", 0)
        if isinstance(due, int) and len(event.data) + due > MAX_CHUNK_SIZE:
            raise BadRequest(400, "chunk size over 15 hex digits")

    def send(self, event: Any) -> bytes:
        return self.conn.send(event) or b""

    def leftover(self) -> bytes:
        """Bytes received but not read as HTTP (after CONNECT: the tunnel's first bytes)."""
        return self.conn.trailing_data[0]

    def next_cycle(self) -> bool:
        """After a complete exchange: ready for the next one (keep-alive), or False (close)."""
        conn = self.conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            return True
        return False

    def request_head(self, event: h11.Request) -> RequestHead:
        """The head of a request ``next_event`` returned."""
        if self._request is not None and self._request[0] is event:
            return self._request[1]
        return _request_head(event)


def _request_head(event: h11.Request) -> RequestHead:
    raw = event.headers.raw_items()
    fields = []
    by_name: dict[str, str] = {}
    for name, value in raw:  # one pass: the fields as sent and by lower-case name
        name_text, value_text = name.decode("ascii"), value.decode("latin-1")
        fields.append((name_text, value_text))
        key = name_text.lower()
        by_name[key] = f"{by_name[key]}, {value_text}" if key in by_name else value_text
    return RequestHead(
        event.method.decode("ascii"),
        event.target.decode("ascii"),
        "HTTP/" + event.http_version.decode("ascii"),
        tuple(fields),
        tuple(raw),
        event.headers,
        by_name,
    )


def parse_request_head(data: bytes, limits: Any = None) -> RequestHead:
    """Parse one request head (``data`` ending in CRLF CRLF) as the proxy does: h11 plus
    agentd's checks. ``limits``: anything with ``max_header_bytes`` and ``max_headers`` (a
    ``Limits``); None for the defaults."""
    peer = Peer(
        h11.SERVER,
        max_head_bytes=getattr(limits, "max_header_bytes", 65536),
        max_fields=getattr(limits, "max_headers", 100),
    )
    peer.receive(data)
    event = peer.next_event()
    if type(event) is not h11.Request:
        raise BadRequest(400, "incomplete request head")
    return peer.request_head(event)


# -- what is judged: the request target as a URL -------------------------------------------------


def valid_host(host: str) -> str:
    """``host`` lower-cased and checked: an IP literal or a DNS name; numeric look-alikes
    (``2130706433``, ``0x7f.1``) that resolvers would read as addresses are refused."""
    host = host.lower()
    if host.endswith(".") and not host.endswith(".."):
        host = host[:-1]
    if host[-1:].isdigit():  # else no IPv4 address (saves raising for every name)
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            pass
    if not _HOSTNAME.match(host) or _NUMERIC_LABEL.match(host.rsplit(".", 1)[-1]):
        raise BadRequest(400, f"invalid host {host[:80]!r}")
    return host


def parse_authority(text: str, default_port: int | None) -> tuple[str, int]:
    """``host[:port]`` or ``[v6]:port`` -> (host, port); host lower-cased, IPs canonical."""
    if "@" in text:
        raise BadRequest(400, "user information in the URL is not accepted")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise BadRequest(400, f"unterminated IPv6 literal in {text[:80]!r}")
        try:
            host = str(ipaddress.IPv6Address(text[1:end]))
        except ValueError:
            raise BadRequest(400, f"invalid IPv6 literal in {text[:80]!r}") from None
        rest = text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise BadRequest(400, f"invalid authority {text[:80]!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = text.partition(":")
        host = valid_host(host)
    if port_text:
        if not _PORT.match(port_text) or not 0 < int(port_text) < 65536:
            raise BadRequest(400, f"invalid port in {text[:80]!r}")
        return host, int(port_text)
    if default_port is None:
        raise BadRequest(400, f"port missing in {text[:80]!r}")
    return host, default_port


def normalise_path(path: str) -> str:
    """RFC 3986 normalisation of path + query, judged and forwarded alike: percent-encoded
    unreserved characters decoded (``%61dmin`` is ``admin``), other escapes upper-cased, dot
    segments of the path removed (``/a/../admin`` is ``/admin``); a fragment is dropped."""
    path = path.split("#", 1)[0]
    if "%" in path:

        def unescape(match: re.Match) -> str:
            byte = int(match.group(1), 16)
            return chr(byte) if byte in _UNRESERVED else "%" + match.group(1).upper()

        path = _PCT.sub(unescape, path)
    path_part, question, query = path.partition("?")
    if not path_part.startswith("/"):
        path_part = "/" + path_part
    if "." in path_part:
        output: list[str] = []
        segments = path_part.split("/")[1:]
        for index, segment in enumerate(segments):
            last = index == len(segments) - 1
            if segment == "..":
                if output:
                    output.pop()
                if last:
                    output.append("")
            elif segment == ".":
                if last:
                    output.append("")
            else:
                output.append(segment)
        path_part = "/" + "/".join(output)
    return path_part + question + query


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def http_url(host: str, port: int, path: str) -> str:
    return f"http://{url_host(host)}{'' if port == 80 else f':{port}'}{path}"


def tls_url(host: str, port: int) -> str:
    return f"https://{url_host(host)}:{port}/"


def _connection_tokens(head: RequestHead) -> set[str]:
    return {token.strip().lower() for token in (head.get("connection") or "").split(",")}


def interpret(head: RequestHead, original: tuple[str, int] | None) -> Request:
    """The request ``head`` as the proxy serves it; ``original`` is the destination of a
    redirected connection (transparent mode), None in explicit mode."""
    method = head.method.upper()
    keep_alive = head.version == "HTTP/1.1" and "close" not in _connection_tokens(head)
    if method == "CONNECT":
        if original is not None:
            raise BadRequest(400, "CONNECT on a redirected connection")
        host, port = parse_authority(head.target, None)
        return Request(
            method,
            head.version,
            host,
            port,
            "",
            tls_url(host, port),
            True,
            False,
            False,
            False,
            False,
        )
    host, port, path = _target_of(head, original)
    chunked = head.get("transfer-encoding") is not None  # h11: chunked is the only one
    length = head.get("content-length")  # h11: one value, digits only
    has_body = chunked or (length is not None and int(length) > 0)
    expect = has_body and (head.get("expect") or "").lower() == "100-continue"
    return Request(
        method,
        head.version,
        host,
        port,
        path,
        http_url(host, port, path),
        False,
        has_body,
        chunked,
        keep_alive,
        expect,
    )


def _target_of(head: RequestHead, original: tuple[str, int] | None) -> tuple[str, int, str]:
    """(host, port, normalised path) of an http:// request in either mode."""
    target = head.target
    if target[:7].lower() == "http://":
        authority_end = len(target)
        for mark in "/?#":
            found = target.find(mark, 7)
            if found >= 0:
                authority_end = min(authority_end, found)
        host, port = parse_authority(target[7:authority_end], 80)
        path = normalise_path(target[authority_end:] or "/")
        if original is not None:
            port = original[1]
        return host, port, path
    if target.startswith("/") and original is not None:
        port = original[1]
        host_field = head.get("host")
        if host_field is None or not host_field.strip():
            host = original[0]  # HTTP/1.0 without Host (h11 refuses 1.1 without it)
        elif "," in host_field:
            raise BadRequest(400, "more than one Host header")
        else:
            host = parse_authority(host_field.strip(), port)[0]
        return host, port, normalise_path(target)
    if target[:8].lower() == "https://":
        raise BadRequest(400, "https:// URLs go through CONNECT")
    if target.startswith("/"):
        raise BadRequest(400, "a proxy request needs an absolute URL (http://host/path)")
    raise BadRequest(400, f"unsupported request target {target[:80]!r}")


def forwarded_fields(
    raw: Iterable[tuple[bytes, bytes]], also_drop: frozenset[bytes] = frozenset()
) -> list[tuple[bytes, bytes]]:
    """The header fields that go on to the next hop: hop-by-hop ones, those named in
    ``Connection`` (except the framing and Host) and ``also_drop`` (lower case) removed. When
    nothing is removed, that is ``raw`` itself if it was a list."""
    raw = raw if type(raw) is list else list(raw)
    names = [name.lower() for name, _ in raw]
    drop = _HOP_BY_HOP_BYTES | also_drop if also_drop else _HOP_BY_HOP_BYTES
    if b"connection" in names:
        for name, (_, value) in zip(names, raw, strict=True):
            if name == b"connection":
                named = {token.strip().lower() for token in value.split(b",")}
                drop = drop | (named - _NEVER_NAMED_AWAY_BYTES)
    if drop.isdisjoint(names):
        return raw
    return [item for name, item in zip(names, raw, strict=True) if name not in drop]
