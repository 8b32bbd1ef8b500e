"""Fuzz target: what the egress proxy parses (``agentd.netplane.proxy.http1`` and ``tls_sni``).

Feeds: request heads, random and mutated from real ones (absolute-form, origin-form with Host in
transparent mode, CONNECT; framing headers, folding, bare CR/LF, odd versions, long numbers),
into ``parse_request_head`` + ``interpret`` and, split at random points, into a ``Peer`` the way
the server reads a connection (every event to the end of the message); the upstream's responses
into a client-side ``Peer``; ClientHellos, random and mutated from a real one, into
``scan_client_hello`` (in random pieces, as they arrive) and the SNI it returns into
``valid_host``, as the transparent proxy does.

Asserts: HTTP parsing raises only ``BadRequest`` (status 400 or 431, a one-line reason); an
accepted request names a URL whose host passes ``valid_host`` again and a port in 1..65535;
``scan_client_hello`` never raises, asks only for more bytes than it has, and gives the same
answer however the bytes were split.
"""

from __future__ import annotations

import struct

import h11
from fuzz_settings import fuzz
from hypothesis import event, example, given
from hypothesis import strategies as st

from agentd.netplane.proxy import http1
from agentd.netplane.proxy.http1 import BadRequest, Peer, interpret, parse_request_head, valid_host
from agentd.netplane.proxy.tls_sni import client_hello_sni, scan_client_hello

HEADS = [
    b"GET http://example.com/a/../b?x=%41 HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: example.com:8080\r\nConnection: close\r\n\r\n",
    b"POST http://10.0.0.1:81/up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"POST http://h/ HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"PUT http://a.b/c HTTP/1.1\r\nHost: a.b\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
]
PIECES = st.sampled_from([b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b"\x00", b"\xff", b"%", b"..",
                          b"Content-Length: 9999999999999999999999999\r\n",
                          b"Content-Length: " + b"9" * 5000 + b"\r\n",
                          b"Transfer-Encoding: chunked\r\n", b"Host: a\r\nHost: b\r\n",
                          b"HTTP/2.0", b"http://", b"https://", b"[", b"]", b"@",
                          b"ffffffffffffffffffff\r\n", b"\r\n \r\n", b"Connection: host\r\n"])
ORIGINALS = st.one_of(st.none(), st.tuples(st.sampled_from(["192.0.2.1", "::1", "127.0.0.1"]),
                                           st.integers(1, 65535)))


def mutate(draw, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(out)))
        edit = draw(st.sampled_from(["insert", "delete", "flip", "piece"]))
        if edit == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif edit == "delete":
            del out[at:at + draw(st.integers(1, 10))]
        elif edit == "flip" and at < len(out):
            out[at] ^= draw(st.integers(1, 255))
        else:
            out[at:at] = draw(PIECES)
    return bytes(out)


@st.composite
def requests(draw) -> bytes:
    return mutate(draw, draw(st.sampled_from(HEADS)))


def check_request(request: http1.Request) -> None:
    assert 0 < request.port < 65536
    assert valid_host(request.host if ":" not in request.host else "127.0.0.1")
    assert request.url.startswith(("http://", "https://"))
    assert "\n" not in request.url and "\r" not in request.url


def check_head(data: bytes, original) -> None:
    try:
        head = parse_request_head(data)
        request = interpret(head, original)
    except BadRequest as bad:
        assert bad.status in (400, 431), bad.status
        assert bad.reason and "\n" not in bad.reason, bad.reason
        event(f"refused {bad.status}")
        return
    event("accepted")
    check_request(request)


def read_connection(data: bytes, cuts: list[int], original) -> None:
    """The server's loop over one connection: events until the end, split where ``cuts`` say."""
    peer = Peer(h11.SERVER)
    bounds = sorted({min(max(c, 0), len(data)) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)] + [b""]
    try:
        for chunk in chunks:
            peer.receive(chunk)
            while True:
                event = peer.next_event()
                if event is h11.NEED_DATA or type(event) in (h11.ConnectionClosed, h11.EndOfMessage):
                    break
                if type(event) is h11.Request:
                    check_request(interpret(peer.request_head(event), original))
            if type(event) in (h11.ConnectionClosed, h11.EndOfMessage):
                return
    except BadRequest as bad:
        assert bad.status in (400, 431) and "\n" not in bad.reason, bad


@fuzz(400)
@given(st.one_of(requests(), st.binary(max_size=200)), ORIGINALS)
@example(b"GET http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
         None)
@example(b"GET /x HTTP/1.1\r\nHost: [::1\r\n\r\n", ("::1", 80))
@example(b"GET http://[v1.x]/ HTTP/1.1\r\nHost: a\r\n\r\n", None)
def test_fuzz_request_heads(data, original):
    check_head(data, original)


@fuzz(200)
@given(requests(), st.lists(st.integers(0, 300), max_size=4), ORIGINALS)
def test_fuzz_requests_as_a_connection_delivers_them(data, cuts, original):
    read_connection(data, cuts, original)


RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
]


@fuzz(150)
@given(st.sampled_from(RESPONSES), st.data())
def test_fuzz_upstream_responses(response, data):
    wire = mutate(data.draw, response)
    peer = Peer(h11.CLIENT)
    peer.send(h11.Request(method="GET", target="/", headers=[("Host", "a")]))
    peer.send(h11.EndOfMessage())
    peer.receive(wire)
    peer.receive(b"")
    try:
        for _ in range(50):
            event = peer.next_event()
            if event is h11.NEED_DATA or type(event) in (h11.EndOfMessage, h11.ConnectionClosed):
                break
    except BadRequest as bad:
        assert bad.status in (400, 431) and "\n" not in bad.reason


# --- ClientHello ---------------------------------------------------------------------------------


def client_hello(sni: bytes | None, extra_extensions: bytes = b"") -> bytes:
    extensions = extra_extensions
    if sni is not None:
        entry = b"\x00" + struct.pack("!H", len(sni)) + sni
        body = struct.pack("!H", len(entry)) + entry
        extensions += struct.pack("!HH", 0, len(body)) + body
    hello = (b"\x03\x03" + b"\x11" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
             + struct.pack("!H", len(extensions)) + extensions)
    handshake = b"\x01" + len(hello).to_bytes(3, "big") + hello
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def scan_in_pieces(data: bytes, cuts: list[int], max_bytes: int) -> tuple[int, str | None]:
    """Feed ``data`` as the server does: what ``scan_client_hello`` asks for, at most what the
    cuts allow at a time; the final answer."""
    seen = b""
    marks = sorted({min(max(c, 1), len(data)) for c in cuts} | {len(data)})
    for mark in marks:
        while len(seen) < mark:
            need, sni = scan_client_hello(seen, max_bytes)
            assert need >= 0
            if need == 0:
                return need, sni
            assert need <= max_bytes + 5
            seen += data[len(seen):min(mark, len(seen) + need)]
    return scan_client_hello(seen, max_bytes)


@st.composite
def hellos(draw) -> bytes:
    sni = draw(st.one_of(st.none(), st.sampled_from([b"example.com", b"", b"a" * 300, b"\xff",
                                                    b"127.0.0.1", b"a..b", b"x\x00y"]),
                         st.binary(max_size=30)))
    extra = draw(st.sampled_from([b"", b"\x00\x10\x00\x00", b"\xff\xff\x00\x03abc"]))
    return mutate(draw, client_hello(sni, extra))


@fuzz(400)
@given(st.one_of(hellos(), st.binary(max_size=100)), st.lists(st.integers(0, 400), max_size=5),
       st.sampled_from([16384, 300, 64]))
@example(client_hello(b"example.com"), [], 16384)
@example(client_hello(b"example.com\x00evil.org"), [3, 50], 16384)
def test_fuzz_client_hellos(data, cuts, max_bytes):
    need, sni = scan_in_pieces(data, cuts, max_bytes)
    whole = scan_client_hello(data, max_bytes)
    if need == 0:
        assert whole == (0, sni)  # however the bytes arrived
    if sni is not None:
        assert isinstance(sni, str)
        try:
            valid_host(sni)
        except BadRequest as bad:
            assert bad.status == 400 and "\n" not in bad.reason


@fuzz(200)
@given(st.binary(max_size=120))
def test_fuzz_client_hello_messages(handshake):
    try:
        sni = client_hello_sni(b"\x01" + handshake)
    except ValueError as exc:
        assert "\n" not in str(exc)
        return
    assert sni is None or isinstance(sni, str)
