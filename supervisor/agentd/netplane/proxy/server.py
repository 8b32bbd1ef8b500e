"""The HTTP egress proxy that judges ``network_request`` for one run: accept, judge, connect, relay.

Owns the proxy's sockets and its one asyncio loop (in one background thread, idle in ``epoll``
when there is no traffic), and what happens to each connection. In explicit mode (the agent got
``HTTP_PROXY``/``HTTPS_PROXY``) it serves absolute-form requests (``GET http://host/path``) and
``CONNECT host:port``; in transparent mode (the agent's plain port-80/443 traffic is DNAT'ed to the
listener) it takes the original destination from ``original_destination(sock)`` and reads either an
HTTP request (origin-form + ``Host``) or the TLS ClientHello's SNI. Every request is judged before
any byte goes upstream: ``judge(method, url, headers, dest_ip) -> Evaluation`` on the full,
normalised URL for http:// and on ``https://host:port/`` with method ``CONNECT`` for TLS (the path
of TLS traffic is not visible without interception). The host is resolved once, before judging,
and the proxy connects only to the judged address (no second resolution, no rebinding window).
Denials answer 403 with the pattern ids and message, unreachable upstreams 502, malformed requests
400; an error while judging denies (fail closed). Each decision goes to ``on_decision(dict)``.
HTTP framing is ``http1`` (h11), the ClientHello ``tls_sni``; mechanism only: the policy, the
resolver and the audit log are the caller's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import h11

from agentd.trace.decide import OUTCOME_RANK, Evaluation, Outcome

from ..sockets import bound_socket
from . import http1
from .http1 import BadRequest, Peer, Request, RequestHead
from .tls_sni import ALERT_ACCESS_DENIED, scan_client_hello

__all__ = [
    "EgressProxy",
    "Limits",
    "original_destination",
    "SO_ORIGINAL_DST",
    "IP6T_SO_ORIGINAL_DST",
    "FAIL_CLOSED_ID",
]

log = logging.getLogger(__name__)

ALLOWING = frozenset({"allow", "warn"})
FAIL_CLOSED_ID = "agentd:fail_closed"
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h, on SOL_IP
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h, on SOL_IPV6 (= IPPROTO_IPV6)
_READ = 65536  # bytes asked of a socket at a time
_NOT_FORWARDED = frozenset({b"host", b"expect"})  # Host is set anew; the proxy answers Expect
_END_OF_MESSAGE = h11.EndOfMessage()  # immutable, as every h11 event
_PHRASES = {
    400: b"Bad Request",
    403: b"Forbidden",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
}


@dataclass(frozen=True)
class Limits:
    """Bounds on what one client may make the proxy hold or wait for."""

    max_header_bytes: int = 65536  # request or response head, request line included
    max_headers: int = 100
    max_client_hello: int = 65536  # TLS bytes read while looking for the SNI
    max_trailer_bytes: int = 16384
    idle_timeout: float = 60.0  # waiting for a request head (also between requests)
    hello_timeout: float = 10.0  # waiting for a ClientHello in transparent mode
    connect_timeout: float = 10.0
    max_connections: int = 1024

    def peer(self, role: Any) -> Peer:
        """An HTTP/1.1 peer (``h11.SERVER``: the agent's side, ``h11.CLIENT``: an upstream)."""
        return Peer(
            role,
            max_head_bytes=self.max_header_bytes,
            max_fields=self.max_headers,
            max_trailer_bytes=self.max_trailer_bytes,
        )


class _UpstreamBroken(Exception):
    """The upstream answered something the proxy cannot relay safely."""


class _UpstreamClosed(ConnectionError):
    """The upstream closed without a byte of answer (a kept-alive connection gone stale)."""


def original_destination(sock: socket.socket) -> tuple[str, int] | None:
    """Where a DNAT'ed connection was going (``SO_ORIGINAL_DST``), or None when the socket was
    not redirected (no conntrack entry, or the original destination is the listener itself)."""
    local = sock.getsockname()
    try:
        if sock.family == socket.AF_INET6 and not local[0].startswith("::ffff:"):
            raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
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
    return Evaluation(
        "network_request", url, "deny", Outcome.BLOCK, f"fail closed: {reason}", (FAIL_CLOSED_ID,)
    )


class _Upstream:
    """One connection to an upstream: the judged (address, port), the streams, its HTTP peer."""

    __slots__ = ("key", "reader", "writer", "http")

    def __init__(
        self,
        key: tuple[str, int],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        http: Peer,
    ):
        self.key = key
        self.reader = reader
        self.writer = writer
        self.http = http


class _Client:
    """One accepted connection, its HTTP peer and the upstream connection it is using."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        original: tuple[str, int] | None,
    ):
        self.reader = reader
        self.writer = writer
        self.original = original
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.peer = f"{http1.url_host(peer[0])}:{peer[1]}"
        self.http: Peer | None = None  # HTTP/1.1 framing, once the connection speaks HTTP
        self.method = b""  # of the request being answered (HEAD: no body)
        self.upstream: _Upstream | None = None
        self.reused = False  # the current upstream connection served an earlier request
        self.answered = False  # response head sent: a failure from here on just closes

    @property
    def mode(self) -> str:
        return "explicit" if self.original is None else "transparent"

    def drop_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.writer.close()
            self.upstream = None


def _forwarded_headers(headers: Any) -> Any:
    """An upstream's header fields as they go on to the agent (``http1.forwarded_fields``):
    h11's own list when nothing is removed, which h11 need not validate a second time."""
    raw = headers.raw_items()
    kept = http1.forwarded_fields(raw)
    return headers if kept is raw else kept


async def _next_event(peer: Peer, reader: asyncio.StreamReader) -> Any:
    """The peer's next HTTP event, reading from ``reader`` while it needs data."""
    while True:
        event = peer.next_event()
        if event is not h11.NEED_DATA:
            return event
        peer.receive(await reader.read(_READ))


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

    def __init__(
        self,
        listen: tuple[str, int] | None = None,
        *,
        sockets: Iterable[socket.socket] | None = None,
        judge: Callable[[str, str, dict[str, str], str], Evaluation],
        resolve: Callable[[str], list[str]],
        on_decision: Callable[[dict[str, Any]], None] | None = None,
        limits: Limits = Limits(),
        original_destination: Callable[
            [socket.socket], tuple[str, int] | None
        ] = original_destination,
        resolve_in_thread: bool = True,
        quick_resolve: Callable[[str], list[str] | tuple[str, ...]] | None = None,
    ):
        if (listen is None) == (sockets is None):
            raise ValueError("give exactly one of listen=(ip, port) or sockets=[...]")
        if sockets is None:
            assert listen is not None
            family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
            sockets = [bound_socket(family, socket.SOCK_STREAM, listen)]
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

    def start(self) -> EgressProxy:
        if self._thread is not None:
            raise RuntimeError("proxy already started")
        for sock in self._sockets:
            sock.listen(512)
            sock.setblocking(False)
        if self._resolve_in_thread:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=4, thread_name_prefix="agentd-proxy-resolve"
            )
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(ready, failure), name="agentd-egress-proxy", daemon=True
        )
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
                self._servers.append(
                    loop.run_until_complete(
                        asyncio.start_server(
                            self._accept, sock=sock, limit=self.limits.max_header_bytes
                        )
                    )
                )
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

    def __enter__(self) -> EgressProxy:
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
                original = None  # the client came to the proxy itself (HTTP_PROXY): explicit
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
        else:  # nothing sent: a server-speaks-first protocol is judged on the address alone
            await self._serve_tls(client, b"")

    async def _read_client_hello(self, client: _Client, first: bytes) -> tuple[bytes, str | None]:
        """Read TLS records until the ClientHello is complete (bounded); (bytes read, SNI)."""
        seen = bytearray(first)
        try:
            async with asyncio.timeout(self.limits.hello_timeout):
                while True:
                    need, sni = scan_client_hello(bytes(seen), self.limits.max_client_hello)
                    if not need:
                        return bytes(seen), sni
                    seen += await client.reader.readexactly(need)
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
                host = http1.valid_host(sni)
                ipaddress.ip_address(host)
                host = original_ip  # an IP literal is no server name (RFC 6066 3)
            except BadRequest:
                host = original_ip
            except ValueError:
                pass
        url = http1.tls_url(host, port)
        dest_ip, why = await self._destination(host, original_ip)
        evaluation = self._judge_safely("CONNECT", url, {}, dest_ip or "")
        record = self._record("CONNECT", url, host, port, dest_ip, client, evaluation)
        if evaluation.outcome not in ALLOWING:
            self._emit(record, 403, "denied by policy")
            client.writer.write(ALERT_ACCESS_DENIED)
            await client.writer.drain()
            return
        if dest_ip is None:
            self._emit(record, 502, why)
            return
        upstream = await self._connect(client, dest_ip, port, record)
        if upstream is None or not self._emit(record, 200, "tunnel"):
            return
        upstream.writer.write(seen)
        await self._tunnel(client, upstream)

    async def _serve_http(self, client: _Client, prefix: bytes) -> None:
        """Requests one after the other (keep-alive) until either side closes."""
        agent = client.http = self.limits.peer(h11.SERVER)
        if prefix:
            agent.receive(prefix)
        while True:
            client.method = b""
            try:
                async with asyncio.timeout(self.limits.idle_timeout):
                    event = await _next_event(agent, client.reader)
                    if type(event) is not h11.Request:
                        return  # the client closed between requests
                    client.method = event.method
                    head = agent.request_head(event)
                    request = http1.interpret(head, client.original)
                    if not request.has_body:
                        early = [agent.next_event()]  # its EndOfMessage; no I/O
                    elif request.expect_continue:
                        early = []
                    else:
                        early = await self._early_body(client, request)
            except BadRequest as bad:
                await self._refuse_malformed(client, bad)
                return
            if not await self._handle(client, head, request, early) or not agent.next_cycle():
                return

    async def _early_body(self, client: _Client, request: Request) -> list[Any]:
        """The body events read before anything goes upstream. A chunked body: its first chunk
        and whatever else has already arrived, so that malformed framing the client sent with
        its head (a chunk size over 15 hex digits, a chunk without its CRLF) is refused before
        the upstream sees a byte. A Content-Length body: nothing (h11 counts it as it goes)."""
        agent = client.http
        assert agent is not None
        if not request.chunked:
            return []
        events = [await _next_event(agent, client.reader)]
        while type(events[-1]) is not h11.EndOfMessage:
            event = agent.next_event()
            if event is h11.NEED_DATA:
                break
            events.append(event)
        return events

    # -- deciding ----------------------------------------------------------------------------

    async def _destination(self, host: str, preferred: str | None) -> tuple[str | None, str]:
        """The one address the proxy will connect to for ``host``, or (None, why not)."""
        if ":" in host or host[-1:].isdigit():  # else no IP literal (saves raising)
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

    def _judge_safely(
        self, method: str, url: str, headers: dict[str, str], dest_ip: str
    ) -> Evaluation:
        try:
            evaluation = self._judge(method, url, headers, dest_ip)
        except Exception as exc:  # INVARIANT: an error while judging denies (fail closed)
            log.warning("egress proxy: judge failed on %s %s: %r", method, url, exc)
            return _fail_closed(url, f"error while judging: {exc!r}")
        if not isinstance(evaluation, Evaluation) or evaluation.outcome not in OUTCOME_RANK:
            return _fail_closed(url, f"judge returned {evaluation!r}")
        return evaluation

    def _record(
        self,
        method: str,
        url: str,
        host: str,
        port: int,
        dest_ip: str | None,
        client: _Client,
        evaluation: Evaluation | None,
    ) -> dict[str, Any]:
        return {
            "method": method,
            "url": url,
            "host": host,
            "port": port,
            "dest_ip": dest_ip or "",
            "dest": f"{http1.url_host(dest_ip)}:{port}" if dest_ip else "",
            "mode": client.mode,
            "client": client.peer,
            "evaluation": evaluation,
            "outcome": evaluation.outcome if evaluation is not None else "block",
            "status": None,
            "reason": "",
        }

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

    async def _handle(
        self, client: _Client, head: RequestHead, request: Request, early: list[Any]
    ) -> bool:
        """Judge and serve one request; True when the client connection stays open."""
        headers = head.lowered()
        headers.pop("proxy-authorization", None)
        preferred = client.original[0] if client.original is not None else None
        dest_ip, why = await self._destination(request.host, preferred)
        evaluation = self._judge_safely(request.method, request.url, headers, dest_ip or "")
        record = self._record(
            request.method, request.url, request.host, request.port, dest_ip, client, evaluation
        )
        if evaluation.outcome not in ALLOWING:
            self._emit(record, 403, "denied by policy")
            return await self._deny(client, request, evaluation)
        if dest_ip is None:
            self._emit(record, 502, why)
            return await self._simple(client, request, 502, f"agentd: {why}\n")
        upstream = await self._connect(client, dest_ip, request.port, record, request)
        if upstream is None:
            return await self._simple(client, request, 502, f"agentd: {record['reason']}\n")
        if not self._emit(
            record, 200 if request.connect else None, "tunnel" if request.connect else "forwarded"
        ):
            client.drop_upstream()
            return await self._deny(
                client, request, _fail_closed(request.url, "the decision could not be recorded")
            )
        if request.connect:
            assert client.http is not None
            client.writer.write(
                client.http.send(
                    h11.Response(status_code=200, reason=b"Connection Established", headers=[])
                )
            )
            leftover = client.http.leftover()  # what the client sent after its CONNECT
            if leftover:
                upstream.writer.write(leftover)
            await self._tunnel(client, upstream)
            return False
        return await self._forward(client, head, request, record, early)

    async def _connect(
        self,
        client: _Client,
        dest_ip: str,
        port: int,
        record: dict[str, Any],
        request: Request | None = None,
    ) -> _Upstream | None:
        key = (dest_ip, port)
        reusable = request is not None and not request.connect
        if reusable and client.upstream is not None:
            if client.upstream.key == key and not client.upstream.reader.at_eof():
                client.reused = True
                return client.upstream
        client.drop_upstream()
        client.reused = False
        try:
            async with asyncio.timeout(self.limits.connect_timeout):
                up_reader, up_writer = await asyncio.open_connection(
                    dest_ip, port, limit=self.limits.max_header_bytes
                )
        except (OSError, TimeoutError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "timeout"
            self._emit(record, 502, f"upstream {record['dest']} unreachable: {why}")
            return None
        up_writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.upstream = _Upstream(key, up_reader, up_writer, self.limits.peer(h11.CLIENT))
        return client.upstream

    async def _deny(self, client: _Client, request: Request, evaluation: Evaluation) -> bool:
        ids = ", ".join(evaluation.pattern_ids) or "none"
        message = evaluation.message or evaluation.reason
        body = (
            f"agentd: {request.method} {request.url} denied by policy "
            f"({evaluation.outcome})\npattern: {ids}\n{message}\n"
        )
        extra = {"X-Agentd-Pattern": _clean(ids), "X-Agentd-Outcome": _clean(evaluation.outcome)}
        if message:
            extra["X-Agentd-Message"] = _clean(message)
        return await self._simple(client, request, 403, body, extra)

    async def _simple(
        self,
        client: _Client,
        request: Request | None,
        status: int,
        body: str,
        extra: Mapping[str, str] | None = None,
    ) -> bool:
        """A response of the proxy's own; keeps the connection when no request body is unread."""
        keep = (
            request is not None
            and request.keep_alive
            and not request.has_body
            and not request.connect
        )
        payload = body.encode("utf-8", "replace")
        headers = [
            (b"Content-Type", b"text/plain; charset=utf-8"),
            (b"Content-Length", b"%d" % len(payload)),
            (b"Connection", b"keep-alive" if keep else b"close"),
        ]
        headers += [
            (name.encode("ascii"), value.encode("ascii")) for name, value in (extra or {}).items()
        ]
        agent = client.http
        assert agent is not None
        try:
            data = agent.send(
                h11.Response(status_code=status, headers=headers, reason=_PHRASES.get(status, b""))
            )
            if client.method != b"HEAD":
                data += agent.send(h11.Data(data=payload))
            data += agent.send(_END_OF_MESSAGE)
        except h11.LocalProtocolError as exc:  # no answer fits where the exchange stands
            log.warning("egress proxy: cannot answer %d to %s: %s", status, client.peer, exc)
            return False
        client.writer.write(data)
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
                    chunk = await client.reader.read(_READ)
                    if not chunk:
                        break
                    drained += len(chunk)
        except (OSError, TimeoutError):
            pass

    async def _refuse_malformed(self, client: _Client, bad: BadRequest) -> None:
        record = self._record("", "", "", 0, None, client, None)
        self._emit(record, bad.status, f"malformed request: {bad.reason}")
        await self._simple(client, None, bad.status, f"agentd: {bad.reason}\n")

    # -- relaying ----------------------------------------------------------------------------

    async def _forward(
        self,
        client: _Client,
        head: RequestHead,
        request: Request,
        record: dict[str, Any],
        early: list[Any],
    ) -> bool:
        agent = client.http
        assert agent is not None and client.upstream is not None
        outgoing = self._outgoing(client, head, request)
        client.answered = False
        if request.expect_continue:
            # Judged, allowed and connected: the client may send its body now. The upstream
            # is not asked (its own 100 would arrive only after the body).
            client.writer.write(
                agent.send(
                    h11.InformationalResponse(status_code=100, reason=b"Continue", headers=[])
                )
            )
            try:
                early = await self._early_body(client, request)
            except BadRequest as bad:
                client.drop_upstream()
                await self._refuse_malformed(client, bad)
                return False
        for attempt in (1, 2):
            upstream = client.upstream
            assert upstream is not None
            try:
                # The body too: an upstream that answers early and closes must not make the
                # client's request vanish without an answer.
                await self._send_request(client, upstream, outgoing, early)
                return await self._relay_response(client)
            except BadRequest as bad:  # the agent's body, read while relaying it
                client.drop_upstream()
                await self._refuse_malformed(client, bad)
                return False
            except (ConnectionError, _UpstreamBroken) as exc:
                stale = (
                    client.reused
                    and not client.answered
                    and not request.has_body
                    and isinstance(exc, ConnectionError)
                )
                client.drop_upstream()
                if client.answered:
                    raise _UpstreamBroken(str(exc)) from None
                if stale and attempt == 1:
                    # The kept-alive upstream closed while idle: same judged address, once more.
                    key = upstream.key
                    if await self._connect(client, key[0], key[1], record, request) is not None:
                        continue
                await self._simple(client, request, 502, f"agentd: upstream failed: {exc!r}\n")
                return False
        return False

    @staticmethod
    def _outgoing(client: _Client, head: RequestHead, request: Request) -> h11.Request:
        """The request as it goes upstream: origin-form; ``Host`` from the URL (explicit mode)
        or as sent (transparent); hop-by-hop fields and ``Expect`` removed."""
        host_value = head.get("host") if client.original is not None else None
        if not host_value:
            host_value = http1.url_host(request.host) + (
                "" if request.port == 80 else f":{request.port}"
            )
        host_field = (b"Host", host_value.encode("latin-1"))
        raw = list(head.raw)
        kept = http1.forwarded_fields(raw, _NOT_FORWARDED)
        if (
            request.version == "HTTP/1.1"
            and head.h11_headers is not None
            and raw
            and raw[0] == host_field
            and len(kept) == len(raw) - 1
        ):
            # exactly what the agent sent (Host first, nothing removed): h11's header list
            # as it read it, which h11 need not validate again
            return h11.Request(method=head.method, target=request.path, headers=head.h11_headers)
        fields = [host_field, *kept]
        if request.version == "HTTP/1.0":
            fields.append((b"Connection", b"close"))
        return h11.Request(method=head.method, target=request.path, headers=fields)

    async def _send_request(
        self, client: _Client, upstream: _Upstream, outgoing: h11.Request, early: list[Any]
    ) -> None:
        """The request head and its body to the upstream. h11 frames what goes out: a chunked
        body goes on chunked with h11's chunk sizes, never the agent's."""
        agent, peer = client.http, upstream.http
        assert agent is not None
        out = [peer.send(outgoing)]
        queue = list(early)
        while True:
            event = queue.pop(0) if queue else agent.next_event()
            if event is h11.NEED_DATA:
                upstream.writer.write(b"".join(out))
                out.clear()
                await upstream.writer.drain()
                agent.receive(await client.reader.read(_READ))
            else:
                # Data, then EndOfMessage (a chunked body's trailers with it) go on as read:
                # the upstream's h11 writes their framing (an event carries only the bytes;
                # h11's writers ignore where the agent's chunks began and ended)
                out.append(peer.send(event))
                if type(event) is not h11.Data:
                    break
        upstream.writer.write(b"".join(out))
        await upstream.writer.drain()

    async def _relay_response(self, client: _Client) -> bool:
        """The upstream's answer to the agent, read and written by h11 (1xx, head, body,
        trailers); bytes go out whenever the upstream makes the proxy wait. True: the agent's
        connection may carry another request."""
        agent, upstream = client.http, client.upstream
        assert agent is not None and upstream is not None
        peer = upstream.http
        out: list[bytes] = []
        received = False
        while True:
            try:
                event = peer.next_event()
            except BadRequest as bad:
                raise _UpstreamBroken(bad.reason) from None
            kind = type(event)
            if kind is h11.Data:  # the bytes as read; the agent's h11 writes their framing
                out.append(agent.send(event))
            elif event is h11.NEED_DATA:
                if out:
                    client.writer.write(b"".join(out))
                    out.clear()
                    await client.writer.drain()
                data = await upstream.reader.read(_READ)
                if not data and not received:
                    raise _UpstreamClosed("the upstream closed without answering")
                received = True
                peer.receive(data)
            elif kind is h11.Response or kind is h11.InformationalResponse:
                # InformationalResponse: 100, 103 (h11 refuses an unasked 101)
                client.answered = client.answered or kind is h11.Response
                out.append(
                    agent.send(
                        kind(
                            status_code=event.status_code,
                            reason=event.reason,
                            headers=_forwarded_headers(event.headers),
                        )
                    )
                )
            elif kind is h11.EndOfMessage:
                # trailers go on to a client that can take them (HTTP/1.0 has no chunked)
                out.append(
                    agent.send(
                        event
                        if not event.headers or agent.conn.their_http_version == b"1.1"
                        else _END_OF_MESSAGE
                    )
                )
                break
            else:
                raise _UpstreamBroken(f"unexpected {kind.__name__} from the upstream")
        client.writer.write(b"".join(out))
        await client.writer.drain()
        client.answered = False
        if not peer.next_cycle():
            client.drop_upstream()
        return True

    async def _tunnel(self, client: _Client, upstream: _Upstream) -> None:
        client.upstream = None  # the tunnel owns it now
        try:
            await asyncio.gather(
                _pump(client.reader, upstream.writer), _pump(upstream.reader, client.writer)
            )
        finally:
            upstream.writer.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(_READ):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()
