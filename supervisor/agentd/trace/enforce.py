"""Carry out a verdict on a syscall stopped at its seccomp stop.

Owns the *enforce* step of stop -> decode -> decide -> enforce, and nothing else: how a syscall
is refused (orig_rax = -1 makes the kernel skip it, rax = -EACCES is what the agent sees), or
refused with the kernel's own errno where the kernel would fail it anyway (``refuse_probing``: a
harmless probe runs in its place, ``errno_probe``), how it is held for later (skipped, with rip
moved back over the 2-byte ``syscall`` instruction and rax set to its number, so that the thread
issues it again when it runs next), how the agent tree is
killed (a real SIGKILL to every process), and the warning line on the agent's stderr (fd 2 of the
supervisor, which the agent shares). Audit records are written by the caller (``session``).
An allowed open that the tracer pinned and rewrote runs as openat2 with RESOLVE_NO_SYMLINKS
(``scratch.openat2_form``): the audit record names the agent's own syscall.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from agentd.kernel import ptrace

from .errno_probe import Probe
from .pinning import in_window, openat2_form, sendmsg_form

__all__ = [
    "allow",
    "refuse",
    "refuse_probing",
    "Probing",
    "rewind",
    "kill",
    "warn_line",
    "notice_line",
    "SYSCALL_INSN",
]

SYSCALL_INSN = b"\x0f\x05"
_U64 = (1 << 64) - 1


def allow(tid: int, regs: ptrace.Registers | None = None) -> None:
    """Let the syscall run (a pinned open as openat2 with RESOLVE_NO_SYMLINKS: pinning.py).
    ``regs``: the stop's registers as the kernel holds them, when the caller has them."""
    if regs is None:
        regs = ptrace.getregs(tid)
    if openat2_form(regs) or sendmsg_form(regs):
        ptrace.setregs(tid, regs)
    _go(tid, regs)


def _go(tid: int, regs: ptrace.Registers) -> None:
    # A syscall whose path the kernel still walks stops again at its exit, where the tracer
    # closes its window (renames elsewhere in the tree wait for that: scratch.MUTATORS).
    if in_window(regs):
        ptrace.syscall(tid)
    else:
        ptrace.cont(tid)


def refuse(tid: int, regs: ptrace.Registers, error: int = errno.EACCES) -> None:
    """Skip the syscall; the agent sees -1 with ``errno = error``."""
    regs.orig_rax = _U64  # -1: no syscall
    regs.rax = (-error) & _U64
    ptrace.setregs(tid, regs)
    _go(tid, regs)


@dataclass
class Probing:
    """A refused syscall whose errno the kernel tells (``errno_probe``): the probe runs in its
    place and, at its exit stop, ``finish`` turns the probe's result into the agent's answer
    and gives the agent back its argument registers (a syscall preserves them)."""

    probe: Probe
    saved: tuple[int, ...]

    def finish(self, regs: ptrace.Registers) -> None:
        regs.rax = (-self.probe.answer(regs.rax)) & _U64
        regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9 = self.saved


def refuse_probing(tid: int, regs: ptrace.Registers, probe: Probe) -> Probing:
    """Refuse the syscall with the errno the kernel would give it (``errno_probe``): run the
    harmless probe instead and stop at its exit, where the caller calls ``Probing.finish``."""
    saved = (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9)
    regs.orig_rax = probe.nr
    regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9 = probe.args
    ptrace.setregs(tid, regs)
    ptrace.syscall(tid)
    return Probing(probe, saved)


def rewind(tid: int, regs: ptrace.Registers, nr: int) -> None:
    """Skip the syscall now so that the thread re-issues it when it next runs.

    The registers that carry the arguments (rdi, rsi, rdx, r10, r8, r9) are untouched by a
    skipped syscall; rcx and r11 are clobbered by ``syscall`` itself, as on any syscall.
    The caller checks that the two bytes before rip are ``syscall`` (tracee_memory).
    """
    regs.orig_rax = _U64
    regs.rax = nr
    regs.rip = (regs.rip - len(SYSCALL_INSN)) & _U64
    ptrace.setregs(tid, regs)


def kill(tracer, tid: int, regs: ptrace.Registers) -> None:
    """The SIGKILL verdict: skip the syscall (it must not run even for an instant), SIGKILL
    every process of the agent (the tracer kills whatever reports later too), let the task go
    to its death."""
    regs.orig_rax = _U64
    regs.rax = (-errno.EACCES) & _U64
    ptrace.setregs(tid, regs)
    tracer.kill_tree()
    _go(tid, regs)


def warn_line(text: str) -> None:
    """One line on fd 2, which the agent shares: it sees the warning where it logs."""
    notice_line(f"warning: {text}")


def notice_line(text: str) -> None:
    try:
        os.write(2, f"agentd: {text}\n".encode("utf-8", "replace"))
    except OSError:
        pass
