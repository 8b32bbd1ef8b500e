"""The per-run DNS stub: answers the agent's queries through the host's resolver and remembers
which names resolved to which addresses, so a later ``connect()`` to an address can be named.

Owns ``NameBook`` (name <-> address memory with TTLs, bounded, thread-safe) and ``DnsStub`` (UDP
and TCP listeners; each query is parsed with dnspython, optionally judged by the caller, rebuilt
from its question alone and forwarded to an upstream nameserver; the upstream's answer is relayed
to the agent byte for byte apart from the message id). The stub knows no policy: a ``judge``
callable given by the caller may refuse a name (REFUSED, never forwarded), and every query,
answered or not, is reported to an ``on_query`` callable. Garbage never reaches the upstream and
never stops the stub: it is answered FORMERR (or NOTIMP, REFUSED) or dropped. Mechanism only; the
namespace that routes the agent's port 53 here lives in ``netns``.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import queue
import select
import selectors
import socket
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from agentd.trace.decide import Evaluation, Outcome, split_host_port

__all__ = [
    "NameBook",
    "DnsStub",
    "DnsStubError",
    "system_nameservers",
    "parse_upstream",
    "normalize_name",
    "warm_up",
    "MAX_QUERY_BYTES",
    "MAX_CNAME_CHAIN",
]

log = logging.getLogger("agentd.netplane.dns")

if TYPE_CHECKING:
    import dns.edns
    import dns.exception
    import dns.flags
    import dns.message
    import dns.name
    import dns.opcode
    import dns.rcode
    import dns.rdataclass
    import dns.rdatatype
    import dns.rdtypes.svcbbase


def warm_up() -> None:
    """Import dnspython now (the daemon, whose forked supervisors then find it imported)."""
    _dnspython()


def _dnspython() -> None:
    """Import dnspython, binding the module name ``dns`` here. Called before the first use, not
    at import: dnspython costs ~30-50 ms of imports, which a run that never resolves a name (most
    short commands) would pay at every start with the network plane (docs/network.md, "Cost").
    Imports are thread-safe; later calls cost a dictionary look-up per module."""
    global dns
    import dns.edns
    import dns.exception
    import dns.flags
    import dns.message
    import dns.name
    import dns.opcode
    import dns.rcode
    import dns.rdataclass
    import dns.rdatatype
    import dns.rdtypes.svcbbase


MAX_QUERY_BYTES = 2048  # a question plus EDNS padding fits in far less; more is not a query
MAX_MESSAGE_BYTES = 65535  # what one DNS message can be (TCP length prefix)
MAX_CNAME_CHAIN = 16  # longer chains (or loops) teach the book nothing
_UDP_PLAIN_LIMIT = 512  # a client without EDNS accepts no more over UDP (RFC 1035)
_UPSTREAM_PAYLOAD_CAP = 4096  # EDNS payload we let the upstream use for the agent's queries
_EDE_TEXT_MAX = 200


class DnsStubError(Exception):
    """The stub cannot be set up (no upstream, a forwarding loop)."""


def normalize_name(name: str | dns.name.Name) -> str:
    """``"API.GitHub.com."`` -> ``"api.github.com"``; the root is ``"."``. Odd bytes stay escaped
    (``\\.`` inside a label, ``\\200``), so an escaped name can never read as a different name."""
    _dnspython()
    if not isinstance(name, dns.name.Name):
        try:
            name = dns.name.from_text(name)
        except dns.exception.DNSException as exc:
            raise ValueError(f"not a domain name: {name!r}: {exc}") from None
    return name.to_text(omit_final_dot=True).lower()


def _address_key(ip: str) -> str:
    """The canonical text of an address; an IPv4-mapped IPv6 address becomes the IPv4 one."""
    text = str(ip).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    address = ipaddress.ip_address(text.split("%", 1)[0])  # ValueError for a non-address
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


class NameBook:
    """Which names the agent resolved to which addresses, for ``min_ttl``..``max_ttl`` seconds.

    One entry per (name, address). The TTL of an answer is clamped to the floor (a connect a few
    seconds after a TTL-0 answer must still find the name) and the ceiling (stale mappings do not
    live for days); a repeated answer never shortens an entry. Over ``max_entries`` the oldest
    learned entry goes first. ``clock`` is injectable for tests (``time.monotonic`` by default).
    """

    def __init__(
        self,
        *,
        min_ttl: float = 60.0,
        max_ttl: float = 3600.0,
        max_entries: int = 8192,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not 0 <= min_ttl <= max_ttl:
            raise ValueError(f"need 0 <= min_ttl <= max_ttl, got {min_ttl}, {max_ttl}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be positive, got {max_entries}")
        self.min_ttl = float(min_ttl)
        self.max_ttl = float(max_ttl)
        self.max_entries = int(max_entries)
        self._clock = clock
        self._lock = threading.Lock()
        # INVARIANT: _expiry holds every (name, address) pair, oldest learned first, and
        # _names/_addresses are exactly its two indexes (each in learning order, newest last).
        self._expiry: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._names: dict[str, dict[str, None]] = {}
        self._addresses: dict[str, dict[str, None]] = {}

    def remember(self, name: str, addresses: Iterable[str], ttl: float) -> None:
        """Learn that ``name`` resolved to ``addresses`` with this TTL (seconds)."""
        name = normalize_name(name)
        keys = list(dict.fromkeys(_address_key(address) for address in addresses))
        ttl = float(ttl)
        ttl = self.min_ttl if ttl != ttl else min(max(ttl, self.min_ttl), self.max_ttl)
        now = self._clock()
        with self._lock:
            self._purge_oldest(now)
            for address in keys:
                key = (name, address)
                expiry = max(now + ttl, self._expiry.pop(key, 0.0))
                self._expiry[key] = expiry
                names = self._names.setdefault(address, {})
                names.pop(name, None)
                names[name] = None
                addresses_of = self._addresses.setdefault(name, {})
                addresses_of.pop(address, None)
                addresses_of[address] = None
            while len(self._expiry) > self.max_entries:
                key, _ = self._expiry.popitem(last=False)
                self._unlink(key)

    def names_for(self, ip: str) -> tuple[str, ...]:
        """The live names that resolved to ``ip``, most recently learned first (``()`` if none).
        ``::ffff:1.2.3.4`` is looked up as ``1.2.3.4``; ValueError if ``ip`` is no address."""
        address = _address_key(ip)
        with self._lock:
            return self._live(self._names.get(address), lambda name: (name, address))

    def addresses_for(self, name: str) -> tuple[str, ...]:
        """The live addresses ``name`` resolved to, most recently learned first."""
        name = normalize_name(name)
        with self._lock:
            return self._live(self._addresses.get(name), lambda address: (name, address))

    def __len__(self) -> int:
        with self._lock:
            return len(self._expiry)

    def _live(self, index: dict[str, None] | None, key_of) -> tuple[str, ...]:
        if not index:
            return ()
        now = self._clock()
        live = []
        for item in list(index):
            key = key_of(item)
            if self._expiry[key] <= now:
                del self._expiry[key]
                self._unlink(key)
            else:
                live.append(item)
        return tuple(reversed(live))

    def _purge_oldest(self, now: float) -> None:
        # Cheap, partial: expired entries at the old end go; the rest go when looked up or evicted.
        while self._expiry:
            key, expiry = next(iter(self._expiry.items()))
            if expiry > now:
                return
            del self._expiry[key]
            self._unlink(key)

    def _unlink(self, key: tuple[str, str]) -> None:
        name, address = key
        for index, outer, inner in ((self._names, address, name), (self._addresses, name, address)):
            entries = index.get(outer)
            if entries is not None:
                entries.pop(inner, None)
                if not entries:
                    del index[outer]


def system_nameservers(path: str = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """The ``nameserver`` entries of a resolv.conf as (ip, 53) pairs, as resolv.conf(5) reads
    them: a line ``nameserver ADDRESS``, comments from ``#`` or ``;``, an IPv6 address with or
    without ``%scope``. Read here, not with dnspython's ``Resolver``: that would import dnspython
    at every start of a plane (see ``_dnspython``) for the one line format it needs."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise DnsStubError(f"{path}: no usable nameserver: {exc.strerror or exc}") from None
    servers = []
    for line in lines:
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        try:
            servers.append((str(ipaddress.ip_address(fields[1].partition("%")[0])), 53))
        except ValueError:
            log.warning("%s: nameserver %r is not an IP address; left out", path, fields[1])
    if not servers:
        raise DnsStubError(f"{path}: no nameserver line")
    return servers


def parse_upstream(text: str | None) -> list[tuple[str, int]] | None:
    """``--dns-upstream`` / ``dns_upstream:``: ``192.0.2.53,[2001:db8::53]:5353`` ->
    [(ip, port), ...], port 53 when none is given; None (no text) means the default.
    ValueError for a name or a bad port: the stub needs addresses."""
    if not text:
        return None
    servers = []
    for item in text.split(","):
        item = item.strip()
        host, port = split_host_port(item) or (item.strip("[]"), 53)
        ipaddress.ip_address(host)
        servers.append((host, port))
    return servers


class _Stopping(Exception):
    """The stub is closing: drop what is in hand."""


class _UpstreamFailure(Exception):
    """No usable answer from any upstream (timeout, refused, broken)."""


def _netns_cookie(sock: socket.socket | None) -> int | None:
    """The network namespace ``sock`` was made in (SO_NETNS_COOKIE, Linux 5.14), or of a
    socket made now when ``sock`` is None; None when the kernel cannot say (then every socket
    counts as this namespace's, so the loop check stays as strict as it was)."""
    so_netns_cookie = 71
    try:
        if sock is None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                return struct.unpack("Q", probe.getsockopt(socket.SOL_SOCKET, so_netns_cookie, 8))[
                    0
                ]
        return struct.unpack("Q", sock.getsockopt(socket.SOL_SOCKET, so_netns_cookie, 8))[0]
    except OSError:
        return None


def _sockaddr(ip: str, port: int, kind: int) -> tuple[int, tuple]:
    family, _, _, _, sockaddr = socket.getaddrinfo(ip, port, 0, kind, 0, socket.AI_NUMERICHOST)[0]
    return family, sockaddr


def _endpoint(sockaddr) -> str:
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class DnsStub:
    """A forwarding DNS stub on UDP and TCP for one run.

    ``listen``: (ip, port) pairs to bind, UDP and TCP on the same port (port 0 = any free one).
    ``sockets``: already bound sockets (UDP and/or TCP, e.g. made inside the agent's network
    namespace); the stub owns them from now on and closes them in ``close()``.
    ``upstream``: (ip, port) nameservers tried in order, each for ``timeout`` seconds (default:
    the nameservers of /etc/resolv.conf, read now). ``judge(name, qtype)`` may refuse a name:
    an ``Evaluation`` whose outcome is not allow/warn is answered REFUSED and never forwarded; an
    exception in it refuses too (fail closed). ``on_query(report)`` gets one dict per query.
    ``judge`` and ``on_query`` run on the stub's worker threads, up to ``workers`` at a time.
    """

    def __init__(
        self,
        listen: Sequence[tuple[str, int]] = (),
        *,
        sockets: Sequence[socket.socket] = (),
        upstream: Sequence[tuple[str, int]] | None = None,
        book: NameBook | None = None,
        judge: Callable[[str, str], Evaluation | None] | None = None,
        on_query: Callable[[dict], None] | None = None,
        timeout: float = 2.0,
        workers: int = 4,
        max_tcp_clients: int = 16,
        tcp_idle: float = 10.0,
        queue_size: int = 256,
    ):
        if not listen and not sockets:
            raise ValueError("DnsStub needs listen addresses or sockets")
        if workers < 1 or max_tcp_clients < 0 or timeout <= 0:
            raise ValueError("DnsStub: workers >= 1, max_tcp_clients >= 0, timeout > 0")
        self.book = book if book is not None else NameBook()
        self._judge = judge
        self._on_query = on_query
        self._timeout = float(timeout)
        self._workers_wanted = int(workers)
        self._max_tcp_clients = int(max_tcp_clients)
        self._tcp_idle = float(tcp_idle)
        self._udp: list[socket.socket] = []
        self._tcp: list[socket.socket] = []
        self._jobs: queue.Queue = queue.Queue(maxsize=queue_size)
        self._threads: list[threading.Thread] = []
        self._tcp_clients: dict[threading.Thread, socket.socket] = {}
        self._lock = threading.Lock()
        self._started = False
        self._closed = False
        self.dropped_busy = 0  # UDP queries dropped because every worker was busy
        self._stop_r = self._stop_w = -1
        try:
            for sock in sockets:
                self._adopt(sock)
            for ip, port in listen:
                self._bind_pair(ip, int(port))
            # An explicit empty list is a host without a resolver: every query gets SERVFAIL.
            servers = list(upstream) if upstream is not None else system_nameservers()
            self._upstream = [(str(ip), int(port)) for ip, port in servers]
            # A socket made in another network namespace (the agent's) cannot loop back to an
            # upstream that the stub asks from this one, even at the same address.
            here = _netns_cookie(None)
            own = {
                (_address_key(ip), port)
                for sock in self._udp + self._tcp
                if _netns_cookie(sock) == here
                for ip, port in [sock.getsockname()[:2]]
            }
            for ip, port in self._upstream:
                if (_address_key(ip), port) in own:
                    raise DnsStubError(f"upstream {ip}:{port} is the stub itself (a loop)")
            self._stop_r, self._stop_w = os.pipe()
        except BaseException:
            self._close_sockets()
            raise

    # -- life cycle -------------------------------------------------------------------------

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (ip, port) pairs, each once (UDP and TCP share them)."""
        seen: dict[tuple[str, int], None] = {}
        for sock in self._udp + self._tcp:
            if sock.fileno() >= 0:
                host, port = sock.getsockname()[:2]
                seen[(host, port)] = None
        return list(seen)

    @property
    def upstream(self) -> list[tuple[str, int]]:
        return list(self._upstream)

    def start(self) -> DnsStub:
        with self._lock:
            if self._started or self._closed:
                raise RuntimeError("DnsStub.start(): already started or closed")
            self._started = True
            threads = [threading.Thread(target=self._serve, name="agentd-dns-serve", daemon=True)]
            threads += [
                threading.Thread(target=self._work, name=f"agentd-dns-worker-{n}", daemon=True)
                for n in range(self._workers_wanted)
            ]
            self._threads = threads
        for thread in threads:
            thread.start()
        return self

    def close(self) -> None:
        """Stop serving, wait for every thread of the stub, close every socket. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = list(self._threads)
            clients = list(self._tcp_clients.items())
        if self._stop_w >= 0:
            os.write(self._stop_w, b"x")  # INVARIANT: never read: stays readable for every waiter
        for _ in threads[1:]:
            self._jobs.put(None)
        for _thread, conn in clients:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        # INVARIANT: the serving thread is joined first: it starts the TCP client threads, so
        # after it every client thread in the snapshot has been started and can be joined.
        for thread in threads + [thread for thread, _ in clients]:
            thread.join(self._timeout + 5.0)
            if thread.is_alive():
                log.error("dns stub: thread %s did not stop", thread.name)
        self._close_sockets()
        for fd in (self._stop_r, self._stop_w):
            if fd >= 0:
                os.close(fd)
        self._stop_r = self._stop_w = -1

    def __enter__(self) -> DnsStub:
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _adopt(self, sock: socket.socket) -> None:
        if sock.type == socket.SOCK_DGRAM:
            sock.setblocking(False)
            self._udp.append(sock)
        elif sock.type == socket.SOCK_STREAM:
            sock.listen(64)
            sock.setblocking(False)
            self._tcp.append(sock)
        else:
            raise ValueError(f"DnsStub: socket {sock!r} is neither UDP nor TCP")

    def _bind_pair(self, ip: str, port: int) -> None:
        family, sockaddr = _sockaddr(ip, port, socket.SOCK_DGRAM)
        for _attempt in range(20):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            tcp = socket.socket(family, socket.SOCK_STREAM)
            try:
                for sock in (udp, tcp):
                    if family == socket.AF_INET6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                udp.bind(sockaddr)
                # TCP takes the port UDP got, so one (ip, port) serves both.
                tcp.bind((sockaddr[0], udp.getsockname()[1]) + tuple(sockaddr[2:]))
            except OSError:
                udp.close()
                tcp.close()
                if port == 0:
                    continue  # the free UDP port was taken on TCP: try another one
                raise
            self._adopt(udp)
            self._adopt(tcp)
            return
        raise OSError(f"DnsStub: no port free for both UDP and TCP on {ip}")

    def _close_sockets(self) -> None:
        for sock in self._udp + self._tcp:
            sock.close()

    # -- threads ----------------------------------------------------------------------------

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        try:
            for sock in self._udp:
                selector.register(sock, selectors.EVENT_READ, "udp")
            for sock in self._tcp:
                selector.register(sock, selectors.EVENT_READ, "tcp")
            selector.register(self._stop_r, selectors.EVENT_READ, "stop")
            while True:
                for key, _ in selector.select():
                    if key.data == "stop":
                        return
                    ready = key.fileobj
                    assert isinstance(ready, socket.socket)  # only the stop pipe is a bare fd
                    if key.data == "udp":
                        self._read_udp(ready)
                    else:
                        self._accept(ready)
        except Exception:  # INVARIANT: logged, never silent; close() still cleans up
            log.exception("dns stub: serving thread failed")
        finally:
            selector.close()

    def _read_udp(self, sock: socket.socket) -> None:
        try:
            data, peer = sock.recvfrom(MAX_QUERY_BYTES + 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.debug("dns stub: recvfrom: %s", exc)
            return
        try:
            self._jobs.put_nowait((sock, data, peer))
        except queue.Full:
            # The client retries; one line per 1000 drops keeps a flood out of the log.
            if self.dropped_busy % 1000 == 0:
                log.warning(
                    "dns stub: busy, query from %s dropped (%d so far)",
                    _endpoint(peer),
                    self.dropped_busy + 1,
                )
            self.dropped_busy += 1

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            sock, data, peer = job
            if self._closed:
                continue
            reply = self._answer(data, "udp", peer)
            if reply is not None:
                try:
                    sock.sendto(reply, peer)
                except OSError as exc:
                    log.debug("dns stub: sendto %s: %s", _endpoint(peer), exc)

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, peer = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.debug("dns stub: accept: %s", exc)
            return
        with self._lock:
            if self._closed or len(self._tcp_clients) >= self._max_tcp_clients:
                conn.close()
                return
            thread = threading.Thread(
                target=self._serve_tcp, args=(conn, peer), name="agentd-dns-tcp", daemon=True
            )
            self._tcp_clients[thread] = conn
        thread.start()

    def _serve_tcp(self, conn: socket.socket, peer) -> None:
        try:
            conn.setblocking(False)
            while True:
                deadline = time.monotonic() + self._tcp_idle
                header = self._recv_exact(conn, 2, deadline, allow_eof=True)
                if not header:  # the client closed between messages
                    return
                (length,) = struct.unpack("!H", header)
                if length == 0 or length > MAX_QUERY_BYTES:
                    self._report_malformed(
                        "tcp", peer, "dropped", f"TCP message of {length} bytes: connection closed"
                    )
                    return
                data = self._recv_exact(conn, length, deadline)
                reply = self._answer(data, "tcp", peer)
                if reply is None:
                    return
                self._send_all(
                    conn, struct.pack("!H", len(reply)) + reply, time.monotonic() + self._tcp_idle
                )
        except (_Stopping, _UpstreamFailure, OSError) as exc:
            log.debug("dns stub: tcp client %s: %s", _endpoint(peer), exc)
        except Exception:
            log.exception("dns stub: tcp client %s", _endpoint(peer))
        finally:
            conn.close()
            with self._lock:
                self._tcp_clients.pop(threading.current_thread(), None)

    # -- waiting without spinning, always interruptible by close() --------------------------

    def _wait(self, sock: socket.socket, events: int, deadline: float) -> None:
        """Block until ``sock`` is ready; _Stopping on close(), _UpstreamFailure on timeout."""
        poller = select.poll()
        poller.register(sock.fileno(), events)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _UpstreamFailure("timed out")
            ready = poller.poll(remaining * 1000.0)
            fds = {fd for fd, _ in ready}
            if self._stop_r in fds:
                raise _Stopping()
            if fds:
                return

    def _recv_exact(
        self, sock: socket.socket, count: int, deadline: float, allow_eof: bool = False
    ) -> bytes:
        """``count`` bytes; with ``allow_eof``, b"" when the peer closed before the first one."""
        chunks, got = [], 0
        while got < count:
            self._wait(sock, select.POLLIN, deadline)
            try:
                chunk = sock.recv(count - got)
            except (BlockingIOError, InterruptedError):
                continue
            if not chunk:
                if allow_eof and got == 0:
                    return b""
                raise _UpstreamFailure("connection closed mid-message")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _send_all(self, sock: socket.socket, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            self._wait(sock, select.POLLOUT, deadline)
            try:
                sent = sock.send(view)
            except (BlockingIOError, InterruptedError):
                continue
            view = view[sent:]

    # -- one query ----------------------------------------------------------------------------

    def _answer(self, wire: bytes, transport: str, peer) -> bytes | None:
        report = _new_report(transport, peer)
        reply: bytes | None = None
        try:
            _dnspython()
            reply = self._answer_query(wire, transport, report)
        except _Stopping:
            report.update(rcode="dropped", reason="stub closing")
        except Exception as exc:  # INVARIANT: a bug costs one query, never the stub
            log.exception("dns stub: query from %s", report["client"])
            report.update(rcode="dropped", reason=f"internal error: {exc!r}")
        self._report(report)
        return reply

    def _report(self, report: dict) -> None:
        if self._on_query is None:
            return
        try:
            self._on_query(report)
        except Exception:
            log.exception("dns stub: on_query failed for %r", report.get("name"))

    def _report_malformed(self, transport: str, peer, rcode: str, reason: str) -> None:
        report = _new_report(transport, peer)
        report.update(rcode=rcode, reason=reason)
        self._report(report)

    def _answer_query(self, wire: bytes, transport: str, report: dict) -> bytes | None:
        if len(wire) < 12:
            report.update(rcode="dropped", reason=f"short packet ({len(wire)} bytes)")
            return None
        message_id, flags = struct.unpack_from("!HH", wire)
        if flags & dns.flags.QR:
            # INVARIANT: never answer an answer (no loops, no reflection between servers)
            report.update(rcode="dropped", reason="a response, not a query")
            return None
        if len(wire) > MAX_QUERY_BYTES:
            report.update(rcode="FORMERR", reason=f"oversize query ({len(wire)} bytes or more)")
            return _bare_error(message_id, flags, dns.rcode.FORMERR)
        try:
            query = dns.message.from_wire(wire)
        except Exception as exc:  # dnspython raises many kinds on garbage
            report.update(rcode="FORMERR", reason=f"malformed query: {exc}")
            return _bare_error(message_id, flags, dns.rcode.FORMERR)
        if query.opcode() != dns.opcode.QUERY:
            report.update(
                rcode="NOTIMP", reason=f"opcode {dns.opcode.to_text(query.opcode())} not served"
            )
            return _bare_error(message_id, flags, dns.rcode.NOTIMP)
        if len(query.question) != 1:
            report.update(rcode="FORMERR", reason=f"{len(query.question)} questions, not 1")
            return _bare_error(message_id, flags, dns.rcode.FORMERR)
        question = query.question[0]
        name = normalize_name(question.name)
        qtype = dns.rdatatype.to_text(question.rdtype)
        report.update(name=name, qtype=qtype)
        if question.rdclass != dns.rdataclass.IN:
            return self._refuse(
                query, report, None, f"class {dns.rdataclass.to_text(question.rdclass)} not served"
            )
        if dns.rdatatype.is_metatype(question.rdtype) and question.rdtype != dns.rdatatype.ANY:
            return self._refuse(query, report, None, f"query type {qtype} not served")
        if self._judge is not None:
            try:
                evaluation = self._judge(name, qtype)
            except Exception as exc:  # INVARIANT: an error while judging refuses (fail closed)
                evaluation = Evaluation(
                    "network_connect",
                    name,
                    "deny",
                    Outcome.BLOCK,
                    f"fail closed: error while judging the DNS query: {exc!r}",
                    ("agentd:fail_closed",),
                )
            report["evaluation"] = evaluation
            if evaluation is not None and evaluation.outcome not in ("allow", "warn"):
                return self._refuse(query, report, evaluation, evaluation.reason)
        return self._forward(query, transport, report)

    def _refuse(
        self, query: dns.message.Message, report: dict, evaluation: Evaluation | None, reason: str
    ) -> bytes:
        report.update(rcode="REFUSED", refused=True, reason=reason)
        response = dns.message.make_response(query, recursion_available=True)
        response.set_rcode(dns.rcode.REFUSED)
        if query.edns >= 0:
            # RFC 8914 "Prohibited", with the pattern that said no: dig and friends show it.
            text = "agentd: " + reason
            if evaluation is not None and evaluation.pattern_ids:
                text = (
                    f"agentd: {', '.join(evaluation.pattern_ids)}: {evaluation.message or reason}"
                )
            option = dns.edns.EDEOption(dns.edns.EDECode.PROHIBITED, text[:_EDE_TEXT_MAX])
            response.use_edns(0, 0, max(query.payload, _UDP_PLAIN_LIMIT), options=[option])
        return response.to_wire()

    def _forward(self, query: dns.message.Message, transport: str, report: dict) -> bytes:
        question = query.question[0]
        # INVARIANT: only the question, the RD/CD/AD flags, the DO bit and the payload size go
        # upstream; EDNS options and any other section of the agent's message stay here.
        outgoing = dns.message.make_query(question.name, question.rdtype, question.rdclass)
        outgoing.flags = query.flags & (dns.flags.RD | dns.flags.CD | dns.flags.AD)
        if query.edns >= 0:
            payload = min(max(query.payload, _UDP_PLAIN_LIMIT), _UPSTREAM_PAYLOAD_CAP)
            outgoing.use_edns(query.edns, query.ednsflags & dns.flags.DO, payload)
        out_wire = outgoing.to_wire()
        failures = []
        for ip, port in self._upstream:
            report["upstream"] = _endpoint((ip, port))
            deadline = time.monotonic() + self._timeout
            try:
                if transport == "tcp":
                    data, response = self._exchange_tcp(out_wire, outgoing, ip, port, deadline)
                else:
                    data, response = self._exchange_udp(out_wire, outgoing, ip, port, deadline)
                break
            except (_UpstreamFailure, OSError) as exc:
                failures.append(f"{_endpoint((ip, port))}: {exc or type(exc).__name__}")
        else:
            report.update(
                rcode="SERVFAIL",
                reason="upstream failed: " + "; ".join(failures)
                if failures
                else "no upstream nameserver on this host",
            )
            response = dns.message.make_response(query, recursion_available=True)
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        addresses, cnames, ttl = _learned(question.name, response)
        if addresses:
            assert ttl is not None  # _learned gives a TTL with every address
            # INVARIANT: learned before the agent sees the answer, so its connect finds the name.
            self.book.remember(report["name"], addresses, ttl)
        report.update(
            rcode=dns.rcode.to_text(response.rcode()), addresses=addresses, cnames=cnames, ttl=ttl
        )
        reply = struct.pack("!H", query.id) + data[2:]
        limit = max(query.payload, _UDP_PLAIN_LIMIT) if query.edns >= 0 else _UDP_PLAIN_LIMIT
        if transport == "udp" and len(reply) > limit:
            # The upstream ignored the size we asked for: say "truncated", the client uses TCP.
            short = dns.message.make_response(query, recursion_available=True)
            short.flags |= dns.flags.TC
            short.set_rcode(response.rcode())
            reply = short.to_wire()
        return reply

    def _exchange_udp(
        self, out_wire: bytes, outgoing: dns.message.Message, ip: str, port: int, deadline: float
    ) -> tuple[bytes, dns.message.Message]:
        family, sockaddr = _sockaddr(ip, port, socket.SOCK_DGRAM)
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect(sockaddr)  # only the upstream's address can answer
            sock.send(out_wire)
            while True:
                self._wait(sock, select.POLLIN, deadline)
                try:
                    data = sock.recv(MAX_MESSAGE_BYTES)
                except (BlockingIOError, InterruptedError):
                    continue
                except ConnectionRefusedError:
                    raise _UpstreamFailure("port unreachable") from None
                response = _matching_response(outgoing, data)
                if response is not None:
                    return data, response

    def _exchange_tcp(
        self, out_wire: bytes, outgoing: dns.message.Message, ip: str, port: int, deadline: float
    ) -> tuple[bytes, dns.message.Message]:
        family, sockaddr = _sockaddr(ip, port, socket.SOCK_STREAM)
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setblocking(False)
            error = sock.connect_ex(sockaddr)
            if error not in (0, errno.EINPROGRESS):
                raise OSError(error, os.strerror(error))
            self._wait(sock, select.POLLOUT, deadline)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, os.strerror(error))
            self._send_all(sock, struct.pack("!H", len(out_wire)) + out_wire, deadline)
            (length,) = struct.unpack("!H", self._recv_exact(sock, 2, deadline))
            data = self._recv_exact(sock, length, deadline)
            response = _matching_response(outgoing, data)
            if response is None:
                raise _UpstreamFailure("answer does not match the question")
            return data, response


def _new_report(transport: str, peer) -> dict:
    """The ``on_query`` report of one query, before anything is known about it."""
    return {
        "name": None,
        "qtype": None,
        "transport": transport,
        "client": _endpoint(peer),
        "rcode": None,
        "refused": False,
        "addresses": (),
        "cnames": (),
        "ttl": None,
        "evaluation": None,
        "upstream": None,
        "reason": "",
    }


def _matching_response(outgoing: dns.message.Message, data: bytes) -> dns.message.Message | None:
    """The upstream's answer to ``outgoing`` (id, QR and question checked), or None."""
    try:
        response = dns.message.from_wire(data)
    except Exception:
        return None
    return response if outgoing.is_response(response) else None


def _bare_error(message_id: int, flags: int, rcode: dns.rcode.Rcode) -> bytes:
    """An answer with no sections for a query we could not (or would not) read."""
    response = dns.message.Message(id=message_id)
    response.flags = dns.flags.QR | dns.flags.RA | (flags & dns.flags.RD)
    response.set_opcode(dns.opcode.from_flags(flags))
    response.set_rcode(rcode)
    return response.to_wire()


def _learned(
    qname: dns.name.Name, response: dns.message.Message
) -> tuple[tuple[str, ...], tuple[str, ...], int | None]:
    """(addresses, CNAME chain, TTL) the answer gives for the asked name: the chain is followed
    from ``qname`` only (records for other names are not believed), its smallest TTL counts."""
    if response.rcode() != dns.rcode.NOERROR:
        return (), (), None
    name, ttl = qname, None
    chain: list[dns.name.Name] = []
    for _ in range(MAX_CNAME_CHAIN + 1):
        rrset = response.get_rrset(response.answer, name, dns.rdataclass.IN, dns.rdatatype.CNAME)
        if rrset is None:
            break
        ttl = rrset.ttl if ttl is None else min(ttl, rrset.ttl)
        name = rrset[0].target
        if name in chain or name == qname or len(chain) >= MAX_CNAME_CHAIN:
            return (), tuple(normalize_name(n) for n in chain), None  # a loop or too long
        chain.append(name)
    addresses: list[str] = []
    for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        rrset = response.get_rrset(response.answer, name, dns.rdataclass.IN, rdtype)
        if rrset is not None:
            ttl = rrset.ttl if ttl is None else min(ttl, rrset.ttl)
            addresses += [rdata.address for rdata in rrset]
    for rdtype in (dns.rdatatype.HTTPS, dns.rdatatype.SVCB):
        # Address hints of HTTPS/SVCB records: clients may connect to them directly.
        rrset = response.get_rrset(response.answer, name, dns.rdataclass.IN, rdtype)
        if rrset is None:
            continue
        for rdata in rrset:
            for key in (
                dns.rdtypes.svcbbase.ParamKey.IPV4HINT,
                dns.rdtypes.svcbbase.ParamKey.IPV6HINT,
            ):
                param = rdata.params.get(key)
                if param is not None:
                    ttl = rrset.ttl if ttl is None else min(ttl, rrset.ttl)
                    addresses += [str(address) for address in param.addresses]
    unique = tuple(dict.fromkeys(_address_key(address) for address in addresses))
    return unique, tuple(normalize_name(n) for n in chain), (ttl if unique else None)
