"""The daemon's socket protocol (agentd/daemon/protocol.py): one set of pydantic models that the
client builds its requests with and the daemon validates every line with. A malformed request
(not JSON, not an object, no or an unknown op, an unknown field, a wrong type, a missing field,
JSON nested too deep, a line too long) gets one error line and a closed connection, and the
daemon logs one line: never a traceback, and the daemon goes on serving."""

from __future__ import annotations

import json
import os
import socket

import pytest

from agentd.daemon import protocol
from helpers.agentd_daemon import DaemonUnderTest

DEEP = b"[" * 100_000 + b"]" * 100_000    # json.loads raised RecursionError on this

MALFORMED = [
    # (what, line, the error the client is told)
    ("not JSON", b"\x00\xff garbage", "malformed request: not JSON: expected value at line 1 "
     "column 1"),
    ("trailing garbage", b'{"op": "ps"} and more', "malformed request: not JSON: trailing "
     "characters at line 1 column 14"),
    ("invalid UTF-8", b'{"op": "\xff"}', "malformed request: not JSON: invalid unicode code "
     "point at line 1 column 9"),
    ("not an object", b"[1, 2, 3]", "malformed request: not a JSON object (one object a line)"),
    ("no op", b'{"argv": ["ls"]}', "malformed request: no op"),
    ("unknown op", b'{"op": "launch_missiles"}', "malformed request: unknown op "
     "'launch_missiles' (one of: kill, ps, reload, resume, run, signal, status, stop)"),
    ("unknown field", b'{"op": "ps", "all": true}', "malformed ps request: all: unknown field"),
    ("wrong type", b'{"op": "run", "argv": "ls"}', "malformed run request: argv: Input should "
     "be a valid array"),
    ("wrong type, not coerced", b'{"op": "signal", "signal": "2"}', "malformed signal request: "
     "signal: Input should be a valid integer"),
    ("empty argv", b'{"op": "run", "argv": []}', "malformed run request: argv: List should have "
     "at least 1 item after validation, not 0"),
    ("bad value", b'{"op": "run", "argv": ["true"], "mode": "lax"}', "malformed run request: "
     "mode: Input should be 'enforce' or 'audit'"),
    ("missing field", b'{"op": "kill"}', "malformed kill request: run_id: Field required"),
    ("deeply nested", DEEP, "malformed request: not JSON: recursion limit exceeded at line 1 "
     "column 202"),
    ("deeply nested value", b'{"op": "run", "argv": ["x"], "env": {"A": ' + DEEP + b"}}",
     "malformed request: not JSON: recursion limit exceeded at line 1 column 242"),
]


@pytest.mark.parametrize("what, line, error", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_each_malformed_request_is_one_clear_error(what, line, error):
    with pytest.raises(protocol.MalformedRequest) as refused:
        protocol.parse_request(line)
    assert str(refused.value) == error
    assert "\n" not in str(refused.value)


def test_many_bad_fields_are_named_a_few_at_a_time_and_long_keys_are_cut():
    with pytest.raises(protocol.MalformedRequest) as refused:
        protocol.parse_request(json.dumps({"op": "run", "argv": [1, 2, 3, 4, 5]}).encode())
    assert str(refused.value) == (
        "malformed run request: argv.0: Input should be a valid string; argv.1: Input should "
        "be a valid string; argv.2: Input should be a valid string (and 2 more)")
    key = "K" * 100_000
    with pytest.raises(protocol.MalformedRequest) as refused:
        protocol.parse_request(json.dumps({"op": "run", "argv": ["x"], "env": {key: 1}}).encode())
    assert len(str(refused.value)) < 200


def test_a_line_over_the_limit_is_refused_before_parsing():
    line = json.dumps({"op": "run", "argv": ["x" * protocol.PROTOCOL_LIMIT]}).encode()
    with pytest.raises(protocol.MalformedRequest, match="request too long"):
        protocol.parse_request(line)


@pytest.mark.parametrize("op, fields", [
    ("run", {"argv": ["ls", "-l"], "env": {"A": "b"}, "cwd": "/tmp", "workspace": "/tmp",
             "policy": "strict", "agent_id": None, "mode": "audit", "audit_log": None,
             "seccomp_profile": None}),
    ("ps", {}), ("status", {}), ("reload", {}), ("stop", {"run_id": "d1"}),
    ("resume", {"run_id": "d1", "decision": "deny"}), ("resume", {"run_id": "d1"}),
    ("kill", {"run_id": "d1"}), ("signal", {"signal": 2}),
])
def test_what_the_client_builds_is_what_the_server_reads(op, fields):
    built = protocol.request_for(op, **fields)
    line = protocol.encode(built)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert protocol.parse_request(line[:-1]) == built


def test_bytes_that_are_not_utf8_travel_intact():
    """Python holds such argv, environment and path bytes as surrogate escapes: they cross the
    socket as NUL + base64 and come out as the same str (so execve gets the same bytes)."""
    fields = {"argv": ["cat", "caf\udce9"], "env": {"K\udcff": "v\udce9", "PATH": "/bin"},
              "cwd": "/tmp/\udce9", "workspace": None}
    built = protocol.request_for("run", **fields)
    line = protocol.encode(built)
    line.decode("ascii")    # valid JSON, nothing but escapes
    read = protocol.parse_request(line[:-1])
    assert (read.argv, read.env, read.cwd) == (fields["argv"], fields["env"], fields["cwd"])
    assert os.fsencode(read.argv[1]) == b"caf\xe9"
    assert protocol.parse_request(b'{"op": "kill", "run_id": "plain"}').run_id == "plain"
    with pytest.raises(protocol.MalformedRequest, match="not base64"):
        protocol.parse_request(b'{"op": "kill", "run_id": "\\u0000???"}')
    said = protocol.encode(protocol.Reply(ok=False, error="no file caf\udce9"), reply=True)
    assert json.loads(said) == {"ok": False, "error": "no file caf\\xe9"}


def test_the_client_cannot_build_a_malformed_request():
    with pytest.raises(ValueError):
        protocol.request_for("stop")
    with pytest.raises(ValueError):
        protocol.request_for("resume", run_id="d1", decision="maybe")
    with pytest.raises(ValueError):
        protocol.request_for("launch_missiles")


def test_answers_carry_what_was_set_and_readers_ignore_what_they_do_not_know():
    assert json.loads(protocol.encode(protocol.Reply(ok=False, error="no"), reply=True)) == \
        {"ok": False, "error": "no"}
    answer = protocol.PsReply.model_validate_json(b'{"ok": true, "runs": [], "later": 1}')
    assert answer.ok and answer.runs == []
    exit_line = protocol.RunExit.model_validate_json(b'{"exit": 7, "records": 3, '
                                                     b'"supervisor": {"cpu_s": 0.1}}')
    assert exit_line.exit == 7


# -- the daemon itself ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = DaemonUnderTest(tmp_path_factory.mktemp("protocol"))
    d.start()
    yield d
    d.stop()


def _exchange(path: str, line: bytes) -> tuple[list[bytes], bool]:
    """Send ``line`` (and a newline); the lines the daemon answered, and whether it closed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.settimeout(10)
        try:
            sock.sendall(line + b"\n")
        except BrokenPipeError:     # closed before we finished: the answer is still there
            pass
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                return received.splitlines(), True
            received += chunk
        return received.splitlines(), True


@pytest.mark.parametrize("what, line, error", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_the_daemon_answers_one_error_line_logs_one_line_and_closes(daemon, what, line, error):
    before = daemon.log_text()
    answers, closed = _exchange(daemon.socket_path, line)
    assert closed
    assert [json.loads(answer) for answer in answers] == [{"ok": False, "error": error}]
    new = daemon.log_text()[len(before):]
    assert "Traceback" not in new and "RecursionError" not in new, new
    logged = [entry for entry in new.splitlines() if "malformed request" in entry
              or "request too long" in entry]
    assert len(logged) == 1, new
    assert error in logged[0] and "connection closed" in logged[0]
    assert daemon.request("status")["ok"]


def test_an_unframed_flood_is_cut_at_the_limit(daemon):
    answers, closed = _exchange(daemon.socket_path, b"x" * (2 * protocol.PROTOCOL_LIMIT))
    assert closed
    assert [json.loads(answer)["error"] for answer in answers] == \
        [f"request too long (more than {protocol.PROTOCOL_LIMIT} bytes)"]
    assert "Traceback" not in daemon.log_text()
    assert daemon.alive()
