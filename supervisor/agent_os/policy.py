"""The policy object model and its evaluation.

A ``Policy`` holds ``Pattern``s and answers ``evaluate(action_type, target, context)`` with an
``EvaluationResult`` that names every pattern that matched and why the winner won (Cedar-style).
The rules, written out in docs/policy-semantics.md:

1. A pattern matches when ``re.match(regex, target, re.DOTALL)`` succeeds and its conditions say
   it applies (``conditions.py``: allow grants inside the envelope, deny/warn fire outside it).
2. Among matching patterns the most restrictive wins: deny > warn > allow, then higher severity,
   then declaration order. A catch-all pattern (``.*``) is the fallback for its action type,
   used only when no other pattern of that type matches. No match at all: ``default_action``.
3. Violation mode: the pattern's, else the policy's, else by severity; a deny is let through only
   when its mode is explicitly SIGWARN or LOG_ONLY. A warn allows; LOW logs, MEDIUM+ warns.

Compiled state (one ``ActionTypeMatcher`` per action type, a decision cache) is derived from the
patterns and rebuilt lazily after any change; it is swapped in atomically, so ``evaluate`` never
takes a lock on the hot path.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import enum
import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .action_types import check_action_type
from .conditions import CONDITIONS, ConditionState, EvalEnv, validate_conditions
from .matcher import ActionTypeMatcher, compile_regex, is_catch_all
from .signals import AgentSignal

log = logging.getLogger("agent_os.policy")

ACTIONS = ("allow", "deny", "warn")
_ACTION_RANK = {"allow": 0, "warn": 1, "deny": 2}
_CACHE_LIMIT = 65536


class Severity(enum.IntEnum):
    """LOW..CRITICAL = 1..4; ordered, and equal to its lower-case name (``== "critical"``)."""

    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @classmethod
    def parse(cls, value: Any) -> Severity:
        if isinstance(value, Severity):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                pass
        raise ValueError(f"invalid severity {value!r}: use low, medium, high, critical (or 1..4)")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return self.name.lower() == other.strip().lower()
        return int.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    __hash__ = enum.IntEnum.__hash__

    def __str__(self) -> str:
        return self.name.lower()


class ViolationMode(enum.Enum):
    """How a violation is handled. YAML spells the values in lower case."""

    SIGKILL = "sigkill"
    SIGSTOP = "sigstop"
    SIGWARN = "sigwarn"
    LOG_ONLY = "log_only"
    BLOCK = "block"

    @classmethod
    def parse(cls, value: Any) -> ViolationMode:
        if isinstance(value, ViolationMode):
            return value
        if isinstance(value, str):
            key = value.strip().lower()
            for mode in cls:
                if mode.value == key:
                    return mode
        raise ValueError(
            f"invalid violation mode {value!r}: use one of {', '.join(m.value for m in cls)}"
        )

    def __str__(self) -> str:
        return self.value


# Ordering of outcomes by restrictiveness, used for "most restrictive wins" between policies.
_MODE_RANK = {
    None: 0,
    ViolationMode.LOG_ONLY: 1,
    ViolationMode.SIGWARN: 2,
    ViolationMode.BLOCK: 3,
    ViolationMode.SIGSTOP: 4,
    ViolationMode.SIGKILL: 5,
}
_MODE_SIGNAL = {
    ViolationMode.SIGKILL: AgentSignal.SIGKILL,
    ViolationMode.SIGSTOP: AgentSignal.SIGSTOP,
    ViolationMode.SIGWARN: AgentSignal.SIGWARN,
}
_SIGNAL_MODE = {signal: mode for mode, signal in _MODE_SIGNAL.items()}


def _check_action(action: Any) -> str:
    if action not in ACTIONS:
        raise ValueError(f"invalid action {action!r}: use allow, deny or warn")
    return action


class Pattern:
    """One rule: an action type, a regex over the target, what to do on a match, and why."""

    __slots__ = (
        "id",
        "action_type",
        "pattern",
        "action",
        "severity",
        "message",
        "conditions",
        "metadata",
        "violation_mode",
        "description",
        "enabled",
        "regex",
    )

    def __init__(
        self,
        action_type: str,
        pattern: str,
        action: str = "deny",
        severity: Severity | str | int = Severity.MEDIUM,
        message: str = "",
        conditions: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        violation_mode: ViolationMode | str | None = None,
        id: str | None = None,
        *,
        description: str = "",
        enabled: bool = True,
    ) -> None:
        self.action_type = check_action_type(action_type)
        if not isinstance(pattern, str):
            raise ValueError(f"pattern must be a string, got {type(pattern).__name__}")
        try:
            self.regex = compile_regex(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regex {pattern!r}: {exc}") from None
        self.pattern = pattern
        self.action = _check_action(action)
        self.severity = Severity.parse(severity)
        self.message = message or ""
        self.conditions = dict(conditions or {})
        problems = validate_conditions(self.conditions)
        if problems:
            raise ValueError("; ".join(problems))
        self.metadata = dict(metadata or {})
        self.violation_mode = (
            None if violation_mode is None else ViolationMode.parse(violation_mode)
        )
        self.description = description or ""
        self.enabled = bool(enabled)
        self.id = id if id else self.default_id(self.action_type, pattern, self.action)

    @staticmethod
    def default_id(action_type: str, pattern: str, action: str) -> str:
        digest = hashlib.sha256(f"{action_type}\0{pattern}\0{action}".encode()).hexdigest()
        return f"{action_type}_{digest[:8]}"

    @property
    def catch_all(self) -> bool:
        return is_catch_all(self.pattern)

    def copy(self, **changes: Any) -> Pattern:
        fields = {
            name: getattr(self, name)
            for name in (
                "action_type",
                "pattern",
                "action",
                "severity",
                "message",
                "conditions",
                "metadata",
                "violation_mode",
                "id",
                "description",
                "enabled",
            )
        }
        fields.update(changes)
        return Pattern(**fields)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "action_type": self.action_type,
            "pattern": self.pattern,
            "action": self.action,
            "severity": str(self.severity),
        }
        if self.message:
            out["message"] = self.message
        if self.description:
            out["description"] = self.description
        if self.conditions:
            out["conditions"] = dict(self.conditions)
        if self.metadata:
            out["metadata"] = dict(self.metadata)
        if self.violation_mode is not None:
            out["violation_mode"] = self.violation_mode.value
        if not self.enabled:
            out["enabled"] = False
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pattern) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable (enabled): not hashable

    def __repr__(self) -> str:
        return (
            f"Pattern(id={self.id!r}, action_type={self.action_type!r}, "
            f"pattern={self.pattern!r}, action={self.action!r}, severity={self.severity.name})"
        )


@dataclass(frozen=True)
class PolicyException:
    """An approved exemption: agents matching ``agent_pattern`` are not subject to ``patterns``."""

    agent_pattern: str
    patterns: tuple[str, ...]
    reason: str = ""
    expires: _dt.date | None = None
    approved_by: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "patterns", tuple(self.patterns))
        try:
            object.__setattr__(self, "_regex", re.compile(self.agent_pattern, re.DOTALL))
        except re.error as exc:
            raise ValueError(f"invalid agent_pattern {self.agent_pattern!r}: {exc}") from None

    def applies_to(self, agent_id: str, today: _dt.date | None = None) -> bool:
        """True when ``agent_id`` matches in full and the exception has not expired.

        ``expires`` is the last day on which the exception applies.
        """
        if self.expires is not None and (today or _dt.date.today()) > self.expires:
            return False
        return self._regex.fullmatch(agent_id or "") is not None  # type: ignore[attr-defined]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"agent_pattern": self.agent_pattern, "patterns": list(self.patterns)}
        if self.reason:
            out["reason"] = self.reason
        if self.expires is not None:
            out["expires"] = self.expires.isoformat()
        if self.approved_by:
            out["approved_by"] = self.approved_by
        return out


@dataclass(frozen=True)
class EvaluationResult:
    """The decision on one action, with its reasons."""

    allowed: bool
    action: str
    reason: str
    pattern_id: str | None = None
    matched: tuple[str, ...] = ()
    severity: Severity | None = None
    violation_mode: ViolationMode | None = None
    signal: AgentSignal | None = None
    policy: str = ""
    message: str = ""
    # A denial that confirmation alone would lift: an allow pattern whose only unmet condition
    # is ``require_confirmation`` would have decided it (agentd asks the operator then).
    confirmable: bool = False

    @property
    def decision(self) -> str:
        return self.action

    def restrictiveness(self) -> tuple[int, int, int, int]:
        """A sort key: larger is more restrictive."""
        return (
            0 if self.allowed else 1,
            _MODE_RANK[self.violation_mode],
            _ACTION_RANK[self.action],
            int(self.severity or 0),
        )


@dataclass(frozen=True)
class Violation:
    """What a ``violation_handler`` receives for a deny or warn decision."""

    pattern_id: str | None
    action_type: str
    target: str
    severity: Severity | None
    message: str
    action: str
    agent_id: str
    policy: str
    context: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyChangeEvent:
    """Passed to ``on_change`` callbacks."""

    change_type: str  # pattern_added | pattern_removed | pattern_enabled | pattern_disabled |
    # elevation_started | elevation_ended | policy_reloaded
    pattern_id: str | None
    policy: str
    timestamp: float


class _Compiled:
    """Derived, immutable-after-build state for one generation of a policy's patterns."""

    __slots__ = ("by_type", "cache", "cache_keys", "volatile_types", "plain", "by_choice")

    def __init__(self, patterns: Sequence[Pattern]) -> None:
        grouped: dict[str, list[Pattern]] = {}
        for pattern in patterns:
            if pattern.enabled:
                grouped.setdefault(pattern.action_type, []).append(pattern)
        self.by_type: dict[str, tuple[tuple[Pattern, ...], ActionTypeMatcher]] = {
            action_type: (tuple(group), ActionTypeMatcher([p.pattern for p in group]))
            for action_type, group in grouped.items()
        }
        self.cache: dict[str | tuple, tuple[EvaluationResult, bool]] = {}
        # per action type: the context keys that can change a decision, or None if uncacheable
        self.cache_keys: dict[str, tuple[str, ...]] = {}
        self.volatile_types: set[str] = set()
        for action_type, (group, _) in self.by_type.items():
            keys: set[str] = set()
            for pattern in group:
                for name in pattern.conditions:
                    spec = CONDITIONS[name]
                    keys.update(spec.context_keys)
                    if spec.volatile:
                        self.volatile_types.add(action_type)
            self.cache_keys[action_type] = tuple(sorted(keys))
        # Action types without conditions: the decision is a function of which patterns matched
        # (when no exception or elevation applies), so outcomes are shared per chosen index set.
        self.plain: dict[str, tuple[Callable[[str], list[int]], tuple[bool, ...]]] = {
            action_type: (matcher.matching, tuple(p.catch_all for p in group))
            for action_type, (group, matcher) in self.by_type.items()
            if not any(p.conditions for p in group)
        }
        self.by_choice: dict[tuple, tuple[EvaluationResult, bool]] = {}


class Decider:
    """What a policy, a merge of policies and a stack of them have in common: ``evaluate``,
    the decision of ``_decide`` (which also says whether a pattern, rather than the default,
    produced it: what a ``PolicyStack`` walks its layers by)."""

    def evaluate(
        self, action_type: str, target: str, context: Mapping[str, Any] | None = None
    ) -> EvaluationResult:
        """Decide on one action. Never raises for a bad target: it is denied with the reason."""
        return self._decide(action_type, target, context)[0]

    def _decide(
        self, action_type: str, target: Any, context: Mapping[str, Any] | None
    ) -> tuple[EvaluationResult, bool]:
        raise NotImplementedError


class Policy(Decider):
    """A named set of patterns with a default action; see the module docstring for semantics."""

    def __init__(
        self,
        name: str = "unnamed",
        description: str = "",
        version: str = "1.0.0",
        default_action: str | None = None,
        violation_mode: ViolationMode | str | None = None,
        patterns: Iterable[Pattern] | None = None,
        violation_handler: Callable[[Violation], AgentSignal | None] | None = None,
        extends: Policy | Sequence[Policy] | None = None,
        *,
        exceptions: Iterable[PolicyException] | None = None,
        settings: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        log_level: str = "info",
        source: str | None = None,
    ) -> None:
        parents: list[Policy] = []
        if isinstance(extends, Policy):
            parents = [extends]
        elif extends:
            parents = list(extends)
            for parent in parents:
                if not isinstance(parent, Policy):
                    raise TypeError(
                        f"extends must name Policy objects, got {type(parent).__name__}"
                    )
        self.name = name
        self.description = description
        self.version = str(version)
        self.extends = tuple(parents)
        inherited_default: str = parents[-1].default_action if parents else "allow"
        self.default_action: str = _check_action(default_action or inherited_default)
        if violation_mode is None and parents:
            violation_mode = next(
                (
                    parent_mode
                    for parent_mode in (p.violation_mode for p in reversed(parents))
                    if parent_mode is not None
                ),
                None,
            )
        self.violation_mode: ViolationMode | None = (
            None if violation_mode is None else ViolationMode.parse(violation_mode)
        )
        self.violation_handler = violation_handler
        self.exceptions: list[PolicyException] = [e for p in parents for e in p.exceptions]
        self.exceptions.extend(exceptions or ())
        inherited: dict[str, Any] = {k: v for p in parents for k, v in p.settings.items()}
        self.settings: dict[str, Any] = {**inherited, **(settings or {})}
        self.metadata = dict(metadata or {})
        self.log_level = log_level
        self.source = source
        self._lock = threading.RLock()
        self._listeners: list[Callable[[PolicyChangeEvent], None]] = []
        self._elevated: dict[str, int] = {}
        self._condition_state = ConditionState()
        self._compiled: _Compiled | None = None
        # Effective patterns: inherited first (copied, so a child's changes stay its own), then
        # own; an own pattern with an inherited id replaces it in place.
        self._patterns: list[Pattern] = []
        for parent in parents:
            for pattern in parent.patterns:
                self._put(pattern.copy())
        for pattern in patterns or ():
            if not isinstance(pattern, Pattern):
                raise TypeError(f"patterns must be Pattern objects, got {type(pattern).__name__}")
            self._put(pattern)

    # --- patterns ---------------------------------------------------------------------------

    def _put(self, pattern: Pattern) -> None:
        for index, existing in enumerate(self._patterns):
            if existing.id == pattern.id:
                self._patterns[index] = pattern
                return
        self._patterns.append(pattern)

    @property
    def patterns(self) -> list[Pattern]:
        return list(self._patterns)

    def get_pattern(self, pattern_id: str) -> Pattern:
        for pattern in self._patterns:
            if pattern.id == pattern_id:
                return pattern
        raise KeyError(f"policy {self.name!r} has no pattern {pattern_id!r}")

    def has_pattern(self, pattern_id: str) -> bool:
        return any(p.id == pattern_id for p in self._patterns)

    def add_pattern(self, pattern: Pattern) -> Pattern:
        """Add ``pattern`` (replacing one with the same id) and return it."""
        if not isinstance(pattern, Pattern):
            raise TypeError(f"add_pattern takes a Pattern, got {type(pattern).__name__}")
        with self._lock:
            self._put(pattern)
            self._changed()
        self._notify("pattern_added", pattern.id)
        return pattern

    def remove_pattern(self, pattern_id: str) -> Pattern:
        with self._lock:
            pattern = self.get_pattern(pattern_id)
            self._patterns.remove(pattern)
            self._changed()
        self._notify("pattern_removed", pattern_id)
        return pattern

    def enable_pattern(self, pattern_id: str) -> None:
        self._set_enabled(pattern_id, True)

    def disable_pattern(self, pattern_id: str) -> None:
        self._set_enabled(pattern_id, False)

    def _set_enabled(self, pattern_id: str, enabled: bool) -> None:
        with self._lock:
            self.get_pattern(pattern_id).enabled = enabled
            self._changed()
        self._notify("pattern_enabled" if enabled else "pattern_disabled", pattern_id)

    def _changed(self) -> None:
        self._compiled = None  # INVARIANT: rebuilt from self._patterns before the next decision

    # --- change events, elevation -------------------------------------------------------------

    def on_change(self, callback: Callable[[PolicyChangeEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` after every change; returns a function that unsubscribes."""
        with self._lock:
            self._listeners.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return unsubscribe

    def _notify(self, change_type: str, pattern_id: str | None) -> None:
        event = PolicyChangeEvent(change_type, pattern_id, self.name, time.time())
        for callback in list(self._listeners):
            try:
                callback(event)
            except Exception:  # a listener's bug must not undo or block a policy change
                log.exception("policy %s: on_change callback %r failed", self.name, callback)

    @contextlib.contextmanager
    def elevated_privileges(self, agent_id: str) -> Iterator[Policy]:
        """Within the block, ``agent_id``'s denials by non-CRITICAL patterns become warnings.

        CRITICAL patterns and the default action still apply; every elevated decision says so in
        its reason. Nested and concurrent blocks are counted.
        """
        with self._lock:
            self._elevated[agent_id] = self._elevated.get(agent_id, 0) + 1
            self._changed()
        self._notify("elevation_started", None)
        try:
            yield self
        finally:
            with self._lock:
                count = self._elevated.get(agent_id, 0) - 1
                if count > 0:
                    self._elevated[agent_id] = count
                else:
                    self._elevated.pop(agent_id, None)
                self._changed()
            self._notify("elevation_ended", None)

    def is_elevated(self, agent_id: str) -> bool:
        return agent_id in self._elevated

    # --- evaluation ---------------------------------------------------------------------------

    def _compiled_state(self) -> _Compiled:
        compiled = self._compiled
        if compiled is None:
            with self._lock:
                compiled = self._compiled
                if compiled is None:
                    compiled = self._compiled = _Compiled(self._patterns)
        return compiled

    def compile(self) -> Policy:
        """Build the matchers now (the supervisor calls this before fork)."""
        self._compiled_state()
        return self

    def _decide(
        self, action_type: str, target: Any, context: Mapping[str, Any] | None
    ) -> tuple[EvaluationResult, bool]:
        """The decision and whether any pattern (rather than the default) produced it."""
        ctx = context or {}
        if not isinstance(target, str):
            return self._fail_closed(f"target must be a string, got {type(target).__name__}"), True
        compiled = self._compiled or self._compiled_state()
        key: str | tuple | None = None
        who = None
        if action_type not in compiled.volatile_types:
            keys = compiled.cache_keys.get(action_type, ())
            # exceptions and elevation depend on who asks, exceptions also on the date
            if self._elevated or self.exceptions:
                who = (ctx.get("agent_id") or "", _dt.date.today().toordinal())
            if who is None and not keys:
                # a str key: unlike a tuple it is not tracked by the garbage collector, so a
                # stream of new targets does not trigger collections (p99); action types hold no NUL
                key = action_type + "\0" + target
            else:
                key = (action_type, target, who, tuple(repr(ctx.get(k)) for k in keys))
            hit = compiled.cache.get(key)
            if hit is not None:
                if self.violation_handler is None or hit[0].action == "allow":
                    return hit
                return self._apply_handler(hit, action_type, target, ctx)
        try:
            plain = compiled.plain.get(action_type) if key is not None and who is None else None
            if plain is not None:
                matching, catch_all = plain
                found = matching(target)
                chosen = tuple(i for i in found if not catch_all[i]) or tuple(found)
                outcome = compiled.by_choice.get((action_type, chosen))
                if outcome is None:
                    outcome = self._decide_uncached(compiled, action_type, target, ctx, "", found)
                    compiled.by_choice[(action_type, chosen)] = outcome
            else:
                outcome = self._decide_uncached(
                    compiled, action_type, target, ctx, ctx.get("agent_id") or ""
                )
        except Exception as exc:  # INVARIANT: an error while deciding denies (fail closed)
            log.exception("policy %s: error deciding %s %r", self.name, action_type, target)
            return self._fail_closed(f"error while deciding: {exc!r}"), True
        if key is not None:
            if len(compiled.cache) >= _CACHE_LIMIT:
                compiled.cache.clear()
                compiled.by_choice.clear()
            compiled.cache[key] = outcome
        if self.violation_handler is None or outcome[0].action == "allow":
            return outcome
        return self._apply_handler(outcome, action_type, target, ctx)

    def _fail_closed(self, why: str) -> EvaluationResult:
        return EvaluationResult(
            False, "deny", why, None, (), Severity.CRITICAL, ViolationMode.BLOCK, None, self.name
        )

    def _decide_uncached(
        self,
        compiled: _Compiled,
        action_type: str,
        target: str,
        ctx: Mapping[str, Any],
        agent_id: str,
        found: list[int] | None = None,
    ) -> tuple[EvaluationResult, bool]:
        entry = compiled.by_type.get(action_type)
        if entry is None:
            check_action_type(action_type)
            return self._default_result(action_type), False
        group, matcher = entry
        exempt = self._exempt_ids(agent_id)
        env = None
        specific: list[Pattern] = []
        catch_alls: list[Pattern] = []
        notes: list[str] = []
        confirmable: list[Pattern] = []
        for index in matcher.matching(target) if found is None else found:
            pattern = group[index]
            if pattern.id in exempt:
                notes.append(f"{pattern.id} exempted for {agent_id}")
                continue
            if pattern.conditions:
                if env is None:
                    env = EvalEnv(
                        _dt.datetime.now(), time.monotonic(), self._condition_state, "", agent_id
                    )
                applies, why, lacks_confirmation = self._conditions_apply(pattern, target, ctx, env)
                notes.append(f"{pattern.id}: {why}")
                if lacks_confirmation:
                    confirmable.append(pattern)
                if not applies:
                    continue
            (catch_alls if pattern.catch_all else specific).append(pattern)
        chosen = specific or catch_alls
        if not chosen:
            result = self._default_result(action_type)
            if notes:
                result = _replace(result, reason=f"{result.reason} ({'; '.join(notes)})")
            matched_any = False
        else:
            winner = max(chosen, key=lambda p: (_ACTION_RANK[p.action], int(p.severity)))
            # max() keeps the first of equals, so declaration order breaks ties
            matched = tuple(p.id for p in chosen)
            result = self._pattern_result(winner, matched, agent_id, notes)
            matched_any = True
        if confirmable and not result.allowed:
            # Would confirmation lift the denial? The confirmable allows join the others (a
            # specific one beats every catch-all), and no deny may be left among the chosen.
            with_confirmation = specific + [
                p for p in confirmable if not p.catch_all
            ] or catch_alls + [p for p in confirmable if p.catch_all]
            if all(p.action != "deny" for p in with_confirmation):
                result = _replace(result, confirmable=True)
        return result, matched_any

    def _exempt_ids(self, agent_id: str) -> frozenset[str]:
        if not self.exceptions or not agent_id:
            return frozenset()
        today = _dt.date.today()
        return frozenset(
            pid
            for exc in self.exceptions
            if exc.applies_to(agent_id, today)
            for pid in exc.patterns
        )

    @staticmethod
    def _conditions_apply(
        pattern: Pattern, target: str, ctx: Mapping[str, Any], env: EvalEnv
    ) -> tuple[bool, str, bool]:
        """Whether the pattern applies, why, and whether confirmation alone is missing.

        Conditions are checked in the order written and the first that does not hold ends the
        check (so a rate condition written after ``preexisting: true`` counts only the
        operations that reach it). An allow pattern whose only unmet condition is
        ``require_confirmation`` checks the rest and reports itself as confirmable.
        """
        env = EvalEnv(env.now, env.monotonic, env.state, pattern.id, env.agent_id)
        whys: list[str] = []
        lacks_confirmation = False
        for name, value in pattern.conditions.items():
            check = CONDITIONS[name].check(value, target, ctx, env)
            whys.append(check.why)
            if check.holds:
                continue
            if pattern.action == "allow" and name == "require_confirmation":
                lacks_confirmation = True
                continue
            # allow grants inside the envelope; deny and warn fire outside it
            return pattern.action != "allow", ", ".join(whys), False
        if lacks_confirmation:
            return False, ", ".join(whys), True
        return pattern.action == "allow", ", ".join(whys), False

    def _default_result(self, action_type: str) -> EvaluationResult:
        reason = f"no pattern for {action_type} matched; default action {self.default_action}"
        if self.default_action == "allow":
            return EvaluationResult(True, "allow", reason, policy=self.name)
        if self.default_action == "warn":
            return EvaluationResult(
                True,
                "warn",
                reason,
                None,
                (),
                None,
                ViolationMode.SIGWARN,
                AgentSignal.SIGWARN,
                self.name,
            )
        mode = self.violation_mode or ViolationMode.BLOCK
        allowed = mode in (ViolationMode.SIGWARN, ViolationMode.LOG_ONLY)
        return EvaluationResult(
            allowed, "deny", reason, None, (), None, mode, _MODE_SIGNAL.get(mode), self.name
        )

    def _pattern_result(
        self, winner: Pattern, matched: tuple[str, ...], agent_id: str, notes: list[str]
    ) -> EvaluationResult:
        severity = winner.severity
        message = winner.message
        reason = message or f"matched {winner.action} pattern {winner.id!r}"
        if winner.action == "allow":
            return EvaluationResult(
                True, "allow", reason, winner.id, matched, severity, None, None, self.name, message
            )
        if winner.action == "warn":
            mode = (
                ViolationMode.LOG_ONLY
                if winner.violation_mode is ViolationMode.LOG_ONLY
                or (winner.violation_mode is None and severity == Severity.LOW)
                else ViolationMode.SIGWARN
            )
            return EvaluationResult(
                True,
                "warn",
                reason,
                winner.id,
                matched,
                severity,
                mode,
                _MODE_SIGNAL.get(mode),
                self.name,
                message,
            )
        chosen = winner.violation_mode or self.violation_mode
        if chosen is None:  # the severity table, with the safety floor: a deny blocks at least
            chosen = ViolationMode.SIGKILL if severity == Severity.CRITICAL else ViolationMode.BLOCK
        mode = chosen
        if agent_id and agent_id in self._elevated and severity < Severity.CRITICAL:
            return EvaluationResult(
                True,
                "warn",
                f"{reason} (elevated privileges for {agent_id})",
                winner.id,
                matched,
                severity,
                ViolationMode.SIGWARN,
                AgentSignal.SIGWARN,
                self.name,
                message,
            )
        allowed = mode in (ViolationMode.SIGWARN, ViolationMode.LOG_ONLY)
        return EvaluationResult(
            allowed,
            "deny",
            reason,
            winner.id,
            matched,
            severity,
            mode,
            _MODE_SIGNAL.get(mode),
            self.name,
            message,
        )

    def _apply_handler(
        self,
        outcome: tuple[EvaluationResult, bool],
        action_type: str,
        target: str,
        ctx: Mapping[str, Any],
    ) -> tuple[EvaluationResult, bool]:
        result, matched_any = outcome
        handler = self.violation_handler
        if handler is None or result.action == "allow":
            return outcome
        violation = Violation(
            result.pattern_id,
            action_type,
            target,
            result.severity,
            result.message or result.reason,
            result.action,
            str(ctx.get("agent_id") or ""),
            self.name,
            dict(ctx),
        )
        try:
            signal = handler(violation)
        except Exception as exc:  # fail closed: a broken handler blocks
            log.exception("policy %s: violation_handler failed", self.name)
            return _replace(
                result,
                allowed=False,
                action="deny",
                violation_mode=ViolationMode.BLOCK,
                signal=None,
                reason=f"{result.reason}; violation_handler raised {exc!r}",
            ), matched_any
        if signal is None:
            return outcome
        try:
            mode = _SIGNAL_MODE[AgentSignal(signal)]
        except (ValueError, KeyError):
            return _replace(
                result,
                allowed=False,
                action="deny",
                violation_mode=ViolationMode.BLOCK,
                signal=None,
                reason=f"{result.reason}; violation_handler returned {signal!r}, "
                "not an AgentSignal",
            ), matched_any
        allowed = mode is ViolationMode.SIGWARN
        return _replace(
            result,
            allowed=allowed,
            violation_mode=mode,
            signal=_MODE_SIGNAL[mode],
            action=result.action if allowed or result.action == "deny" else "deny",
            reason=f"{result.reason}; violation_handler chose {mode.name}",
        ), matched_any

    # --- merging, YAML --------------------------------------------------------------------------

    def merge(
        self,
        other: Policy,
        strategy: str = "strict",
        conflict_resolver: Callable[[Pattern, Pattern], Pattern] | None = None,
    ) -> Policy:
        """Combine two policies; see docs/policy-semantics.md for each strategy."""
        from .merge import merge_policies

        return merge_policies(self, other, strategy, conflict_resolver)

    def to_yaml(self) -> str:
        from .loader import policy_to_yaml

        return policy_to_yaml(self)

    def to_dict(self) -> dict[str, Any]:
        """The policy as plain data (the YAML form, inherited patterns flattened)."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out["version"] = self.version
        defaults: dict[str, Any] = {"action": self.default_action}
        if self.violation_mode is not None:
            defaults["violation_mode"] = self.violation_mode.value
        if self.log_level and self.log_level != "info":
            defaults["log_level"] = self.log_level
        out["defaults"] = defaults
        if self.settings:
            out["settings"] = dict(self.settings)
        if self.metadata:
            out["metadata"] = dict(self.metadata)
        out["patterns"] = [p.to_dict() for p in self._patterns]
        if self.exceptions:
            out["exceptions"] = [e.to_dict() for e in self.exceptions]
        return out

    @classmethod
    def from_yaml(cls, path: str, variables: Mapping[str, str] | None = None) -> Policy:
        from .loader import load_policy

        return load_policy(str(path), variables=variables)

    @classmethod
    def from_yaml_string(cls, text: str, variables: Mapping[str, str] | None = None) -> Policy:
        from .loader import policy_from_yaml_string

        return policy_from_yaml_string(text, variables=variables)

    @staticmethod
    def validate_yaml(path: str) -> list:
        from .loader import validate_yaml_file

        return validate_yaml_file(str(path))

    def __repr__(self) -> str:
        return (
            f"Policy(name={self.name!r}, version={self.version!r}, "
            f"default_action={self.default_action!r}, patterns={len(self._patterns)})"
        )


def _replace(result: EvaluationResult, **changes: Any) -> EvaluationResult:
    import dataclasses

    return dataclasses.replace(result, **changes)


def most_restrictive(results: Iterable[EvaluationResult]) -> EvaluationResult:
    """The most restrictive of several results (first of equals)."""
    return max(results, key=EvaluationResult.restrictiveness)


def least_restrictive(results: Iterable[EvaluationResult]) -> EvaluationResult:
    return min(results, key=EvaluationResult.restrictiveness)
