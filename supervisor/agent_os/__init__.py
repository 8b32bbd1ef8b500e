"""Agent OS: the policy engine and SDK.

``from agent_os import KernelSpace, Policy, Pattern, PolicyStack`` as in the policy reference.
Pure Python; enforcement at the OS level lives in the ``agentd`` package. Every public name is
imported on first use (PEP 562), so that a program needing one submodule (the supervisor's
start-up needs the policy objects, not the SDK's kernel) does not pay for the others.
"""

from __future__ import annotations

import importlib

# public name -> the submodule that defines it
_EXPORTS = {
    "AgentAction": "kernel",
    "AgentSuspended": "kernel",
    "AgentTerminated": "kernel",
    "KernelSpace": "kernel",
    "PolicyViolation": "kernel",
    "MergedPolicy": "merge",
    "EvaluationResult": "policy",
    "Pattern": "policy",
    "Policy": "policy",
    "PolicyChangeEvent": "policy",
    "PolicyException": "policy",
    "Severity": "policy",
    "Violation": "policy",
    "ViolationMode": "policy",
    "AgentSignal": "signals",
    "PolicyStack": "stack",
    "FlightRecorder": "flight_recorder",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agent_os' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = sorted(_EXPORTS)
