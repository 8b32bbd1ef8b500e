"""Fuzz target: the requests on a held run's control socket (the SIGSTOP review: ``agentd resume
--allow|--deny``, ``agentd kill`` and the daemon send ``{"decision": ...}`` to
``<runs>/<run_id>.sock``; ``agentd.run.registry.parse_decision`` reads each line, for
``RunRegistration.wait_for_decision``, the wait of ``agentd.trace.hold``).

Feeds: random bytes; JSON values of every type, with and without a ``decision`` field; JSON
nested thousands of levels deep; lines longer than the bound; and, through a real control socket
while a (stand-in) run waits for its operator, such lines followed by a peer that hangs up before
reading its answer.

Asserts: ``parse_decision`` returns one of allow/deny/kill or raises ``ValueError`` with a
one-line message, nothing else; the waiting run answers each bad line with one
``{"ok": false, "error": ...}`` line, outlives peers that hang up, and still takes the operator's
real decision afterwards.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from fuzz_settings import fuzz
from hypothesis import example, given
from hypothesis import strategies as st

from agentd.run.registry import DECISIONS, MAX_DECISION_LINE, RunRegistration, parse_decision

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                         st.text(max_size=10), st.sampled_from(DECISIONS + ("ALLOW", "allow ")))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)
DECISION_OBJECTS = st.builds(
    lambda decision, extra: json.dumps({"decision": decision, **extra}).encode(),
    st.one_of(st.sampled_from(DECISIONS), JSON_VALUES),
    st.dictionaries(st.text(max_size=5), JSON_SCALARS, max_size=2),
)
DEEP = b"[" * 100_000 + b"]" * 100_000


def check_line(line: bytes) -> str | None:
    """The decision, or None after checking the refusal is one line."""
    try:
        decision = parse_decision(line)
    except ValueError as exc:
        message = str(exc)
        assert message and "\n" not in message and len(message) < 300, message
        return None
    assert decision in DECISIONS
    return decision


def test_a_deeply_nested_line_is_refused_not_a_recursion_error():
    deep = b"[" * 2000 + b"]" * 2000  # within the line bound, beyond the interpreter's stack
    with pytest.raises(ValueError, match="nested"):
        parse_decision(b'{"decision": ' + deep + b"}")
    with pytest.raises(ValueError, match="longer"):
        parse_decision(b" " * (MAX_DECISION_LINE + 1))


@pytest.mark.parametrize("line", [b"[1, 2]", b'"allow"', b"42", b"null", b'{"decision": ["allow"]}',
                                  b'{"decision": {"allow": 1}}', b"\xff\xfe", b"{"])
def test_what_is_not_a_decision_object_is_refused(line):
    with pytest.raises(ValueError):
        parse_decision(line)


@pytest.mark.parametrize("decision", DECISIONS)
def test_a_decision_reads_back(decision):
    assert parse_decision(json.dumps({"decision": decision}).encode()) == decision


@fuzz(300)
@given(st.binary(max_size=120))
@example(b'{"decision": "allow"}')
@example(b'{"decision": "\\ud800"}')
def test_fuzz_random_bytes(line):
    check_line(line)


@fuzz(300)
@given(st.one_of(DECISION_OBJECTS, JSON_VALUES.map(lambda value: json.dumps(value).encode())))
def test_fuzz_json_values(line):
    check_line(line)


@fuzz(20)
@given(st.integers(1, 100_000), st.sampled_from([b"[", b'{"decision":', b'{"a":[']))
def test_fuzz_deep_nesting(depth, opener):
    check_line(opener * depth)
    check_line(b'{"decision": ' + b"[" * depth + b"]" * depth + b"}")


# --- through a real control socket ----------------------------------------------------------------


class Waiting:
    """A stand-in run held for review: ``wait_for_decision`` in a thread, as the supervisor
    calls it (no terminal)."""

    def __init__(self, directory: str):
        self.registration = RunRegistration("fuzz", {}, directory=directory)
        self.registration.create()
        self.registration.open_socket()  # before the thread, so clients can connect at once
        self.result: tuple[str, str] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._wait, daemon=True)
        self.thread.start()
        self._until_serving()

    def _until_serving(self) -> None:
        """The wait drops connections queued before it began (``drop_queued``): send a line it
        refuses until one is answered, so that the test's lines reach the wait itself."""
        for _ in range(500):
            if self.send(b"not yet") or self.error is not None:
                return
            time.sleep(0.01)
        raise AssertionError("the control socket never answered")

    def _wait(self) -> None:
        try:
            self.result = self.registration.wait_for_decision(None)
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            self.error = exc

    def send(self, line: bytes, read_answer: bool = True) -> bytes | None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(20)
            sock.connect(self.registration.sock_path)
            try:
                sock.sendall(line + b"\n")
            except BrokenPipeError:
                pass
            if not read_answer:
                return None  # hang up without reading: the run's answer meets a closed socket
            received = b""
            while not received.endswith(b"\n"):
                try:
                    chunk = sock.recv(4096)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                received += chunk
            return received

    def finish(self) -> tuple[str, str]:
        answer = self.send(b'{"decision": "deny"}')
        assert answer is not None and json.loads(answer) == {"ok": True, "decision": "deny"}
        self.thread.join(20)
        assert self.error is None, repr(self.error)
        assert self.result == ("deny", "control socket")
        self.registration.remove()
        return self.result


@pytest.fixture
def waiting(tmp_path):
    return Waiting(str(tmp_path))


def test_bad_lines_and_hang_ups_do_not_end_the_wait(waiting):
    for line in (b"garbage", b'{"decision": ' + DEEP[:20_000] + b"}", b"x" * 100_000):
        answer = waiting.send(line)
        reply = json.loads(answer)
        assert reply["ok"] is False and "\n" not in reply["error"], reply
        assert waiting.error is None, repr(waiting.error)
    for _ in range(5):
        waiting.send(b"[[[[", read_answer=False)
        assert waiting.error is None, repr(waiting.error)
    waiting.finish()


@fuzz(40)
@given(st.lists(st.one_of(st.binary(max_size=60).filter(lambda b: b"\n" not in b),
                          DECISION_OBJECTS.filter(lambda b: parse_decision_or_none(b) is None)),
                min_size=1, max_size=3), st.booleans())
def test_fuzz_through_the_control_socket(tmp_path_factory, lines, hang_up):
    waiting = Waiting(str(tmp_path_factory.mktemp("hold")))
    for line in lines:
        if check_line(line) is not None:
            continue  # a real decision would end the wait: the last step sends one
        answer = waiting.send(line, read_answer=not hang_up)
        if answer is not None:
            reply = json.loads(answer)
            assert reply["ok"] is False and "\n" not in reply["error"], reply
        assert waiting.error is None, repr(waiting.error)
    waiting.finish()


def parse_decision_or_none(line: bytes) -> str | None:
    try:
        return parse_decision(line)
    except ValueError:
        return None
