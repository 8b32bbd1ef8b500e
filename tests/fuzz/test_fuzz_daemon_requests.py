"""Fuzz target: the daemon's request lines (``agentd.daemon.protocol.parse_request``, which the
daemon's ``service`` calls on every line a client sends), at the function and through a real
daemon's socket.

Feeds: random bytes; JSON objects with every request's fields, each given a value of any JSON
type, unknown fields and ops among them; requests the client builds (``request_for``) with
arbitrary strings (surrogate escapes included), which must read back as sent; JSON nested
thousands of levels deep; numbers too long for any integer.

Asserts: ``parse_request`` returns one of the request models or raises ``MalformedRequest``,
whose message is one line of bounded length, and nothing else escapes. Through the daemon: one
answer line, ``{"ok": false, "error": <that line>}`` for a malformed request (and the connection
closed), no ``Traceback`` in the daemon's log, and the daemon still answers ``status``.
"""

from __future__ import annotations

import json
import socket

import pytest
from fuzz_settings import fuzz
from hypothesis import example, given
from hypothesis import strategies as st

from agentd.daemon import protocol
from agentd.daemon.protocol import MalformedRequest, parse_request, request_for
from helpers.agentd_daemon import DaemonUnderTest

REQUEST_MODELS = tuple(protocol._REQUESTS.values())
FIELDS = sorted({name for model in REQUEST_MODELS for name in model.model_fields}
                | {"bogus", ""})
OPS = sorted(protocol._REQUESTS) + ["", "RUN", "launch", "run\x00"]

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                         st.text(max_size=12), st.sampled_from(OPS), st.just("\x00AAAA"),
                         st.just("\x00not base64!"), st.integers(min_value=2**63))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=10)


@st.composite
def request_objects(draw) -> bytes:
    """A JSON object shaped like a request: an op, then fields of any type."""
    obj = {}
    if draw(st.integers(0, 9)):  # one in ten without an op
        obj["op"] = draw(st.one_of(st.sampled_from(OPS), JSON_SCALARS))
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=5, unique=True)):
        obj[name] = draw(JSON_VALUES)
    return json.dumps(obj).encode()


OS_STRINGS = st.one_of(
    st.text(max_size=20),
    st.binary(min_size=1, max_size=20).map(lambda raw: raw.decode("utf-8", "surrogateescape")),
).filter(lambda text: "\x00" not in text)


@st.composite
def client_requests(draw):
    op = draw(st.sampled_from(sorted(protocol._REQUESTS)))
    fields: dict = {}
    if op == "run":
        fields = {"argv": draw(st.lists(OS_STRINGS, min_size=1, max_size=3)),
                  "env": draw(st.dictionaries(OS_STRINGS, OS_STRINGS, max_size=3)),
                  "cwd": draw(OS_STRINGS), "policy": draw(OS_STRINGS)}
    elif op in ("stop", "kill", "resume"):
        fields = {"run_id": draw(OS_STRINGS)}
    elif op == "signal":
        fields = {"signal": draw(st.integers(-(2**40), 2**40))}
    return request_for(op, **fields)


def check_line(line: bytes):
    """``parse_request``'s contract; the request, or the one-line refusal."""
    try:
        request = parse_request(line)
    except MalformedRequest as exc:
        message = str(exc)
        assert message and "\n" not in message and "\r" not in message, message
        assert len(message) < 1000, message
        return message
    assert isinstance(request, REQUEST_MODELS)
    return request


@fuzz(300)
@given(st.binary(max_size=200))
@example(b"\x00\xff garbage")
@example(b'{"op": "\xff"}')
@example(b"")
@example(b"null")
@example(b'"' + b"\\ud800" + b'"')
def test_fuzz_random_bytes(line):
    check_line(line)


@fuzz(300)
@given(request_objects())
@example(b'{"op": "signal", "signal": 1' + b"0" * 5000 + b"}")
@example(b'{"op": "run", "argv": ["\\u0000////"]}')
@example(b'{"op": "run", "argv": ["x"], "env": {"\\u0000AA==": "y"}}')
@example(b'{"op": "ps", "op": "run"}')
def test_fuzz_request_objects(line):
    check_line(line)


@fuzz(150)
@given(client_requests())
def test_fuzz_what_the_client_builds_reads_back_as_sent(request):
    line = protocol.encode(request)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert parse_request(line[:-1]) == request


@fuzz(30)
@given(st.integers(1, 200_000), st.sampled_from([b"[", b'{"a":', b'{"op":"run","argv":[']),
       st.booleans())
def test_fuzz_deep_nesting(depth, opener, closed):
    closer = {b"[": b"]", b'{"a":': b"}", b'{"op":"run","argv":[': b"]"}[opener]
    line = opener * depth + (b"1" + closer * depth if closed else b"")
    check_line(line)


# --- through a real daemon -------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = DaemonUnderTest(tmp_path_factory.mktemp("fuzz-daemon"))
    d.start()
    yield d
    d.stop()


def _one_answer(path: str, line: bytes) -> tuple[bytes, bool]:
    """Send ``line``; the first answer line, and whether the daemon closed after it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.settimeout(20)
        try:
            sock.sendall(line + b"\n")
        except BrokenPipeError:  # closed before we finished: the answer is still there
            pass
        received = b""
        while b"\n" not in received:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        answer, _, rest = received.partition(b"\n")
        sock.settimeout(2)
        try:
            closed = not rest and sock.recv(1) == b""
        except (TimeoutError, ConnectionResetError):
            closed = False
        return answer, closed


@fuzz(40)
@given(st.one_of(st.binary(max_size=100), request_objects(),
                 st.integers(300, 50_000).map(lambda n: b"[" * n + b"]" * n)))
@example(b"[" * 100_000 + b"]" * 100_000)
@example(b'{"op": "run", "argv": ["x"], "env": {"A": ' + b"[" * 5000 + b"]" * 5000 + b"}}")
def test_fuzz_through_the_daemon_socket(daemon, line):
    if b"\n" in line:
        line = line.replace(b"\n", b" ")
    expected = check_line(line)
    before = daemon.log_text()
    answer, closed = _one_answer(daemon.socket_path, line)
    reply = json.loads(answer)
    if isinstance(expected, str):  # malformed: exactly that line back, then closed
        assert reply == {"ok": False, "error": expected}
        assert closed
    else:
        assert isinstance(reply, dict) and "ok" in reply, reply
    new = daemon.log_text()[len(before):]
    assert "Traceback" not in new and "Error:" not in new.replace("error:", ""), new
    assert all(len(entry) < 2000 for entry in new.splitlines()), new
    assert daemon.alive()
    assert daemon.request("status")["ok"]
