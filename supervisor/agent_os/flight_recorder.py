"""The FlightRecorder: agentd's append-only, SHA-256 hash-chained audit log of decisions.

It owns the on-disk format of the audit log (one JSON object per line, see ``docs/audit-log.md``),
writing it (one writer per file, enforced with ``flock``; thread-safe inside that writer; a
configurable fsync policy), continuing a chain when an existing log is reopened (a torn last line
is moved to a ``*.torn`` side file, never chained onto), the ``<log>.head`` sidecar that lets
``verify`` notice a truncated tail, rotation that links the new file to the old one, and reading
the log back (``verify_file``, ``read``, ``query_file``). It knows nothing about policies or
processes: callers pass plain fields, which are made JSON-safe here so that no target can break
logging. Pure standard library; never imports ``agentd``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import signal as _signal
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "AuditLogError",
    "AuditLogLockedError",
    "FSYNC_POLICIES",
    "FlightRecorder",
    "GENESIS_HASH",
    "VerifyResult",
    "canonical_hash",
    "default_audit_log_path",
    "format_time",
    "head_path_for",
    "json_safe",
    "parse_time",
    "query_file",
    "read_records",
    "verify_file",
]

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
FSYNC_POLICIES = ("always", "interval", "never")
DECISIONS = ("allow", "deny", "warn")

# Fields the recorder itself sets; a caller passing one of them is a programming error.
RESERVED_FIELDS = frozenset({"seq", "time", "prev", "hash", "rotated_from"})
# Order of the well-known fields on a line (readability only: the hash is over sorted keys).
_LEADING_FIELDS = (
    "seq",
    "time",
    "agent_id",
    "action_type",
    "target",
    "decision",
    "pattern_ids",
    "severity",
    "signal",
)
_SEVERITY_NAMES = {1: "low", 2: "medium", 3: "high", 4: "critical"}
_MAX_DEPTH = 32
# json.dumps with options builds a new encoder per call; these two are built once (stateless,
# and their output is byte-for-byte that of json.dumps with the same options).
_CANONICAL_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
_LINE_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_TAIL_CHUNK = 64 * 1024


class AuditLogError(Exception):
    """The audit log cannot be opened, written or read as asked; the message says why and where."""


class AuditLogLockedError(AuditLogError):
    """Another writer (another process, or another FlightRecorder) holds the log."""


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of checking a log's chain. ``line`` is 1-based and names the first bad line."""

    ok: bool
    records: int
    error: str | None = None
    line: int | None = None
    warnings: tuple[str, ...] = ()
    last_seq: int | None = None
    last_hash: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["warnings"] = list(self.warnings)
        return out


# ---------------------------------------------------------------------------------------------
# Paths and time


def default_audit_log_path() -> Path:
    """``$AGENTD_AUDIT_LOG``, else ``/var/log/agentd/flight.jsonl`` for root, else
    ``$XDG_STATE_HOME/agentd/flight.jsonl`` (``~/.local/state/agentd/flight.jsonl``)."""
    env = os.environ.get("AGENTD_AUDIT_LOG")
    if env:
        return Path(env).expanduser()
    if os.geteuid() == 0:
        return Path("/var/log/agentd/flight.jsonl")
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(state) / "agentd" / "flight.jsonl"


def head_path_for(path: str | os.PathLike[str]) -> Path:
    """The sidecar holding the last seq and hash written to ``path``."""
    return Path(os.fspath(path) + ".head")


def format_time(moment: _dt.datetime) -> str:
    """RFC 3339, UTC, microseconds: ``2026-11-27T17:44:44.123456Z``."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.UTC)
    return moment.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_RELATIVE_TIME = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_RELATIVE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(
    value: str | _dt.datetime | _dt.date, now: _dt.datetime | None = None
) -> _dt.datetime:
    """An aware UTC datetime from a datetime (naive means UTC), a date (its midnight UTC),
    an RFC 3339 string, or a relative age such as ``15m``, ``2h``, ``7d`` (that long before
    ``now``)."""
    if isinstance(value, _dt.datetime):
        parsed = value
    elif isinstance(value, _dt.date):
        parsed = _dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        relative = _RELATIVE_TIME.match(value)
        if relative:
            base = now or _dt.datetime.now(_dt.UTC)
            seconds = float(relative.group(1)) * _RELATIVE_UNITS[relative.group(2)]
            try:
                parsed = base - _dt.timedelta(seconds=seconds)
            except OverflowError:
                raise ValueError(f"age too large: {value.strip()[:40]!r}") from None
        else:
            text = value.strip()
            if text[-1:] in ("z", "Z"):
                text = text[:-1] + "+00:00"
            try:
                parsed = _dt.datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(
                    f"not an RFC 3339 time or a relative age like 15m/2h/7d: {value!r}"
                ) from None
    else:
        raise TypeError(f"expected a datetime or an RFC 3339 string, got {type(value).__name__}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=_dt.UTC)
    return parsed.astimezone(_dt.UTC)


# ---------------------------------------------------------------------------------------------
# JSON safety and hashing


def _safe_str(text: str) -> str:
    """Valid UTF-8 text: lone surrogates (``os.fsdecode`` of a non-UTF-8 path) become ``\\xNN``."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            return text.encode("utf-8", "backslashreplace").decode("ascii")


def json_safe(value: Any, _depth: int = 0) -> Any:
    """A JSON-serialisable copy of ``value``; never raises. Enums give their str value or their
    name, bytes are decoded with backslashreplace, dates become RFC 3339 text, sets become sorted
    lists, non-finite floats and unknown objects become their ``str``."""
    kind = type(value)
    # Fast paths for what the supervisor passes on every record (exact types only: a str or
    # int subclass such as an Enum goes the long way below).
    if kind is str:
        return value if value.isascii() else _safe_str(value)
    if value is None or kind is int or kind is bool:
        return value
    if _depth > _MAX_DEPTH:
        return "<nested too deep>"
    if isinstance(value, bool):
        return value
    if isinstance(value, enum.Enum):
        inner = value.value
        if isinstance(inner, str):
            return _safe_str(inner)
        return _safe_str(value.name)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return (
            value if value == value and value not in (float("inf"), float("-inf")) else str(value)
        )
    if isinstance(value, str):
        return _safe_str(str(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, _dt.datetime):
        return format_time(value)
    if isinstance(value, (_dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, os.PathLike):
        try:
            return json_safe(os.fspath(value), _depth + 1)
        except Exception:  # noqa: BLE001 - a broken __fspath__ must not break logging
            return _safe_repr(value)
    if isinstance(value, dict):
        return {_safe_key(k): json_safe(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, _depth + 1) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [json_safe(v, _depth + 1) for v in value]
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        try:
            return json_safe(dataclasses.asdict(value), _depth + 1)
        except Exception:  # noqa: BLE001
            return _safe_repr(value)
    return _safe_repr(value)


def _safe_key(key: Any) -> str:
    if type(key) is str and key.isascii():
        return key
    converted = json_safe(key, _MAX_DEPTH)
    return converted if isinstance(converted, str) else json.dumps(converted)


def _safe_repr(value: Any) -> str:
    try:
        return _safe_str(str(value))
    except Exception:  # noqa: BLE001
        return f"<unprintable {type(value).__name__}>"


def _severity_field(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, enum.Enum):
        return value.name.lower()
    if isinstance(value, int) and not isinstance(value, bool):
        return _SEVERITY_NAMES.get(int(value), str(int(value)))
    converted = json_safe(value)
    return converted.lower() if isinstance(converted, str) else str(converted)


def _signal_field(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, enum.Enum):
        return value.name.upper()
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return _signal.Signals(value).name
        except ValueError:
            return str(int(value))
    converted = json_safe(value)
    return converted.upper() if isinstance(converted, str) else str(converted)


def _decision_field(value: Any) -> str:
    if isinstance(value, enum.Enum):
        value = value.value if isinstance(value.value, str) else value.name
    if isinstance(value, str) and value.lower() in DECISIONS:
        return value.lower()
    raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, got {value!r}")


def _pattern_ids_field(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        value = [value]
    try:
        items = list(value)
    except TypeError:
        items = [value]
    return [str(json_safe(item)) for item in items]


def canonical_bytes(record: dict[str, Any]) -> bytes:
    """The bytes that are hashed: the record without ``hash``, sorted keys, compact separators."""
    body = {key: val for key, val in record.items() if key != "hash"}
    return _CANONICAL_ENCODER.encode(body).encode("utf-8")


def canonical_hash(record: dict[str, Any]) -> str:
    """SHA-256 hex of ``canonical_bytes(record)``."""
    return hashlib.sha256(canonical_bytes(record)).hexdigest()


def _line_bytes(record: dict[str, Any]) -> bytes:
    # INVARIANT: the written line is exactly json.dumps of the parsed line in its own key order,
    # so verify can demand byte-for-byte equality and notice even a formatting-only edit.
    return _LINE_ENCODER.encode(record).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Low-level file helpers


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    chunks = []
    while length > 0:
        chunk = os.pread(fd, min(length, 1 << 20), offset)
        if not chunk:
            break
        chunks.append(chunk)
        length -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _rfind_newline(fd: int, end: int) -> int:
    """Offset of the last ``\\n`` in bytes ``[0, end)`` of ``fd``, or -1."""
    pos = end
    while pos > 0:
        start = max(0, pos - _TAIL_CHUNK)
        chunk = os.pread(fd, pos - start, start)
        index = chunk.rfind(b"\n")
        if index >= 0:
            return start + index
        pos = start
    return -1


@dataclass(frozen=True)
class _Tail:
    """Where the last complete line of a log is, and any torn fragment after it."""

    complete_end: int  # end (exclusive) of the last complete line, including its newline
    last_line: bytes | None  # the last complete line without its newline
    last_line_start: int
    torn_start: int | None  # offset of a torn fragment (no trailing newline), if any
    size: int


def _read_tail(fd: int) -> _Tail:
    size = os.fstat(fd).st_size
    if size == 0:
        return _Tail(0, None, 0, None, 0)
    torn_start = None
    complete_end = size
    if os.pread(fd, 1, size - 1) != b"\n":
        torn_start = _rfind_newline(fd, size) + 1
        complete_end = torn_start
    if complete_end == 0:
        return _Tail(0, None, 0, torn_start, size)
    line_start = _rfind_newline(fd, complete_end - 1) + 1
    last_line = _pread_all(fd, complete_end - 1 - line_start, line_start)
    return _Tail(complete_end, last_line, line_start, torn_start, size)


def _fsync_dir(directory: Path) -> None:
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _atomic_write(path: Path, data: bytes, fsync: bool) -> None:
    """Replace ``path`` with ``data``: write a temp file, fsync it, rename over ``path``."""
    tmp = Path(os.fspath(path) + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    try:
        _write_all(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read_head(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(head, problem): the sidecar's content, or why it could not be used."""
    hp = head_path_for(path)
    try:
        raw = hp.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"head sidecar {hp} unreadable: {exc.strerror}"
    try:
        head = json.loads(raw)
        if not (
            isinstance(head, dict)
            and isinstance(head.get("seq"), int)
            and isinstance(head.get("hash"), str)
        ):
            raise ValueError("missing seq/hash")
    except ValueError as exc:
        return None, f"head sidecar {hp} is corrupt ({exc})"
    return head, None


def _parse_line(raw: bytes) -> dict[str, Any]:
    """A record from one line; raises ValueError saying what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 at byte {exc.start}") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:  # no record nests; a hand-made line can, past the interpreter's stack
        raise ValueError("not a record: JSON nested too deeply") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    return record


# ---------------------------------------------------------------------------------------------
# Verifying


def _check_record(
    record: dict[str, Any], raw: bytes, expected_seq: int | None, expected_prev: str | None
) -> str | None:
    """Why ``record`` breaks the chain, or None.

    ``expected_*`` None accepts any value (the first record after a rotation).
    """
    for key, kind in (("seq", int), ("prev", str), ("hash", str), ("time", str)):
        if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool):
            return f"field {key!r} missing or of the wrong type"
    try:
        expected_line = _line_bytes(record)
    except ValueError:
        expected_line = b""
    if expected_line != raw:
        return "line is not in the recorder's exact serialisation (edited by hand?)"
    actual_hash = canonical_hash(record)
    if actual_hash != record["hash"]:
        return (
            f"hash mismatch: content hashes to {actual_hash[:16]}..., "
            f"record says {record['hash'][:16]}... (record edited)"
        )
    if expected_seq is not None and record["seq"] != expected_seq:
        if record["seq"] > expected_seq:
            return (
                f"seq gap: expected seq {expected_seq}, found {record['seq']} "
                "(record(s) removed or reordered)"
            )
        return (
            f"seq out of order: expected seq {expected_seq}, found {record['seq']} "
            "(record(s) inserted, duplicated or reordered)"
        )
    if expected_prev is not None and record["prev"] != expected_prev:
        return (
            "prev does not match the hash of the record before it "
            "(record removed, inserted or reordered)"
        )
    return None


def _check_rotation_link(path: Path, record: dict[str, Any]) -> tuple[str | None, str | None]:
    """(error, warning) about the link from a rotated file's first record to the old file."""
    old = path.parent / os.path.basename(str(record["rotated_from"]))
    # the name comes from the record: said back printable, on one line
    name = old.name if old.name.isprintable() else ascii(old.name)
    if old.name in ("", ".", ".."):
        return f"rotated_from {name} names no file", None
    try:
        fd = os.open(old, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except (OSError, ValueError):  # ValueError: a NUL in the name
        return None, f"rotated from {name}, which is not here: the link to it was not checked"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return f"rotated from {name}, which is not a regular file", None
        tail = _read_tail(fd)
    except OSError as exc:
        return None, f"rotated from {name}, which cannot be read ({exc.strerror}): not checked"
    finally:
        os.close(fd)
    if tail.last_line is None:
        if record["seq"] == 0 and record["prev"] == GENESIS_HASH:
            return None, None  # an empty log was rotated: the chain starts here
        return f"rotated from {name}, which has no complete record", None
    try:
        last = _parse_line(tail.last_line)
    except ValueError as exc:
        return f"rotated from {name}, whose last line is {exc}", None
    if last.get("hash") != record["prev"]:
        return f"prev does not match the last hash of {name} (rotation link broken)", None
    if isinstance(last.get("seq"), int) and last["seq"] + 1 != record["seq"]:
        return f"seq {record['seq']} does not follow the last seq {last['seq']} of {name}", None
    return None, None


def _verify_bytes(
    path: Path, data: bytes, head: dict[str, Any] | None, head_problem: str | None
) -> VerifyResult:
    # One pass on purpose: the expected sequence number and previous hash are the state of a
    # single loop over the chain; split up, every piece would carry them.
    warnings: list[str] = []
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline
    expected_seq: int | None = 0
    expected_prev: str | None = GENESIS_HASH
    count = 0
    last_seq: int | None = None
    last_hash: str | None = None
    head_line_hash: str | None = None
    for index, raw in enumerate(lines):
        line_no = index + 1
        if not raw:
            return VerifyResult(
                False, count, "empty line", line_no, tuple(warnings), last_seq, last_hash
            )
        try:
            record = _parse_line(raw)
        except ValueError as exc:
            return VerifyResult(
                False, count, f"line is {exc}", line_no, tuple(warnings), last_seq, last_hash
            )
        if index == 0 and "rotated_from" in record:
            expected_seq = expected_prev = None  # checked against the old file below
        problem = _check_record(record, raw, expected_seq, expected_prev)
        if problem is None and index == 0 and "rotated_from" in record:
            problem, warning = _check_rotation_link(path, record)
            if warning:
                warnings.append(warning)
        if problem is not None:
            return VerifyResult(
                False, count, problem, line_no, tuple(warnings), last_seq, last_hash
            )
        count += 1
        last_seq, last_hash = record["seq"], record["hash"]
        expected_seq, expected_prev = last_seq + 1, last_hash
        if head is not None and record["seq"] == head["seq"]:
            head_line_hash = record["hash"]
    if torn:
        return VerifyResult(
            False,
            count,
            f"torn last line: {len(torn)} bytes without a trailing newline "
            "(a write was interrupted, or bytes were appended)",
            len(lines) + 1,
            tuple(warnings),
            last_seq,
            last_hash,
        )
    if head_problem:
        return VerifyResult(False, count, head_problem, None, tuple(warnings), last_seq, last_hash)
    if head is None:
        if count:
            warnings.append(
                f"no head sidecar {head_path_for(path).name}: a truncated tail cannot be detected"
            )
    elif last_seq is None or head["seq"] > last_seq:
        ends = "is empty" if last_seq is None else f"ends at seq {last_seq}"
        return VerifyResult(
            False,
            count,
            f"truncated tail: head sidecar records seq {head['seq']} but the "
            f"file {ends} (records removed from the end)",
            len(lines) or None,
            tuple(warnings),
            last_seq,
            last_hash,
        )
    elif head_line_hash is None:
        warnings.append(
            f"head sidecar seq {head['seq']} precedes this file's first record: not compared"
        )
    elif head_line_hash != head["hash"]:
        return VerifyResult(
            False,
            count,
            f"head sidecar hash for seq {head['seq']} does not match the file (chain rewritten?)",
            None,
            tuple(warnings),
            last_seq,
            last_hash,
        )
    return VerifyResult(True, count, None, None, tuple(warnings), last_seq, last_hash)


def verify_file(path: str | os.PathLike[str]) -> VerifyResult:
    """Check the chain of the log at ``path`` (read-only; works while a writer is appending).
    Raises ``FileNotFoundError``/``PermissionError`` when the log cannot be read at all."""
    path = Path(path)
    head, head_problem = _read_head(path)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        data = _pread_all(fd, size, 0)
        # A writer may be mid-append: if the file grew past a torn end, read the rest (bounded).
        for _ in range(3):
            if not data or data.endswith(b"\n"):
                break
            grown = os.fstat(fd).st_size
            if grown <= len(data):
                break
            data += _pread_all(fd, grown - len(data), len(data))
    finally:
        os.close(fd)
    return _verify_bytes(path, data, head, head_problem)


# ---------------------------------------------------------------------------------------------
# Reading and querying


def read_records(path: str | os.PathLike[str], on_error: str = "raise") -> Iterator[dict[str, Any]]:
    """Yield every record of the log at ``path`` in file order. A torn last line is skipped; a
    line that is not a JSON object raises ``AuditLogError`` (``on_error="raise"``) or is skipped
    with a logged warning (``on_error="skip"``). Does not check the chain: use ``verify_file``."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    with open(path, "rb") as handle:
        line_no = 0
        for raw in handle:
            line_no += 1
            if not raw.endswith(b"\n"):
                logger.warning("%s:%d: torn last line (%d bytes) skipped", path, line_no, len(raw))
                return
            try:
                yield _parse_line(raw[:-1])
            except ValueError as exc:
                if on_error == "raise":
                    raise AuditLogError(f"{path}:{line_no}: line is {exc}") from None
                logger.warning("%s:%d: line is %s; skipped", path, line_no, exc)


def _record_time(record: dict[str, Any]) -> _dt.datetime | None:
    try:
        return parse_time(record["time"])
    except (KeyError, TypeError, ValueError):
        return None


def query_file(
    path: str | os.PathLike[str],
    agent_id: str | None = None,
    action_type: str | None = None,
    decision: str | None = None,
    since: str | _dt.datetime | None = None,
    until: str | _dt.datetime | None = None,
    on_error: str = "raise",
) -> Iterator[dict[str, Any]]:
    """Records of the log at ``path`` matching every given filter. ``since`` is inclusive and
    ``until`` exclusive; both take a datetime (naive = UTC), RFC 3339 text or an age like ``2h``."""
    since_at = parse_time(since) if since is not None else None
    until_at = parse_time(until) if until is not None else None
    decision = decision.lower() if isinstance(decision, str) else decision
    for record in read_records(path, on_error=on_error):
        if agent_id is not None and record.get("agent_id") != agent_id:
            continue
        if action_type is not None and record.get("action_type") != action_type:
            continue
        if decision is not None and record.get("decision") != decision:
            continue
        if since_at is not None or until_at is not None:
            moment = _record_time(record)
            if moment is None:
                continue
            if since_at is not None and moment < since_at:
                continue
            if until_at is not None and moment >= until_at:
                continue
        yield record


# ---------------------------------------------------------------------------------------------
# Writing


class FlightRecorder:
    """The single writer of one audit log file. Use as a context manager or call ``close()``.

    ``fsync``: ``"always"`` fsyncs the log and replaces the head sidecar after every record;
    ``"interval"`` does both at most every ``fsync_interval`` seconds, from a background thread,
    so a record is durable within about that long; ``"never"`` leaves it to the OS and writes the
    head only on ``close()``/``rotate()``. ``close()`` always fsyncs and writes the head.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fsync: str = "always",
        fsync_interval: float = 1.0,
        *,
        verify_on_open: bool = False,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, got {fsync!r}")
        if not fsync_interval > 0:
            raise ValueError(f"fsync_interval must be > 0 seconds, got {fsync_interval!r}")
        self.path = Path(path)
        self.fsync = fsync
        self.fsync_interval = float(fsync_interval)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        # Held for a whole fsync + head update (order: _sync_lock, then _lock), so the flusher
        # can fsync with _lock released while record() goes on, and the fd cannot be closed or
        # rotated away under it.
        self._sync_lock = threading.Lock()
        self._owner_pid = os.getpid()
        self._fd: int | None = None
        self._broken: str | None = None
        self._dirty = False  # records written since the last fsync + head update
        self._closing = False
        self._last_sync = time.monotonic()
        self._flusher: threading.Thread | None = None
        self._next_seq = 0
        self._prev = GENESIS_HASH
        self._size = 0
        self._open(verify_on_open)
        if fsync == "interval":
            self._flusher = threading.Thread(
                target=self._flush_loop, name=f"flight-recorder-fsync:{self.path.name}", daemon=True
            )
            self._flusher.start()

    # -- opening ------------------------------------------------------------------------------

    def _open(self, verify_on_open: bool) -> None:
        self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        rotating = Path(os.fspath(self.path) + ".rotating")
        if not self.path.exists() and rotating.exists():
            logger.warning(
                "%s: completing an interrupted rotation (renaming %s into place)",
                self.path,
                rotating.name,
            )
            os.replace(rotating, self.path)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise AuditLogLockedError(
                        f"{self.path}: another writer holds this audit log (flock); "
                        "one FlightRecorder per file: stop the other agentd, "
                        "or use a different --log"
                    ) from None
                raise
            if created:
                _fsync_dir(self.path.parent)
            if verify_on_open:
                result = verify_file(self.path)
                if not result.ok and not (result.error or "").startswith("torn last line"):
                    raise AuditLogError(
                        f"{self.path}:{result.line or '-'}: refusing to append to a log "
                        f"that fails verification: {result.error}"
                    )
            self._continue_chain(fd)
        except BaseException:
            self._fd = None
            os.close(fd)
            raise
        self._fd = fd

    def _continue_chain(self, fd: int) -> None:
        tail = _read_tail(fd)
        head, head_problem = _read_head(self.path)
        if head_problem:
            raise AuditLogError(
                f"{self.path}: {head_problem}; refusing to append (move the log and its "
                "sidecar aside to start a new chain)"
            )
        last: dict[str, Any] | None = None
        if tail.last_line is not None:
            line_no_hint = f"{self.path} (last complete line, byte {tail.last_line_start})"
            try:
                last = _parse_line(tail.last_line)
            except ValueError as exc:
                raise AuditLogError(
                    f"{line_no_hint}: line is {exc}; refusing to chain onto it "
                    "(run `agentd audit verify`, then move the log aside)"
                ) from None
            problem = _check_record(last, tail.last_line, None, None)
            if problem:
                raise AuditLogError(
                    f"{line_no_hint}: {problem}; refusing to chain onto it "
                    "(run `agentd audit verify`, then move the log aside)"
                )
        if head is not None:
            if last is None or head["seq"] > last["seq"]:
                ends = "has no complete record" if last is None else f"ends at seq {last['seq']}"
                raise AuditLogError(
                    f"{self.path}: truncated tail: head sidecar records seq {head['seq']} "
                    f"but the file {ends}; "
                    f"refusing to append (to start a new chain, move {self.path.name} and "
                    f"{head_path_for(self.path).name} aside)"
                )
            if head["seq"] == last["seq"] and head["hash"] != last["hash"]:
                raise AuditLogError(
                    f"{self.path}: head sidecar hash for seq {head['seq']} does not match the "
                    "last record; refusing to append"
                )
        if last is not None:
            self._next_seq, self._prev = last["seq"] + 1, last["hash"]
        self._size = tail.complete_end
        self._fd = fd
        if tail.torn_start is not None:
            self._recover_torn(fd, tail)

    def _recover_torn(self, fd: int, tail: _Tail) -> None:
        """Move a torn last fragment into ``<log>.torn``, cut it off, and say so in the chain."""
        assert tail.torn_start is not None  # the caller found one
        fragment = _pread_all(fd, tail.size - tail.torn_start, tail.torn_start)
        torn_path = Path(os.fspath(self.path) + ".torn")
        digest = hashlib.sha256(fragment).hexdigest()
        header = (
            f"# torn fragment of {self.path.name} at byte {tail.torn_start}, "
            f"{len(fragment)} bytes, "
            f"sha256 {digest}, moved {format_time(_dt.datetime.now(_dt.UTC))}\n"
        ).encode()
        side = os.open(torn_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            _write_all(side, header + fragment + b"\n")
            os.fsync(side)
        finally:
            os.close(side)
        os.ftruncate(fd, tail.torn_start)
        os.fsync(fd)
        logger.warning(
            "%s: torn last line (%d bytes at byte %d, no trailing newline) moved to %s and cut off",
            self.path,
            len(fragment),
            tail.torn_start,
            torn_path,
        )
        self._append_locked(
            {
                "agent_id": None,
                "action_type": "audit_torn_tail",
                "target": torn_path.name,
                "decision": None,
                "pattern_ids": [],
                "severity": None,
                "signal": None,
                "torn_offset": tail.torn_start,
                "torn_bytes": len(fragment),
                "torn_sha256": digest,
                "reason": (
                    "an interrupted write left a partial line; it was moved to the .torn side file"
                ),
            }
        )
        self._sync_locked()

    # -- writing ------------------------------------------------------------------------------

    def record(
        self,
        *,
        decision: Any,
        agent_id: Any = None,
        action_type: Any = None,
        target: Any = None,
        pattern_ids: Any = None,
        severity: Any = None,
        signal: Any = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Append one decision and return the record as written (with ``seq``, ``prev``, ``hash``).
        Raises ``ValueError`` for a decision other than allow/deny/warn, ``TypeError`` for a
        reserved
        field, and ``AuditLogError``/``OSError`` when the record could not be written."""
        reserved = RESERVED_FIELDS.intersection(extra)
        if reserved:
            raise TypeError(f"record(): {', '.join(sorted(reserved))} are set by the recorder")
        fields: dict[str, Any] = {
            "agent_id": json_safe(agent_id),
            "action_type": json_safe(action_type),
            "target": json_safe(target),
            "decision": _decision_field(decision),
            "pattern_ids": _pattern_ids_field(pattern_ids),
            "severity": _severity_field(severity),
            "signal": _signal_field(signal),
        }
        for key, value in extra.items():
            fields[_safe_key(key)] = json_safe(value)
        with self._lock:
            record = self._append_locked(fields)
            if self.fsync == "always":
                self._sync_locked()
            elif self.fsync == "interval":
                if not self._dirty:
                    # Wake the flusher only on clean -> dirty: it then sleeps out the interval.
                    self._dirty = True
                    self._cond.notify_all()
            else:
                self._dirty = True
        return record

    def _append_locked(self, fields: dict[str, Any]) -> dict[str, Any]:
        if self._fd is None:
            raise AuditLogError(f"{self.path}: the FlightRecorder is closed")
        if os.getpid() != self._owner_pid:
            raise AuditLogError(
                f"{self.path}: FlightRecorder used in a forked child (pid {os.getpid()}); "
                "only the process that opened it may write"
            )
        if self._broken:
            raise AuditLogError(
                f"{self.path}: recorder unusable after an earlier failure: {self._broken}"
            )
        record: dict[str, Any] = {
            "seq": self._next_seq,
            "time": format_time(_dt.datetime.now(_dt.UTC)),
        }
        for key in _LEADING_FIELDS[2:]:
            record[key] = fields.get(key)
        for key, value in fields.items():
            if key not in record:
                record[key] = value
        record["prev"] = self._prev
        # INVARIANT: no "hash" key yet, so the canonical bytes are the record itself, sorted
        # (the same bytes as canonical_bytes(), without its copy).
        record["hash"] = hashlib.sha256(
            _CANONICAL_ENCODER.encode(record).encode("utf-8")
        ).hexdigest()
        line = _line_bytes(record) + b"\n"
        try:
            _write_all(self._fd, line)
        except OSError as exc:
            # Never leave a partial line for the next record to chain onto.
            try:
                os.ftruncate(self._fd, self._size)
            except OSError as trunc_exc:
                self._broken = (
                    f"write failed ({exc.strerror}) and the partial line could not be cut "
                    f"({trunc_exc.strerror})"
                )
            raise AuditLogError(
                f"{self.path}: could not append record seq {record['seq']}: {exc.strerror}"
            ) from exc
        self._size += len(line)
        self._next_seq += 1
        self._prev = record["hash"]
        return record

    def _sync_locked(self) -> None:
        if self._fd is None:
            return
        os.fsync(self._fd)
        if self._next_seq > 0:
            head = {
                "seq": self._next_seq - 1,
                "hash": self._prev,
                "file": self.path.name,
                "time": format_time(_dt.datetime.now(_dt.UTC)),
            }
            _atomic_write(head_path_for(self.path), _line_bytes(head) + b"\n", fsync=True)
        self._dirty = False
        self._last_sync = time.monotonic()

    def _sync_outside_lock(self) -> None:
        """The flusher's fsync + head update, with ``_lock`` released during the I/O so that
        ``record()`` is never held up by the disk. The head names the last record written before
        the fsync began, so it never claims a record that is not on disk."""
        with self._sync_lock:
            with self._lock:
                if self._fd is None or self._closing:
                    return
                fd, next_seq, last_hash = self._fd, self._next_seq, self._prev
                self._dirty = False
            try:
                os.fsync(fd)
                if next_seq > 0:
                    head = {
                        "seq": next_seq - 1,
                        "hash": last_hash,
                        "file": self.path.name,
                        "time": format_time(_dt.datetime.now(_dt.UTC)),
                    }
                    _atomic_write(head_path_for(self.path), _line_bytes(head) + b"\n", fsync=True)
            except BaseException:
                with self._lock:
                    self._dirty = True
                raise
            finally:
                self._last_sync = time.monotonic()

    def _flush_loop(self) -> None:
        while True:
            with self._cond:
                while not self._dirty and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                deadline = self._last_sync + self.fsync_interval
                while not self._closing and (remaining := deadline - time.monotonic()) > 0:
                    self._cond.wait(remaining)
                if self._closing:
                    return  # close() does the final sync
            try:
                self._sync_outside_lock()
            except OSError as exc:
                logger.error("%s: periodic fsync failed: %s", self.path, exc)

    def flush(self) -> None:
        """fsync the log and replace the head sidecar now, whatever the policy."""
        with self._sync_lock, self._lock:
            self._sync_locked()

    def rotate(self) -> Path:
        """Close this file as ``<path>.<UTC timestamp>`` and continue the chain in a new ``<path>``
        whose first record (``action_type`` ``audit_rotate``) carries ``rotated_from`` and the old
        file's last hash as ``prev``. Returns the old file's new path."""
        with self._sync_lock, self._lock:
            if self._fd is None:
                raise AuditLogError(f"{self.path}: the FlightRecorder is closed")
            self._sync_locked()
            stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
            old = Path(f"{self.path}.{stamp}")
            suffix = 0
            while old.exists():
                suffix += 1
                old = Path(f"{self.path}.{stamp}-{suffix}")
            if self._next_seq > 0:
                head = {
                    "seq": self._next_seq - 1,
                    "hash": self._prev,
                    "file": old.name,
                    "time": format_time(_dt.datetime.now(_dt.UTC)),
                }
                _atomic_write(head_path_for(old), _line_bytes(head) + b"\n", fsync=True)
            # The new file is complete (first record written, fsynced, locked) before it takes
            # the log's name, so a crash leaves either the old layout or a finished rotation
            # (or a .rotating file that the next open renames into place).
            rotating = Path(os.fspath(self.path) + ".rotating")
            new_fd = os.open(
                rotating, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640
            )
            try:
                fcntl.flock(new_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(new_fd)
                raise
            old_fd, old_size = self._fd, self._size
            self._fd, self._size = new_fd, 0
            try:
                self._append_locked(
                    {
                        "agent_id": None,
                        "action_type": "audit_rotate",
                        "target": old.name,
                        "decision": None,
                        "pattern_ids": [],
                        "severity": None,
                        "signal": None,
                        "rotated_from": old.name,
                    }
                )
                os.fsync(new_fd)
                os.rename(self.path, old)
                os.rename(rotating, self.path)
            except BaseException:
                os.close(new_fd)
                self._fd, self._size = old_fd, old_size
                raise
            os.close(old_fd)
            self._sync_locked()
            _fsync_dir(self.path.parent)
            logger.info("%s: rotated to %s", self.path, old)
            return old

    def close(self) -> None:
        """fsync, write the head sidecar, release the lock. Idempotent."""
        with self._sync_lock, self._cond:
            if self._fd is None:
                return
            self._closing = True
            self._cond.notify_all()
            try:
                if os.getpid() == self._owner_pid:
                    self._sync_locked()
            finally:
                os.close(self._fd)
                self._fd = None
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join()

    def __enter__(self) -> FlightRecorder:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------

    @property
    def last_hash(self) -> str:
        """Hash of the last record written (``GENESIS_HASH`` before the first).

        Anchor it somewhere the agent cannot write to detect a rewritten chain.
        """
        with self._lock:
            return self._prev

    @property
    def next_seq(self) -> int:
        with self._lock:
            return self._next_seq

    def verify(self) -> VerifyResult:
        """Check the whole chain of this recorder's file, head sidecar included."""
        with self._sync_lock, self._lock:
            if self._fd is not None and self._dirty and self.fsync != "never":
                self._sync_locked()
            return verify_file(self.path)

    def query(
        self,
        agent_id: str | None = None,
        action_type: str | None = None,
        decision: str | None = None,
        since: str | _dt.datetime | None = None,
        until: str | _dt.datetime | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Records of this file matching every given filter (see ``query_file``)."""
        return query_file(
            self.path,
            agent_id=agent_id,
            action_type=action_type,
            decision=decision,
            since=since,
            until=until,
        )

    @staticmethod
    def read(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
        """Every record of the log at ``path`` (see ``read_records``)."""
        return read_records(path)

    def __repr__(self) -> str:
        state = "closed" if self._fd is None else f"next seq {self._next_seq}"
        return f"FlightRecorder({os.fspath(self.path)!r}, fsync={self.fsync!r}, {state})"
