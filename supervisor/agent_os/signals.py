"""Agent signals: what a violation does to the agent.

``AgentSignal`` is the value a custom ``violation_handler`` returns and the ``signal`` field of an
evaluation result. SIGKILL and SIGSTOP are delivered as the real POSIX signals by the supervisor;
SIGWARN has no POSIX counterpart: it is a warning written to the agent's stderr and the audit log.
"""

from __future__ import annotations

import enum
import signal as _posix_signal


class AgentSignal(enum.Enum):
    SIGKILL = "SIGKILL"
    SIGSTOP = "SIGSTOP"
    SIGWARN = "SIGWARN"

    @property
    def posix_signal(self) -> int | None:
        """The POSIX signal number the supervisor delivers, or None for SIGWARN."""
        if self is AgentSignal.SIGKILL:
            return int(_posix_signal.SIGKILL)
        if self is AgentSignal.SIGSTOP:
            return int(_posix_signal.SIGSTOP)
        return None

    def __str__(self) -> str:
        return self.value
