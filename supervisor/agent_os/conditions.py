"""Pattern conditions: named requirements checked against the evaluation context.

A condition describes when an action is *acceptable*. The engine applies them one way for every
pattern (see docs/policy-semantics.md): an ``allow`` pattern grants only when all its conditions
hold; a ``deny`` or ``warn`` pattern fires only when at least one of them does not hold (the action
is outside the envelope the conditions describe). A condition whose context value is missing or of
the wrong type does not hold: missing evidence never counts as compliance (fail closed).

Each condition is data: its name, the context keys it reads (they become part of the decision-cache
key), whether its answer depends on the clock or on history (then decisions are not cached), a
validator for its configured value, and a checker. Rate state for ``max_operations_per_minute``
lives in a ``ConditionState`` owned by the compiled policy, never in this module.
"""

from __future__ import annotations

import collections
import datetime as _dt
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import netaddr

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WEEKDAY_ALIASES = {d[:3]: d for d in WEEKDAYS}
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE")
_ENCRYPTED_SCHEMES = ("https://", "wss://", "tls://", "sftp://", "ssh://", "ftps://")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")
_WHERE = re.compile(r"\bWHERE\b", re.IGNORECASE)


class ConditionState:
    """Mutable state some conditions need (operation counts), one per compiled policy."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[tuple[str, str], collections.deque[float]] = {}

    def count_operation(self, key: tuple[str, str], now: float, window: float = 60.0) -> int:
        """Record one operation for ``key`` at ``now`` and return how many fall in the window."""
        with self._lock:
            events = self._events.setdefault(key, collections.deque())
            events.append(now)
            while events and events[0] <= now - window:
                events.popleft()
            return len(events)


@dataclass(frozen=True)
class Check:
    """The outcome of one condition: whether it holds, and why (for the decision's reason)."""

    holds: bool
    why: str


@dataclass(frozen=True)
class ConditionSpec:
    name: str
    description: str
    context_keys: tuple[str, ...]
    volatile: bool  # depends on the clock or on history: never cache decisions that use it
    validate: Callable[[Any], str | None]
    check: Callable[[Any, str, Mapping[str, Any], EvalEnv], Check]


@dataclass(frozen=True)
class EvalEnv:
    """What a checker may need beyond the context: the clock, the rate state, who is asking."""

    now: _dt.datetime
    monotonic: float
    state: ConditionState
    pattern_id: str
    agent_id: str


# --- validators -------------------------------------------------------------------------------


def _non_negative_int(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return f"expected a non-negative integer, got {value!r}"
    return None


def _positive_int(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return f"expected a positive integer, got {value!r}"
    return None


def _boolean(value: Any) -> str | None:
    if not isinstance(value, bool):
        return f"expected true or false, got {value!r}"
    return None


def _methods(value: Any) -> str | None:
    if not isinstance(value, (list, tuple)) or not value:
        return f"expected a non-empty list of HTTP methods, got {value!r}"
    bad = [m for m in value if not isinstance(m, str) or m.upper() not in HTTP_METHODS]
    if bad:
        return f"unknown HTTP method(s) {bad!r}; known: {', '.join(HTTP_METHODS)}"
    return None


def _time_range(value: Any) -> str | None:
    if not isinstance(value, Mapping) or set(value) != {"start", "end"}:
        return f"expected {{start: 'HH:MM', end: 'HH:MM'}}, got {value!r}"
    for key in ("start", "end"):
        if not isinstance(value[key], str) or not _HHMM.match(value[key]):
            return f"time_range.{key} must be 'HH:MM' (24-hour), got {value[key]!r}"
    if value["start"] == value["end"]:
        return "time_range start and end are equal: the range would be empty"
    return None


def _days(value: Any) -> str | None:
    if not isinstance(value, (list, tuple)) or not value:
        return f"expected a non-empty list of weekday names, got {value!r}"
    bad = [d for d in value if not isinstance(d, str) or _weekday(d) is None]
    if bad:
        return f"unknown day name(s) {bad!r}; use monday..sunday (or mon..sun)"
    return None


def _weekday(name: str) -> str | None:
    lowered = name.strip().lower()
    if lowered in WEEKDAYS:
        return lowered
    return _WEEKDAY_ALIASES.get(lowered)


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


# --- checkers ---------------------------------------------------------------------------------


def _int_in_context(ctx: Mapping[str, Any], key: str) -> int | None:
    value = ctx.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _limit_check(label: str, key: str):
    """A checker for ``label``: the context's integer ``key`` is at most the configured limit."""

    def check(limit: int, target: str, ctx: Mapping[str, Any], env: EvalEnv) -> Check:
        value = _int_in_context(ctx, key)
        if value is None:
            return Check(False, f"{label}: context has no integer '{key}'")
        if value > limit:
            return Check(False, f"{label}: {value} > {limit}")
        return Check(True, f"{label}: {value} <= {limit}")

    return check


def _flag_check(key_names: tuple[str, ...], label: str):
    def check(required: bool, target: str, ctx: Mapping[str, Any], env: EvalEnv) -> Check:
        if not required:
            return Check(True, f"{label}: not required")
        if any(ctx.get(key) is True for key in key_names):
            return Check(True, f"{label}: context {key_names[0]}=true")
        return Check(False, f"{label}: context lacks {key_names[0]}=true")

    return check


def _check_created(value: bool, target: str, ctx: Mapping[str, Any], env: EvalEnv) -> Check:
    # Only a literal true is evidence: a missing or mistyped value reads as "not the agent's".
    created = ctx.get("created_by_agent") is True
    what = "the agent's own (made during this run)" if created else "not known to be the agent's"
    return Check(created is value, f"created_by_agent: {what}")


def _check_preexisting(value: bool, target: str, ctx: Mapping[str, Any], env: EvalEnv) -> Check:
    # Only a literal false is evidence that nothing from before the run is at stake: a missing
    # or mistyped value reads as "there before the run" (``false`` grants on evidence only;
    # ``true`` puts a file nobody vouched for under a rate limit).
    older = ctx.get("preexisting") is not False
    what = "there before the run (or not known)" if older else "made during this run, or absent"
    return Check(older is value, f"preexisting: {what}")


FILE_TYPES = ("regular", "directory", "symlink", "fifo", "socket", "char_device", "block_device")


def _file_types(value: Any) -> str | None:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        return f"expected a file type or a list of them, got {value!r}"
    bad = [t for t in items if t not in FILE_TYPES]
    if bad:
        return f"unknown file type(s) {bad!r}; known: {', '.join(FILE_TYPES)}"
    return None


def _check_file_type(value: Any, target: str, ctx: Mapping[str, Any], env: EvalEnv) -> Check:
    wanted = [value] if isinstance(value, str) else list(value)
    actual = ctx.get("file_type")
    if not isinstance(actual, str):
        return Check(False, "file_type: context has no 'file_type'")
    return Check(
        actual in wanted, f"file_type: {actual} {'in' if actual in wanted else 'not in'} {wanted}"
    )


def _check_methods(methods: list[str], target: str, ctx: Mapping[str, Any], env: EvalEnv) -> Check:
    method = ctx.get("method")
    if not isinstance(method, str):
        return Check(False, "allowed_methods: context has no 'method'")
    allowed = {m.upper() for m in methods}
    if method.upper() not in allowed:
        return Check(False, f"allowed_methods: {method.upper()} not in {sorted(allowed)}")
    return Check(True, f"allowed_methods: {method.upper()} allowed")


def _check_auth_header(required: bool, target: str, ctx: Mapping[str, Any], env: EvalEnv) -> Check:
    if not required:
        return Check(True, "require_auth_header: not required")
    headers = ctx.get("headers")
    if isinstance(headers, Mapping):
        for name, value in headers.items():
            if isinstance(name, str) and name.lower() == "authorization" and value:
                return Check(True, "require_auth_header: Authorization header present")
    if ctx.get("auth_header"):
        return Check(True, "require_auth_header: auth_header present")
    return Check(False, "require_auth_header: no Authorization header")


def _check_where(required: bool, target: str, ctx: Mapping[str, Any], env: EvalEnv) -> Check:
    if not required:
        return Check(True, "require_where_clause: not required")
    query = ctx.get("query")
    if not isinstance(query, str):
        query = target
    if _WHERE.search(_QUOTED.sub("''", query)):
        return Check(True, "require_where_clause: WHERE clause present")
    return Check(False, "require_where_clause: statement has no WHERE clause")


def _now(ctx: Mapping[str, Any], env: EvalEnv) -> _dt.datetime | None:
    value = ctx.get("now", env.now)
    if isinstance(value, str):
        try:
            return _dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    return value if isinstance(value, _dt.datetime) else None


def _check_time_range(
    spec: Mapping[str, str], target: str, ctx: Mapping[str, Any], env: EvalEnv
) -> Check:
    now = _now(ctx, env)
    if now is None:
        return Check(False, "time_range: context 'now' is not a datetime")
    start, end = _minutes(spec["start"]), _minutes(spec["end"])
    minute = now.hour * 60 + now.minute
    inside = start <= minute < end if start < end else (minute >= start or minute < end)
    label = f"{now:%H:%M} {'inside' if inside else 'outside'} {spec['start']}-{spec['end']}"
    return Check(inside, f"time_range: {label}")


def _check_days(days: list[str], target: str, ctx: Mapping[str, Any], env: EvalEnv) -> Check:
    now = _now(ctx, env)
    if now is None:
        return Check(False, "days: context 'now' is not a datetime")
    today = WEEKDAYS[now.weekday()]
    allowed = {day for day in map(_weekday, days) if day is not None}  # validated names
    verdict = "in" if today in allowed else "not in"
    return Check(today in allowed, f"days: {today} {verdict} {sorted(allowed)}")


def _check_rate(limit: int, target: str, ctx: Mapping[str, Any], env: EvalEnv) -> Check:
    count = env.state.count_operation((env.pattern_id, env.agent_id), env.monotonic)
    if count > limit:
        return Check(False, f"max_operations_per_minute: {count} > {limit} in the last minute")
    return Check(True, f"max_operations_per_minute: {count} <= {limit}")


def _check_encryption(required: bool, target: str, ctx: Mapping[str, Any], env: EvalEnv) -> Check:
    if not required:
        return Check(True, "require_encryption: not required")
    if ctx.get("encrypted") is True:
        return Check(True, "require_encryption: context encrypted=true")
    if target.lower().startswith(_ENCRYPTED_SCHEMES):
        return Check(True, "require_encryption: encrypted scheme")
    return Check(
        False, "require_encryption: no evidence of encryption (encrypted=true or https://)"
    )


def _destination_check(label: str, inside: bool):
    """Checker for ``destination_in`` (inside=True) and ``destination_not_in`` (inside=False).

    The destination is every address known for it (``netaddr.destination``: ``dest_ip`` and a
    literal target host); the condition holds only when it holds for each of them. An unknown
    destination (a name without ``dest_ip``, a unix socket, a malformed ``dest_ip``) never holds.
    """

    def check(items: list[str], target: str, ctx: Mapping[str, Any], env: EvalEnv) -> Check:
        where = netaddr.destination(target, ctx)
        if not where.addresses:
            return Check(False, f"{label}: destination address unknown ({where.source})")
        sets = netaddr.build_address_sets(items)  # validated when the pattern was made
        for address in where.addresses:
            hit = sets.match(address)
            if inside and hit is None:
                return Check(
                    False, f"{label}: {address} ({where.source}) is in none of {list(items)}"
                )
            if not inside and hit is not None:
                return Check(False, f"{label}: {address} ({where.source}) is in {hit!r}")
        verdict = "in" if inside else "outside"
        return Check(True, f"{label}: {where.source} {verdict} {list(items)}")

    return check


CONDITIONS: dict[str, ConditionSpec] = {
    spec.name: spec
    for spec in (
        ConditionSpec(
            "max_size_bytes",
            "size_bytes <= value",
            ("size_bytes",),
            False,
            _non_negative_int,
            _limit_check("max_size_bytes", "size_bytes"),
        ),
        ConditionSpec(
            "require_confirmation",
            "confirmed is true",
            ("confirmed",),
            False,
            _boolean,
            _flag_check(("confirmed",), "require_confirmation"),
        ),
        ConditionSpec(
            "created_by_agent",
            "the target (a process) is (true) / is not known to be (false) the agent's "
            "own, made during this run",
            ("created_by_agent",),
            False,
            _boolean,
            _check_created,
        ),
        ConditionSpec(
            "preexisting",
            "the target (a file) was there before the run began (true; also when not "
            "known) / was made during the run or does not exist (false)",
            ("preexisting",),
            False,
            _boolean,
            _check_preexisting,
        ),
        ConditionSpec(
            "file_type",
            "the target's file type (file_type) is the value, or one of the list",
            ("file_type",),
            False,
            _file_types,
            _check_file_type,
        ),
        ConditionSpec(
            "allowed_methods",
            "method is one of value",
            ("method",),
            False,
            _methods,
            _check_methods,
        ),
        ConditionSpec(
            "require_auth_header",
            "headers carry Authorization",
            ("headers", "auth_header"),
            False,
            _boolean,
            _check_auth_header,
        ),
        ConditionSpec(
            "require_where_clause",
            "the SQL has a WHERE clause",
            ("query",),
            False,
            _boolean,
            _check_where,
        ),
        ConditionSpec(
            "max_affected_rows",
            "affected_rows <= value",
            ("affected_rows",),
            False,
            _non_negative_int,
            _limit_check("max_affected_rows", "affected_rows"),
        ),
        ConditionSpec(
            "time_range",
            "local time within [start, end)",
            ("now",),
            True,
            _time_range,
            _check_time_range,
        ),
        ConditionSpec("days", "today is one of value", ("now",), True, _days, _check_days),
        ConditionSpec(
            "require_mfa",
            "mfa_verified is true",
            ("mfa_verified", "mfa"),
            False,
            _boolean,
            _flag_check(("mfa_verified", "mfa"), "require_mfa"),
        ),
        ConditionSpec(
            "max_operations_per_minute",
            "at most value operations per agent per minute",
            (),
            True,
            _positive_int,
            _check_rate,
        ),
        ConditionSpec(
            "require_audit_log",
            "audit_logged is true",
            ("audit_logged",),
            False,
            _boolean,
            _flag_check(("audit_logged",), "require_audit_log"),
        ),
        ConditionSpec(
            "require_encryption",
            "encrypted is true or the target uses TLS",
            ("encrypted",),
            False,
            _boolean,
            _check_encryption,
        ),
        ConditionSpec(
            "destination_in",
            "the destination address (dest_ip, else a literal target host) is in one of "
            "the address sets / CIDRs",
            ("dest_ip",),
            False,
            netaddr.validate_address_sets,
            _destination_check("destination_in", True),
        ),
        ConditionSpec(
            "destination_not_in",
            "the destination address (dest_ip, else a literal target host) is in none of "
            "the address sets / CIDRs",
            ("dest_ip",),
            False,
            netaddr.validate_address_sets,
            _destination_check("destination_not_in", False),
        ),
    )
}


def validate_conditions(conditions: Mapping[str, Any]) -> list[str]:
    """Problems with a pattern's ``conditions`` mapping, one message each (empty when valid)."""
    import difflib

    problems: list[str] = []
    if not isinstance(conditions, Mapping):
        return [f"conditions must be a mapping, got {type(conditions).__name__}"]
    for name, value in conditions.items():
        spec = CONDITIONS.get(name)
        if spec is None:
            close = difflib.get_close_matches(str(name), CONDITIONS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"unknown condition {name!r}{hint}; known: {', '.join(CONDITIONS)}")
            continue
        message = spec.validate(value)
        if message:
            problems.append(f"condition {name!r}: {message}")
    return problems
