"""The daemon's socket protocol: one pydantic model per request and per answer, one set shared by
the server (``service``) and the client (``client``).

Owns the wire format: one JSON object per line each way over the unix socket, at most
``PROTOCOL_LIMIT`` bytes a line. A request names its operation in ``op``. The server reads every
line with ``parse_request``: pydantic parses the JSON itself (its parser, jiter, refuses nesting
deeper than 200 levels, invalid UTF-8 and trailing garbage as errors of the input, without
recursing in the interpreter) and checks the fields in strict mode (an unknown field, a wrong
type, a missing field is refused). A malformed line raises ``MalformedRequest``, whose message is
the one line the client is told and the daemon logs. The client builds its requests with the
same models (``request_for``) and reads the answers with them (``REPLIES``). Requests forbid
unknown fields (strangers send them); answers ignore unknown fields (the daemon that sends them
may be of another version than the client). Models are built on first use (``defer_build``):
``agentd run`` through the daemon pays only for the two or three it uses.

Arguments, environment variables, paths and names are bytes to the kernel, and Python holds the
ones that are not UTF-8 as surrogate escapes, which strict JSON cannot carry: such a string
travels as NUL + base64 of its bytes (``OsString``; no argument, variable or path can contain a
NUL, so the form is unambiguous). Messages for people (``Text``) travel with the bytes that are
not UTF-8 written as ``\\xNN``.
"""

from __future__ import annotations

import base64
import binascii
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    ValidationError,
)

from .run_wire import os_string

__all__ = [
    "PROTOCOL_LIMIT",
    "MalformedRequest",
    "parse_request",
    "request_for",
    "encode",
    "Request",
    "Mode",
    "RunRequest",
    "PsRequest",
    "StatusRequest",
    "ReloadRequest",
    "StopRequest",
    "ResumeRequest",
    "KillRequest",
    "SignalRequest",
    "Reply",
    "RunReply",
    "RunExit",
    "RunInfo",
    "HeldInfo",
    "PsReply",
    "StatusReply",
    "ReloadReply",
    "StopReply",
    "ResumeReply",
    "KillReply",
    "REPLIES",
]

PROTOCOL_LIMIT = 1 << 20  # one request line; longer is refused and closes the connection


def _os_string_in(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("\0"):
        try:
            raw = base64.b64decode(value[1:], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(
                "NUL starts the base64 of bytes that are not UTF-8; this is not base64"
            ) from None
        return raw.decode("utf-8", "surrogateescape")
    return value


def _text_out(value: str) -> str:
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no bytes stand for
        return value.encode("utf-8", "backslashreplace").decode("utf-8")


# A string the kernel gave or takes as bytes: argv, environment, paths, names.
OsString = Annotated[
    str, BeforeValidator(_os_string_in), PlainSerializer(os_string, return_type=str)
]
# A message for people.
Text = Annotated[str, PlainSerializer(_text_out, return_type=str)]


# --- requests (client -> daemon) ----------------------------------------------------------------

# How a run's supervisor applies the policy: enforce it, or (audit) record and block nothing.
Mode = Literal["enforce", "audit"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, defer_build=True)


class RunRequest(_Request):
    """Run ``argv`` as the caller; sent with the caller's stdin, stdout and stderr (SCM_RIGHTS)."""

    op: Literal["run"] = "run"
    argv: list[OsString] = Field(min_length=1)
    env: dict[OsString, OsString] = {}
    cwd: OsString = "/"
    workspace: OsString | None = None  # default: cwd
    policy: OsString = "strict"  # a name, or (root) a policy file
    agent_id: OsString | None = None
    mode: Mode = "enforce"
    audit_log: OsString | None = None  # refused: the daemon's configuration decides
    seccomp_profile: OsString | None = None  # refused: the daemon's configuration decides


class PsRequest(_Request):
    op: Literal["ps"] = "ps"


class StatusRequest(_Request):
    op: Literal["status"] = "status"


class ReloadRequest(_Request):
    op: Literal["reload"] = "reload"


class StopRequest(_Request):
    op: Literal["stop"] = "stop"
    run_id: OsString


class ResumeRequest(_Request):
    op: Literal["resume"] = "resume"
    run_id: OsString
    decision: Literal["allow", "deny"] | None = None  # None: thaw a run frozen by stop


class KillRequest(_Request):
    op: Literal["kill"] = "kill"
    run_id: OsString


class SignalRequest(_Request):
    """The client's ^C, ^\\, SIGTERM or SIGHUP, for the agent of this connection's run."""

    op: Literal["signal"] = "signal"
    signal: int


Request = Annotated[
    RunRequest
    | PsRequest
    | StatusRequest
    | ReloadRequest
    | StopRequest
    | ResumeRequest
    | KillRequest
    | SignalRequest,
    Field(discriminator="op"),
]
_REQUESTS: dict[str, type[_Request]] = {
    "run": RunRequest,
    "ps": PsRequest,
    "status": StatusRequest,
    "reload": ReloadRequest,
    "stop": StopRequest,
    "resume": ResumeRequest,
    "kill": KillRequest,
    "signal": SignalRequest,
}


class MalformedRequest(ValueError):
    """A request line the daemon cannot take; the message is the one line the client gets."""


@cache
def _request_adapter() -> TypeAdapter[Request]:
    return TypeAdapter(Request)


def parse_request(line: bytes) -> Request:
    """The request on ``line`` (without its newline), or ``MalformedRequest`` saying why not."""
    if len(line) > PROTOCOL_LIMIT:
        raise MalformedRequest(f"request too long (more than {PROTOCOL_LIMIT} bytes)")
    try:
        return _request_adapter().validate_json(line)
    except ValidationError as exc:
        raise MalformedRequest(_describe(exc)) from None


def _describe(exc: ValidationError, limit: int = 3) -> str:
    """One line for the client and the log: what is wrong, field by field (at most ``limit``)."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    kind = first["type"]
    if kind == "json_invalid":
        return f"malformed request: not JSON: {first['msg'].removeprefix('Invalid JSON: ')}"
    if kind in ("dict_type", "model_attributes_type", "model_type"):
        return "malformed request: not a JSON object (one object a line)"
    if kind == "union_tag_not_found":
        return "malformed request: no op"
    if kind == "union_tag_invalid":
        tag = _short((first.get("ctx") or {}).get("tag", "?"))
        return f"malformed request: unknown op {tag!r} (one of: {', '.join(sorted(_REQUESTS))})"
    op = first["loc"][0] if first["loc"] else "?"
    problems = []
    for error in errors[:limit]:
        where = ".".join(_short(part) for part in error["loc"][1:]) or "request"
        message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        problems.append(f"{where}: {message}")
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return f"malformed {_short(op)} request: {'; '.join(problems)}{more}"


def _short(part: Any, width: int = 40) -> str:
    """A field name or key as said back: a key can be a megabyte long."""
    text = str(part)
    return text if len(text) <= width else text[: width - 3] + "..."


def request_for(op: str, **fields: Any) -> _Request:
    """The request ``op`` with ``fields`` (the client's side); a ValueError when they do not fit."""
    model = _REQUESTS.get(op)
    if model is None:
        raise ValueError(f"unknown op {op!r}")
    return model(**fields)


def encode(message: BaseModel, *, reply: bool = False) -> bytes:
    """One line of the wire format. An answer carries only the fields its sender set, so an
    error is ``{"ok": false, "error": ...}`` and nothing else."""
    return message.model_dump_json(exclude_unset=reply).encode() + b"\n"


# --- answers (daemon -> client) -----------------------------------------------------------------


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore", defer_build=True)


class Reply(_Answer):
    """Every answer to a request: ``ok``, and ``error`` when not. ``unknown`` says that the run
    named is not the daemon's (the CLI then asks the standalone runs)."""

    ok: bool
    error: Text | None = None
    unknown: bool = False


class RunReply(Reply):
    run_id: str | None = None
    policy: OsString | None = None
    version: str | None = None


class RunExit(_Answer):
    """The last line of a run: the agent's exit status (128+N after signal N)."""

    exit: int
    records: int | None = None
    supervisor: dict[str, Any] = {}  # the supervisor's CPU, RSS, decision latencies


class HeldInfo(_Answer):
    """A run held by a SIGSTOP verdict (the registration the supervisor writes)."""

    pid: int | None = None
    what: Text | None = None
    reason: Text | None = None
    pattern_ids: list[Text] = []
    since: float | None = None
    batch: bool = False


class RunInfo(_Answer):
    run_id: str
    user: OsString
    uid: int
    policy: OsString
    version: str
    mode: str
    supervisor_pid: int
    agent_pid: int | None
    pids: list[int]
    state: str  # running | held | frozen | exited
    held: HeldInfo | None
    command: list[OsString]
    started: float
    records: int


class PsReply(Reply):
    runs: list[RunInfo] = []


class StatusReply(Reply):
    pid: int | None = None
    uptime: float | None = None
    runs: int | None = None
    audit_log: OsString | None = None
    cgroups: OsString | None = None
    policies: dict[OsString, str] = {}


class ReloadReply(Reply):
    changed: dict[OsString, tuple[str | None, str]] = {}  # name -> (old version, new version)
    switched: list[str] = []  # the runs that switched


class StopReply(Reply):
    state: str | None = None  # frozen, or freezing while the kernel finishes


class ResumeReply(Reply):
    decision: str | None = None  # a held action's answer
    state: str | None = None  # running: a frozen run was thawed


class KillReply(Reply):
    pass


REPLIES: dict[str, type[Reply]] = {
    "run": RunReply,
    "ps": PsReply,
    "status": StatusReply,
    "reload": ReloadReply,
    "stop": StopReply,
    "resume": ResumeReply,
    "kill": KillReply,
}
