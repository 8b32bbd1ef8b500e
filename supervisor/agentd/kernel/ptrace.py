"""The ptrace requests agentd uses, as a thin layer over python-ptrace's ``ptrace.binding``.

python-ptrace's binding does the raw ``ptrace(2)`` calls and knows ``struct user_regs_struct``; it
lacks the seccomp/EXITKILL options, PTRACE_SEIZE/INTERRUPT/LISTEN, and its high-level debugger
polls with sleeps, so agentd keeps its own loop (``tracer.py``) and only borrows the calls. Every
function here is one request, raises ``PtraceError`` (with ``.errno``) on failure and holds no
state. Constants come from ``consts`` (the ptrace and seccomp numbers python-ptrace lacks).
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
import types


def _provide_libc() -> None:
    """Give python-ptrace the C library without ``ctypes.util.find_library('c')``.

    Its ``ptrace.ctypes_libc`` calls find_library, which runs ``ldconfig -p`` in a subprocess
    (~7 ms of every ``agentd run`` start-up). On Linux with glibc the library is ``libc.so.6``
    and already mapped into this interpreter; other libcs keep python-ptrace's own lookup.
    """
    if "ptrace.ctypes_libc" in sys.modules or not os.confstr("CS_GNU_LIBC_VERSION"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return
    module = types.ModuleType(
        "ptrace.ctypes_libc", "the C library (provided by agentd.kernel.ptrace)"
    )
    setattr(module, "LIBC_FILENAME", "libc.so.6")  # noqa: B010 (a module made at run time)
    setattr(module, "libc", libc)  # noqa: B010
    sys.modules["ptrace.ctypes_libc"] = module


_provide_libc()

from ptrace import PtraceError  # noqa: E402 - after _provide_libc
from ptrace.binding import func as _binding  # noqa: E402
from ptrace.binding.linux_struct import user_regs_struct  # noqa: E402

from . import consts  # noqa: E402

__all__ = [
    "PtraceError",
    "Registers",
    "traceme",
    "seize",
    "setoptions",
    "cont",
    "syscall",
    "listen",
    "interrupt",
    "detach",
    "getregs",
    "setregs",
    "geteventmsg",
    "getsiginfo_code",
    "TRACE_OPTIONS",
]

Registers = user_regs_struct

# Options set on every tracee: stop at SECCOMP_RET_TRACE, follow every new task from its first
# instruction, report exec, and kill every tracee if the supervisor dies.
TRACE_OPTIONS = (
    consts.PTRACE_O_TRACESECCOMP
    | consts.PTRACE_O_TRACEFORK
    | consts.PTRACE_O_TRACEVFORK
    | consts.PTRACE_O_TRACECLONE
    | consts.PTRACE_O_TRACEEXEC
    | consts.PTRACE_O_EXITKILL
)


def traceme() -> None:
    """PTRACE_TRACEME, called in the child before it stops itself."""
    _binding.ptrace(consts.PTRACE_TRACEME)


def seize(pid: int, options: int = TRACE_OPTIONS) -> None:
    """PTRACE_SEIZE ``pid`` with ``options`` (group-stops then report as PTRACE_EVENT_STOP)."""
    _binding.ptrace(consts.PTRACE_SEIZE, pid, 0, options)


def setoptions(pid: int, options: int = TRACE_OPTIONS) -> None:
    _binding.ptrace(consts.PTRACE_SETOPTIONS, pid, 0, options)


def cont(pid: int, signum: int = 0) -> None:
    """Resume a stopped tracee, delivering ``signum`` (0: none)."""
    _binding.ptrace(consts.PTRACE_CONT, pid, 0, signum)


def syscall(pid: int, signum: int = 0) -> None:
    """PTRACE_SYSCALL: resume, and stop again at this syscall's exit. agentd asks for that exit
    stop only where it must act there (a pinned path still being walked, an errno probe, a
    sendmmsg run as sendmsg); every other stop is a seccomp stop."""
    _binding.ptrace(consts.PTRACE_SYSCALL, pid, 0, signum)


def listen(pid: int) -> None:
    """PTRACE_LISTEN: leave a seized tracee in group-stop but let it report SIGCONT."""
    _binding.ptrace(consts.PTRACE_LISTEN, pid, 0, 0)


def interrupt(pid: int) -> None:
    _binding.ptrace(consts.PTRACE_INTERRUPT, pid, 0, 0)


def detach(pid: int, signum: int = 0) -> None:
    _binding.ptrace(consts.PTRACE_DETACH, pid, 0, signum)


def getregs(pid: int) -> user_regs_struct:
    return _binding.ptrace_getregs(pid)


def setregs(pid: int, regs: user_regs_struct) -> None:
    _binding.ptrace_setregs(pid, regs)


def geteventmsg(pid: int) -> int:
    """PTRACE_GETEVENTMSG as an unsigned long (new pid for fork/clone, seccomp RET_DATA)."""
    value = ctypes.c_ulong()
    _binding.ptrace(consts.PTRACE_GETEVENTMSG, pid, 0, ctypes.addressof(value))
    return value.value


def getsiginfo_code(pid: int) -> int | None:
    """The si_code of the pending stop's siginfo (a syscall-exit stop says SIGTRAP or
    SIGTRAP | 0x80); None when the kernel has none to give (EINVAL: a group-stop)."""
    try:
        info = _binding.ptrace_getsiginfo(pid)
    except PtraceError as exc:
        if exc.errno == errno.EINVAL:
            return None
        raise
    return int(info.si_code)
