"""PolicyStack: ordered layers where the first layer with a matching pattern decides.

Layer 1 is the highest priority (agent-specific overrides), the last layer is the organisation's
baseline. A layer "matches" when one of its patterns (not its default action) produced its
decision. When no layer matches, the last layer's default applies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from .policy import Decider, EvaluationResult, Pattern, Policy


class PolicyStack(Decider):
    def __init__(self, layers: Iterable[Policy], name: str | None = None) -> None:
        self.layers: list[Policy] = list(layers)
        if not self.layers:
            raise ValueError("a PolicyStack needs at least one layer")
        for layer in self.layers:
            if not isinstance(layer, (Policy, PolicyStack)):
                raise TypeError(f"PolicyStack layers must be policies, got {type(layer).__name__}")
        self.name = name or " > ".join(layer.name for layer in self.layers)

    @property
    def patterns(self) -> list[Pattern]:
        return [p for layer in self.layers for p in layer.patterns]

    @property
    def baseline(self) -> Policy:
        return self.layers[-1]

    def compile(self) -> PolicyStack:
        for layer in self.layers:
            layer.compile()
        return self

    def _decide(
        self, action_type: str, target: Any, context: Mapping[str, Any] | None
    ) -> tuple[EvaluationResult, bool]:
        last: EvaluationResult | None = None
        for depth, layer in enumerate(self.layers, start=1):
            result, matched = layer._decide(action_type, target, context)
            if matched:
                return dataclasses.replace(
                    result, reason=f"{result.reason} [stack layer {depth}: {layer.name}]"
                ), True
            last = result
        assert last is not None
        return dataclasses.replace(
            last, reason=f"{last.reason} [no layer matched; baseline {self.baseline.name}]"
        ), False

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "stack": [layer.to_dict() for layer in self.layers]}

    def __repr__(self) -> str:
        return f"PolicyStack({[layer.name for layer in self.layers]!r})"

    # --- dynamic changes reach the layer that owns the pattern ---------------------------------

    def _owner(self, pattern_id: str) -> Policy:
        for layer in self.layers:
            if any(p.id == pattern_id for p in layer.patterns):
                return layer
        raise KeyError(f"no layer of {self.name!r} has pattern {pattern_id!r}")

    def add_pattern(self, pattern: Pattern) -> Pattern:
        """Add to the top layer (the highest priority)."""
        return self.layers[0].add_pattern(pattern)

    def remove_pattern(self, pattern_id: str) -> Pattern:
        return self._owner(pattern_id).remove_pattern(pattern_id)

    def enable_pattern(self, pattern_id: str) -> None:
        self._owner(pattern_id).enable_pattern(pattern_id)

    def disable_pattern(self, pattern_id: str) -> None:
        self._owner(pattern_id).disable_pattern(pattern_id)

    def get_pattern(self, pattern_id: str) -> Pattern:
        return self._owner(pattern_id).get_pattern(pattern_id)

    def on_change(self, callback):
        unsubscribers = [layer.on_change(callback) for layer in self.layers]

        def unsubscribe() -> None:
            for undo in unsubscribers:
                undo()

        return unsubscribe

    def elevated_privileges(self, agent_id: str):
        import contextlib

        stack = contextlib.ExitStack()
        for layer in self.layers:
            stack.enter_context(layer.elevated_privileges(agent_id))
        return stack


def policy_layers(policy: Any) -> list[Any]:
    """A PolicyStack's policies in order (nested stacks flattened), or ``[policy]``."""
    layers = getattr(policy, "layers", None)
    if layers is None:
        return [policy]
    return [leaf for layer in layers for leaf in policy_layers(layer)]
