"""The one table that says which syscalls the tracer stops for and what each one means.

Owns the mapping *syscall name -> decoder and argument layout -> action type(s)*. It is data: a
``SyscallSpec`` names the decoder in ``decode.py`` that turns the registers into ``Action``s and
which argument holds the path, the dirfd, the flags, the mode, the argv or the sockaddr. The
names in ``TABLE`` are exactly the syscalls the seccomp filter returns SECCOMP_RET_TRACE for
(``traced_syscalls()``); every other syscall runs without a stop. Flag values are the x86_64
ones from ``<fcntl.h>`` / ``<linux/fcntl.h>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

__all__ = [
    "SyscallSpec",
    "TABLE",
    "traced_syscalls",
    "spec_for",
    "operand",
    "O_ACCMODE",
    "O_WRONLY",
    "O_RDWR",
    "O_CREAT",
    "O_TRUNC",
    "O_APPEND",
    "O_NOFOLLOW",
    "O_TMPFILE",
    "O_PATH",
    "AT_SYMLINK_NOFOLLOW",
    "AT_SYMLINK_FOLLOW",
    "AT_EMPTY_PATH",
    "AT_REMOVEDIR",
]

O_ACCMODE = 0o3
O_WRONLY = 0o1
O_RDWR = 0o2
O_CREAT = 0o100
O_EXCL = 0o200
O_TRUNC = 0o1000
O_APPEND = 0o2000
O_DIRECTORY = 0o200000
O_NOFOLLOW = 0o400000
O_PATH = 0o10000000
O_TMPFILE = 0o20000000 | O_DIRECTORY
# open flags that make an open a write, whatever the access mode says
WRITE_FLAGS = O_CREAT | O_TRUNC | O_APPEND | (O_TMPFILE & ~O_DIRECTORY)

AT_SYMLINK_NOFOLLOW = 0x100
AT_REMOVEDIR = 0x200
AT_SYMLINK_FOLLOW = 0x400
AT_EMPTY_PATH = 0x1000
F_SETOWN = 8  # fcntl
PR_SCHED_CORE = 62  # prctl
# openat2 RESOLVE_* flags: only RESOLVE_IN_ROOT changes which file a path names (the dirfd
# becomes "/"); the others (NO_XDEV, NO_MAGICLINKS, NO_SYMLINKS, BENEATH, CACHED) only make the
# kernel refuse more.
RESOLVE_IN_ROOT = 0x10


@dataclass(frozen=True)
class SyscallSpec:
    """Where one syscall's operands are and which decoder reads them.

    Argument fields are register indexes (0..5 = rdi, rsi, rdx, r10, r8, r9) or None.
    ``follow_last``: whether the kernel follows a symlink in the last component by default;
    ``nofollow_mask`` / ``follow_mask`` / ``empty_path_mask``: bits of the ``flags`` argument
    that change that (AT_SYMLINK_NOFOLLOW, AT_SYMLINK_FOLLOW) or make an empty path mean the
    descriptor itself (AT_EMPTY_PATH).
    """

    decoder: str  # "open" | "path" | "move" | "link" | "chmod" | "exec" | ...
    action_types: tuple[str, ...]  # what it can produce (documentation and tests)
    path: int | None = None
    dirfd: int | None = None
    fd: int | None = None  # f*-variants: the descriptor names the file
    flags: int | None = None
    fixed_flags: int = 0  # creat(): flags implied by the syscall
    how: int | None = None  # openat2: struct open_how *
    follow_last: bool = True
    nofollow_mask: int = 0
    follow_mask: int = 0
    empty_path_mask: int = 0
    path2: int | None = None  # rename/link destination
    dirfd2: int | None = None
    mode: int | None = None
    argv: int | None = None
    addr: int | None = None
    addrlen: int | None = None
    msg: int | None = None  # sendmsg: struct msghdr *; sendmmsg: struct mmsghdr *
    vlen: int | None = None
    action_type: str = ""  # the one type a "path" decoder produces
    pid: int | None = None  # signal and process decoders: the target pid / tgid / pidfd
    # process decoder: the argument saying what ``pid`` names, and its values: (value, kind),
    # kind "pid", "pgrp" or "user" (setpriority's PRIO_*, ioprio_set's IOPRIO_WHO_*)
    which: int | None = None
    which_kinds: tuple[tuple[int, str], ...] = ()
    # process decoder: an argument that, when 0 (NULL), makes the call change nothing
    changes: int | None = None
    # process decoder: (argument, value): the call aims at a process only when it holds
    # (fcntl's F_SETOWN, prctl's PR_SCHED_CORE); a negative ``pid`` names a process group
    only_when: tuple[int, int] | None = None
    negative_pgrp: bool = False


_FILE_RW = ("file_read", "file_write", "memory_access")
_W = ("file_write",)


def _path(
    action_type: str, path: int | None = None, dirfd: int | None = None, **more
) -> SyscallSpec:
    return SyscallSpec(
        "path", (action_type,), path=path, dirfd=dirfd, action_type=action_type, **more
    )


_NOFOLLOW_AT: dict[str, Any] = dict(
    nofollow_mask=AT_SYMLINK_NOFOLLOW, empty_path_mask=AT_EMPTY_PATH
)

# The table: one syscall a line: laid out by hand.
# fmt: off
TABLE: Mapping[str, SyscallSpec] = MappingProxyType({
    # --- opening: flags decide read or write; /dev/shm/* is also memory_access -------------
    "open": SyscallSpec("open", _FILE_RW, path=0, flags=1),
    "openat": SyscallSpec("open", _FILE_RW, dirfd=0, path=1, flags=2),
    "openat2": SyscallSpec("open", _FILE_RW, dirfd=0, path=1, how=2),
    "creat": SyscallSpec("open", _FILE_RW, path=0, fixed_flags=O_CREAT | O_WRONLY | O_TRUNC),
    # --- changing content or metadata in place ------------------------------------------------
    "truncate": _path("file_write", path=0),
    "chown": _path("file_write", path=0),
    "lchown": _path("file_write", path=0, follow_last=False),
    "fchown": _path("file_write", fd=0),
    "fchownat": _path("file_write", path=1, dirfd=0, flags=4, **_NOFOLLOW_AT),
    "setxattr": _path("file_write", path=0),
    "lsetxattr": _path("file_write", path=0, follow_last=False),
    "fsetxattr": _path("file_write", fd=0),
    "removexattr": _path("file_write", path=0),
    "lremovexattr": _path("file_write", path=0, follow_last=False),
    "fremovexattr": _path("file_write", fd=0),
    "setxattrat": _path("file_write", path=1, dirfd=0, flags=2, **_NOFOLLOW_AT),
    "removexattrat": _path("file_write", path=1, dirfd=0, flags=2, **_NOFOLLOW_AT),
    "utime": _path("file_write", path=0),
    "utimes": _path("file_write", path=0),
    "futimesat": _path("file_write", path=1, dirfd=0),
    # utimensat(dirfd, NULL, ...) changes the descriptor itself: the decoder treats a NULL
    # path as "the dirfd" for this decoder.
    "utimensat": _path("file_write", path=1, dirfd=0, flags=3, **_NOFOLLOW_AT),
    "file_setattr": _path("file_write", path=1, dirfd=0, flags=4, **_NOFOLLOW_AT),
    "chmod": SyscallSpec("chmod", ("file_chmod",), path=0, mode=1),
    "fchmod": SyscallSpec("chmod", ("file_chmod",), fd=0, mode=1),
    "fchmodat": SyscallSpec("chmod", ("file_chmod",), dirfd=0, path=1, mode=2),
    "fchmodat2": SyscallSpec("chmod", ("file_chmod",), dirfd=0, path=1, mode=2, flags=3,
                             **_NOFOLLOW_AT),
    # --- removing: never follows the last component ---------------------------------------------
    "unlink": _path("file_delete", path=0, follow_last=False),
    "unlinkat": _path("file_delete", path=1, dirfd=0, follow_last=False),
    "rmdir": _path("file_delete", path=0, follow_last=False),
    # --- creating a new name (never follows the new name) ---------------------------------------
    "mkdir": _path("file_write", path=0, follow_last=False),
    "mkdirat": _path("file_write", path=1, dirfd=0, follow_last=False),
    "mknod": _path("file_write", path=0, follow_last=False),
    "mknodat": _path("file_write", path=1, dirfd=0, follow_last=False),
    "symlink": _path("file_write", path=1, follow_last=False),
    "symlinkat": _path("file_write", path=2, dirfd=1, follow_last=False),
    # link(old, new): file_write of the new name, file_read and file_write of the old one (a
    # hard link aliases the inode: what the new name allows, the old file suffers).
    "link": SyscallSpec("link", ("file_write", "file_read"), path=0, path2=1, follow_last=False),
    "linkat": SyscallSpec("link", ("file_write", "file_read"), dirfd=0, path=1, dirfd2=2, path2=3,
                          flags=4, follow_last=False, follow_mask=AT_SYMLINK_FOLLOW,
                          empty_path_mask=AT_EMPTY_PATH),
    # --- moving: file_move "src -> dst", file_write of both names (RENAME_EXCHANGE: both ways) -
    "rename": SyscallSpec("move", ("file_move", "file_write"), path=0, path2=1),
    "renameat": SyscallSpec("move", ("file_move", "file_write"),
                            dirfd=0, path=1, dirfd2=2, path2=3),
    "renameat2": SyscallSpec("move", ("file_move", "file_write"),
                             dirfd=0, path=1, dirfd2=2, path2=3, flags=4),
    # --- running programs -----------------------------------------------------------------------
    "execve": SyscallSpec("exec", ("shell_execute", "process_spawn"), path=0, argv=1),
    "execveat": SyscallSpec("exec", ("shell_execute", "process_spawn"), dirfd=0, path=1, argv=2,
                            flags=4, **_NOFOLLOW_AT),
    # --- network --------------------------------------------------------------------------------
    "connect": SyscallSpec("sockaddr", ("network_connect",), addr=1, addrlen=2),
    "sendto": SyscallSpec("sockaddr", ("network_connect",), addr=4, addrlen=5),
    "sendmsg": SyscallSpec("sendmsg", ("network_connect",), msg=1),
    "sendmmsg": SyscallSpec("sendmsg", ("network_connect",), msg=1, vlen=2),
    # bind() of a unix socket path creates a file: file_write of that path.
    "bind": SyscallSpec("bind", ("file_write",), addr=1, addrlen=2),
    # --- signals: containment, not policy: a target outside the agent tree is refused ----------
    "kill": SyscallSpec("signal", (), pid=0),
    "tkill": SyscallSpec("signal", (), pid=0),
    "tgkill": SyscallSpec("signal", (), pid=0),
    "rt_sigqueueinfo": SyscallSpec("signal", (), pid=0),
    "rt_tgsigqueueinfo": SyscallSpec("signal", (), pid=0),
    "pidfd_open": SyscallSpec("signal", (), pid=0),
    "pidfd_send_signal": SyscallSpec("pidfd_signal", (), fd=0),
    # --- another process's limits, scheduling, memory and SIGIO: containment, like signals ---
    # (traced only when the target is not the caller itself: UNTRACED_RULES)
    "prlimit64": SyscallSpec("process", (), pid=0, changes=2),
    "setpriority": SyscallSpec("process", (), pid=1, which=0,
                               which_kinds=((0, "pid"), (1, "pgrp"), (2, "user"))),
    "ioprio_set": SyscallSpec("process", (), pid=1, which=0,
                              which_kinds=((1, "pid"), (2, "pgrp"), (3, "user"))),
    "sched_setscheduler": SyscallSpec("process", (), pid=0),
    "sched_setparam": SyscallSpec("process", (), pid=0),
    "sched_setattr": SyscallSpec("process", (), pid=0),
    "sched_setaffinity": SyscallSpec("process", (), pid=0),
    "migrate_pages": SyscallSpec("process", (), pid=0),
    "move_pages": SyscallSpec("process", (), pid=0, changes=3),
    # fcntl(fd, F_SETOWN, who): who > 0 a process, < 0 a process group, gets SIGIO (or the
    # F_SETSIG signal, SIGKILL included) when I/O is possible on fd
    "fcntl": SyscallSpec("process", (), pid=2, only_when=(1, F_SETOWN), negative_pgrp=True),
    # prctl(PR_SCHED_CORE, cmd, pid, PIDTYPE_*, cookie): another task's core-scheduling cookie
    # (cmd PR_SCHED_CORE_GET, 0, only reads)
    "prctl": SyscallSpec("process", (), pid=2, which=3, only_when=(0, PR_SCHED_CORE),
                         which_kinds=((0, "pid"), (1, "pid"), (2, "pgrp")), changes=1),
    # --- ioctls that change the file behind the descriptor (kernel/ioctl_ledger.py) ------------
    "ioctl": _path("file_write", fd=0),
})
# fmt: on


def operand(index: int | None) -> int:
    """The register index of an operand the decoder at hand needs: the table gives it for every
    syscall that decoder serves (a missing one is a bug in the table, refused like any error)."""
    if index is None:
        raise LookupError("syscall table: the decoder needs an operand this spec does not give")
    return index


def traced_syscalls() -> frozenset[str]:
    """The names the seccomp filter must return SECCOMP_RET_TRACE for."""
    return frozenset(TABLE)


def spec_for(name: str) -> SyscallSpec | None:
    return TABLE.get(name)


def untraced_rules() -> tuple:
    """The argument values for which a syscall of the table decodes to no action, so the
    filter lets them run without a tracer stop (``seccomp.UNTRACED``): an ioctl whose request
    code the ledger does not list as ``traced`` (kernel/ioctl_ledger.py), a process syscall
    aimed at the caller itself (pid 0) or changing nothing (a NULL new value), an fcntl other
    than F_SETOWN, a prctl other than PR_SCHED_CORE. Each mirrors a case where ``decode``
    returns nothing to judge; what decodes to an action is never untraced."""
    from agentd.kernel import ioctl_ledger
    from agentd.kernel.seccomp import UNTRACED, ArgCondition, ArgRule

    def when(syscall: str, reason: str, *conditions: ArgCondition) -> ArgRule:
        return ArgRule(syscall, conditions, UNTRACED, reason)

    def is_zero(index: int, width: int = 64) -> ArgCondition:
        return ArgCondition(index, "eq", 0, width=width)

    self_pid = "pid 0: the caller itself"
    nothing = "a NULL new value changes nothing"
    rules = [
        when(
            "ioctl",
            "a request code that changes no file (kernel/ioctl_ledger.py)",
            *(
                ArgCondition(1, "ne", code, width=32)
                for code in ioctl_ledger.codes(ioctl_ledger.TRACED)
            ),
        ),
        when("prlimit64", self_pid, is_zero(0, 32)),
        when("prlimit64", nothing, is_zero(2)),
        when("setpriority", self_pid, is_zero(0, 32), is_zero(1, 32)),  # PRIO_PROCESS, 0
        when("ioprio_set", self_pid, ArgCondition(0, "eq", 1, width=32), is_zero(1, 32)),
        *(
            when(name, self_pid, is_zero(0, 32))
            for name in (
                "sched_setscheduler",
                "sched_setparam",
                "sched_setattr",
                "sched_setaffinity",
                "migrate_pages",
                "move_pages",
            )
        ),
        when("move_pages", "no target nodes: a query", is_zero(3)),
        when("fcntl", "not F_SETOWN", ArgCondition(1, "ne", F_SETOWN, width=32)),
        when("fcntl", "F_SETOWN 0 clears the owner", is_zero(2, 32)),
        when("prctl", "not PR_SCHED_CORE", ArgCondition(0, "ne", PR_SCHED_CORE, width=32)),
        when("prctl", "PR_SCHED_CORE_GET only reads", is_zero(1, 32)),
        when("prctl", self_pid, is_zero(2, 32)),
    ]
    return tuple(rules)
