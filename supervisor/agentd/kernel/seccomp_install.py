"""Installing a compiled seccomp program: what a forked child does, without the compiler.

Owns ``InstallableFilter``: the encoded program (``struct sock_filter[]``) laid out in memory by
the parent, and ``install()``, the two system calls the child makes before exec; and
``probe_kernel``, what the kernel must offer before a run starts. ``seccomp.py``
compiles programs and prepares them through this class; a run whose program comes from the
filter cache (``run/filter_cache.py``) installs it without importing the compiler and its BPF
assembler (~12 ms of every ``agentd run`` start-up).
"""

from __future__ import annotations

import ctypes
import errno as errno_codes
import os
from collections.abc import Mapping
from functools import cached_property
from types import MappingProxyType

from agentd.kernel import libc
from agentd.kernel.consts import (
    PR_SET_NO_NEW_PRIVS,
    SECCOMP_GET_ACTION_AVAIL,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    SECCOMP_RET_KILL_PROCESS,
    SECCOMP_RET_TRACE,
    SECCOMP_SET_MODE_FILTER,
)
from agentd.kernel.syscall_numbers import SYSCALL_NUMBERS

__all__ = ["InstallableFilter", "INSTRUCTION_SIZE", "MAX_INSTRUCTIONS", "probe_kernel"]

SYS_SECCOMP = SYSCALL_NUMBERS["seccomp"]
INSTRUCTION_SIZE = 8  # struct sock_filter: u16 code, u8 jt, u8 jf, u32 k
MAX_INSTRUCTIONS = 4096  # BPF_MAXINSNS: the kernel refuses a longer program


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_MESSAGES = {
    errno_codes.EACCES: "no_new_privs is not set and the caller lacks CAP_SYS_ADMIN",
    errno_codes.EINVAL: "the kernel rejected the program or the flags (or it was built "
    "without CONFIG_SECCOMP_FILTER)",
    errno_codes.ENOMEM: "too many filters or instructions already attached to this process",
    errno_codes.EFAULT: "the program is not readable (a bug in agentd)",
    errno_codes.ENOSYS: "seccomp(2) is not available: blocked by an outer seccomp "
    "profile (containers) or not built into the kernel",
    errno_codes.EPERM: "seccomp(2) is refused by an outer seccomp profile (containers)",
}


class InstallableFilter:
    """An encoded program, laid out in memory by the parent, installed by the forked child.

    Everything that allocates (the ctypes buffer and struct) happens here, before fork;
    ``install`` only makes two system calls. ``program`` decodes the instructions on demand
    (for the syscall ledger and tests)."""

    def __init__(self, blob: bytes, flags: int = 0) -> None:
        count, rest = divmod(len(blob), INSTRUCTION_SIZE)
        if rest or not 0 < count <= MAX_INSTRUCTIONS:
            raise ValueError(f"not a seccomp program: {len(blob)} bytes")
        self.blob = bytes(blob)
        self.flags = flags
        self._buffer = ctypes.create_string_buffer(self.blob, len(self.blob))
        self._fprog = _SockFprog(count, ctypes.cast(self._buffer, ctypes.c_void_p))
        self._fprog_address = ctypes.addressof(self._fprog)

    @cached_property
    def program(self) -> tuple:
        from agentd.kernel import bpf

        return tuple(bpf.decode(self.blob))

    def install(self) -> None:
        """prctl(PR_SET_NO_NEW_PRIVS, 1), then seccomp(SECCOMP_SET_MODE_FILTER, flags, &prog).
        Raises OSError with the reason; the caller (a forked child) reports it and exits."""
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1) != 0:
            code = libc.last_errno()
            raise OSError(code, f"prctl(PR_SET_NO_NEW_PRIVS) failed: {os.strerror(code)}")
        if libc.syscall(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, self.flags, self._fprog_address) != 0:
            code = libc.last_errno()
            reason = _MESSAGES.get(code, os.strerror(code))
            raise OSError(code, f"seccomp(SECCOMP_SET_MODE_FILTER) failed: {reason}")


# --- probing the kernel ---------------------------------------------------------------------------

# action name in /proc/sys/kernel/seccomp/actions_avail -> (constant name, value)
REQUIRED_ACTIONS: Mapping[str, tuple[str, int]] = MappingProxyType(
    {
        "kill_process": ("SECCOMP_RET_KILL_PROCESS", SECCOMP_RET_KILL_PROCESS),
        "errno": ("SECCOMP_RET_ERRNO", SECCOMP_RET_ERRNO),
        "trace": ("SECCOMP_RET_TRACE", SECCOMP_RET_TRACE),
        "allow": ("SECCOMP_RET_ALLOW", SECCOMP_RET_ALLOW),
    }
)


def probe_kernel(
    actions_avail: str = "/proc/sys/kernel/seccomp/actions_avail",
    proc_status: str = "/proc/self/status",
) -> list[str]:
    """What the kernel lacks for our filter, one sentence each; an empty list means all is there.

    Also mseal(2) (Linux 6.10), which seals the TOCTOU scratch region (``trace/pinning.py``), and
    openat2(2) with RESOLVE_NO_SYMLINKS, which every pinned open is rewritten to."""
    return _probe_seccomp(actions_avail, proc_status) + _probe_mseal() + _probe_openat2()


def _probe_mseal() -> list[str]:
    # mseal(addr, 0, 0) seals nothing and succeeds where the syscall exists
    if libc.syscall(SYSCALL_NUMBERS["mseal"], 0, 0, 0) != 0:
        code = libc.last_errno()
        return [
            f"mseal(2) is not available ({os.strerror(code)}; Linux 6.10 or later): the "
            f"TOCTOU scratch region cannot be sealed"
        ]
    return []


def _probe_openat2() -> list[str]:
    """The agent inherits this process's seccomp filters, so an openat2 refused here is refused
    there: every open the tracer pins would fail (the loader's first one, "libc.so.6: cannot open
    shared object file: Error 38"). systemd's RestrictSUIDSGID=yes answers openat2 with ENOSYS."""
    # struct open_how {flags, mode, resolve}: O_PATH | O_CLOEXEC, 0, RESOLVE_NO_SYMLINKS
    how = ctypes.create_string_buffer(
        (0o10000000 | 0o2000000).to_bytes(8, "little") + bytes(8) + (0x04).to_bytes(8, "little"), 24
    )
    root = ctypes.create_string_buffer(b"/")
    fd = libc.syscall(
        SYSCALL_NUMBERS["openat2"], -100, ctypes.addressof(root), ctypes.addressof(how), 24
    )
    if fd < 0:
        code = libc.last_errno()
        return [
            f"openat2(2) with RESOLVE_NO_SYMLINKS fails here ({os.strerror(code)}: Linux 5.6 or "
            f"later, and no inherited seccomp filter refusing it, such as systemd's "
            f"RestrictSUIDSGID=yes): the agent's pinned opens are run as openat2"
        ]
    os.close(fd)
    return []


def _probe_seccomp(actions_avail: str, proc_status: str) -> list[str]:
    missing: list[str] = []
    try:
        with open(proc_status, encoding="ascii", errors="replace") as handle:
            status = dict(line.split(":", 1) for line in handle if ":" in line)
    except OSError as error:
        status = {}
        missing.append(f"cannot read {proc_status} to check seccomp support: {error.strerror}")
    mode = status.get("Seccomp", "").strip()
    if status and not mode:
        missing.append(
            "seccomp filter mode: the kernel was built without CONFIG_SECCOMP "
            "(no 'Seccomp:' line in /proc/self/status)"
        )
        return missing
    if mode == "1":
        missing.append("seccomp filter mode: this process is in seccomp strict mode")
        return missing

    try:
        with open(actions_avail, encoding="ascii") as handle:
            available = set(handle.read().split())
        for name, (constant, _) in REQUIRED_ACTIONS.items():
            if name not in available:
                missing.append(
                    f"seccomp action {constant} ('{name}') is not available: "
                    f"{actions_avail} lists only {' '.join(sorted(available))}"
                )
        return missing
    except OSError:
        pass  # masked in some containers: ask the kernel directly

    for name, (constant, value) in REQUIRED_ACTIONS.items():
        action = ctypes.c_uint32(value)
        if libc.syscall(SYS_SECCOMP, SECCOMP_GET_ACTION_AVAIL, 0, ctypes.addressof(action)) != 0:
            code = libc.last_errno()
            missing.append(
                f"seccomp action {constant} ('{name}') is not available: "
                f"seccomp(SECCOMP_GET_ACTION_AVAIL) says {os.strerror(code)}"
            )
    return missing
