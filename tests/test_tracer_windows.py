"""The tracer's reader-writer lock over path walks (``Tracer.windows``, ``Tracer.waiting``): a
task waiting in its seccomp stop is handed to the handler when the last window closes, while
another task's stop is being handled. The waiting task may have been killed meanwhile, its exit
not reported yet: the handling of the other task's stop must still end by resuming it.

The real-world bench found the hang this guards against: a worker of CPython's test suite stood
at its mkdir's exit stop for good, because re-dispatching a killed waiting task raised ESRCH out
of the worker's own stop. These tests drive ``Tracer.handle`` with the ptrace requests replaced
(a killed task cannot be arranged to be reported after another's stop on demand)."""

from __future__ import annotations

import errno
import signal

import pytest

from agentd.kernel import ptrace
from agentd.trace import tracer as tracer_module
from agentd.trace.tracer import Task, Tracer

WINDOW_HOLDER, KILLED = 1001, 1002
EXIT_STOP = (signal.SIGTRAP << 8) | 0x7F  # a SIGTRAP ptrace stop, no event: the syscall's exit


@pytest.fixture
def requests(monkeypatch):
    """The ptrace requests the tracer makes: resumed tids recorded; the killed task gone."""
    resumed: list[int] = []

    def getregs(tid):
        if tid == KILLED:
            raise ptrace.PtraceError("no such process", errno=errno.ESRCH, pid=tid)
        raise AssertionError(f"unexpected getregs of {tid}")

    monkeypatch.setattr(tracer_module.ptrace, "getregs", getregs)
    monkeypatch.setattr(tracer_module.ptrace, "cont", lambda tid, sig=0: resumed.append(tid))
    monkeypatch.setattr(tracer_module.ptrace, "getsiginfo_code", lambda tid: signal.SIGTRAP)
    return resumed


def _tracer() -> Tracer:
    handled: list[int] = []
    tracer = Tracer(WINDOW_HOLDER, lambda t, task: handled.append(task.tid), pin=True)
    tracer.tasks[KILLED] = Task(KILLED, KILLED)
    # the holder walks a path (its window); the other, a mutator, waits in its seccomp stop
    tracer.windows = {WINDOW_HOLDER}
    tracer.mutating = {WINDOW_HOLDER}
    waiter = tracer.tasks[KILLED]
    waiter.mutator = True
    tracer.waiting = [waiter]
    tracer.root_exec_done = True
    return tracer


def test_the_window_holder_is_resumed_although_the_waiting_task_was_killed(requests):
    tracer = _tracer()
    tracer.handle(WINDOW_HOLDER, EXIT_STOP)
    assert requests == [WINDOW_HOLDER]  # before: nothing resumed, the holder stopped for good
    assert tracer.windows == set() and tracer.waiting == []


def test_the_window_holders_exit_with_a_killed_waiter_raises_nothing(requests):
    """Before: the ESRCH left ``Tracer.run`` and the supervisor died (taking the agent)."""
    tracer = _tracer()
    tracer.handle(WINDOW_HOLDER, 0)  # wait status 0: exited with status 0
    assert WINDOW_HOLDER not in tracer.tasks and tracer.waiting == []
    assert tracer.windows == set()


# --- a task killed while its stop is handled -------------------------------------------------

class _Recorder:
    def __init__(self) -> None:
        self.records: list[dict] = []

    def record(self, **fields) -> None:
        self.records.append(fields)


def _execve_stop(monkeypatch, alive: bool):
    """A Session handling an execve stop whose argv cannot be read (the decoder's error for
    memory that is gone), with the task killed meanwhile or not."""
    from agent_os import Policy
    from agentd.kernel.syscall_numbers import SYSCALL_NUMBERS
    from agentd.trace import session as session_module
    from agentd.trace.decode import DecodeError

    def decode(*args, **kwargs):
        raise DecodeError("cannot read argv[0]: pid 10: nothing readable at 0x200001d00030")

    refused: list[int] = []
    regs = ptrace.Registers()
    regs.orig_rax = SYSCALL_NUMBERS["execve"]

    def getregs(tid):
        if not alive:
            raise ptrace.PtraceError("no such process", errno=errno.ESRCH, pid=tid)
        return regs

    monkeypatch.setattr(session_module, "decode_syscall", decode)
    monkeypatch.setattr(ptrace, "getregs", getregs)  # agentd.kernel.ptrace, as the session uses it
    monkeypatch.setattr(session_module.enforce, "refuse",
                        lambda tid, regs, error=errno.EACCES: refused.append(tid))
    monkeypatch.setattr(session_module, "probe_for", lambda *a, **k: None)
    recorder = _Recorder()
    session = session_module.Session(Policy(name="p"), "run1", "agent", recorder=recorder)
    task = Task(10, 10)
    task.regs = regs
    return session, task, recorder, refused


def test_a_task_killed_while_its_operands_are_read_gets_no_fail_closed_record(monkeypatch):
    """Its memory is gone because it is dying: the syscall never runs, its exit comes next.
    Before, such a race wrote an ``agentd:fail_closed`` denial into a run's audit log (the
    livability suite's CPython workload through the daemon, once)."""
    session, task, recorder, refused = _execve_stop(monkeypatch, alive=False)
    with pytest.raises(ptrace.PtraceError):
        session.on_syscall(None, task)  # Tracer.handle takes the ESRCH: "killed under our feet"
    assert recorder.records == [] and refused == []


def test_a_live_task_whose_operands_cannot_be_read_is_still_refused_and_recorded(monkeypatch):
    session, task, recorder, refused = _execve_stop(monkeypatch, alive=True)
    session.on_syscall(None, task)
    assert refused == [10]
    assert [list(r.get("pattern_ids")) for r in recorder.records] == [["agentd:fail_closed"]]
