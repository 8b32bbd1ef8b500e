"""The SIGSTOP review as a state of the trace loop: park the agent, ask, then resume or kill.

Owns what a ``stop`` verdict does to the agent tree, in three steps, none of which re-enters the
loop:

1. ``begin`` (in the stop handler): the held syscall is rewound (skipped now, issued again when
   the thread next runs: ``enforce.rewind``), every thread group gets a real SIGSTOP, the held
   task goes back to user space to take it, and the tracer enters the hold state
   (``Tracer.hold``). A syscall not entered through the 2-byte ``syscall`` instruction cannot be
   re-issued: ``begin`` returns False and the caller refuses it instead.
2. parking (the loop, as for any other stop): each task reports its group-stop and is marked
   parked; a seccomp stop that arrives meanwhile is rewound too, a task born meanwhile gets its
   SIGSTOP at adoption (``Tracer``).
3. ``conclude`` (the loop, once every task is parked, between two waits): every task is
   detached, so the agent's processes sit in state ``T``; the operator is asked
   (``Hold.review``, which blocks as long as it takes: the terminal, the control socket); the
   answer goes back to the session (``Hold.answered``: the audit record, the one-shot approval of
   the re-issued syscall, a batch's answer); then the tree is killed, or re-seized (every task
   ``resuming``) and sent SIGCONT.

Plain state on the tracer; what the operator sees and how it answers is the caller's
(``agentd.run.registry.OperatorReview``).
"""

from __future__ import annotations

import errno
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agentd.kernel import ptrace, tracee_memory

from . import enforce

if TYPE_CHECKING:
    from .decide import Verdict
    from .tracer import Task, Tracer

__all__ = ["Hold", "begin", "ready", "conclude", "DECISIONS"]

DECISIONS = ("allow", "deny", "kill")


@dataclass
class Hold:
    """One held syscall and who decides it."""

    task: Task
    nr: int
    args: tuple[int, ...]
    verdict: Verdict
    # the operator: (decision, who) with decision in DECISIONS; may block for as long as it takes
    review: Callable[[Hold], tuple[str, str]]
    # the session: records the answer and remembers it (approval, batch); called before resuming
    answered: Callable[[Hold, str, str], None]
    contains: Callable[[int], bool]  # is this pid one of the agent's (for the control socket)


def begin(
    tracer: Tracer,
    task: Task,
    regs,
    verdict: Verdict,
    review: Callable[[Hold], tuple[str, str]],
    answered: Callable[[Hold, str, str], None],
) -> bool:
    """Enter the hold state for ``task``'s stopped syscall; False when it cannot be re-issued."""
    try:
        insn = tracee_memory.read_bytes(
            task.tid, regs.rip - len(enforce.SYSCALL_INSN), len(enforce.SYSCALL_INSN)
        )
    except OSError:
        insn = b""
    if insn != enforce.SYSCALL_INSN:
        return False
    nr = regs.orig_rax
    args = (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9)
    enforce.rewind(task.tid, regs, nr)
    tracer.hold = Hold(task, nr, args, verdict, review, answered, tracer.contains)
    for other in tracer.tasks.values():
        other.parked = False
        if other.listening:  # in a group-stop of its own: make it report again
            other.listening = False
            try:
                ptrace.interrupt(other.tid)
            except ptrace.PtraceError:
                pass
    tracer.signal_tree(signal.SIGSTOP)
    ptrace.cont(task.tid)  # back to user space, where the pending SIGSTOP is taken
    return True


def ready(tracer: Tracer) -> bool:
    """Every task is parked in its group-stop: time to ask."""
    return all(task.parked for task in tracer.tasks.values())


def conclude(tracer: Tracer) -> None:
    """Detach, ask the operator, tell the session, then resume or kill the tree."""
    hold = tracer.hold
    assert hold is not None
    for task in list(tracer.tasks.values()):
        try:
            ptrace.detach(task.tid, 0)
        except ptrace.PtraceError as exc:
            if exc.errno != errno.ESRCH:
                raise
    decision, who = hold.review(hold)
    tracer.hold = None
    hold.answered(hold, decision, who)
    if decision == "kill":
        tracer.kill_tree()
        # Detached tasks are not reported to us any more: only our own child is left to reap.
        tracer.forget_detached()
        return
    for task in tracer.tasks.values():
        task.parked = False
        task.resuming = True
        try:
            ptrace.seize(task.tid, ptrace.TRACE_OPTIONS)
        except ptrace.PtraceError as exc:
            if exc.errno != errno.ESRCH:
                raise
    tracer.signal_tree(signal.SIGCONT)
