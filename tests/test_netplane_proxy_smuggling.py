"""Request smuggling against the egress proxy (agentd/netplane/proxy): every request whose framing
two parsers could read differently is refused with 400, recorded, and never forwarded.

The proxy runs on 127.0.0.1 in explicit mode, in front of the recording HTTP server of
tests/test_netplane_proxy.py. For each case the test sends the raw bytes, reads what the client
gets back (a 400), looks at the proxy's record (status 400, no evaluation, ``malformed request:``)
and at the upstream, which must have seen no connection at all, hence no byte. Each case also
carries a smuggled second request, ``GET /admin``, which the judge would refuse: had the proxy
and the upstream disagreed on where the first request ends, the upstream would have seen it.
"""

from __future__ import annotations

import socket
import time

import pytest

# the proxy's fixtures (upstream, judge, decisions, proxy) are test_netplane_proxy's own
from test_netplane_proxy import (  # noqa: F401 - fixtures are used by name
    LOCAL,
    decisions,
    judge,
    proxy,
    raw_exchange,
    upstream,
    via_proxy,
)

SMUGGLED = b"GET http://upstream.test/admin HTTP/1.1\r\nHost: upstream.test\r\n\r\n"


def request(fields: bytes, body: bytes = b"") -> bytes:
    """A GET with a body, which the judge allows (so a request the proxy took for well framed
    would reach the upstream), with ``fields`` (CRLF-terminated lines) and ``body`` after the
    head; ``{port}`` is filled in by the test."""
    return (b"GET http://upstream.test:{port}/upload HTTP/1.1\r\nHost: upstream.test\r\n"
            + fields + b"\r\n" + body)


CASES = {
    # -- the length of the body, told two ways --------------------------------------------------
    "cl_and_te": request(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                      b"0\r\n\r\n" + SMUGGLED),
    "te_and_cl": request(b"Transfer-Encoding: chunked\r\nContent-Length: 70\r\n",
                      b"0\r\n\r\n" + SMUGGLED),
    "two_content_lengths": request(b"Content-Length: 5\r\nContent-Length: 70\r\n",
                                b"hello" + SMUGGLED),
    "content_length_list": request(b"Content-Length: 5, 70\r\n", b"hello" + SMUGGLED),
    "content_length_signed": request(b"Content-Length: +5\r\n", b"hello" + SMUGGLED),
    "content_length_hex": request(b"Content-Length: 0x5\r\n", b"hello" + SMUGGLED),
    # -- line ends and folding ------------------------------------------------------------------
    "obs_fold": request(b"X-Note: a\r\n folded\r\nContent-Length: 5\r\n", b"hello"),
    "obs_fold_tab_te": request(b"X-Note: a\r\n\tTransfer-Encoding: chunked\r\n"
                               b"Content-Length: 5\r\n", b"0\r\n\r\n" + SMUGGLED),
    "bare_lf_everywhere": (b"GET http://upstream.test:{port}/upload HTTP/1.1\nHost: upstream.test\n"
                           b"Content-Length: 5\n\nhello" + SMUGGLED),
    "bare_lf_one_line": request(b"X-Note: a\nContent-Length: 5\r\n", b"hello" + SMUGGLED),
    "bare_cr": request(b"X-Note: a\rContent-Length: 70\r\n", b"hello" + SMUGGLED),
    # -- chunk sizes ----------------------------------------------------------------------------
    "chunk_size_2_to_64": request(b"Transfer-Encoding: chunked\r\n",
                               b"10000000000000005\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "chunk_size_16_digits": request(b"Transfer-Encoding: chunked\r\n",
                                 b"fffffffffffffff5\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "chunk_size_32_digits": request(b"Transfer-Encoding: chunked\r\n",
                                 b"f" * 32 + b"\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "chunk_size_negative": request(b"Transfer-Encoding: chunked\r\n",
                                b"-5\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "chunk_without_crlf": request(b"Transfer-Encoding: chunked\r\n",
                               b"5\r\nhelloXX0\r\n\r\n" + SMUGGLED),
    "chunk_size_bare_lf": request(b"Transfer-Encoding: chunked\r\n",
                               b"5\nhello\r\n0\r\n\r\n" + SMUGGLED),
    # -- Transfer-Encoding the proxy cannot frame -----------------------------------------------
    "te_xchunked": request(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n" + SMUGGLED),
    "te_chunked_identity": request(b"Transfer-Encoding: chunked, identity\r\n",
                                b"0\r\n\r\n" + SMUGGLED),
    "te_gzip_chunked": request(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n" + SMUGGLED),
    "te_twice": request(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                     b"0\r\n\r\n" + SMUGGLED),
    "te_space_before_colon": request(b"Transfer-Encoding : chunked\r\nContent-Length: 5\r\n",
                                  b"0\r\n\r\n" + SMUGGLED),
    "te_vertical_tab": request(b"Transfer-Encoding:\x0bchunked\r\n", b"0\r\n\r\n" + SMUGGLED),
    # -- heads the upstream could read otherwise ------------------------------------------------
    "no_host_http11": (b"GET http://upstream.test:{port}/ HTTP/1.1\r\nContent-Length: 70\r\n\r\n"
                       + SMUGGLED),
    "two_hosts": request(b"Host: forbidden.test\r\nContent-Length: 5\r\n", b"hello"),
    "nul_in_field": request(b"X-Note: a\x00b\r\nContent-Length: 5\r\n", b"hello"),
    "http_2_0": (b"GET http://upstream.test:{port}/ HTTP/2.0\r\nHost: upstream.test\r\n\r\n"
                 + SMUGGLED),
    "double_space": (b"GET  http://upstream.test:{port}/ HTTP/1.1\r\nHost: upstream.test\r\n\r\n"
                     + SMUGGLED),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_smuggling_attempt_is_refused_recorded_and_never_forwarded(case, proxy, upstream, judge,
                                                                   decisions):
    reply = raw_exchange(proxy.address, CASES[case].replace(b"{port}", b"%d" % upstream.port))
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    assert b"Connection: close" in reply.split(b"\r\n\r\n")[0]
    assert reply.count(b"HTTP/1.1 ") == 1            # one answer: nothing after it was read
    time.sleep(0.05)                                   # anything forwarded would be in by now
    assert upstream.connections == 0 and upstream.seen == []
    assert judge.calls == []
    assert len(decisions) == 1, decisions
    record = decisions[0]
    assert record["status"] == 400 and record["evaluation"] is None
    assert record["outcome"] == "block" and record["reason"].startswith("malformed request: ")
    assert record["mode"] == "explicit" and record["client"].startswith(f"{LOCAL}:")


def test_proxy_serves_on_after_refusing(proxy, upstream, decisions):
    for case in ("cl_and_te", "chunk_size_2_to_64", "bare_lf_everywhere"):
        raw_exchange(proxy.address, CASES[case].replace(b"{port}", b"%d" % upstream.port))
    conn, response, body = via_proxy(proxy, "GET", f"http://upstream.test:{upstream.port}/after")
    conn.close()
    assert response.status == 200 and [s["path"] for s in upstream.seen] == ["/after"]
    assert [d["status"] for d in decisions] == [400, 400, 400, None]


def test_a_second_request_on_the_connection_is_judged_on_its_own(proxy, upstream, judge):
    """What follows a complete request is the next request, parsed and judged by itself: the
    smuggled GET /admin is refused (403) and the upstream sees only the first."""
    first = (f"GET http://upstream.test:{upstream.port}/ok HTTP/1.1\r\nHost: upstream.test\r\n"
             f"Content-Length: 0\r\n\r\n").encode()
    reply = raw_exchange(proxy.address, first + SMUGGLED.replace(
        b"upstream.test/", b"upstream.test:%d/" % upstream.port))
    assert reply.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 403 " in reply
    assert [s["path"] for s in upstream.seen] == ["/ok"]
    assert [call[1] for call in judge.calls] == [
        f"http://upstream.test:{upstream.port}/ok",
        f"http://upstream.test:{upstream.port}/admin"]


def test_chunked_body_goes_on_in_h11s_framing(proxy, upstream):
    """A valid chunked body with extensions and odd chunk sizes reaches the upstream chunked
    again, with sizes h11 wrote: the agent's own chunk-size lines never pass through."""
    sent = request(b"Transfer-Encoding: chunked\r\nConnection: close\r\n",
                   b"00003;ext=1\r\nabc\r\n2 \r\nde\r\n0\r\n\r\n")
    reply = raw_exchange(proxy.address, sent.replace(b"{port}", b"%d" % upstream.port))
    assert reply.startswith(b"HTTP/1.1 200 ")
    seen = upstream.seen[0]
    assert seen["method"] == "GET" and seen["headers"]["transfer-encoding"] == "chunked"
    assert seen["body"] == b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"


def _finish(conn: socket.socket) -> bytes:
    """Close our sending side and read the proxy's answer to its end."""
    conn.shutdown(socket.SHUT_WR)
    reply = b""
    while chunk := conn.recv(65536):
        reply += chunk
    return reply


def test_malformed_chunk_later_in_a_streamed_body(proxy, upstream, decisions):
    """A chunk that turns out malformed after the body began to stream: the upstream connection is
    cut mid-body (it saw a truncated body, never a second request), the client gets a 400, and
    the request has two records: forwarded, then malformed."""
    with socket.create_connection(proxy.address, timeout=5) as conn:
        conn.sendall(request(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n")
                     .replace(b"{port}", b"%d" % upstream.port))
        time.sleep(0.2)                                  # judged, connected, first chunk sent
        conn.sendall(b"10000000000000005\r\nworld\r\n0\r\n\r\n" + SMUGGLED)
        reply = _finish(conn)
    assert reply.startswith(b"HTTP/1.1 400 ") and reply.count(b"HTTP/1.1 ") == 1
    time.sleep(0.1)
    # the test server records what it read until the proxy cut the connection: the first
    # chunk, re-framed by h11, and nothing after it
    assert upstream.connections == 1
    assert [(s["path"], s["body"]) for s in upstream.seen] == [("/upload", b"5\r\nhello\r\n")]
    assert [(d["status"], d["reason"].split(":")[0]) for d in decisions] == [
        (None, "forwarded"), (400, "malformed request")]


def test_expect_continue_then_malformed_chunk(proxy, upstream, decisions):
    """With Expect: 100-continue the body comes only after the proxy's 100, which follows the
    judging and the connect: the first chunk is still read and checked before the upstream gets
    a byte. The upstream sees a connection and nothing on it."""
    with socket.create_connection(proxy.address, timeout=5) as conn:
        conn.sendall(request(b"Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n")
                     .replace(b"{port}", b"%d" % upstream.port))
        assert conn.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        conn.sendall(b"10000000000000005\r\nhello\r\n0\r\n\r\n" + SMUGGLED)
        reply = _finish(conn)
    assert reply.startswith(b"HTTP/1.1 400 ") and reply.count(b"HTTP/1.1 ") == 1
    time.sleep(0.1)
    assert upstream.connections == 1 and upstream.seen == []
    assert [d["status"] for d in decisions] == [None, 400]
