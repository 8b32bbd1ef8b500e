"""The ptrace requests agentd uses, as a thin layer over python-ptrace's ``ptrace.binding``.

python-ptrace's binding does the raw ``ptrace(2)`` calls and knows ``struct user_regs_struct``; it
lacks the seccomp/EXITKILL options, PTRACE_SEIZE/INTERRUPT/LISTEN, and its high-level debugger
polls with sleeps, so agentd keeps its own loop (``tracer.py``) and only borrows the calls. Every
function here is one request, raises ``PtraceError`` (with ``.errno``) on failure and holds no
state. Constants come from ``kernel_consts`` (the one place a kernel number is spelled).
"""

from __future__ import annotations

import ctypes
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
    module = types.ModuleType("ptrace.ctypes_libc", "the C library (provided by agentd.kernel.ptrace)")
    module.LIBC_FILENAME = "libc.so.6"
    module.libc = libc
    sys.modules["ptrace.ctypes_libc"] = module


_provide_libc()

from ptrace import PtraceError  # noqa: E402 - after _provide_libc
from ptrace.binding import func as _binding  # noqa: E402
from ptrace.binding.linux_struct import user_regs_struct  # noqa: E402

from . import consts as K  # noqa: E402

__all__ = [
    "PtraceError", "Registers", "traceme", "seize", "setoptions", "cont", "syscall", "listen", "interrupt",
    "detach", "getregs", "setregs", "geteventmsg", "getsiginfo_signo", "is_group_stop",
    "TRACE_OPTIONS",
]

Registers = user_regs_struct

# Options set on every tracee: stop at SECCOMP_RET_TRACE, follow every new task from its first
# instruction, report exec, and kill every tracee if the supervisor dies.
TRACE_OPTIONS = (K.PTRACE_O_TRACESECCOMP | K.PTRACE_O_TRACEFORK | K.PTRACE_O_TRACEVFORK
                 | K.PTRACE_O_TRACECLONE | K.PTRACE_O_TRACEEXEC | K.PTRACE_O_EXITKILL)


def traceme() -> None:
    """PTRACE_TRACEME, called in the child before it stops itself."""
    _binding.ptrace(K.PTRACE_TRACEME)


def seize(pid: int, options: int = TRACE_OPTIONS) -> None:
    """PTRACE_SEIZE ``pid`` with ``options`` (group-stops are then reported as PTRACE_EVENT_STOP)."""
    _binding.ptrace(K.PTRACE_SEIZE, pid, 0, options)


def setoptions(pid: int, options: int = TRACE_OPTIONS) -> None:
    _binding.ptrace(K.PTRACE_SETOPTIONS, pid, 0, options)


def cont(pid: int, signum: int = 0) -> None:
    """Resume a stopped tracee, delivering ``signum`` (0: none)."""
    _binding.ptrace(K.PTRACE_CONT, pid, 0, signum)


def syscall(pid: int, signum: int = 0) -> None:
    """PTRACE_SYSCALL. agentd does not use it (only seccomp stops): here for tools and tests."""
    _binding.ptrace(K.PTRACE_SYSCALL, pid, 0, signum)


def listen(pid: int) -> None:
    """PTRACE_LISTEN: leave a seized tracee in group-stop but let it report SIGCONT."""
    _binding.ptrace(K.PTRACE_LISTEN, pid, 0, 0)


def interrupt(pid: int) -> None:
    _binding.ptrace(K.PTRACE_INTERRUPT, pid, 0, 0)


def detach(pid: int, signum: int = 0) -> None:
    _binding.ptrace(K.PTRACE_DETACH, pid, 0, signum)


def getregs(pid: int) -> user_regs_struct:
    return _binding.ptrace_getregs(pid)


def setregs(pid: int, regs: user_regs_struct) -> None:
    _binding.ptrace_setregs(pid, regs)


def geteventmsg(pid: int) -> int:
    """PTRACE_GETEVENTMSG as an unsigned long (new pid for fork/clone, seccomp RET_DATA)."""
    value = ctypes.c_ulong()
    _binding.ptrace(K.PTRACE_GETEVENTMSG, pid, 0, ctypes.addressof(value))
    return value.value


def getsiginfo_signo(pid: int) -> int | None:
    """The si_signo of the pending stop, or None when the kernel says this is a group-stop
    (PTRACE_GETSIGINFO fails with EINVAL for a group-stop of a PTRACE_TRACEME tracee)."""
    try:
        info = _binding.ptrace_getsiginfo(pid)
    except PtraceError as exc:
        if exc.errno == 22:  # EINVAL
            return None
        raise
    return int(info.si_signo)


def is_group_stop(pid: int) -> bool:
    return getsiginfo_signo(pid) is None
