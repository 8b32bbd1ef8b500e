"""The run conversation's lines, written and read without pydantic: the client's fast path.

Owns the bytes of the three lines ``agentd run`` exchanges with the daemon on every run: the
``run`` request it sends, the ``signal`` requests it forwards, and the ``RunReply`` and
``RunExit`` answers it reads. ``protocol`` holds the models the daemon validates every line
with; importing them (pydantic and the models) costs about 80 ms, most of a run's start-up
through the daemon, so the client writes these lines with ``json`` alone.
``tests/test_daemon_run_wire.py`` checks that every line written here is the one the models
write (byte for byte) and validates as a ``RunRequest``/``SignalRequest``, and that the answers
the models write read back the same; the daemon validates every line as before, so a line
that drifted from the models is refused there, not trusted.

Strings the kernel gave as bytes (arguments, environment, paths) travel as ``protocol``
describes: UTF-8 when they are, else NUL + base64 of their bytes (``os_string``, which
``protocol`` uses too).
"""

from __future__ import annotations

import json

# protocol.Mode's values (a test holds them equal)
MODES = ("enforce", "audit")

__all__ = ["MODES", "os_string", "run_request", "signal_request", "read_run_reply", "read_run_exit"]


def os_string(value: str) -> str:
    """A string that may hold surrogate escapes (bytes that are not UTF-8) in its wire form."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        import base64  # here: rare, and every agentd run through the daemon imports this module

        return "\0" + base64.b64encode(value.encode("utf-8", "surrogateescape")).decode("ascii")
    return value


def _optional(value: str | None) -> str | None:
    return None if value is None else os_string(value)


def _line(fields: dict) -> bytes:
    # pydantic's model_dump_json: compact separators, UTF-8 as it is
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def run_request(
    argv: list[str],
    env: dict[str, str],
    cwd: str,
    workspace: str | None,
    policy: str,
    agent_id: str | None,
    mode: str,
    audit_log: str | None,
    seccomp_profile: str | None,
) -> bytes:
    """The ``run`` request line, fields in the order of ``protocol.RunRequest``."""
    return _line(
        {
            "op": "run",
            "argv": [os_string(arg) for arg in argv],
            "env": {os_string(key): os_string(value) for key, value in env.items()},
            "cwd": os_string(cwd),
            "workspace": _optional(workspace),
            "policy": os_string(policy),
            "agent_id": _optional(agent_id),
            "mode": mode,
            "audit_log": _optional(audit_log),
            "seccomp_profile": _optional(seccomp_profile),
        }
    )


def signal_request(signum: int) -> bytes:
    return _line({"op": "signal", "signal": int(signum)})


class AnswerError(ValueError):
    """An answer line that is not what the run conversation expects; the message says why."""


def _object(line: bytes, what: str) -> dict:
    try:
        answer = json.loads(line)
    except (ValueError, RecursionError):
        raise AnswerError(f"the daemon's answer is not a {what}: not one JSON object") from None
    if not isinstance(answer, dict):
        raise AnswerError(f"the daemon's answer is not a {what}: not one JSON object")
    return answer


def read_run_reply(line: bytes) -> tuple[bool, str | None]:
    """``(ok, error)`` of a ``RunReply`` line."""
    answer = _object(line, "RunReply")
    ok, error = answer.get("ok"), answer.get("error")
    if not isinstance(ok, bool) or not (error is None or isinstance(error, str)):
        raise AnswerError("the daemon's answer is not a RunReply: 'ok' or 'error' has a wrong type")
    return ok, error


def read_run_exit(line: bytes) -> int:
    """The agent's exit status from a ``RunExit`` line."""
    status = _object(line, "RunExit").get("exit")
    if isinstance(status, bool) or not isinstance(status, int):
        raise AnswerError("the daemon's answer is not a RunExit: 'exit' is not an integer")
    return status
