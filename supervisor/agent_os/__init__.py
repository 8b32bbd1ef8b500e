"""Agent OS: the policy engine and SDK.

``from agent_os import KernelSpace, Policy, Pattern, PolicyStack`` as in the policy reference.
Pure Python; enforcement at the OS level lives in the ``agentd`` package.
"""

from .kernel import AgentAction, AgentSuspended, AgentTerminated, KernelSpace, PolicyViolation
from .merge import MergedPolicy
from .policy import (EvaluationResult, Pattern, Policy, PolicyChangeEvent, PolicyException,
                     Severity, Violation, ViolationMode)
from .signals import AgentSignal
from .stack import PolicyStack


def __getattr__(name: str):
    # The FlightRecorder is imported on first use: the supervisor's start-up does not pay for it.
    if name == "FlightRecorder":
        from .flight_recorder import FlightRecorder
        return FlightRecorder
    raise AttributeError(name)


__all__ = [
    "AgentAction", "AgentSignal", "AgentSuspended", "AgentTerminated", "EvaluationResult",
    "FlightRecorder", "KernelSpace", "MergedPolicy", "Pattern", "Policy", "PolicyChangeEvent",
    "PolicyException", "PolicyStack", "PolicyViolation", "Severity", "Violation", "ViolationMode",
]
