"""Waiting on effects in tests: ``wait_for`` polls a predicate until it holds (a generous
timeout, never a timing assertion: the test fails only if the effect never comes), and
``pid_alive`` tells a live process from a gone or zombie one (from ``/proc/PID/stat``).
Shared by the host tests and the in-VM suite (tests/vm)."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float = 20.0, what: str = "condition", interval: float = 0.05):
    """The first true value of ``predicate()``; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
        return state != b"Z"
    except (OSError, IndexError):
        return False
