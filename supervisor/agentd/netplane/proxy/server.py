"""The HTTP egress proxy that judges ``network_request`` for one run.

Owns the agent's web traffic. In explicit mode (the agent got ``HTTP_PROXY``/``HTTPS_PROXY``) it
serves absolute-form requests (``GET http://host/path``) and ``CONNECT host:port``; in transparent
mode (the agent's plain port-80/443 traffic is DNAT'ed to the listener) it takes the original
destination from ``SO_ORIGINAL_DST`` and reads either the HTTP request (origin-form + ``Host``) or
the TLS ClientHello's SNI. Every request is judged before any byte goes upstream:
``judge(method, url, headers, dest_ip) -> Evaluation`` on the full, normalised URL for http://
and on ``https://host:port/`` with method ``CONNECT`` for TLS (the path of TLS traffic is not
visible without interception). The host is resolved once, before judging, and the proxy connects
only to the judged address (no second resolution, no rebinding window). Denials answer 403 with
the pattern ids and message, unreachable upstreams 502, malformed requests 400; an error while
judging denies (fail closed). Each decision goes to ``on_decision(dict)``. Mechanism only: the
policy, the resolver and the audit log are the caller's. Standard library; one asyncio loop in one
background thread, idle in ``epoll`` when there is no traffic.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import re
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from agentd.trace.decide import OUTCOME_RANK, Evaluation

__all__ = ["EgressProxy", "Limits", "RequestHead", "BadRequest", "parse_request_head",
           "parse_authority", "normalise_path", "client_hello_sni", "original_destination",
           "HOP_BY_HOP"]

log = logging.getLogger(__name__)

# Hop-by-hop headers (RFC 9110 7.6.1) plus the proxy's own; never forwarded. Transfer-Encoding
# and Content-Length are not in the list: the proxy relays bodies in the framing they came in.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate",
                        "proxy-authorization", "te", "trailer", "upgrade"})
ALLOWING = frozenset({"allow", "warn"})
# INVARIANT: a header named in Connection is dropped, but never the framing or Host: dropping
# Content-Length while relaying the body would let the body pass as an unjudged next request.
_NEVER_NAMED_AWAY = frozenset({"content-length", "transfer-encoding", "host"})
FAIL_CLOSED_ID = "agentd:fail_closed"

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_VERSION = re.compile(rb"HTTP/1\.[01]\Z")
_TARGET = re.compile(rb"[\x21-\x7e]+\Z")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*\Z")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: [\t\x20-\x7e\x80-\xff]*)?\Z")
_HOSTNAME = re.compile(r"(?=.{1,253}\Z)[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_-]{1,63})*\Z")
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)\Z")
_PORT = re.compile(r"[0-9]{1,5}\Z")
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\r\n]*)?\r\n\Z")

SO_ORIGINAL_DST = 80          # linux/netfilter_ipv4.h, on SOL_IP
IP6T_SO_ORIGINAL_DST = 80     # linux/netfilter_ipv6/ip6_tables.h, on SOL_IPV6
_TLS_ALERT_ACCESS_DENIED = b"\x15\x03\x03\x00\x02\x02\x31"


@dataclass(frozen=True)
class Limits:
    """Bounds on what one client may make the proxy hold or wait for."""

    max_header_bytes: int = 65536      # request or response head, request line included
    max_headers: int = 100
    max_client_hello: int = 65536      # TLS bytes read while looking for the SNI
    max_trailer_bytes: int = 16384
    idle_timeout: float = 60.0         # waiting for a request head (also between kept-alive requests)
    hello_timeout: float = 10.0        # waiting for a ClientHello in transparent mode
    connect_timeout: float = 10.0
    max_connections: int = 1024


class BadRequest(Exception):
    """A request the proxy will not serve: ``status`` (400, 431, 501) and why."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _UpstreamBroken(Exception):
    """The upstream answered something the proxy cannot relay safely."""


@dataclass(frozen=True)
class RequestHead:
    """A parsed request head: request line and header fields in their order, names as sent."""

    method: str
    target: str
    version: str
    fields: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str | None:
        values = [value for key, value in self.fields if key.lower() == name]
        return ", ".join(values) if values else None

    def lowered(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for key, value in self.fields:
            key = key.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return headers


def _parse_fields(lines: list[bytes], limits: Limits) -> tuple[tuple[str, str], ...]:
    if len(lines) > limits.max_headers:
        raise BadRequest(431, f"more than {limits.max_headers} header fields")
    fields = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):   # also refuses "Name :" and obs-fold lines
            raise BadRequest(400, f"malformed header line {line[:60]!r}")
        value = value.strip(b" \t")
        if not _FIELD_VALUE.match(value):
            raise BadRequest(400, f"control character in header {name.decode()!r}")
        fields.append((name.decode("ascii"), value.decode("latin-1")))
    return tuple(fields)


def parse_request_head(data: bytes, limits: Limits = Limits()) -> RequestHead:
    """Parse a request head ending in CRLF CRLF; strict (bare CR or LF, folding: 400)."""
    if len(data) > limits.max_header_bytes:
        raise BadRequest(431, "request head too large")
    if not data.endswith(b"\r\n\r\n"):
        raise BadRequest(400, "request head not terminated by CRLF CRLF")
    lines = data[:-4].split(b"\r\n")
    if any(b"\r" in line or b"\n" in line or b"\0" in line for line in lines):
        raise BadRequest(400, "bare CR, LF or NUL in request head")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not _TARGET.match(parts[1]) \
            or not _VERSION.match(parts[2]):
        raise BadRequest(400, f"malformed request line {lines[0][:80]!r}")
    return RequestHead(parts[0].decode("ascii"), parts[1].decode("ascii"),
                       parts[2].decode("ascii"), _parse_fields(lines[1:], limits))


def _valid_host(host: str) -> str:
    """``host`` lower-cased and checked: an IP literal or a DNS name; numeric look-alikes
    (``2130706433``, ``0x7f.1``) that resolvers would read as addresses are refused."""
    host = host.lower()
    if host.endswith(".") and not host.endswith(".."):
        host = host[:-1]
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
        rest = text[end + 1:]
        if rest and not rest.startswith(":"):
            raise BadRequest(400, f"invalid authority {text[:80]!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = text.partition(":")
        host = _valid_host(host)
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


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _http_url(host: str, port: int, path: str) -> str:
    return f"http://{_url_host(host)}{'' if port == 80 else f':{port}'}{path}"


def _tls_url(host: str, port: int) -> str:
    return f"https://{_url_host(host)}:{port}/"


def client_hello_sni(handshake: bytes) -> str | None:
    """The server name of a TLS ClientHello handshake message (type, length, body), or None
    when it has none. ``ValueError`` when the message is not a well-formed ClientHello; every
    length is checked against what is there."""
    if len(handshake) < 4 or handshake[0] != 1:
        raise ValueError("not a ClientHello")
    length = int.from_bytes(handshake[1:4], "big")
    body = memoryview(handshake)[4:4 + length]
    if len(body) != length:
        raise ValueError("ClientHello truncated")
    offset = 2 + 32                                   # client_version, random

    def skip(width: int) -> int:
        nonlocal offset
        if offset + width > len(body):
            raise ValueError("ClientHello truncated")
        size = int.from_bytes(body[offset:offset + width], "big")
        start = offset + width
        if start + size > len(body):
            raise ValueError("ClientHello field overruns the message")
        offset = start + size
        return start

    skip(1)                                           # session_id
    skip(2)                                           # cipher_suites
    skip(1)                                           # compression_methods
    if offset == len(body):
        return None                                   # no extensions
    extensions_start = skip(2)
    extensions_end = offset
    position = extensions_start
    while position + 4 <= extensions_end:
        kind, size = struct.unpack_from("!HH", body, position)
        data = body[position + 4:position + 4 + size]
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
            name_length = int.from_bytes(data[entry + 1:entry + 3], "big")
            name = bytes(data[entry + 3:entry + 3 + name_length])
            if len(name) != name_length:
                raise ValueError("server name overruns the extension")
            if name_type == 0:
                return name.decode("ascii")           # UnicodeDecodeError is a ValueError
            entry += 3 + name_length
        return None
    if position != extensions_end:
        raise ValueError("trailing bytes in the extension block")
    return None


def original_destination(sock: socket.socket) -> tuple[str, int] | None:
    """Where a DNAT'ed connection was going (``SO_ORIGINAL_DST``), or None when the socket was
    not redirected (no conntrack entry, or the original destination is the listener itself)."""
    local = sock.getsockname()
    try:
        if sock.family == socket.AF_INET6 and not local[0].startswith("::ffff:"):
            raw = sock.getsockopt(socket.SOL_IPV6, IP6T_SO_ORIGINAL_DST, 28)
            port = struct.unpack_from("!H", raw, 2)[0]
            address = str(ipaddress.IPv6Address(raw[8:24]))
        else:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port = struct.unpack_from("!H", raw, 2)[0]
            address = socket.inet_ntoa(raw[4:8])
    except OSError:
        return None
    if _same_endpoint((address, port), local):
        return None
    return address, port


def _same_endpoint(original: tuple[str, int], local: tuple) -> bool:
    def canonical(ip: str) -> str:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
        mapped = getattr(address, "ipv4_mapped", None)
        return str(mapped or address)
    try:
        return (canonical(original[0]), int(original[1])) == (canonical(local[0]), int(local[1]))
    except (ValueError, TypeError, IndexError):
        return False


def _clean(text: str, limit: int = 300) -> str:
    """Header-safe text: printable ASCII only, bounded."""
    return "".join(ch if " " <= ch <= "~" else "?" for ch in str(text))[:limit]


def _fail_closed(url: str, reason: str) -> Evaluation:
    return Evaluation("network_request", url, "deny", "block", f"fail closed: {reason}",
                      (FAIL_CLOSED_ID,))


@dataclass
class _Request:
    method: str
    version: str
    host: str
    port: int
    path: str              # origin-form sent upstream ("" for CONNECT)
    url: str
    connect: bool
    body: str              # "none" | "length" | "chunked"
    length: int
    keep_alive: bool


class _Client:
    """One accepted connection and the upstream connection it is using."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 original: tuple[str, int] | None):
        self.reader = reader
        self.writer = writer
        self.original = original
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.peer = f"{_url_host(peer[0])}:{peer[1]}"
        self.upstream: tuple[tuple[str, int], asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.reused = False        # the current upstream connection served an earlier request
        self.answered = False      # response head sent: a failure from here on just closes

    @property
    def mode(self) -> str:
        return "explicit" if self.original is None else "transparent"

    def drop_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream[2].close()
            self.upstream = None


class EgressProxy:
    """The proxy: ``start()`` serves in a background thread, ``close()`` stops it and joins it.

    ``judge(method, url, headers, dest_ip) -> Evaluation`` (headers: lower-cased names, without
    Proxy-Authorization) runs on the proxy's thread and must not block; ``resolve(host) ->
    list[str]`` may block (it runs in a small thread pool unless ``resolve_in_thread=False``);
    ``quick_resolve(host)``, when given, is asked first on the proxy's thread and must not block
    (``NameBook.addresses_for``): a non-empty answer saves the trip to the pool;
    ``on_decision(record)`` runs before anything is forwarded, and an exception from it denies.
    ``original_destination(sock)`` is injectable for tests.
    """

    def __init__(self, listen: tuple[str, int] | None = None, *,
                 sockets: Iterable[socket.socket] | None = None,
                 judge: Callable[[str, str, dict[str, str], str], Evaluation],
                 resolve: Callable[[str], list[str]],
                 on_decision: Callable[[dict[str, Any]], None] | None = None,
                 limits: Limits = Limits(),
                 original_destination: Callable[[socket.socket], tuple[str, int] | None]
                 = original_destination,
                 resolve_in_thread: bool = True,
                 quick_resolve: Callable[[str], list[str] | tuple[str, ...]] | None = None):
        if (listen is None) == (sockets is None):
            raise ValueError("give exactly one of listen=(ip, port) or sockets=[...]")
        if sockets is None:
            assert listen is not None
            family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(listen)
            except OSError:
                sock.close()
                raise
            sockets = [sock]
        self._sockets = list(sockets)
        if not self._sockets:
            raise ValueError("sockets=[] gives the proxy nothing to listen on")
        self._judge = judge
        self._resolve = resolve
        self._on_decision = on_decision
        self.limits = limits
        self._original_destination = original_destination
        self._resolve_in_thread = resolve_in_thread
        self._quick_resolve = quick_resolve
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    @property
    def address(self) -> tuple[str, int]:
        """(ip, port) of the first listening socket."""
        name = self._sockets[0].getsockname()
        return name[0], name[1]

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "EgressProxy":
        if self._thread is not None:
            raise RuntimeError("proxy already started")
        for sock in self._sockets:
            sock.listen(512)
            sock.setblocking(False)
        if self._resolve_in_thread:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=4, thread_name_prefix="agentd-proxy-resolve")
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(ready, failure),
                                        name="agentd-egress-proxy", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self.close()
            raise failure[0]
        return self

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            for sock in self._sockets:
                self._servers.append(loop.run_until_complete(asyncio.start_server(
                    self._accept, sock=sock, limit=self.limits.max_header_bytes)))
        except BaseException as exc:  # reported to start()'s caller
            failure.append(exc)
            ready.set()
            return
        ready.set()
        loop.run_forever()

    def close(self) -> None:
        """Stop serving, drop every connection, join the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            try:
                future.result(timeout=10)
            except Exception:
                log.exception("egress proxy: shutdown")
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
        if loop is not None and not loop.is_running():
            loop.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        for sock in self._sockets:
            sock.close()

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()

    def __enter__(self) -> "EgressProxy":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- one connection ----------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self._tasks) >= self.limits.max_connections:
            writer.close()
            return
        self._tasks.add(task)
        client: _Client | None = None
        try:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                original = self._original_destination(sock)
            except Exception as exc:
                log.warning("egress proxy: original destination lookup failed: %r", exc)
                original = None
            if original is not None and _same_endpoint(original, sock.getsockname()):
                original = None   # the client came to the proxy itself (HTTP_PROXY): explicit
            client = _Client(reader, writer, original)
            if original is None:
                await self._serve_http(client, b"")
            else:
                await self._serve_transparent(client)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, _UpstreamBroken):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("egress proxy: connection from %s", client.peer if client else "?")
        finally:
            if client is not None:
                client.drop_upstream()
            writer.close()
            self._tasks.discard(task)

    async def _serve_transparent(self, client: _Client) -> None:
        try:
            async with asyncio.timeout(self.limits.hello_timeout):
                first = await client.reader.readexactly(1)
        except TimeoutError:
            first = b""
        if first == b"\x16":
            await self._serve_tls(client, first)
        elif first:
            await self._serve_http(client, first)
        else:   # nothing sent: a server-speaks-first protocol is judged on the address alone
            await self._serve_tls(client, b"")

    async def _read_client_hello(self, client: _Client, first: bytes) -> tuple[bytes, str | None]:
        """Read TLS records until the ClientHello is complete (bounded); (bytes read, SNI)."""
        seen = bytearray(first)
        handshake = bytearray()
        try:
            async with asyncio.timeout(self.limits.hello_timeout):
                header = first + await client.reader.readexactly(5 - len(first))
                seen[:] = header
                while True:
                    if header[0] != 22 or header[1] != 3:
                        return bytes(seen), None
                    size = int.from_bytes(header[3:5], "big")
                    if size == 0 or size > 18432 or len(seen) + size > self.limits.max_client_hello:
                        return bytes(seen), None
                    fragment = await client.reader.readexactly(size)
                    seen += fragment
                    handshake += fragment
                    if len(handshake) >= 4:
                        need = 4 + int.from_bytes(handshake[1:4], "big")
                        if handshake[0] != 1 or need > self.limits.max_client_hello:
                            return bytes(seen), None
                        if len(handshake) >= need:
                            try:
                                return bytes(seen), client_hello_sni(bytes(handshake[:need]))
                            except ValueError:
                                return bytes(seen), None
                    header = await client.reader.readexactly(5)
                    seen += header
        except TimeoutError:
            return bytes(seen), None
        except asyncio.IncompleteReadError as exc:
            return bytes(seen) + exc.partial, None

    async def _serve_tls(self, client: _Client, first: bytes) -> None:
        assert client.original is not None
        original_ip, port = client.original
        seen, sni = (await self._read_client_hello(client, first)) if first else (b"", None)
        host = original_ip
        if sni is not None:
            try:
                host = _valid_host(sni)
                ipaddress.ip_address(host)
                host = original_ip           # an IP literal is no server name (RFC 6066 3)
            except BadRequest:
                host = original_ip
            except ValueError:
                pass
        url = _tls_url(host, port)
        dest_ip, why = await self._destination(host, original_ip)
        evaluation = self._judge_safely("CONNECT", url, {}, dest_ip or "")
        record = self._record("CONNECT", url, host, port, dest_ip, client, evaluation)
        if evaluation.outcome not in ALLOWING:
            self._emit(record, 403, "denied by policy")
            client.writer.write(_TLS_ALERT_ACCESS_DENIED)
            await client.writer.drain()
            return
        if dest_ip is None:
            self._emit(record, 502, why)
            return
        upstream = await self._connect(client, dest_ip, port, record)
        if upstream is None or not self._emit(record, 200, "tunnel"):
            return
        up_reader, up_writer = upstream
        up_writer.write(seen)
        await self._tunnel(client, up_reader, up_writer)

    async def _serve_http(self, client: _Client, prefix: bytes) -> None:
        while True:
            try:
                async with asyncio.timeout(self.limits.idle_timeout):
                    data = prefix + await client.reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if (prefix + exc.partial).strip():
                    await self._refuse_malformed(client, BadRequest(400, "incomplete request head"))
                return
            except asyncio.LimitOverrunError:
                await self._refuse_malformed(client, BadRequest(431, "request head too large"))
                return
            prefix = b""
            try:
                head = parse_request_head(data, self.limits)
                request = self._interpret(head, client)
            except BadRequest as bad:
                await self._refuse_malformed(client, bad)
                return
            if not await self._handle(client, head, request):
                return

    def _interpret(self, head: RequestHead, client: _Client) -> _Request:
        method = head.method.upper()
        keep_alive = head.version == "HTTP/1.1" and "close" not in {
            token.strip().lower() for token in (head.get("connection") or "").split(",")}
        if method == "CONNECT":
            if client.original is not None:
                raise BadRequest(400, "CONNECT on a redirected connection")
            host, port = parse_authority(head.target, None)
            return _Request(method, head.version, host, port, "", _tls_url(host, port), True,
                            "none", 0, False)
        target = head.target
        if target[:7].lower() == "http://":
            authority_end = len(target)
            for mark in "/?#":
                found = target.find(mark, 7)
                if found >= 0:
                    authority_end = min(authority_end, found)
            host, port = parse_authority(target[7:authority_end], 80)
            path = normalise_path(target[authority_end:] or "/")
            if client.original is not None:
                port = client.original[1]
        elif target.startswith("/") and client.original is not None:
            path = normalise_path(target)
            port = client.original[1]
            host_field = head.get("host")
            if host_field is None or not host_field.strip():
                host = client.original[0]
            elif "," in host_field:
                raise BadRequest(400, "more than one Host header")
            else:
                host = parse_authority(host_field.strip(), port)[0]
        elif target[:8].lower() == "https://":
            raise BadRequest(400, "https:// URLs go through CONNECT")
        elif target.startswith("/"):
            raise BadRequest(400, "a proxy request needs an absolute URL (http://host/path)")
        else:
            raise BadRequest(400, f"unsupported request target {target[:80]!r}")
        transfer = head.get("transfer-encoding")
        length_field = head.get("content-length")
        if transfer is not None:
            if length_field is not None:
                raise BadRequest(400, "both Transfer-Encoding and Content-Length")
            if transfer.strip().lower() != "chunked":
                raise BadRequest(501, f"unsupported Transfer-Encoding {transfer[:40]!r}")
            body, length = "chunked", 0
        elif length_field is not None:
            values = {value.strip() for value in length_field.split(",")}
            if len(values) != 1 or not all(v.isdigit() and len(v) <= 18 for v in values):
                raise BadRequest(400, f"invalid Content-Length {length_field[:40]!r}")
            length = int(values.pop())
            body = "length" if length else "none"
        else:
            body, length = "none", 0
        return _Request(method, head.version, host, port, path, _http_url(host, port, path),
                        False, body, length, keep_alive)

    # -- deciding ----------------------------------------------------------------------------

    async def _destination(self, host: str, preferred: str | None) -> tuple[str | None, str]:
        """The one address the proxy will connect to for ``host``, or (None, why not)."""
        try:
            return str(ipaddress.ip_address(host)), "literal"
        except ValueError:
            pass
        try:
            answers = self._quick_resolve(host) if self._quick_resolve is not None else None
            if not answers and self._executor is not None:
                loop = asyncio.get_running_loop()
                answers = await loop.run_in_executor(self._executor, self._resolve, host)
            elif not answers:
                answers = self._resolve(host)
        except Exception as exc:
            return None, f"cannot resolve {host}: {exc!r}"
        addresses = []
        for answer in answers or ():
            try:
                addresses.append(str(ipaddress.ip_address(answer)))
            except (TypeError, ValueError):
                continue
        if not addresses:
            return None, f"cannot resolve {host}: no address"
        if preferred is not None and preferred in addresses:
            return preferred, "resolved"
        return addresses[0], "resolved"

    def _judge_safely(self, method: str, url: str, headers: dict[str, str],
                      dest_ip: str) -> Evaluation:
        try:
            evaluation = self._judge(method, url, headers, dest_ip)
        except Exception as exc:  # INVARIANT: an error while judging denies (fail closed)
            log.warning("egress proxy: judge failed on %s %s: %r", method, url, exc)
            return _fail_closed(url, f"error while judging: {exc!r}")
        if not isinstance(evaluation, Evaluation) or evaluation.outcome not in OUTCOME_RANK:
            return _fail_closed(url, f"judge returned {evaluation!r}")
        return evaluation

    def _record(self, method: str, url: str, host: str, port: int, dest_ip: str | None,
                client: _Client, evaluation: Evaluation | None) -> dict[str, Any]:
        return {"method": method, "url": url, "host": host, "port": port,
                "dest_ip": dest_ip or "",
                "dest": f"{_url_host(dest_ip)}:{port}" if dest_ip else "",
                "mode": client.mode, "client": client.peer, "evaluation": evaluation,
                "outcome": evaluation.outcome if evaluation is not None else "block",
                "status": None, "reason": ""}

    def _emit(self, record: dict[str, Any], status: int | None, reason: str) -> bool:
        """Hand the record to on_decision; False (deny) when that fails."""
        record["status"], record["reason"] = status, reason
        if self._on_decision is None:
            return True
        try:
            self._on_decision(record)
        except Exception as exc:
            log.error("egress proxy: on_decision failed for %s: %r", record.get("url"), exc)
            return False
        return True

    # -- answering ---------------------------------------------------------------------------

    async def _handle(self, client: _Client, head: RequestHead, request: _Request) -> bool:
        """Judge and serve one request; True when the client connection stays open."""
        headers = head.lowered()
        headers.pop("proxy-authorization", None)
        preferred = client.original[0] if client.original is not None else None
        dest_ip, why = await self._destination(request.host, preferred)
        evaluation = self._judge_safely(request.method, request.url, headers, dest_ip or "")
        record = self._record(request.method, request.url, request.host, request.port, dest_ip,
                              client, evaluation)
        if evaluation.outcome not in ALLOWING:
            self._emit(record, 403, "denied by policy")
            return await self._deny(client, request, evaluation)
        if dest_ip is None:
            self._emit(record, 502, why)
            return await self._simple(client, request, 502, "Bad Gateway", f"agentd: {why}\n")
        upstream = await self._connect(client, dest_ip, request.port, record, request)
        if upstream is None:
            return await self._simple(client, request, 502, "Bad Gateway",
                                      f"agentd: {record['reason']}\n")
        if not self._emit(record, 200 if request.connect else None,
                          "tunnel" if request.connect else "forwarded"):
            client.drop_upstream()
            return await self._deny(client, request, _fail_closed(
                request.url, "the decision could not be recorded"))
        up_reader, up_writer = upstream
        if request.connect:
            client.writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await self._tunnel(client, up_reader, up_writer)
            return False
        return await self._forward(client, head, request, record)

    async def _connect(self, client: _Client, dest_ip: str, port: int, record: dict[str, Any],
                       request: _Request | None = None
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        key = (dest_ip, port)
        reusable = request is not None and not request.connect
        if reusable and client.upstream is not None:
            if client.upstream[0] == key and not client.upstream[1].at_eof():
                client.reused = True
                return client.upstream[1], client.upstream[2]
        client.drop_upstream()
        client.reused = False
        try:
            async with asyncio.timeout(self.limits.connect_timeout):
                up_reader, up_writer = await asyncio.open_connection(
                    dest_ip, port, limit=self.limits.max_header_bytes)
        except (OSError, TimeoutError) as exc:
            self._emit(record, 502, f"upstream {record['dest']} unreachable: "
                                    f"{exc.strerror if isinstance(exc, OSError) and exc.strerror else 'timeout'}")
            return None
        up_writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.upstream = (key, up_reader, up_writer)
        return up_reader, up_writer

    async def _deny(self, client: _Client, request: _Request, evaluation: Evaluation) -> bool:
        ids = ", ".join(evaluation.pattern_ids) or "none"
        message = evaluation.message or evaluation.reason
        body = (f"agentd: {request.method} {request.url} denied by policy "
                f"({evaluation.outcome})\npattern: {ids}\n{message}\n")
        extra = {"X-Agentd-Pattern": _clean(ids), "X-Agentd-Outcome": _clean(evaluation.outcome)}
        if message:
            extra["X-Agentd-Message"] = _clean(message)
        return await self._simple(client, request, 403, "Forbidden", body, extra)

    async def _simple(self, client: _Client, request: _Request | None, status: int, phrase: str,
                      body: str, extra: Mapping[str, str] | None = None) -> bool:
        """A response of the proxy's own; keeps the connection when no request body is unread."""
        keep = (request is not None and request.keep_alive and request.body == "none"
                and not request.connect)
        payload = body.encode("utf-8", "replace")
        lines = [f"HTTP/1.1 {status} {phrase}", "Content-Type: text/plain; charset=utf-8",
                 f"Content-Length: {len(payload)}", f"Connection: {'keep-alive' if keep else 'close'}"]
        lines += [f"{name}: {value}" for name, value in (extra or {}).items()]
        client.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)
        await client.writer.drain()
        if not keep:
            await self._linger(client)
        return keep

    async def _linger(self, client: _Client) -> None:
        """Half-close and read what the client still sends (bounded), so that closing with
        unread data does not reset the connection before the client reads the answer."""
        try:
            if client.writer.can_write_eof():
                client.writer.write_eof()
            async with asyncio.timeout(2.0):
                drained = 0
                while drained < 1 << 20:
                    chunk = await client.reader.read(65536)
                    if not chunk:
                        break
                    drained += len(chunk)
        except (OSError, TimeoutError):
            pass

    async def _refuse_malformed(self, client: _Client, bad: BadRequest) -> None:
        phrases = {400: "Bad Request", 431: "Request Header Fields Too Large", 501: "Not Implemented"}
        record = self._record("", "", "", 0, None, client, None)
        self._emit(record, bad.status, f"malformed request: {bad.reason}")
        await self._simple(client, None, bad.status, phrases.get(bad.status, "Bad Request"),
                           f"agentd: {bad.reason}\n")

    # -- relaying ----------------------------------------------------------------------------

    async def _forward(self, client: _Client, head: RequestHead, request: _Request,
                       record: dict[str, Any]) -> bool:
        assert client.upstream is not None
        named = {token.strip().lower() for token in (head.get("connection") or "").split(",")}
        named -= _NEVER_NAMED_AWAY
        lines = [f"{head.method} {request.path} {request.version}"]
        host_value = head.get("host") if client.original is not None else None
        if not host_value:
            host_value = _url_host(request.host) + ("" if request.port == 80 else f":{request.port}")
        lines.append(f"Host: {host_value}")
        for name, value in head.fields:
            lowered = name.lower()
            if lowered in HOP_BY_HOP or lowered in named or lowered in ("host", "expect"):
                continue
            lines.append(f"{name}: {value}")
        if request.body != "none" and (head.get("expect") or "").lower() == "100-continue":
            # Judged, allowed and connected: the client may send its body now. The upstream
            # is not asked (its own 100 would arrive only after the body).
            client.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if request.version == "HTTP/1.0":
            lines.append("Connection: close")
        request_head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        for attempt in (1, 2):
            key, up_reader, up_writer = client.upstream
            try:
                # The body too: an upstream that answers early and closes must not make the
                # client's request vanish without an answer.
                up_writer.write(request_head)
                if request.body == "length":
                    await _copy_exactly(client.reader, up_writer, request.length)
                elif request.body == "chunked":
                    await _relay_chunked(client.reader, up_writer, self.limits)
                await up_writer.drain()
                return await self._relay_response(client, request)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    _UpstreamBroken) as exc:
                stale = (client.reused and not client.answered and request.body == "none"
                         and isinstance(exc, (ConnectionError, asyncio.IncompleteReadError))
                         and not getattr(exc, "partial", b""))
                client.drop_upstream()
                if client.answered:
                    raise _UpstreamBroken(str(exc)) from None
                if stale and attempt == 1:
                    # The kept-alive upstream closed while idle: same judged address, once more.
                    if await self._connect(client, key[0], key[1], record, request) is not None:
                        continue
                await self._simple(client, request, 502, "Bad Gateway",
                                   f"agentd: upstream failed: {exc!r}\n")
                return False
        return False

    async def _relay_response(self, client: _Client, request: _Request) -> bool:
        assert client.upstream is not None
        up_reader = client.upstream[1]
        while True:
            data = await up_reader.readuntil(b"\r\n\r\n")
            lines = data[:-4].split(b"\r\n")
            match = _STATUS_LINE.match(lines[0])
            if not match or any(b"\r" in line or b"\n" in line for line in lines):
                raise _UpstreamBroken(f"malformed status line {lines[0][:80]!r}")
            try:
                fields = _parse_fields(lines[1:], self.limits)
            except BadRequest as bad:
                raise _UpstreamBroken(bad.reason) from None
            status = int(match.group(2))
            if status == 101 or not 100 <= status < 200:
                break
            client.writer.write(data)   # 100 Continue, 103 Early Hints
        named = set()
        transfer = length_field = None
        upstream_close = match.group(1) == b"0"
        for name, value in fields:
            lowered = name.lower()
            if lowered == "connection":
                named |= {token.strip().lower() for token in value.split(",")}
            elif lowered == "transfer-encoding":
                transfer = value.strip().lower()
            elif lowered == "content-length":
                length_field = value.strip()
        if "close" in named:
            upstream_close = True
        named -= _NEVER_NAMED_AWAY
        if status == 101:
            raise _UpstreamBroken("upstream switched protocols without an upgrade request")
        if request.method == "HEAD" or status in (204, 304):
            body, length = "none", 0
        elif transfer is not None:
            body, length = ("chunked", 0) if transfer.endswith("chunked") else ("close", 0)
        elif length_field is not None:
            values = {value.strip() for value in length_field.split(",")}
            if len(values) != 1 or not all(v.isdigit() and len(v) <= 18 for v in values):
                raise _UpstreamBroken(f"invalid Content-Length {length_field[:40]!r}")
            body, length = "length", int(values.pop())
        else:
            body, length = "close", 0
        keep = request.keep_alive and body != "close"
        out = [lines[0].decode("latin-1")]
        for name, value in fields:
            lowered = name.lower()
            if lowered in HOP_BY_HOP or lowered in named:
                continue
            out.append(f"{name}: {value}")
        out.append(f"Connection: {'keep-alive' if keep else 'close'}")
        response_head = ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")
        if body == "length" and length <= 65536:
            # A small body goes out with the head: one send (and one wakeup of the client).
            response_head += await up_reader.readexactly(length)
            body = "none"
        client.writer.write(response_head)
        client.answered = True
        try:
            if body == "length":
                await _copy_exactly(up_reader, client.writer, length)
            elif body == "chunked":
                await _relay_chunked(up_reader, client.writer, self.limits)
            elif body == "close":
                while chunk := await up_reader.read(65536):
                    client.writer.write(chunk)
                    await client.writer.drain()
                upstream_close = True
            await client.writer.drain()
        finally:
            client.answered = False
        if upstream_close or body == "close":
            client.drop_upstream()
        return keep

    async def _tunnel(self, client: _Client, up_reader: asyncio.StreamReader,
                      up_writer: asyncio.StreamWriter) -> None:
        client.upstream = None   # the tunnel owns it now
        try:
            await asyncio.gather(_pump(client.reader, up_writer), _pump(up_reader, client.writer))
        finally:
            up_writer.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


async def _copy_exactly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        length: int) -> None:
    while length > 0:
        chunk = await reader.read(min(length, 65536))
        if not chunk:
            raise asyncio.IncompleteReadError(b"", length)
        length -= len(chunk)
        writer.write(chunk)
        await writer.drain()


async def _relay_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         limits: Limits) -> None:
    """Relay a chunked body as it came, checking its framing (sizes, CRLFs, bounded trailers)."""
    while True:
        line = await reader.readuntil(b"\r\n")
        match = _CHUNK_SIZE.match(line)
        if not match:
            raise _UpstreamBroken(f"malformed chunk size line {line[:40]!r}")
        size = int(match.group(1), 16)
        writer.write(line)
        if size == 0:
            break
        await _copy_exactly(reader, writer, size)
        if await reader.readexactly(2) != b"\r\n":
            raise _UpstreamBroken("chunk not followed by CRLF")
        writer.write(b"\r\n")
    trailers = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        trailers += len(line)
        if trailers > limits.max_trailer_bytes:
            raise _UpstreamBroken("trailers too large")
        writer.write(line)
        if line == b"\r\n":
            break
    await writer.drain()
