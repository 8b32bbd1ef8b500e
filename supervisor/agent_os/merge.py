"""Merging two policies: strict, permissive, override and custom.

``strict`` and ``permissive`` are defined on decisions, not on pattern lists, because a plain union
of patterns is not monotone: one policy's specific ``allow`` would pre-empt the other's catch-all
``deny`` (a catch-all is only a fallback). So a strict merge is a ``MergedPolicy`` whose decision is
the most restrictive of its parts' decisions (never less restrictive than either input, by
construction), and a permissive merge takes the least restrictive. ``override`` and ``custom``
resolve conflicts pattern by pattern into one flat ``Policy``:
two patterns conflict when they share an id, or the same action type and regex.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .policy import (
    EvaluationResult,
    Pattern,
    Policy,
    ViolationMode,
    least_restrictive,
    most_restrictive,
)

STRATEGIES = ("strict", "permissive", "override", "custom")
_DEFAULT_RANK = {"allow": 0, "warn": 1, "deny": 2}
_MODE_ORDER = [
    None,
    ViolationMode.LOG_ONLY,
    ViolationMode.SIGWARN,
    ViolationMode.BLOCK,
    ViolationMode.SIGSTOP,
    ViolationMode.SIGKILL,
]


def _conflicts(a: Pattern, b: Pattern) -> bool:
    return a.id == b.id or (a.action_type == b.action_type and a.pattern == b.pattern)


class MergedPolicy(Policy):
    """A policy whose decision combines its parts' decisions (strict: max, permissive: min).

    Patterns added to the merged policy itself (``add_pattern``) form an overlay part that only
    contributes when one of its patterns matches. ``remove/enable/disable_pattern`` act on
    whichever part holds the id.
    """

    def __init__(
        self,
        parts: Sequence[Policy],
        strategy: str,
        name: str | None = None,
        description: str = "",
        version: str = "1.0.0",
        **kwargs: Any,
    ) -> None:
        if strategy not in ("strict", "permissive"):
            raise ValueError(
                f"MergedPolicy strategy must be strict or permissive, got {strategy!r}"
            )
        if len(parts) < 2:
            raise ValueError("a merged policy needs at least two parts")
        self.parts: tuple[Policy, ...] = tuple(parts)
        self.strategy = strategy
        pick = _most if strategy == "strict" else _least
        default = pick((p.default_action for p in parts), _DEFAULT_RANK)
        modes = [p.violation_mode for p in parts]
        mode = (max if strategy == "strict" else min)(modes, key=_MODE_ORDER.index)
        super().__init__(
            name=name or "+".join(p.name for p in parts),
            description=description or f"{strategy} merge of {', '.join(p.name for p in parts)}",
            version=version,
            default_action=default,
            violation_mode=mode,
            **kwargs,
        )

    @property
    def patterns(self) -> list[Pattern]:
        combined: list[Pattern] = []
        for part in self.parts:
            combined.extend(part.patterns)
        combined.extend(self._patterns)
        return combined

    def _owner(self, pattern_id: str) -> Policy:
        for part in self.parts:
            if any(p.id == pattern_id for p in part.patterns):
                return part
        raise KeyError(f"policy {self.name!r} has no pattern {pattern_id!r}")

    def has_own_pattern(self, pattern_id: str) -> bool:
        return any(p.id == pattern_id for p in self._patterns)

    def get_pattern(self, pattern_id: str) -> Pattern:
        for pattern in self.patterns:
            if pattern.id == pattern_id:
                return pattern
        raise KeyError(f"policy {self.name!r} has no pattern {pattern_id!r}")

    def has_pattern(self, pattern_id: str) -> bool:
        return any(p.id == pattern_id for p in self.patterns)

    def remove_pattern(self, pattern_id: str) -> Pattern:
        if self.has_own_pattern(pattern_id):
            return super().remove_pattern(pattern_id)
        pattern = self._owner(pattern_id).remove_pattern(pattern_id)
        self._notify("pattern_removed", pattern_id)
        return pattern

    def _set_enabled(self, pattern_id: str, enabled: bool) -> None:
        if self.has_own_pattern(pattern_id):
            return super()._set_enabled(pattern_id, enabled)
        owner = self._owner(pattern_id)
        (owner.enable_pattern if enabled else owner.disable_pattern)(pattern_id)
        self._notify("pattern_enabled" if enabled else "pattern_disabled", pattern_id)

    def _decide(
        self, action_type: str, target: Any, context: Mapping[str, Any] | None
    ) -> tuple[EvaluationResult, bool]:
        outcomes = [part._decide(action_type, target, context) for part in self.parts]
        own, own_matched = super()._decide(action_type, target, context)
        candidates = [result for result, _ in outcomes]
        if own_matched:
            candidates.append(own)
        pick = most_restrictive if self.strategy == "strict" else least_restrictive
        result = pick(candidates)
        matched = tuple(dict.fromkeys(pid for r in candidates for pid in r.matched))
        import dataclasses

        result = dataclasses.replace(
            result,
            matched=matched,
            policy=self.name,
            reason=f"{result.reason} [{self.strategy} merge: decided by {result.policy}]",
        )
        return result, own_matched or any(m for _, m in outcomes)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.pop("defaults", None)
        out["merge"] = {"strategy": self.strategy, "policies": [p.to_dict() for p in self.parts]}
        out["patterns"] = [p.to_dict() for p in self._patterns]
        return out


def _most(values: Iterable[str], rank: Mapping[str, int]) -> str:
    return max(values, key=lambda v: rank[v])


def _least(values: Iterable[str], rank: Mapping[str, int]) -> str:
    return min(values, key=lambda v: rank[v])


def merge_policies(
    first: Policy,
    second: Policy,
    strategy: str = "strict",
    conflict_resolver: Callable[[Pattern, Pattern], Pattern] | None = None,
) -> Policy:
    if not isinstance(second, Policy):
        raise TypeError(f"merge takes a Policy, got {type(second).__name__}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown merge strategy {strategy!r}: use {', '.join(STRATEGIES)}")
    if strategy in ("strict", "permissive"):
        if conflict_resolver is not None:
            raise ValueError("conflict_resolver is only used with strategy='custom'")
        return MergedPolicy([first, second], strategy)
    if strategy == "custom" and conflict_resolver is None:
        raise ValueError("strategy='custom' needs conflict_resolver=callable(p1, p2) -> Pattern")
    if strategy == "override" and conflict_resolver is not None:
        raise ValueError("conflict_resolver is only used with strategy='custom'")

    merged: list[Pattern] = [p.copy() for p in first.patterns]
    for incoming in second.patterns:
        clash = next((i for i, p in enumerate(merged) if _conflicts(p, incoming)), None)
        if clash is None:
            merged.append(incoming.copy())
            continue
        if strategy == "override":
            chosen = incoming
        else:
            chosen = conflict_resolver(merged[clash], incoming)  # type: ignore[misc]
            if not isinstance(chosen, Pattern):
                raise TypeError(f"conflict_resolver returned {chosen!r}, not a Pattern")
        merged[clash] = chosen.copy()
    ids: set[str] = set()
    for index, pattern in enumerate(merged):  # a resolved conflict by regex may leave two ids
        if pattern.id in ids:
            merged[index] = pattern.copy(id=f"{pattern.id}_2")
        ids.add(merged[index].id)
    return Policy(
        name=f"{first.name}+{second.name}",
        description=f"{strategy} merge of {first.name} and {second.name}",
        version=first.version,
        default_action=second.default_action,
        violation_mode=second.violation_mode or first.violation_mode,
        patterns=merged,
        violation_handler=second.violation_handler or first.violation_handler,
        exceptions=list(first.exceptions) + list(second.exceptions),
        settings={**first.settings, **second.settings},
        metadata={**first.metadata, **second.metadata},
    )
