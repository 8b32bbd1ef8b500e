"""The egress proxy (agentd/netplane/proxy.py) against real servers on 127.0.0.1: what the
upstream HTTP server and the raw TCP echo server saw is the verdict."""

from __future__ import annotations

import http.client
import http.server
import os
import shutil
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from agentd.netplane import proxy as proxy_module
from agentd.netplane.proxy import (
    BadRequest,
    EgressProxy,
    client_hello_sni,
    normalise_path,
    original_destination,
    parse_authority,
    parse_request_head,
)
from agentd.trace.decide import Evaluation

LOCAL = "127.0.0.1"


# -- servers the proxy talks to ------------------------------------------------------------------

class Upstream:
    """An HTTP/1.1 server that records every request it saw."""

    def __init__(self):
        self.seen: list[dict] = []
        self.connections = 0
        seen = self.seen
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                outer.connections += 1
                super().setup()

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
                    # http.server does not decode chunked bodies; read the framing as relayed
                    # (a server that closed with it unread would reset the connection and the
                    # kernel could drop its own answer before the proxy read it)
                    while not body.endswith(b"0\r\n\r\n"):
                        line = self.rfile.readline()
                        if not line:
                            break
                        body += line
                seen.append({"method": self.command, "path": self.path,
                             "headers": {k.lower(): v for k, v in self.headers.items()},
                             "body": body})
                reply = f"ok {self.command} {self.path}".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(reply)))
                self.send_header("X-Upstream", "yes")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(reply)

            do_GET = do_POST = do_HEAD = do_PUT = _answer

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer((LOCAL, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Echo:
    """A raw TCP echo server that counts the connections it accepted."""

    def __init__(self):
        self.accepted = 0
        self.listener = socket.create_server((LOCAL, 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn):
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self):
        self.listener.close()



class Scripted:
    """A raw upstream that answers the requests of each connection with scripted bytes (one
    reply per request head, the last one then closes) and records the heads it read."""

    def __init__(self, *replies: bytes):
        self.replies = replies
        self.heads: list[bytes] = []
        self.listener = socket.create_server((LOCAL, 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                for reply in self.replies:
                    while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
                        data += chunk
                    head, _, data = data.partition(b"\r\n\r\n")
                    self.heads.append(head)
                    conn.sendall(reply)

    def close(self):
        self.listener.close()

# -- the judge: rules as data ------------------------------------------------------------------

DENY_RULES = (  # (pattern id, predicate on (method, url, headers), outcome, message)
    ("read_only_methods", lambda m, u, h: m not in ("GET", "HEAD", "CONNECT"), "block",
     "only GET and HEAD are allowed"),
    ("no_admin", lambda m, u, h: "/admin" in u, "block", "admin is off limits"),
    ("no_forbidden_host", lambda m, u, h: "forbidden.test" in u, "block", "host not allowed"),
    ("kill_exfil", lambda m, u, h: "/exfil" in u, "kill", "exfiltration"),
)


class Judge:
    def __init__(self):
        self.calls: list[tuple] = []

    def __call__(self, method, url, headers, dest_ip):
        self.calls.append((method, url, headers, dest_ip))
        for pattern_id, applies, outcome, message in DENY_RULES:
            if applies(method, url, headers):
                return Evaluation("network_request", url, "deny", outcome, message,
                                  (pattern_id,), message=message)
        return Evaluation("network_request", url, "allow", "allow", "allowed", ("web",))


NAMES = {"upstream.test": [LOCAL], "forbidden.test": [LOCAL], "echo.test": [LOCAL]}


def resolve(host):
    return list(NAMES.get(host, []))


@pytest.fixture
def upstream():
    server = Upstream()
    yield server
    server.close()


@pytest.fixture
def echo():
    server = Echo()
    yield server
    server.close()


@pytest.fixture
def judge():
    return Judge()


@pytest.fixture
def decisions():
    return []


@pytest.fixture
def proxy(judge, decisions):
    with EgressProxy((LOCAL, 0), judge=judge, resolve=resolve,
                     on_decision=decisions.append) as running:
        yield running


def raw_exchange(address, data: bytes, timeout=5.0) -> bytes:
    """Send ``data``, half-close, read until the proxy closes."""
    with socket.create_connection(address, timeout=timeout) as conn:
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def via_proxy(proxy, method, url, body=None, headers=None):
    conn = http.client.HTTPConnection(*proxy.address, timeout=5)
    conn.request(method, url, body=body, headers=headers or {})
    response = conn.getresponse()
    return conn, response, response.read()


# -- explicit mode ---------------------------------------------------------------------------------

def test_allowed_get_reaches_upstream_with_path(proxy, upstream, judge, decisions):
    url = f"http://upstream.test:{upstream.port}/data/x.json?q=1&r=two"
    conn, response, body = via_proxy(proxy, "GET", url,
                                      headers={"Proxy-Authorization": "Basic c2VjcmV0",
                                               "Authorization": "Bearer t", "X-Mine": "1"})
    conn.close()
    assert response.status == 200 and body == b"ok GET /data/x.json?q=1&r=two"
    assert len(upstream.seen) == 1
    seen = upstream.seen[0]
    assert seen["path"] == "/data/x.json?q=1&r=two"
    assert seen["headers"]["host"] == f"upstream.test:{upstream.port}"
    assert "proxy-authorization" not in seen["headers"]
    assert seen["headers"]["authorization"] == "Bearer t" and seen["headers"]["x-mine"] == "1"
    method, judged_url, headers, dest_ip = judge.calls[0]
    assert (method, judged_url, dest_ip) == ("GET", url, LOCAL)
    assert headers["authorization"] == "Bearer t" and "proxy-authorization" not in headers
    record = decisions[0]
    assert record["url"] == url and record["dest"] == f"{LOCAL}:{upstream.port}"
    assert record["status"] is None and record["evaluation"].outcome == "allow"
    assert record["mode"] == "explicit"


def test_denied_post_gets_403_and_upstream_sees_nothing(proxy, upstream, decisions):
    url = f"http://upstream.test:{upstream.port}/upload"
    conn, response, body = via_proxy(proxy, "POST", url, body=b"secret=1")
    conn.close()
    assert response.status == 403
    assert response.getheader("X-Agentd-Pattern") == "read_only_methods"
    assert response.getheader("Content-Type").startswith("text/plain")
    assert b"read_only_methods" in body and b"only GET and HEAD are allowed" in body
    assert upstream.seen == [] and upstream.connections == 0
    assert decisions[0]["status"] == 403 and decisions[0]["method"] == "POST"


def test_keep_alive_judges_every_request(proxy, upstream, judge):
    conn = http.client.HTTPConnection(*proxy.address, timeout=5)
    base = f"http://upstream.test:{upstream.port}"
    statuses = []
    for path in ("/one", "/admin/panel", "/two", "/three"):
        conn.request("GET", base + path)
        response = conn.getresponse()
        response.read()
        statuses.append(response.status)
    conn.close()
    assert statuses == [200, 403, 200, 200]
    assert [s["path"] for s in upstream.seen] == ["/one", "/two", "/three"]
    assert [call[1] for call in judge.calls] == [base + p for p in
                                                 ("/one", "/admin/panel", "/two", "/three")]
    assert upstream.connections == 1     # one kept-alive upstream connection served all three


def test_paths_are_normalised_before_judging(proxy, upstream, judge):
    conn, response, _ = via_proxy(proxy, "GET",
                                  f"http://upstream.test:{upstream.port}/public/../%61dmin/x")
    conn.close()
    assert response.status == 403 and response.getheader("X-Agentd-Pattern") == "no_admin"
    assert judge.calls[0][1].endswith("/admin/x") and upstream.seen == []


def test_chunked_request_body_is_relayed(judge, decisions, upstream):
    with EgressProxy((LOCAL, 0), judge=lambda *a: Evaluation(
            "network_request", a[1], "allow", "allow", "ok"), resolve=resolve) as running:
        request = (f"PUT http://upstream.test:{upstream.port}/put HTTP/1.1\r\n"
                   f"Host: upstream.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                   "5\r\nhello\r\n0\r\n\r\n").encode()
        reply = raw_exchange(running.address, request)
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"ok PUT /put")
    # http.server does not decode chunked bodies; it saw the framing the proxy relayed
    assert upstream.seen[0]["headers"]["transfer-encoding"] == "chunked"


def test_connect_allowed_tunnels_both_ways(proxy, echo, decisions):
    with socket.create_connection(proxy.address, timeout=5) as conn:
        conn.sendall(f"CONNECT echo.test:{echo.port} HTTP/1.1\r\nHost: echo.test\r\n\r\n".encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += conn.recv(1)
        assert head.startswith(b"HTTP/1.1 200")
        for payload in (b"ping", b"x" * 100000):
            conn.sendall(payload)
            got = b""
            while len(got) < len(payload):
                got += conn.recv(65536)
            assert got == payload
    assert echo.accepted == 1
    assert decisions[0]["url"] == f"https://echo.test:{echo.port}/"
    assert decisions[0]["method"] == "CONNECT" and decisions[0]["status"] == 200


def test_connect_denied_never_connects(proxy, echo, decisions):
    # (an HTTP/1.1 CONNECT needs its Host field like any request: RFC 9112 3.2; without: 400)
    reply = raw_exchange(proxy.address, f"CONNECT forbidden.test:{echo.port} HTTP/1.1\r\n"
                                        f"Host: forbidden.test:{echo.port}\r\n\r\nhello".encode())
    assert reply.startswith(b"HTTP/1.1 403") and b"no_forbidden_host" in reply
    assert b"hello" not in reply
    time.sleep(0.1)
    assert echo.accepted == 0 and decisions[0]["status"] == 403


def test_kill_outcome_denies_and_is_reported(proxy, upstream, decisions):
    conn, response, body = via_proxy(proxy, "GET", f"http://upstream.test:{upstream.port}/exfil")
    conn.close()
    assert response.status == 403 and response.getheader("X-Agentd-Outcome") == "kill"
    assert decisions[0]["outcome"] == "kill" and upstream.seen == []


def test_judge_exception_fails_closed(upstream, decisions):
    def broken(*args):
        raise RuntimeError("policy exploded")

    with EgressProxy((LOCAL, 0), judge=broken, resolve=resolve,
                     on_decision=decisions.append) as running:
        conn, response, body = via_proxy(running, "GET", f"http://upstream.test:{upstream.port}/")
        conn.close()
    assert response.status == 403
    assert response.getheader("X-Agentd-Pattern") == "agentd:fail_closed"
    assert b"policy exploded" in body and upstream.seen == []
    assert decisions[0]["evaluation"].pattern_ids == ("agentd:fail_closed",)


def test_on_decision_failure_denies(upstream):
    def cannot_record(record):
        raise OSError("disk full")

    with EgressProxy((LOCAL, 0), judge=Judge(), resolve=resolve,
                     on_decision=cannot_record) as running:
        conn, response, _ = via_proxy(running, "GET", f"http://upstream.test:{upstream.port}/")
        conn.close()
    assert response.status == 403 and upstream.seen == []


def test_judged_address_is_the_connected_address(upstream):
    """resolve() is asked once; the proxy connects to the address it judged, not a new answer."""
    answers = iter([[LOCAL], ["127.0.0.2"], ["127.0.0.2"]])
    asked = []

    def rebinding(host):
        asked.append(host)
        return next(answers)

    judge = Judge()
    with EgressProxy((LOCAL, 0), judge=judge, resolve=rebinding) as running:
        conn, response, _ = via_proxy(running, "GET", f"http://rebind.test:{upstream.port}/a")
        conn.close()
    assert response.status == 200 and upstream.seen[0]["path"] == "/a"
    assert asked == ["rebind.test"] and judge.calls[0][3] == LOCAL


def test_quick_resolve_first_then_resolve(upstream):
    """quick_resolve (a NameBook look-up) answers on the loop; a miss goes to resolve."""
    asked = []

    def slow(host):
        asked.append(host)
        return [LOCAL]

    book = {"known.test": (LOCAL,)}
    judge = Judge()
    with EgressProxy((LOCAL, 0), judge=judge, resolve=slow, quick_resolve=book.get) as running:
        for name in ("known.test", "other.test"):
            conn, response, _ = via_proxy(running, "GET", f"http://{name}:{upstream.port}/q")
            conn.close()
            assert response.status == 200
    assert asked == ["other.test"] and [c[3] for c in judge.calls] == [LOCAL, LOCAL]


def test_connection_header_cannot_drop_framing(proxy, upstream):
    """``Connection: content-length`` must not make the body pass as a second, unjudged request."""
    smuggled = b"POST /admin HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    request = (f"GET http://upstream.test:{upstream.port}/ok HTTP/1.1\r\nHost: x\r\n"
               f"Connection: content-length\r\nContent-Length: {len(smuggled)}\r\n\r\n"
               ).encode() + smuggled
    reply = raw_exchange(proxy.address, request)
    assert reply.count(b"HTTP/1.1 200") == 1
    assert [(s["method"], s["path"], s["body"]) for s in upstream.seen] == [
        ("GET", "/ok", smuggled)]


def test_expect_continue_answered_after_judging(proxy, upstream):
    with socket.create_connection(proxy.address, timeout=5) as conn:
        conn.sendall(f"GET http://upstream.test:{upstream.port}/e HTTP/1.1\r\nHost: x\r\n"
                     "Expect: 100-continue\r\nContent-Length: 5\r\n\r\n".encode())
        assert conn.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        conn.sendall(b"hello")
        reply = b""
        while not reply.endswith(b"ok GET /e"):
            reply += conn.recv(65536)
    assert reply.startswith(b"HTTP/1.1 200") and upstream.seen[0]["body"] == b"hello"
    assert "expect" not in upstream.seen[0]["headers"]


def test_stale_kept_alive_upstream_is_reopened(judge):
    """An upstream that closes an idle kept-alive connection: the next GET is sent again once,
    on a new connection to the same judged address."""
    listener = socket.create_server((LOCAL, 0))
    accepted = []

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            conn.close()          # silently, without Connection: close

    threading.Thread(target=serve, daemon=True).start()
    port = listener.getsockname()[1]
    try:
        with EgressProxy((LOCAL, 0), judge=judge, resolve=resolve) as running:
            conn = http.client.HTTPConnection(*running.address, timeout=5)
            statuses = []
            for path in ("/1", "/2"):
                conn.request("GET", f"http://{LOCAL}:{port}{path}")
                response = conn.getresponse()
                response.read()
                statuses.append(response.status)
                time.sleep(0.1)
            conn.close()
    finally:
        listener.close()
    assert statuses == [200, 200] and len(accepted) == 2



def get(port, path, version="HTTP/1.1", method="GET", extra=""):
    host = "Host: x\r\n" if version == "HTTP/1.1" else ""
    return f"{method} http://{LOCAL}:{port}{path} {version}\r\n{host}{extra}\r\n".encode()


def test_response_framing_is_h11s(proxy):
    """h11 frames what the agent gets: a body delimited by the upstream's close goes on chunked
    (the connection stays usable); HEAD, 204 and chunked bodies with trailers keep their
    framing; 1xx answers are relayed before the final one."""
    closing = Scripted(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nhello world")
    pipelined = Scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
                         b"HTTP/1.1 204 No Content\r\n\r\n",
                         b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n"
                         b"Link: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                         b"\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n")
    try:
        reply = raw_exchange(proxy.address, get(closing.port, "/a") + get(closing.port, "/b"))
        assert reply == 2 * (b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"b\r\nhello world\r\n0\r\n\r\n")
        reply = raw_exchange(proxy.address, get(pipelined.port, "/h", method="HEAD")
                             + get(pipelined.port, "/n")
                             + get(pipelined.port, "/t", extra="Connection: close\r\n"))
        assert reply == (b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
                         b"HTTP/1.1 204 No Content\r\n\r\n"
                         b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n"
                         b"Link: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                         b"Connection: close\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n")
        assert [head.split(b"\r\n")[0] for head in pipelined.heads] == [
            b"HEAD /h HTTP/1.1", b"GET /n HTTP/1.1", b"GET /t HTTP/1.1"]
    finally:
        closing.close()
        pipelined.close()


def test_http10_client(proxy):
    """An HTTP/1.0 client: the request goes upstream as HTTP/1.1 with Connection: close, a
    chunked answer comes back delimited by closing, without its trailers."""
    chunked = Scripted(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n")
    try:
        reply = raw_exchange(proxy.address, get(chunked.port, "/old", version="HTTP/1.0"))
    finally:
        chunked.close()
    assert reply == b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello"
    assert chunked.heads == [f"GET /old HTTP/1.1\r\nHost: {LOCAL}:{chunked.port}\r\n"
                             "Connection: close".encode()]


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello",
    b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
    b"HTTP/2.0 200 OK\r\nContent-Length: 5\r\n\r\nhello",
])
def test_malformed_upstream_answer_is_502(proxy, answer):
    upstream = Scripted(answer)
    try:
        reply = raw_exchange(proxy.address, get(upstream.port, "/x"))
    finally:
        upstream.close()
    assert reply.startswith(b"HTTP/1.1 502 ") and b"hello" not in reply

def test_unreachable_upstream_502_and_unresolvable(proxy, decisions):
    closed = socket.socket()
    closed.bind((LOCAL, 0))
    port = closed.getsockname()[1]
    closed.close()
    conn, response, body = via_proxy(proxy, "GET", f"http://{LOCAL}:{port}/")
    assert response.status == 502
    conn.close()
    conn, response, body = via_proxy(proxy, "GET", "http://nowhere.test/")
    conn.close()
    assert response.status == 502 and b"cannot resolve nowhere.test" in body
    assert [d["status"] for d in decisions] == [502, 502]


@pytest.mark.parametrize("garbage", [
    b"\x00\x01\x02garbage\r\n\r\n",
    b"GET /relative HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET http://a b/ HTTP/1.1\r\n\r\n",
    b"GET http://user@upstream.test/ HTTP/1.1\r\n\r\n",
    b"GET http://2130706433/ HTTP/1.1\r\n\r\n",
    b"GET http://upstream.test/ HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
    b"GET http://upstream.test/ HTTP/1.1\r\nContent-Length: 1\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n",
    b"GET http://upstream.test/ HTTP/1.1\nHost: x\r\n\r\n",
    b"CONNECT upstream.test HTTP/1.1\r\n\r\n",
    b"half a request line",
])
def test_garbage_gets_400_and_proxy_keeps_serving(proxy, upstream, garbage, judge):
    reply = raw_exchange(proxy.address, garbage)
    assert reply.startswith(b"HTTP/1.1 400"), reply[:100]
    assert judge.calls == [] and upstream.seen == []
    conn, response, _ = via_proxy(proxy, "GET", f"http://upstream.test:{upstream.port}/after")
    conn.close()
    assert response.status == 200 and upstream.seen[0]["path"] == "/after"


def test_oversized_head_is_refused(proxy, upstream):
    huge = b"GET http://upstream.test/ HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n"
    reply = raw_exchange(proxy.address, huge)
    assert reply.startswith(b"HTTP/1.1 431") and upstream.seen == []


def test_policy_conditions_see_method_and_headers(upstream):
    """A real policy: allowed_methods and require_auth_header get what the proxy saw."""
    from agent_os.policy import Pattern, Policy
    from agentd.trace.decide import evaluate_action
    from agentd.trace.decode import Action

    policy = Policy(name="web", default_action="deny", patterns=[
        Pattern(id="api_with_auth", action_type="network_request",
                pattern=r"^http://upstream\.test:\d+/api/.*", action="allow",
                conditions={"allowed_methods": ["GET"], "require_auth_header": True})])

    def judge(method, url, headers, dest_ip):
        context = {"method": method, "headers": headers, "dest_ip": dest_ip}
        return evaluate_action(policy, Action("network_request", url), context)

    with EgressProxy((LOCAL, 0), judge=judge, resolve=resolve) as running:
        base = f"http://upstream.test:{upstream.port}/api/v1"
        statuses = []
        for method, headers in (("GET", {"Authorization": "Bearer x"}), ("GET", {}),
                                ("POST", {"Authorization": "Bearer x"})):
            conn, response, _ = via_proxy(running, method, base, body=b"" if method == "POST"
                                          else None, headers=headers)
            conn.close()
            statuses.append(response.status)
    assert statuses == [200, 403, 403]
    assert [s["method"] for s in upstream.seen] == ["GET"]


def test_close_leaves_no_thread(upstream):
    before = set(threading.enumerate())
    running = EgressProxy((LOCAL, 0), judge=Judge(), resolve=resolve).start()
    conn, response, _ = via_proxy(running, "GET", f"http://upstream.test:{upstream.port}/")
    idle = socket.create_connection(running.address)      # a connection left open
    assert response.status == 200
    running.close()
    idle.close()
    conn.close()
    leftover = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert leftover == []
    with pytest.raises(OSError):
        socket.create_connection(running.address, timeout=1)


def test_sockets_argument_and_ipv6(upstream):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    try:
        sock = socket.socket(socket.AF_INET6)
        sock.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"cannot bind ::1: {exc}")
    judge = Judge()
    with EgressProxy(sockets=[sock], judge=judge, resolve=resolve) as running:
        assert running.address[0] == "::1"
        conn, response, _ = via_proxy(running, "GET", f"http://upstream.test:{upstream.port}/v6")
        conn.close()
    assert response.status == 200 and upstream.seen[0]["path"] == "/v6"


# -- transparent mode ------------------------------------------------------------------------------

def fake_redirect(table):
    """An original-destination lookup for tests: client port -> where it was going."""
    def lookup(sock):
        return table.get(sock.getpeername()[1])
    return lookup


def redirected_connection(proxy, table, original):
    """A client connection the fake lookup reports as DNAT'ed from ``original``."""
    conn = socket.socket()
    conn.settimeout(5)
    conn.bind((LOCAL, 0))
    table[conn.getsockname()[1]] = original
    conn.connect(proxy.address)
    return conn


def test_transparent_http_uses_host_header(upstream, decisions):
    table = {}
    judge = Judge()
    with EgressProxy((LOCAL, 0), judge=judge, resolve=resolve, on_decision=decisions.append,
                     original_destination=fake_redirect(table)) as running:
        for path, status in (("/plain?x=1", 200), ("/admin", 403)):
            conn = redirected_connection(running, table, (LOCAL, upstream.port))
            conn.sendall(f"GET {path} HTTP/1.1\r\nHost: upstream.test\r\nConnection: close\r\n\r\n"
                         .encode())
            reply = b""
            while chunk := conn.recv(65536):
                reply += chunk
            conn.close()
            assert reply.startswith(f"HTTP/1.1 {status}".encode()), reply[:80]
    assert [s["path"] for s in upstream.seen] == ["/plain?x=1"]
    assert upstream.seen[0]["headers"]["host"] == "upstream.test"
    assert judge.calls[0][1] == f"http://upstream.test:{upstream.port}/plain?x=1"
    assert decisions[0]["mode"] == "transparent"


def test_lookup_naming_the_proxy_itself_means_explicit_mode(upstream):
    """A lookup that reports the listener's own address (conntrack's answer for a client that
    used HTTP_PROXY) leaves the connection in explicit mode."""
    holder = {}
    with EgressProxy((LOCAL, 0), judge=Judge(), resolve=resolve,
                     original_destination=lambda sock: holder["address"]) as running:
        holder["address"] = running.address
        conn, response, _ = via_proxy(running, "GET", f"http://upstream.test:{upstream.port}/x")
        conn.close()
    assert response.status == 200 and upstream.seen[0]["path"] == "/x"


def client_hello(server_name: str | None) -> bytes:
    """A real ClientHello from the ssl module, without any network."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_sni_of_a_real_client_hello():
    record = client_hello("api.example.com")
    assert record[0] == 22
    assert client_hello_sni(record[5:]) == "api.example.com"
    for cut in (10, 50, len(record) - 6):
        with pytest.raises(ValueError):
            client_hello_sni(record[5:5 + cut])
    corrupted = bytearray(record[5:])
    corrupted[4 + 2 + 32] = 250                      # session id length beyond the message
    with pytest.raises(ValueError):
        client_hello_sni(bytes(corrupted))
    context = ssl.create_default_context()
    context.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing)        # no server_hostname: no SNI
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    assert client_hello_sni(outgoing.read()[5:]) is None


def test_transparent_tls_judged_on_sni_and_tunnelled(echo, decisions):
    table = {}
    judge = Judge()
    with EgressProxy((LOCAL, 0), judge=judge, resolve=resolve, on_decision=decisions.append,
                     original_destination=fake_redirect(table)) as running:
        hello = client_hello("echo.test")
        conn = redirected_connection(running, table, (LOCAL, echo.port))
        conn.sendall(hello)
        got = b""
        while len(got) < len(hello):
            got += conn.recv(65536)
        assert got == hello                             # the echo got the ClientHello, unchanged
        conn.close()
        denied = redirected_connection(running, table, (LOCAL, echo.port))
        denied.sendall(client_hello("forbidden.test"))
        alert = denied.recv(100)
        denied.close()
    assert alert == b"\x15\x03\x03\x00\x02\x02\x31"    # TLS alert access_denied
    assert [c[:2] for c in judge.calls] == [("CONNECT", f"https://echo.test:{echo.port}/"),
                                            ("CONNECT", f"https://forbidden.test:{echo.port}/")]
    assert echo.accepted == 1
    assert [d["status"] for d in decisions] == [200, 403]


def test_real_original_dst_on_a_plain_socket_is_none():
    """SO_ORIGINAL_DST on a connection that was not redirected: an error (no conntrack entry),
    or the listener's own address; either way the proxy treats it as explicit mode."""
    listener = socket.create_server((LOCAL, 0))
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    try:
        try:
            raw = accepted.getsockopt(socket.SOL_IP, proxy_module.SO_ORIGINAL_DST, 16)
        except OSError:
            raw = None
        if raw is not None:
            assert socket.inet_ntoa(raw[4:8]) == LOCAL
            assert int.from_bytes(raw[2:4], "big") == listener.getsockname()[1]
        assert original_destination(accepted) is None
    finally:
        accepted.close()
        client.close()
        listener.close()



def test_real_original_dst_on_a_plain_ipv6_socket_is_none():
    """The IPv6 lookup (IP6T_SO_ORIGINAL_DST) on a connection that was not redirected: None,
    not an exception (Python's socket module has no SOL_IPV6; the level is IPPROTO_IPV6)."""
    try:
        listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError as exc:
        pytest.skip(f"cannot listen on ::1: {exc}")
    client = socket.create_connection(listener.getsockname()[:2])
    accepted, _ = listener.accept()
    try:
        assert original_destination(accepted) is None
    finally:
        accepted.close()
        client.close()
        listener.close()

TRANSPARENT_IN_NETNS = textwrap.dedent("""
    import http.client, socket, subprocess, sys, threading, http.server
    from agentd.trace.decide import Evaluation
    from agentd.netplane.proxy import EgressProxy
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    seen = []
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
            self.wfile.write(b"ok")
        def log_message(self, *a): pass
    server = http.server.HTTPServer(("127.0.0.2", 8080), H)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    calls = []
    def judge(method, url, headers, dest_ip):
        calls.append((method, url, dest_ip))
        outcome = "block" if "deny" in url else "allow"
        return Evaluation("network_request", url, outcome, outcome, "t", ("p",))
    with EgressProxy(("127.0.0.1", 0), judge=judge, resolve=lambda h: ["127.0.0.2"]) as proxy:
        port = proxy.address[1]
        for rule in ("add table ip t",
                     "add chain ip t out { type nat hook output priority -100 ; }",
                     "add rule ip t out ip saddr 127.0.0.3 ip daddr 127.0.0.2 tcp dport 8080 "
                     f"dnat to 127.0.0.1:{port}"):
            subprocess.run(["nft", rule], check=True)
        statuses = []
        for path in ("/through", "/deny"):
            conn = http.client.HTTPConnection("127.0.0.2", 8080, timeout=5,
                                              source_address=("127.0.0.3", 0))
            conn.request("GET", path, headers={"Host": "site.test:8080"})
            response = conn.getresponse(); response.read(); conn.close()
            statuses.append(response.status)
    print(statuses, seen, calls)
    assert statuses == [200, 403], statuses
    assert seen == ["/through"], seen
    assert calls == [("GET", "http://site.test:8080/through", "127.0.0.2"),
                     ("GET", "http://site.test:8080/deny", "127.0.0.2")], calls
""")


def test_transparent_mode_with_real_dnat():
    """In a network namespace of its own: nftables DNAT redirects a client to the proxy, which
    finds the original destination with the real SO_ORIGINAL_DST."""
    if os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("unshare"):
        pytest.skip("needs root, nft and unshare to build a network namespace")
    result = subprocess.run(["unshare", "--net", sys.executable, "-c", TRANSPARENT_IN_NETNS],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0 and "Operation not permitted" in result.stderr:
        pytest.skip(f"cannot create a network namespace here: {result.stderr.strip()[-200:]}")
    assert result.returncode == 0, result.stdout + result.stderr


# -- pure parsing ----------------------------------------------------------------------------------

def test_parsers():
    head = parse_request_head(b"GET http://x/ HTTP/1.1\r\nHost: x\r\nA: 1\r\na: 2\r\n\r\n")
    assert head.lowered() == {"host": "x", "a": "1, 2"}
    assert parse_authority("Example.COM.:8080", None) == ("example.com", 8080)
    assert parse_authority("[::FFFF:7f00:1]:443", None) == ("::ffff:7f00:1", 443)
    assert parse_authority("10.0.0.1", 80) == ("10.0.0.1", 80)
    for bad in ("0x7f.1", "127.1", "017.0.0.1", "a b", "host:99999", "host:", "[::1"):
        with pytest.raises(BadRequest):
            parse_authority(bad, None)
    assert normalise_path("/a/./b/../c?x=/../y#frag") == "/a/c?x=/../y"
    assert normalise_path("/%7euser/%2f%2E%2e/") == "/~user/%2F../"
    assert normalise_path("/..") == "/"
