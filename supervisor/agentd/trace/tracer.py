"""The tracer: one blocking ``waitpid(-1, __WALL)`` loop over every task of the agent.

Owns the *stop* step of stop -> decode -> decide -> enforce and the per-thread bookkeeping. Every
task is seized (PTRACE_SEIZE, so group-stops are reported as PTRACE_EVENT_STOP and can be left
stopped with PTRACE_LISTEN) with TRACESECCOMP | TRACEFORK | TRACEVFORK | TRACECLONE | TRACEEXEC |
EXITKILL, so every descendant is traced from its first instruction and dies with the supervisor.
Only the syscalls the seccomp filter returns SECCOMP_RET_TRACE for ever stop (no PTRACE_SYSCALL).
A seccomp stop goes to the handler (``session.Session.on_syscall``), which resumes the task or
holds it; fork/clone/exec events update the task table; signal-delivery-stops re-inject the
signal; group-stops stay stopped (PTRACE_LISTEN) until SIGCONT; anything else is logged with pid
and status. No polling, no sleeps; EINTR is retried. Against TOCTOU races (``scratch``): at
every exec the new image gets the sealed read-only scratch region (two injected syscalls, run
before the program's first instruction), and at every seccomp stop the syscall's memory operands
are copied there and its registers pointed at the copies *before* the handler decodes them.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

from agentd.kernel import consts, procfs, ptrace
from agentd.kernel.syscall_numbers import SYSCALL_NAMES
from agentd.kernel.tracee_memory import TraceeMemory

from . import enforce, pinning
from . import hold as holds
from .hold import Hold
from .syscall_table import TABLE

__all__ = ["Task", "Tracer"]

log = logging.getLogger("agentd.trace.tracer")

_STOP_SIGNALS = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})
_NEW_TASK_EVENTS = frozenset(
    {consts.PTRACE_EVENT_FORK, consts.PTRACE_EVENT_VFORK, consts.PTRACE_EVENT_CLONE}
)


@dataclass
class Task:
    """One traced thread. ``exe`` and ``ppid`` are read from /proc on first use and forgotten
    at exec (they describe the thread group)."""

    tid: int
    tgid: int
    parent: int = 0  # tid of the task whose fork/clone created it (0: the root)
    listening: bool = False  # in group-stop, left there with PTRACE_LISTEN
    resuming: bool = False  # re-seized after a SIGSTOP verdict: run on its next stop
    parked: bool = False  # stopped for a SIGSTOP verdict, waiting to be detached
    approval: tuple | None = None  # (nr, args, outcome): a one-shot operator decision
    install: pinning.Install | None = None  # the scratch region is being installed (after exec)
    mutator: bool = False  # waiting (Tracer.waiting) with one of scratch.MUTATORS
    sendmmsg_array: int = 0  # a pinned sendmmsg: the agent's array, for its exit stop
    probing: enforce.Probing | None = None  # a refusal whose errno its exit stop sets
    # The registers of the seccomp stop being handled, as the kernel holds them after pinning:
    # read once per stop (set by _pin, taken by the handler with ``stop_registers``)
    regs: ptrace.Registers | None = None
    # This stop's open, pinned: where its resolved path now is (pinning.resolved_open_path)
    resolved_open: int | None = None
    _exe: str | None = None
    _ppid: int | None = None
    _memory: TraceeMemory | None = None

    @property
    def memory(self) -> TraceeMemory:
        if self._memory is None:
            self._memory = TraceeMemory(self.tid)
        return self._memory

    @property
    def exe(self) -> str:
        if self._exe is None:
            try:
                self._exe = os.readlink(f"/proc/{self.tid}/exe")
            except OSError:
                self._exe = ""
        return self._exe

    @property
    def ppid(self) -> int:
        if self._ppid is None:
            info = procfs.stat(self.tgid)
            self._ppid = info.ppid if info is not None else 0
        return self._ppid

    def forget_process_facts(self) -> None:
        """At exec: a new program, a new address space."""
        self._exe = None
        self._ppid = None
        self.release()

    def release(self) -> None:
        if self._memory is not None:
            self._memory.close()
            self._memory = None


def describe_status(status: int) -> str:
    if os.WIFEXITED(status):
        return f"exited {os.WEXITSTATUS(status)}"
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    if os.WIFSTOPPED(status):
        return f"stopped sig={os.WSTOPSIG(status)} event={status >> 16} (status {status:#x})"
    return f"status {status:#x}"


class Tracer:
    """The loop. ``on_seccomp(tracer, task)`` must resume the task (or hold it) and return."""

    def __init__(
        self,
        root_pid: int,
        on_seccomp: Callable[[Tracer, Task], None],
        on_exit: Callable[[Tracer, Task, int], None] | None = None,
        pin: bool | None = None,
    ):
        self.root_pid = root_pid
        # The TOCTOU defence; AGENTD_BENCH_NO_PINNING=1 turns it off, for bench/toctou_cost.py
        # only (the agent cannot set the supervisor's environment).
        self.pin = pin if pin is not None else os.environ.get("AGENTD_BENCH_NO_PINNING") != "1"
        self.scratch = pinning.Scratch()
        # tids inside a syscall whose path the kernel still walks (until their exit stop), and
        # the MUTATORS of other tasks that wait for them (pinning.py)
        self.windows: set[int] = set()
        self.mutating: set[int] = set()  # the windows that are MUTATORS
        self.waiting: list[Task] = []
        self.root_exec_done = False  # before it, the root is the supervisor's own child code
        self._pinned = pinning.pinned_names()
        self.on_seccomp = on_seccomp
        self.on_exit = on_exit
        self.tasks: dict[int, Task] = {root_pid: Task(root_pid, root_pid)}
        self.root_status: int | None = None
        self.killing = False  # a SIGKILL verdict: everything that reports is killed
        self.hold: Hold | None = None  # a SIGSTOP verdict: everything that reports is parked

    # --- the agent tree --------------------------------------------------------------------
    def contains(self, pid: int) -> bool:
        """Is ``pid`` (a thread or process id) one of the agent's tasks?"""
        return pid in self.tasks

    def thread_groups(self) -> set[int]:
        # list() copies the table in one step under the GIL: the network plane's proxy thread
        # calls kill_tree while this thread adds and removes tasks.
        return {task.tgid for task in list(self.tasks.values())}

    def signal_tree(self, sig: int) -> None:
        """``sig`` to every process of the agent (gone ones skipped)."""
        for tgid in self.thread_groups():
            try:
                os.kill(tgid, sig)
            except ProcessLookupError:
                pass

    def kill_tree(self) -> None:
        """SIGKILL every process of the agent, now and whatever reports later."""
        self.killing = True
        self.signal_tree(signal.SIGKILL)

    # --- the loop ----------------------------------------------------------------------------
    def run(self) -> int:
        """Trace until no task is left; return the root's wait status. A hold (SIGSTOP
        verdict) is concluded here, between two waits, once every task is parked (hold.py)."""
        while self.tasks:
            if self.hold is not None and holds.ready(self):
                holds.conclude(self)
                continue
            if not self.step():
                break
        return self.root_status if self.root_status is not None else 0

    def forget_detached(self) -> None:
        """After a kill verdict on a held (detached) tree: the detached tasks report to nobody;
        only the root, our own child, is still reaped here."""
        root = self.tasks.get(self.root_pid)
        self.tasks = {self.root_pid: root} if root is not None else {}

    def step(self, pid: int = -1) -> bool:
        """Handle one wait status; False when no traced child is left."""
        try:
            tid, status = os.waitpid(pid, consts.WALL)
        except ChildProcessError:
            self.tasks.clear()
            return False
        # (InterruptedError cannot happen: Python retries waitpid on EINTR, PEP 475)
        self.handle(tid, status)
        return True

    def handle(self, tid: int, status: int) -> None:
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self._gone(tid, status)
            return
        if not os.WIFSTOPPED(status):
            log.warning("pid %d: unexpected wait status: %s", tid, describe_status(status))
            return
        task = self.tasks.get(tid)
        if task is None:
            # A new task can report its first stop before its parent's fork event.
            task = self._adopt(tid, parent=0)
        sig = os.WSTOPSIG(status)
        event = status >> 16
        if self.waiting and (self.hold is not None or self.killing):
            self.release_waiting()  # parked or killed like everyone else, not left waiting
        try:
            if self.killing:
                os.kill(tid, signal.SIGKILL)
                self._resume(tid)
            elif task.install is not None:
                self._installing_stop(task, sig, event)
            elif event == 0 and sig == signal.SIGTRAP and self._is_syscall_exit(task):
                if task.sendmmsg_array:
                    regs = ptrace.getregs(tid)
                    if pinning.sendmmsg_result(regs, task.memory, task.sendmmsg_array):
                        ptrace.setregs(tid, regs)
                    task.sendmmsg_array = 0
                if task.probing is not None:
                    regs = ptrace.getregs(tid)
                    task.probing.finish(regs)
                    task.probing = None
                    ptrace.setregs(tid, regs)
                self._close_window(task.tid)
                self._resume(tid)
            elif event == consts.PTRACE_EVENT_SECCOMP:
                self._seccomp_stop(task)
            elif event in _NEW_TASK_EVENTS:
                new_tid = ptrace.geteventmsg(tid)
                if new_tid not in self.tasks:
                    # fork/vfork make a process; clone may make either: ask /proc
                    self._adopt(
                        new_tid,
                        parent=tid,
                        tgid=None if event == consts.PTRACE_EVENT_CLONE else new_tid,
                    )
                else:
                    self.tasks[new_tid].parent = tid
                self._resume(tid)
            elif event == consts.PTRACE_EVENT_EXEC:
                former = ptrace.geteventmsg(tid)
                if former != tid:
                    gone = self.tasks.pop(former, None)  # a non-leader thread exec'd: now `tid`
                    if gone is not None:
                        gone.release()
                    self.scratch.release(former)
                task.forget_process_facts()
                self._close_window(former)  # the exec's walk is over; ptrace.cont ends its trace
                self._close_window(tid)
                if task.tgid == self.root_pid:
                    self.root_exec_done = True
                if self.pin:
                    self._begin_install(task)
                self._resume(tid)
            elif event == consts.PTRACE_EVENT_STOP:
                self._event_stop(task, sig)
            elif event == 0:
                self._signal_delivery(task, sig)
            else:
                log.warning("pid %d: unexpected stop: %s", tid, describe_status(status))
                self._resume(tid)
        except ptrace.PtraceError as exc:
            if exc.errno == errno.ESRCH:
                return  # killed under our feet; its exit is reported next
            raise

    # --- the scratch region (TOCTOU) -------------------------------------------------------------
    def _begin_install(self, task: Task) -> None:
        try:
            task.install = self.scratch.begin_install(
                task.tid, task.memory, ptrace.getregs, ptrace.setregs
            )
        except pinning.ScratchError as exc:
            self._install_failed(task, exc)

    def _installing_stop(self, task: Task, sig: int, event: int) -> None:
        """A stop while the install stubs run: their traps, or something to put off."""
        install = task.install
        assert install is not None
        if (
            event == 0
            and sig == signal.SIGTRAP
            and self.scratch.is_stub_trap(install, ptrace.getregs(task.tid))
        ):
            try:
                self.scratch.finish_install(
                    task.tid, install, task.memory, ptrace.getregs, ptrace.setregs
                )
            except pinning.ScratchError as exc:
                self._install_failed(task, exc)
                self._resume(task.tid)
                return
            task.install = None
            self._resume(task.tid)
            pinning.send_deferred(task.tid, install.deferred)
            return
        elif event == 0:
            install.deferred.append(sig)  # delivered once the program is restored
        # A seccomp stop here comes from a filter the agent stacked (ours allows mmap and
        # mseal): let it run. Group-stops cannot happen (stop signals are put off).
        self._resume(task.tid)

    def _install_failed(self, task: Task, exc: Exception) -> None:
        # INVARIANT: no agent program runs without its scratch region (fail closed).
        log.error("pid %d: cannot install the scratch region: %s; killing it", task.tid, exc)
        task.install = None
        try:
            os.kill(task.tgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _is_syscall_exit(self, task: Task) -> bool:
        """A SIGTRAP stop of a task in a window: its syscall-exit-stop (si_code SIGTRAP or
        SIGTRAP|0x80), or a real SIGTRAP (si_code SI_KERNEL, SI_USER, ...)?"""
        if task.tid not in self.windows and task.probing is None:
            return False
        try:
            code = ptrace.getsiginfo_code(task.tid)
        except ptrace.PtraceError:
            return False
        return code in (signal.SIGTRAP, signal.SIGTRAP | 0x80)

    def _close_window(self, tid: int) -> None:
        if tid in self.windows:
            self.windows.discard(tid)
            self.mutating.discard(tid)
            if self.waiting and (not self.windows or not self.mutating):
                waiting, self.waiting = self.waiting, []
                for task in waiting:
                    if task.tid in self.tasks:
                        self._redispatch(task)

    def _must_wait(self, task: Task) -> bool:
        """A reader-writer lock over path walks, the waiting side left in its seccomp stop:
        a MUTATOR waits while another task's window is open, and a pinned path syscall waits
        while another task's mutator runs (it may be in the kernel already when we check).
        Rewritten opens need neither: they run with RESOLVE_NO_SYMLINKS."""
        if not self.windows or self.windows == {task.tid} or self.killing or self.hold is not None:
            return False
        name = SYSCALL_NAMES.get(ptrace.getregs(task.tid).orig_rax)
        if name in pinning.MUTATORS:
            wait = True
        elif name in self._pinned and name not in ("open", "openat"):
            # ... and behind a waiting mutator, which would otherwise starve
            wait = any(t != task.tid for t in self.mutating) or any(t.mutator for t in self.waiting)
        else:
            wait = False
        if wait:
            task.mutator = name in pinning.MUTATORS
            self.waiting.append(task)
        return wait

    def release_waiting(self) -> None:
        """Hand every waiting mutator to the handler now (a SIGSTOP verdict parks them all)."""
        waiting, self.waiting = self.waiting, []
        for task in waiting:
            if task.tid not in self.tasks:
                continue
            if self.killing:
                # INVARIANT: nothing new runs once the tree is being killed
                try:
                    os.kill(task.tid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self._resume(task.tid)
            else:
                self._redispatch(task, wait=False)

    def _redispatch(self, task: Task, wait: bool = True) -> None:
        """Hand a task that waited in its seccomp stop to the handler, while another task's
        stop is being handled. It may have been killed meanwhile (a SIGKILL from elsewhere in
        the tree) with its exit not reported yet: ptrace then says ESRCH, and that must not
        abort the other task's stop, which would be left stopped, never resumed (a hang the
        real-world bench found: a worker of CPython's tests stuck at its mkdir's exit stop)."""
        try:
            self._seccomp_stop(task, wait)
        except ptrace.PtraceError as exc:
            if exc.errno != errno.ESRCH:
                raise
            # its exit is reported next (_gone); nothing of it is left waiting

    def _pin(self, task: Task) -> None:
        """Copy the stopped syscall's memory operands to the scratch slot (``scratch.pin``)."""
        if task.tgid == self.root_pid and not self.root_exec_done:
            return  # the supervisor's child execing the agent: no agent code has run yet
        regs = ptrace.getregs(task.tid)
        task.regs = regs
        name = SYSCALL_NAMES.get(regs.orig_rax)
        task.sendmmsg_array = 0
        if name not in self._pinned:
            return
        spec = TABLE[name]
        array = regs.rsi
        try:
            changed, window = self.scratch.pin(task.tid, task.tgid, task.memory, spec, regs)
            if window and name == "sendmmsg":
                task.sendmmsg_array = array
            if window:
                self.windows.add(task.tid)
                if name in pinning.MUTATORS:
                    self.mutating.add(task.tid)
        except pinning.ScratchError as exc:
            # INVARIANT: an operand that could not be pinned is never read by the kernel:
            # poison every pointer, the decoder then refuses the syscall (and records why).
            log.warning("pid %d: cannot pin the operands of %s: %s", task.tid, name, exc)
            for index in (spec.path, spec.path2, spec.how, spec.argv, spec.addr, spec.msg):
                if index is not None:
                    setattr(regs, pinning.REGISTERS[index], pinning.POISON)
            changed = True
        if changed:
            ptrace.setregs(task.tid, regs)
            task.resolved_open = pinning.resolved_open_path(regs)

    def _seccomp_stop(self, task: Task, wait: bool = True) -> None:
        task.probing = None  # a new syscall: any earlier probe's exit has been reported
        task.regs = None
        task.resolved_open = None
        try:
            if self.pin:
                # its previous syscall is over, whether or not we saw the exit
                self._close_window(task.tid)
                if wait and self._must_wait(task):
                    return
                self._pin(task)
            if self.hold is not None:
                # The agent is being parked for a review: issue this syscall again after it.
                regs = ptrace.getregs(task.tid)
                enforce.rewind(task.tid, regs, regs.orig_rax)
                self._resume(task.tid)
                return
            self.on_seccomp(self, task)
        except ptrace.PtraceError:
            raise
        except Exception:  # INVARIANT: a bug in the handler refuses the syscall (fail closed)
            log.exception("pid %d: error handling a seccomp stop; refusing the syscall", task.tid)
            enforce.refuse(task.tid, ptrace.getregs(task.tid), errno.EACCES)

    def _resume(self, tid: int, sig: int = 0) -> None:
        try:
            ptrace.cont(tid, sig)
        except ptrace.PtraceError as exc:
            if exc.errno != errno.ESRCH:
                raise

    def _adopt(self, tid: int, parent: int, tgid: int | None = None) -> Task:
        task = Task(tid, tgid if tgid is not None else procfs.tgid_of(tid), parent)
        self.tasks[tid] = task
        if self.killing or self.hold is not None:
            try:
                os.kill(tid, signal.SIGKILL if self.killing else signal.SIGSTOP)
            except ProcessLookupError:
                pass
        return task

    def _event_stop(self, task: Task, sig: int) -> None:
        if self.hold is not None and sig in _STOP_SIGNALS:
            task.parked = True  # group-stop reached: stays in this ptrace-stop until detached
            return
        if task.resuming or sig not in _STOP_SIGNALS:
            # PTRACE_INTERRUPT, a new task's first stop, the wake-up after SIGCONT, or a task
            # re-seized after a SIGSTOP verdict
            task.resuming = False
            task.listening = False
            self._resume(task.tid)
            return
        # A group-stop of the agent's own making (SIGSTOP, ^Z): leave it stopped, but let the
        # kernel tell us about SIGCONT.
        task.listening = True
        ptrace.listen(task.tid)

    def _signal_delivery(self, task: Task, sig: int) -> None:
        # Re-inject the signal: the tracer is not the agent's signal filter.
        self._resume(task.tid, sig)

    def _gone(self, tid: int, status: int) -> None:
        self.scratch.release(tid)
        self.waiting = [t for t in self.waiting if t.tid != tid]
        self._close_window(tid)
        task = self.tasks.pop(tid, None)
        if task is not None:
            task.release()
        if tid == self.root_pid:
            self.root_status = status
        if task is not None and self.on_exit is not None:
            self.on_exit(self, task, status)


def stop_registers(task: Task) -> ptrace.Registers:
    """The registers of ``task``'s current seccomp stop: the copy ``_pin`` read (and wrote back,
    if it changed them), else read now. Taken once: a later call reads them again."""
    regs, task.regs = task.regs, None
    return regs if regs is not None else ptrace.getregs(task.tid)
