"""KernelSpace: the SDK entry point that governs in-process actions.

``KernelSpace(policy=...)`` evaluates actions that no syscall shows (database queries, HTTP
requests behind a proxy, tool calls) with the same engine the OS-level supervisor uses, records
every decision in a FlightRecorder when one is attached, and applies the verdict inside the
process: a refused action raises ``PolicyViolation``; a SIGKILL verdict terminates the agent (its
later actions raise ``AgentTerminated``); a SIGSTOP verdict suspends it until ``resume``.

This is cooperative enforcement: code in the same process can bypass it. Run the agent under
``agentd run`` for enforcement the agent cannot bypass.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .policy import EvaluationResult, Policy
from .signals import AgentSignal
from .stack import PolicyStack

PolicyLike = Policy | PolicyStack


class PolicyViolation(PermissionError):
    """An action was refused by the policy."""

    def __init__(self, result: EvaluationResult, action: AgentAction) -> None:
        self.result = result
        self.action = action
        super().__init__(
            f"{action.action_type} {action.target!r} refused: {result.reason}"
            + (f" [pattern {result.pattern_id}]" if result.pattern_id else "")
        )


class AgentTerminated(RuntimeError):
    """The agent received a SIGKILL verdict earlier; it may not act again."""


class AgentSuspended(RuntimeError):
    """The agent is stopped (SIGSTOP verdict) and awaits review: ``kernel.resume(agent_id)``."""


@dataclass
class AgentAction:
    """An in-process action: what it is, what it touches, and optionally the code that does it."""

    action_type: str
    target: str
    context: Mapping[str, Any] = field(default_factory=dict)
    run: Callable[[], Any] | None = None


@dataclass(frozen=True)
class ExecutionResult:
    allowed: bool
    result: EvaluationResult
    value: Any = None


def _coerce_action(action: Any) -> AgentAction:
    if isinstance(action, AgentAction):
        return action
    if isinstance(action, Mapping):
        try:
            return AgentAction(
                action["action_type"],
                action["target"],
                action.get("context") or {},
                action.get("run"),
            )
        except KeyError as exc:
            raise ValueError(f"action mapping lacks {exc.args[0]!r}") from None
    if all(hasattr(action, name) for name in ("action_type", "target")):
        return AgentAction(
            action.action_type,
            action.target,
            getattr(action, "context", None) or {},
            getattr(action, "run", None),
        )
    raise TypeError(
        "an action is an AgentAction, a mapping with action_type and target, "
        "or an object with those attributes"
    )


class KernelSpace:
    def __init__(
        self,
        policy: str | PolicyLike = "strict",
        recorder: Any = None,
        variables: Mapping[str, str] | None = None,
    ) -> None:
        self._variables = dict(variables or {})
        self._policy = self._resolve(policy)
        if isinstance(recorder, (str, Path)):
            from .flight_recorder import FlightRecorder

            recorder = FlightRecorder(str(recorder))
        self.recorder = recorder
        self._lock = threading.Lock()
        self._terminated: set[str] = set()
        self._suspended: set[str] = set()

    def _resolve(self, policy: str | PolicyLike) -> PolicyLike:
        if isinstance(policy, (Policy, PolicyStack)):
            return policy
        if isinstance(policy, str):
            from .loader import load_policy

            return load_policy(policy, variables=self._variables)
        raise TypeError(
            f"policy must be a name, a path, a Policy or a PolicyStack, got {type(policy).__name__}"
        )

    @property
    def policy(self) -> PolicyLike:
        return self._policy

    def reload_policy(self, path: str) -> PolicyLike:
        """Replace the policy from ``path``; on any error the old policy stays and this raises."""
        new_policy = self._resolve(str(path))  # raises PolicyValidationError / OSError
        old = self._policy
        self._policy = new_policy
        if isinstance(old, Policy):
            old._notify("policy_reloaded", None)
        return new_policy

    def evaluate(
        self, agent_id: str, action_type: str, target: str, context: Mapping[str, Any] | None = None
    ) -> EvaluationResult:
        ctx = {**(context or {}), "agent_id": agent_id}
        if self.recorder is not None:
            ctx.setdefault("audit_logged", True)
        result = self._policy.evaluate(action_type, target, ctx)
        if self.recorder is not None:
            self.recorder.record(
                agent_id=agent_id,
                action_type=action_type,
                target=target,
                decision=result.action if result.allowed or result.action == "deny" else "deny",
                allowed=result.allowed,
                pattern_ids=list(result.matched),
                pattern_id=result.pattern_id,
                severity=result.severity,
                signal=result.signal,
                violation_mode=result.violation_mode,
                reason=result.reason,
                policy=result.policy,
                source="sdk",
            )
        return result

    def execute(self, agent_id: str, action: Any) -> ExecutionResult:
        """Evaluate ``action`` for ``agent_id``; run it if allowed; apply the verdict otherwise."""
        with self._lock:
            if agent_id in self._terminated:
                raise AgentTerminated(f"agent {agent_id!r} was terminated by a SIGKILL verdict")
            if agent_id in self._suspended:
                raise AgentSuspended(f"agent {agent_id!r} is stopped awaiting review")
        act = _coerce_action(action)
        result = self.evaluate(agent_id, act.action_type, act.target, act.context)
        if result.signal is AgentSignal.SIGKILL:
            with self._lock:
                self._terminated.add(agent_id)
        elif result.signal is AgentSignal.SIGSTOP:
            with self._lock:
                self._suspended.add(agent_id)
        if not result.allowed:
            raise PolicyViolation(result, act)
        value = act.run() if act.run is not None else None
        return ExecutionResult(True, result, value)

    def resume(self, agent_id: str) -> None:
        with self._lock:
            self._suspended.discard(agent_id)

    def is_terminated(self, agent_id: str) -> bool:
        return agent_id in self._terminated
